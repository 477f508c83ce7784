"""Direct preference optimisation (DPO; Rafailov et al., NeurIPS 2023) as a post-hoc baseline.

IF-Guide detoxifies a model while it trains; DPO detoxifies a trained model afterwards from
preference pairs ``{"prompt", "chosen", "rejected"}`` where *chosen* is a benign continuation and
*rejected* a toxic one. Training is trl's ``DPOTrainer`` with an explicit frozen copy of the
starting model as the reference (trl would otherwise reload the reference from the hub by name,
which fails offline and for models that exist only in memory).

Pairs come from

* a JSON-lines file of ``{"prompt", "chosen", "rejected"}`` records (:func:`read_pairs`);
* a ParaDetox-style ``.tsv`` of toxic sentences and their neutral rewrites (columns ``toxic`` and
  ``neutral``, ``neutral1``, ``neutral2``, ... or ``en_toxic_comment`` / ``en_neutral_comment``):
  one pair per non-empty rewrite, with an empty prompt, chosen = rewrite, rejected = toxic;
* the IF-Guide query files (:func:`pairs_from_queries`): the same prompts the influence scores
  were computed for, a safe continuation chosen and a toxic one rejected.

Context: every prompt is preceded by the EOS token when the tokenizer adds no BOS of its own,
because in the training blocks every document follows an EOS; it also gives the first token of a
completion with an empty prompt something to be predicted from.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ifguide.artifacts import artifact_dir, fingerprint_json, write_meta
from ifguide.errors import InputError
from ifguide.fields import help_field

logger = logging.getLogger(__name__)

PAIR_FIELDS = ("prompt", "chosen", "rejected")
TOXIC_COLUMNS = ("toxic", "en_toxic_comment")
NEUTRAL_COLUMNS = ("neutral", "en_neutral_comment")  # plus neutral1, neutral2, ... (ParaDetox release)
MARGIN_PAIRS = 256  # pairs on which meta.json reports the log-prob margin before/after


@dataclass
class DPOConfig:
    """How to run DPO. Defaults are small: DPO is a fine-tuning baseline, not pre-training."""

    beta: float = help_field("β: strength of the KL tie to the reference model (DPO paper: 0.1)", 0.1)
    steps: int = help_field("optimizer steps", 100)
    lr: float = help_field("learning rate (linear decay to 0)", 5e-5)
    batch_size: int = help_field("preference pairs per optimizer step", 8)
    seed: int = help_field("seed for data order and initialisation of trl's state", 0)
    max_length: int = help_field("tokens per prompt+completion sequence; longer ones are cut at the end", 128)
    bf16: bool = help_field("bfloat16 mixed precision (GPU only)", False)

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise InputError(f"--beta: must be > 0, got {self.beta}")
        if not self.lr > 0:
            raise InputError(f"--lr: must be > 0, got {self.lr}")
        for name in ("steps", "batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(self, name)}")
        if self.max_length < 2:
            raise InputError(f"--max-length: must be at least 2 tokens, got {self.max_length}")


# --------------------------------------------------------------------------- reading pairs


def _check_pair(rec: Any, where: str) -> dict:
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected an object with {', '.join(PAIR_FIELDS)}")
    for name in PAIR_FIELDS:
        if name not in rec:
            raise InputError(f"{where}: missing field '{name}' (expected {', '.join(PAIR_FIELDS)})")
        if not isinstance(rec[name], str):
            raise InputError(f"{where}: field '{name}' must be a string, got {type(rec[name]).__name__}")
    for name in ("chosen", "rejected"):
        if not rec[name].strip():
            raise InputError(f"{where}: field '{name}' is empty")
    if rec["chosen"] == rec["rejected"]:
        raise InputError(f"{where}: 'chosen' and 'rejected' are identical (no preference to learn)")
    return {name: rec[name] for name in PAIR_FIELDS}


def _read_jsonl_pairs(path: Path) -> list[dict]:
    from ifguide.data.readers import iter_jsonl

    return [_check_pair(rec, where) for where, rec in iter_jsonl(path)]


def _tsv_columns(header: list[str], path: Path) -> tuple[int, list[int]]:
    """Index of the toxic column and of every neutral-rewrite column of a ParaDetox header."""
    names = [h.strip() for h in header]
    toxic = [i for i, h in enumerate(names) if h in TOXIC_COLUMNS]
    neutral = [i for i, h in enumerate(names) if h in NEUTRAL_COLUMNS or (h.startswith("neutral") and h[7:].isdigit())]
    if len(toxic) != 1 or not neutral:
        raise InputError(
            f"{path}:1: expected a header with one toxic column ({' or '.join(TOXIC_COLUMNS)}) and neutral "
            f"column(s) (neutral, neutral1, neutral2, ... or en_neutral_comment), got {names}"
        )
    return toxic[0], neutral


def _read_tsv_pairs(path: Path) -> list[dict]:
    """ParaDetox: one pair per (toxic, non-empty neutral rewrite); fields may be quoted across lines."""
    pairs = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file")
        toxic_col, neutral_cols = _tsv_columns(header, path)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise InputError(f"{where}: expected {len(header)} tab-separated columns, got {len(row)}")
            toxic = row[toxic_col]
            if not toxic.strip():
                raise InputError(f"{where}: empty toxic column")
            rewrites = [row[i] for i in neutral_cols if row[i].strip()]
            if not rewrites:
                raise InputError(f"{where}: no neutral rewrite for this toxic sentence")
            for neutral in rewrites:
                if neutral != toxic:  # a "rewrite" identical to the toxic text states no preference
                    pairs.append({"prompt": "", "chosen": neutral, "rejected": toxic})
    return pairs


def read_pairs(path: str | os.PathLike) -> list[dict]:
    """Preference pairs from a ``.jsonl`` of ``{"prompt", "chosen", "rejected"}`` or a ParaDetox ``.tsv``.

    Malformed records raise :class:`InputError` naming ``file:line``; nothing is skipped silently
    (ParaDetox rewrites identical to their toxic sentence are dropped: they state no preference).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such pairs file")
    pairs = _read_tsv_pairs(path) if path.suffix.lower() == ".tsv" else _read_jsonl_pairs(path)
    if not pairs:
        raise InputError(f"{path}: no preference pairs")
    logger.info("read %d preference pairs from %s", len(pairs), path)
    return pairs


def pairs_from_queries(
    toxic_path: str | os.PathLike,
    safe_path: str | os.PathLike | None = None,
    toxic_min: float = 0.5,
    safe_max: float = 0.1,
) -> list[dict]:
    """Preference pairs from IF-Guide query files: one per toxic query.

    ``toxic_path`` is read like the scoring queries (labels or RealToxicityPrompts thresholds), and
    may hold safe queries too; ``safe_path`` adds safe queries (unlabelled ones count as safe).
    Each toxic query gives ``{"prompt": its prompt, "chosen": a safe continuation, "rejected": its
    continuation}``. The safe continuation is one written for the *same* prompt when there is one
    (cycling through them when a prompt has several); otherwise the safe continuations of all
    queries are handed out round-robin, so a prompt may be paired with a benign continuation
    written for another prompt of the same kind. ``meta.json`` of the DPO model records the pairs'
    fingerprint, not how many were matched; the log says it.
    """
    from ifguide.data.queries import read_queries

    qs = read_queries(toxic_path, toxic_min=toxic_min, safe_max=safe_max)
    if safe_path is not None:
        qs.extend(read_queries(safe_path, toxic_min=toxic_min, safe_max=safe_max,
                               default_label="safe", require_label="safe"))
    toxic, safe = qs.toxic, qs.safe
    sources = ", ".join(qs.sources)
    if not toxic:
        raise InputError(f"{sources}: no toxic queries to reject (see --toxic-min)")
    if not safe:
        raise InputError(f"{sources}: no safe queries to prefer (pass --queries-safe, or see --safe-max)")
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for q in safe:
        by_prompt[q.prompt].append(q.continuation)
    used_per_prompt: dict[str, int] = defaultdict(int)
    pairs, round_robin = [], 0
    for q in toxic:
        same = [c for c in by_prompt.get(q.prompt, []) if c != q.continuation]
        if same:
            chosen = same[used_per_prompt[q.prompt] % len(same)]
            used_per_prompt[q.prompt] += 1
        else:
            chosen = safe[round_robin % len(safe)].continuation
            round_robin += 1
        if chosen != q.continuation:
            pairs.append({"prompt": q.prompt, "chosen": chosen, "rejected": q.continuation})
    if not pairs:
        raise InputError(f"{sources}: every toxic continuation equals its safe counterpart; no pairs")
    logger.info("built %d pairs from queries (%d with a safe continuation of the same prompt, %d round-robin)",
                len(pairs), len(pairs) - round_robin, round_robin)
    return pairs


# --------------------------------------------------------------------------- measuring preferences


def context_prefix(tokenizer) -> str:
    """The text put before every prompt: EOS, unless the tokenizer already starts sequences with a BOS."""
    return "" if tokenizer("")["input_ids"] else tokenizer.eos_token


def _pair_sequences(tokenizer, pair: dict, max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of context+prompt+chosen+EOS and context+prompt+rejected+EOS (cut to ``max_length``)
    and the length of their shared prompt prefix, as trl tokenises them."""
    prompt = context_prefix(tokenizer) + pair["prompt"]
    prompt_ids = tokenizer(prompt)["input_ids"]
    seqs = [tokenizer(prompt + pair[k])["input_ids"] + [tokenizer.eos_token_id] for k in ("chosen", "rejected")]
    shared = min(_common_prefix(prompt_ids, s) for s in seqs)
    return [s[:max_length] for s in seqs], shared


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def preference_margins(model, tokenizer, pairs: list[dict], *, max_length: int = 128, batch_size: int = 16) -> np.ndarray:
    """``log p(chosen | prompt) − log p(rejected | prompt)`` of each pair under ``model`` (summed over
    the completion tokens and the closing EOS). DPO should raise this relative to the reference."""
    import torch

    model_device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows: list[tuple[list[int], int]] = []
    for pair in pairs:
        (chosen, rejected), shared = _pair_sequences(tokenizer, pair, max_length)
        rows += [(chosen, max(shared, 1)), (rejected, max(shared, 1))]
    logps = np.empty(len(rows))
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            scored = torch.zeros((len(batch), width), dtype=torch.bool)
            for b, (seq, first) in enumerate(batch):
                ids[b, : len(seq)] = torch.tensor(seq)
                attention[b, : len(seq)] = 1
                scored[b, first : len(seq)] = True  # completion tokens (first > 0: column 0 has no context)
            logits = model(input_ids=ids.to(model_device), attention_mask=attention.to(model_device)).logits.float()
            token_logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(model_device))[..., 0]
            logps[start : start + len(batch)] = (token_logp * scored[:, 1:].to(model_device)).sum(1).cpu().numpy()
    model.train(was_training)
    return logps[0::2] - logps[1::2]


# --------------------------------------------------------------------------- training


def _trl_arguments(config: DPOConfig, work: Path):
    import torch
    from trl import DPOConfig as TrlDPOConfig

    return TrlDPOConfig(
        output_dir=str(work / "trl"),
        max_steps=config.steps,
        learning_rate=config.lr,
        per_device_train_batch_size=config.batch_size,
        seed=config.seed,
        data_seed=config.seed,
        beta=config.beta,
        max_length=config.max_length,
        bf16=config.bf16,  # trl defaults to bf16, which CPUs and older GPUs do not run
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, min(10, config.steps // 10)),
        logging_first_step=True,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def _resolve_tokenizer(model: Any, tokenizer: Any):
    from ifguide.models import load_tokenizer

    if tokenizer is None:
        if not isinstance(model, (str, os.PathLike)):
            raise InputError("train_dpo: a model object needs its tokenizer (pass tokenizer=...)")
        return load_tokenizer(model)
    return load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer


def train_dpo(
    model: Any,
    out: str | os.PathLike,
    *,
    pairs: list[dict],
    config: DPOConfig,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Path:
    """Fine-tune ``model`` (hub id, directory or object; an object is trained in place) with DPO on
    ``pairs`` and write a model artifact to ``out``: weights and tokenizer, ``meta.json`` (stage
    ``"model"``, ``kind`` ``"dpo"``, fingerprints, configuration, the log-prob margin before and
    after on up to 256 training pairs) and ``train_log.jsonl`` (trl's logged metrics).
    trl's working directory is ``OUT.partial``, removed at the end.
    """
    from datasets import Dataset
    from trl import DPOTrainer

    from ifguide.models import fingerprint_model, fingerprint_tokenizer, load_model

    if not pairs:
        raise InputError("train_dpo: no preference pairs")
    pairs = [_check_pair(p, f"pairs[{i}]") for i, p in enumerate(pairs)]
    tokenizer = _resolve_tokenizer(model, tokenizer)
    model_source = str(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", "object")
    policy = load_model(model, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    init_fingerprint = fingerprint_model(policy)
    reference = copy.deepcopy(policy).eval()
    for p in reference.parameters():
        p.requires_grad_(False)

    probe = pairs[:MARGIN_PAIRS]
    margin_before = preference_margins(policy, tokenizer, probe, max_length=config.max_length)
    prefix = context_prefix(tokenizer)
    dataset = Dataset.from_list([{**p, "prompt": prefix + p["prompt"]} for p in pairs])

    out = Path(out)
    work = out.parent / f"{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        trainer = DPOTrainer(model=policy, ref_model=reference, args=_trl_arguments(config, work),
                             train_dataset=dataset, processing_class=tokenizer)
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        policy = trainer.model
        margin_after = preference_margins(policy, tokenizer, probe, max_length=config.max_length)
        with artifact_dir(out) as tmp:
            policy.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _write_log(tmp / "train_log.jsonl", trainer.state.log_history)
            write_meta(
                tmp,
                "model",
                kind="dpo",
                args={**dataclasses.asdict(config), "model": model_source},
                fingerprint=fingerprint_model(policy),
                init_fingerprint=init_fingerprint,
                tokenizer_fingerprint=fingerprint_tokenizer(tokenizer),
                pairs_fingerprint=fingerprint_json(pairs),
                n_pairs=len(pairs),
                steps=trainer.state.global_step,
                final_loss=result.training_loss,
                seconds=seconds,
                margin={
                    "pairs": len(probe),
                    "before": float(margin_before.mean()),
                    "after": float(margin_after.mean()),
                    "raised_share": float(np.mean(margin_after > margin_before)),
                },
                parameters=sum(p.numel() for p in policy.parameters()),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("DPO: %d steps in %.1f s, mean log-prob margin %.3f -> %.3f; wrote %s",
                trainer.state.global_step, seconds, margin_before.mean(), margin_after.mean(), out)
    return out


def _write_log(path: Path, history: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for entry in history:
            f.write(json.dumps(entry, default=float) + "\n")


__all__ = ["DPOConfig", "read_pairs", "pairs_from_queries", "preference_margins", "train_dpo"]
