"""The IF-Guide experiment in miniature, on real public text (see bench/README.md).

1. Builds a training corpus of benign prose mixed with real toxic text (ground truth per
   document), RTP query sets and a balanced, disjoint RTP evaluation file
   (``bench/realistic_data.py``) under ``OUT/data``.
2. Writes the pipeline configuration to ``OUT/config.yaml`` and runs ``ifguide.pipeline`` in
   ``OUT/run`` (base model, EK-FAC scores, masks, fine-tuned models, evaluation, paired CIs).
3. Measures attribution quality against the known toxic documents: share of each selection
   inside toxic text, token AUROC and row (block) AUROC of the scores, for differential and
   toxic-only scores and for both score alignments ("next" as computed; "same" derived from it,
   see :func:`same_from_next`).
4. Writes ``OUT/results.md`` (and ``OUT/results.json``).

    python bench/realistic.py --out runs/realistic             # --preset cpu: <= 60 min on 2 cores
    python bench/realistic.py --out runs/realistic-q --quick   # ~5-minute smoke run
    python bench/realistic.py --out runs/realistic-gpu --preset gpu   # Pythia-160M shape, needs a GPU

Stages are cached: re-running with the same arguments reuses finished stages.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realistic_data as rd  # noqa: E402

from ifguide.errors import InputError  # noqa: E402

logger = logging.getLogger("bench.realistic")

REPO = Path(__file__).resolve().parents[1]
AUROC_TIE = 0.005  # token-AUROC gaps below this are reported as a tie between alignments
DEFAULT_DATA = REPO.parent / "shared" / "data"

ALL_METHODS = ["base", "ifguide", "random", "oracle", "toxic-only", "document", "dpo", "rad",
               "filter-scorer", "filter-influence", "ifguide+rad"]
# Methods that exist only when an optional baseline module is present.
METHOD_MODULES = {"dpo": "ifguide.baselines.dpo", "rad": "ifguide.baselines.rad", "ifguide+rad": "ifguide.baselines.rad",
                  "filter-scorer": "ifguide.baselines.filtering", "filter-influence": "ifguide.baselines.filtering"}

# Sizes. `cpu` is sized for <= 60 minutes on 2 cores, `quick` for a ~5-minute smoke run.
PRESETS: dict[str, dict] = {
    "quick": {
        "data": {"max_benign_chars": 600_000, "n_queries": 32, "n_eval": 20},
        "block_size": 128, "vocab": 2048, "model": "tiny", "epochs": 1.0, "batch": 16, "lr": 3e-3,
        "finetune": 0.3, "factor_blocks": 256, "samples": 10, "seeds": [1, 2, 3],
        "methods": ["base", "ifguide", "random", "oracle"], "dpo_steps": 20,
    },
    "cpu": {
        "data": {"max_benign_chars": 4_000_000, "n_queries": 200, "n_eval": 200},
        "block_size": 128, "vocab": 4096, "model": "tiny", "epochs": 1.0, "batch": 16, "lr": 3e-3,
        "finetune": 0.3, "factor_blocks": 1024, "samples": 25, "seeds": [1, 2, 3],
        "methods": ALL_METHODS + ["proxy"], "dpo_steps": 100, "proxy": "micro",
    },
    "gpu": {
        "data": {"max_benign_chars": None, "n_queries": 500, "n_eval": 1000},
        "block_size": 512, "vocab": 16384, "model": "pythia-160m", "epochs": 2.0, "batch": 32, "lr": 6e-4,
        "finetune": 0.2, "factor_blocks": 4096, "samples": 25, "seeds": [1, 2, 3],
        "methods": ALL_METHODS + ["proxy"], "dpo_steps": 300, "proxy": "small",
    },
}


# ------------------------------------------------------------------------------------ configuration


def available_methods(wanted: list[str]) -> tuple[list[str], list[str]]:
    """The wanted methods whose code is present, and notes on those skipped."""
    keep, notes = [], []
    for m in wanted:
        module = METHOD_MODULES.get(m)
        if module and importlib.util.find_spec(module) is None:
            notes.append(f"{m}: skipped ({module} is not available)")
        else:
            keep.append(m)
    return keep, notes


# The pre-training setting (every method trained from scratch) as a second run: the stages it
# shares with the fine-tuning run (tokenizer, blocks, base model, factors, scores, masks) are
# copied from there and reused because their keys (content fingerprints) match. filter-oracle
# (trained from scratch on the blocks without toxic text) is the floor of data interventions.
PRETRAIN_METHODS = ["base", "ifguide", "random", "filter-oracle"]
SHARED_STAGES = ["tokenizer", "blocks", "heldout", "init", "models/base", "factors", "scores", "masks", "eval/base"]


def pipeline_config(p: dict, methods: list[str], toxic_share_budget: float, seed: int,
                    setting: str = "finetune") -> dict:
    """The ``ifguide run`` configuration (paths relative to the run's output directory)."""
    cfg = {
        "setting": setting,
        "seed": seed,
        "methods": methods,
        "data": {"corpus": ["data/corpus.jsonl"], "heldout": "data/heldout.txt", "block_size": p["block_size"]},
        "tokenizer": {"vocab_size": p["vocab"]},
        "model": {"arch": "gpt-neox", "preset": p["model"]},
        "train": {"epochs": p["epochs"], "lr": p["lr"], "batch_size": p["batch"], "logging_steps": 20},
        "finetune": {"fraction": p["finetune"], "lr": p["lr"] / 3},
        "attribution": {"queries_toxic": "data/queries.jsonl", "strategy": "ekfac", "max_blocks": p["factor_blocks"],
                        "batch_size": 16, "alignment": "next", "ablations": ["toxic-only"]},
        "selection": {"threshold": 0.99, "window": 1, "budget": toxic_share_budget, "lam": 1.0},
        "evaluation": {"prompts": "data/eval_prompts.jsonl", "samples": p["samples"], "max_new_tokens": 20,
                       "top_p": 0.9, "seeds": p["seeds"], "scorer": "profanity-check",
                       # RAD as in IF-Guide's code (top-k 20, beta 50), steered by its own reward model
                       # trained on Jigsaw, not by the evaluation's scorer
                       "rad_k": 20, "rad_beta": 50.0, "rad_reward_data": "data/reward.jsonl"},
        "dpo": {"steps": p["dpo_steps"]},
        "baseline": "base",
        "control": "random" if "random" in methods else None,
    }
    if "proxy" in methods:
        cfg["attribution"]["proxy"] = {"arch": "gpt-neox", "preset": p.get("proxy", "micro")}
    return cfg


# ------------------------------------------------------------------------------ attribution quality


def same_from_next(scores_next: np.ndarray) -> np.ndarray:
    """Scores in the ``same`` alignment from scores computed in the ``next`` alignment.

    With kronfluence's per-position scores P[:, t] (see ``ifguide.attribution.scores``),
    ``next`` stores ``next[:, j] = P[:, j-1]`` and ``same`` stores ``same[:, j] = P[:, j]``
    (column 0 NaN in both). Hence ``same[:, j] = next[:, j+1]`` for ``1 <= j <= T-2``. The last
    position's P[:, T-1] is exactly 0: the training loss (``CausalLMTask``) uses the logits of
    positions 0..T-2 only, so no tracked module gets an output gradient at T-1.
    """
    out = np.full(scores_next.shape, np.nan, dtype=np.float32)
    out[:, 1:-1] = scores_next[:, 2:]
    out[:, -1] = 0.0
    return out


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(scores)
    labels, scores = labels[ok], scores[ok]
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, scores))


def selection_quality(scores: np.ndarray, labels: np.ndarray, threshold: float, window: int, budget: float) -> dict:
    """How well scores and their IF-Guide selection match ground-truth toxic targets.

    ``labels`` are target-coordinate token labels [N, T] (column 0 ignored). A row (block) is
    toxic when at least half of its targets are; its score is the sum of its token scores (the
    per-block influence).
    """
    from ifguide.selection import select_toxic_tokens

    labels = np.asarray(labels, dtype=bool).copy()
    labels[:, 0] = False
    scores = np.asarray(scores, dtype=np.float32)
    sel = select_toxic_tokens(scores, threshold=threshold, window=window, budget=budget)
    mask = np.asarray(sel.mask, dtype=bool)
    n_sel = int(mask.sum())
    row_labels = labels[:, 1:].mean(axis=1) >= 0.5
    return {
        "selected": n_sel,
        "share_in_toxic": float((mask & labels).sum() / n_sel) if n_sel else None,
        "toxic_recall": float((mask & labels).sum() / labels.sum()) if labels.sum() else None,
        "token_auroc": _auroc(labels[:, 1:].reshape(-1), scores[:, 1:].reshape(-1)),
        "row_auroc": _auroc(row_labels, np.nansum(scores[:, 1:], axis=1)),
    }


def attribution_table(run_dir: Path, blocks_dir: Path, sel_cfg: dict) -> dict:
    """Quality of differential, toxic-only and (when both exist) conservative scores, min(toxic-only,
    differential), in both alignments (missing variants skipped)."""
    from ifguide.artifacts import read_meta
    from ifguide.data.blocks import Blocks

    labels = Blocks.open(blocks_dir).toxic_labels
    next_scores: dict[str, np.ndarray] = {}
    for variant in ("differential", "toxic-only"):
        sdir = run_dir / "scores" / variant
        if not (sdir / "scores.npy").is_file():
            continue
        if read_meta(sdir).get("alignment_mode", "next") != "next":
            raise InputError(f"{sdir}: expected scores in the 'next' alignment (the 'same' one is derived from it)")
        next_scores[variant] = np.load(sdir / "scores.npy")
    if len(next_scores) == 2:  # the same model, blocks and toxic queries: the pipeline scored both
        next_scores["conservative"] = np.minimum(next_scores["differential"], next_scores["toxic-only"])
    out: dict = {}
    for variant, scores_next in next_scores.items():
        for alignment, scores in (("next", scores_next), ("same", same_from_next(scores_next))):
            out[f"{variant}/{alignment}"] = selection_quality(
                scores, labels, sel_cfg["threshold"], sel_cfg["window"], sel_cfg["budget"])
    return out


def corpus_token_stats(blocks_dir: Path, budget: float) -> dict:
    from ifguide.data.blocks import Blocks

    b = Blocks.open(blocks_dir)
    labels = np.asarray(b.toxic_labels, dtype=bool)
    toxic = int(labels[:, 1:].sum())
    targets = labels[:, 1:].size
    return {"blocks": b.shape[0], "block_size": b.shape[1], "tokens": int(b.shape[0] * b.shape[1]),
            "toxic_token_share": toxic / targets, "budget": budget,
            "budget_over_toxic_mass": budget * targets / toxic if toxic else None}


# ---------------------------------------------------------------------------------------- report


def _fmt(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def _toxicity_rows(summary: dict, suffix: str = "") -> list[str]:
    lines = []
    for m, e in summary["methods"].items():
        cells = [f"{_fmt(e[s][k])} ± {_fmt(e[s][k + '_sd'])}" for k in ("emt", "tp") for s in ("full", "toxic", "nontoxic")]
        lines.append(f"| {m}{suffix} | " + " | ".join(cells) + f" | {_fmt(e.get('ppl'), '.1f')} |")
    return lines


def _own_stages(pretrain: dict) -> dict[str, float]:
    """Stage times of the pre-training run without those it shares with the fine-tuning run."""
    return {k: v for k, v in pretrain.get("stage_seconds", {}).items()
            if not any(k == s or k.startswith(s + "/") for s in SHARED_STAGES)}


# IF-Guide against the rows it must beat, each pair on the same prompts and sampling seeds.
RIVALS = [("dpo", "run"), ("rad", "run"), ("ifguide+rad", "run"), ("filter-oracle", "run-pretrain")]


def head_to_head(out: Path) -> list[dict]:
    """Paired bootstrap of (IF-Guide − rival) per prompt, for IF-Guide fine-tuned and pre-trained.

    Rivals from the other run share the base model's data and evaluation prompts and seeds
    (``compare`` refuses them otherwise), so the pairing across the two runs is valid.
    """
    from ifguide.evaluation.compare import compare

    rivals = [(m, out / r / "eval" / m) for m, r in RIVALS if (out / r / "eval" / m / "results.json").is_file()]
    rows = []
    for label, run in (("ifguide (fine-tune)", "run"), ("ifguide (pre-train)", "run-pretrain")):
        ours = out / run / "eval" / "ifguide"
        if not (ours / "results.json").is_file() or not rivals:
            continue
        table = compare([ours] + [d for _, d in rivals], names=[label] + [m for m, _ in rivals], baseline=label)
        for row in table.rows[1:]:  # row − baseline; flipped so that < 0 means IF-Guide is lower
            vs = row[f"vs_{label}"]
            # 0.0 - x, not -x: a zero difference stays +0.0 (and prints as +0.000, not -0.000)
            flip = {k: None if v is None else {"diff": 0.0 - v["diff"], "ci95": [0.0 - v["ci95"][1], 0.0 - v["ci95"][0]],
                                                "significant": v["significant"]} for k, v in vs.items()}
            rows.append({"ifguide": label, "rival": row["method"], **flip})
    return rows


def _head_to_head_lines(rows: list[dict]) -> list[str]:
    def cell(d):
        return "–" if d is None else f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" + ("*" if d["significant"] else "")

    def verdict(d):
        if d is None or not d["significant"]:
            return "not significantly different"
        return "IF-Guide lower" if d["diff"] < 0 else "IF-Guide higher"

    lines = ["## IF-Guide head to head (IF-Guide − rival, paired over prompts, 95 % CI; * = excludes 0)", "",
             "Negative: IF-Guide is less toxic. `filter-oracle` is trained from scratch on the blocks without any "
             "toxic text, the floor of what a change to the training data can reach under this scorer.", "",
             "| IF-Guide | rival | ΔEMT full | ΔTP full | ΔEMT toxic | ΔTP toxic | on EMT full |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ifguide']} | {r['rival']} | {cell(r['emt_full'])} | {cell(r['tp_full'])} | "
                     f"{cell(r['emt_toxic'])} | {cell(r['tp_toxic'])} | {verdict(r['emt_full'])} |")
    return lines + [""]


def results_markdown(summary: dict, attribution: dict, stats: dict, build: dict, notes: list[str],
                     preset: str, seconds: float, pretrain: dict | None = None,
                     rivals: list[dict] | None = None) -> str:
    lines = [f"# Realistic benchmark (preset `{preset}`, setting `{summary.get('setting')}`)", ""]
    stage_min = sum(summary.get("stage_seconds", {}).values()) / 60
    pre_own = _own_stages(pretrain) if pretrain else {}
    pre_min = sum(pre_own.values()) / 60
    lines += [f"Wall time of this invocation: {seconds / 60:.1f} min (finished stages are reused). Sum of stage "
              f"times, the cost of a fresh run: {stage_min:.1f} min (fine-tuning run)"
              + (f" + {pre_min:.1f} min (pre-training run) = {stage_min + pre_min:.1f} min" if pretrain else "") + ".", ""]
    lines += [f"Corpus: {stats['tokens']:,} tokens in {stats['blocks']:,} blocks of "
              f"{stats['block_size']}; {build['docs']:,} documents ({build['toxic_docs']} toxic); toxic token share "
              f"{100 * stats['toxic_token_share']:.2f} %; budget {100 * stats['budget']:.1f} % of tokens = "
              f"{_fmt(stats['budget_over_toxic_mass'], '.2f')}× the toxic token mass. Queries: {build['queries']} "
              f"(half toxic); evaluation prompts: {build['eval_prompts']} ({build['eval_toxic']} toxic).", ""]
    lines += ["## Toxicity and fluency (mean ± sd over sampling seeds)", "",
              "| method | EMT full | EMT toxic | EMT non-toxic | TP full | TP toxic | TP non-toxic | PPL |",
              "|---|---|---|---|---|---|---|---|"]
    lines += _toxicity_rows(summary)
    lines += ["", "## Paired comparison (the pipeline's `compare`, bootstrap CIs over prompts)", "",
              summary.get("table_markdown", "(missing)"), ""]
    if pretrain is not None:
        lines += ["## Pre-training setting (every row trained from scratch on the same data order)", "",
                  "| method | EMT full | EMT toxic | EMT non-toxic | TP full | TP toxic | TP non-toxic | PPL |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += _toxicity_rows(pretrain, " (pretrain)")
        lines += ["", pretrain.get("table_markdown", "(missing)"), ""]
    if rivals:
        lines += _head_to_head_lines(rivals)
    lines += ["## Attribution quality against the known toxic documents", "",
              "Selection with the run's threshold/window/budget. `share in toxic`: fraction of selected tokens inside "
              f"toxic documents (a random mask scores ≈ {100 * stats['toxic_token_share']:.1f} %, an oracle 100 %). "
              "Row AUROC: block score = sum of its token scores; a block is toxic when ≥ half its targets are.", "",
              "| scores | alignment | share in toxic | toxic recall | token AUROC | row AUROC |", "|---|---|---|---|---|---|"]
    for key, q in attribution.items():
        variant, alignment = key.split("/")
        lines.append(f"| {variant} | {alignment} | {_fmt(q['share_in_toxic'])} | {_fmt(q['toxic_recall'])} | "
                     f"{_fmt(q['token_auroc'])} | {_fmt(q['row_auroc'])} |")
    for variant in ("differential", "toxic-only", "conservative"):
        a, b = attribution.get(f"{variant}/next"), attribution.get(f"{variant}/same")
        if a and b and a["token_auroc"] is not None and b["token_auroc"] is not None:
            gap = a["token_auroc"] - b["token_auroc"]
            verdict = (f"the `{'next' if gap > 0 else 'same'}` alignment ranks toxic tokens better"
                       if abs(gap) >= AUROC_TIE else "the two alignments are indistinguishable")
            lines.append(f"\n{variant}: {verdict} (token AUROC next − same = {gap:+.4f}).")
    lines += ["", "## Stage times (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in summary.get("stage_seconds", {}).items()]
    if pretrain:
        lines += [f"| pre-training run: {k} | {v:.0f} |" for k, v in pre_own.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ main


def run_pretrain(out: Path, p: dict, args) -> dict:
    """base / IF-Guide / random / filter-oracle trained from scratch, in ``OUT/run-pretrain``."""
    import shutil

    import yaml

    from ifguide.pipeline.config import config_from_dict
    from ifguide.pipeline.run import run_pipeline

    src, dst = out / "run", out / "run-pretrain"
    for stage in SHARED_STAGES:
        if (src / stage).is_dir() and not (dst / stage).exists():
            shutil.copytree(src / stage, dst / stage)
    cfg_dict = pipeline_config(p, PRETRAIN_METHODS, args.budget, args.seed, setting="pretrain")
    (out / "config-pretrain.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    return run_pipeline(config_from_dict(cfg_dict, out), dst)


def run(args) -> dict:
    import yaml

    from ifguide.pipeline.config import config_from_dict
    from ifguide.pipeline.run import run_pipeline

    t0 = time.perf_counter()
    preset_name = "quick" if args.quick else args.preset
    p = PRESETS[preset_name]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = rd.BuildSpec(toxic_share=args.toxic_share, seed=args.seed, **p["data"])
    build = rd.build_all(Path(args.data), out / "data", spec,
                         eval_prompts=Path(args.eval_prompts) if args.eval_prompts else None)
    logger.info("data: %s", {k: v for k, v in build.items() if k != "per_source"})
    methods, notes = available_methods(args.methods or p["methods"])
    cfg_dict = pipeline_config(p, methods, args.budget, args.seed)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    cfg = config_from_dict(cfg_dict, out)
    summary = run_pipeline(cfg, out / "run")
    pretrain = None
    if args.pretrain:
        pretrain = run_pretrain(out, p, args)
    sel = {"threshold": cfg.selection.threshold, "window": cfg.selection.window, "budget": cfg.selection.budget}
    attribution = attribution_table(out / "run", out / "run" / "blocks", sel)
    stats = corpus_token_stats(out / "run" / "blocks", cfg.selection.budget)
    seconds = time.perf_counter() - t0
    rivals = head_to_head(out)
    md = results_markdown(summary, attribution, stats, build, notes, preset_name, seconds, pretrain, rivals)
    (out / "results.md").write_text(md)
    from ifguide.artifacts import write_json

    result = {"preset": preset_name, "seconds": seconds, "build": build, "corpus": stats, "attribution": attribution,
              "head_to_head": rivals,
              "notes": notes, "summary": str(out / "run" / "summary.json"),
              "pretrain_summary": str(out / "run-pretrain" / "summary.json") if pretrain is not None else None}
    write_json(out / "results.json", result)
    print(md)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", required=True, help="output directory (data/, config.yaml, run/, results.md)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the shared/data folder (default: %(default)s)")
    ap.add_argument("--preset", choices=("cpu", "gpu"), default="cpu", help="sizes (see PRESETS)")
    ap.add_argument("--quick", action="store_true", help="~5-minute smoke run (overrides --preset)")
    ap.add_argument("--eval-prompts", default=None,
                    help="RTP-schema jsonl of evaluation prompts, balanced toxic/non-toxic (default: built from RTP)")
    ap.add_argument("--methods", nargs="+", default=None, choices=ALL_METHODS + ["proxy", "unlikelihood", "remove"],
                    help="rows to run (default: all of the preset's that exist)")
    ap.add_argument("--toxic-share", type=float, default=0.06, help="toxic share of corpus characters")
    ap.add_argument("--budget", type=float, default=0.02, help="selected share of training tokens (paper: 0.02)")
    ap.add_argument("--seed", type=int, default=0, help="data split and training seed")
    ap.add_argument("--no-pretrain", dest="pretrain", action="store_false",
                    help="skip the second run in the pre-training setting (base, IF-Guide, random from scratch)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
