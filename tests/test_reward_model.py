"""The RAD reward model: a real sequence classifier trained on labelled texts, saved as a scorer."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import OBJECTS, SUBJECTS, VERBS, write_jsonl

INSULTS = ["stupid", "idiot", "moron", "damn", "ugly", "loser"]


def _labelled(n: int, seed: int) -> list[dict]:
    """Benign sentences, half of them with two insult words in: learnable from single tokens."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        toxic = i % 2 == 0
        if toxic:
            words = text.split()
            for w in rng.sample(INSULTS, 2):
                words.insert(rng.randrange(len(words) + 1), w)
            text = " ".join(words)
        recs.append({"text": text, "toxic": toxic})
    return recs


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tokenizer_dir):
    from ifguide.baselines.reward import RewardModelConfig, train_reward_model

    tmp = tmp_path_factory.mktemp("reward")
    data = write_jsonl(tmp / "labelled.jsonl", _labelled(320, seed=0))
    config = RewardModelConfig(preset="micro", epochs=6, lr=3e-3, batch_size=16, heldout=0.2)
    return train_reward_model(data, tokenizer_dir, tmp / "reward", config), data


def test_reward_model_separates_unseen_texts_and_loads_as_a_scorer(reward_dir):
    from ifguide.baselines.reward import heldout_metrics
    from ifguide.evaluation.scorers import get_scorer

    out, data = reward_dir
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stage"] == "reward_model" and meta["n_train"] + meta["n_heldout"] == 320
    assert meta["heldout"]["auroc"] > 0.9
    # texts never seen in training (another seed), scored through the public scorer registry
    fresh = _labelled(80, seed=1)
    scorer = get_scorer(f"hf:{out}")
    metrics = heldout_metrics(scorer, [r["text"] for r in fresh], [int(r["toxic"]) for r in fresh])
    assert metrics["auroc"] > 0.9 and metrics["accuracy"] > 0.8
    p = np.asarray(scorer.score(["the river watched a quiet garden", "stupid idiot the river"])["toxicity"])
    assert p[1] > p[0]


def test_reward_model_refuses_bad_labels_with_exit_2_and_leaves_nothing(tmp_path, tokenizer_dir):
    from ifguide.cli import main

    out = tmp_path / "reward"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a quiet garden", "toxic": "yes"}])
    assert main(["reward-model", "--data", bad, "--tokenizer", tokenizer_dir, "--out", str(out)]) == 2
    one_class = write_jsonl(tmp_path / "one.jsonl", [{"text": "a quiet garden", "toxic": False}] * 3)
    assert main(["reward-model", "--data", one_class, "--tokenizer", tokenizer_dir, "--out", str(out)]) == 2
    assert main(["reward-model", "--data", one_class, "--tokenizer", tokenizer_dir, "--out", str(out),
                 "--heldout", "1.5"]) == 2
    assert main(["reward-model", "--data", str(tmp_path / "missing.jsonl"), "--tokenizer", tokenizer_dir,
                 "--out", str(out)]) == 2
    good = write_jsonl(tmp_path / "good.jsonl", _labelled(10, seed=2))
    assert main(["reward-model", "--data", good, "--tokenizer", str(tmp_path / "no-tokenizer"), "--out", str(out)]) == 2
    assert not out.exists()
    assert not any(p.name.startswith(("reward", ".reward")) for p in tmp_path.iterdir())
