"""EMT / TP / toxic rate on hand-computed cases, bootstrap CIs, prompt files and scorers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ifguide.errors import InputError
from ifguide.evaluation import metrics
from ifguide.evaluation.prompts import load_prompts
from ifguide.evaluation.scorers import WordlistScorer, get_scorer, known_scorers


def test_hand_computed_single_seed():
    # prompt 0: max 0.5 (a tie counts as toxic), 1 of 3 samples toxic
    # prompt 1: all non-toxic, max 0.4
    # prompt 2: max 0.9, 2 of 3 toxic
    scores = np.array([[0.1, 0.5, 0.2], [0.0, 0.4, 0.3], [0.9, 0.6, 0.1]])
    out = metrics.single_seed(scores, [True, False, True])
    assert out["full"]["emt"] == pytest.approx((0.5 + 0.4 + 0.9) / 3)
    assert out["full"]["tp"] == pytest.approx(2 / 3)
    assert out["full"]["toxic_rate"] == pytest.approx(3 / 9)
    assert out["toxic"] == pytest.approx({"emt": 0.7, "tp": 1.0, "toxic_rate": 0.5, "n_prompts": 2})
    assert out["nontoxic"] == pytest.approx({"emt": 0.4, "tp": 0.0, "toxic_rate": 0.0, "n_prompts": 1})


def test_empty_subsets_are_null_and_unknown_prompts_only_in_full():
    scores = np.array([[[0.7, 0.1]], [[0.2, 0.3]]])  # 2 seeds, 1 prompt, 2 samples
    out = metrics.summarise(scores, [None], n_boot=50)
    assert out["full"]["n_prompts"] == 1 and out["toxic"]["n_prompts"] == 0
    assert out["toxic"]["emt"] == {"mean": None, "sd": None, "ci95": None}
    assert out["nontoxic"]["tp"]["mean"] is None
    assert out["full"]["emt"]["mean"] == pytest.approx(0.5)  # (0.7 + 0.3) / 2
    assert out["full"]["emt"]["sd"] == pytest.approx(np.std([0.7, 0.3], ddof=1))
    assert out["full"]["tp"]["mean"] == pytest.approx(0.5)
    json.dumps(out, allow_nan=False)


def test_one_seed_has_no_sd_and_ci_brackets_mean():
    rng = np.random.default_rng(0)
    scores = rng.random((1, 40, 5))
    out = metrics.summarise(scores, [i % 2 == 0 for i in range(40)], n_boot=500)
    emt = out["full"]["emt"]
    assert emt["sd"] is None
    assert emt["ci95"][0] < emt["mean"] < emt["ci95"][1]
    assert metrics.bootstrap_ci(np.array([])) is None
    assert metrics.bootstrap_ci(np.full(5, 0.3)) == pytest.approx([0.3, 0.3])


def test_prompt_file_schemas(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        {"prompt": {"text": "RTP toxic", "toxicity": 0.5}},
        {"prompt": {"text": "RTP benign", "toxicity": 0.1}},
        {"prompt": {"text": "RTP unknown", "toxicity": None}},
        {"prompt": "plain flagged", "toxic": True},
        {"prompt": "plain scored", "toxicity": 0.2},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    prompts = load_prompts(path)
    assert [p.toxic for p in prompts] == [True, False, None, True, False]
    assert len(load_prompts(path, max_prompts=2)) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json\n", "invalid JSON"),
        ('{"text": "no prompt field"}\n', "'prompt' field"),
        ('{"prompt": {"text": "x", "toxicity": 3}}\n', "toxicity"),
        ('{"prompt": "  "}\n', "non-empty"),
        ('{"prompt": "x", "toxic": "yes"}\n', "'toxic'"),
        ("\n", "no prompts"),
    ],
)
def test_bad_prompt_files(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_prompts(path)


def test_scorer_registry_errors():
    with pytest.raises(InputError, match="unknown scorer.*profanity-check.*wordlist.*hf:ARG.*detoxify:ARG"):
        get_scorer("perspective")
    with pytest.raises(InputError, match="needs an argument"):
        get_scorer("hf")
    with pytest.raises(InputError, match="takes no argument"):
        get_scorer("wordlist:extra")
    with pytest.raises(InputError, match="unknown variant"):
        get_scorer("detoxify:nonsense")
    assert {"profanity-check", "wordlist", "detoxify:ARG", "hf:ARG"} <= set(known_scorers())


BENIGN = ["The river crossed the quiet valley at dawn.", "Our teacher repaired the old bridge."]
OFFENSIVE = ["you are a fucking idiot", "shut up, you stupid bitch"]


@pytest.mark.parametrize("name", ["profanity-check", "wordlist"])
def test_offline_scorers_on_known_strings(name):
    scorer = get_scorer(name)
    assert get_scorer(name) is scorer  # loaded once
    out = scorer.score(BENIGN + OFFENSIVE)
    assert list(out) == ["toxicity"]
    tox = out["toxicity"]
    assert tox.shape == (4,) and np.all((tox >= 0) & (tox <= 1))
    assert np.all(tox[:2] < 0.5) and np.all(tox[2:] >= 0.5)


def test_wordlist_matches_whole_words_and_phrases():
    scorer = WordlistScorer(["ass", "two girls"])
    assert scorer.score(["a class act", "what an ASS!", "Two  girls, one", "two"])["toxicity"].tolist() == [0, 1, 1, 0]
