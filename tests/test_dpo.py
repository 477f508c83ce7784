"""DPO baseline: reading preference pairs, measuring margins, and a real trl DPOTrainer run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import OBJECTS, SUBJECTS, TOXIC, VERBS, write_jsonl
from ifguide.baselines.dpo import (
    DPOConfig,
    context_prefix,
    pairs_from_queries,
    preference_margins,
    read_pairs,
)
from ifguide.cli import main
from ifguide.errors import InputError
from ifguide.models import fingerprint_model, load_model, load_tokenizer, model_fingerprint_from_dir


def make_pairs(n: int = 10) -> list[dict]:
    return [
        {
            "prompt": SUBJECTS[i % len(SUBJECTS)].capitalize(),
            "chosen": f" {VERBS[i % len(VERBS)]} {OBJECTS[i % len(OBJECTS)]}.",
            "rejected": f" {TOXIC[i % len(TOXIC)]}.",
        }
        for i in range(n)
    ]


def slow_margin(model, tok, pair: dict) -> float:
    """Reference: one unpadded forward per sequence; log p of the completion tokens and the closing EOS."""
    prompt = context_prefix(tok) + pair["prompt"]
    n_prompt = len(tok(prompt)["input_ids"])
    logps = []
    for key in ("chosen", "rejected"):
        ids = tok(prompt + pair[key])["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        logps.append(sum(float(logp[j - 1, ids[j]]) for j in range(n_prompt, len(ids))))
    return logps[0] - logps[1]


# --------------------------------------------------------------------------- reading pairs


def test_read_pairs_jsonl(tmp_path):
    pairs = make_pairs(4)
    assert read_pairs(write_jsonl(tmp_path / "p.jsonl", pairs)) == pairs


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "malformed JSON"),
        (json.dumps({"prompt": "a", "chosen": "b"}), "missing field 'rejected'"),
        (json.dumps({"prompt": "a", "chosen": 3, "rejected": "c"}), "'chosen' must be a string"),
        (json.dumps({"prompt": "a", "chosen": "  ", "rejected": "c"}), "'chosen' is empty"),
        (json.dumps({"prompt": "a", "chosen": "same", "rejected": "same"}), "identical"),
        (json.dumps(["a", "b", "c"]), "expected an object"),
    ],
)
def test_read_pairs_names_file_and_line_of_a_bad_record(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(make_pairs(1)[0]) + "\n\n" + line + "\n")
    with pytest.raises(InputError, match=message) as e:
        read_pairs(path)
    assert f"{path}:3" in str(e.value)


def test_read_pairs_paradetox_tsv(tmp_path):
    path = tmp_path / "paradetox.tsv"
    path.write_text(
        "toxic\tneutral1\tneutral2\tneutral3\n"
        "he is a damn idiot\the is wrong\the is mistaken\t\n"
        'shut up moron\t"please stop,\nfriend"\t\t\n'  # a quoted rewrite spanning two lines
        "stupid idea\tstupid idea\tbad idea\t\n"  # a "rewrite" equal to the toxic text states no preference
    )
    assert read_pairs(path) == [
        {"prompt": "", "chosen": "he is wrong", "rejected": "he is a damn idiot"},
        {"prompt": "", "chosen": "he is mistaken", "rejected": "he is a damn idiot"},
        {"prompt": "", "chosen": "please stop,\nfriend", "rejected": "shut up moron"},
        {"prompt": "", "chosen": "bad idea", "rejected": "stupid idea"},
    ]


def test_read_pairs_tsv_with_comment_columns(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("id\ten_toxic_comment\ten_neutral_comment\n7\tyou fool\tyou are mistaken\n")
    assert read_pairs(path) == [{"prompt": "", "chosen": "you are mistaken", "rejected": "you fool"}]


@pytest.mark.parametrize(
    "text, where, message",
    [
        ("comment\trewrite\nyou fool\tno\n", ":1", "header"),
        ("toxic\tneutral\nyou fool\tyou are wrong\nonly one column\n", ":3", "expected 2 tab-separated columns"),
        ("toxic\tneutral\nyou fool\t\n", ":2", "no neutral rewrite"),
    ],
)
def test_read_pairs_tsv_errors(tmp_path, text, where, message):
    path = tmp_path / "pairs.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as e:
        read_pairs(path)
    assert f"{path}{where}" in str(e.value)


def test_pairs_from_queries_prefers_the_same_prompt_then_round_robin(tmp_path):
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"prompt": "A", "continuation": " toxic a", "label": "toxic"},
        {"prompt": "B", "continuation": " toxic b", "label": "toxic"},
        {"prompt": "C", "continuation": " toxic c", "label": "toxic"},
        {"prompt": "A", "continuation": " safe a", "label": "safe"},
    ])
    safe = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Z", "continuation": " safe z"}])  # unlabelled: safe
    assert pairs_from_queries(queries, safe) == [
        {"prompt": "A", "chosen": " safe a", "rejected": " toxic a"},
        {"prompt": "B", "chosen": " safe a", "rejected": " toxic b"},
        {"prompt": "C", "chosen": " safe z", "rejected": " toxic c"},
    ]


def test_pairs_from_queries_needs_safe_queries(tmp_path):
    queries = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "A", "continuation": " x", "label": "toxic"}])
    with pytest.raises(InputError, match="no safe queries"):
        pairs_from_queries(queries)


@pytest.mark.parametrize("field, value", [("beta", 0.0), ("steps", 0), ("lr", -1.0), ("batch_size", 0), ("max_length", 1)])
def test_config_validation(field, value):
    with pytest.raises(InputError, match=field.replace("_", "-")):
        DPOConfig(**{field: value})


# --------------------------------------------------------------------------- margins and training


def test_batched_margins_match_slow_reference(model_dir):
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    pairs = make_pairs(7)
    fast = preference_margins(model, tok, pairs, batch_size=4)
    slow = [slow_margin(model, tok, p) for p in pairs]
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-3)


def test_dpo_cli_raises_margin_over_reference_and_writes_model(model_dir, tmp_path):
    pairs = make_pairs(10)
    pairs_path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "dpo"
    reference, tok = load_model(model_dir), load_tokenizer(model_dir)
    before = np.array([slow_margin(reference, tok, p) for p in pairs])

    rc = main(["dpo", "--model", model_dir, "--pairs", pairs_path, "--out", str(out),
               "--steps", "8", "--batch-size", "5", "--lr", "1e-3", "--beta", "0.1"])

    assert rc == 0
    policy = load_model(out)
    after = np.array([slow_margin(policy, load_tokenizer(out), p) for p in pairs])
    assert (after > before).all(), (before, after)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stage"] == "model" and meta["kind"] == "dpo"
    assert meta["fingerprint"] == fingerprint_model(policy) != meta["init_fingerprint"]
    assert meta["init_fingerprint"] == model_fingerprint_from_dir(model_dir)
    assert meta["steps"] == 8 and meta["n_pairs"] == 10 and meta["args"]["beta"] == 0.1
    assert meta["margin"]["before"] == pytest.approx(before.mean(), rel=1e-3)
    assert meta["margin"]["after"] == pytest.approx(after.mean(), rel=1e-3)
    assert (out / "train_log.jsonl").read_text().strip()
    assert not (tmp_path / "dpo.partial").exists()


def test_dpo_cli_bad_pairs_exit_2_without_output(model_dir, tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    out = tmp_path / "dpo"
    assert main(["dpo", "--model", model_dir, "--pairs", str(bad), "--out", str(out), "--steps", "1"]) == 2
    assert f"{bad}:1" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "dpo.partial").exists()


def test_train_dpo_with_a_model_object_needs_its_tokenizer(tokenizer_dir, tmp_path):
    from conftest import build_model
    from ifguide.baselines.dpo import train_dpo

    with pytest.raises(InputError, match="tokenizer"):
        train_dpo(build_model(tokenizer_dir), tmp_path / "dpo", pairs=make_pairs(2), config=DPOConfig(steps=1))
    assert not (tmp_path / "dpo").exists()
