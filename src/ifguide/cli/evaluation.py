"""Verbs ``evaluate`` (toxicity, fluency, accuracy of one model) and ``compare`` (several evaluations)."""

from __future__ import annotations

import argparse

from ifguide.cli._common import add_model_args, positive_int
from ifguide.errors import InputError


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise InputError(f"--seeds: expected comma-separated integers such as 1,2,3, got {text!r}") from None


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()] if text else []


def _options(items: list[str] | None, **named: str | None) -> dict[str, str]:
    """``["key=value", ...]`` plus the named flags that were given -> scorer options."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--scorer-option: expected KEY=VALUE, got {item!r}")
        out[key] = value
    out.update({k: v for k, v in named.items() if v is not None})
    return out


def _run_evaluate(args: argparse.Namespace) -> int:
    from ifguide.evaluation.evaluate import EvalConfig, evaluate
    from ifguide.evaluation.harness import parse_task_data

    config = EvalConfig(
        scorer=args.scorer, scorer_options=_options(args.scorer_option, label=args.label), samples=args.samples, max_new_tokens=args.max_new_tokens,
        top_p=args.top_p, seeds=_seeds(args.seeds), max_prompts=args.max_prompts, decoding=args.decoding,
        rad_k=args.rad_k, rad_beta=args.rad_beta, rad_scorer=args.rad_scorer,
        rad_scorer_options=_options(args.rad_scorer_option, label=args.rad_label) if args.rad_scorer else None, ppl_data=args.ppl_data,
        ppl_max_rows=args.ppl_max_rows, lambada=args.lambada, lambada_limit=args.lambada_limit,
        lm_eval_tasks=tuple(_names(args.lm_eval_tasks)), lm_eval_data=parse_task_data(args.lm_eval_data),
        lm_eval_limit=args.lm_eval_limit, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        bootstrap=args.bootstrap,
    )
    evaluate(
        args.model, args.prompts, args.out, config,
        tokenizer=args.tokenizer, trust_remote_code=args.trust_remote_code, dtype=args.dtype,
    )
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from ifguide.evaluation.compare import compare, write_comparison

    table = compare(args.eval_dirs, _names(args.names) or None, args.baseline, args.control)
    write_comparison(table, args.out, args.plot)
    print(table.to_markdown())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="toxicity (EMT/TP), perplexity, LAMBADA and accuracy of a model")
    add_model_args(p)
    p.add_argument("--tokenizer", help="tokenizer id or directory (default: the model's)")
    p.add_argument("--prompts", required=True, help="RTP-schema or {'prompt': str} jsonl")
    p.add_argument("--out", required=True, help="eval directory to write")
    p.add_argument("--scorer", default="profanity-check", help="profanity-check | wordlist | detoxify:VARIANT | hf:ID_OR_DIR")
    p.add_argument("--label", help="toxic class (name or index) of an hf: scorer")
    p.add_argument(
        "--scorer-option", action="append", metavar="KEY=VALUE",
        help="scorer option, repeatable: checkpoint=/base= (detoxify, offline), wordlist=PATH (wordlist)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--samples", type=positive_int, default=25, help="continuations per prompt (default 25)")
    p.add_argument("--max-new-tokens", type=positive_int, default=20, help="tokens per continuation (default 20)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus mass (default 0.9; top-k disabled)")
    p.add_argument("--seeds", default="1,2,3", help="sampling seeds, comma-separated (default 1,2,3)")
    p.add_argument("--max-prompts", type=positive_int, help="evaluate the first N prompts only")
    p.add_argument("--decoding", default="plain", choices=["plain", "rad"], help="plain sampling or RAD")
    p.add_argument("--rad-k", type=positive_int, default=20, help="RAD: candidates re-scored per step")
    p.add_argument("--rad-beta", type=float, default=10.0, help="RAD: reward weight")
    p.add_argument("--rad-scorer", help="RAD: reward scorer (default: --scorer with its options)")
    p.add_argument("--rad-label", help="RAD: toxic class of an hf: reward scorer")
    p.add_argument("--rad-scorer-option", action="append", metavar="KEY=VALUE", help="RAD: reward scorer option")
    p.add_argument("--ppl-data", help="blocks directory or text/jsonl file for held-out perplexity")
    p.add_argument("--ppl-max-rows", type=positive_int, help="perplexity on the first N rows only")
    p.add_argument("--lambada", help="LAMBADA (OpenAI version) jsonl with {'text': ...} lines")
    p.add_argument("--lambada-limit", type=positive_int, help="first N LAMBADA examples only")
    p.add_argument("--lm-eval-tasks", help="lm-evaluation-harness tasks, comma-separated (shipped: ifguide_lambada, ifguide_mc)")
    p.add_argument("--lm-eval-data", action="append", metavar="TASK=PATH", help="local data file of a shipped task (repeatable)")
    p.add_argument("--lm-eval-limit", type=positive_int, help="examples per harness task")
    p.add_argument("--batch-size", type=positive_int, default=100, help="sequences (prompts x samples) per generate call")
    p.add_argument("--eval-batch-size", type=positive_int, default=16, help="rows per forward pass for ppl/LAMBADA/harness")
    p.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples for CIs")
    p.set_defaults(func=_run_evaluate)

    c = subparsers.add_parser("compare", help="table (Markdown + CSV), paired bootstrap and plot of eval directories")
    c.add_argument("eval_dirs", nargs="+", help="eval directories (same prompts and seeds)")
    c.add_argument("--out", required=True, help="Markdown table to write (the CSV goes beside it)")
    c.add_argument("--names", help="method names, comma-separated (default: directory names)")
    c.add_argument("--baseline", help="name of the baseline row (default: the first)")
    c.add_argument("--control", help="name of a control row also tested against")
    c.add_argument("--plot", help="bar chart to write (png/pdf)")
    c.set_defaults(func=_run_compare)
