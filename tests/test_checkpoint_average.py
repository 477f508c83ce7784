"""Checkpoint-averaged influence: training snapshots and the mean of several score artifacts."""

from __future__ import annotations

import numpy as np
import pytest

from ifguide.artifacts import fingerprint_array, read_meta, write_meta
from ifguide.attribution.average import average_scores
from ifguide.errors import InputError
from ifguide.training.trainer import snapshot_steps


def test_snapshot_steps_are_evenly_spaced_and_exclude_the_final_step():
    assert snapshot_steps(264, 4) == [66, 132, 198]
    assert snapshot_steps(10, 3) == [3, 7]
    assert snapshot_steps(10, 1) == []
    assert snapshot_steps(2, 8) == [1]  # more snapshots than steps: each step at most once, never the last


def _scores_artifact(path, arr, **meta):
    path.mkdir(parents=True)
    np.save(path / "scores.npy", arr)
    fields = {"blocks_fingerprint": "b", "tokenizer_fingerprint": "t", "mode": "differential",
              "granularity": "token", "alignment_mode": "next", "alignment": "next-token targets"}
    write_meta(path, "scores", **{**fields, **meta}, fingerprint=fingerprint_array(arr))
    return path


def _random_scores(rng, shape=(7, 9)):
    arr = rng.standard_t(2, size=shape).astype(np.float32) * 10 ** rng.uniform(-3, 3)
    arr[:, 0] = np.nan  # column 0 has no target
    return arr


def test_mean_equals_an_element_by_element_loop(tmp_path, monkeypatch):
    import ifguide.attribution.average as average_mod

    monkeypatch.setattr(average_mod, "ROWS_PER_CHUNK", 3)  # several chunks, the last one short
    rng = np.random.default_rng(0)
    arrays = [_random_scores(rng) for _ in range(3)]
    dirs = [_scores_artifact(tmp_path / f"s{i}", a) for i, a in enumerate(arrays)]
    out = average_scores(dirs, tmp_path / "mean")
    got = np.load(out / "scores.npy")
    for i in range(got.shape[0]):
        for j in range(got.shape[1]):
            values = [float(a[i, j]) for a in arrays]
            if j == 0:
                assert np.isnan(got[i, j])
            else:
                assert got[i, j] == pytest.approx(sum(values) / len(values), rel=1e-6, abs=1e-30)
    meta = read_meta(out, stage="scores")
    assert meta["fingerprint"] == fingerprint_array(got)
    assert [m["fingerprint"] for m in meta["averaged_over"]] == [read_meta(d)["fingerprint"] for d in dirs]
    assert meta["alignment"] == "next-token targets" and meta["mode"] == "differential"


def test_selection_reads_the_average_like_any_scores(tmp_path):
    from ifguide.selection.algorithm import select_toxic_tokens

    rng = np.random.default_rng(1)
    arrays = [_random_scores(rng, (40, 16)) for _ in range(2)]
    out = average_scores([_scores_artifact(tmp_path / f"s{i}", a) for i, a in enumerate(arrays)], tmp_path / "mean")
    direct = select_toxic_tokens((arrays[0].astype(np.float64) + arrays[1]) / 2, budget=0.05)
    via_artifact = select_toxic_tokens(out, budget=0.05)
    assert np.array_equal(np.asarray(direct.mask), np.asarray(via_artifact.mask))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"meta": {"blocks_fingerprint": "other"}}, "blocks_fingerprint"),
        ({"meta": {"mode": "toxic-only"}}, "mode"),
        ({"meta": {"alignment_mode": "same"}}, "alignment_mode"),
        ({"nan": (2, 3)}, "scored positions differ"),
        ({"shape": (6, 9)}, "shape"),
    ],
)
def test_inputs_that_do_not_describe_the_same_thing_are_refused(tmp_path, change, message):
    rng = np.random.default_rng(2)
    first = _scores_artifact(tmp_path / "a", _random_scores(rng))
    other = _random_scores(rng, change.get("shape", (7, 9)))
    if "nan" in change:
        other[change["nan"]] = np.nan
    second = _scores_artifact(tmp_path / "b", other, **change.get("meta", {}))
    with pytest.raises(InputError, match=message):
        average_scores([first, second], tmp_path / "mean")
    assert not (tmp_path / "mean").exists()  # nothing half-written is left behind


def test_one_input_is_not_an_average(tmp_path):
    one = _scores_artifact(tmp_path / "a", _random_scores(np.random.default_rng(3)))
    with pytest.raises(InputError, match="at least two"):
        average_scores([one], tmp_path / "mean")


def test_cli_average_scores(tmp_path):
    from ifguide.cli import main

    rng = np.random.default_rng(4)
    arrays = [_random_scores(rng) for _ in range(2)]
    dirs = [str(_scores_artifact(tmp_path / f"s{i}", a)) for i, a in enumerate(arrays)]
    assert main(["average-scores", "--scores", *dirs, "--out", str(tmp_path / "mean")]) == 0
    got = np.load(tmp_path / "mean" / "scores.npy")
    np.testing.assert_allclose(got[:, 1:], (arrays[0][:, 1:].astype(np.float64) + arrays[1][:, 1:]) / 2, rtol=1e-6)
    assert main(["average-scores", "--scores", dirs[0], "--out", str(tmp_path / "one")]) == 2


def test_snapshots_are_the_weights_after_that_many_steps(tmp_path, model_dir, blocks_dir):
    """A snapshot at step k of an n-step run equals the final model of a k-step run with the same
    (constant) learning rate and data order: an independent reference for what the callback saved."""
    from ifguide.models import fingerprint_model, load_model
    from ifguide.training.train import TrainConfig, list_snapshots, train

    common = dict(lr=1e-3, batch_size=4, scheduler="constant", warmup_ratio=0.0, logging_steps=1, seed=0)
    out = train(model_dir, blocks_dir, tmp_path / "long", config=TrainConfig(max_steps=6, snapshots=3, **common))
    assert list_snapshots(out) == ["snapshots/step-2", "snapshots/step-4"]
    assert read_meta(out, stage="model")["snapshots"] == list_snapshots(out)
    short = train(model_dir, blocks_dir, tmp_path / "short", config=TrainConfig(max_steps=2, **common))
    snap = out / "snapshots" / "step-2"
    meta = read_meta(snap, stage="model")
    assert meta["snapshot_step"] == 2 and meta["total_steps"] == 6
    assert meta["fingerprint"] == fingerprint_model(load_model(str(snap))) == read_meta(short)["fingerprint"]
    assert meta["fingerprint"] != read_meta(out)["fingerprint"]
    assert not list_snapshots(short) and "snapshots" not in read_meta(short)["args"]
