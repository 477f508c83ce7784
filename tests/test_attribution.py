"""Factors and token-wise influence scores, checked against brute-force autograd references.

With ``strategy="identity"`` kronfluence's score of a training position is the query gradient
dotted with that position's gradient term of each tracked module (``δ_t a_tᵀ`` for the weight,
``δ_t`` for the bias). We recompute exactly that with plain hooks, independently of kronfluence
and of :mod:`ifguide.attribution.task`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TOXIC, build_model, write_jsonl
from ifguide.attribution import FactorConfig, ScoreConfig, compute_scores, discover_modules, fit_factors, linearize_conv1d
from ifguide.data.blocks import Blocks
from ifguide.data.queries import read_queries, tokenize_query

ARCHS = ["gpt-neox", "llama", "gpt2", "qwen2"]
SAFE = ["the river crossed the valley at dawn", "a farmer visited a quiet garden"]


@pytest.fixture(scope="module")
def queries_path(tmp_path_factory):
    recs = [{"prompt": "The market", "continuation": f" {t}", "label": "toxic"} for t in TOXIC]
    recs += [{"prompt": "Our teacher", "continuation": f" {s}", "label": "safe"} for s in SAFE]
    return write_jsonl(tmp_path_factory.mktemp("queries") / "q.jsonl", recs)


# ------------------------------------------------------------------------------ brute-force reference


def _param_module(model, name):
    return model.get_submodule(name)


def brute_force_position_scores(model, modules, input_ids, tok, queries, mode="differential") -> np.ndarray:
    """[B, T] per-position scores: ∇f · (δ_t ⊗ a_t) summed over the tracked modules (bias included)."""
    mods = [_param_module(model, n) for n in modules]
    params = [p for m in mods for p in (m.weight, m.bias) if p is not None]
    # Query gradient of f = mean_toxic(mean NLL) - mean_safe(mean NLL).
    toxic = [q for q in queries if q.label == "toxic"]
    safe = [q for q in queries if q.label == "safe"] if mode == "differential" else []
    f = 0.0
    for group, sign in ((toxic, 1.0), (safe, -1.0)):
        for q in group:
            ids, labels = tokenize_query(tok, q, max_tokens=256)
            ids, labels = torch.tensor([ids]), torch.tensor(labels)
            logits = model(input_ids=ids).logits[0, :-1]
            f = f + sign / len(group) * F.cross_entropy(logits, labels[1:], ignore_index=-100)
    grads = dict(zip(map(id, params), torch.autograd.grad(f, params)))

    acts, outs = {}, {}

    def hook(name):
        def fn(module, inputs, output):
            acts[name] = inputs[0].detach()
            output.retain_grad()
            outs[name] = output

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in zip(modules, mods)]
    ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
    logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum")
    loss.backward()
    for h in handles:
        h.remove()
    total = torch.zeros(ids.shape, dtype=torch.float64)
    for name, m in zip(modules, mods):
        a, d = acts[name].double(), outs[name].grad.double()
        gw = grads[id(m.weight)].double()
        if isinstance(m, torch.nn.Linear):
            total += torch.einsum("bto,oi,bti->bt", d, gw, a)
        else:  # GPT-2 Conv1D: y = a @ W + b with W [in, out]
            total += torch.einsum("bti,io,bto->bt", a, gw, d)
        if m.bias is not None:
            total += torch.einsum("bto,o->bt", d, grads[id(m.bias)].double())
    return total.numpy()


def _identity_factors(model, tokenizer_dir, blocks_dir, out, modules=None):
    return fit_factors(model, blocks_dir, out, FactorConfig(strategy="identity", modules=modules), tokenizer=tokenizer_dir)


# ------------------------------------------------------------------------------------------- modules


@pytest.mark.parametrize("arch", ARCHS)
def test_discovers_block_linears_not_embeddings_or_head(tokenizer_dir, arch):
    model = build_model(tokenizer_dir, arch)
    if arch == "gpt2":
        model = linearize_conv1d(model)
    names = discover_modules(model)
    assert len(names) >= 8, names  # micro models: 2 layers x (attention + MLP projections)
    assert all("head" not in n and "embed" not in n and "wte" not in n for n in names)
    assert discover_modules(model, r"layers?\.0\.|h\.0\.") and set(discover_modules(model, r"layers?\.0\.|h\.0\.")) < set(names)


def test_gpt2_linearized_copy_has_identical_outputs(tokenizer_dir):
    model = build_model(tokenizer_dir, "gpt2").eval()
    converted = linearize_conv1d(model)
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, converted(input_ids=ids).logits, atol=1e-5)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"  # the original is untouched


# ------------------------------------------------------------------------------- brute-force agreement


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_scores_match_brute_force(tmp_path, tokenizer_dir, blocks_dir, queries_path, arch):
    from ifguide.models import load_tokenizer

    model = build_model(tokenizer_dir, arch, seed=1)
    factors = _identity_factors(model, tokenizer_dir, blocks_dir, tmp_path / "factors")
    out = compute_scores(model, blocks_dir, queries_path, factors, tmp_path / "scores",
                         ScoreConfig(batch_size=32), tokenizer=tokenizer_dir)
    scores = np.load(out / "scores.npy")
    blocks = Blocks.open(blocks_dir)
    assert scores.shape == blocks.shape and scores.dtype == np.float32
    assert np.isnan(scores[:, 0]).all() and not np.isnan(scores[:, 1:]).any()

    modules = json.loads((factors / "meta.json").read_text())["modules"]
    if arch == "gpt2":  # the reference hooks the original Conv1D modules, which keep the same names
        assert all(isinstance(model.get_submodule(n), torch.nn.Module) for n in modules)
    rows = slice(0, 12)
    ref = brute_force_position_scores(model.eval(), modules, blocks.input_ids[rows], load_tokenizer(tokenizer_dir),
                                      read_queries(queries_path).queries)
    assert np.abs(ref[:, -1]).max() < 1e-6 * np.abs(ref).max()  # the last position has no gradient
    ours, theirs = scores[rows, 1:].ravel(), ref[:, :-1].ravel()  # alignment "next": position t -> target t+1
    assert np.corrcoef(ours, theirs)[0, 1] >= 0.999
    big = np.abs(theirs) > 1e-3 * np.abs(theirs).max()
    assert (np.sign(ours[big]) == np.sign(theirs[big])).all()


def test_same_alignment_and_document_granularity(tmp_path, tokenizer_dir, blocks_dir, queries_path):
    model = build_model(tokenizer_dir, "gpt-neox", seed=2)
    factors = _identity_factors(model, tokenizer_dir, blocks_dir, tmp_path / "factors")
    run = lambda name, **kw: np.load(compute_scores(model, blocks_dir, queries_path, factors, tmp_path / name,
                                                    ScoreConfig(batch_size=32, **kw), tokenizer=tokenizer_dir) / "scores.npy")
    nxt, same, doc = run("next"), run("same", alignment="same"), run("doc", granularity="document")
    # Same per-position scores, one column apart; "same" has no score for token 0 and keeps position T-1 (~0).
    np.testing.assert_allclose(same[:, 1:-1], nxt[:, 2:], rtol=1e-5, atol=1e-6)
    assert np.isnan(same[:, 0]).all() and np.abs(same[:, -1]).max() < 1e-4 * np.nanmax(np.abs(same))
    # A block's score is the sum of its token scores, broadcast over its targets.
    np.testing.assert_allclose(doc[:, 1], np.nansum(nxt, axis=1), rtol=1e-3, atol=1e-3 * np.abs(doc[:, 1]).max())
    assert np.isnan(doc[:, 0]).all() and (doc[:, 1:] == doc[:, 1:2]).all()


def test_positive_score_means_training_makes_toxic_more_likely(tmp_path, tokenizer_dir, blocks_dir, queries_path):
    """Identity curvature: an SGD step of size η on a block changes f (toxic − safe NLL) by −η·score."""
    from ifguide.models import load_tokenizer

    model = build_model(tokenizer_dir, "gpt-neox", seed=3)
    factors = _identity_factors(model, tokenizer_dir, blocks_dir, tmp_path / "factors")
    out = compute_scores(model, blocks_dir, queries_path, factors, tmp_path / "doc",
                         ScoreConfig(granularity="document", batch_size=32), tokenizer=tokenizer_dir)
    block_scores = np.load(out / "scores.npy")[:, 1]
    modules = json.loads((factors / "meta.json").read_text())["modules"]
    tok, queries = load_tokenizer(tokenizer_dir), read_queries(queries_path).queries
    blocks = Blocks.open(blocks_dir)

    def measurement(m):
        total = 0.0
        for label, sign in (("toxic", 1.0), ("safe", -1.0)):
            group = [q for q in queries if q.label == label]
            for q in group:
                ids, labels = tokenize_query(tok, q, max_tokens=256)
                logits = m(input_ids=torch.tensor([ids])).logits[0, :-1]
                total += sign / len(group) * F.cross_entropy(logits, torch.tensor(labels[1:]), ignore_index=-100).item()
        return total

    eta = 1e-4
    for i in (int(np.argmax(block_scores)), int(np.argmin(block_scores))):
        stepped = build_model(tokenizer_dir, "gpt-neox", seed=3).eval()
        ids = torch.as_tensor(np.asarray(blocks.input_ids[i : i + 1], dtype=np.int64))
        logits = stepped(input_ids=ids).logits
        loss = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        params = [p for n in modules for p in stepped.get_submodule(n).parameters()]
        with torch.no_grad():
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p -= eta * g
        with torch.no_grad():
            change = measurement(stepped) - measurement(model.eval())
        assert np.sign(change) == -np.sign(block_scores[i])
        assert change == pytest.approx(-eta * block_scores[i], rel=0.1)


def test_mask_from_a_score_penalises_exactly_the_scored_target(tmp_path, tokenizer_dir, blocks_dir, queries_path):
    """Scores and training masks share coordinates: a mask built from score [i, c] makes the penalty
    term the CE of target token input_ids[i, c], and that term's gradient is what the score measured.

    Only the output head is tracked: there the gradient of position t is exactly ∇CE_t (no mixing
    across positions after it), so a one-position drift between scores and masks breaks the equality.
    """
    from ifguide.models import load_tokenizer
    from ifguide.training.objective import suppression_loss

    model = build_model(tokenizer_dir, "gpt-neox", seed=4).eval()
    factors = _identity_factors(model, tokenizer_dir, blocks_dir, tmp_path / "factors", modules=r"^lm_head$")
    out = compute_scores(model, blocks_dir, queries_path, factors, tmp_path / "s",
                         ScoreConfig(mode="toxic-only", batch_size=32), tokenizer=tokenizer_dir)
    scores = np.load(out / "scores.npy")
    blocks = Blocks.open(blocks_dir)
    i = int(np.nanargmax(np.nanmax(scores, axis=1)))
    ids = torch.as_tensor(np.asarray(blocks.input_ids[i : i + 1], dtype=np.int64))
    head = model.get_output_embeddings().weight

    tok, queries = load_tokenizer(tokenizer_dir), read_queries(queries_path).toxic
    f = 0.0
    for q in queries:
        q_ids, q_labels = tokenize_query(tok, q, max_tokens=256)
        logits = model(input_ids=torch.tensor([q_ids])).logits[0, :-1]
        f = f + F.cross_entropy(logits, torch.tensor(q_labels[1:]), ignore_index=-100) / len(queries)
    (g_query,) = torch.autograd.grad(f, [head])

    logits = model(input_ids=ids).logits
    unmasked = suppression_loss(logits, ids, None, lam=1.0)
    predicted = []
    for c in range(1, ids.shape[1]):
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, c] = True
        parts = suppression_loss(logits, ids, mask, lam=1.0, return_parts=True)
        expected_ce = F.cross_entropy(logits[0, c - 1 : c], ids[0, c : c + 1])
        assert parts.toxic_ce_sum.item() == pytest.approx(expected_ce.item(), rel=1e-5)
        # The penalty moves the loss by 2·CE_c/n; its gradient dotted with the query gradient is the score (×2/n).
        penalised = unmasked - suppression_loss(logits, ids, mask, lam=1.0)
        (g_term,) = torch.autograd.grad(penalised, [head], retain_graph=True)
        predicted.append((g_query * g_term).sum().item() * (ids.shape[1] - 1) / 2)
    np.testing.assert_allclose(scores[i, 1:], predicted, rtol=1e-3, atol=1e-4 * np.abs(predicted).max())


# ------------------------------------------------------------------------------ CLI, checks, resuming


def test_cli_ekfac_end_to_end_and_reuse(tmp_path, model_dir, blocks_dir, queries_path, caplog):
    from ifguide.cli import main

    factors, scores = tmp_path / "factors", tmp_path / "scores"
    assert main(["fit-factors", "--model", model_dir, "--blocks", blocks_dir, "--out", str(factors),
                 "--max-blocks", "24", "--batch-size", "12"]) == 0
    meta = json.loads((factors / "meta.json").read_text())
    assert meta["stage"] == "factors" and meta["strategy"] == "ekfac" and meta["n_blocks_fitted"] == 24
    assert not (tmp_path / "factors.partial").exists()
    argv = ["score", "--model", model_dir, "--blocks", blocks_dir, "--queries", queries_path,
            "--factors", str(factors), "--out", str(scores), "--batch-size", "32", "--scores-dtype", "float16"]
    assert main(argv) == 0
    arr = np.load(scores / "scores.npy")
    meta = json.loads((scores / "meta.json").read_text())
    assert arr.dtype == np.float16 and np.isfinite(arr[:, 1:]).all()
    assert meta["stage"] == "scores" and meta["query_counts"]["toxic"] == 3 and meta["query_counts"]["safe"] == 2
    assert meta["alignment_mode"] == "next" and "column 0 is NaN" in meta["alignment"]
    for key in ("blocks_fingerprint", "model_fingerprint", "tokenizer_fingerprint", "fingerprint", "normalisation"):
        assert meta[key]
    created = meta["created"]
    caplog.set_level("INFO")
    assert main(argv) == 0  # finished and matching: reused, not recomputed
    assert json.loads((scores / "meta.json").read_text())["created"] == created
    assert "up to date" in caplog.text


def test_cli_refuses_blocks_of_another_tokenizer(tmp_path, model_dir, corpus_path, queries_path):
    from ifguide.cli import main
    from ifguide.data.prepare import prepare_blocks
    from ifguide.data.tokenizer import train_tokenizer

    other_tok = train_tokenizer([corpus_path], vocab_size=300, out=tmp_path / "tok300")
    other_blocks = prepare_blocks([corpus_path], tmp_path / "tok300", block_size=32, out=tmp_path / "blocks300")
    del other_tok, other_blocks
    out = tmp_path / "factors"
    rc = main(["fit-factors", "--model", model_dir, "--blocks", str(tmp_path / "blocks300"), "--out", str(out)])
    assert rc == 2 and not out.exists() and not (tmp_path / "factors.partial").exists()
    rc = main(["score", "--model", model_dir, "--blocks", str(tmp_path / "blocks300"), "--queries", queries_path,
               "--factors", str(out), "--out", str(tmp_path / "scores")])
    assert rc == 2 and not (tmp_path / "scores").exists()


def test_interrupted_scoring_resumes_from_finished_chunks(tmp_path, tokenizer_dir, blocks_dir, queries_path, monkeypatch):
    import ifguide.attribution.scores as scores_mod

    model = build_model(tokenizer_dir, "gpt-neox", seed=5)
    factors = _identity_factors(model, tokenizer_dir, blocks_dir, tmp_path / "factors")
    config = ScoreConfig(batch_size=32, chunk_blocks=61)  # two chunks
    reference = np.load(compute_scores(model, blocks_dir, queries_path, factors, tmp_path / "ref", ScoreConfig(batch_size=32),
                                       tokenizer=tokenizer_dir) / "scores.npy")

    real, calls = scores_mod._score_chunk, []

    def crash_on_second(analyzer, query_ds, rows, chunk, cfg, block_size):
        calls.append(chunk)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(analyzer, query_ds, rows, chunk, cfg, block_size)

    monkeypatch.setattr(scores_mod, "_score_chunk", crash_on_second)
    out = tmp_path / "scores"
    with pytest.raises(KeyboardInterrupt):
        compute_scores(model, blocks_dir, queries_path, factors, out, config, tokenizer=tokenizer_dir)
    assert not out.exists() and (tmp_path / "scores.partial" / "scores.npy").exists()
    calls.clear()
    compute_scores(model, blocks_dir, queries_path, factors, out, config, tokenizer=tokenizer_dir)
    assert calls == [1]  # chunk 0 was already on disk
    np.testing.assert_allclose(np.load(out / "scores.npy"), reference, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "scores.partial").exists()


def test_factors_of_another_model_are_refused(tmp_path, tokenizer_dir, blocks_dir, queries_path):
    from ifguide.errors import FingerprintMismatch

    factors = _identity_factors(build_model(tokenizer_dir, "gpt-neox", seed=6), tokenizer_dir, blocks_dir, tmp_path / "f")
    with pytest.raises(FingerprintMismatch, match="model fingerprint"):
        compute_scores(build_model(tokenizer_dir, "gpt-neox", seed=7), blocks_dir, queries_path, factors,
                       tmp_path / "s", tokenizer=tokenizer_dir)


def test_torchrun_on_cpu_is_refused(monkeypatch, tmp_path, model_dir, blocks_dir):
    from ifguide.errors import InputError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="--shard"):
        fit_factors(model_dir, blocks_dir, tmp_path / "f")
