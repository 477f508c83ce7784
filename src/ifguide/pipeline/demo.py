"""``ifguide demo``: the whole pipeline on the built-in demo world, on CPU, with no download.

The demo world (:mod:`ifguide.data.demo_world`) plants profane insults, recognised by the
default scorer, after some dialogue contexts of an otherwise benign corpus, and records where
(``toxic_spans``). So besides toxicity and perplexity the demo can report how precisely the
influence scores found the planted tokens, for IF-Guide and for its ablations.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ifguide.pipeline.config import PipelineConfig, config_from_dict

logger = logging.getLogger("ifguide.pipeline")

# Sized so that `ifguide demo` finishes in well under 10 minutes on 2 CPU cores.
# 128 queries: with 32, one query's incidental words ("Get out of my water mill") became "toxic" in
# the scores; the query gradient is one aggregated pass, so more queries cost little.
DEMO_WORLD = {"n_docs": 3000, "toxic_token_rate": 0.015, "n_eval_prompts": 40, "n_queries": 128}


def demo_config(world, out: str | os.PathLike, *, quick: bool = False) -> PipelineConfig:
    """The pipeline configuration of the demo for a written world."""
    return config_from_dict({
        "out": str(out),
        "setting": "pretrain",
        "seed": 0,
        "methods": ["base", "ifguide", "random"],
        "data": {"corpus": [str(world.corpus)], "heldout": str(world.heldout), "block_size": 128},
        "tokenizer": {"vocab_size": 2048},
        "model": {"arch": "gpt-neox", "preset": "tiny"},
        # ~200+ optimizer steps are needed before the tiny model learns the trigger contexts
        "train": {"epochs": 4.0 if quick else 2.0, "lr": 3e-3, "batch_size": 16, "logging_steps": 10},
        "attribution": {"queries_toxic": str(world.queries_toxic), "queries_safe": str(world.queries_safe),
                        "strategy": "ekfac", "max_blocks": 512, "batch_size": 16,
                        # two epochs over a templated corpus: the final model has memorised the insults
                        # (small gradients), so scores are averaged with those of the mid-training
                        # checkpoint (2 was the most reliable over 7 query draws; see the README)
                        "checkpoints": 2,
                        # the paper's differential also credits tokens that merely compete with a safe
                        # continuation (` path` of "The path to …" vs "The soup is burning"); min(toxic-only,
                        # differential) does not, and was ahead of both on worlds 1-4 (README)
                        "score": "conservative", "ablations": ["differential", "toxic-only", "document"]},
        # The paper's −λ·CE, bounded at 8 nats: unbounded, it runs away on this small world (the
        # toxic-target CE passed 50 and insults spread to unrelated contexts); see bench/penalty.py.
        "selection": {"threshold": 0.99, "window": 1, "budget": 0.02, "lam": 1.0, "ce_clip": 8.0},
        "evaluation": {"prompts": str(world.eval_prompts), "samples": 25, "max_new_tokens": 20, "top_p": 0.9,
                       "seeds": [1, 2] if quick else [1, 2, 3], "batch_size": 250},
        "dpo": {"pairs": str(world.prefs)},
    })


def run_demo(out: str | os.PathLike = "ifguide-demo", *, seed: int = 0, quick: bool = False, force: bool = False) -> dict:
    """Write the demo world under ``OUT/world`` (once) and run the pipeline in ``OUT``."""
    from ifguide.data.demo_world import GENERATOR_VERSION, DemoWorld, write_demo_world
    from ifguide.pipeline.run import run_pipeline

    out = Path(out)
    world_dir = out / "world"
    params = {**DEMO_WORLD, "seed": seed}
    if quick:
        params.update(n_docs=1200, n_eval_prompts=20)
    world = None
    if (world_dir / "world.json").is_file():
        world = DemoWorld.open(world_dir)
        stale = world.stats.get("generator_version") != GENERATOR_VERSION
        if stale or any(world.stats.get("config", {}).get(k) != v for k, v in params.items()):
            world = None
    if world is None:
        world = write_demo_world(world_dir, **params)
    return run_pipeline(demo_config(world, out, quick=quick), out, force=force)
