"""Verbs ``fit-factors`` and ``score``: influence factors and token-wise influence scores."""

from __future__ import annotations

import argparse

from ifguide.cli._common import add_model_args, positive_int


def _fit_factors(args: argparse.Namespace) -> int:
    from ifguide.attribution.factors import FactorConfig, fit_factors

    config = FactorConfig(
        strategy=args.strategy,
        max_blocks=args.max_blocks,
        batch_size=args.batch_size,
        dtype=args.dtype,
        modules=args.modules,
    )
    fit_factors(args.model, args.blocks, args.out, config, trust_remote_code=args.trust_remote_code)
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
    compute_scores(
        args.model,
        args.blocks,
        args.queries,
        args.factors,
        args.out,
        config,
        queries_safe=args.queries_safe,
        trust_remote_code=args.trust_remote_code,
    )
    return 0


def register(subparsers) -> None:
    from ifguide.attribution.factors import STRATEGIES
    from ifguide.attribution.scores import ALIGNMENTS, GRANULARITIES, MODES, SCORE_DTYPES

    p = subparsers.add_parser(
        "fit-factors",
        help="fit EK-FAC (or KFAC/diagonal/identity) influence factors of a model on training blocks",
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
    p.set_defaults(func=_fit_factors)

    p = subparsers.add_parser(
        "score",
        help="score every training token by its influence on toxic (vs safe) continuations",
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
    p.set_defaults(func=_score)
