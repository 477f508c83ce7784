"""Which penalty is safer: the paper's −λ·CE or the bounded unlikelihood −λ·log(1−p)?

Trains a base model on a small demo world, then continues it with the ground-truth planted
tokens penalised, for each penalty and several λ / learning rates, with the run-away guard off.
Prints, per setting: the penalised targets' final cross-entropy, the held-out perplexity relative
to continuing without a mask (the baseline measured in the same run), and whether the loss stayed
finite. Usage: ``python bench/penalty.py [--steps 150] [--out /tmp/ifguide-penalty]``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np


def heldout_ppl(model_dir: str, blocks) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.from_numpy(np.asarray(blocks.input_ids[:64], dtype=np.int64))
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    return math.exp(loss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps per setting")
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ifguide.artifacts import artifact_dir, fingerprint_array, write_meta
    from ifguide.data.blocks import Blocks
    from ifguide.data.demo_world import write_demo_world
    from ifguide.data.prepare import prepare_blocks
    from ifguide.data.tokenizer import train_tokenizer
    from ifguide.errors import TrainingDiverged
    from ifguide.models import init_model
    from ifguide.training.train import TrainConfig, train

    root = Path(args.out or tempfile.mkdtemp(prefix="ifguide-penalty-"))
    world = write_demo_world(root / "world", n_docs=800, n_eval_prompts=4, n_queries=4, n_prefs=0)
    train_tokenizer([world.corpus], 1024, root / "tok")
    prepare_blocks([world.corpus], root / "tok", 128, root / "blocks")
    prepare_blocks([world.heldout], root / "tok", 128, root / "heldout")
    blocks, heldout = Blocks.open(root / "blocks"), Blocks.open(root / "heldout")
    mask = np.asarray(blocks.toxic_labels).copy()
    with artifact_dir(root / "mask") as tmp:
        np.save(tmp / "mask.npy", mask)
        write_meta(tmp, "mask", kind="ground-truth", blocks_fingerprint=blocks.fingerprint, fingerprint=fingerprint_array(mask))
    init_model("gpt-neox", "tiny", root / "tok", root / "init")
    base = train(root / "init", root / "blocks", root / "base", config=TrainConfig(max_steps=args.base_steps, lr=3e-3, batch_size=16))

    rows = []
    settings = [("none", 0.0, 1e-3)] + [
        (p, lam, lr) for p in ("neg_ce", "neg_ce_clip8", "unlikelihood") for lam in (1.0, 5.0) for lr in (1e-3, 1e-2)
    ]
    for penalty, lam, lr in settings:
        name = f"{penalty}-lam{lam:g}-lr{lr:g}"
        cfg = TrainConfig(max_steps=args.steps, lr=lr, batch_size=16, lam=lam, warmup_ratio=0.0,
                          penalty="unlikelihood" if penalty == "unlikelihood" else "neg_ce",
                          ce_clip=8.0 if penalty == "neg_ce_clip8" else None, max_toxic_ce=None, logging_steps=10)
        try:
            out = train(base, root / "blocks", root / name, mask=None if penalty == "none" else root / "mask", config=cfg)
        except TrainingDiverged as e:
            rows.append({"setting": name, "finite": False, "note": str(e)[:60]})
            continue
        log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        rows.append({"setting": name, "finite": True, "toxic_ce": log[-1].get("toxic_ce"), "ppl": heldout_ppl(str(out), heldout),
                     "max_toxic_ce": max((r["toxic_ce"] or 0) for r in log)})
    ref = next(r["ppl"] for r in rows if r["setting"].startswith("none"))
    print(f"\n{'setting':28s} {'finite':>6s} {'toxic CE':>9s} {'max toxic CE':>12s} {'held-out PPL':>12s} {'PPL ratio':>9s}")
    for r in rows:
        if not r["finite"]:
            print(f"{r['setting']:28s} {'no':>6s}  {r['note']}")
            continue
        tce = "-" if r["toxic_ce"] is None else f"{r['toxic_ce']:.1f}"
        print(f"{r['setting']:28s} {'yes':>6s} {tce:>9s} {r['max_toxic_ce']:12.1f} {r['ppl']:12.2f} {r['ppl'] / ref:9.3f}")
    print("\nPPL ratio: held-out perplexity relative to continuing training without a mask (same steps, same data order).")


if __name__ == "__main__":
    main()
