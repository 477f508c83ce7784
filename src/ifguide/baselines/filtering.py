"""Data-filtering baselines at IF-Guide's token budget: drop whole blocks instead of suppressing tokens.

IF-Guide penalises a budget of ``B`` training tokens. The filtering baselines remove training
data instead, as many blocks as it takes to remove at least ``B`` tokens, and train on the rest
(``TrainConfig(rows=...)``). A block (one row of the prepared corpus) plays the part of a
"document", as in IF-Guide's Algorithm 1.

* :func:`rows_without_flagged_documents`: the usual pre-training filter. Decode each block, score
  its text with a toxicity classifier, drop the most toxic blocks first.
* :func:`rows_without_top_influence_documents`: rank blocks by their total influence score (the
  sum of the block's finite token scores: a block's influence on the query loss is the sum of its
  tokens' influences; non-finite entries, such as the never-scored column 0, count as 0) and drop
  the most influential first. The paper shows this fails: removing whole documents at the same
  budget removes far less toxicity than suppressing the selected tokens.
* :func:`rows_without_labelled_toxicity`: the *perfect* filter, for corpora with ground-truth toxic
  labels (the demo world, the benchmarks): drop every block that holds a labelled toxic target,
  whatever the budget. A model trained from scratch on what is left never saw toxic text, so its
  toxicity is the floor that any intervention on the training data can reach under this
  evaluation (with a weak model, the scorer's false positives on its text set that floor).

Every block holds exactly ``T`` tokens (``prepare`` drops the tail that does not fill a block),
so dropping ``k`` blocks removes ``k * T`` tokens and the filters drop ``ceil(B / T)`` blocks.
Ties are broken by row index (lower rows first), so results are deterministic.

A rows directory holds ``rows.npy`` (int64, sorted row indices to keep) and ``meta.json`` with
stage ``"rows"``, ``kind`` (``"scorer"`` or ``"influence"``), ``blocks_fingerprint``,
``fingerprint`` (of ``rows.npy``), ``budget_tokens`` and ``info`` (what was dropped); ``kind`` is
``"labels"`` for the perfect filter, whose ``budget_tokens`` is null.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ifguide.artifacts import artifact_dir, fingerprint_array, read_meta, require_fingerprint, write_meta
from ifguide.data.blocks import Blocks
from ifguide.errors import InputError
from ifguide.progress import Progress

logger = logging.getLogger(__name__)

ROWS_FILE = "rows.npy"
FLAGGED_AT = 0.5  # toxicity at or above which a dropped block counts as flagged
DECODE_CHUNK_ROWS = 1024


# --------------------------------------------------------------------------- ranking and budget


def blocks_to_drop(budget_tokens: int, n_blocks: int, block_size: int) -> int:
    """How many whole blocks hold at least ``budget_tokens`` tokens; refuses budgets that leave nothing."""
    if int(budget_tokens) != budget_tokens or budget_tokens <= 0:
        raise InputError(f"--budget-tokens: expected a positive whole number of tokens, got {budget_tokens}")
    n_drop = math.ceil(int(budget_tokens) / block_size)
    if n_drop >= n_blocks:
        raise InputError(
            f"--budget-tokens: {budget_tokens} tokens means dropping {n_drop} of {n_blocks} blocks of "
            f"{block_size} tokens; at least one block must remain to train on"
        )
    return n_drop


def drop_highest(values: np.ndarray, n_drop: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows to keep sorted, rows dropped in ranking order): the ``n_drop`` highest values go, ties by row."""
    order = np.lexsort((np.arange(len(values)), -np.asarray(values, dtype=np.float64)))
    dropped = order[:n_drop]
    keep = np.sort(order[n_drop:])
    return keep.astype(np.int64), dropped.astype(np.int64)


def _labelled_targets_per_row(blocks: Blocks) -> np.ndarray:
    """Labelled toxic targets (columns 1..T-1; column 0 is never a target) per block, read in chunks."""
    labels = blocks.toxic_labels
    return np.concatenate([
        np.count_nonzero(labels[start : start + DECODE_CHUNK_ROWS, 1:], axis=1)
        for start in range(0, labels.shape[0], DECODE_CHUNK_ROWS)
    ])


def _ground_truth_info(blocks: Blocks | None, dropped: np.ndarray, per_row: np.ndarray | None = None) -> dict:
    """Share of the labelled toxic tokens that sit in dropped blocks (demo/benchmark corpora);
    ``per_row``: :func:`_labelled_targets_per_row`, when the caller has it already."""
    if blocks is None or blocks.toxic_labels is None:
        return {}
    per_row = _labelled_targets_per_row(blocks) if per_row is None else per_row
    total = int(per_row.sum())
    removed = int(per_row[dropped].sum())
    return {"labelled_toxic_targets": total, "labelled_toxic_targets_dropped": removed,
            "labelled_toxic_recall": removed / total if total else None}


def _budget_info(budget_tokens: int, dropped: np.ndarray, n_blocks: int, block_size: int) -> dict:
    return {
        "budget_tokens": int(budget_tokens),
        "block_size": int(block_size),
        "blocks": int(n_blocks),
        "dropped_blocks": int(len(dropped)),
        "dropped_tokens": int(len(dropped) * block_size),
        "dropped_rows": [int(r) for r in dropped[:10_000]],  # in ranking order; the first 10k when longer
    }


# --------------------------------------------------------------------------- classifier filter


def decode_blocks(blocks: Blocks, tokenizer, start: int, stop: int) -> list[str]:
    """The text of blocks ``start:stop`` (special tokens such as the joining EOS left out)."""
    ids = np.asarray(blocks.input_ids[start:stop], dtype=np.int64)
    return tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)


def _blocks_tokenizer(blocks: Blocks, tokenizer: Any, trust_remote_code: bool):
    """The given tokenizer (or the one recorded in the blocks' meta), checked against the blocks."""
    from ifguide.models import fingerprint_tokenizer, load_tokenizer

    if tokenizer is None:
        tokenizer = blocks.meta.get("args", {}).get("tokenizer")
        if tokenizer is None:
            raise InputError(f"{blocks.path}: meta.json names no tokenizer; pass --tokenizer")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    require_fingerprint(blocks.tokenizer_fingerprint, fingerprint_tokenizer(tokenizer),
                        what="tokenizer", where=f"{blocks.path} (decoding blocks for the scorer)")
    return tokenizer


def score_blocks(blocks: Blocks, scorer, tokenizer, *, batch_rows: int = DECODE_CHUNK_ROWS) -> np.ndarray:
    """Toxicity of every block's decoded text, float64 [N]."""
    from ifguide.evaluation.scorers import TOXICITY, get_scorer

    scorer = get_scorer(scorer)
    out = np.empty(blocks.n_blocks, dtype=np.float64)
    with Progress(total=blocks.n_blocks, desc=f"scoring blocks ({scorer.name})", unit="block") as bar:
        for start in range(0, blocks.n_blocks, batch_rows):
            stop = min(start + batch_rows, blocks.n_blocks)
            out[start:stop] = scorer.score(decode_blocks(blocks, tokenizer, start, stop))[TOXICITY]
            bar.update(stop - start)
    return out


def rows_without_flagged_documents(
    blocks: str | os.PathLike | Blocks,
    scorer: Any,
    budget_tokens: int,
    *,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> tuple[np.ndarray, dict]:
    """Rows to keep after dropping the most toxic blocks (by ``scorer``) until ``budget_tokens`` are gone.

    ``scorer`` is a name of :mod:`ifguide.evaluation.scorers` (e.g. ``"profanity-check"``) or a
    scorer object. ``tokenizer`` (object, directory or hub id; default: the one named in the
    blocks' meta.json) must be the blocks' own (checked by fingerprint).
    """
    from ifguide.evaluation.scorers import get_scorer

    blocks = blocks if isinstance(blocks, Blocks) else Blocks.open(blocks)
    n_drop = blocks_to_drop(budget_tokens, blocks.n_blocks, blocks.block_size)
    tokenizer = _blocks_tokenizer(blocks, tokenizer, trust_remote_code)
    scorer = get_scorer(scorer)
    toxicity = score_blocks(blocks, scorer, tokenizer)
    keep, dropped = drop_highest(toxicity, n_drop)
    flagged = toxicity >= FLAGGED_AT
    info = {
        "kind": "scorer",
        "scorer": scorer.name,
        **_budget_info(budget_tokens, dropped, blocks.n_blocks, blocks.block_size),
        "flagged_at": FLAGGED_AT,
        "flagged_blocks": int(flagged.sum()),
        "dropped_flagged_blocks": int(flagged[dropped].sum()),
        "dropped_min_toxicity": float(toxicity[dropped].min()),
        "kept_max_toxicity": float(toxicity[keep].max()),
        **_ground_truth_info(blocks, dropped),
    }
    logger.info("scorer filter: dropped %d blocks (%d tokens), %d of them with toxicity >= %.1f (of %d flagged)",
                info["dropped_blocks"], info["dropped_tokens"], info["dropped_flagged_blocks"], FLAGGED_AT,
                info["flagged_blocks"])
    return keep, info


# --------------------------------------------------------------------------- influence filter


def block_influence(scores: Any) -> np.ndarray:
    """Sum of each row's finite scores (float64 [N]); a row with no finite score gets ``-inf``."""
    from ifguide.selection.source import open_scores

    source = open_scores(scores)
    totals = np.empty(source.n_rows, dtype=np.float64)
    for first, chunk in source.iter_chunks():
        finite = np.isfinite(chunk)
        sums = np.where(finite, chunk, 0).sum(axis=1, dtype=np.float64)
        totals[first : first + len(chunk)] = np.where(finite.any(axis=1), sums, -np.inf)
    return totals


def rows_without_top_influence_documents(
    scores: Any, budget_tokens: int, *, blocks: str | os.PathLike | Blocks | None = None
) -> tuple[np.ndarray, dict]:
    """Rows to keep after dropping the blocks with the largest total influence until ``budget_tokens`` are gone.

    ``scores`` is anything :func:`ifguide.selection.source.open_scores` reads (a scores directory,
    ``.npy``, array, or row shards). ``blocks`` (optional) adds ground-truth recall when the blocks
    carry toxic labels; the scores must have the blocks' shape.
    """
    from ifguide.selection.source import open_scores

    source = open_scores(scores)
    blocks = blocks if blocks is None or isinstance(blocks, Blocks) else Blocks.open(blocks)
    if blocks is not None and tuple(source.shape) != tuple(blocks.shape):
        raise InputError(f"--scores: shape {source.shape} does not match the blocks {blocks.shape} ({blocks.path})")
    n_rows, block_size = source.shape
    n_drop = blocks_to_drop(budget_tokens, n_rows, block_size)
    influence = block_influence(source)
    keep, dropped = drop_highest(influence, n_drop)
    info = {
        "kind": "influence",
        "ranking": "sum of finite token scores per block",
        **_budget_info(budget_tokens, dropped, n_rows, block_size),
        "dropped_min_influence": float(influence[dropped].min()),
        "kept_max_influence": float(influence[keep].max()),
        **_ground_truth_info(blocks, dropped),
    }
    logger.info("influence filter: dropped %d blocks (%d tokens)", info["dropped_blocks"], info["dropped_tokens"])
    return keep, info


def rows_without_labelled_toxicity(blocks: str | os.PathLike | Blocks) -> tuple[np.ndarray, dict]:
    """Rows to keep: every block with no labelled toxic target (column 0 is never a target)."""
    blocks = blocks if isinstance(blocks, Blocks) else Blocks.open(blocks)
    if blocks.toxic_labels is None:
        raise InputError(f"{blocks.path}: the blocks carry no toxic labels (prepare a corpus with toxic_spans "
                         "or a toxic flag), so the perfect filter has nothing to go by")
    per_row = _labelled_targets_per_row(blocks)
    toxic_rows = np.flatnonzero(per_row)
    keep = np.setdiff1d(np.arange(blocks.n_blocks, dtype=np.int64), toxic_rows)
    dropped = _budget_info(0, toxic_rows, blocks.n_blocks, blocks.block_size)
    del dropped["budget_tokens"]  # this filter has none
    info = {"kind": "labels", **dropped, **_ground_truth_info(blocks, toxic_rows, per_row)}
    if keep.size == 0:
        raise InputError(f"{blocks.path}: every block holds labelled toxicity; the perfect filter would keep nothing")
    logger.info("perfect filter: dropped the %d blocks with labelled toxicity (%d tokens)", len(toxic_rows),
                info["dropped_tokens"])
    return keep, info


# --------------------------------------------------------------------------- artifacts


def budget_from_mask(mask_dir: str | os.PathLike, blocks: Blocks) -> tuple[int, dict]:
    """IF-Guide's token budget: the number of tokens a mask selects (the mask must be for ``blocks``)."""
    from ifguide.selection.masks import read_mask

    mask, meta = read_mask(mask_dir)
    require_fingerprint(meta.get("blocks_fingerprint"), blocks.fingerprint, what="blocks", where=f"--like-mask {mask_dir}")
    n = int(np.count_nonzero(mask))
    if n == 0:
        raise InputError(f"--like-mask {mask_dir}: the mask selects no tokens")
    return n, {"like_mask": str(mask_dir), "like_mask_fingerprint": meta.get("fingerprint")}


def filter_to_artifact(
    blocks: str | os.PathLike,
    out: str | os.PathLike,
    *,
    scorer: Any = None,
    scores: Any = None,
    labels: bool = False,
    budget_tokens: int | None = None,
    like_mask: str | os.PathLike | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Path:
    """Run one filter (``scorer``, ``scores`` or ``labels``) and write a rows directory to ``out``.

    The scorer and influence filters remove ``budget_tokens`` (or the token count of ``like_mask``);
    the perfect filter (``labels=True``) removes every block with labelled toxicity and takes no budget.
    """
    if sum((scorer is not None, scores is not None, bool(labels))) != 1:
        raise InputError("filter: give exactly one of --scorer (classifier filter), --scores (influence filter) "
                         "or --labels (perfect filter)")
    if labels and (budget_tokens is not None or like_mask is not None):
        raise InputError("filter --labels: drops every block with labelled toxicity; it takes no --budget-tokens/--like-mask")
    if not labels and (budget_tokens is None) == (like_mask is None):
        raise InputError("filter: give exactly one of --budget-tokens or --like-mask")
    blocks_obj = Blocks.open(blocks)
    budget_fields: dict = {}
    if like_mask is not None:
        budget_tokens, budget_fields = budget_from_mask(like_mask, blocks_obj)
    input_fields: dict = {}
    if labels:
        rows, info = rows_without_labelled_toxicity(blocks_obj)
    elif scorer is not None:
        rows, info = rows_without_flagged_documents(blocks_obj, scorer, budget_tokens, tokenizer=tokenizer,
                                                    trust_remote_code=trust_remote_code)
    else:
        rows, info, input_fields = _influence_rows_checked(scores, budget_tokens, blocks_obj)
    with artifact_dir(out) as tmp:
        np.save(tmp / ROWS_FILE, rows)
        write_meta(
            tmp,
            "rows",
            kind=info["kind"],
            args={"blocks": str(blocks), "scorer": None if scorer is None else str(scorer),
                  "scores": None if scores is None else [str(s) for s in _as_list(scores)],
                  "labels": bool(labels), "budget_tokens": budget_tokens,
                  "like_mask": None if like_mask is None else str(like_mask)},
            fingerprint=fingerprint_array(rows),
            blocks_fingerprint=blocks_obj.fingerprint,
            tokenizer_fingerprint=blocks_obj.tokenizer_fingerprint,
            budget_tokens=None if budget_tokens is None else int(budget_tokens),
            n_rows=int(len(rows)),
            **budget_fields,
            **input_fields,
            info=info,
        )
    logger.info("kept %d of %d blocks -> %s", len(rows), blocks_obj.n_blocks, out)
    return Path(out)


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _influence_rows_checked(scores: Any, budget_tokens: int, blocks: Blocks) -> tuple[np.ndarray, dict, dict]:
    """The influence filter, refusing scores computed for other blocks (when their meta says so)."""
    from ifguide.selection.source import open_scores

    source = open_scores(_as_list(scores))
    for meta in source.metas():
        require_fingerprint(meta.get("blocks_fingerprint"), blocks.fingerprint, what="blocks", where="--scores")
    rows, info = rows_without_top_influence_documents(source, budget_tokens, blocks=blocks)
    return rows, info, {"scores_fingerprint": source.fingerprint()}


def read_rows(directory: str | os.PathLike, blocks: str | os.PathLike | Blocks | None = None) -> np.ndarray:
    """Open a rows directory (checked against ``blocks`` when given): int64 sorted row indices."""
    directory = Path(directory)
    meta = read_meta(directory, stage="rows")
    path = directory / ROWS_FILE
    if not path.is_file():
        raise InputError(f"{directory}: missing {ROWS_FILE}")
    rows = np.load(path)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise InputError(f"{path}: expected a 1-D integer array of rows, got {rows.dtype} {rows.shape}")
    if blocks is not None:
        blocks = blocks if isinstance(blocks, Blocks) else Blocks.open(blocks)
        require_fingerprint(meta.get("blocks_fingerprint"), blocks.fingerprint, what="blocks", where=f"--rows {directory}")
        if rows.size and (rows.min() < 0 or rows.max() >= blocks.n_blocks):
            raise InputError(f"{path}: row indices outside [0, {blocks.n_blocks})")
    return rows.astype(np.int64)
