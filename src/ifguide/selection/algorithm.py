"""Toxic-token selection, IF-Guide's Algorithm 1: threshold, rank documents, take windows to a budget.

Given token-wise scores ``S`` [N, T] (NaN = no score), in target coordinates:

1. ``tau = np.quantile(finite S, p)`` (linear method).
2. A token is *toxic* when ``S_ij > tau`` (strictly).
3. Per document (block row) ``i``: ``s_i`` toxic tokens with score sum ``f_i``. Both are min-max
   normalised over ALL documents (all zeros when max == min) and combined into the rank
   ``R_i = 2 s_i f_i / (s_i + f_i)`` (0 when ``s_i + f_i == 0``): a document ranks high when it
   has many toxic tokens *and* they are strongly toxic.
4. Documents are walked by ``R`` descending (ties: lower index first). Within a document, each
   toxic position ``j`` ascending contributes ``j-w .. j+w`` (clipped to the row, ascending,
   skipping NaN positions) until exactly ``L = min(budget, available)`` tokens are selected.
5. ``L`` is ``max_tokens`` or ``floor(budget * n_finite)``.

Why the vectorised version can skip the walk: within one row, windows visited in ascending
order only ever add positions to the right of what earlier windows covered, so the tokens a
document adds, in order, are exactly the finite positions of its dilated toxic mask, ascending.
The walk therefore reduces to a cumulative sum of per-document candidate counts in rank order;
only the one document where the budget runs out is cut, keeping its leftmost candidates.
Toxic tokens are about 1 - p of the scores, so after one scan for ``S > tau`` everything works
on their flat positions (and their windows' positions) rather than on dense [N, T] masks.

Floating point: ``f_i`` is summed in float64, left to right along the row (``np.cumsum`` is a
sequential accumulation), and the normalisation and rank use the same float64 operations in
the same order as :func:`select_reference`, so both rankings are bit-identical.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ifguide.errors import InputError
from ifguide.progress import Progress
from ifguide.selection.quantile import DEFAULT_GATHER_LIMIT, exact_quantile
from ifguide.selection.source import DEFAULT_CHUNK_ELEMENTS, ScoreSource, ScoresLike, open_scores

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("vectorised", "reference")


@dataclass
class SelectionParams:
    """What to select; validated on construction."""

    threshold: float = field(default=0.99, metadata={"help": "quantile p of the finite scores above which a token is toxic, in (0, 1)"})
    window: int = field(default=1, metadata={"help": "also select w tokens either side of each toxic token"})
    budget: float = field(default=0.02, metadata={"help": "fraction of scored tokens to select, in (0, 1]"})
    max_tokens: int | None = field(default=None, metadata={"help": "absolute token budget L (overrides --budget)"})

    def __post_init__(self) -> None:
        self.threshold = float(self.threshold)
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"--threshold: quantile p must lie in (0, 1), got {self.threshold}")
        if int(self.window) != self.window or self.window < 0:
            raise InputError(f"--window: expected a non-negative integer, got {self.window}")
        self.window = int(self.window)
        self.budget = float(self.budget)
        if not 0.0 < self.budget <= 1.0:
            raise InputError(f"--budget: expected a fraction in (0, 1], got {self.budget}")
        if self.max_tokens is not None:
            if int(self.max_tokens) != self.max_tokens or self.max_tokens < 0:
                raise InputError(f"--max-tokens: expected a non-negative integer, got {self.max_tokens}")
            self.max_tokens = int(self.max_tokens)

    def budget_tokens(self, n_finite: int) -> int:
        """The token budget L."""
        return self.max_tokens if self.max_tokens is not None else math.floor(self.budget * n_finite)


@dataclass
class Selection:
    """Result of :func:`select_toxic_tokens`.

    ``mask`` is bool [N, T] in target coordinates (a read-only memory map when written to a file).
    Per-document arrays (length N): ``toxic_counts`` (s), ``toxic_sums`` (f), ``ranks`` (R).
    ``ranked_documents``: indices of the documents with at least one toxic token, best first.
    """

    mask: np.ndarray
    tau: np.floating
    n_finite: int
    n_toxic: int
    budget_tokens: int
    n_selected: int
    ranked_documents: np.ndarray
    toxic_counts: np.ndarray
    toxic_sums: np.ndarray
    ranks: np.ndarray
    documents_touched: int
    params: SelectionParams
    mask_fingerprint: str | None = None

    def ranking_table(self, limit: int | None = None) -> list[dict]:
        """``[{doc, R, s, f}, ...]`` for the ranked documents (best first), at most ``limit`` rows."""
        docs = self.ranked_documents[:limit] if limit is not None else self.ranked_documents
        return [
            {"doc": int(i), "R": float(self.ranks[i]), "s": int(self.toxic_counts[i]), "f": float(self.toxic_sums[i])}
            for i in docs
        ]


# ----------------------------------------------------------------------------------------------
# shared pieces (used by both implementations so that they agree to the bit)


def min_max(x: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) in float64; all zeros when max == min."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def document_ranks(toxic_counts: np.ndarray, toxic_sums: np.ndarray) -> np.ndarray:
    """R_i = 2 s f / (s + f) on min-max normalised s, f (over ALL documents); 0 where s + f == 0."""
    s, f = min_max(toxic_counts), min_max(toxic_sums)
    denom = s + f
    return np.divide(2 * s * f, denom, out=np.zeros_like(denom), where=denom != 0)


def rank_order(ranks: np.ndarray, toxic_counts: np.ndarray) -> np.ndarray:
    """Documents with toxic tokens by R descending, ties by lower index (stable sort of -R)."""
    order = np.argsort(-ranks, kind="stable")
    return order[toxic_counts[order] > 0]


# ----------------------------------------------------------------------------------------------
# vectorised, out-of-core implementation


def dilate_rows(mask: np.ndarray, radius: int) -> np.ndarray:
    """Positions within ``radius`` of a True along each row (windows clipped to the row).

    Doubling: a mask covering radius r, OR-ed with itself shifted by s <= r + 1 either way,
    covers radius r + s with no gaps, so O(log radius) shifts suffice.
    """
    out = mask.copy()
    reach = min(radius, mask.shape[1] - 1)  # a window of T - 1 already spans the whole row
    covered = 0
    while covered < reach:
        step = min(covered + 1, reach - covered)
        grown = out.copy()
        grown[:, step:] |= out[:, :-step]
        grown[:, :-step] |= out[:, step:]
        out, covered = grown, covered + step
    return out


def row_sums_left_to_right(picked: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float64 sum per row of ``picked`` (the rows' toxic values, row by row), accumulated left to right.

    ``counts[i]`` values of ``picked`` belong to row ``i``. They are packed into a zero-padded
    [rows, max_count] array whose row-wise cumsum ends in the sequential sum (like a Python loop).
    """
    sums = np.zeros(len(counts), dtype=np.float64)
    rows = np.flatnonzero(counts)
    if rows.size == 0:
        return sums
    c = counts[rows]
    starts = np.cumsum(c) - c
    slot = np.arange(picked.size) - np.repeat(starts, c)
    packed = np.zeros((rows.size, int(c.max())), dtype=np.float64)
    packed[np.repeat(np.arange(rows.size), c), slot] = picked
    sums[rows] = np.cumsum(packed, axis=1)[:, -1]
    return sums


# Windows wider than this many positions are dilated on a dense mask: the sparse merge below
# costs 2w + 1 copies of the toxic positions, the dense dilation O(log w) passes over the chunk.
_SPARSE_WINDOW_WIDTH = 17


def _toxic_positions(chunk: np.ndarray, tau: np.floating) -> np.ndarray:
    """Flat (row-major) indices of the scores strictly above ``tau``, ascending (NaN compares False)."""
    return np.flatnonzero(chunk > tau)


def _window_positions(chunk: np.ndarray, toxic: np.ndarray, window: int) -> np.ndarray:
    """Flat indices, ascending and unique, of the finite positions within ``window`` of a toxic
    position in the same row: the candidates the walk can select.

    Toxic positions are about 1 % of a chunk, so the candidates are built from them rather than
    by dilating a dense mask: each offset ``d`` gives an ascending run of positions, and a stable
    sort of the 2w + 1 runs is a linear merge (timsort finds the runs).
    """
    n_cols = chunk.shape[1]
    if window == 0 or toxic.size == 0:
        return toxic  # toxic scores are finite
    if 2 * window + 1 > _SPARSE_WINDOW_WIDTH:
        mask = np.zeros(chunk.shape, dtype=bool)
        mask.reshape(-1)[toxic] = True
        return np.flatnonzero(dilate_rows(mask, window) & ~np.isnan(chunk))
    col = toxic % n_cols
    runs = [toxic[(col + d >= 0) & (col + d < n_cols)] + d for d in range(-window, window + 1)]
    pos = np.sort(np.concatenate(runs), kind="stable")
    pos = pos[np.concatenate(([True], pos[1:] != pos[:-1]))]
    return pos[~np.isnan(chunk.reshape(-1)[pos])]


def _per_row_counts(positions: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """How many of the ascending flat ``positions`` fall in each row (binary search of the row starts)."""
    return np.diff(np.searchsorted(positions, np.arange(n_rows + 1) * n_cols))


def _document_statistics(source: ScoreSource, tau: np.floating, window: int, chunk_elements: int, above=None):
    """One pass: per-row toxic counts s, sums f and window-candidate counts c.

    Also returns the candidate positions when the scores fit in one chunk, so that writing the
    mask need not recompute them. ``above`` (from the quantile: a bound and the flat positions
    of the scores above it) spares the one-chunk case a scan of the scores for ``> tau``.
    """
    n = source.n_rows
    s = np.zeros(n, dtype=np.int64)
    f = np.zeros(n, dtype=np.float64)
    c = np.zeros(n, dtype=np.int64)
    single_chunk = source.rows_per_chunk(chunk_elements) >= n and len(source.parts) == 1
    candidates = None
    with Progress(total=n, desc="rank documents", unit="row") as bar:
        for first, chunk in source.iter_chunks(chunk_elements):
            rows, n_cols = slice(first, first + len(chunk)), chunk.shape[1]
            if single_chunk and above is not None and above[0] <= tau:
                toxic = above[1][chunk.reshape(-1)[above[1]] > tau]
            else:
                toxic = _toxic_positions(chunk, tau)
            candidates = _window_positions(chunk, toxic, window)
            s[rows] = _per_row_counts(toxic, len(chunk), n_cols)
            f[rows] = row_sums_left_to_right(chunk.reshape(-1)[toxic], s[rows])
            c[rows] = _per_row_counts(candidates, len(chunk), n_cols)
            bar.update(len(chunk))
    return s, f, c, (candidates if single_chunk else None)


def _tokens_per_document(ranked: np.ndarray, candidate_counts: np.ndarray, budget: int) -> np.ndarray:
    """How many leading candidates each row contributes: whole documents in rank order, then a cut."""
    take = np.zeros(len(candidate_counts), dtype=np.int64)
    if budget <= 0 or ranked.size == 0:
        return take
    cum = np.cumsum(candidate_counts[ranked])
    n_full = int(np.searchsorted(cum, budget, side="left"))  # documents strictly before the cut
    take[ranked[:n_full]] = candidate_counts[ranked[:n_full]]
    if n_full < ranked.size:
        before = int(cum[n_full - 1]) if n_full else 0
        take[ranked[n_full]] = budget - before
    return take


class _MaskWriter:
    """Writes a bool [N, T] ``.npy`` row chunk by row chunk (or fills an array).

    A file is hashed as it is written; the hash equals :func:`ifguide.artifacts.fingerprint_array`
    of the finished mask (in-memory masks are not hashed: callers can fingerprint them if needed).
    """

    def __init__(self, shape: tuple[int, int], path: str | os.PathLike | None):
        self.shape = shape
        self.path = Path(path) if path is not None else None
        self.hash = hashlib.sha256(f"{np.dtype(bool).str}|{tuple(shape)}|".encode())
        if self.path is None:
            self.array = np.zeros(shape, dtype=bool)
            self.file = None
        else:
            self.array = None
            self.file = open(self.path, "wb")
            np.lib.format.write_array_header_2_0(
                self.file, {"descr": np.dtype(bool).str, "fortran_order": False, "shape": tuple(shape)}
            )
        self.row = 0

    def write_positions(self, n_rows: int, positions: np.ndarray) -> None:
        """Append ``n_rows`` rows that are True exactly at ``positions`` (flat indices within them)."""
        if self.file is None:  # set them in place: the array is already zero
            self.array.reshape(-1)[self.row * self.shape[1] + positions] = True
        else:
            rows = np.zeros(n_rows * self.shape[1], dtype=bool)
            rows[positions] = True
            self.hash.update(rows)
            self.file.write(rows.tobytes())
        self.row += n_rows

    def close(self) -> np.ndarray:
        if self.file is None:
            return self.array
        self.file.close()
        return np.load(self.path, mmap_mode="r")


def _write_mask(
    source: ScoreSource, tau, window: int, take: np.ndarray, candidate_counts: np.ndarray, out,
    chunk_elements: int, cached_candidates: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    writer = _MaskWriter(source.shape, out)
    try:
        for first, chunk in source.iter_chunks(chunk_elements):
            rows = slice(first, first + len(chunk))
            chunk_take = take[rows]
            selected = np.zeros(0, dtype=np.int64)
            if chunk_take.any():
                if cached_candidates is not None:
                    candidates = cached_candidates
                else:
                    candidates = _window_positions(chunk, _toxic_positions(chunk, tau), window)
                # each row keeps its leftmost `take` candidates: all of them but at the budget cut
                counts = candidate_counts[rows]
                row = np.repeat(np.arange(len(chunk)), counts)  # candidates are grouped by row, ascending
                rank_in_row = np.arange(candidates.size) - (np.cumsum(counts) - counts)[row]
                selected = candidates[rank_in_row < chunk_take[row]]
            writer.write_positions(len(chunk), selected)
    except BaseException:
        if writer.file is not None:
            writer.file.close()
        raise
    return writer.close(), (writer.hash.hexdigest() if writer.file is not None else None)


def _select_vectorised(source: ScoreSource, params: SelectionParams, out, chunk_elements: int, gather_limit: int) -> Selection:
    q = exact_quantile(source, params.threshold, chunk_elements=chunk_elements, gather_limit=gather_limit)
    tau, budget = q.value, params.budget_tokens(q.n_finite)
    s, f, c, cached = _document_statistics(source, tau, params.window, chunk_elements, q.above)
    ranks = document_ranks(s, f)
    ranked = rank_order(ranks, s)
    take = _tokens_per_document(ranked, c, budget)
    mask, fingerprint = _write_mask(source, tau, params.window, take, c, out, chunk_elements, cached)
    return Selection(
        mask=mask,
        tau=tau,
        n_finite=q.n_finite,
        n_toxic=int(s.sum()),
        budget_tokens=budget,
        n_selected=int(take.sum()),
        ranked_documents=ranked,
        toxic_counts=s,
        toxic_sums=f,
        ranks=ranks,
        documents_touched=int(np.count_nonzero(take)),
        params=params,
        mask_fingerprint=fingerprint,
    )


# ----------------------------------------------------------------------------------------------
# reference: the walk exactly as written, in plain Python loops


def select_reference(scores: np.ndarray, params: SelectionParams) -> Selection:
    """Algorithm 1 as literal loops over an in-memory array (slow; the tests' ground truth)."""
    scores = np.asarray(scores)
    n_rows, n_cols = scores.shape
    rows = scores.tolist()  # Python floats: exact for float16/32/64
    finite = []
    for row in rows:
        for v in row:
            if math.isinf(v):
                raise InputError("scores contain +/-inf; only finite values (or NaN for 'no score') are allowed")
            if not math.isnan(v):
                finite.append(v)
    if not finite:
        raise InputError("scores: every score is NaN; there is nothing to select from")
    tau = np.quantile(np.array(finite, dtype=scores.dtype), params.threshold)
    budget = params.budget_tokens(len(finite))
    tau_f = float(tau)

    s = [0] * n_rows
    f = [0.0] * n_rows
    for i, row in enumerate(rows):
        for v in row:
            if v > tau_f:
                s[i] += 1
                f[i] += v

    def normalise(x):
        lo, hi = min(x), max(x)
        return [0.0] * len(x) if hi == lo else [(v - lo) / (hi - lo) for v in x]

    sn, fn = normalise(s), normalise(f)
    ranks = [2 * a * b / (a + b) if a + b != 0 else 0.0 for a, b in zip(sn, fn)]
    order = sorted(range(n_rows), key=lambda i: (-ranks[i], i))

    mask = [[False] * n_cols for _ in range(n_rows)]
    selected = 0
    touched = set()
    w = params.window
    for i in order:
        if selected >= budget:
            break
        if s[i] == 0:
            continue
        row = rows[i]
        for j in range(n_cols):
            if selected >= budget:
                break
            if not row[j] > tau_f:
                continue
            for k in range(max(0, j - w), min(n_cols - 1, j + w) + 1):
                if math.isnan(row[k]) or mask[i][k]:
                    continue
                mask[i][k] = True
                touched.add(i)
                selected += 1
                if selected >= budget:
                    break

    return Selection(
        mask=np.array(mask, dtype=bool).reshape(n_rows, n_cols),
        tau=tau,
        n_finite=len(finite),
        n_toxic=sum(s),
        budget_tokens=budget,
        n_selected=selected,
        ranked_documents=np.array([i for i in order if s[i] > 0], dtype=np.int64),
        toxic_counts=np.array(s, dtype=np.int64),
        toxic_sums=np.array(f, dtype=np.float64),
        ranks=np.array(ranks, dtype=np.float64),
        documents_touched=len(touched),
        params=params,
    )


# ----------------------------------------------------------------------------------------------


def select_toxic_tokens(
    scores: ScoresLike | Sequence[ScoresLike] | ScoreSource,
    threshold: float = 0.99,
    window: int = 1,
    budget: float = 0.02,
    max_tokens: int | None = None,
    impl: str = "vectorised",
    *,
    out: str | os.PathLike | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    gather_limit: int = DEFAULT_GATHER_LIMIT,
) -> Selection:
    """Select the training tokens to suppress (IF-Guide Algorithm 1; see the module docstring).

    Args:
        scores: a scores directory, a ``.npy`` file, a float [N, T] array, or a list of these whose
            rows concatenate (score shards). NaN = no score.
        threshold: quantile p in (0, 1); tokens scoring strictly above it are toxic.
        window: w, tokens either side of a toxic token that are selected with it.
        budget: fraction of the finite scores to select (L = floor(budget * n_finite)).
        max_tokens: absolute budget L, overriding ``budget``.
        impl: ``"vectorised"`` (chunked, out-of-core) or ``"reference"`` (plain loops, in memory).
        out: write the mask as a ``.npy`` file here (streamed; ``Selection.mask`` memory-maps it).
        chunk_elements: scores read per chunk by the vectorised implementation.
        gather_limit: finish the exact quantile in memory once this few values remain in play.
    """
    params = SelectionParams(threshold=threshold, window=window, budget=budget, max_tokens=max_tokens)
    if impl not in IMPLEMENTATIONS:
        raise InputError(f"impl: unknown implementation {impl!r}; known: {', '.join(IMPLEMENTATIONS)}")
    source = open_scores(scores)
    if impl == "reference":
        result = select_reference(source.to_array(), params)
        if out is not None:
            np.save(out, result.mask)
            result.mask = np.load(out, mmap_mode="r")
    else:
        result = _select_vectorised(source, params, out, chunk_elements, gather_limit)
    logger.info(
        "tau=%.6g (p=%s of %d scores): %d toxic tokens; selected %d of budget %d in %d documents",
        float(result.tau), params.threshold, result.n_finite, result.n_toxic, result.n_selected,
        result.budget_tokens, result.documents_touched,
    )
    return result
