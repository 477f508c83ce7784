"""Throughput of influence scoring against plain training, single-pass vs two-pass differential
scoring, and the cost of fitting EK-FAC factors.

For each size preset (tiny ~1.5 M, small ~10 M parameters), on the same randomly initialised
model, blocks and batch size, prints:

* ``train``: tokens/s of a plain training step (forward + backward + AdamW): the baseline;
* ``score (1 pass)``: training tokens scored per second by ``compute_scores`` in differential
  mode (toxic and safe queries in one signed measurement), as a ratio to ``train`` (target ≥ 0.8);
* ``score (2 passes)``: the same scores the naive way, one pass for the toxic queries and one for
  the safe queries; ``speed-up`` is 2-pass time / 1-pass time (target ≥ 1.8);
* ``fit-factors``: EK-FAC fitting, in µs per token and as a ratio of training's time per token.

    python bench/scoring.py --quick
    python bench/scoring.py --corpus /work/shared/data/SOME.jsonl  # real text instead of synthetic

Runs offline: the tokenizer is trained on the corpus and the models are built from presets.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ifguide.attribution import FactorConfig, ScoreConfig, compute_scores, fit_factors  # noqa: E402
from ifguide.data.blocks import Blocks  # noqa: E402
from ifguide.data.prepare import prepare_blocks  # noqa: E402
from ifguide.data.tokenizer import train_tokenizer  # noqa: E402
from ifguide.models import init_model, load_model  # noqa: E402

TOXIC = ["you stupid idiot", "shut up you moron", "damn stupid fool", "what a pathetic loser"]


def synthetic_corpus(path: Path, n_docs: int, seed: int = 0) -> None:
    """Documents of pseudo-words with a Zipf-like frequency, some with a planted toxic phrase."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ra", "te", "su", "ne", "vo", "di", "pa", "ge", "zu", "the", "an", "or"]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(4000)]
    weights = [1.0 / (k + 1) for k in range(len(lexicon))]
    with open(path, "w") as f:
        for i in range(n_docs):
            words = rng.choices(lexicon, weights, k=rng.randint(150, 400))
            if i % 5 == 0:
                words.insert(rng.randrange(len(words)), rng.choice(TOXIC))
            f.write(json.dumps({"text": " ".join(words) + "."}) + "\n")


def write_queries(path: Path, label: str, n: int, toxic: bool, seed: int = 1) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for k in range(n):
            cont = f" {TOXIC[k % len(TOXIC)]} said the man" if toxic else " said the man to the people there"
            f.write(json.dumps({"prompt": f"Query {rng.randint(0, 999)}:", "continuation": cont, "label": label}) + "\n")
    return str(path)


def training_throughput(model_dir: str, blocks: Blocks, batch_size: int, steps: int) -> float:
    """Tokens/s of forward + backward + AdamW on batches of blocks (after one warm-up step)."""
    model = load_model(model_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.as_tensor(np.asarray(blocks.input_ids, dtype=np.int64))
    elapsed = 0.0
    for step in range(steps + 1):
        x = ids[(step * batch_size) % len(ids) :][:batch_size]
        t0 = time.perf_counter()
        logits = model(input_ids=x).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step:  # the first step allocates optimizer state
            elapsed += time.perf_counter() - t0
    return steps * batch_size * ids.shape[1] / elapsed


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_preset(preset: str, work: Path, tok_dir: Path, corpus: str, args) -> dict:
    model_dir = work / f"model-{preset}"
    init_model("gpt-neox", preset, tok_dir, model_dir, seed=0)
    blocks_dir = work / "blocks"
    blocks = Blocks.open(blocks_dir)
    tokens = blocks.n_blocks * blocks.block_size
    train_tps = training_throughput(str(model_dir), blocks, args.batch_size, args.train_steps)

    factors = work / f"factors-{preset}"
    fit_s = timed(lambda: fit_factors(str(model_dir), blocks_dir, factors, FactorConfig(batch_size=args.batch_size)))

    toxic_q = write_queries(work / "toxic.jsonl", "toxic", args.queries, toxic=True)
    safe_q = write_queries(work / "safe.jsonl", "safe", args.queries, toxic=False)
    safe_as_toxic = write_queries(work / "safe_as_toxic.jsonl", "toxic", args.queries, toxic=False)
    both = work / "both.jsonl"
    both.write_text(Path(toxic_q).read_text() + Path(safe_q).read_text())
    cfg = ScoreConfig(batch_size=args.batch_size)
    one_s = timed(lambda: compute_scores(str(model_dir), blocks_dir, both, factors, work / f"s1-{preset}", cfg))
    only = ScoreConfig(mode="toxic-only", batch_size=args.batch_size)
    two_s = timed(lambda: compute_scores(str(model_dir), blocks_dir, toxic_q, factors, work / f"s2a-{preset}", only))
    two_s += timed(lambda: compute_scores(str(model_dir), blocks_dir, safe_as_toxic, factors, work / f"s2b-{preset}", only))
    params = sum(p.numel() for p in load_model(str(model_dir)).parameters())
    return {
        "preset": preset, "params": params, "tokens": tokens, "train_tps": train_tps,
        "score1_tps": tokens / one_s, "score2_tps": tokens / two_s, "speedup": two_s / one_s,
        "fit_us": fit_s / tokens * 1e6, "fit_ratio": (fit_s / tokens) * train_tps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter blocks and steps")
    p.add_argument("--presets", default="tiny,small")
    p.add_argument("--corpus", default=None, help="jsonl with a 'text' field (default: synthetic)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--queries", type=int, default=16, help="toxic and safe queries each")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    block_size, n_docs = (128, 20) if args.quick else (256, 240)
    args.train_steps = 5 if args.quick else 20

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = args.corpus or str(work / "corpus.jsonl")
        if args.corpus is None:
            synthetic_corpus(Path(corpus), n_docs)
        tok_dir = work / "tok"
        train_tokenizer([corpus], vocab_size=8000, out=tok_dir)
        prepare_blocks([corpus], tok_dir, block_size=block_size, out=work / "blocks")
        rows = [bench_preset(preset, work, tok_dir, corpus, args) for preset in args.presets.split(",")]

    print(f"\nblocks of {block_size} tokens, batch {args.batch_size}, {args.queries}+{args.queries} queries, "
          f"{torch.get_num_threads()} threads")
    header = (f"{'preset':7} {'params':>8} {'tokens':>7} {'train tok/s':>11} {'score 1-pass':>12} {'ratio':>6} "
              f"{'score 2-pass':>12} {'speed-up':>8} {'fit µs/tok':>10} {'fit/train':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['preset']:7} {r['params'] / 1e6:7.2f}M {r['tokens']:7d} {r['train_tps']:11.0f} {r['score1_tps']:12.0f} "
              f"{r['score1_tps'] / r['train_tps']:6.2f} {r['score2_tps']:12.0f} {r['speedup']:8.2f} "
              f"{r['fit_us']:10.1f} {r['fit_ratio']:9.2f}")
    print("targets: ratio (1-pass scoring / training) >= 0.8; speed-up (2-pass / 1-pass) >= 1.8")


if __name__ == "__main__":
    main()
