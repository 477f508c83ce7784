"""``train()``: pre-train from scratch or fine-tune, with or without a toxic-token mask.

The model directory it writes is an artifact like any other: weights and tokenizer
(``save_pretrained``), ``meta.json`` (stage ``"model"``, the model's fingerprint, the blocks'
and mask's fingerprints, the configuration, throughput), ``train_log.jsonl`` (loss, benign-target
CE and toxic-target CE per logging step) and ``loss_curve.png``. Checkpoints for resuming
live in ``OUT.partial/`` until training finishes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ifguide.artifacts import artifact_dir, fingerprint_json, write_meta
from ifguide.data.blocks import Blocks
from ifguide.errors import InputError
from ifguide.fields import help_field
from ifguide.training.objective import PENALTIES

logger = logging.getLogger(__name__)

SNAPSHOTS_DIR = "snapshots"


@dataclass
class TrainConfig:
    """How to train. Pre-training and fine-tuning differ only in the model you start from."""

    max_steps: int = help_field("optimizer steps; -1 means use `epochs`", -1)
    epochs: float = help_field("passes over the blocks (when max_steps is -1)", 1.0)
    lr: float = help_field("peak learning rate", 1e-3)
    batch_size: int = help_field("blocks per device per micro-batch", 8)
    grad_accum: int = help_field("micro-batches per optimizer step", 1)
    weight_decay: float = help_field("AdamW weight decay", 0.01)
    warmup_ratio: float = help_field("share of steps with linear learning-rate warm-up", 0.05)
    scheduler: str = help_field("learning-rate schedule (any transformers SchedulerType)", "cosine")
    max_grad_norm: float = help_field("gradient clipping norm", 1.0)
    seed: int = help_field("seed for initialisation order, data order and dropout", 0)
    lam: float = help_field("λ: weight of the penalty on toxic targets (paper: 1.0)", 1.0)
    penalty: str = help_field("'neg_ce' (paper: −λ·CE) or 'unlikelihood' (−λ·log(1−p), bounded)", "neg_ce")
    ce_clip: float | None = help_field(
        "bound the neg_ce penalty to −λ·min(CE, ce_clip) nats (None: the paper's unbounded −λ·CE)", None
    )
    max_toxic_ce: float | None = help_field(
        "guard: stop when a batch's mean toxic-target CE exceeds this many nats (None: off)", 100.0
    )
    logging_steps: int = help_field("steps between log entries", 10)
    save_steps: int = help_field("steps between resumable checkpoints (0: none)", 0)
    snapshots: int = help_field(
        "also keep the weights at k/n of the steps, k = 1..n-1, in OUT/snapshots/step-N (inputs of checkpoint-averaged "
        "influence; 0 or 1: none)", 0
    )
    bf16: bool = help_field("bfloat16 mixed precision (GPU)", False)
    fp16: bool = help_field("float16 mixed precision (GPU)", False)
    rows: list[int] | None = help_field("train on these block rows only (baselines that drop documents)", None)

    def __post_init__(self) -> None:
        if self.rows is not None:
            self.rows = [int(r) for r in self.rows]  # plain ints: JSON-serialisable and exactly fingerprinted
        if self.lam < 0:
            raise InputError(f"--lam: λ must be ≥ 0, got {self.lam}")
        if self.penalty not in PENALTIES:
            raise InputError(f"--penalty: expected one of {', '.join(PENALTIES)}, got {self.penalty!r}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise InputError(f"--max-steps: expected a positive number or -1, got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:
            raise InputError(f"--epochs: must be > 0, got {self.epochs}")
        if self.snapshots < 0:
            raise InputError(f"--snapshots: expected a non-negative number, got {self.snapshots}")
        for name in ("lr", "batch_size", "grad_accum", "logging_steps"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"--warmup-ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.ce_clip is not None and self.ce_clip <= 0:
            raise InputError(f"--ce-clip: must be > 0, got {self.ce_clip}")
        if self.max_toxic_ce is not None and self.max_toxic_ce <= 0:
            raise InputError(f"--max-toxic-ce: must be > 0, got {self.max_toxic_ce}")


def config_record(config: TrainConfig) -> dict:
    """The configuration as recorded in meta.json: the row list is summarised by its fingerprint."""
    record = dataclasses.asdict(config)
    if not record["snapshots"]:
        del record["snapshots"]  # runs without snapshots keep the records (and pipeline stage keys) they had
    if config.rows is not None:
        record["rows"] = {"n_rows": len(config.rows), "fingerprint": fingerprint_json(config.rows)}
    return record


def _training_arguments(config: TrainConfig, work: Path):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(work / "checkpoints"),
        max_steps=config.max_steps,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float < 1 is read as a ratio of the total steps
        lr_scheduler_type=config.scheduler,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=2,
        bf16=config.bf16,
        fp16=config.fp16,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )


def _check_tokenizer(tokenizer, blocks: Blocks) -> None:
    from ifguide.models import fingerprint_tokenizer

    if fingerprint_tokenizer(tokenizer) != blocks.tokenizer_fingerprint:
        raise InputError(
            f"{blocks.path}: the blocks were tokenised with a different tokenizer than the model's "
            "(tokenizer fingerprint mismatch); prepare them with the model's tokenizer"
        )


def train(
    model: Any,
    blocks: str | os.PathLike | Blocks,
    out: str | os.PathLike,
    *,
    mask: str | os.PathLike | np.ndarray | None = None,
    config: TrainConfig | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
    resume: bool = True,
) -> Path:
    """Train ``model`` (hub id, directory or object) on ``blocks``; write the result to ``out``.

    With ``mask`` the IF-Guide objective penalises the masked targets; without it this is
    ordinary causal-LM training. ``resume`` continues from the last checkpoint in ``OUT.partial``
    when one was written with the same configuration.
    """
    from ifguide.models import fingerprint_model, load_model, load_tokenizer
    from ifguide.training.data import BlockDataset, load_mask
    from ifguide.training.plots import plot_loss_curve
    from ifguide.training.trainer import SnapshotCallback, SuppressionLogCallback, SuppressionTrainer

    config = config or TrainConfig()
    blocks = blocks if isinstance(blocks, Blocks) else Blocks.open(blocks)
    mask_arr, mask_info = load_mask(mask, blocks) if mask is not None else (None, None)
    if tokenizer is None and isinstance(model, (str, os.PathLike)):
        tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    if tokenizer is not None:
        _check_tokenizer(tokenizer, blocks)
    else:
        logger.warning("no tokenizer given with a model object: cannot check it against the blocks")
    model_source = str(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", "object")
    model = load_model(model, trust_remote_code=trust_remote_code)
    start_fingerprint = fingerprint_model(model)

    out = Path(out)
    work = out.parent / f"{out.name}.partial"
    run_key = fingerprint_json(
        {"config": config_record(config), "blocks": blocks.fingerprint, "mask": mask_info, "model": start_fingerprint}
    )
    args = _training_arguments(config, work)  # under torchrun/accelerate this joins the process group
    # Rank 0 alone resets the work directory (the others would race it: rmtree vs mkdir). Checkpoints
    # are written by rank 0 and read by all ranks to resume, so multi-node runs need a shared filesystem.
    with args.main_process_first(local=False, desc="preparing the work directory"):
        if args.process_index == 0:
            _prepare_work_dir(work, run_key, resume)

    dataset = BlockDataset(blocks.input_ids, mask_arr, rows=config.rows)
    trainer = SuppressionTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        lam=config.lam,
        penalty=config.penalty,
        ce_clip=config.ce_clip,
        max_toxic_ce=config.max_toxic_ce,
    )
    log_path = work / "train_log.jsonl"
    checkpoint = _last_checkpoint(work) if resume else None
    if checkpoint is None:
        log_path.unlink(missing_ok=True)
    else:
        _load_checkpoint_weights(model, checkpoint)
    trainer.add_callback(SuppressionLogCallback(trainer, log_path))
    if config.snapshots > 1:
        snapshot_meta = {"blocks_fingerprint": blocks.fingerprint, "tokenizer_fingerprint": blocks.tokenizer_fingerprint,
                         "init_fingerprint": start_fingerprint, "run_key": run_key}
        trainer.add_callback(SnapshotCallback(config.snapshots, work / SNAPSHOTS_DIR, tokenizer, snapshot_meta))
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()  # only rank 0 writes; return once the artifact exists
        return out
    log_path.touch()

    world = trainer.args.world_size
    tokens = trainer.state.global_step * config.batch_size * config.grad_accum * world * blocks.block_size
    with artifact_dir(out) as tmp:
        trainer.model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.copy(log_path, tmp / "train_log.jsonl")
        if (work / SNAPSHOTS_DIR).is_dir():
            shutil.move(work / SNAPSHOTS_DIR, tmp / SNAPSHOTS_DIR)
        plot_loss_curve(tmp / "train_log.jsonl", tmp / "loss_curve.png")
        write_meta(
            tmp,
            "model",
            args={**config_record(config), "model": model_source},
            fingerprint=fingerprint_model(trainer.model),
            init_fingerprint=start_fingerprint,
            blocks_fingerprint=blocks.fingerprint,
            tokenizer_fingerprint=blocks.tokenizer_fingerprint,
            mask=mask_info,
            steps=trainer.state.global_step,
            snapshots=list_snapshots(tmp),
            final_loss=result.training_loss,
            seconds=seconds,
            tokens_per_second=tokens / seconds if seconds > 0 else None,
            parameters=sum(p.numel() for p in trainer.model.parameters()),
        )
    shutil.rmtree(work, ignore_errors=True)
    logger.info("trained %d steps in %.1f s -> %s", trainer.state.global_step, seconds, out)
    trainer.accelerator.wait_for_everyone()
    return out


def list_snapshots(model_dir: str | os.PathLike) -> list[str]:
    """The snapshot directories a training run kept (``--snapshots``), relative to the model
    directory, in step order; the final model itself is not among them."""
    from ifguide.training.trainer import snapshot_step

    root = Path(model_dir) / SNAPSHOTS_DIR
    if not root.is_dir():
        return []
    found = sorted((step, p.name) for p in root.iterdir() if p.is_dir() and (step := snapshot_step(p.name)) is not None)
    return [f"{SNAPSHOTS_DIR}/{name}" for _, name in found]


def _prepare_work_dir(work: Path, run_key: str, resume: bool) -> None:
    key_file = work / "run_key.json"
    if work.exists():
        same = key_file.is_file() and json.loads(key_file.read_text()).get("key") == run_key
        if not (resume and same):
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps({"key": run_key}))


def _load_checkpoint_weights(model, checkpoint: str) -> None:
    """Restore weights with ``from_pretrained``, which maps renamed keys (e.g. GPT-NeoX's
    ``embed_out`` / ``lm_head``) that ``Trainer``'s raw state-dict reload misses; the Trainer
    then restores optimizer, scheduler and RNG states from the same checkpoint."""
    from transformers import AutoModelForCausalLM

    logger.info("resuming from %s", checkpoint)
    saved = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict())


def _last_checkpoint(work: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = work / "checkpoints"
    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
