"""``summary.json`` and the self-contained ``report.html`` of a pipeline run."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ifguide.artifacts import write_json

logger = logging.getLogger("ifguide.pipeline")

SUBSETS = ("full", "toxic", "nontoxic")


def _results(eval_dir: str) -> dict:
    return json.loads((Path(eval_dir) / "results.json").read_text())


def _method_entry(res: dict) -> dict:
    entry: dict = {}
    for sub in SUBSETS:
        t = res["toxicity"][sub]
        entry[sub] = {
            "emt": t["emt"]["mean"], "tp": t["tp"]["mean"],
            "emt_sd": t["emt"].get("sd"), "tp_sd": t["tp"].get("sd"),
            "emt_ci95": t["emt"].get("ci95"), "tp_ci95": t["tp"].get("ci95"),
            "toxic_rate": t.get("toxic_rate", {}).get("mean"), "n_prompts": t.get("n_prompts"),
        }
    entry["ppl"] = res.get("ppl")
    entry["acc"] = res.get("acc_mean")
    entry["lambada"] = res.get("lambada")
    return entry


def _method_stages(method: str, masks: dict, guide: str = "differential") -> list[str]:
    """Stages whose time a method adds on top of the base model and its evaluation."""
    from ifguide.pipeline.run import MASKED_METHODS, RAD_METHODS

    stages = [f"rows/{method}", f"models/{method}", f"eval/{method}"]
    spec = MASKED_METHODS.get(method)
    if spec:
        mask = spec["mask"]
        stages.append(f"masks/{mask}")
        variant = {"ifguide": guide, "toxic-only": "toxic-only", "document": "document", "random": guide,
                   "oracle": guide}.get(mask)
        if variant:
            stages += ["factors", f"scores/{variant}"]
        if variant == "conservative":
            stages += ["scores/differential", "scores/toxic-only"]
        if mask in ("random", "oracle"):
            stages.append("masks/ifguide")
        if mask == "proxy":
            stages += ["proxy/init", "proxy/model", "proxy/factors", "proxy/scores"]
            if guide == "conservative":
                stages += ["proxy/scores-differential", "proxy/scores-toxic-only"]
    if method in RAD_METHODS and RAD_METHODS[method] != "base":
        stages += _method_stages(RAD_METHODS[method], masks, guide)
    return list(dict.fromkeys(stages))


def write_summary(run, methods, evals, models, masks, quality, seconds) -> dict:
    from ifguide.evaluation.compare import compare, write_comparison

    cfg = run.cfg
    names = list(methods)
    control = cfg.control if cfg.control in names else None
    table = compare([evals[m] for m in names], names=names, baseline=cfg.baseline, control=control)
    cmp_dir = run.root / "compare"
    cmp_dir.mkdir(exist_ok=True)
    write_comparison(table, cmp_dir / "table.md", plot=cmp_dir / "toxicity.png")

    summary: dict = {"methods": {}, "setting": cfg.setting, "baseline": cfg.baseline, "control": control}
    for m in names:
        entry = _method_entry(_results(evals[m]))
        entry["attribution"] = quality.get(m)
        entry["model"] = models.get(m if m in models else {"rad": "base", "ifguide+rad": "ifguide"}.get(m, m))
        entry["eval"] = evals[m]
        row = next(r for r in table.rows if r["method"] == m)
        entry["reduction_vs_baseline"] = {"emt": row.get("emt_full_reduction"), "tp": row.get("tp_full_reduction")}
        entry["paired"] = {k[3:]: v for k, v in row.items() if k.startswith("vs_")}
        entry["extra_seconds"] = {s: round(run.stages.seconds[s], 2) for s in _method_stages(m, masks, cfg.attribution.score)
                                  if s in run.stages.seconds}
        summary["methods"][m] = entry
    summary["selection_only"] = {k: v for k, v in quality.items() if k not in names}
    summary["seconds"] = seconds
    summary["stage_seconds"] = {k: round(v, 2) for k, v in run.stages.seconds.items()}
    summary["reused_stages"] = run.stages.skipped
    summary["table_markdown"] = table.to_markdown()
    summary["config"] = dataclasses.asdict(cfg)
    write_json(run.root / "summary.json", summary)
    return summary


# ----------------------------------------------------------------------------- report.html

def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"/>'


def _bars(summary: dict, methods: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("EMT (all prompts)", "full", "emt"), ("TP (all prompts)", "full", "tp"),
              ("EMT (toxic prompts)", "toxic", "emt"), ("Perplexity", None, "ppl")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
    for ax, (title, sub, key) in zip(axes, panels):
        vals, errs = [], []
        for m in methods:
            e = summary["methods"][m]
            v = e[key] if sub is None else e[sub][key]
            vals.append(v if v is not None else 0.0)
            errs.append((e[sub].get(f"{key}_sd") or 0.0) if sub else 0.0)
        colours = ["#888" if m == "base" else "#c44" if m == "random" else "#36c" for m in methods]
        ax.bar(range(len(methods)), vals, yerr=errs, capsize=3, color=colours)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _loss_curves(models: dict[str, str]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ifguide.training.plots import read_train_log

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    drawn = False
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, path) in enumerate(models.items()):
        log = read_train_log(Path(path) / "train_log.jsonl") if path else []
        if not log:
            continue
        drawn = True
        colour = cycle[k % len(cycle)]  # the same colour for a method in both panels
        axes[0].plot([r["step"] for r in log if r.get("benign_ce") is not None],
                     [r["benign_ce"] for r in log if r.get("benign_ce") is not None], label=name, color=colour)
        tox = [(r["step"], r["toxic_ce"]) for r in log if r.get("toxic_ce") is not None]
        if tox:
            axes[1].plot(*zip(*tox), label=name, color=colour)
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set_title("benign-target cross-entropy")
    axes[1].set_title("selected-target cross-entropy (penalised)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _summary_table(summary: dict, methods: list[str]) -> str:
    def f(x, d=3):
        return "–" if x is None else f"{x:.{d}f}"

    def pm(e, sub, key):
        sd = e[sub].get(f"{key}_sd")
        return f(e[sub][key]) + ("" if sd is None else f" ± {sd:.3f}")

    head = ["Method", "EMT Full", "TP Full", "EMT Toxic", "TP Toxic", "EMT Non-toxic", "PPL", "Acc", "EMT ×", "TP ×",
            "precision", "recall", "extra time (s)"]
    rows = []
    for m in methods:
        e = summary["methods"][m]
        q = e.get("attribution") or {}
        red = e.get("reduction_vs_baseline") or {}
        cells = [m, pm(e, "full", "emt"), pm(e, "full", "tp"), pm(e, "toxic", "emt"), pm(e, "toxic", "tp"),
                 pm(e, "nontoxic", "emt"), f(e["ppl"], 2), f(e["acc"]), f(red.get("emt"), 2), f(red.get("tp"), 2),
                 f(q.get("precision")), f(q.get("recall")), f(sum(e.get("extra_seconds", {}).values()), 0)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _selection_table(summary: dict, methods: list[str]) -> str:
    """Each selection against the corpus's ground-truth labels: the trained methods' masks and the
    ablations that were only selected (``selection_only``). Empty without labels."""
    entries = [(m, summary["methods"][m].get("attribution")) for m in methods]
    entries += [(f"{name} (selection only)", q) for name, q in summary.get("selection_only", {}).items()]
    entries = [(name, q) for name, q in entries if q]
    if not entries:
        return ""

    def f(x):
        return "–" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    keys = ("precision", "recall", "strict_precision", "n_selected", "token_auroc")
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in [name, *(f(q.get(k)) for k in keys)]) + "</tr>"
                   for name, q in entries)
    return ("<h2>Selected tokens vs ground truth</h2><p class='note'>precision counts a selected token within the "
            "window of a labelled toxic token as correct; strict precision only the labelled tokens themselves; "
            "recall is the share of labelled toxic tokens selected.</p><table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in ("selection", *keys)) + "</tr></thead><tbody>" + rows + "</tbody></table>")


def _paired_table(summary: dict, methods: list[str], ref: str) -> str:
    rows = []
    for m in methods:
        d = summary["methods"][m].get("paired", {}).get(ref)
        if not d:
            continue
        cells = [m]
        for key in ("emt_full", "tp_full", "emt_toxic", "tp_toxic"):
            x = d.get(key)
            if x is None:
                cells.append("–")
            else:
                sig = " significant" if x["significant"] else " n.s."
                cells.append(f"{x['diff']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]{sig}")
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ["Method", "ΔEMT Full", "ΔTP Full", "ΔEMT Toxic", "ΔTP Toxic"])
    return (f"<h3>Paired bootstrap vs {html.escape(ref)} (method − {html.escape(ref)}, 95 % CI over prompts and seeds)</h3>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .note { color: #555; font-size: 13px; }
"""


def _scores_note(scores: dict) -> str:
    """Which model(s) the influence scores come from: the final base model, or a checkpoint average."""
    from ifguide.artifacts import read_meta

    if "ifguide" not in scores:
        return ""
    meta = read_meta(scores["ifguide"])
    kind = ("IF-Guide selects on conservative scores, min(toxic-only, differential)." if meta.get("mode") == "conservative"
            else "IF-Guide selects on differential scores (toxic minus safe queries).")
    averaged = meta.get("averaged_over")
    if not averaged:
        return f" {kind} Influence scores are those of the final base model."
    steps = ", ".join(Path(part["scores"]).parent.parent.name for part in averaged)
    return (f" {kind} Influence scores are averaged over {len(averaged)} checkpoints of the base run "
            f"({html.escape(steps)}).")


def write_report(run, summary, methods, evals, models, masks, scores, blocks, tok) -> Path:
    """Write ``report.html`` (self-contained: every image is embedded)."""
    from ifguide.data.blocks import Blocks
    from ifguide.models import load_tokenizer

    cfg = run.cfg
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ifguide report</title><style>{_CSS}</style></head><body>",
             "<h1>IF-Guide run report</h1>",
             f"<p class='note'>Run directory <code>{html.escape(str(run.root))}</code>; setting <b>{cfg.setting}</b>; "
             f"{len(methods)} methods; {summary['seconds']:.0f} s in all. Scores are mean ± sd over sampling seeds "
             f"{cfg.evaluation.seeds}; × is the reduction factor against <b>{html.escape(cfg.baseline)}</b>. Precision counts "
             "a selected token as correct when it is planted toxicity or within the selection window of it."
             f"{_scores_note(scores)}</p>",
             "<h2>Comparison</h2>", _summary_table(summary, methods),
             _paired_table(summary, methods, cfg.baseline)]
    if summary.get("control"):
        parts.append(_paired_table(summary, methods, summary["control"]))
    parts.append(_selection_table(summary, methods))
    parts += ["<h2>Toxicity and perplexity</h2>", _img(_bars(summary, methods), "bar charts")]
    curves = _loss_curves({m: p for m, p in models.items()})
    if curves:
        parts += ["<h2>Loss curves</h2>", _img(curves, "loss curves")]
    if "ifguide" in masks and "ifguide" in scores:
        from ifguide.selection.inspect import _documents_to_show, histogram_png, render_inspector_html
        from ifguide.selection.masks import read_mask

        mask, meta = read_mask(masks["ifguide"])
        b = Blocks.open(blocks)
        sc = np.load(Path(scores["ifguide"]) / "scores.npy", mmap_mode="r")
        docs = _documents_to_show(mask, meta, 12)
        parts += ["<h2>Selected tokens (top-ranked documents)</h2>",
                  render_inspector_html(b.input_ids, sc, mask, load_tokenizer(tok), docs, tau=meta.get("tau"),
                                        ranking=meta.get("ranked_documents"), histogram=histogram_png(sc, meta.get("tau")))]
    parts += ["<h2>Stage times</h2><table><tr><th>stage</th><th>seconds</th></tr>"
              + "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>" for k, v in summary["stage_seconds"].items())
              + "</table>", "</body></html>"]
    path = run.root / "report.html"
    fd, tmp = tempfile.mkstemp(prefix=".report.", dir=run.root)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
