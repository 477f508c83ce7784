"""Exact ``numpy.quantile`` (linear method) of the finite scores, without loading them all.

numpy's linear quantile sorts the ``n`` values and returns ``x[lo] + (x[hi] - x[lo]) * g`` with
``h = (n - 1) * p``, ``lo = floor(h)``, ``hi = lo + 1`` and ``g = h - lo``, evaluated in the
input's dtype. Only two order statistics are needed, so we find them by *radix selection*:
every float maps to an unsigned integer key with the same order, and histograms of the key's
16-bit digits (one pass over the data per digit, most significant first) narrow each target
rank to a single key. As soon as the values still in play fit in memory they are gathered and
finished with ``np.partition``. float16 keys have one digit, so one pass suffices; float32
usually needs one pass and a small gather. Scores that fit in memory are partitioned directly;
for an upper quantile only the values above a (verified) bound from a strided sample are.

The final interpolation is delegated to ``numpy.quantile`` itself on the two order statistics
(``np.quantile([x_lo, x_hi], g)`` runs exactly the same float operations), so the result is
bit-identical to ``np.quantile(all_finite_values, p)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ifguide.errors import InputError
from ifguide.selection.source import DEFAULT_CHUNK_ELEMENTS, ScoreSource, ScoresLike, open_scores

logger = logging.getLogger(__name__)

DIGIT_BITS = 16
DEFAULT_GATHER_LIMIT = 1 << 25  # values gathered into memory to finish a selection with np.partition

_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class QuantileResult:
    """``value``: the quantile as a scalar of the scores' dtype; ``n_finite``: values it was taken over."""

    value: np.floating
    n_finite: int
    passes: int
    # (bound, flat positions of the scores > bound), bound <= value, when the in-memory path found
    # them on the way: selection reuses them instead of scanning the scores again for > value
    above: tuple[np.floating, np.ndarray] | None = None


def float_to_key(values: np.ndarray) -> np.ndarray:
    """Unsigned integer keys ordered like the floats (-inf < ... < -0.0 < +0.0 < ... < +inf).

    Negative floats get all bits flipped, non-negative ones only the sign bit: XOR with a mask
    made by an arithmetic shift of the sign across the word (faster than ``np.where``).
    """
    size = values.dtype.itemsize
    utype, itype = _UINT[size], np.dtype(f"i{size}").type
    bits = values.view(utype)
    flip = (values.view(itype) >> itype(8 * size - 1)).view(utype) | (utype(1) << utype(8 * size - 1))
    return bits ^ flip


def select_ranks(arr: np.ndarray, ranks: list[int]) -> list:
    """``sorted(arr)[r]`` for each rank, partitioning ``arr`` in place.

    Partitioning at one kth and taking the minimum of the upper part for the next rank is several
    times faster than ``np.partition`` with a list of kth (numpy handles lists much more slowly).
    """
    wanted = sorted(set(ranks))
    arr.partition(wanted[0])
    found = {wanted[0]: arr[wanted[0]]}
    for r in wanted[1:]:
        if r == wanted[0] + 1:  # fmin skips any NaN (they lie above the kth too)
            found[r] = np.fmin.reduce(arr[wanted[0] + 1 :])
        else:  # not needed for quantiles; kept general
            arr.partition(r)
            found[r] = arr[r]
    return [found[r] for r in ranks]


def key_to_float(key: int, dtype: np.dtype) -> np.floating:
    """Inverse of :func:`float_to_key` for one key."""
    utype = _UINT[dtype.itemsize]
    k = utype(key)
    sign = utype(1) << utype(8 * dtype.itemsize - 1)
    bits = k ^ sign if k & sign else ~k
    return np.array([bits], dtype=utype).view(dtype)[0]


def linear_quantile_from_order_statistics(x_lo: np.floating, x_hi: np.floating, n: int, p: float) -> np.floating:
    """``np.quantile(x, p)`` given the two order statistics it interpolates between."""
    h = (n - 1) * float(p)
    lo = math.floor(h)
    if h >= n - 1:  # numpy takes the maximum (n == 1, or p so close to 1 that h rounds up)
        return x_hi
    gamma = h - lo
    return np.quantile(np.array([x_lo, x_hi], dtype=np.asarray(x_lo).dtype), gamma)


def quantile_ranks(n: int, p: float) -> tuple[int, int]:
    """0-based ranks of the order statistics that numpy's linear quantile interpolates."""
    h = (n - 1) * float(p)
    if h >= n - 1:
        return n - 1, n - 1
    lo = math.floor(h)
    return lo, lo + 1


class _Target:
    """One order statistic being narrowed: known high bits of its key, its rank among keys sharing them."""

    def __init__(self, rank: int, key_bits: int):
        self.rank = rank
        self.prefix = 0
        self.known_bits = 0
        self.key_bits = key_bits
        self.key: int | None = None

    @property
    def done(self) -> bool:
        return self.key is not None


def _finite_keys(chunk: np.ndarray, where: str) -> np.ndarray:
    flat = chunk.reshape(-1)
    if np.isinf(flat).any():
        raise InputError(f"{where}: scores contain +/-inf; only finite values (or NaN for 'no score') are allowed")
    return float_to_key(flat[~np.isnan(flat)])


def _chunk_keys(source: ScoreSource, chunk_elements: int):
    for first_row, chunk in source.iter_chunks(chunk_elements):
        yield _finite_keys(chunk, f"scores rows {first_row}..{first_row + len(chunk) - 1}")


def _group_keys(keys: np.ndarray, group: tuple[int, int], key_bits: int) -> np.ndarray:
    known_bits, prefix = group
    if known_bits == 0:
        return keys
    return keys[(keys >> keys.dtype.type(key_bits - known_bits)) == keys.dtype.type(prefix)]


def _histogram_pass(source: ScoreSource, groups: set[tuple[int, int]], chunk_elements: int) -> dict:
    """Histogram of the next 16-bit digit of the keys in each group ``(known_bits, prefix)``."""
    key_bits = 8 * source.dtype.itemsize
    hist = {g: np.zeros(1 << DIGIT_BITS, dtype=np.int64) for g in groups}
    for keys in _chunk_keys(source, chunk_elements):
        for group, h in hist.items():
            sel = _group_keys(keys, group, key_bits)
            digit = (sel >> sel.dtype.type(key_bits - group[0] - DIGIT_BITS)) & sel.dtype.type((1 << DIGIT_BITS) - 1)
            h += np.bincount(digit.astype(np.intp), minlength=1 << DIGIT_BITS)
    return hist


def _narrow(t: _Target, hist: np.ndarray) -> int:
    """Descend into the digit holding the target's rank; returns that digit's count."""
    cum = np.cumsum(hist)
    digit = int(np.searchsorted(cum, t.rank, side="right"))
    t.rank -= int(cum[digit - 1]) if digit else 0
    t.prefix = (t.prefix << DIGIT_BITS) | digit
    t.known_bits += DIGIT_BITS
    if t.known_bits == t.key_bits:
        t.key = t.prefix
    return int(hist[digit])


def _gather_and_finish(source: ScoreSource, targets: list[_Target], chunk_elements: int) -> None:
    """Collect the keys of each target's group and pick its rank with np.partition."""
    key_bits = 8 * source.dtype.itemsize
    buckets: dict[tuple[int, int], list[np.ndarray]] = {(t.known_bits, t.prefix): [] for t in targets}
    for keys in _chunk_keys(source, chunk_elements):
        for group, bucket in buckets.items():
            bucket.append(_group_keys(keys, group, key_bits))
    for group, bucket in buckets.items():
        keys = np.concatenate(bucket)
        mine = [t for t in targets if (t.known_bits, t.prefix) == group]
        for t, key in zip(mine, select_ranks(keys, [t.rank for t in mine])):
            t.key = int(key)


def _out_of_core_order_statistics(
    source: ScoreSource, p: float, chunk_elements: int, gather_limit: int
) -> tuple[np.floating, np.floating, int, int]:
    """Radix selection of the two order statistics; returns them, ``n_finite`` and the passes made."""
    key_bits = 8 * source.dtype.itemsize
    top = _histogram_pass(source, {(0, 0)}, chunk_elements)[(0, 0)]
    passes = 1
    n_finite = int(top.sum())
    if n_finite == 0:
        raise InputError("scores: every score is NaN; there is nothing to select from")
    targets = [_Target(r, key_bits) for r in quantile_ranks(n_finite, p)]
    group_size = max(_narrow(t, top) for t in targets)
    while not all(t.done for t in targets):
        pending = [t for t in targets if not t.done]
        if group_size <= gather_limit:
            _gather_and_finish(source, pending, chunk_elements)
        else:
            hists = _histogram_pass(source, {(t.known_bits, t.prefix) for t in pending}, chunk_elements)
            group_size = max(_narrow(t, hists[(t.known_bits, t.prefix)]) for t in pending)
        passes += 1
    x_lo, x_hi = (key_to_float(t.key, source.dtype) for t in targets)
    return x_lo, x_hi, n_finite, passes


SAMPLE_SIZE = 1 << 14  # values sampled to bound an upper quantile from below


def _in_memory_order_statistics(values: np.ndarray, p: float, owned: bool, sample_size: int = SAMPLE_SIZE):
    """The two order statistics of the finite ``values`` (flat), their count, and, when found on
    the way, the positions of the values above a bound below both statistics (else None).

    ``values`` is partitioned in place only when ``owned``. For an upper quantile (the
    selection's p = 0.99) only the values above a lower bound are partitioned: the bound is a
    lower quantile of a strided sample, and it is *verified*, not trusted: when more finite
    values lie at or below it than the wanted rank, every value is partitioned instead. Either
    way the result is exact.
    """
    n_finite = int(np.count_nonzero(np.isfinite(values)))
    if n_finite == 0:
        if np.isnan(values).all():
            raise InputError("scores: every score is NaN; there is nothing to select from")
        raise _infinite()
    # -inf is the minimum wherever it occurs (fmin skips NaN); +inf is found among the values
    # above the bound below, or by the full check on the fallback path
    if np.fmin.reduce(values) == -np.inf:
        raise _infinite()
    ranks = list(quantile_ranks(n_finite, p))
    if p >= 0.5 and values.size > sample_size:
        sample = values[:: values.size // sample_size]
        sample = sample[~np.isnan(sample)]
        # six standard errors below the target in the sample: the bound holds unless the sample
        # is far from representative, which the rank check below catches
        margin = 6 * math.sqrt(p * (1 - p) / max(1, sample.size)) + 1 / max(1, sample.size)
        if sample.size and p - margin > 0:
            k = int((p - margin) * (sample.size - 1))
            bound = np.partition(sample, k)[k]
            positions = np.flatnonzero(values > bound)  # NaN compares False
            above = values[positions]
            if np.isinf(above).any():
                raise _infinite()
            n_at_or_below = n_finite - above.size
            if ranks[0] >= n_at_or_below:
                x_lo, x_hi = select_ranks(above, [r - n_at_or_below for r in ranks])
                return x_lo, x_hi, n_finite, (bound, positions)
    if np.isinf(values).any():
        raise _infinite()
    # NaN sorts after every number in np.partition, so the NaN need not be filtered out first
    x_lo, x_hi = select_ranks(values if owned else values.copy(), ranks)
    return x_lo, x_hi, n_finite, None


def _infinite() -> InputError:
    return InputError("scores contain +/-inf; only finite values (or NaN for 'no score') are allowed")


def exact_quantile(
    scores: ScoresLike | list | ScoreSource,
    p: float,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    gather_limit: int = DEFAULT_GATHER_LIMIT,
) -> QuantileResult:
    """``np.quantile`` of the finite scores at ``p`` (linear method), bit for bit, out of core.

    NaN means "no score" and is skipped; +/-inf is refused with :class:`InputError`.
    """
    p = float(p)
    if not 0.0 < p < 1.0:
        raise InputError(f"--threshold: quantile p must lie in (0, 1), got {p}")
    source = open_scores(scores)
    total = source.n_rows * source.n_cols
    if total <= gather_limit:
        chunks = [c.reshape(-1) for _, c in source.iter_chunks(chunk_elements)]
        values = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        x_lo, x_hi, n_finite, above = _in_memory_order_statistics(values, p, owned=len(chunks) > 1)
        passes = 1
    else:
        x_lo, x_hi, n_finite, passes = _out_of_core_order_statistics(source, p, chunk_elements, gather_limit)
        above = None
    value = linear_quantile_from_order_statistics(x_lo, x_hi, n_finite, p)
    logger.debug("quantile p=%s of %d finite scores = %r (%d passes)", p, n_finite, value, passes)
    return QuantileResult(value=value, n_finite=n_finite, passes=passes,
                          above=above if len(source.parts) == 1 else None)
