"""Mask artifacts and CLI verbs (select, random-mask, inspect), control masks, the HTML inspector."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from ifguide.artifacts import artifact_dir, fingerprint_array, write_meta
from ifguide.cli import main
from ifguide.data.blocks import Blocks
from ifguide.errors import InputError
from ifguide.selection import select_toxic_tokens
from ifguide.selection.masks import oracle_mask, random_mask_like, read_mask


def write_scores_dir(out: Path, scores: np.ndarray, blocks: Blocks | None = None, alignment: str = "next") -> Path:
    with artifact_dir(out) as tmp:
        np.save(tmp / "scores.npy", scores)
        fields = {"alignment": f"{alignment}: test scores"}
        if blocks is not None:
            fields.update(blocks_fingerprint=blocks.fingerprint, tokenizer_fingerprint=blocks.tokenizer_fingerprint)
        write_meta(tmp, "scores", **fields, fingerprint=fingerprint_array(scores))
    return out


@pytest.fixture(scope="module")
def planted_scores(blocks_dir):
    """Scores that are high on the planted toxic tokens, noise elsewhere, NaN in column 0."""
    b = Blocks.open(blocks_dir)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=b.shape).astype(np.float32)
    scores[np.asarray(b.toxic_labels)] += 4.0
    scores[:, 0] = np.nan
    return scores


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory, blocks_dir, planted_scores):
    return str(write_scores_dir(tmp_path_factory.mktemp("scores") / "scores", planted_scores, Blocks.open(blocks_dir)))


@pytest.fixture(scope="module")
def mask_dir(tmp_path_factory, scores_dir):
    out = tmp_path_factory.mktemp("mask") / "mask"
    assert main(["select", "--scores", scores_dir, "--out", str(out), "--threshold", "0.95", "--budget", "0.05"]) == 0
    return str(out)


def test_select_cli_writes_mask_and_meta(mask_dir, scores_dir, blocks_dir, planted_scores):
    mask, meta = read_mask(mask_dir)
    b = Blocks.open(blocks_dir)
    expected = select_toxic_tokens(planted_scores, threshold=0.95, budget=0.05, impl="reference")
    assert np.array_equal(mask, expected.mask)
    assert meta["stage"] == "mask" and meta["kind"] == "selection"
    assert meta["fingerprint"] == fingerprint_array(np.asarray(mask))
    assert meta["blocks_fingerprint"] == b.fingerprint
    assert meta["tokenizer_fingerprint"] == b.tokenizer_fingerprint
    assert meta["alignment"].startswith("next")
    assert meta["scores_fingerprint"] == json.loads((Path(scores_dir) / "meta.json").read_text())["fingerprint"]
    assert meta["tau"] == float(expected.tau)
    assert meta["n_selected"] == expected.n_selected == meta["budget_tokens"]
    assert meta["documents_touched"] == expected.documents_touched
    assert [r["doc"] for r in meta["ranked_documents"]] == expected.ranked_documents.tolist()
    assert meta["ranked_documents_truncated"] is False
    # the planted toxic tokens dominate what was selected
    labels = np.asarray(b.toxic_labels)
    assert labels[np.asarray(mask)].mean() > 0.5 > labels.mean()


def test_select_cli_shards_and_ranking_cap(tmp_path, blocks_dir, planted_scores):
    b = Blocks.open(blocks_dir)
    half = len(planted_scores) // 2
    a = write_scores_dir(tmp_path / "a", planted_scores[:half], b)
    c = write_scores_dir(tmp_path / "c", planted_scores[half:], b)
    out = tmp_path / "mask"
    assert main(["select", "--scores", str(a), str(c), "--out", str(out), "--max-tokens", "40"]) == 0
    mask, meta = read_mask(out)
    assert np.array_equal(mask, select_toxic_tokens(planted_scores, max_tokens=40).mask)
    assert meta["n_selected"] == 40 and len(meta["scores_shards"]) == 2
    assert meta["blocks_fingerprint"] == b.fingerprint

    from ifguide.selection.masks import select_to_artifact

    sel = select_to_artifact([a, c], tmp_path / "m2", max_tokens=40)
    meta2 = json.loads((tmp_path / "m2" / "meta.json").read_text())
    assert meta2["ranked_documents_truncated"] is False
    from ifguide.selection.masks import selection_meta, open_scores

    capped = selection_meta(sel, open_scores([a, c]), ranking_limit=3)
    assert len(capped["ranked_documents"]) == 3 and capped["ranked_documents_truncated"] is True


def test_select_refuses_mixed_alignments(tmp_path, planted_scores):
    a = write_scores_dir(tmp_path / "a", planted_scores[:5], alignment="next")
    c = write_scores_dir(tmp_path / "c", planted_scores[5:], alignment="same")
    assert main(["select", "--scores", str(a), str(c), "--out", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "scores, extra",
    [
        (np.ones((4, 6), dtype=np.int64), []),
        (np.ones((4, 6, 2), dtype=np.float32), []),
        (np.full((4, 6), np.nan, dtype=np.float32), []),
        (np.ones((4, 6), dtype=np.float32), ["--threshold", "1.2"]),
        (np.ones((4, 6), dtype=np.float32), ["--window", "-1"]),
        (np.ones((4, 6), dtype=np.float32), ["--budget", "0"]),
        (np.ones((4, 6), dtype=np.float32), ["--budget", "1.01"]),
    ],
)
def test_select_cli_bad_input_exit_2_no_output(tmp_path, capsys, scores, extra):
    np.save(tmp_path / "s.npy", scores)
    out = tmp_path / "mask"
    assert main(["select", "--scores", str(tmp_path / "s.npy"), "--out", str(out), *extra]) == 2
    assert not out.exists()
    assert "error:" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["s.npy"]  # no temporary left behind


def test_random_mask_like_count_window_and_validity():
    rng = np.random.default_rng(0)
    like = rng.random((40, 30)) < 0.05
    valid = rng.random((40, 30)) < 0.8
    for window in (0, 1, 3):
        rand = random_mask_like(like, window=window, seed=1, valid=valid)
        assert rand.sum() == like.sum()
        assert not rand[~valid].any()
        assert np.array_equal(rand, random_mask_like(like, window=window, seed=1, valid=valid))
        assert not np.array_equal(rand, random_mask_like(like, window=window, seed=2, valid=valid))
    # window structure: with w=2 and all positions valid, selected tokens come in runs (not isolated)
    dense = random_mask_like(like, window=2, seed=0)
    assert not dense[:, 0].any()
    runs = np.diff(np.concatenate([np.zeros((40, 1), bool), dense, np.zeros((40, 1), bool)], axis=1).astype(int), axis=1)
    run_lengths = np.nonzero(runs == -1)[1] - np.nonzero(runs == 1)[1]
    assert np.median(run_lengths) >= 5
    # a mask as large as the valid region fills it exactly
    full = random_mask_like(np.ones((3, 5), bool) & (np.arange(5) > 0), window=1, seed=0)
    assert full.sum() == 12
    with pytest.raises(InputError, match="valid positions"):
        random_mask_like(np.ones((3, 5), bool), window=1)


def test_oracle_mask_only_on_labelled_tokens():
    rng = np.random.default_rng(0)
    labels = rng.random((20, 16)) < 0.2
    m = oracle_mask(labels, 25, seed=0)
    assert m.sum() == 25 and not m[~labels].any() and not m[:, 0].any()
    assert oracle_mask(labels, 10**6).sum() == (labels[:, 1:]).sum()  # all of them, with a warning


def test_random_and_oracle_mask_cli(tmp_path, mask_dir, scores_dir, blocks_dir):
    like, like_meta = read_mask(mask_dir)
    out = tmp_path / "random"
    assert main(["random-mask", "--like", mask_dir, "--out", str(out), "--seed", "3", "--scores", scores_dir]) == 0
    rand, meta = read_mask(out)
    assert meta["kind"] == "random" and meta["seed"] == 3 and meta["window"] == 1
    assert rand.sum() == like.sum() == meta["n_selected"]
    assert meta["blocks_fingerprint"] == like_meta["blocks_fingerprint"]
    assert meta["like_fingerprint"] == like_meta["fingerprint"]
    assert meta["fingerprint"] == fingerprint_array(np.asarray(rand))
    assert not np.asarray(rand)[:, 0].any()

    out = tmp_path / "oracle"
    assert main(["random-mask", "--like", mask_dir, "--out", str(out), "--oracle", "--blocks", blocks_dir]) == 0
    oracle, meta = read_mask(out)
    labels = np.asarray(Blocks.open(blocks_dir).toxic_labels)
    assert meta["kind"] == "oracle" and not np.asarray(oracle)[~labels].any()
    assert oracle.sum() == min(like.sum(), labels[:, 1:].sum())


def test_inspect_writes_self_contained_html(tmp_path, blocks_dir, scores_dir, mask_dir, tokenizer_dir):
    out = tmp_path / "report.html"
    rc = main(["inspect", "--blocks", blocks_dir, "--scores", scores_dir, "--mask", mask_dir,
               "--tokenizer", tokenizer_dir, "--out", str(out), "--top", "3"])
    assert rc == 0
    page = out.read_text()
    _, meta = read_mask(mask_dir)
    top = [r["doc"] for r in meta["ranked_documents"][:3]]
    assert [int(d) for d in re.findall(r"<h3>block (\d+):", page)] == top
    assert "ifg-sel" in page and 'title="pos ' in page
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    # the text of the shown blocks is on the page
    from ifguide.models import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    ids = np.asarray(Blocks.open(blocks_dir).input_ids[top[0]])
    word = max(tok.decode(ids[1:]).split(), key=len)
    assert word in html.unescape(re.sub(r"<[^>]+>", "", page))


def test_inspect_refuses_mismatched_inputs(tmp_path, blocks_dir, scores_dir, mask_dir, tokenizer_dir, planted_scores):
    other = write_scores_dir(tmp_path / "other", planted_scores + 1, Blocks.open(blocks_dir))
    out = tmp_path / "r.html"
    args = ["inspect", "--blocks", blocks_dir, "--mask", mask_dir, "--tokenizer", tokenizer_dir, "--out", str(out)]
    assert main([*args, "--scores", str(other)]) == 2  # mask was built from other scores
    short = write_scores_dir(tmp_path / "short", planted_scores[:-1], Blocks.open(blocks_dir))
    assert main([*args, "--scores", str(short)]) == 2  # shape differs from the blocks
    assert not out.exists()
