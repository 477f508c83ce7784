"""Throughput and memory of ``prepare`` and ``train`` on this machine, for docs/scaling.md.

Measures, on real text (a path argument; e.g. WikiText-2 raw from /work/shared/data):

1. ``prepare``: tokens/s of streaming tokenisation into blocks (8k-vocab byte-level BPE).
2. ``train``: training tokens/s and peak RSS for the ``tiny`` and ``small`` presets at block
   size 512 (a short run, in a child process each so the peak RSS is that run's alone),
   plain causal-LM loss and the IF-Guide objective with a mask (the loss is the same cost).
3. Optionally (``--ddp``) the ``tiny`` run under ``torchrun --nproc_per_node 2`` (gloo).

Each row also shows the hours one process would need for 1 B tokens at the measured rate
(an extrapolation: linear in tokens, ignoring data loading and checkpointing). The baseline
of the ratio column (tokens per CPU-second) is the plain ``tiny`` run of the same invocation.

    python bench/scale.py --data /work/shared/data/benign_prose/wikitext-2-raw
    python bench/scale.py --data ... --quick      # fewer steps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK_SIZE = 512
BATCH = 8
BILLION = 1e9


def measure_prepare(data: list[str], work: Path) -> dict:
    from ifguide.data.blocks import Blocks
    from ifguide.data.prepare import prepare_blocks
    from ifguide.data.tokenizer import train_tokenizer

    train_tokenizer(data, vocab_size=8192, out=work / "tok")
    t0, c0 = time.perf_counter(), time.process_time()
    prepare_blocks(data, work / "tok", BLOCK_SIZE, work / "blocks")
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    blocks = Blocks.open(work / "blocks")
    n_tokens = blocks.shape[0] * blocks.shape[1]
    return {"what": "prepare (tokenise + write blocks)", "tokens": n_tokens, "seconds": seconds,
            "tokens_per_s": n_tokens / seconds, "tokens_per_cpu_s": n_tokens / cpu_seconds, "peak_rss_gb": None}


def write_mask(work: Path) -> Path:
    """A mask of 2 % of the targets (random: the cost does not depend on which tokens)."""
    from ifguide.artifacts import artifact_dir, fingerprint_array, write_meta
    from ifguide.data.blocks import Blocks

    blocks = Blocks.open(work / "blocks")
    mask = np.random.default_rng(0).random(blocks.shape) < 0.02
    mask[:, 0] = False
    with artifact_dir(work / "mask") as tmp:
        np.save(tmp / "mask.npy", mask)
        write_meta(tmp, "mask", blocks_fingerprint=blocks.fingerprint, fingerprint=fingerprint_array(mask))
    return work / "mask"


def train_worker(args: argparse.Namespace) -> None:
    """Child process: one short training run; prints a JSON line with its peak RSS."""
    from ifguide.artifacts import read_meta
    from ifguide.training.train import TrainConfig, train

    config = TrainConfig(max_steps=args.steps, batch_size=BATCH, logging_steps=args.steps, warmup_ratio=0.0)
    c0 = time.process_time()  # CPU time of all threads: robust to other jobs sharing the machine
    out = train(args.model, args.blocks, args.out, mask=args.mask, config=config)
    cpu_seconds = time.process_time() - c0
    meta = read_meta(out, stage="model")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    tokens = args.steps * BATCH * BLOCK_SIZE
    print(json.dumps({"tokens_per_s": meta["tokens_per_second"], "parameters": meta["parameters"],
                      "seconds": meta["seconds"], "tokens_per_cpu_s": tokens / cpu_seconds, "peak_rss_gb": rss_gb}))


def run_child(cmd: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc


def measure_train(work: Path, preset: str, steps: int, mask: Path | None) -> dict:
    from ifguide.models import init_model

    model = work / f"model-{preset}"
    if not model.exists():
        init_model("gpt-neox", preset, work / "tok", model, seed=0)
    out = work / f"trained-{preset}-{'mask' if mask else 'plain'}"
    cmd = [sys.executable, __file__, "--worker", "--model", str(model), "--blocks", str(work / "blocks"),
           "--out", str(out), "--steps", str(steps)] + (["--mask", str(mask)] if mask else [])
    result = json.loads(run_child(cmd).stdout.strip().splitlines()[-1])
    label = f"train {preset} ({result['parameters'] / 1e6:.1f} M params), {'IF-Guide mask' if mask else 'plain CE'}"
    return {"what": label, "tokens": steps * BATCH * BLOCK_SIZE, **result}


def measure_ddp(work: Path, steps: int, ranks: int = 2) -> dict:
    """The tiny preset under torchrun: per-rank batch BATCH / ranks, so the global batch is unchanged."""
    out = work / "trained-tiny-ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           "-m", "ifguide.cli", "train", "--model", str(work / "model-tiny"), "--blocks", str(work / "blocks"),
           "--out", str(out), "--max-steps", str(steps), "--batch-size", str(BATCH // ranks),
           "--logging-steps", str(steps), "--warmup-ratio", "0"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_child(cmd)
    meta = json.loads((out / "meta.json").read_text())
    return {"what": f"train tiny, torchrun {ranks} ranks x batch {BATCH // ranks} (gloo, OMP_NUM_THREADS=1)",
            "tokens": steps * BATCH * BLOCK_SIZE, "tokens_per_s": meta["tokens_per_second"],
            "seconds": meta["seconds"], "tokens_per_cpu_s": None, "peak_rss_gb": None}


def print_table(rows: list[dict], baseline: float) -> None:
    """Wall-clock rates depend on what else runs on the machine; tokens per CPU-second much less so.
    The last column extrapolates (linearly) to 1 B tokens on all cores of this machine, uncontended."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    print(f"\n{'measurement':<66} {'tokens':>8} {'tok/s':>7} {'tok/CPU-s':>9} {'x tiny':>6} {'peak RSS':>8} "
          f"{f'h/1B tok on {cores} cores*':>20}")
    for r in rows:
        rss = f"{r['peak_rss_gb']:.2f} GB" if r.get("peak_rss_gb") else "-"
        per_cpu = r.get("tokens_per_cpu_s")
        hours = f"{BILLION / (per_cpu * cores) / 3600:.1f}" if per_cpu else "-"
        per_cpu_text = f"{per_cpu:.0f}" if per_cpu else "-"
        ratio = f"{per_cpu / baseline:.2f}" if per_cpu else "-"
        print(f"{r['what']:<66} {r['tokens']:>8} {r['tokens_per_s']:>7.0f} {per_cpu_text:>9} "
              f"{ratio:>6} {rss:>8} {hours:>20}")
    print(f"* extrapolation: 1e9 / (tokens per CPU-second x {cores} cores), assuming perfect use of the cores; "
          f"no GPU here. Load average during the run: {load:.1f} on {cores} cores.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", help="text files or directories (e.g. WikiText-2 raw)")
    p.add_argument("--quick", action="store_true", help="fewer training steps")
    p.add_argument("--ddp", action="store_true", help="also run the tiny preset under torchrun with 2 ranks")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--blocks", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--mask", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return train_worker(args)
    if not args.data:
        p.error("--data is required")
    steps = {"tiny": 4 if args.quick else 10, "small": 2 if args.quick else 4}
    with tempfile.TemporaryDirectory(prefix="ifguide-scale-") as tmp:
        work = Path(tmp)
        rows = [measure_prepare(args.data, work)]
        mask = write_mask(work)
        rows.append(measure_train(work, "tiny", steps["tiny"], None))
        rows.append(measure_train(work, "tiny", steps["tiny"], mask))
        if args.ddp:
            rows.append(measure_ddp(work, steps["tiny"]))
        rows.append(measure_train(work, "small", steps["small"], None))
        rows.append(measure_train(work, "small", steps["small"], mask))
        print_table(rows, baseline=rows[1]["tokens_per_cpu_s"])


if __name__ == "__main__":
    main()
