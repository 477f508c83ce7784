"""A ``transformers.Trainer`` that trains with the IF-Guide objective.

Only ``compute_loss`` is overridden, so distributed data parallelism, mixed precision,
gradient accumulation, checkpointing and resuming all come from ``Trainer``/``accelerate``.
Batches carry a ``toxic_mask`` next to ``input_ids``/``labels`` (see
:class:`ifguide.training.data.BlockDataset`); without it this is ordinary causal-LM training.
Per-step benign/toxic cross-entropies are accumulated here and written to the training log
by :class:`SuppressionLogCallback`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ifguide.artifacts import write_meta
from ifguide.errors import TrainingDiverged
from ifguide.models import fingerprint_model
from ifguide.training.objective import suppression_loss

logger = logging.getLogger(__name__)


class SuppressionTrainer(Trainer):
    """``Trainer`` with the suppression loss.

    Args:
        lam: penalty weight λ on toxic targets.
        penalty: ``"neg_ce"`` (paper) or ``"unlikelihood"``.
        ce_clip: bound of the ``neg_ce`` penalty, −λ·min(CE, ce_clip) (``None``: the paper's −λ·CE).
        max_toxic_ce: guard — stop when the mean cross-entropy of the toxic targets in a batch
            exceeds this many nats (the −CE term is unbounded below; past this the model has
            learnt nothing useful but keeps pushing logits down). ``None`` disables it.
    """

    def __init__(self, *args, lam: float = 1.0, penalty: str = "neg_ce", ce_clip: float | None = None,
                 max_toxic_ce: float | None = 100.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam = lam
        self.penalty = penalty
        self.ce_clip = ce_clip
        self.max_toxic_ce = max_toxic_ce
        self.reset_loss_stats()

    def reset_loss_stats(self) -> None:
        self.loss_stats = {"benign_ce_sum": 0.0, "n_benign": 0, "toxic_ce_sum": 0.0, "n_toxic": 0}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        toxic_mask = inputs.pop("toxic_mask", None)
        outputs = model(**inputs)
        parts = suppression_loss(
            outputs.logits,
            labels,
            toxic_mask,
            self.lam,
            penalty=self.penalty,
            ce_clip=self.ce_clip,
            num_targets=num_items_in_batch,
            return_parts=True,
        )
        loss = parts.loss
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch is the global target count; DDP averages gradients over ranks.
            loss = loss * self.accelerator.num_processes
        if model.training:
            self._record(parts)
        return (loss, outputs) if return_outputs else loss

    def _record(self, parts) -> None:
        if not torch.isfinite(parts.loss):
            raise TrainingDiverged(
                f"non-finite loss at step {self.state.global_step}; lower the learning rate or λ, "
                "or use --penalty unlikelihood"
            )
        n_toxic = int(parts.n_toxic)
        if n_toxic and self.max_toxic_ce is not None:
            toxic_ce = float(parts.toxic_ce_sum) / n_toxic
            if toxic_ce > self.max_toxic_ce:
                raise TrainingDiverged(
                    f"toxic-target cross-entropy {toxic_ce:.1f} nats exceeds the guard "
                    f"--max-toxic-ce {self.max_toxic_ce:g} at step {self.state.global_step}: the −CE penalty is "
                    "running away. Lower λ (--lam) or the learning rate, or use --penalty unlikelihood."
                )
        s = self.loss_stats
        s["benign_ce_sum"] += float(parts.benign_ce_sum)
        s["n_benign"] += int(parts.n_benign)
        s["toxic_ce_sum"] += float(parts.toxic_ce_sum)
        s["n_toxic"] += n_toxic


class SuppressionLogCallback(TrainerCallback):
    """Adds benign/toxic cross-entropy to every log entry and appends it to ``train_log.jsonl``."""

    def __init__(self, trainer: SuppressionTrainer, log_path: str | Path):
        self.trainer = trainer
        self.log_path = Path(log_path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        s = self._global_loss_stats()
        record = {
            "step": state.global_step,
            "epoch": logs.get("epoch"),
            "loss": logs.get("loss"),
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),  # after the all-reduce, before clipping
            "benign_ce": s["benign_ce_sum"] / s["n_benign"] if s["n_benign"] else None,
            "toxic_ce": s["toxic_ce_sum"] / s["n_toxic"] if s["n_toxic"] else None,
            "n_toxic_targets": s["n_toxic"],
        }
        self.trainer.reset_loss_stats()
        if state.log_history:
            state.log_history[-1].update({k: v for k, v in record.items() if k.endswith("_ce")})
        if state.is_world_process_zero:
            with open(self.log_path, "a") as f:
                f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}) + "\n")

    def _global_loss_stats(self) -> dict:
        """The loss statistics summed over all data-parallel processes (each only sees its shard of a batch).

        ``on_log`` runs on every rank at the same step (``Trainer`` gathers the loss just before),
        so this collective cannot deadlock.
        """
        stats = self.trainer.loss_stats
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return stats
        keys = sorted(stats)
        local = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
        summed = accelerator.reduce(local, reduction="sum").tolist()
        return {k: (round(v) if k.startswith("n_") else v) for k, v in zip(keys, summed)}


def snapshot_step(name: str) -> int | None:
    """The step of a finished snapshot directory name ``step-N``; None for anything else."""
    digits = name.removeprefix("step-")
    return int(digits) if name.startswith("step-") and digits.isdigit() else None


def snapshot_steps(total_steps: int, n: int) -> list[int]:
    """Steps ``round(k * total / n)`` for ``k = 1 .. n-1``: the evenly spaced points of a run at which
    :class:`SnapshotCallback` saves the weights (step ``total`` is the final model itself)."""
    return sorted({s for k in range(1, n) if 0 < (s := round(k * total_steps / n)) < total_steps})


class SnapshotCallback(TrainerCallback):
    """Saves the weights (and tokenizer) at evenly spaced steps into ``directory/step-N``.

    Influence computed at one converged model under-weights what it has already memorised (a
    confidently predicted token has a small gradient); averaging scores over a few checkpoints
    of the same run (as TracIn does) is the usual remedy, and these snapshots are its inputs.
    A snapshot is written to a temporary name and renamed, so a killed run leaves none half-written.
    """

    def __init__(self, n: int, directory: str | Path, tokenizer=None, meta: dict | None = None):
        self.n = n
        self.directory = Path(directory)
        self.tokenizer = tokenizer
        self.meta = meta or {}
        self.steps: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps = snapshot_steps(state.max_steps, self.n)
        if state.is_world_process_zero and self.directory.is_dir():
            # a resumed run keeps the finished snapshots up to its checkpoint; later ones (or all, when
            # it starts over) and half-written ones are rewritten by this run
            for old in self.directory.iterdir():
                step = snapshot_step(old.name)
                if step is None or step > state.global_step:
                    shutil.rmtree(old, ignore_errors=True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self.steps or not state.is_world_process_zero:
            return
        final = self.directory / f"step-{state.global_step}"
        tmp = self.directory / f".step-{state.global_step}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        unwrapped = model.module if hasattr(model, "module") else model
        unwrapped.save_pretrained(tmp)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(tmp)
        write_meta(tmp, "model", **self.meta, snapshot_step=state.global_step, total_steps=state.max_steps,
                   fingerprint=fingerprint_model(unwrapped))
        tmp.rename(final)
        logger.info("snapshot at step %d -> %s", state.global_step, final)
