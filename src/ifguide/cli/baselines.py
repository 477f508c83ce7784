"""Verbs ``dpo``, ``filter`` and ``reward-model``: the post-hoc DPO baseline, the data-filtering
baselines, and the independent reward model that RAD decoding is steered by."""

from __future__ import annotations

import argparse
import dataclasses

from ifguide.baselines.dpo import DPOConfig
from ifguide.baselines.reward import RewardModelConfig
from ifguide.cli._common import add_model_args


def _dpo(args: argparse.Namespace) -> int:
    from ifguide.baselines.dpo import pairs_from_queries, read_pairs, train_dpo
    from ifguide.errors import InputError

    if (args.pairs is None) == (args.queries is None):
        raise InputError("dpo: give exactly one of --pairs or --queries")
    if args.queries_safe is not None and args.queries is None:
        raise InputError("--queries-safe: only with --queries")
    config = DPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DPOConfig)})
    if args.pairs is not None:
        pairs = read_pairs(args.pairs)
    else:
        pairs = pairs_from_queries(args.queries, args.queries_safe, toxic_min=args.toxic_min, safe_max=args.safe_max)
    train_dpo(args.model, args.out, pairs=pairs, config=config, trust_remote_code=args.trust_remote_code)
    return 0


def _filter(args: argparse.Namespace) -> int:
    from ifguide.baselines.filtering import filter_to_artifact

    filter_to_artifact(
        args.blocks, args.out, scorer=args.scorer, scores=args.scores, labels=args.labels, budget_tokens=args.budget_tokens,
        like_mask=args.like_mask, tokenizer=args.tokenizer, trust_remote_code=args.trust_remote_code,
    )
    return 0


def _reward_model(args: argparse.Namespace) -> int:
    from ifguide.baselines.reward import train_reward_model

    config = RewardModelConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RewardModelConfig)})
    train_reward_model(args.data, args.tokenizer, args.out, config)
    return 0


def _add_dataclass_flags(p: argparse.ArgumentParser, cls) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default {f.default})"
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str if f.default is None else type(f.default))
            p.add_argument(flag, type=kind, default=f.default, help=help_text)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dpo",
        help="baseline: fine-tune a trained model with DPO on (benign chosen, toxic rejected) pairs",
        description="Direct preference optimisation through trl's DPOTrainer, with a frozen copy of the "
        "starting model as reference. Pairs come from --pairs (jsonl of prompt/chosen/rejected, or a "
        "ParaDetox .tsv of toxic/neutral rewrites) or from IF-Guide query files (--queries).",
    )
    add_model_args(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", help="preference pairs: .jsonl {prompt, chosen, rejected} or ParaDetox .tsv")
    source.add_argument("--queries", help="query file (RealToxicityPrompts or simple schema): toxic continuations rejected")
    p.add_argument("--queries-safe", help="extra safe queries (unlabelled ones count as safe): chosen continuations")
    p.add_argument("--toxic-min", type=float, default=0.5, help="continuation toxicity at or above which a query is toxic")
    p.add_argument("--safe-max", type=float, default=0.1, help="continuation toxicity at or below which a query is safe")
    p.add_argument("--out", required=True, help="output model directory")
    _add_dataclass_flags(p, DPOConfig)
    p.set_defaults(func=_dpo)

    p = subparsers.add_parser(
        "filter",
        help="baseline: choose the blocks to train on after dropping the most toxic (or most influential) ones",
        description="Drop whole blocks, the most toxic by a classifier (--scorer) or the most influential by "
        "total influence score (--scores), until at least the token budget is removed; --like-mask takes "
        "the budget from an IF-Guide mask. --labels is the perfect filter for labelled corpora: it drops every "
        "block with labelled toxicity, whatever the budget. Writes OUT/rows.npy (rows to keep) for `train` "
        "(TrainConfig.rows).",
    )
    p.add_argument("--blocks", required=True, help="blocks directory from `ifguide prepare`")
    ranking = p.add_mutually_exclusive_group(required=True)
    ranking.add_argument("--scorer", help="toxicity scorer name, e.g. profanity-check (see `ifguide evaluate --help`)")
    ranking.add_argument("--scores", nargs="+", help="scores directory (or row shards) from `ifguide scores`")
    ranking.add_argument("--labels", action="store_true",
                         help="drop every block with labelled toxicity (needs toxic labels; no budget)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-tokens", type=int, help="remove at least this many tokens")
    budget.add_argument("--like-mask", help="mask directory whose selected-token count is the budget")
    # which of these a filter needs is checked by filter_to_artifact (--labels takes none)
    p.add_argument("--tokenizer", help="tokenizer of the blocks (default: the one named in their meta.json)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom tokenizer code")
    p.add_argument("--out", required=True, help="rows directory to write")
    p.set_defaults(func=_filter)

    p = subparsers.add_parser(
        "reward-model",
        help="baseline: train a toxicity classifier to steer RAD decoding (independent of the evaluation's scorer)",
        description="Train a Hugging Face sequence classifier on a jsonl of {text, toxic} records (e.g. Jigsaw "
        "comments). The output directory is the scorer hf:OUT, for `evaluate --decoding rad --rad-scorer hf:OUT`. "
        "meta.json records its held-out accuracy and AUROC.",
    )
    p.add_argument("--data", required=True, help="jsonl of {\"text\": str, \"toxic\": bool}")
    p.add_argument("--tokenizer", required=True, help="tokenizer (hub id or directory); any tokenizer works")
    p.add_argument("--out", required=True, help="output directory (a sequence classifier + tokenizer)")
    _add_dataclass_flags(p, RewardModelConfig)
    p.set_defaults(func=_reward_model)
