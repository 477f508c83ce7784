"""Verbs ``select``, ``random-mask`` and ``inspect``: scores -> mask, control masks, HTML inspector."""

from __future__ import annotations

import argparse


def _select(args: argparse.Namespace) -> int:
    from ifguide.selection.masks import select_to_artifact

    select_to_artifact(
        args.scores, args.out, threshold=args.threshold, window=args.window,
        budget=args.budget, max_tokens=args.max_tokens,
    )
    return 0


def _random_mask(args: argparse.Namespace) -> int:
    from ifguide.errors import InputError
    from ifguide.selection.masks import oracle_mask_artifact, random_mask_artifact

    if args.oracle:
        if args.blocks is None:
            raise InputError("--oracle: needs --blocks BLOCKS_DIR (with toxic_labels.npy)")
        oracle_mask_artifact(args.like, args.blocks, args.out, seed=args.seed)
    else:
        random_mask_artifact(args.like, args.out, seed=args.seed, window=args.window, scores=args.scores)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ifguide.selection.inspect import inspect_selection

    inspect_selection(
        args.blocks, args.scores, args.mask, args.tokenizer, args.out,
        top=args.top, trust_remote_code=args.trust_remote_code,
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "select",
        help="select the training tokens to suppress from influence scores (IF-Guide Algorithm 1)",
        description="Threshold the scores at a quantile, rank documents by how many and how strongly "
        "toxic tokens they hold, and take each toxic token with its +/-window neighbours, best documents "
        "first, until the token budget is spent. Writes MASK_DIR/mask.npy (bool [N, T]) and meta.json.",
    )
    p.add_argument("--scores", nargs="+", required=True, metavar="SCORES",
                   help="scores directory (or .npy); several are row shards concatenated in order")
    p.add_argument("--out", required=True, help="mask directory to write")
    p.add_argument("--threshold", type=float, default=0.99, help="quantile p in (0, 1) of the finite scores; tokens above it are toxic (default 0.99)")
    p.add_argument("--window", type=int, default=1, help="also select w tokens either side of each toxic token (default 1)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--budget", type=float, default=0.02, help="fraction of scored tokens to select, in (0, 1] (default 0.02)")
    group.add_argument("--max-tokens", type=int, default=None, help="absolute number of tokens to select (instead of --budget)")
    p.set_defaults(func=_select)

    p = subparsers.add_parser(
        "random-mask",
        help="control mask: as many tokens as a given mask, at random (or, with --oracle, on labelled toxic tokens)",
        description="The null every IF-Guide result must beat: a mask with exactly the token count and "
        "window structure of --like, placed at random valid positions. --oracle instead places the same "
        "count on ground-truth toxic tokens (headroom).",
    )
    p.add_argument("--like", required=True, help="mask directory whose token count (and window) to match")
    p.add_argument("--out", required=True, help="mask directory to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--window", type=int, default=None, help="window radius (default: the --like selection's)")
    p.add_argument("--scores", nargs="+", default=None, help="only place tokens where these scores are finite")
    p.add_argument("--oracle", action="store_true", help="place the tokens on labelled toxic tokens of --blocks")
    p.add_argument("--blocks", default=None, help="blocks directory with toxic_labels.npy (for --oracle)")
    p.set_defaults(func=_random_mask)

    p = subparsers.add_parser(
        "inspect",
        help="write an HTML page showing the top-ranked documents coloured by score, selected tokens marked",
    )
    p.add_argument("--blocks", required=True, help="blocks directory the scores were computed on")
    p.add_argument("--scores", nargs="+", required=True, help="scores directory (or shards, as given to select)")
    p.add_argument("--mask", required=True, help="mask directory")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or hub id (must match the blocks)")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--top", type=int, default=20, help="number of top-ranked documents to show (default 20)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom tokenizer code from the hub")
    p.set_defaults(func=_inspect)
