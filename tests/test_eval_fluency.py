"""Perplexity and LAMBADA against slow per-example references, and the lm-evaluation-harness glue."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import write_jsonl
from ifguide.errors import FingerprintMismatch, InputError
from ifguide.evaluation.fluency import encode_lambada, lambada, perplexity, split_last_word
from ifguide.models import load_model, load_tokenizer

LAMBADA_TEXTS = [
    "The river crossed the valley at dawn and the farmer watched the river",
    "Our teacher repaired the old bridge. The bridge",
    "a young cat",
    "the market the market the market the market",
    "single",
]


@pytest.fixture(scope="module")
def model_and_tok(model_dir):
    return load_model(model_dir), load_tokenizer(model_dir)


def _slow_lambada(model, tok, text):
    """Per example, without batching: tokenise context and context+target, score token by token."""
    context, target = text.rsplit(" ", 1) if " " in text else ("", text)
    target = " " + target
    if context:
        ctx = tok(context)["input_ids"]
        tgt = tok(context + target)["input_ids"][len(ctx):]
    else:
        ctx, tgt = [tok.eos_token_id], tok(target)["input_ids"]
    logprob, correct = 0.0, True
    for k, token in enumerate(tgt):
        with torch.no_grad():
            logits = model(torch.tensor([ctx + tgt[:k]])).logits[0, -1]
        logprob += float(logits.log_softmax(-1)[token])
        correct &= int(logits.argmax()) == token
    return logprob, correct


def test_lambada_matches_slow_reference(tmp_path, model_and_tok):
    model, tok = model_and_tok
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": t} for t in LAMBADA_TEXTS])
    ref = [_slow_lambada(model, tok, t) for t in LAMBADA_TEXTS]
    got = lambada(model, tok, path, batch_size=2)
    assert got["n"] == len(LAMBADA_TEXTS)
    assert got["ppl"] == pytest.approx(math.exp(-np.mean([r[0] for r in ref])), rel=1e-4)
    assert got["acc"] == pytest.approx(np.mean([r[1] for r in ref]))


def test_lambada_greedy_correct_when_model_copies(tmp_path, model_and_tok):
    """A 'model' that always predicts the target token is 100 % accurate: checks the alignment."""
    model, tok = model_and_tok
    text = "the river crossed the valley"
    ex = encode_lambada(tok, text)
    full = ex.context + ex.target

    class Oracle(torch.nn.Module):
        config = model.config

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(*input_ids.shape, len(tok))
            for j in range(input_ids.shape[1]):
                if j + 1 < len(full):
                    logits[:, j, full[j + 1]] = 30.0
            return type("Out", (), {"logits": logits})

    got = lambada(Oracle(), tok, write_jsonl(tmp_path / "o.jsonl", [{"text": text}]))
    assert got["acc"] == 1.0 and got["ppl"] < 1.01
    assert split_last_word("a b  c") == ("a b ", " c")


def test_lambada_agrees_with_lm_eval_harness(tmp_path, model_and_tok):
    from ifguide.evaluation.harness import run_lm_eval

    model, tok = model_and_tok
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": t} for t in LAMBADA_TEXTS[:4]])
    mc = write_jsonl(tmp_path / "mc.jsonl", [
        {"query": "The river crossed the", "choices": [" valley", " market"], "label": 0},
        {"query": "A young", "choices": [" cat", " bridge", " road"], "label": 0},
    ])
    ours = lambada(model, tok, path)
    harness = run_lm_eval(model, tok, ["ifguide_lambada", "ifguide_mc"], data={"ifguide_lambada": path, "ifguide_mc": mc})
    assert harness["ifguide_lambada"]["acc"] == pytest.approx(ours["acc"])
    assert harness["ifguide_lambada"]["perplexity"] == pytest.approx(ours["ppl"], rel=1e-4)
    assert 0.0 <= harness["ifguide_mc"]["acc"] <= 1.0
    with pytest.raises(InputError, match="--lm-eval-data ifguide_mc=PATH"):
        run_lm_eval(model, tok, ["ifguide_mc"])


def test_perplexity_blocks_and_text_match_reference(tmp_path, model_and_tok, blocks_dir, tokenizer_dir):
    from ifguide.data.blocks import Blocks

    model, tok = model_and_tok
    ids = torch.tensor(np.asarray(Blocks.open(blocks_dir).input_ids[:5], dtype=np.int64))
    with torch.no_grad():
        nll = [torch.nn.functional.cross_entropy(model(ids[i : i + 1]).logits[0, :-1], ids[i, 1:]) for i in range(5)]
    got = perplexity(model, tok, blocks_dir, max_rows=5, batch_size=2)
    assert got["n_tokens"] == 5 * (ids.shape[1] - 1)
    assert got["ppl"] == pytest.approx(math.exp(float(torch.stack(nll).mean())), rel=1e-4)

    text = tmp_path / "held.txt"
    text.write_text("The river crossed the valley at dawn. A young cat watched the market.")
    stream = tok(text.read_text(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    row = torch.tensor([stream[:8]]), torch.tensor([stream[8:]])
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(r).logits[0, :-1], r[0, 1:], reduction="sum") for r in row]
    got = perplexity(model, tok, text, window=8)
    assert got["n_tokens"] == len(stream) - 2
    assert got["ppl"] == pytest.approx(math.exp(float(sum(losses)) / (len(stream) - 2)), rel=1e-4)

    other = load_tokenizer(tokenizer_dir)
    other.add_tokens(["<new>"])
    with pytest.raises(FingerprintMismatch):
        perplexity(model, other, blocks_dir)
    with pytest.raises(InputError, match="no such file"):
        perplexity(model, tok, tmp_path / "missing.txt")
