"""Verbs: ``tokenizer train``, ``init-model``, ``prepare``, ``train``."""

from __future__ import annotations

import argparse
import dataclasses

from ifguide.cli._common import add_model_args, parse_shard


def register(sub: argparse._SubParsersAction) -> None:
    _register_tokenizer(sub)
    _register_init_model(sub)
    _register_prepare(sub)
    _register_train(sub)


def _register_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="tokenizer utilities")
    tsub = p.add_subparsers(dest="tokenizer_verb", metavar="ACTION", required=True)
    t = tsub.add_parser("train", help="train a byte-level BPE tokenizer offline")
    t.add_argument("--data", nargs="+", required=True, help="text/jsonl/parquet files or directories")
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--line-docs", action="store_true", help="one document per line in .txt files")
    t.add_argument("--out", required=True, help="output tokenizer directory")

    def run(args):
        from ifguide.data.tokenizer import train_tokenizer

        train_tokenizer(args.data, args.vocab_size, args.out, line_docs=args.line_docs)

    t.set_defaults(func=run)


def _register_init_model(sub) -> None:
    from ifguide.models import ARCHITECTURES, PRESETS

    p = sub.add_parser("init-model", help="randomly initialise a model of a size preset (pre-training from scratch)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="gpt-neox")
    p.add_argument(
        "--preset", choices=list(PRESETS), default="tiny",
        help="; ".join(f"{k}: {v.help}" for k, v in PRESETS.items()),
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or hub id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    def run(args):
        from ifguide.models import init_model

        init_model(args.arch, args.preset, args.tokenizer, args.out, seed=args.seed)

    p.set_defaults(func=run)


def _register_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenise a corpus into fixed-length blocks (streaming)")
    p.add_argument("--data", nargs="+", help="files, directories or Hugging Face dataset names (hf:NAME[:CONFIG][@SPLIT])")
    p.add_argument("--tokenizer", help="tokenizer directory or hub id")
    p.add_argument("--merge", nargs="+", metavar="SHARD_DIR", help="concatenate blocks prepared with --shard into --out")
    p.add_argument("--block-size", type=int, default=2048, help="tokens per block (paper: 2048)")
    p.add_argument("--line-docs", action="store_true", help="one document per line in .txt files")
    p.add_argument("--text-field", default="text", help="field holding the text in jsonl/parquet/datasets")
    p.add_argument("--dtype", default="auto", choices=["auto", "uint16", "int32"])
    p.add_argument("--shard", help="i/n: keep documents k with k %% n == i (independent jobs)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--out", required=True, help="output blocks directory")

    def run(args):
        from ifguide.data.prepare import merge_blocks, prepare_blocks
        from ifguide.errors import InputError

        if args.merge:
            merge_blocks(args.merge, args.out)
            return
        if not args.data or not args.tokenizer:
            raise InputError("prepare: --data and --tokenizer are required (or --merge SHARD_DIR...)")
        prepare_blocks(
            args.data, args.tokenizer, args.block_size, args.out,
            line_docs=args.line_docs, text_field=args.text_field, dtype=args.dtype,
            shard=parse_shard(args.shard), trust_remote_code=args.trust_remote_code,
        )

    p.set_defaults(func=run)


def _register_train(sub) -> None:
    from ifguide.training.train import TrainConfig

    p = sub.add_parser("train", help="train (pre-train or fine-tune), optionally with a toxic-token mask")
    add_model_args(p)
    p.add_argument("--blocks", required=True, help="blocks directory from `ifguide prepare`")
    p.add_argument("--mask", help="mask directory (or its mask.npy) from `ifguide select`")
    p.add_argument("--rows", help="rows directory from `ifguide filter`: train on these blocks only")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints of an interrupted run")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "rows":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help=help_text)
        elif "float" in str(f.type):
            p.add_argument(flag, type=float, default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            p.add_argument(flag, type=kind, default=f.default, help=help_text)

    def run(args):
        from ifguide.training.train import train

        config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "rows"})
        if args.rows:
            from ifguide.baselines.filtering import read_rows

            config.rows = [int(r) for r in read_rows(args.rows, args.blocks)]
        train(args.model, args.blocks, args.out, mask=args.mask, config=config,
              trust_remote_code=args.trust_remote_code, resume=not args.no_resume)

    p.set_defaults(func=run)
