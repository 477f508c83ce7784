"""RAD on a micro model: a flagged candidate that the model prefers is steered away from."""

from __future__ import annotations

import pytest
import torch

from ifguide.baselines.rad import RewardAugmentedLogits
from ifguide.errors import InputError
from ifguide.evaluation.generation import SamplingConfig, sample_continuations
from ifguide.evaluation.scorers import WordlistScorer
from ifguide.models import load_model, load_tokenizer

FLAGGED = " stupid"


@pytest.fixture()
def biased_model(model_dir):
    """The micro model with the flagged token pushed to the top of every step's logits."""
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    (bad,) = tok(FLAGGED, add_special_tokens=False)["input_ids"]
    model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out.index_add(
        -1, torch.tensor([bad]), torch.full((*out.shape[:-1], 1), 50.0)))
    return model, tok, bad


def test_processor_demotes_flagged_top_candidate(biased_model):
    model, tok, bad = biased_model
    ids = tok(["The old bridge", "A farmer visited"], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        scores = model(ids).logits[:, -1]
    assert (scores.argmax(-1) == bad).all()
    rad = RewardAugmentedLogits(tok, WordlistScorer(["stupid"]), k=5, beta=100.0)
    rad.reset(ids.shape[1] - 1)  # the continuation so far is the last prompt token
    out = rad(ids, scores.clone())
    assert not (out.argmax(-1) == bad).any()
    top = scores.topk(5, -1).indices
    assert torch.isfinite(out).sum(-1).tolist() == [5, 5]  # outside the top-k is masked (paper)
    kept = out.gather(-1, top) - scores.gather(-1, top)
    assert torch.allclose(kept[top != bad], torch.tensor(100.0))  # reward 1 for clean candidates
    assert torch.allclose(kept[top == bad], torch.tensor(0.0))  # reward 0 for the flagged one
    # beta = 0 leaves the ranking alone; outside="keep" leaves other logits unchanged
    assert (RewardAugmentedLogits(tok, WordlistScorer(["stupid"]), k=5, beta=0.0)(ids, scores.clone()).argmax(-1) == bad).all()
    keep = RewardAugmentedLogits(tok, WordlistScorer(["stupid"]), k=5, beta=1.0, outside="keep")(ids, scores.clone())
    assert torch.isfinite(keep).all()


def test_rad_steers_generation(biased_model):
    model, tok, bad = biased_model
    cfg = SamplingConfig(samples=2, max_new_tokens=4, top_p=1.0, batch_size=4)
    prompts = ["The old bridge", "A farmer visited the"]
    plain = sample_continuations(model, tok, prompts, cfg, seed=0)
    assert all("stupid" in c for group in plain for c in group)
    rad = RewardAugmentedLogits(tok, WordlistScorer(["stupid"]), k=10, beta=100.0)
    steered = sample_continuations(model, tok, prompts, cfg, seed=0, logits_processor=rad)
    assert all("stupid" not in c for group in steered for c in group)


def test_rad_validates_arguments(model_dir):
    tok = load_tokenizer(model_dir)
    with pytest.raises(InputError, match="--rad-k"):
        RewardAugmentedLogits(tok, "wordlist", k=0)
    with pytest.raises(InputError, match="outside"):
        RewardAugmentedLogits(tok, "wordlist", outside="drop")
    with pytest.raises(InputError, match="unknown scorer"):
        RewardAugmentedLogits(tok, "nope")


def test_evaluate_with_rad_decoding(tmp_path, model_dir):
    import json

    from conftest import write_jsonl
    from ifguide.evaluation.evaluate import EvalConfig, evaluate

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "The old bridge"}, {"prompt": "shut up you", "toxic": True}])
    cfg = EvalConfig(scorer="wordlist", samples=2, max_new_tokens=3, seeds=(1,), decoding="rad", rad_k=4, rad_beta=5.0)
    results = evaluate(model_dir, prompts, tmp_path / "ev", cfg)
    assert results["decoding"]["rad"] == {"k": 4, "beta": 5.0, "scorer": "wordlist", "outside": "mask"}
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["decoding"]["method"] == "rad"


def _causal_classifier(tokenizer_dir, arch: str):
    """A micro causal sequence classifier (random weights) sharing the language model's tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from ifguide.evaluation.scorers import HFClassifierScorer
    from ifguide.models import make_config

    tok = load_tokenizer(tokenizer_dir)
    cfg = make_config(arch, "micro", len(tok), bos_id=tok.eos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    cfg.num_labels = 2
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    return HFClassifierScorer(model, tok, toxic_index=1, name="micro"), model, tok


@pytest.mark.parametrize("arch", ["gpt-neox", "llama"])
def test_cached_reward_equals_full_forward_passes_over_a_growing_continuation(tokenizer_dir, arch):
    """The key/value-cached reward gives, at every step, what the classifier gives when it reads
    each prompt-free text (continuation + candidate) from scratch."""
    scorer, model, tok = _causal_classifier(tokenizer_dir, arch)
    rad = RewardAugmentedLogits(tok, scorer, k=4)
    assert rad.cached is not None  # a causal classifier with the same vocabulary: the fast path
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, len(tok), (3, 5), generator=g)
    rad.reset(prompt.shape[1])
    ids = prompt
    for _ in range(4):
        candidates = torch.randint(3, len(tok), (3, 4), generator=g)
        fast = rad.candidate_toxicity(ids, candidates)
        cont = ids[:, prompt.shape[1]:]
        texts = torch.cat([cont.repeat_interleave(4, 0), candidates.reshape(-1, 1)], dim=1)
        with torch.no_grad():  # equal lengths, no padding: every row is read as it is
            ref = model(input_ids=texts).logits.softmax(-1)[:, 1].view(3, 4)
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
        ids = torch.cat([ids, candidates[:, :1]], dim=1)  # the sampled token: one per step


def test_cached_reward_needs_a_causal_classifier_with_the_same_vocabulary(tokenizer_dir, corpus_path, tmp_path):
    from ifguide.baselines.rad import CachedClassifierReward
    from ifguide.data.tokenizer import train_tokenizer

    scorer, _, tok = _causal_classifier(tokenizer_dir, "gpt-neox")
    other = train_tokenizer([corpus_path], vocab_size=260, out=tmp_path / "other")
    assert CachedClassifierReward.applies(scorer, tok) and not CachedClassifierReward.applies(scorer, other)
    assert not CachedClassifierReward.applies(WordlistScorer(["stupid"]), tok)
    assert RewardAugmentedLogits(tok, scorer, k=4, score_prompt=True).cached is None  # padded prompts: texts
