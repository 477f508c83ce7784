"""Builders of the realistic benchmark (bench/realistic_data.py) on tiny synthetic data files.

The files mimic the layout and schemas of shared/data (see its PROVENANCE.md files); the real
data is not needed.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import realistic_data as rd  # noqa: E402

from ifguide.errors import InputError  # noqa: E402


def _jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _rtp(i: int, prompt_tox: float, cont_tox: float) -> dict:
    return {"prompt": {"text": f"Prompt number {i} says that the", "toxicity": prompt_tox},
            "continuation": {"text": f" continuation {i} {'you idiot' if cont_tox >= 0.5 else 'is calm'}.",
                             "toxicity": cont_tox}}


@pytest.fixture()
def data_root(tmp_path) -> Path:
    """A miniature shared/data tree with every file the builders read."""
    root = tmp_path / "data"
    bp = root / "benign_prose"
    (bp / "wikitext-2-raw").mkdir(parents=True)
    for offset, name in ((0, "wiki.valid.raw"), (12, "wiki.test.raw")):
        wiki = "".join(f" = Article {a} = \n \n Article {a} is about the river and the town . \n \n"
                       for a in range(offset, offset + 12))
        (bp / "wikitext-2-raw" / name).write_text(wiki, encoding="utf-8")
    (bp / "ptb").mkdir()
    for name in ("ptb.valid.txt", "ptb.test.txt"):
        (bp / "ptb" / name).write_text("".join(f" the market rose {k} points\n" for k in range(50)))
    (bp / "tinyshakespeare").mkdir()
    (bp / "tinyshakespeare" / "input.txt").write_text("\n\n".join(f"ROMEO:\nSpeech {k} of love." for k in range(40)))
    for name in ("neutral_prompts.jsonl", "positive_prompts.jsonl", "negative_prompts.jsonl"):
        _jsonl(bp / "owt_sentiment_prompts" / name,
               [{"prompt": {"text": f"The weather {k}"}, "continuation": {"text": " was fine."}} for k in range(30)])
    jig = root / "jigsaw_toxic_comments"
    _jsonl(jig / "air_decoding_jigsaw_10k.jsonl",
           [{"text": f"jigsaw toxic {k} you fool", "label": 0} for k in range(40)]
           + [{"text": f"jigsaw polite {k}", "label": 1} for k in range(40)])
    with open(jig / "robtest_jigsaw_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        for k in range(20):
            w.writerow([f"robtest rude {k} shut up", 1])
            w.writerow([f"robtest nice {k}", 0])
    (root / "davidson_hate_offensive").mkdir()
    with open(root / "davidson_hate_offensive" / "labeled_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "count", "hate_speech", "offensive_language", "neither", "class", "tweet"])
        for k in range(60):
            w.writerow([k, 3, 0, 3, 0, k % 3, f"tweet {k} class {k % 3}"])
    (root / "paradetox").mkdir()
    (root / "paradetox" / "paradetox.tsv").write_text(
        "toxic\tneutral1\tneutral2\tneutral3\n" + "".join(f"para toxic {k}\tpara calm {k}\t\t\n" for k in range(40)))
    (root / "paradetox" / "paradetox_cannot_rewrite.tsv").write_text(
        "\tINPUT:toxic_comment\tOUTPUT:reasons\n" + "".join(f'{k}\t"cannot rewrite {k}"\t"x"\n' for k in range(10)))
    recs = [_rtp(i, 0.8 if i % 2 else 0.1, [0.9, 0.05, 0.3, 0.7][i % 4]) for i in range(200)]
    _jsonl(root / "realtoxicityprompts" / "rtp_merged_dedup.jsonl", recs)
    return root


def test_readers_apply_each_sources_label_convention(data_root):
    toxic = rd.read_toxic_texts(data_root)
    assert all("toxic" in t for t in toxic["jigsaw"][:40]) and not any("polite" in t for t in toxic["jigsaw"])
    assert sum("robtest rude" in t for t in toxic["jigsaw"]) == 20 and not any("nice" in t for t in toxic["jigsaw"])
    assert all(not t.endswith("class 2") for t in toxic["davidson"]) and len(toxic["davidson"]) == 40
    assert "para toxic 0" in toxic["paradetox"] and "cannot rewrite 3" in toxic["paradetox"]
    assert not any("calm" in t for t in toxic["paradetox"])
    benign = rd.read_benign(data_root, doc_chars=200)
    assert len(benign["wikitext-2"]) == 24 and benign["wikitext-2"][0].startswith("= Article 0 =")


def test_group_texts_keeps_every_text_and_reaches_the_length():
    texts = [f"comment {k}" for k in range(25)]
    groups = list(rd.group_texts(texts, min_chars=50))
    assert all(len(g) >= 50 for g in groups[:-1])
    assert "\n\n".join(groups).split("\n\n") == texts


def test_split_rtp_is_disjoint_balanced_and_interleaved(data_root):
    records = rd.read_rtp(data_root)
    split = rd.split_rtp(records, n_queries=10, n_eval=20, seed=0)
    labels = ["toxic" if q["continuation"]["toxicity"] >= 0.5 else "safe" for q in split.queries]
    assert labels == ["toxic", "safe"] * 10
    assert all(q["continuation"]["toxicity"] <= rd.SAFE_MAX for q in split.queries[1::2])
    eval_tox = [p["prompt"]["toxicity"] >= 0.5 for p in split.eval_prompts]
    assert eval_tox == [True, False] * 10
    q_prompts = {q["prompt"]["text"] for q in split.queries}
    e_prompts = {p["prompt"]["text"] for p in split.eval_prompts}
    assert not q_prompts & e_prompts
    held = {q["continuation"]["text"] for q in split.queries + split.eval_prompts}
    assert not held & set(split.train_continuations)
    assert split.train_continuations and all("idiot" in t for t in split.train_continuations)


def test_mix_corpus_reaches_the_toxic_share_with_labels():
    benign = {"a": [f"benign text {k} " * 10 for k in range(100)], "b": [f"other {k} " * 20 for k in range(50)]}
    toxic = {"x": [f"bad {k}" for k in range(500)], "y": [f"worse {k}" for k in range(500)]}
    docs = rd.mix_corpus(benign, toxic, toxic_share=0.1, doc_chars=120, seed=0)
    stats = rd.corpus_stats(docs)
    assert abs(stats["toxic_char_share"] - 0.1) < 0.01
    assert all(d.toxic == (d.source in toxic) for d in docs)
    assert {d.source for d in docs if d.toxic} == {"x", "y"}  # round robin keeps every source
    # short texts are joined into documents; only each source's last group may fall short
    assert sum(len(d.text) < 120 - 2 for d in docs if d.toxic) <= len(toxic)
    with pytest.raises(InputError, match="toxic-share"):
        rd.mix_corpus(benign, {"x": ["tiny"]}, toxic_share=0.1, doc_chars=120, seed=0)


def test_check_disjoint_refuses_overlap():
    q = [_rtp(1, 0.1, 0.9)]
    ok = [_rtp(2, 0.8, 0.1)]
    rd.check_disjoint(ok, q, ["some unrelated training text"], "eval.jsonl")
    with pytest.raises(InputError, match="eval.jsonl: prompt 1 .* also a query prompt"):
        rd.check_disjoint([_rtp(1, 0.8, 0.1)], q, [], "eval.jsonl")
    with pytest.raises(InputError, match="occurs in the training corpus"):
        rd.check_disjoint(ok, q, ["before " + ok[0]["prompt"]["text"] + " after"], "eval.jsonl")


def test_build_all_writes_disjoint_files_that_ifguide_reads(data_root, tmp_path, tokenizer_dir):
    from ifguide.data.blocks import Blocks
    from ifguide.data.prepare import prepare_blocks
    from ifguide.data.queries import read_queries
    from ifguide.evaluation.prompts import load_prompts

    out = tmp_path / "built"
    spec = rd.BuildSpec(toxic_share=0.1, doc_chars=200, n_queries=10, n_eval=20, heldout_articles=2)
    stats = rd.build_all(data_root, out, spec)
    assert stats["eval_prompts"] == 20 and stats["eval_toxic"] == 10 and stats["queries"] == 20
    assert abs(stats["toxic_char_share"] - 0.1) < 0.02
    prompts = load_prompts(out / "eval_prompts.jsonl")
    assert [p.toxic for p in prompts] == [True, False] * 10
    qs = read_queries(out / "queries.jsonl")
    assert len(qs.toxic) == 10 and len(qs.safe) == 10
    blocks = Blocks.open(prepare_blocks([out / "corpus.jsonl"], tokenizer_dir, 32, tmp_path / "blocks"))
    assert blocks.toxic_labels is not None and 0 < blocks.toxic_labels.mean() < 0.5
    assert "Article 23" in (out / "heldout.txt").read_text() and "Article 23" not in (out / "corpus.jsonl").read_text()
    # RAD's reward data: Air-Decoding's Jigsaw subset with its label convention (0 = toxic) applied
    from ifguide.baselines.reward import read_labelled

    texts, labels = read_labelled(out / "reward.jsonl")
    assert stats["reward_texts"] == len(texts) == 80 and sum(labels) == 40
    assert all(("toxic" in t) == bool(y) for t, y in zip(texts, labels))

    # a user-given evaluation file that repeats a query prompt is refused
    bad = tmp_path / "bad_eval.jsonl"
    first_query = json.loads((out / "queries.jsonl").read_text().splitlines()[1])
    _jsonl(bad, [{**first_query, "prompt": {**first_query["prompt"], "toxicity": 0.9}}, _rtp(999, 0.1, 0.1)])
    with pytest.raises(InputError, match="also a query prompt"):
        rd.build_all(data_root, tmp_path / "built2", spec, eval_prompts=bad)
    unbalanced = tmp_path / "unbalanced.jsonl"
    _jsonl(unbalanced, [_rtp(998, 0.9, 0.1)])
    with pytest.raises(InputError, match="balanced"):
        rd.build_all(data_root, tmp_path / "built3", spec, eval_prompts=unbalanced)


def test_same_alignment_derived_from_next_matches_the_attribution_code():
    """realistic.same_from_next(next) equals what ifguide.attribution stores with alignment='same'."""
    import numpy as np
    import realistic

    from ifguide.attribution.scores import to_target_coordinates

    positions = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    positions[:, -1] = 0.0  # the last position has no target, hence no gradient (see same_from_next)
    derived = realistic.same_from_next(to_target_coordinates(positions, "next"))
    np.testing.assert_array_equal(derived, to_target_coordinates(positions, "same"))


def test_selection_quality_on_scores_that_follow_the_labels():
    import numpy as np
    import realistic

    rng = np.random.default_rng(0)
    labels = np.zeros((200, 32), dtype=bool)
    labels[:20] = True  # 10 % of the rows are toxic documents
    scores = rng.standard_normal(labels.shape).astype(np.float32) + 3.0 * labels
    scores[:, 0] = np.nan
    q = realistic.selection_quality(scores, labels, threshold=0.9, window=0, budget=0.02)
    assert q["selected"] == int(0.02 * 200 * 31)
    assert q["share_in_toxic"] > 0.95 and q["token_auroc"] > 0.95 and q["row_auroc"] == 1.0
    flipped = realistic.selection_quality(-scores, labels, threshold=0.9, window=0, budget=0.02)
    assert flipped["share_in_toxic"] < 0.05 and flipped["token_auroc"] < 0.05
