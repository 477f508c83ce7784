"""Filtering baselines: drop whole blocks at IF-Guide's token budget (classifier or influence ranking)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import TOXIC
from ifguide.artifacts import fingerprint_array, write_meta
from ifguide.baselines.filtering import (
    blocks_to_drop,
    read_rows,
    rows_without_flagged_documents,
    rows_without_labelled_toxicity,
    rows_without_top_influence_documents,
)
from ifguide.cli import main
from ifguide.data.blocks import Blocks
from ifguide.errors import InputError
from ifguide.evaluation.scorers import WordlistScorer
from ifguide.models import load_tokenizer

TOXIC_WORDS = sorted({w for phrase in TOXIC for w in phrase.split()} - {"you", "up"})


def reference_keep(values, budget_tokens: int, block_size: int) -> list[int]:
    """Slow reference: repeatedly drop the highest remaining block (lowest row on ties) until the
    dropped blocks hold at least ``budget_tokens`` tokens."""
    remaining = list(range(len(values)))
    dropped_tokens = 0
    while dropped_tokens < budget_tokens:
        best = remaining[0]
        for row in remaining[1:]:
            if values[row] > values[best]:
                best = row
        remaining.remove(best)
        dropped_tokens += block_size
    return remaining


def reference_block_influence(scores: np.ndarray) -> list[float]:
    return [
        math.fsum(float(v) for v in row if math.isfinite(v)) if any(math.isfinite(v) for v in row) else -math.inf
        for row in scores
    ]


def _toxic_word_blocks(blocks: Blocks, tokenizer) -> np.ndarray:
    """Rows whose decoded text holds a whole planted toxic word (what a word-list filter must catch)."""
    scorer = WordlistScorer(TOXIC_WORDS)
    texts = tokenizer.batch_decode(np.asarray(blocks.input_ids, dtype=np.int64).tolist(), skip_special_tokens=True)
    return np.flatnonzero([scorer.flags(t) for t in texts])


# --------------------------------------------------------------------------- budget arithmetic


@pytest.mark.parametrize(
    "budget, expected", [(1, 1), (31, 1), (32, 1), (33, 2), (64, 2), (65, 3), (32 * 9, 9)]
)
def test_budget_rounds_up_to_whole_blocks(budget, expected):
    assert blocks_to_drop(budget, n_blocks=10, block_size=32) == expected


@pytest.mark.parametrize("budget", [0, -5, 32 * 10, 32 * 9 + 1, 2.5])
def test_budget_that_is_not_positive_or_leaves_nothing_is_refused(budget):
    with pytest.raises(InputError, match="--budget-tokens"):
        blocks_to_drop(budget, n_blocks=10, block_size=32)


# --------------------------------------------------------------------------- classifier filter


def test_scorer_filter_drops_blocks_with_planted_toxic_words_first(blocks_dir, tokenizer_dir):
    blocks = Blocks.open(blocks_dir)
    tok = load_tokenizer(tokenizer_dir)
    toxic_rows = _toxic_word_blocks(blocks, tok)
    assert 5 <= len(toxic_rows) < blocks.n_blocks // 2
    budget = len(toxic_rows) * blocks.block_size - 3  # needs exactly len(toxic_rows) blocks

    keep, info = rows_without_flagged_documents(blocks, WordlistScorer(TOXIC_WORDS), budget, tokenizer=tok)

    assert sorted(info["dropped_rows"]) == toxic_rows.tolist()
    assert np.array_equal(keep, np.setdiff1d(np.arange(blocks.n_blocks), toxic_rows))
    assert info["dropped_blocks"] == len(toxic_rows)
    assert info["dropped_tokens"] == len(toxic_rows) * blocks.block_size >= budget
    assert info["dropped_flagged_blocks"] == info["flagged_blocks"] == len(toxic_rows)
    # blocks holding only a word fragment of a planted phrase can escape a word list, not more
    assert info["labelled_toxic_recall"] > 0.9


def test_profanity_check_filter_drops_labelled_toxic_blocks(blocks_dir, tokenizer_dir):
    blocks = Blocks.open(blocks_dir)
    keep, info = rows_without_flagged_documents(blocks, "profanity-check", 4 * blocks.block_size, tokenizer=tokenizer_dir)
    dropped = np.array(info["dropped_rows"])
    assert len(dropped) == 4 and len(keep) == blocks.n_blocks - 4
    assert blocks.toxic_labels[dropped].any(axis=1).all()
    assert info["dropped_min_toxicity"] >= info["kept_max_toxicity"]


def test_scorer_filter_refuses_another_tokenizer(blocks_dir, tmp_path):
    from ifguide.data.tokenizer import train_tokenizer

    other = train_tokenizer(texts=["completely different text for another vocabulary"] * 50, vocab_size=300)
    with pytest.raises(InputError, match="tokenizer fingerprint mismatch"):
        rows_without_flagged_documents(blocks_dir, "wordlist", 32, tokenizer=other)


# --------------------------------------------------------------------------- influence filter


def test_influence_filter_matches_slow_reference():
    rng = np.random.default_rng(0)
    scores = rng.integers(-3, 4, size=(40, 8)).astype(np.float32)  # small integers: many tied block sums
    scores[:, 0] = np.nan  # column 0 is never a target
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[7] = np.nan  # a block with no finite score is never dropped before scored ones
    influence = reference_block_influence(scores)
    for budget in (1, 8, 9, 8 * 13 + 5, 8 * 39):
        keep, info = rows_without_top_influence_documents(scores, budget)
        assert keep.tolist() == reference_keep(influence, budget, 8), budget
        assert info["dropped_tokens"] == 8 * math.ceil(budget / 8)
    keep, _ = rows_without_top_influence_documents(scores, 8 * 39)
    assert keep.tolist() == [7]


def test_influence_filter_reads_row_shards_like_one_array():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(30, 6)).astype(np.float32)
    whole, _ = rows_without_top_influence_documents(scores, 50)
    shards, _ = rows_without_top_influence_documents([scores[:11], scores[11:]], 50)
    assert np.array_equal(whole, shards)


# --------------------------------------------------------------------------- CLI and artifacts


def _scores_dir(path, blocks: Blocks, scores: np.ndarray, blocks_fingerprint: str | None = None):
    path.mkdir()
    np.save(path / "scores.npy", scores)
    write_meta(path, "scores", fingerprint=fingerprint_array(scores),
               blocks_fingerprint=blocks_fingerprint or blocks.fingerprint)
    return path


def _mask_dir(path, blocks: Blocks, n_tokens: int):
    path.mkdir()
    mask = np.zeros(blocks.shape, dtype=bool)
    mask.reshape(-1)[np.arange(1, 1 + n_tokens)] = True
    np.save(path / "mask.npy", mask)
    write_meta(path, "mask", kind="selection", fingerprint=fingerprint_array(mask), blocks_fingerprint=blocks.fingerprint)
    return path


def test_cli_filter_by_influence_with_budget_of_a_mask(blocks_dir, tmp_path):
    blocks = Blocks.open(blocks_dir)
    scores = np.zeros(blocks.shape, dtype=np.float32)
    scores[[3, 50, 90], 5] = [1.0, 3.0, 2.0]  # the three most influential blocks, in order 50, 90, 3
    scores_dir = _scores_dir(tmp_path / "scores", blocks, scores)
    mask_dir = _mask_dir(tmp_path / "mask", blocks, n_tokens=2 * blocks.block_size + 1)  # needs 3 blocks
    out = tmp_path / "rows"

    assert main(["filter", "--blocks", blocks_dir, "--scores", str(scores_dir), "--like-mask", str(mask_dir),
                 "--out", str(out)]) == 0

    meta = json.loads((out / "meta.json").read_text())
    assert meta["stage"] == "rows" and meta["kind"] == "influence"
    assert meta["blocks_fingerprint"] == blocks.fingerprint
    assert meta["budget_tokens"] == 2 * blocks.block_size + 1
    assert meta["info"]["dropped_rows"] == [50, 90, 3]
    rows = read_rows(out, blocks)
    assert rows.tolist() == sorted(set(range(blocks.n_blocks)) - {3, 50, 90})
    assert meta["fingerprint"] == fingerprint_array(np.load(out / "rows.npy"))


def test_cli_filter_by_scorer(blocks_dir, tmp_path):
    out = tmp_path / "rows"
    assert main(["filter", "--blocks", blocks_dir, "--scorer", "profanity-check", "--budget-tokens", "64",
                 "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "scorer" and meta["info"]["dropped_blocks"] == 2
    assert len(read_rows(out, blocks_dir)) == Blocks.open(blocks_dir).n_blocks - 2


def test_cli_filter_refuses_scores_of_other_blocks(blocks_dir, tmp_path, capsys):
    blocks = Blocks.open(blocks_dir)
    scores_dir = _scores_dir(tmp_path / "scores", blocks, np.ones(blocks.shape, np.float32), blocks_fingerprint="0" * 64)
    out = tmp_path / "rows"
    rc = main(["filter", "--blocks", blocks_dir, "--scores", str(scores_dir), "--budget-tokens", "32", "--out", str(out)])
    assert rc == 2 and "fingerprint mismatch" in capsys.readouterr().err
    assert not out.exists()


def test_cli_filter_refuses_budget_that_drops_everything(blocks_dir, tmp_path, capsys):
    blocks = Blocks.open(blocks_dir)
    out = tmp_path / "rows"
    rc = main(["filter", "--blocks", blocks_dir, "--scorer", "profanity-check",
               "--budget-tokens", str(blocks.n_blocks * blocks.block_size), "--out", str(out)])
    assert rc == 2 and "--budget-tokens" in capsys.readouterr().err
    assert not out.exists()


def test_read_rows_refuses_other_blocks(blocks_dir, tmp_path):
    out = tmp_path / "rows"
    out.mkdir()
    np.save(out / "rows.npy", np.arange(3, dtype=np.int64))
    write_meta(out, "rows", kind="scorer", blocks_fingerprint="f" * 64)
    with pytest.raises(InputError, match="fingerprint mismatch"):
        read_rows(out, blocks_dir)


# --------------------------------------------------------------------------- perfect filter (labels)

def test_perfect_filter_keeps_exactly_the_blocks_without_labelled_targets(blocks_dir):
    blocks = Blocks.open(blocks_dir)
    labels = np.asarray(blocks.toxic_labels, dtype=bool)
    # slow reference: a block is toxic when any of its targets (columns 1..T-1) is labelled
    toxic = [i for i in range(blocks.n_blocks) if any(labels[i, j] for j in range(1, blocks.block_size))]
    assert 0 < len(toxic) < blocks.n_blocks

    keep, info = rows_without_labelled_toxicity(blocks)

    assert keep.tolist() == [i for i in range(blocks.n_blocks) if i not in toxic]
    assert info["kind"] == "labels" and info["dropped_blocks"] == len(toxic)
    assert info["labelled_toxic_recall"] == 1.0


def test_cli_filter_by_labels_writes_rows_without_a_budget(blocks_dir, tmp_path, capsys):
    out = tmp_path / "rows"
    assert main(["filter", "--blocks", blocks_dir, "--labels", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "labels" and meta["budget_tokens"] is None
    assert np.array_equal(read_rows(out, blocks_dir), rows_without_labelled_toxicity(blocks_dir)[0])

    refused = tmp_path / "refused"
    rc = main(["filter", "--blocks", blocks_dir, "--labels", "--budget-tokens", "32", "--out", str(refused)])
    assert rc == 2 and "takes no --budget-tokens" in capsys.readouterr().err
    assert not refused.exists()


def test_perfect_filter_refuses_blocks_without_labels(tmp_path, tokenizer_dir, capsys):
    from ifguide.data.prepare import prepare_blocks

    corpus = tmp_path / "plain.txt"
    corpus.write_text("\n".join(f"line {i} of a plain corpus with no toxic labels at all" for i in range(200)))
    plain = prepare_blocks([corpus], tokenizer_dir, block_size=32, out=tmp_path / "blocks")
    assert Blocks.open(plain).toxic_labels is None
    out = tmp_path / "rows"
    assert main(["filter", "--blocks", str(plain), "--labels", "--out", str(out)]) == 2
    assert "carry no toxic labels" in capsys.readouterr().err
    assert not out.exists()


def test_cli_filter_by_scorer_still_needs_a_budget(blocks_dir, tmp_path, capsys):
    out = tmp_path / "rows"
    assert main(["filter", "--blocks", blocks_dir, "--scorer", "profanity-check", "--out", str(out)]) == 2
    assert "--budget-tokens or --like-mask" in capsys.readouterr().err
    assert not out.exists()
