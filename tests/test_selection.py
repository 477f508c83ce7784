"""Selection (Algorithm 1): exact quantile, vectorised walk vs the plain-loop reference, shards."""

from __future__ import annotations

import numpy as np
import pytest

from ifguide.errors import InputError
from ifguide.selection import exact_quantile, select_toxic_tokens
from ifguide.selection.algorithm import dilate_rows

DTYPES = [np.float16, np.float32, np.float64]


def random_scores(rng, n_rows, n_cols, dtype, kind, nan_frac=0.15):
    if kind == "normal":
        x = rng.normal(size=(n_rows, n_cols))
    elif kind == "ties":
        x = rng.integers(-3, 4, size=(n_rows, n_cols)).astype(float)
    elif kind == "wide":  # magnitudes over many decades: exercises every key digit
        x = rng.normal(size=(n_rows, n_cols)) * 10.0 ** rng.integers(-6, 4, size=(n_rows, n_cols))
    else:
        x = rng.standard_cauchy(size=(n_rows, n_cols))
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    x[~np.isfinite(x)] = 0
    x[rng.random((n_rows, n_cols)) < nan_frac] = np.nan
    if np.isnan(x).all():
        x[0, 0] = 1
    return x


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and (a == b or (a.tobytes() == b.tobytes()))


# --- quantile ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_quantile_matches_numpy_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    for it in range(150):
        kind = ["normal", "ties", "wide", "cauchy"][it % 4]
        x = random_scores(rng, int(rng.integers(1, 20)), int(rng.integers(1, 30)), dtype, kind)
        p = float(rng.choice([0.99, 0.5, 0.01, rng.random(), 1 - 1e-12, 1e-12]))
        expected = np.quantile(x[np.isfinite(x)], p)
        # in memory, and out of core with tiny chunks so every radix/gather branch runs
        for chunk, gather in [(10**9, 10**9), (7, 5), (3, 0), (50, 1)]:
            got = exact_quantile(x, p, chunk_elements=chunk, gather_limit=gather).value
            assert same_bits(got, expected), (dtype, kind, p, chunk, gather, got, expected)


def test_exact_quantile_many_duplicates_out_of_core():
    x = np.full((40, 50), 0.25, dtype=np.float32)
    x[::3, ::7] = np.float32(1.5)
    x[5] = np.nan
    expected = np.quantile(x[np.isfinite(x)], 0.97)
    res = exact_quantile(x, 0.97, chunk_elements=64, gather_limit=0)
    assert same_bits(res.value, expected)
    assert res.n_finite == int(np.isfinite(x).sum())


def test_exact_quantile_refuses_bad_input():
    with pytest.raises(InputError, match="NaN"):
        exact_quantile(np.full((3, 4), np.nan, dtype=np.float32), 0.5)
    with pytest.raises(InputError, match="inf"):
        exact_quantile(np.array([[1.0, np.inf]]), 0.5)
    with pytest.raises(InputError, match="inf"):
        exact_quantile(np.array([[1.0, -np.inf]]), 0.5, chunk_elements=1, gather_limit=0)
    for p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(InputError, match="threshold"):
            exact_quantile(np.ones((2, 2)), p)


# --- the walk ---------------------------------------------------------------------------------


def assert_same_selection(a, b):
    assert np.array_equal(np.asarray(a.mask), np.asarray(b.mask))
    assert same_bits(a.tau, b.tau)
    assert np.array_equal(a.ranks, b.ranks)  # bit-identical float64 ranks
    assert np.array_equal(a.toxic_sums, b.toxic_sums)
    assert np.array_equal(a.toxic_counts, b.toxic_counts)
    assert np.array_equal(a.ranked_documents, b.ranked_documents)
    assert (a.n_selected, a.budget_tokens, a.n_toxic, a.n_finite, a.documents_touched) == (
        b.n_selected, b.budget_tokens, b.n_toxic, b.n_finite, b.documents_touched
    )


def test_vectorised_matches_reference_on_random_inputs():
    rng = np.random.default_rng(1)
    for it in range(120):
        dtype = DTYPES[it % 3]
        kind = ["normal", "ties", "wide", "cauchy"][it % 4]
        x = random_scores(rng, int(rng.integers(1, 15)), int(rng.integers(1, 25)), dtype, kind)
        kwargs = dict(
            threshold=float(rng.choice([0.5, 0.9, 0.99, rng.uniform(0.01, 0.99)])),
            window=int(rng.integers(0, 6)),
            budget=float(rng.choice([0.02, 0.1, 0.5, 1.0])),
        )
        if it % 4 == 0:
            kwargs["max_tokens"] = int(rng.integers(0, x.size + 3))
        ref = select_toxic_tokens(x, impl="reference", **kwargs)
        for chunk in (10**9, 7, 1):
            got = select_toxic_tokens(x, chunk_elements=chunk, gather_limit=chunk, **kwargs)
            assert_same_selection(got, ref)
        toxic, w = x > ref.tau, kwargs["window"]
        available = sum(
            any(toxic[i, max(0, j - w) : j + w + 1]) and not np.isnan(x[i, j]) for i in range(x.shape[0]) for j in range(x.shape[1])
        )
        assert ref.n_selected == int(np.asarray(ref.mask).sum()) == min(ref.budget_tokens, available)


def test_hand_computed_example():
    """Pins the semantics independently of both implementations."""
    nan = np.nan
    s = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # doc 0: nothing toxic
            [0.0, 5.0, 0.0, 0.0, 0.0, 5.0],  # doc 1: s=2, f=10
            [0.0, nan, 9.0, 0.0, 0.0, 0.0],  # doc 2: s=1, f=9; left neighbour NaN is skipped
            [4.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # doc 3: s=1, f=4; window clipped at column 0
        ],
        dtype=np.float32,
    )
    # 23 finite scores; tau at p=0.8 is 0.0 (over 80% are zeros), so every positive score is toxic.
    # s: [0, 2, 1, 1] -> [0, 1, .5, .5]; f: [0, 10, 9, 4] -> [0, 1, .9, .4]
    # R: doc1 = 1, doc2 = 2*.5*.9/1.4 = .6428..., doc3 = 2*.5*.4/.9 = .444...
    sel = select_toxic_tokens(s, threshold=0.8, window=1, max_tokens=7)
    assert float(sel.tau) == 0.0
    assert sel.ranked_documents.tolist() == [1, 2, 3]
    assert sel.ranks[1] == 1.0 and sel.ranks[0] == 0.0
    assert sel.ranks[2] == pytest.approx(2 * 0.5 * 0.9 / 1.4)
    expected = np.zeros_like(s, dtype=bool)
    expected[1, [0, 1, 2, 4, 5]] = True  # doc 1: windows of 1 and 5 -> 5 tokens
    expected[2, [2, 3]] = True  # doc 2: position 1 is NaN; budget of 7 cuts after 2 tokens
    assert np.array_equal(sel.mask, expected)
    assert sel.n_selected == 7 and sel.documents_touched == 2
    assert_same_selection(sel, select_toxic_tokens(s, threshold=0.8, window=1, max_tokens=7, impl="reference"))


def test_normalisation_includes_documents_without_toxic_tokens():
    # every document has the same s and f except one with none: min is taken over all of them
    x = np.zeros((3, 8), dtype=np.float64)
    x[0, 3] = x[1, 3] = 2.0
    sel = select_toxic_tokens(x, threshold=0.5, window=0, budget=1.0)
    assert sel.ranks.tolist() == [1.0, 1.0, 0.0]
    assert sel.ranked_documents.tolist() == [0, 1]  # tie broken by lower index


def test_budget_fraction_of_finite_scores():
    rng = np.random.default_rng(3)
    x = random_scores(rng, 50, 40, np.float32, "normal", nan_frac=0.3)
    sel = select_toxic_tokens(x, threshold=0.9, window=2, budget=0.05)
    n_finite = int(np.isfinite(x).sum())
    assert sel.budget_tokens == int(np.floor(0.05 * n_finite))
    assert sel.n_selected == int(np.asarray(sel.mask).sum()) == sel.budget_tokens
    assert not np.asarray(sel.mask)[np.isnan(x)].any()


def test_shards_give_the_mask_of_their_concatenation(tmp_path):
    rng = np.random.default_rng(4)
    x = random_scores(rng, 30, 16, np.float16, "normal")
    whole = select_toxic_tokens(x, threshold=0.95, window=1, budget=0.1)
    np.save(tmp_path / "a.npy", x[:11])
    np.save(tmp_path / "b.npy", x[11:])
    for shards in ([x[:11], x[11:]], [tmp_path / "a.npy", tmp_path / "b.npy"], [x[:1], x[1:29], x[29:]]):
        got = select_toxic_tokens(shards, threshold=0.95, window=1, budget=0.1, chunk_elements=40)
        assert_same_selection(got, whole)


def test_npy_file_and_mask_file_out_of_core(tmp_path):
    rng = np.random.default_rng(5)
    x = random_scores(rng, 64, 32, np.float32, "wide")
    np.save(tmp_path / "s.npy", x)
    ref = select_toxic_tokens(x, threshold=0.97, window=2, budget=0.05, impl="reference")
    got = select_toxic_tokens(tmp_path / "s.npy", threshold=0.97, window=2, budget=0.05,
                              out=tmp_path / "mask.npy", chunk_elements=100, gather_limit=10)
    assert isinstance(got.mask, np.memmap)
    assert_same_selection(got, ref)
    from ifguide.artifacts import fingerprint_array

    assert got.mask_fingerprint == fingerprint_array(np.load(tmp_path / "mask.npy"))


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5, 9, 40])
def test_dilate_rows_matches_windows(radius):
    rng = np.random.default_rng(radius)
    m = rng.random((6, 13)) < 0.1
    expected = np.zeros_like(m)
    for i, j in zip(*np.nonzero(m)):
        expected[i, max(0, j - radius) : j + radius + 1] = True
    assert np.array_equal(dilate_rows(m, radius), expected)


@pytest.mark.parametrize(
    "scores, kwargs, match",
    [
        (np.ones((3, 4), dtype=np.int32), {}, "floating-point"),
        (np.ones(5, dtype=np.float32), {}, "2-D"),
        (np.full((2, 3), np.nan), {}, "NaN"),
        (np.ones((2, 3)), {"threshold": 1.0}, "threshold"),
        (np.ones((2, 3)), {"window": -1}, "window"),
        (np.ones((2, 3)), {"budget": 0.0}, "budget"),
        (np.ones((2, 3)), {"budget": 1.5}, "budget"),
        (np.ones((2, 3)), {"max_tokens": -2}, "max-tokens"),
        (np.ones((2, 3)), {"impl": "fast"}, "unknown implementation"),
    ],
)
def test_bad_input_is_refused(scores, kwargs, match):
    with pytest.raises(InputError, match=match):
        select_toxic_tokens(scores, **kwargs)


def test_shards_must_agree_on_block_length():
    with pytest.raises(InputError, match="block length"):
        select_toxic_tokens([np.ones((2, 3)), np.ones((2, 4))])


# --- the fast paths: sampled quantile bound, sparse windows ------------------------------------


def test_in_memory_quantile_bound_is_checked_and_exact():
    """The sampled lower bound path and its fallback both give numpy's quantile to the bit."""
    from ifguide.selection.quantile import _in_memory_order_statistics, quantile_ranks

    rng = np.random.default_rng(5)
    for it in range(40):
        dtype = DTYPES[it % 3]
        x = random_scores(rng, 40, 60, dtype, ["normal", "ties", "wide", "cauchy"][it % 4]).reshape(-1)
        if it % 5 == 0:  # adversarial: the strided sample sees only huge values, so its bound is too high
            x[:: x.size // 64] = dtype(1000)
        p = float(rng.choice([0.99, 0.9, 0.5, 1 - 1e-9]))
        finite = np.sort(x[np.isfinite(x)])
        before = x.copy()
        x_lo, x_hi, n, above = _in_memory_order_statistics(x, p, owned=False, sample_size=64)
        assert np.array_equal(x, before, equal_nan=True)  # not owned: left untouched
        lo, hi = quantile_ranks(finite.size, p)
        assert n == finite.size and same_bits(x_lo, finite[lo]) and same_bits(x_hi, finite[hi])
        if it % 5 == 0:
            assert above is None  # the bound failed its check and every value was partitioned
        if above is not None:
            bound, positions = above
            assert bound < x_lo and np.array_equal(positions, np.flatnonzero(x > bound))
        assert same_bits(exact_quantile(x.reshape(40, 60), p).value, np.quantile(finite, p))


def test_in_memory_quantile_refuses_infinities_on_every_path():
    x = np.random.default_rng(0).normal(size=(64, 512)).astype(np.float32)  # above the sample size
    for bad in (np.inf, -np.inf):
        y = x.copy()
        y[3, 7] = bad
        with pytest.raises(InputError, match="inf"):
            exact_quantile(y, 0.99)
        with pytest.raises(InputError, match="inf"):
            exact_quantile(y, 0.2)  # lower quantile: no sampled bound
    with pytest.raises(InputError, match="NaN"):
        exact_quantile(np.full((64, 512), np.nan, dtype=np.float32), 0.99)


@pytest.mark.parametrize("window", [1, 3, 9, 40])
def test_vectorised_matches_reference_above_the_sample_size(window):
    """Scores large enough for the sampled quantile and, for w >= 9, the dense window fallback."""
    rng = np.random.default_rng(window)
    x = random_scores(rng, 24, 900, np.float32, "normal", nan_frac=0.02)
    x[rng.random(x.shape) < 0.002] += 5.0  # a few strong tokens
    for kwargs in (dict(threshold=0.99, window=window, budget=0.02), dict(threshold=0.95, window=window, budget=0.3)):
        ref = select_toxic_tokens(x, impl="reference", **kwargs)
        for chunk in (10**9, 900 * 5):
            assert_same_selection(select_toxic_tokens(x, chunk_elements=chunk, **kwargs), ref)
