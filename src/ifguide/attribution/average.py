"""Checkpoint-averaged influence: the mean of several score artifacts of the same blocks.

Influence computed at one converged model is blind to what the model has memorised: a target it
predicts confidently has a near-zero gradient, however much it taught. On a small corpus seen for
several epochs this hides the very tokens IF-Guide looks for (on the demo world, the token AUROC
of the planted insults falls from 0.87 at the first epoch's end to 0.77 at the end of training).
Scoring a few checkpoints of the same run and averaging, as TracIn does with its checkpoints,
keeps each token's influence from the stages of training where it was still being learned.

The inputs must describe the same thing in the same coordinates: the same blocks, tokenizer,
query mode, granularity and alignment, and the same positions without a score. The mean is
plain (unweighted) and computed in float64; a score that is NaN in one input must be NaN in all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ifguide.artifacts import artifact_dir, fingerprint_array, read_meta, write_meta
from ifguide.errors import InputError

logger = logging.getLogger(__name__)

# What every input must share: averaging scores of other blocks, queries or coordinates is meaningless.
MUST_AGREE = ("blocks_fingerprint", "tokenizer_fingerprint", "mode", "granularity", "alignment_mode")
ROWS_PER_CHUNK = 4096


def open_score_artifacts(scores: Sequence[str | os.PathLike], must_agree: Sequence[str],
                         purpose: str) -> tuple[list[np.ndarray], list[dict]]:
    """Memory-map the ``scores.npy`` of each artifact and check that they share a shape and the
    meta fields ``must_agree``; ``purpose`` ends the error message ("can be averaged")."""
    arrays, metas = [], []
    for path in map(Path, scores):
        if not (path / "scores.npy").is_file():
            raise InputError(f"{path}: not a scores directory (missing scores.npy)")
        metas.append(read_meta(path, stage="scores"))
        arrays.append(np.load(path / "scores.npy", mmap_mode="r"))
    first = Path(scores[0])
    for path, arr, meta in zip(map(Path, scores), arrays, metas):
        if arr.shape != arrays[0].shape:
            raise InputError(f"{path}: scores of shape {arr.shape}, but {first} has {arrays[0].shape}")
        for key in must_agree:
            if meta.get(key) != metas[0].get(key):
                raise InputError(f"{path}: {key} is {meta.get(key)!r}, but {first} has {metas[0].get(key)!r}; "
                                 f"only scores of the same blocks, queries and coordinates {purpose}")
    return arrays, metas


def check_scores_dtype(dtype: str) -> None:
    from ifguide.attribution.scores import SCORE_DTYPES

    if dtype not in SCORE_DTYPES:
        raise InputError(f"--scores-dtype: expected one of {', '.join(SCORE_DTYPES)}, got {dtype!r}")


def write_elementwise(tmp: Path, scores: Sequence[str | os.PathLike], arrays: list[np.ndarray], dtype: str,
                      combine: Callable[[list[np.ndarray]], np.ndarray]) -> str:
    """Write ``combine(rows)`` of the inputs, chunk by chunk in float64, to ``tmp/scores.npy`` and
    return its fingerprint. The inputs must leave the same positions unscored (NaN); those stay NaN."""
    shape = arrays[0].shape
    dst = np.lib.format.open_memmap(tmp / "scores.npy", mode="w+", dtype=np.dtype(dtype), shape=shape)
    for start in range(0, shape[0], ROWS_PER_CHUNK):
        stop = min(shape[0], start + ROWS_PER_CHUNK)
        rows = [np.asarray(arr[start:stop], dtype=np.float64) for arr in arrays]
        finite = np.isfinite(rows[0])
        for path, part in zip(scores[1:], rows[1:]):
            if not np.array_equal(np.isfinite(part), finite):
                raise InputError(f"{path}: its scored positions differ from {scores[0]}'s (rows {start}..{stop - 1})")
        dst[start:stop] = np.where(finite, combine([np.where(finite, r, 0.0) for r in rows]), np.nan)
    dst.flush()
    fingerprint = fingerprint_array(dst)
    del dst
    return fingerprint


def average_scores(scores: Sequence[str | os.PathLike], out: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Write the element-wise mean of the score artifacts ``scores`` to the scores artifact ``out``.

    Typically one artifact per checkpoint of a training run (``ifguide train --snapshots``), each
    scored with factors fitted for that checkpoint. The result is an ordinary scores artifact:
    ``ifguide select`` and the rest of the pipeline read it like any other.
    """
    check_scores_dtype(dtype)
    if len(scores) < 2:
        raise InputError(f"--scores: give at least two score directories to average, got {len(scores)}")
    arrays, metas = open_score_artifacts(scores, MUST_AGREE, "can be averaged")
    out = Path(out)
    with artifact_dir(out) as tmp:
        fingerprint = write_elementwise(tmp, scores, arrays, dtype, lambda rows: sum(rows) / len(rows))
        first = metas[0]
        inherited = {k: first[k] for k in (*MUST_AGREE, "alignment", "query_counts", "thresholds", "normalisation",
                                           "strategy", "modules") if k in first}
        write_meta(
            tmp,
            "scores",
            **inherited,
            args={"scores": [str(p) for p in scores], "dtype": dtype},
            averaged_over=[{"scores": str(p), "fingerprint": m.get("fingerprint"), "model": m.get("model"),
                            "model_fingerprint": m.get("model_fingerprint")} for p, m in zip(scores, metas)],
            model=[m.get("model") for m in metas],
            scores_dtype=dtype,
            fingerprint=fingerprint,
        )
    logger.info("mean of %d score artifacts -> %s", len(arrays), out)
    return out
