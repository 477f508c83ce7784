"""Training with a toxic-token mask on a tiny real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ifguide.artifacts import artifact_dir, fingerprint_array, read_meta, write_meta
from ifguide.cli import main
from ifguide.data.blocks import Blocks
from ifguide.errors import TrainingDiverged
from ifguide.training.train import TrainConfig, train


def save_mask(mask: np.ndarray, blocks: Blocks, out) -> str:
    with artifact_dir(out) as tmp:
        np.save(tmp / "mask.npy", mask)
        write_meta(tmp, "mask", blocks_fingerprint=blocks.fingerprint, fingerprint=fingerprint_array(mask))
    return str(out)


def mean_nll(model_dir, blocks: Blocks, mask: np.ndarray) -> tuple[float, float]:
    """Mean NLL of masked targets and of the other targets, computed directly."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.from_numpy(np.asarray(blocks.input_ids, dtype=np.int64))
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0].numpy()
    m = mask[:, 1:]
    return float(nll[m].mean()), float(nll[~m].mean())


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory, model_dir, blocks_dir):
    out = tmp_path_factory.mktemp("base") / "base"
    train(model_dir, blocks_dir, out, config=TrainConfig(max_steps=150, lr=3e-3, batch_size=8, seed=0))
    return str(out)


def test_mask_raises_masked_nll_and_lowers_benign_nll(tmp_path, trained_base, blocks_dir):
    blocks = Blocks.open(blocks_dir)
    mask = np.asarray(blocks.toxic_labels).copy()
    mask[:, 0] = False
    assert mask.sum() > 50
    mask_dir = save_mask(mask, blocks, tmp_path / "mask")
    before_toxic, before_benign = mean_nll(trained_base, blocks, mask)
    out = train(trained_base, blocks_dir, tmp_path / "guided", mask=mask_dir,
                config=TrainConfig(max_steps=200, lr=1e-3, batch_size=8, seed=0))
    after_toxic, after_benign = mean_nll(out, blocks, mask)
    assert after_toxic > before_toxic + 1.0
    assert after_benign < before_benign
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["toxic_ce"] is not None and r["benign_ce"] is not None for r in log)
    assert (out / "loss_curve.png").stat().st_size > 1000
    meta = read_meta(out, stage="model")
    assert meta["mask"]["fingerprint_checked"] and meta["blocks_fingerprint"] == blocks.fingerprint


def test_deterministic_with_seed(tmp_path, model_dir, blocks_dir):
    cfg = TrainConfig(max_steps=15, batch_size=4, seed=3)
    a = read_meta(train(model_dir, blocks_dir, tmp_path / "a", config=cfg))
    b = read_meta(train(model_dir, blocks_dir, tmp_path / "b", config=cfg))
    c = read_meta(train(model_dir, blocks_dir, tmp_path / "c", config=TrainConfig(max_steps=15, batch_size=4, seed=4)))
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]


def test_guard_stops_runaway_penalty(tmp_path, trained_base, blocks_dir):
    blocks = Blocks.open(blocks_dir)
    mask = np.asarray(blocks.toxic_labels).copy()
    mask_dir = save_mask(mask, blocks, tmp_path / "mask")
    cfg = TrainConfig(max_steps=300, lr=5e-2, lam=20.0, batch_size=8, max_toxic_ce=15.0, warmup_ratio=0.0)
    with pytest.raises(TrainingDiverged, match="max-toxic-ce"):
        train(trained_base, blocks_dir, tmp_path / "broken", mask=mask_dir, config=cfg)
    assert not (tmp_path / "broken").exists()


def test_resume_continues_an_interrupted_run(tmp_path, model_dir, blocks_dir):
    """A run with checkpoints that is cut short and re-run ends where an uninterrupted one does."""
    cfg = TrainConfig(max_steps=12, batch_size=4, seed=1, save_steps=6, warmup_ratio=0.0)
    full = read_meta(train(model_dir, blocks_dir, tmp_path / "full", config=cfg))

    class Stop(Exception):
        pass

    from transformers import TrainerCallback

    from ifguide.training import trainer as trainer_mod

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            raise Stop

    original = trainer_mod.SuppressionTrainer.__init__

    def patched(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(KillAfterCheckpoint())

    trainer_mod.SuppressionTrainer.__init__ = patched
    try:
        with pytest.raises(Stop):
            train(model_dir, blocks_dir, tmp_path / "cut", config=cfg)
    finally:
        trainer_mod.SuppressionTrainer.__init__ = original
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.partial").is_dir()
    resumed = read_meta(train(model_dir, blocks_dir, tmp_path / "cut", config=cfg))
    assert resumed["fingerprint"] == full["fingerprint"]
    assert not (tmp_path / "cut.partial").exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        ("wrong_shape", "shape"),
        ("other_blocks", "fingerprint"),
        ("negative_lam", "λ"),
        ("missing_mask", "no such file"),
    ],
)
def test_bad_training_inputs_exit_2_without_output(tmp_path, capsys, model_dir, blocks_dir, bad, message):
    blocks = Blocks.open(blocks_dir)
    args = ["train", "--model", model_dir, "--blocks", blocks_dir, "--out", str(tmp_path / "out"), "--max-steps", "2"]
    if bad == "wrong_shape":
        args += ["--mask", save_mask(np.zeros((3, 5), bool), blocks, tmp_path / "m")]
    elif bad == "other_blocks":
        mask_dir = save_mask(np.zeros(blocks.shape, bool), blocks, tmp_path / "m")
        meta = json.loads((Path(mask_dir) / "meta.json").read_text())
        meta["blocks_fingerprint"] = "0" * 64
        (Path(mask_dir) / "meta.json").write_text(json.dumps(meta))
        args += ["--mask", mask_dir]
    elif bad == "negative_lam":
        args += ["--lam", "-1"]
    else:
        args += ["--mask", str(tmp_path / "nope")]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
