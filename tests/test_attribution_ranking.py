"""End to end on a briefly trained model: differential EK-FAC scores rank the planted toxic
phrases' tokens above frequent benign tokens ("the")."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import OBJECTS, SUBJECTS, TOXIC, VERBS, build_model, make_corpus, write_jsonl
from ifguide.attribution import FactorConfig, ScoreConfig, compute_scores, fit_factors
from ifguide.data.blocks import Blocks
from ifguide.models import load_tokenizer


@pytest.fixture
def one_thread():
    # Tiny matrices: several threads only contend with each other (and with parallel test runs).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_briefly(model, input_ids: np.ndarray, steps: int = 30, lr: float = 3e-3) -> None:
    ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x = ids[torch.randint(0, len(ids), (16,), generator=gen)]
        logits = model(input_ids=x).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _queries(path, n_pairs: int = 6) -> str:
    """Toxic and safe queries with the same prompts and the same benign tail; only the phrase differs."""
    rng = random.Random(5)
    sentence = lambda: f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
    recs = []
    for k in range(n_pairs):
        prompt, tail = sentence(), " ".join(sentence() for _ in range(3))
        recs.append({"prompt": prompt, "continuation": f" {TOXIC[k % len(TOXIC)]} {tail}", "label": "toxic"})
        recs.append({"prompt": prompt, "continuation": f" {tail}", "label": "safe"})
    return write_jsonl(path, recs)


def test_differential_scores_rank_toxic_tokens_above_the(tmp_path, one_thread, tokenizer_dir):
    from ifguide.data.prepare import prepare_blocks

    corpus = write_jsonl(tmp_path / "corpus.jsonl", make_corpus(n_docs=120, seed=1))
    blocks_dir = prepare_blocks([corpus], tokenizer_dir, block_size=32, out=tmp_path / "blocks")
    blocks = Blocks.open(blocks_dir)
    model = build_model(tokenizer_dir, "gpt-neox", seed=0)
    _train_briefly(model, blocks.input_ids)

    factors = fit_factors(model, blocks_dir, tmp_path / "factors", FactorConfig(batch_size=32), tokenizer=tokenizer_dir)
    scores = np.load(compute_scores(model, blocks_dir, _queries(tmp_path / "q.jsonl"), factors, tmp_path / "scores",
                                    ScoreConfig(batch_size=32), tokenizer=tokenizer_dir) / "scores.npy")

    tok = load_tokenizer(tokenizer_dir)
    the_ids = [i for i in tok.convert_tokens_to_ids(["the", "Ġthe", "The", "ĠThe"]) if i != tok.unk_token_id and i is not None]
    toxic = np.asarray(blocks.toxic_labels)[:, 1:].ravel().astype(bool)
    the = np.isin(np.asarray(blocks.input_ids)[:, 1:].ravel(), the_ids)
    assert toxic.sum() > 50 and the.sum() > 100
    ranks = scores[:, 1:].ravel().argsort().argsort() / toxic.size
    # Probability that a random toxic-phrase token outranks a random "the" token.
    auc = (ranks[toxic][:, None] > ranks[the][None, :]).mean()
    assert auc > 0.9
    assert ranks[toxic].mean() > 0.85
