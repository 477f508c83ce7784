"""Compare evaluations: the paper's table, reduction factors and paired bootstrap tests.

``compare(eval_dirs, names, baseline, control)`` reads ``results.json`` and
``generations.jsonl`` of each eval directory. All must share prompts and seeds (refused
otherwise). For every method and reference row (the baseline, and the control when named)
the *paired* bootstrap resamples prompt indices, applies the same indices to both methods'
seed-averaged per-prompt values, and reports the mean difference (method - reference) with its
95 % CI; a difference is significant when the CI excludes 0.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ifguide.artifacts import read_meta
from ifguide.errors import InputError
from ifguide.evaluation import metrics
from ifguide.evaluation.evaluate import read_generations

TESTED = (("emt", "full"), ("tp", "full"), ("emt", "toxic"), ("tp", "toxic"))


@dataclass
class _Eval:
    name: str
    path: Path
    results: dict
    per_prompt: dict[str, np.ndarray]  # metric -> seed-averaged per-prompt values [P]
    prompt_toxic: list


def _open(path: str | os.PathLike, name: str) -> _Eval:
    path = Path(path)
    read_meta(path, stage="eval")
    import json

    results = json.loads((path / "results.json").read_text())
    seeds, prompts, scores = read_generations(path / "generations.jsonl")
    values = metrics.per_prompt_values(scores["toxicity"])
    return _Eval(name, path, results, {m: v.mean(0) for m, v in values.items()}, [r["prompt_toxic"] for r in prompts])


def _check_comparable(evals: list[_Eval]) -> None:
    ref = evals[0]
    for e in evals[1:]:
        for key, what in ((("prompts", "fingerprint"), "prompts"), (("seeds",), "seeds"), (("decoding", "samples"), "samples per prompt")):
            a, b = ref.results, e.results
            for k in key:
                a, b = a.get(k), b.get(k)
            if a != b:
                raise InputError(f"compare: {e.path} and {ref.path} used different {what}; paired comparison needs the same")
        if ref.results["scorer"]["name"] != e.results["scorer"]["name"]:
            raise InputError(f"compare: {e.path} and {ref.path} were scored by different scorers")


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = metrics.DEFAULT_BOOTSTRAP, seed: int = 0) -> dict | None:
    """Mean of ``a - b`` over paired prompts with a 95 % bootstrap CI; None for no prompts."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size == 0:
        return None
    ci = metrics.bootstrap_ci(diff, n_boot, seed)
    return {"diff": float(diff.mean()), "ci95": ci, "significant": bool(ci[0] > 0 or ci[1] < 0)}


def _stat(results: dict, metric: str, subset: str) -> dict:
    return results["toxicity"][subset][metric]


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if stat is None or stat.get("mean") is None:
        return "–"
    sd = stat.get("sd")
    return f"{stat['mean']:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _num(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


@dataclass
class ComparisonTable:
    """Rows of the comparison; render with :meth:`to_markdown`, :meth:`to_csv`, :meth:`plot`.

    Each row: ``method``, ``path``; ``emt_full``, ``tp_full``, ``emt_toxic``, ``tp_toxic`` (each
    ``{"mean", "sd", "ci95"}`` from results.json); ``ppl``; ``acc`` (the eval's ``acc_mean``);
    ``emt_full_reduction`` / ``tp_full_reduction`` (baseline / method, None when undefined); and
    for each reference row other than itself ``vs_<name>``: ``{"emt_full": {"diff", "ci95",
    "significant"}, ...}`` from the paired bootstrap (None for an empty subset).
    """

    rows: list[dict]
    baseline: str
    control: str | None = None
    n_prompts: int = 0
    seeds: list = field(default_factory=list)

    def _diff_cell(self, row: dict, ref: str, metric: str, subset: str) -> str:
        d = row.get(f"vs_{ref}", {}).get(f"{metric}_{subset}")
        if d is None:
            return "–"
        star = "*" if d["significant"] else ""
        return f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]{star}"

    def to_markdown(self) -> str:
        head = ["Method", "EMT Full", "TP Full", "EMT Toxic", "TP Toxic", "PPL", "Acc", "EMT ×", "TP ×"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r["method"], *(_fmt(r[f"{m}_{s}"]) for m, s in TESTED), _num(r["ppl"]), _num(r["acc"], 3),
                     _num(r["emt_full_reduction"]), _num(r["tp_full_reduction"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Mean ± sd over seeds {self.seeds}; {self.n_prompts} prompts. × = baseline ({self.baseline}) / method."]
        for ref in [self.baseline] + ([self.control] if self.control else []):
            lines += ["", f"Paired bootstrap vs {ref} (method − {ref}, 95 % CI; * = CI excludes 0):", ""]
            lines += ["| Method | ΔEMT Full | ΔTP Full | ΔEMT Toxic | ΔTP Toxic |", "|---|---|---|---|---|"]
            for r in self.rows:
                if r["method"] != ref:
                    lines.append("| " + " | ".join([r["method"], *(self._diff_cell(r, ref, m, s) for m, s in TESTED)]) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        refs = [self.baseline] + ([self.control] if self.control else [])
        cols = ["method"]
        for m, s in TESTED:
            cols += [f"{m}_{s}_mean", f"{m}_{s}_sd", f"{m}_{s}_ci_lo", f"{m}_{s}_ci_hi"]
        cols += ["ppl", "acc", "emt_full_reduction", "tp_full_reduction"]
        for ref in refs:
            for m, s in TESTED:
                cols += [f"d_{m}_{s}_vs_{ref}", f"d_{m}_{s}_vs_{ref}_lo", f"d_{m}_{s}_vs_{ref}_hi", f"d_{m}_{s}_vs_{ref}_sig"]
        w = csv.writer(buf)
        w.writerow(cols)
        for r in self.rows:
            vals: list = [r["method"]]
            for m, s in TESTED:
                st = r[f"{m}_{s}"]
                ci = st.get("ci95") or [None, None]
                vals += [st.get("mean"), st.get("sd"), ci[0], ci[1]]
            vals += [r["ppl"], r["acc"], r["emt_full_reduction"], r["tp_full_reduction"]]
            for ref in refs:
                for m, s in TESTED:
                    d = r.get(f"vs_{ref}", {}).get(f"{m}_{s}")
                    vals += [None, None, None, None] if d is None else [d["diff"], d["ci95"][0], d["ci95"][1], d["significant"]]
            w.writerow(["" if v is None else v for v in vals])
        return buf.getvalue()

    def plot(self, path: str | os.PathLike) -> None:
        """Grouped bars of EMT/TP (full and toxic prompts) per method, error bars = sd across seeds."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [f"{m.upper()} {s}" for m, s in TESTED]
        x = np.arange(len(labels))
        width = 0.8 / max(1, len(self.rows))
        fig, ax = plt.subplots(figsize=(2 + 1.6 * len(labels), 3.5))
        for i, r in enumerate(self.rows):
            means = [r[f"{m}_{s}"].get("mean") or 0.0 for m, s in TESTED]
            sds = [r[f"{m}_{s}"].get("sd") or 0.0 for m, s in TESTED]
            ax.bar(x + (i - (len(self.rows) - 1) / 2) * width, means, width, yerr=sds, capsize=3, label=r["method"])
        ax.set_xticks(x, labels)
        ax.set_ylabel("score")
        ax.set_ylim(0, 1)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=150)
        plt.close(fig)


def _reduction(base: float | None, value: float | None) -> float | None:
    if base is None or value is None or value == 0:
        return None
    return base / value


def compare(
    eval_dirs: list[str | os.PathLike],
    names: list[str] | None = None,
    baseline: str | None = None,
    control: str | None = None,
    *,
    n_boot: int = metrics.DEFAULT_BOOTSTRAP,
) -> ComparisonTable:
    """Build the comparison table of several eval directories (first one is the default baseline)."""
    if not eval_dirs:
        raise InputError("compare: give at least one eval directory")
    names = list(names) if names else [Path(d).name for d in eval_dirs]
    if len(names) != len(eval_dirs) or len(set(names)) != len(names):
        raise InputError(f"--names: need {len(eval_dirs)} distinct names, got {names}")
    baseline = baseline or names[0]
    for ref, flag in ((baseline, "--baseline"), (control, "--control")):
        if ref is not None and ref not in names:
            raise InputError(f"{flag}: {ref!r} is not one of the names {names}")
    evals = [_open(d, n) for d, n in zip(eval_dirs, names)]
    _check_comparable(evals)
    by_name = {e.name: e for e in evals}
    masks = metrics.subset_masks(evals[0].prompt_toxic)
    rows = []
    for e in evals:
        row: dict = {"method": e.name, "path": str(e.path)}
        for m, s in TESTED:
            row[f"{m}_{s}"] = _stat(e.results, m, s)
        row["ppl"] = e.results.get("ppl")
        row["acc"] = e.results.get("acc_mean")
        base = by_name[baseline].results
        for m in ("emt", "tp"):
            row[f"{m}_full_reduction"] = _reduction(_stat(base, m, "full")["mean"], row[f"{m}_full"]["mean"])
        for ref in filter(None, (baseline, control)):
            if ref == e.name:
                continue
            other = by_name[ref]
            row[f"vs_{ref}"] = {
                f"{m}_{s}": paired_bootstrap(e.per_prompt[m][masks[s]], other.per_prompt[m][masks[s]], n_boot)
                for m, s in TESTED
            }
        rows.append(row)
    return ComparisonTable(rows, baseline, control, n_prompts=len(evals[0].prompt_toxic), seeds=evals[0].results["seeds"])


def write_comparison(table: ComparisonTable, out: str | os.PathLike, plot: str | os.PathLike | None = None) -> None:
    """Write ``out`` (Markdown) and the CSV beside it (same name, ``.csv``); optionally the plot."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table.to_markdown(), encoding="utf-8")
    out.with_suffix(".csv").write_text(table.to_csv(), encoding="utf-8")
    if plot:
        table.plot(plot)
