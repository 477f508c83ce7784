"""Benchmark of toxic-token selection (``ifguide.selection``); prints a table.

1. Speed: the vectorised selection against the plain-loop reference on the same in-memory
   scores (default 4 M tokens), checking that both masks are identical. Target: >= 100x.
2. Scale: the vectorised selection on a float16 ``.npy`` of ``--big-tokens`` scores (default 1e9,
   [N, 2048]) generated on disk, run in a child process to measure its wall time and peak RSS.
   Targets: <= 10 min and <= 3 GB on a 2-core machine. The file is deleted afterwards.

    python bench/selection.py            # full run (needs ~3 GB of free disk for 1e9 tokens)
    python bench/selection.py --quick    # 1 M tokens vs reference, 5e7-token scale run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK = 2048


def synthetic_scores(rng: np.random.Generator, n_rows: int, dtype=np.float32) -> np.ndarray:
    """Heavy-ish tailed scores with planted high-scoring spans and NaN in column 0."""
    x = rng.standard_normal((n_rows, BLOCK), dtype=np.float32)
    spans = rng.integers(0, n_rows * BLOCK - 8, size=max(1, n_rows * BLOCK // 2000))
    for k in range(4):
        x.reshape(-1)[spans + k] += 4.0
    x[:, 0] = np.nan
    return x.astype(dtype)


def bench_speed(n_tokens: int, seed: int = 0) -> dict:
    from ifguide.selection import select_toxic_tokens

    scores = synthetic_scores(np.random.default_rng(seed), max(1, n_tokens // BLOCK))
    t0 = time.perf_counter()
    ref = select_toxic_tokens(scores, impl="reference")
    t_ref = time.perf_counter() - t0
    times = []
    for _ in range(7):  # ~10 ms each: the best of several is the machine's speed, not its noise
        t0 = time.perf_counter()
        vec = select_toxic_tokens(scores)
        times.append(time.perf_counter() - t0)
    t_vec = min(times)
    return {
        "tokens": scores.size,
        "reference_s": t_ref,
        "vectorised_s": t_vec,
        "ratio": t_ref / t_vec,
        "identical": bool(np.array_equal(ref.mask, vec.mask) and np.array_equal(ref.ranks, vec.ranks)),
        "selected": vec.n_selected,
    }


def write_big_scores(path: Path, n_tokens: int, seed: int = 0) -> tuple[int, int]:
    n_rows = max(1, n_tokens // BLOCK)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n_rows, BLOCK))
    rng = np.random.default_rng(seed)
    step = 8192
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        arr[start:stop] = synthetic_scores(rng, stop - start, np.float16)
    arr.flush()
    del arr
    return n_rows, BLOCK


# Peak RSS is VmHWM of the child (the high-water mark of its own address space since exec).
# getrusage's ru_maxrss is not used: Linux carries it over from before exec, so it reported the
# parent's 2 GB (the parent has just written the scores file through a memory map) as the child's.
_CHILD = """
import json, sys, time, resource
from ifguide.selection import select_toxic_tokens

def vm_hwm_gb():
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

t0 = time.perf_counter()
sel = select_toxic_tokens(sys.argv[1], out=sys.argv[2])
wall = time.perf_counter() - t0
print(json.dumps({"wall_s": wall, "selected": sel.n_selected, "tau": float(sel.tau), "peak_rss_gb": vm_hwm_gb(),
                  "ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def bench_scale(n_tokens: int, workdir: Path) -> dict:
    scores_path, mask_path = workdir / "scores.npy", workdir / "mask.npy"
    t0 = time.perf_counter()
    shape = write_big_scores(scores_path, n_tokens)
    t_gen = time.perf_counter() - t0
    try:
        env = {**os.environ, "TQDM_DISABLE": "1"}
        done = subprocess.run([sys.executable, "-c", _CHILD, str(scores_path), str(mask_path)],
                              check=True, capture_output=True, text=True, env=env)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        scores_path.unlink(missing_ok=True)
        mask_path.unlink(missing_ok=True)
    return {"tokens": shape[0] * shape[1], "generate_s": t_gen, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (1 M vs reference, 5e7 scale)")
    ap.add_argument("--speed-tokens", type=float, default=None, help="tokens for the reference comparison (default 4e6)")
    ap.add_argument("--big-tokens", type=float, default=None, help="tokens of the on-disk float16 run (default 1e9)")
    ap.add_argument("--workdir", default=None, help="where to write the big file (default: a temp dir)")
    args = ap.parse_args()
    speed_tokens = int(args.speed_tokens or (1e6 if args.quick else 4e6))
    big_tokens = int(args.big_tokens or (5e7 if args.quick else 1e9))

    speed = bench_speed(speed_tokens)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        scale = bench_scale(big_tokens, Path(tmp))

    print(f"\n{'benchmark':<44} {'value':>14}  target")
    print(f"{'tokens (reference comparison)':<44} {speed['tokens']:>14,}")
    print(f"{'reference (plain loops) s':<44} {speed['reference_s']:>14.3f}")
    print(f"{'vectorised s':<44} {speed['vectorised_s']:>14.4f}")
    print(f"{'speed ratio reference / vectorised':<44} {speed['ratio']:>13.0f}x  >= 100x")
    print(f"{'identical mask and ranks':<44} {str(speed['identical']):>14}  True")
    print(f"{'tokens (on-disk float16 run)':<44} {scale['tokens']:>14,}")
    print(f"{'  generating the file s':<44} {scale['generate_s']:>14.1f}")
    print(f"{'  selection wall s':<44} {scale['wall_s']:>14.1f}  <= 600")
    print(f"{'  selection peak RSS (VmHWM) GB':<44} {scale['peak_rss_gb']:>14.2f}  <= 3")
    print(f"{'  (getrusage ru_maxrss, includes the parent) GB':<44} {scale['ru_maxrss_gb']:>14.2f}")
    print(f"{'  tokens selected':<44} {scale['selected']:>14,}")


if __name__ == "__main__":
    main()
