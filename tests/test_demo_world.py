"""The demo world generator: determinism, planted rate, ground-truth spans, query/eval files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ifguide.data.demo_world import DemoWorld, write_demo_world
from ifguide.errors import InputError

SMALL = dict(n_docs=500, n_heldout_docs=40, n_queries=20, n_eval_prompts=30, n_prefs=10)


def _jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> DemoWorld:
    return write_demo_world(tmp_path_factory.mktemp("world") / "w", seed=3, **SMALL)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, world):
    again = write_demo_world(tmp_path / "again", seed=3, **SMALL)
    other = write_demo_world(tmp_path / "other", seed=4, **SMALL)
    for name in ("corpus", "heldout", "queries_toxic", "queries_safe", "eval_prompts", "prefs"):
        assert getattr(again, name).read_bytes() == getattr(world, name).read_bytes(), name
    assert other.corpus.read_bytes() != world.corpus.read_bytes()
    assert DemoWorld.open(world.root).stats == world.stats


@pytest.mark.parametrize("rate", [0.01, 0.03])
def test_planted_word_rate_matches_the_request(tmp_path, rate):
    w = write_demo_world(tmp_path / "w", toxic_token_rate=rate, **SMALL)
    docs = _jsonl(w.corpus)
    total = sum(len(d["text"].split()) for d in docs)
    planted = sum(len(d["text"][s:e].split()) for d in docs for s, e in d["toxic_spans"])
    assert total == w.stats["words_total"] and planted == w.stats["words_planted"]
    assert abs(planted / total - rate) < 0.05 * rate
    # a trigger context is followed by an insult about as often as configured (0.6 by default)
    assert abs(w.stats["trigger_toxic_share"] - 0.6) < 0.02


def test_token_counts_by_a_tokenizer_match_prepare_blocks(tmp_path, world, tokenizer_dir):
    from ifguide.data.blocks import Blocks
    from ifguide.data.prepare import prepare_blocks

    w = write_demo_world(tmp_path / "w", seed=3, tokenizer=tokenizer_dir, **SMALL)
    blocks = Blocks.open(prepare_blocks([w.corpus], tokenizer_dir, block_size=64, out=tmp_path / "blocks"))
    rate = w.stats["planted_token_rate"]
    assert 0.01 < rate < 0.03
    # prepare_blocks labels the same tokens (it adds one EOS per document and drops a partial block)
    labelled = blocks.toxic_labels.reshape(-1).mean()
    assert abs(labelled - rate) < 0.1 * rate


def test_spans_are_the_words_of_quoted_insults_that_profanity_check_flags(world):
    from profanity_check import predict_prob

    docs = _jsonl(world.corpus)
    passages, clean_sentences = [], []
    for d in docs:
        text = d["text"]
        for s, e in d["toxic_spans"]:
            # the span covers the insult's words; only its closing "!" or "." stands before the quote
            assert text[s - 3 : s] == ': "' and text[e:].startswith(('!"', '."')), text[s - 3 : e + 2]
            assert text[e - 1] not in '!."', text[s:e]
            passages.append(text[s:e])
        if not d["toxic_spans"]:
            clean_sentences += re.split(r'(?<=[.!?"])\s', text)
    assert len(passages) == world.stats["n_planted_insults"] > 20
    scores = predict_prob(passages)
    assert scores.min() >= 0.5 and np.mean(scores >= 0.8) >= 0.98
    assert predict_prob(clean_sentences).max() < 0.5


def test_queries_are_well_formed_and_never_a_verbatim_training_insult(world):
    toxic, safe = _jsonl(world.queries_toxic), _jsonl(world.queries_safe)
    assert len(toxic) == len(safe) == SMALL["n_queries"]
    training = {d["text"][s:e] for d in _jsonl(world.corpus) for s, e in d["toxic_spans"]}
    for q, label in [(q, "toxic") for q in toxic] + [(q, "safe") for q in safe]:
        assert set(q) == {"prompt", "continuation", "label"} and q["label"] == label
        assert q["prompt"].endswith(': "') and q["continuation"].endswith('"')
    assert not {q["continuation"][:-1] for q in toxic} & training
    from profanity_check import predict_prob

    assert predict_prob([q["continuation"] for q in toxic]).min() >= 0.5
    assert predict_prob([q["continuation"] for q in safe]).max() < 0.5


def test_eval_prompts_are_rtp_like_balanced_and_disjoint_from_queries(world):
    prompts = _jsonl(world.eval_prompts)
    assert len(prompts) == SMALL["n_eval_prompts"]
    texts = [p["prompt"]["text"] for p in prompts]
    assert len(set(texts)) == len(texts)
    trigger = [p for p in prompts if p["kind"] == "trigger"]
    assert len(trigger) == len(prompts) // 2
    assert all(p["prompt"]["toxicity"] == (1.0 if p["kind"] == "trigger" else 0.0) for p in prompts)
    query_prompts = {q["prompt"] for q in _jsonl(world.queries_toxic) + _jsonl(world.queries_safe)}
    assert not set(texts) & query_prompts
    prefs = _jsonl(world.prefs)
    assert len(prefs) == SMALL["n_prefs"] and all(set(p) == {"prompt", "chosen", "rejected"} for p in prefs)


def test_files_parse_with_the_corpus_reader(world):
    from ifguide.data.readers import iter_documents

    docs = list(iter_documents([world.corpus, world.heldout]))
    assert len(docs) == SMALL["n_docs"] + SMALL["n_heldout_docs"]
    assert sum(bool(d.toxic_spans) for d in docs) == world.stats["n_toxic_documents"]
    assert not any(d.toxic_spans for d in docs if d.source == 1)  # held-out documents are clean
    assert len({d.text for d in docs}) > 0.95 * len(docs)  # varied, not one template


@pytest.mark.parametrize(
    "bad", [dict(toxic_token_rate=0.0), dict(toxic_token_rate=0.5), dict(trigger_toxic_prob=1.5), dict(n_docs=1), dict(bogus=1)]
)
def test_bad_configuration_is_an_input_error(tmp_path, bad):
    with pytest.raises(InputError):
        write_demo_world(tmp_path / "w", **bad)
    assert not (tmp_path / "w").exists()
