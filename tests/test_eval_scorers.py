"""Classifier scorers on micro models built from configs: hf:DIR and offline Detoxify."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifguide.errors import InputError
from ifguide.evaluation.scorers import get_scorer

TEXTS = ["the quiet valley at dawn", "you stupid idiot", "a young cat"]
DETOXIFY_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


def _micro_bert(tokenizer_dir, num_labels: int, **config):
    from transformers import BertConfig, BertForSequenceClassification

    from ifguide.models import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, num_labels=num_labels, pad_token_id=tok.pad_token_id, **config,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).eval(), tok


def _reference_logits(model, tok, texts):
    """One text at a time, no padding: an independent path to the classifier's logits."""
    with torch.no_grad():
        return torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tokenizer_dir):
    model, tok = _micro_bert(tokenizer_dir, 2, id2label={0: "neutral", 1: "toxic"}, label2id={"neutral": 0, "toxic": 1})
    out = tmp_path_factory.mktemp("clf") / "clf"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), model, tok


def test_hf_scorer_matches_reference_and_label_choice(classifier_dir):
    path, model, tok = classifier_dir
    ref = _reference_logits(model, tok, TEXTS).softmax(-1).numpy()
    auto = get_scorer(f"hf:{path}").score(TEXTS)["toxicity"]  # 'toxic' found in id2label
    np.testing.assert_allclose(auto, ref[:, 1], atol=1e-5)
    by_name = get_scorer(f"hf:{path}", label="neutral").score(TEXTS)["toxicity"]
    by_index = get_scorer(f"hf:{path}", label="0").score(TEXTS)["toxicity"]
    np.testing.assert_allclose(by_name, ref[:, 0], atol=1e-5)
    np.testing.assert_allclose(by_index, by_name)


def test_hf_scorer_errors(classifier_dir, tmp_path, tokenizer_dir):
    path, _, _ = classifier_dir
    with pytest.raises(InputError, match="not a class"):
        get_scorer(f"hf:{path}", label="spam")
    with pytest.raises(InputError, match="cannot load a sequence classifier"):
        get_scorer(f"hf:{tmp_path / 'missing'}")
    model, tok = _micro_bert(tokenizer_dir, 3)  # LABEL_0..2: ambiguous
    model.save_pretrained(tmp_path / "three")
    tok.save_pretrained(tmp_path / "three")
    with pytest.raises(InputError, match="pass --label"):
        get_scorer(f"hf:{tmp_path / 'three'}")


def test_detoxify_offline_from_local_checkpoint(tmp_path, tokenizer_dir, monkeypatch):
    model, tok = _micro_bert(tokenizer_dir, len(DETOXIFY_CLASSES), problem_type="multi_label_classification")
    base = tmp_path / "base"
    model.config.save_pretrained(base)
    tok.save_pretrained(base)
    ckpt = tmp_path / "toxic_original.ckpt"
    torch.save(
        {
            "config": {
                "arch": {"args": {"model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification",
                                  "tokenizer_name": "BertTokenizer", "num_classes": len(DETOXIFY_CLASSES)}},
                "dataset": {"args": {"classes": DETOXIFY_CLASSES}},
            },
            "state_dict": model.state_dict(),
        },
        ckpt,
    )
    monkeypatch.setenv("IFGUIDE_DETOXIFY_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("IFGUIDE_DETOXIFY_BASE", str(base))
    scorer = get_scorer("detoxify:original")
    assert scorer.attributes == ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")
    out = scorer.score(TEXTS)
    ref = _reference_logits(model, tok, TEXTS).sigmoid().numpy()
    np.testing.assert_allclose(out["toxicity"], ref[:, 0], atol=1e-5)
    np.testing.assert_allclose(out["identity_attack"], ref[:, 5], atol=1e-5)


def test_detoxify_fails_clearly_without_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("IFGUIDE_DETOXIFY_CHECKPOINT", raising=False)
    monkeypatch.delenv("IFGUIDE_DETOXIFY_BASE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="IFGUIDE_DETOXIFY_CHECKPOINT"):
        get_scorer("detoxify:unbiased")
    with pytest.raises(InputError, match="checkpoint .* not found"):
        get_scorer("detoxify:original", checkpoint=str(tmp_path / "none.ckpt"), base=str(tmp_path))


def test_unknown_scorer_option_is_refused():
    with pytest.raises(InputError, match="unknown option.*label.*accepts: none"):
        get_scorer("profanity-check", label="toxic")
    with pytest.raises(InputError, match="accepts: checkpoint, base"):
        get_scorer("detoxify:original", wordlist="x")


def test_cli_evaluate_with_hf_scorer_and_rad_wordlist(tmp_path, classifier_dir, model_dir):
    import json

    from conftest import write_jsonl
    from ifguide.cli import main

    path, model, tok = classifier_dir
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "The old bridge"}, {"prompt": "A young cat", "toxic": False}])
    words = tmp_path / "words.txt"
    words.write_text("stupid\nidiot\n")
    out = tmp_path / "ev"
    rc = main([
        "evaluate", "--model", model_dir, "--prompts", prompts, "--out", str(out), "--scorer", f"hf:{path}",
        "--label", "toxic", "--samples", "2", "--max-new-tokens", "3", "--seeds", "1,2",
        "--decoding", "rad", "--rad-k", "3", "--rad-scorer", "wordlist", "--rad-scorer-option", f"wordlist={words}",
    ])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["scorer"]["name"] == f"hf:{path}" and results["decoding"]["rad"]["scorer"] == "wordlist"
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    texts, scores = gens[0]["continuations"], gens[0]["scores"]["toxicity"]
    keep = [i for i, t in enumerate(texts) if tok(t)["input_ids"]]  # the reference cannot run on ""
    ref = _reference_logits(model, tok, [texts[i] for i in keep]).softmax(-1)[:, 1].numpy()
    np.testing.assert_allclose([scores[i] for i in keep], ref, atol=1e-5)
    assert main(["evaluate", "--model", model_dir, "--prompts", prompts, "--out", str(out),
                 "--scorer-option", "novalue"]) == 2
