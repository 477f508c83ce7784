"""Query sets: both schemas, thresholds, explicit labels, and the exact prompt/continuation boundary."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from ifguide.data.queries import IGNORE_INDEX, Query, read_queries, tokenize_query
from ifguide.errors import InputError


def rtp(prompt: str, cont: str, tox: float | None) -> dict:
    return {"prompt": {"text": prompt, "toxicity": 0.0}, "continuation": {"text": cont, "toxicity": tox}}


def test_rtp_thresholds_and_counts(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [rtp("a", " b", 0.9), rtp("c", " d", 0.5), rtp("e", " f", 0.3),
                                              rtp("g", " h", 0.1), rtp("i", " j", 0.0)])
    qs = read_queries(path, toxic_min=0.5, safe_max=0.1)
    assert [q.label for q in qs.queries] == ["toxic", "toxic", "safe", "safe"]
    assert qs.counts() == {"toxic": 2, "safe": 2, "dropped_between_thresholds": 1}


def test_simple_form_label_wins_over_score(tmp_path):
    recs = [{"prompt": "p", "continuation": " c", "label": "safe"},
            {"prompt": {"text": "p"}, "continuation": {"text": " c", "toxicity": 0.0}, "label": "toxic"}]
    qs = read_queries(write_jsonl(tmp_path / "q.jsonl", recs))
    assert [q.label for q in qs.queries] == ["safe", "toxic"]


def test_unlabelled_queries_need_a_default(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "p", "continuation": " c"}])
    with pytest.raises(InputError, match="q.jsonl:1"):
        read_queries(path)
    assert read_queries(path, default_label="safe").counts()["safe"] == 1


def test_safe_file_refuses_toxic_queries(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "p", "continuation": " c", "label": "toxic"}])
    with pytest.raises(InputError, match="toxic query in a file of safe"):
        read_queries(path, default_label="safe", require_label="safe")


@pytest.mark.parametrize("line", ['{"prompt": "p"}', "not json", '{"prompt": "p", "continuation": "c", "label": "bad"}'])
def test_malformed_records_name_the_line(tmp_path, line):
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "p", "continuation": " c", "label": "safe"}\n' + line + "\n")
    with pytest.raises(InputError, match="q.jsonl:2"):
        read_queries(path)


def test_continuation_tokens_are_exactly_the_targets(tokenizer_dir):
    from ifguide.models import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    q = Query("The river crossed", " you stupid idiot", "toxic", "test")
    ids, labels = tokenize_query(tok, q, max_tokens=64)
    assert ids[0] == tok.eos_token_id and labels[0] == IGNORE_INDEX
    targets = [t for t in labels if t != IGNORE_INDEX]
    first = labels.index(targets[0])
    assert all(lab == IGNORE_INDEX for lab in labels[:first])
    assert all(lab != IGNORE_INDEX for lab in labels[first:])
    # Tokenised together, the continuation's tokens decode back to the continuation exactly.
    assert tok.decode(targets) == q.continuation
    assert tok.decode(ids[1:first]) == q.prompt


def test_boundary_inside_a_token_counts_it_as_continuation(tokenizer_dir):
    from ifguide.models import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    q = Query("The riv", "er crossed", "safe", "test")
    ids, labels = tokenize_query(tok, q, max_tokens=64)
    targets = [t for t in labels if t != IGNORE_INDEX]
    assert q.continuation in tok.decode(targets)
    with pytest.raises(InputError, match="longer than the limit"):
        tokenize_query(tok, q, max_tokens=2)
