"""Benchmark: training-step time of the IF-Guide loss vs the stock ``transformers`` causal-LM loss.

One step = forward + backward + AdamW update on the same model and the same batch. The stock
step computes ``model(input_ids, labels=labels).loss``; the IF-Guide step computes the logits
and ``ifguide.training.objective.suppression_loss(logits, labels, toxic_mask)`` with a random
2 % toxic mask. The two kinds of step alternate (AB, BA, AB, ...) after warm-up, and
the median of each is compared. Target: overhead <= 3 %.

Both wall time and process CPU time are reported. On a machine shared with other jobs the CPU
time of a single-threaded run (``--threads 1``, the default) is the robust measure: it does not
count time spent waiting for a core, and one thread has no spinning worker threads.

    python bench/objective.py            # tiny and small presets, blocks of 128 and 512, batch 8
    python bench/objective.py --quick    # tiny preset, block 128, few repetitions
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ifguide.models import make_config
from ifguide.training.objective import suppression_loss

VOCAB = 8192
MASK_SHARE = 0.02


def build(preset: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = make_config("gpt-neox", preset, VOCAB, bos_id=0, eos_id=0, pad_id=0)
    model = AutoModelForCausalLM.from_config(config)
    model.train()
    return model


def stock_step(model, opt, input_ids, labels, mask) -> float:
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def ifguide_step(model, opt, input_ids, labels, mask) -> float:
    logits = model(input_ids=input_ids).logits
    loss = suppression_loss(logits, labels, mask, lam=1.0)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def time_case(preset: str, block: int, batch: int, reps: int, warmup: int) -> dict:
    """Median seconds per step of each loss, interleaved on one model and one batch."""
    model = build(preset)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (batch, block), generator=g)
    mask = torch.rand((batch, block), generator=g) < MASK_SHARE
    steps = {"stock": stock_step, "ifguide": ifguide_step}
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for rep in range(warmup + reps):
        order = list(steps) if rep % 2 == 0 else list(reversed(steps))  # no fixed first/second position
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[name](model, opt, input_ids, input_ids, mask)
            if rep >= warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    med = {(kind, k): statistics.median(v) for kind, d in (("wall", wall), ("cpu", cpu)) for k, v in d.items()}
    return {
        "preset": preset,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "block": block,
        "batch": batch,
        "reps": reps,
        "masked": int(mask[:, 1:].sum()),
        "stock_ms": 1e3 * med["wall", "stock"],
        "ifguide_ms": 1e3 * med["wall", "ifguide"],
        "ratio": med["wall", "ifguide"] / med["wall", "stock"],
        "stock_cpu_ms": 1e3 * med["cpu", "stock"],
        "ifguide_cpu_ms": 1e3 * med["cpu", "ifguide"],
        "cpu_ratio": med["cpu", "ifguide"] / med["cpu", "stock"],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset, block 128, 10 repetitions")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per case (default: by case size)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: see the docstring)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [("tiny", 128)] if args.quick else [("tiny", 128), ("tiny", 512), ("small", 128), ("small", 512)]
    default_reps = {("tiny", 128): 60, ("tiny", 512): 30, ("small", 128): 30, ("small", 512): 15}
    rows = []
    for preset, block in cases:
        reps = args.reps or (10 if args.quick else default_reps[(preset, block)])
        rows.append(time_case(preset, block, args.batch, reps, args.warmup))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), gpt-neox, vocab {VOCAB}, "
          f"mask {MASK_SHARE:.0%}, median of interleaved steps (forward+backward+AdamW)")
    print("| preset | params (M) | block | batch | reps | stock wall (ms) | IF-Guide wall (ms) | wall ratio "
          "| stock CPU (ms) | IF-Guide CPU (ms) | CPU ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['params_M']:.2f} | {r['block']} | {r['batch']} | {r['reps']} | "
              f"{r['stock_ms']:.1f} | {r['ifguide_ms']:.1f} | {r['ratio']:.3f} | "
              f"{r['stock_cpu_ms']:.1f} | {r['ifguide_cpu_ms']:.1f} | {r['cpu_ratio']:.3f} |")
    worst = max(r["cpu_ratio"] for r in rows)
    print(f"\nworst overhead (CPU time): {100 * (worst - 1):+.1f} % (target <= +3 %)")


if __name__ == "__main__":
    main()
