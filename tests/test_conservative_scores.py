"""Conservative scores: min(toxic-only, differential), the differential without credit for hurting safe queries."""

from __future__ import annotations

import numpy as np
import pytest

from ifguide.artifacts import fingerprint_array, read_meta, write_meta
from ifguide.attribution.conservative import conservative_scores
from ifguide.errors import InputError


def _artifact(path, arr, **meta):
    path.mkdir(parents=True)
    np.save(path / "scores.npy", arr)
    fields = {"blocks_fingerprint": "b", "tokenizer_fingerprint": "t", "mode": "differential", "granularity": "token",
              "alignment_mode": "next", "alignment": "next-token targets", "model_fingerprint": "m",
              "query_counts": {"toxic": 4, "safe": 4, "used_toxic": 4, "used_safe": 4}}
    write_meta(path, "scores", **{**fields, **meta}, fingerprint=fingerprint_array(arr))
    return path


def _pair(tmp_path, rng, shape=(7, 9), **toxic_meta):
    """Toxic-only scores and a safe-query term, and the two artifacts a scorer would write from them."""
    toxic = rng.standard_t(2, size=shape) * 10 ** rng.uniform(-3, 3)
    safe = rng.standard_t(2, size=shape) * 10 ** rng.uniform(-3, 3)
    toxic[:, 0] = safe[:, 0] = np.nan  # column 0 has no target
    differential = (toxic - safe).astype(np.float32)
    toxic = toxic.astype(np.float32)
    d = _artifact(tmp_path / "differential", differential)
    t = _artifact(tmp_path / "toxic-only", toxic, **{"mode": "toxic-only",
                                                     "query_counts": {"toxic": 4, "safe": 4, "used_toxic": 4,
                                                                      "used_safe": 0}, **toxic_meta})
    return d, t, differential, toxic


def test_subtracts_only_what_also_helps_safe_queries(tmp_path, monkeypatch):
    """Reference: I_toxic - max(I_safe, 0) with I_safe = toxic-only - differential, element by element."""
    import ifguide.attribution.average as average_mod

    monkeypatch.setattr(average_mod, "ROWS_PER_CHUNK", 3)  # several chunks (the shared writer), the last one short
    d, t, differential, toxic = _pair(tmp_path, np.random.default_rng(0))
    out = conservative_scores(d, t, tmp_path / "out")
    got = np.load(out / "scores.npy")
    for i in range(got.shape[0]):
        for j in range(got.shape[1]):
            if j == 0:
                assert np.isnan(got[i, j])
                continue
            tox, safe = float(toxic[i, j]), float(toxic[i, j]) - float(differential[i, j])
            expected = tox - safe if safe > 0 else tox
            assert got[i, j] == pytest.approx(expected, rel=1e-5, abs=1e-30)
    meta = read_meta(out, stage="scores")
    assert meta["mode"] == "conservative" and meta["fingerprint"] == fingerprint_array(got)
    assert [m["fingerprint"] for m in meta["combined_from"]] == [read_meta(d)["fingerprint"], read_meta(t)["fingerprint"]]
    assert meta["blocks_fingerprint"] == "b" and meta["alignment"] == "next-token targets"


def test_selection_reads_conservative_scores_like_any_scores(tmp_path):
    from ifguide.selection.algorithm import select_toxic_tokens

    d, t, differential, toxic = _pair(tmp_path, np.random.default_rng(1), shape=(40, 16))
    out = conservative_scores(d, t, tmp_path / "out")
    direct = select_toxic_tokens(np.minimum(differential, toxic), budget=0.05)
    assert np.array_equal(np.asarray(direct.mask), np.asarray(select_toxic_tokens(out, budget=0.05).mask))


@pytest.mark.parametrize(
    "toxic_meta, message",
    [
        ({"mode": "differential"}, "expected scores of mode 'toxic-only'"),
        ({"blocks_fingerprint": "other"}, "blocks_fingerprint"),
        ({"alignment_mode": "same"}, "alignment_mode"),
        ({"model_fingerprint": "another model"}, "same model"),
        ({"query_counts": {"used_toxic": 3}}, "same toxic queries"),
    ],
)
def test_scores_of_different_things_are_refused(tmp_path, toxic_meta, message):
    d, t, _, _ = _pair(tmp_path, np.random.default_rng(2), **toxic_meta)
    with pytest.raises(InputError, match=message):
        conservative_scores(d, t, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written is left behind


def test_inputs_swapped_or_with_other_unscored_positions_are_refused(tmp_path):
    d, t, _, toxic = _pair(tmp_path, np.random.default_rng(3))
    with pytest.raises(InputError, match="expected scores of mode 'differential'"):
        conservative_scores(t, d, tmp_path / "out")
    toxic[2, 3] = np.nan
    holes = _artifact(tmp_path / "holes", toxic, mode="toxic-only")
    with pytest.raises(InputError, match="scored positions differ"):
        conservative_scores(d, holes, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_conservative_scores(tmp_path):
    from ifguide.cli import main

    d, t, differential, toxic = _pair(tmp_path, np.random.default_rng(4))
    assert main(["conservative-scores", "--differential", str(d), "--toxic-only", str(t), "--out", str(tmp_path / "c")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "c" / "scores.npy"), np.minimum(differential, toxic))
    assert main(["conservative-scores", "--differential", str(t), "--toxic-only", str(d), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
