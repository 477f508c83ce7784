"""prepare: text → blocks → text round trip, labels, streaming layout, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_corpus, write_jsonl
from ifguide.cli import main
from ifguide.data.blocks import Blocks
from ifguide.data.prepare import prepare_blocks
from ifguide.models import load_tokenizer


def test_round_trip_text_blocks_text(tmp_path, tokenizer_dir):
    docs = [d["text"] for d in make_corpus(40, seed=5, toxic_every=0)]
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in docs])
    out = prepare_blocks([src], tokenizer_dir, 16, tmp_path / "b")
    blocks = Blocks.open(out)
    tok = load_tokenizer(tokenizer_dir)
    stream = "".join(t + tok.eos_token for t in docs)
    decoded = tok.decode(np.asarray(blocks.input_ids).reshape(-1))
    assert stream.startswith(decoded)
    assert blocks.meta["n_tokens"] + blocks.meta["n_tokens_dropped"] == blocks.doc_spans[-1, 1]
    assert blocks.meta["n_tokens_dropped"] < 16
    # doc spans tile the stream and each ends with EOS
    spans = np.asarray(blocks.doc_spans)
    assert spans[0, 0] == 0 and np.all(spans[1:, 0] == spans[:-1, 1]) and len(spans) == len(docs)
    flat = np.asarray(blocks.input_ids).reshape(-1)
    ends = spans[:, 1] - 1
    assert np.all(flat[ends[ends < flat.size]] == tok.eos_token_id)


def test_txt_files_directory_and_line_docs(tmp_path, tokenizer_dir):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text("The river crossed the valley.\nA farmer painted the house.\n")
    (d / "b.txt").write_text("Our teacher remembered the road.")
    one_per_file = Blocks.open(prepare_blocks([d], tokenizer_dir, 2, tmp_path / "f"))
    per_line = Blocks.open(prepare_blocks([d], tokenizer_dir, 2, tmp_path / "l", line_docs=True))
    assert one_per_file.meta["n_documents"] == 2 and per_line.meta["n_documents"] == 3


def test_toxic_labels_follow_character_spans(blocks_dir, tokenizer_dir):
    blocks = Blocks.open(blocks_dir)
    tok = load_tokenizer(tokenizer_dir)
    flat = np.asarray(blocks.input_ids).reshape(-1)
    labels = np.asarray(blocks.toxic_labels).reshape(-1)
    text = tok.decode(flat[labels])
    assert labels.mean() < 0.2 and labels.sum() > 0
    assert any(w in text for w in ("idiot", "moron", "fool"))
    assert "valley" not in text


def test_shards_partition_documents(tmp_path, corpus_path, tokenizer_dir):
    whole = Blocks.open(prepare_blocks([corpus_path], tokenizer_dir, 8, tmp_path / "w"))
    parts = [Blocks.open(prepare_blocks([corpus_path], tokenizer_dir, 8, tmp_path / f"s{i}", shard=(i, 3))) for i in range(3)]
    assert sum(p.meta["n_documents"] for p in parts) == whole.meta["n_documents"]


def test_uint16_and_int32(tmp_path, corpus_path, tokenizer_dir):
    a = Blocks.open(prepare_blocks([corpus_path], tokenizer_dir, 8, tmp_path / "a"))
    b = Blocks.open(prepare_blocks([corpus_path], tokenizer_dir, 8, tmp_path / "b", dtype="int32"))
    assert a.input_ids.dtype == np.uint16 and b.input_ids.dtype == np.int32
    assert np.array_equal(a.input_ids, b.input_ids)
    assert isinstance(np.load(a.path / "input_ids.npy", mmap_mode="r"), np.memmap)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("malformed", ":2: malformed JSON"),
        ("no_text", "missing field 'text'"),
        ("empty", "empty"),
        ("block1", "at least 2"),
        ("too_short", "fewer than one block"),
    ],
)
def test_bad_inputs_exit_2_without_output(tmp_path, capsys, tokenizer_dir, case, message):
    src = tmp_path / "c.jsonl"
    block = "4"
    if case == "malformed":
        src.write_text('{"text": "fine"}\n{"text": broken\n')
    elif case == "no_text":
        src.write_text(json.dumps({"body": "x"}) + "\n")
    elif case == "empty":
        src.write_text("")
    elif case == "block1":
        src.write_text(json.dumps({"text": "hello world"}) + "\n")
        block = "1"
    elif case == "too_short":
        src.write_text(json.dumps({"text": "hi"}) + "\n")
        block = "4096"
    args = ["prepare", "--data", str(src), "--tokenizer", tokenizer_dir, "--block-size", block, "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_merged_shards_hold_every_document_once(tmp_path, corpus_path, tokenizer_dir):
    from ifguide.data.prepare import merge_blocks

    parts = [prepare_blocks([corpus_path], tokenizer_dir, 8, tmp_path / f"s{i}", shard=(i, 2)) for i in range(2)]
    assert main(["prepare", "--merge", *map(str, parts), "--out", str(tmp_path / "m")]) == 0
    merged, a, b = Blocks.open(tmp_path / "m"), Blocks.open(parts[0]), Blocks.open(parts[1])
    assert np.array_equal(merged.input_ids, np.concatenate([a.input_ids, b.input_ids]))
    labels = [x.toxic_labels if x.toxic_labels is not None else np.zeros(x.shape, bool) for x in (a, b)]
    assert np.array_equal(merged.toxic_labels, np.concatenate(labels)) and merged.toxic_labels.sum() > 0
    spans = np.asarray(merged.doc_spans)
    assert spans[-1, 1] <= merged.n_blocks * 8 and np.all(spans[:, 0] < spans[:, 1])
    # the first document of shard 1 starts where shard 0's kept tokens end
    assert (a.n_blocks * 8) in spans[:, 0]
    other_tok = tmp_path / "tok2"
    from ifguide.data.tokenizer import train_tokenizer

    train_tokenizer([corpus_path], 280, other_tok)
    c = prepare_blocks([corpus_path], other_tok, 8, tmp_path / "c")
    with pytest.raises(Exception, match="another tokenizer"):
        merge_blocks([parts[0], c], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
