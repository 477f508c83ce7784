"""Reward-augmented decoding (RAD; Deng & Raffel, EMNLP 2023) as a ``transformers`` logits processor.

At every step the top-k candidate tokens of each sequence are re-scored by a reward model and
their logits become ``logit + beta * reward``; as in the paper, tokens outside the top-k are
set to ``-inf`` (``outside="mask"``), or left unchanged with ``outside="keep"``. The reward is
``1 - toxicity(text + candidate)`` from any scorer of :mod:`ifguide.evaluation.scorers`
(``hf:DIR`` loads any sequence classifier, e.g. a converted RAD reward model), scored in one
batch of ``k * batch`` strings per step. By default the text is the continuation generated so
far (``score_prompt=False``, the caller tells where it starts via :meth:`reset`; the
evaluation does); with ``score_prompt=True`` it is the whole sequence.

When the reward is a *causal* sequence classifier (GPT-NeoX, Llama, GPT-2, Qwen2, ... with a
``score`` head, e.g. one from ``ifguide reward-model``) that shares the language model's
vocabulary, the candidates are scored as RAD's paper does it: the classifier keeps a key/value
cache of each continuation and reads one token per sequence and one per candidate at each step,
instead of decoding, re-tokenising and re-reading ``k`` texts per sequence. The result is the
same (the classifier pools the last token's hidden state, which a causal model computes from the
tokens up to it only); ``tests/test_rad.py`` checks it against full forward passes.

Note: ``generate`` applies its own warpers (top-p) before custom processors, so under nucleus
sampling the candidates are the top-k of the nucleus. Candidates already at ``-inf`` stay there.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from ifguide.errors import InputError
from ifguide.evaluation.scorers import HFClassifierScorer, Scorer, get_scorer

OUTSIDE_MODES = ("mask", "keep")
# Classifier families whose backbone is a causal decoder with a key/value cache and a `score` head.
CAUSAL_CLASSIFIER_TYPES = ("gpt_neox", "llama", "gpt2", "qwen2", "mistral", "gemma", "phi3")


class CachedClassifierReward:
    """Toxicity of ``continuation + candidate`` for every top-k candidate, from a causal sequence
    classifier that reads each new token once (see the module docstring)."""

    max_rows = 1024  # candidate rows per forward pass, to bound the expanded cache's memory

    def __init__(self, scorer: HFClassifierScorer) -> None:
        self.backbone = scorer.model.base_model
        self.head = scorer.model.score
        self.toxic_index, self.sigmoid = scorer.toxic_index, scorer.sigmoid
        self.reset()

    @staticmethod
    def applies(scorer: Scorer, tokenizer) -> bool:
        """Whether ``scorer`` can score token ids of ``tokenizer`` directly, with the same result."""
        if not isinstance(scorer, HFClassifierScorer) or not hasattr(scorer.model, "score"):
            return False
        if scorer.model.config.model_type not in CAUSAL_CLASSIFIER_TYPES:
            return False
        tok = scorer.tokenizer
        adds_special = tok("a b")["input_ids"] != tok("a b", add_special_tokens=False)["input_ids"]
        return not adds_special and tok.get_vocab() == tokenizer.get_vocab()

    def reset(self) -> None:
        self.cache, self.seen = None, 0

    @torch.inference_mode()
    def __call__(self, continuation: torch.LongTensor, candidates: torch.LongTensor) -> torch.Tensor:
        """``[B, k]`` toxicity; ``continuation`` is ``[B, L]``, growing by one token per call."""
        from transformers import DynamicCache

        device = next(self.backbone.parameters()).device
        new = continuation[:, self.seen :].to(device)
        if new.shape[1]:  # the tokens sampled since the last call (one, after the first step)
            past = self.cache if self.cache is not None else DynamicCache()
            self.cache = self.backbone(input_ids=new, past_key_values=past, use_cache=True).past_key_values
            self.seen = continuation.shape[1]
        n, k = candidates.shape
        out = []
        step = max(1, self.max_rows // k)
        for start in range(0, n, step):
            rows = torch.arange(start, min(n, start + step), device=device)
            cache = None
            if self.cache is not None:  # each sequence's cache, once per candidate
                cache = DynamicCache()
                for i, layer in enumerate(self.cache.layers):
                    cache.update(layer.keys[rows].repeat_interleave(k, 0), layer.values[rows].repeat_interleave(k, 0), i)
            ids = candidates[rows.cpu()].reshape(-1, 1).to(device)
            hidden = self.backbone(input_ids=ids, past_key_values=cache, use_cache=cache is not None).last_hidden_state
            logits = self.head(hidden[:, -1]).float()
            probs = logits.sigmoid() if self.sigmoid else logits.softmax(-1)
            out.append(probs[:, self.toxic_index].view(-1, k))
        return torch.cat(out).cpu()


class RewardAugmentedLogits(LogitsProcessor):
    """``logit + beta * (1 - toxicity)`` on the top-k candidates; see the module docstring."""

    def __init__(
        self,
        tokenizer,
        scorer: str | Scorer = "profanity-check",
        *,
        k: int = 20,
        beta: float = 10.0,
        outside: str = "mask",
        score_prompt: bool = False,
    ) -> None:
        if k < 1:
            raise InputError(f"--rad-k: must be >= 1, got {k}")
        if beta < 0:
            raise InputError(f"--rad-beta: must be >= 0, got {beta}")
        if outside not in OUTSIDE_MODES:
            raise InputError(f"RAD outside: expected one of {OUTSIDE_MODES}, got {outside!r}")
        self.tokenizer = tokenizer
        self.scorer = get_scorer(scorer)
        self.k, self.beta, self.outside, self.score_prompt = k, beta, outside, score_prompt
        self.prompt_len = 0
        # scoring whole (left-padded) sequences would need attention masks: texts then
        self.cached = (
            CachedClassifierReward(self.scorer)
            if not score_prompt and CachedClassifierReward.applies(self.scorer, tokenizer) else None
        )

    def reset(self, prompt_len: int) -> None:
        """Start of a new ``generate`` call whose (padded) prompts are ``prompt_len`` tokens long."""
        self.prompt_len = prompt_len
        if self.cached is not None:
            self.cached.reset()

    def candidate_toxicity(self, input_ids: torch.LongTensor, candidates: torch.LongTensor) -> torch.Tensor:
        """``[batch, k]`` toxicity of the text each candidate would make."""
        if self.cached is not None:
            return self.cached(input_ids[:, self.prompt_len :], candidates)
        toxicity = self.scorer.score(self.candidate_texts(input_ids, candidates))["toxicity"]
        return torch.as_tensor(toxicity).view_as(candidates)

    def candidate_texts(self, input_ids: torch.LongTensor, candidates: torch.LongTensor) -> list[str]:
        """The text each candidate would make, ``[batch * k]`` in row-major order."""
        start = 0 if self.score_prompt else self.prompt_len
        prefixes = input_ids[:, start:].tolist()
        sequences = [p + [c] for p, row in zip(prefixes, candidates.tolist()) for c in row]
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = min(self.k, scores.shape[-1])
        top_logits, candidates = scores.topk(k, dim=-1)
        toxicity = self.candidate_toxicity(input_ids, candidates)
        reward = 1.0 - toxicity.to(dtype=scores.dtype, device=scores.device)
        base = torch.full_like(scores, -float("inf")) if self.outside == "mask" else scores.clone()
        return base.scatter(-1, candidates, top_logits + self.beta * reward)
