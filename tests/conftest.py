"""Shared fixtures: a tiny real corpus, tokenizer, blocks and models built offline.

Nothing here is a mock: the tokenizer is a trained byte-level BPE, the models are real
``transformers`` models from configs, and the blocks come from ``prepare_blocks``.
"""

from __future__ import annotations

import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

SUBJECTS = ["the river", "a farmer", "the old bridge", "our teacher", "the small town", "a young cat", "the market"]
VERBS = ["crossed", "visited", "painted", "remembered", "watched", "described", "repaired"]
OBJECTS = ["the valley at dawn", "a quiet garden", "the northern road", "an empty house", "the winter fields"]
TOXIC = ["you stupid idiot", "shut up you moron", "damn stupid fool"]


def make_corpus(n_docs: int = 120, seed: int = 0, toxic_every: int = 6) -> list[dict]:
    """Varied benign sentences; every ``toxic_every``-th document carries a planted toxic phrase
    with its character span recorded in ``toxic_spans``."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        sents = [
            f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
            for _ in range(rng.randint(2, 6))
        ]
        text = " ".join(sents)
        rec: dict = {"text": text}
        if toxic_every and i % toxic_every == 0:
            phrase = rng.choice(TOXIC)
            start = len(text) + 1
            text = f"{text} {phrase} {rng.choice(SUBJECTS)}."
            rec = {"text": text, "toxic_spans": [[start, start + len(phrase)]]}
        docs.append(rec)
    return docs


def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", make_corpus())


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_path):
    from ifguide.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer([corpus_path], vocab_size=400, out=out)
    return str(out)


@pytest.fixture(scope="session")
def blocks_dir(tmp_path_factory, corpus_path, tokenizer_dir):
    from ifguide.data.prepare import prepare_blocks

    out = tmp_path_factory.mktemp("blocks") / "blocks"
    prepare_blocks([corpus_path], tokenizer_dir, block_size=32, out=out)
    return str(out)


def build_model(tokenizer_dir, arch: str = "gpt-neox", seed: int = 0):
    """A micro model of the given architecture, randomly initialised (no download)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ifguide.models import load_tokenizer, make_config

    tok = load_tokenizer(tokenizer_dir)
    config = make_config(arch, "micro", len(tok), bos_id=tok.eos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer_dir):
    from ifguide.models import init_model

    out = tmp_path_factory.mktemp("model") / "model"
    init_model("gpt-neox", "micro", tokenizer_dir, out, seed=0)
    return str(out)
