"""Loss-curve plots from ``train_log.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_train_log(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(log_path: str | os.PathLike, png_path: str | os.PathLike, title: str | None = None) -> None:
    """Overall loss, benign-target CE and toxic-target CE against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_train_log(log_path)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for key, label in (("loss", "objective"), ("benign_ce", "benign-target CE"), ("toxic_ce", "toxic-target CE")):
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=label, marker="." if len(pts) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / target token")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    if records:
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
