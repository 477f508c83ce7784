"""Verbs ``fit-factors``, ``score``, ``average-scores``, ``conservative-scores``: influence factors and scores."""

from __future__ import annotations

import argparse

from ifguide.cli._common import add_model_args, parse_shard, positive_int
from ifguide.errors import InputError

FACTORS_SHARDING_HELP = """\
job array (one process per shard, any machines sharing OUT.partial/; steps on one line run in parallel):
  ifguide fit-factors ARGS --shard i/n --phase covariance    for i in 0..n-1
  ifguide fit-factors ARGS --merge --phase covariance        sum the covariances, eigendecompose
  ifguide fit-factors ARGS --shard i/n --phase lambda        for i in 0..n-1
  ifguide fit-factors ARGS --merge                           sum the eigenvalue corrections, write OUT
ARGS are the same in every step. Shard i computes kronfluence's data partition i of n (contiguous
blocks). A finished shard is not recomputed; a failed one is re-run alone. --merge names any
missing shards. OUT is used by `ifguide score` exactly like an unsharded one.
"""

SCORE_SHARDING_HELP = """\
job array (one process per shard, any machines sharing OUT.partial/):
  ifguide score ARGS --shard i/n      for i in 0..n-1 (in parallel): blocks [i*N/n, (i+1)*N/n)
  ifguide score ARGS --merge          concatenate the shards into OUT (as an unsharded run writes it)
ARGS are the same in every step. A failed shard resumes at its first unfinished chunk when re-run;
--merge names any missing shards. Instead of merging, the finished shard directories
OUT.partial/shard-i-of-n (float32, in order i = 0..n-1) can be given to `ifguide select --scores`.
"""


def _sharding(args: argparse.Namespace) -> tuple[tuple[int, int] | None, bool]:
    shard = parse_shard(args.shard)
    if args.merge and shard is not None:
        raise InputError("--shard and --merge: give one (run the shards first, then --merge)")
    return shard, args.merge


def _fit_factors(args: argparse.Namespace) -> int:
    from ifguide.attribution.factors import FactorConfig, fit_factor_shard, fit_factors, merge_factor_shards

    config = FactorConfig(
        strategy=args.strategy,
        max_blocks=args.max_blocks,
        batch_size=args.batch_size,
        dtype=args.dtype,
        modules=args.modules,
    )
    shard, merge = _sharding(args)
    common = dict(trust_remote_code=args.trust_remote_code)
    if shard is not None:
        if args.phase is None:
            raise InputError("--shard: also give --phase covariance (first) or --phase lambda "
                             "(after the covariance merge)")
        fit_factor_shard(args.model, args.blocks, args.out, config, shard=shard, phase=args.phase, **common)
    elif merge:
        merge_factor_shards(args.model, args.blocks, args.out, config, phase=args.phase or "lambda", **common)
    elif args.phase is not None:
        raise InputError("--phase: only with --shard i/n or --merge")
    else:
        fit_factors(args.model, args.blocks, args.out, config, **common)
    return 0


def _score(args: argparse.Namespace) -> int:
    from ifguide.attribution.scores import ScoreConfig, compute_scores

    config = ScoreConfig(
        mode=args.mode,
        granularity=args.granularity,
        alignment=args.alignment,
        dtype=args.dtype,
        scores_dtype=args.scores_dtype,
        damping=args.damping,
        batch_size=args.batch_size,
        query_batch_size=args.query_batch_size,
        chunk_blocks=args.chunk_blocks,
        toxic_min=args.toxic_min,
        safe_max=args.safe_max,
    )
    from ifguide.attribution.scores import compute_score_shard, merge_score_shards

    shard, merge = _sharding(args)
    inputs = (args.model, args.blocks, args.queries, args.factors, args.out, config)
    common = dict(queries_safe=args.queries_safe, trust_remote_code=args.trust_remote_code)
    if shard is not None:
        compute_score_shard(*inputs, shard=shard, **common)
    elif merge:
        merge_score_shards(*inputs, **common)
    else:
        compute_scores(*inputs, **common)
    return 0


def _average_scores(args: argparse.Namespace) -> int:
    from ifguide.attribution.average import average_scores

    average_scores(args.scores, args.out, dtype=args.scores_dtype)
    return 0


def _conservative_scores(args: argparse.Namespace) -> int:
    from ifguide.attribution.conservative import conservative_scores

    conservative_scores(args.differential, args.toxic_only, args.out, dtype=args.scores_dtype)
    return 0


def register(subparsers) -> None:
    from ifguide.attribution.factors import PHASES, STRATEGIES
    from ifguide.attribution.scores import ALIGNMENTS, GRANULARITIES, MODES, SCORE_DTYPES

    p = subparsers.add_parser(
        "fit-factors",
        help="fit EK-FAC (or KFAC/diagonal/identity) influence factors of a model on training blocks",
        epilog=FACTORS_SHARDING_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--blocks", required=True, help="blocks directory (from `ifguide prepare`)")
    p.add_argument("--out", required=True, help="factors directory to write")
    p.add_argument("--strategy", default="ekfac", choices=STRATEGIES, help="curvature approximation (default ekfac)")
    p.add_argument("--max-blocks", type=positive_int, default=None, help="fit on at most N evenly spaced blocks")
    p.add_argument("--batch-size", type=positive_int, default=8, help="blocks per pass (default 8)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype (autocast)")
    p.add_argument("--modules", default=None, metavar="REGEX",
                   help="track the nn.Linear modules whose names match REGEX (default: all inside the blocks)")
    _add_sharding_args(p)
    p.add_argument("--phase", default=None, choices=PHASES,
                   help="with --shard: the pass this shard computes; with --merge: the pass to merge "
                   "(default lambda: the final merge). See the job-array steps below")
    p.set_defaults(func=_fit_factors)

    p = subparsers.add_parser(
        "score",
        help="score every training token by its influence on toxic (vs safe) continuations",
        epilog=SCORE_SHARDING_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--blocks", required=True, help="blocks directory (from `ifguide prepare`)")
    p.add_argument("--queries", required=True, help="query jsonl (RealToxicityPrompts schema or prompt/continuation/label)")
    p.add_argument("--queries-safe", default=None, help="extra jsonl of safe queries (unlabelled ones count as safe)")
    p.add_argument("--factors", required=True, help="factors directory (from `ifguide fit-factors`, same model)")
    p.add_argument("--out", required=True, help="scores directory to write")
    p.add_argument("--mode", default="differential", choices=MODES,
                   help="differential: toxic minus safe in one pass (default); toxic-only: standard influence")
    p.add_argument("--granularity", default="token", choices=GRANULARITIES, help="token (default) or document (per block)")
    p.add_argument("--alignment", default="next", choices=ALIGNMENTS,
                   help="next: kronfluence position t scores target t+1 (default); same: position t scores target t")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype (autocast)")
    p.add_argument("--scores-dtype", default="float32", choices=SCORE_DTYPES, help="dtype of scores.npy")
    p.add_argument("--damping", type=float, default=None, help="damping (default: 0.1 x mean eigenvalue)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="training blocks per pass (default 8)")
    p.add_argument("--query-batch-size", type=positive_int, default=16, help="queries per pass (default 16)")
    p.add_argument("--chunk-blocks", type=positive_int, default=1024,
                   help="blocks per resumable chunk written to disk (default 1024)")
    p.add_argument("--toxic-min", type=float, default=0.5, help="unlabelled query is toxic at toxicity >= this (0.5)")
    p.add_argument("--safe-max", type=float, default=0.1, help="unlabelled query is safe at toxicity <= this (0.1)")
    _add_sharding_args(p)
    p.set_defaults(func=_score)

    p = subparsers.add_parser(
        "average-scores",
        help="average the scores of several checkpoints of one training run (same blocks, queries, coordinates)",
        description="Checkpoint-averaged influence: train with `ifguide train --snapshots N`, fit factors and score "
        "each OUT/snapshots/step-K and the final model, then average the score directories here.",
    )
    p.add_argument("--scores", nargs="+", required=True, help="two or more scores directories (from `ifguide score`)")
    p.add_argument("--out", required=True, help="scores directory to write")
    p.add_argument("--scores-dtype", default="float32", choices=SCORE_DTYPES, help="dtype of scores.npy")
    p.set_defaults(func=_average_scores)

    p = subparsers.add_parser(
        "conservative-scores",
        help="min(toxic-only, differential): the differential score without credit for hurting safe continuations",
        description="I_toxic - max(I_safe, 0) = min(toxic-only, differential), element-wise. Score the same model, "
        "blocks and queries twice with `ifguide score` (--mode differential and --mode toxic-only), then combine "
        "them here. Not the paper's score; see ifguide.attribution.conservative for when it helps.",
    )
    p.add_argument("--differential", required=True, help="scores directory of mode differential")
    p.add_argument("--toxic-only", required=True, help="scores directory of mode toxic-only (same model and blocks)")
    p.add_argument("--out", required=True, help="scores directory to write")
    p.add_argument("--scores-dtype", default="float32", choices=SCORE_DTYPES, help="dtype of scores.npy")
    p.set_defaults(func=_conservative_scores)


def _add_sharding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only shard I of N into OUT.partial/ (an independent job; see below)")
    p.add_argument("--merge", action="store_true", help="combine the finished shards in OUT.partial/ into OUT")
