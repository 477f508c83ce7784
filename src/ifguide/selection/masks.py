"""Mask artifacts, and the control masks every IF-Guide claim is measured against.

A mask directory holds ``mask.npy`` (bool [N, T], target coordinates: ``mask[i, j]`` marks token
``input_ids[i, j]`` as a target to suppress) and ``meta.json`` with stage ``"mask"``, a ``kind``
(``"selection"``, ``"random"`` or ``"oracle"``), ``blocks_fingerprint`` (training refuses a mask
built for other blocks) and ``fingerprint`` (of ``mask.npy``).

Controls:

* :func:`random_mask_like`: as many tokens as a given mask, with the same +/-w window structure,
  at random positions. If IF-Guide does not beat this, the influence scores did not matter.
* :func:`oracle_mask`: as many tokens, placed only on tokens known to be toxic (ground-truth
  labels). The headroom a perfect selector would have.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ifguide.artifacts import artifact_dir, fingerprint_array, read_meta, require_fingerprint, write_meta
from ifguide.errors import InputError
from ifguide.selection.algorithm import Selection, select_toxic_tokens
from ifguide.selection.source import DEFAULT_CHUNK_ELEMENTS, ScoreSource, ScoresLike, open_scores

logger = logging.getLogger(__name__)

MASK_FILE = "mask.npy"
RANKING_LIMIT = 10_000  # ranked documents listed in meta.json; the rest are counted only
INHERITED_KEYS = ("blocks_fingerprint", "tokenizer_fingerprint", "alignment")


def read_mask(directory: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Open a mask artifact: (memory-mapped bool [N, T], meta)."""
    directory = Path(directory)
    meta = read_meta(directory, stage="mask")
    path = directory / MASK_FILE
    if not path.is_file():
        raise InputError(f"{directory}: missing {MASK_FILE}")
    mask = np.load(path, mmap_mode="r")
    if mask.dtype != bool or mask.ndim != 2:
        raise InputError(f"{path}: expected a bool [N, T] array, got {mask.dtype} {mask.shape}")
    return mask, meta


def _inherited_fields(source: ScoreSource) -> dict:
    """Fingerprints and alignment the mask takes over from the scores' meta.json (if any).

    Shards must agree on alignment (mixing coordinate conventions would shift the mask). When they
    report different blocks, the mask cannot name one and lists them instead.
    """
    metas = source.metas()
    if not metas:
        return {}
    if len(metas) != len(source.parts):
        logger.warning("some score shards have no meta.json; blocks/tokenizer fingerprints not recorded")
        return {}
    fields: dict = {}
    for key in INHERITED_KEYS:
        values = [m.get(key) for m in metas]
        if len(set(map(str, values))) == 1:
            if values[0] is not None:
                fields[key] = values[0]
        elif key == "alignment":
            raise InputError(f"--scores: the shards disagree on alignment ({values}); they cannot be combined")
        else:
            fields[f"{key}s"] = values
            logger.warning("score shards were built from different %s; the mask records the list", key)
    return fields


def selection_meta(sel: Selection, source: ScoreSource, ranking_limit: int = RANKING_LIMIT) -> dict:
    """The meta.json fields describing a selection."""
    p = sel.params
    n_ranked = int(sel.ranked_documents.size)
    fields = {
        "kind": "selection",
        "args": {"threshold": p.threshold, "window": p.window, "budget": p.budget, "max_tokens": p.max_tokens},
        "shape": list(source.shape),
        "scores_dtype": str(source.dtype),
        "tau": float(sel.tau),
        "n_finite_scores": sel.n_finite,
        "n_toxic_tokens": sel.n_toxic,
        "budget_tokens": sel.budget_tokens,
        "n_selected": sel.n_selected,
        "documents_touched": sel.documents_touched,
        "n_ranked_documents": n_ranked,
        "ranked_documents_limit": ranking_limit,
        "ranked_documents_truncated": n_ranked > ranking_limit,
        "ranked_documents": sel.ranking_table(ranking_limit),
        "scores_fingerprint": source.fingerprint(),
        "coordinates": "target: mask[i, j] marks input_ids[i, j] as the target of -log p(x_j | x_<j)",
    }
    if len(source.parts) > 1:
        fields["scores_shards"] = source.shard_fingerprints()
    return fields


def select_to_artifact(
    scores: ScoresLike | Sequence[ScoresLike],
    out: str | os.PathLike,
    *,
    threshold: float = 0.99,
    window: int = 1,
    budget: float = 0.02,
    max_tokens: int | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Selection:
    """Run :func:`select_toxic_tokens` and write a mask artifact directory (``ifguide select``)."""
    source = open_scores(scores)
    inherited = _inherited_fields(source)  # validate the inputs before any work
    with artifact_dir(out) as tmp:
        sel = select_toxic_tokens(
            source, threshold, window, budget, max_tokens, out=tmp / MASK_FILE, chunk_elements=chunk_elements
        )
        write_meta(tmp, "mask", **selection_meta(sel, source), **inherited, fingerprint=sel.mask_fingerprint)
        sel.mask = None  # the memory map points into the temporary directory
    sel.mask = np.load(Path(out) / MASK_FILE, mmap_mode="r")
    logger.info("wrote %s: %d tokens selected in %d documents", out, sel.n_selected, sel.documents_touched)
    return sel


# ----------------------------------------------------------------------------------------------
# control masks


def default_valid(shape: tuple[int, int]) -> np.ndarray:
    """Every position that can be a training target: column 0 never is."""
    valid = np.ones(shape, dtype=bool)
    valid[:, 0] = False
    return valid


def finite_scores_mask(scores: ScoresLike | Sequence[ScoresLike], chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> np.ndarray:
    """bool [N, T]: where the scores are finite (the positions selection could have picked)."""
    source = open_scores(scores)
    valid = np.empty(source.shape, dtype=bool)
    for first, chunk in source.iter_chunks(chunk_elements):
        valid[first : first + len(chunk)] = np.isfinite(chunk)
    return valid


def _window_positions(centres: np.ndarray, n_cols: int, window: int, valid_flat: np.ndarray) -> np.ndarray:
    """Flat positions of each centre's window (row-clipped, valid only), centre by centre, ascending."""
    offsets = np.arange(-window, window + 1)
    cols = centres[:, None] % n_cols + offsets
    pos = centres[:, None] + offsets
    keep = (cols >= 0) & (cols < n_cols)
    pos = pos[keep]
    return pos[valid_flat[pos]]


def random_mask_like(
    mask: np.ndarray, window: int = 1, seed: int = 0, valid: np.ndarray | None = None
) -> np.ndarray:
    """A random mask with exactly as many tokens as ``mask``, built like the selection walk.

    Random centres (valid, not yet selected) are drawn one batch at a time; each adds the valid
    positions of its ``+/-window`` that are new, in order, until the count is reached exactly (the
    last window may be cut, as the walk cuts its last document). ``valid`` (bool [N, T]) says
    where tokens may go; by default every column but 0, which is never a target.
    Holds two bool [N, T] arrays in memory.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.ndim != 2:
        raise InputError(f"mask: expected a bool [N, T] array, got {mask.dtype} {mask.shape}")
    if int(window) != window or window < 0:
        raise InputError(f"--window: expected a non-negative integer, got {window}")
    n_rows, n_cols = mask.shape
    valid = default_valid(mask.shape) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != mask.shape:
        raise InputError(f"valid: shape {valid.shape} differs from the mask's {mask.shape}")
    target = int(np.count_nonzero(mask))
    valid_flat = valid.reshape(-1)
    n_valid = int(np.count_nonzero(valid_flat))
    if target > n_valid:
        raise InputError(f"mask: {target} tokens selected but only {n_valid} valid positions to place them")
    rng = np.random.default_rng(seed)
    chosen = np.zeros(n_rows * n_cols, dtype=bool)
    count = 0
    while count < target:
        remaining = target - count
        batch = max(64, 2 * (remaining // (2 * window + 1) + 1))
        batch = int(min(batch * chosen.size / (n_valid - count), 1 << 24))  # oversample for rejections
        if n_valid - count < n_valid // 4:
            # nearly full: sample among the free valid positions directly (rejection would stall)
            free = np.flatnonzero(valid_flat & ~chosen)
            centres = rng.permutation(free)[:batch]
        else:
            centres = rng.integers(0, n_rows * n_cols, size=batch)
            centres = centres[valid_flat[centres] & ~chosen[centres]]
            _, first = np.unique(centres, return_index=True)
            centres = centres[np.sort(first)]
        pos = _window_positions(centres, n_cols, int(window), valid_flat)
        pos = pos[~chosen[pos]]
        _, first = np.unique(pos, return_index=True)
        pos = pos[np.sort(first)][:remaining]
        chosen[pos] = True
        count += pos.size
    return chosen.reshape(mask.shape)


def oracle_mask(toxic_labels: np.ndarray, n_tokens: int, seed: int = 0) -> np.ndarray:
    """``n_tokens`` positions drawn at random among the tokens labelled toxic (column 0 excluded).

    When fewer toxic tokens exist, all of them are taken and a warning says so (the mask's
    ``n_selected`` then falls short of ``n_tokens``).
    """
    labels = np.asarray(toxic_labels, dtype=bool)
    if labels.ndim != 2:
        raise InputError(f"toxic_labels: expected a bool [N, T] array, got shape {labels.shape}")
    if int(n_tokens) != n_tokens or n_tokens < 0:
        raise InputError(f"n_tokens: expected a non-negative integer, got {n_tokens}")
    eligible = labels & default_valid(labels.shape)
    positions = np.flatnonzero(eligible)
    if n_tokens > positions.size:
        logger.warning("oracle mask: only %d toxic tokens for a budget of %d; taking all of them", positions.size, n_tokens)
        n_tokens = positions.size
    picked = np.random.default_rng(seed).choice(positions, size=int(n_tokens), replace=False)
    out = np.zeros(labels.size, dtype=bool)
    out[picked] = True
    return out.reshape(labels.shape)


def _write_control(out, mask: np.ndarray, like_meta: dict, like_fp: str, **fields) -> Path:
    carried = {k: like_meta[k] for k in INHERITED_KEYS if k in like_meta}
    with artifact_dir(out) as tmp:
        np.save(tmp / MASK_FILE, mask)
        write_meta(
            tmp,
            "mask",
            **fields,
            shape=list(mask.shape),
            n_selected=int(np.count_nonzero(mask)),
            documents_touched=int(np.count_nonzero(mask.any(axis=1))),
            like_fingerprint=like_fp,
            **carried,
            fingerprint=fingerprint_array(mask),
        )
    return Path(out)


def random_mask_artifact(
    like: str | os.PathLike,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    window: int | None = None,
    scores: ScoresLike | Sequence[ScoresLike] | None = None,
) -> Path:
    """``ifguide random-mask``: a random control for the mask in ``like`` (same count and window)."""
    mask, meta = read_mask(like)
    if window is None:
        window = int(meta.get("args", {}).get("window", 1) if meta.get("kind") == "selection" else meta.get("window", 1))
    valid = None
    if scores is not None:
        source = open_scores(scores)
        if "scores_fingerprint" in meta:
            require_fingerprint(meta["scores_fingerprint"], source.fingerprint(), what="scores", where=str(like))
        valid = finite_scores_mask(source)
        valid[:, 0] = False
    rand = random_mask_like(np.asarray(mask), window=window, seed=seed, valid=valid)
    return _write_control(
        out, rand, meta, meta["fingerprint"], kind="random", seed=seed, window=window,
        valid="finite scores, column >= 1" if scores is not None else "column >= 1",
    )


def oracle_mask_artifact(like: str | os.PathLike, blocks: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0) -> Path:
    """``ifguide random-mask --oracle``: as many tokens as ``like``, on ground-truth toxic tokens."""
    from ifguide.data.blocks import Blocks

    mask, meta = read_mask(like)
    b = Blocks.open(blocks)
    if "blocks_fingerprint" in meta:
        require_fingerprint(meta["blocks_fingerprint"], b.fingerprint, what="blocks", where=str(like))
    if b.toxic_labels is None:
        raise InputError(f"{blocks}: has no toxic_labels.npy (the corpus carried no toxic_spans/toxic labels)")
    if tuple(b.shape) != tuple(mask.shape):
        raise InputError(f"{like}: mask shape {mask.shape} differs from the blocks' {b.shape}")
    oracle = oracle_mask(np.asarray(b.toxic_labels), int(np.count_nonzero(mask)), seed=seed)
    return _write_control(out, oracle, {**meta, "blocks_fingerprint": b.fingerprint}, meta["fingerprint"], kind="oracle", seed=seed)
