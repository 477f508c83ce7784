"""Data-parallel ``ifguide train`` under ``torchrun`` on CPU (gloo), with the IF-Guide mask.

Why the comparison is exact: with ``K`` ranks ``Trainer`` (through ``accelerate``) draws one
seeded permutation of the blocks and deals consecutive per-device batches round-robin, so at
step ``s`` rank ``r`` gets ``perm[(K·s + r)·b : (K·s + r + 1)·b]``. The union over ranks is
``perm[K·s·b : K·(s+1)·b]``, which is exactly the batch of one process with batch ``K·b`` and the
same seed. The loss of each rank is its sum over targets divided by the *global* target count
(``num_items_in_batch``), times ``K`` because DDP averages gradients; so the gradient, the
logged loss and every AdamW step agree with the one-process run up to float summation order.
The comparison stays inside the first epoch: at the epoch's end DDP pads the last batch with
blocks from the start (``even_batches``) while one process takes a short batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ifguide.artifacts import artifact_dir, fingerprint_array, read_meta, write_meta
from ifguide.data.blocks import Blocks
from ifguide.training.train import TrainConfig, train

RANKS = 2
PER_RANK_BATCH = 4
STEPS = 8  # 8 steps x 8 blocks stays inside the first epoch of the 121 conftest blocks
LR = 3e-3
TORCHRUN_TIMEOUT_S = 240  # generous for a loaded 2-core machine; a hang fails instead of blocking


def save_mask(mask: np.ndarray, blocks: Blocks, out: Path) -> str:
    with artifact_dir(out) as tmp:
        np.save(tmp / "mask.npy", mask)
        write_meta(tmp, "mask", blocks_fingerprint=blocks.fingerprint, fingerprint=fingerprint_array(mask))
    return str(out)


def torchrun_train(*train_args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m ifguide.cli train ...``, killed as a group if it outlives the timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(RANKS),
           "--standalone", "-m", "ifguide.cli", "train", *train_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TORCHRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish within {TORCHRUN_TIMEOUT_S} s (hang?)\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def read_log(model_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toxic_mask_dir(tmp_path_factory, blocks_dir) -> str:
    """The IF-Guide objective's input: the planted toxic tokens of the conftest corpus as targets."""
    blocks = Blocks.open(blocks_dir)
    mask = np.asarray(blocks.toxic_labels).copy()
    mask[:, 0] = False
    assert mask[: STEPS * RANKS * PER_RANK_BATCH].any()
    return save_mask(mask, blocks, tmp_path_factory.mktemp("mask") / "mask")


def test_two_ranks_match_one_process_with_global_batch(tmp_path, model_dir, blocks_dir, toxic_mask_dir):
    common = dict(max_steps=STEPS, lr=LR, logging_steps=1, seed=0, warmup_ratio=0.1)
    reference = train(model_dir, blocks_dir, tmp_path / "one", mask=toxic_mask_dir,
                      config=TrainConfig(batch_size=RANKS * PER_RANK_BATCH, **common))
    # A stale work directory from an interrupted run: exactly one rank must replace it.
    stale = tmp_path / "ddp.partial"
    stale.mkdir()
    (stale / "run_key.json").write_text(json.dumps({"key": "stale"}))

    proc = torchrun_train(
        "--model", model_dir, "--blocks", blocks_dir, "--mask", toxic_mask_dir, "--out", "ddp",
        "--batch-size", str(PER_RANK_BATCH), "--max-steps", str(STEPS), "--lr", str(LR),
        "--logging-steps", "1", "--seed", "0", "--warmup-ratio", "0.1", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = tmp_path / "ddp"
    assert not stale.exists()

    one_log, ddp_log = read_log(reference), read_log(ddp)
    assert [r["step"] for r in ddp_log] == [r["step"] for r in one_log] == list(range(1, STEPS + 1))
    assert sum(r["n_toxic_targets"] for r in one_log) > 0
    for one, two in zip(one_log, ddp_log):
        # Same global batch: the same targets are masked, and the benign/toxic CEs are global, not rank 0's.
        assert two["n_toxic_targets"] == one["n_toxic_targets"]
        assert two["learning_rate"] == pytest.approx(one["learning_rate"], rel=1e-9, abs=1e-12)
        for key in ("loss", "grad_norm", "benign_ce", "toxic_ce"):
            if one[key] is None:
                assert two[key] is None
            else:
                # grad_norm is taken after the all-reduce: a wrong loss normalisation shows up as a factor K here.
                assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), (one["step"], key)

    one_meta, ddp_meta = read_meta(reference, stage="model"), read_meta(ddp, stage="model")
    assert ddp_meta["steps"] == one_meta["steps"] == STEPS
    assert ddp_meta["mask"]["n_masked"] == one_meta["mask"]["n_masked"]
    from transformers import AutoModelForCausalLM

    one_weights = AutoModelForCausalLM.from_pretrained(reference).state_dict()
    ddp_weights = AutoModelForCausalLM.from_pretrained(ddp).state_dict()
    assert one_weights.keys() == ddp_weights.keys()
    for name, w in one_weights.items():
        torch.testing.assert_close(ddp_weights[name], w, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_failure_in_one_rank_fails_the_launch_without_hanging(tmp_path, model_dir, blocks_dir):
    """One masked target in one block: only the rank whose batch holds it trips the guard; the
    other rank is waiting in the gradient all-reduce and must be torn down, not left hanging."""
    blocks = Blocks.open(blocks_dir)
    mask = np.zeros(blocks.shape, dtype=bool)
    mask[blocks.shape[0] // 2, 5] = True
    mask_dir = save_mask(mask, blocks, tmp_path / "one_target_mask")

    proc = torchrun_train(
        "--model", model_dir, "--blocks", blocks_dir, "--mask", mask_dir, "--out", "broken",
        "--batch-size", str(PER_RANK_BATCH), "--epochs", "1", "--max-toxic-ce", "1e-6", cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert proc.stderr.count("ifguide train: training stopped: toxic-target cross-entropy") == 1
    assert not (tmp_path / "broken").exists()
