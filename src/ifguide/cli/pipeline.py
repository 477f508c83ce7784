"""Verbs: ``run`` (the whole pipeline from a YAML config) and ``demo`` (the built-in demo world)."""

from __future__ import annotations

import argparse


def _print_summary(summary: dict) -> None:
    # The final table is the command's output (stdout), not a log message.
    print("\n" + summary["table_markdown"])
    for name, q in {**{m: e.get("attribution") for m, e in summary["methods"].items()},
                    **summary.get("selection_only", {})}.items():
        if q:
            print(f"selection vs planted toxicity [{name}]: precision {q['precision']:.3f}, recall {q['recall']:.3f}")
    print(f"\n{summary['seconds']:.0f} s; summary.json and report.html in {summary.get('out', '')}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the whole IF-Guide pipeline from a YAML config (resumable)")
    p.add_argument("config", nargs="?", help="YAML config (see --explain)")
    p.add_argument("--out", help="run directory (overrides the config's `out`)")
    p.add_argument("--force", action="store_true", help="rebuild every stage even if unchanged")
    p.add_argument("--explain", action="store_true", help="print every config key with its default and help")

    def run(args):
        from ifguide.errors import InputError
        from ifguide.pipeline.config import explain, load_config
        from ifguide.pipeline.run import run_pipeline

        if args.explain:
            print(explain())
            return 0
        if not args.config:
            raise InputError("run: give a CONFIG.yaml (or --explain)")
        cfg = load_config(args.config)
        summary = run_pipeline(cfg, args.out, force=args.force)
        summary["out"] = args.out or cfg.out
        _print_summary(summary)
        return 0

    p.set_defaults(func=run)

    d = sub.add_parser("demo", help="run the pipeline on the built-in demo world (CPU, offline, ~2 min on 2 cores)")
    d.add_argument("--out", default="ifguide-demo", help="run directory (default: ./ifguide-demo)")
    d.add_argument("--seed", type=int, default=0, help="seed of the demo world")
    d.add_argument("--quick", action="store_true", help="a smaller world and fewer seeds (a smoke test)")
    d.add_argument("--force", action="store_true", help="rebuild every stage")

    def demo(args):
        from ifguide.pipeline.demo import run_demo

        summary = run_demo(args.out, seed=args.seed, quick=args.quick, force=args.force)
        summary["out"] = args.out
        _print_summary(summary)
        return 0

    d.set_defaults(func=demo)
