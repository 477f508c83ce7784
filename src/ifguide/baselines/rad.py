"""Reward-augmented decoding (RAD; Deng & Raffel, EMNLP 2023) as a ``transformers`` logits processor.

At every step the top-k candidate tokens of each sequence are re-scored by a reward model and
their logits become ``logit + beta * reward``; as in the paper, tokens outside the top-k are
set to ``-inf`` (``outside="mask"``), or left unchanged with ``outside="keep"``. The reward is
``1 - toxicity(text + candidate)`` from any scorer of :mod:`ifguide.evaluation.scorers`
(``hf:DIR`` loads any sequence classifier, e.g. a converted RAD reward model), scored in one
batch of ``k * batch`` strings per step. By default the text is the continuation generated so
far (``score_prompt=False``, the caller tells where it starts via :meth:`reset`; the
evaluation does); with ``score_prompt=True`` it is the whole sequence.

Note: ``generate`` applies its own warpers (top-p) before custom processors, so under nucleus
sampling the candidates are the top-k of the nucleus. Candidates already at ``-inf`` stay there.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from ifguide.errors import InputError
from ifguide.evaluation.scorers import Scorer, get_scorer

OUTSIDE_MODES = ("mask", "keep")


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

    def reset(self, prompt_len: int) -> None:
        """Start of a new ``generate`` call whose (padded) prompts are ``prompt_len`` tokens long."""
        self.prompt_len = prompt_len

    def candidate_texts(self, input_ids: torch.LongTensor, candidates: torch.LongTensor) -> list[str]:
        """The text each candidate would make, ``[batch * k]`` in row-major order."""
        start = 0 if self.score_prompt else self.prompt_len
        prefixes = input_ids[:, start:].tolist()
        sequences = [p + [c] for p, row in zip(prefixes, candidates.tolist()) for c in row]
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = min(self.k, scores.shape[-1])
        top_logits, candidates = scores.topk(k, dim=-1)
        toxicity = self.scorer.score(self.candidate_texts(input_ids, candidates))["toxicity"]
        reward = 1.0 - torch.as_tensor(toxicity, dtype=scores.dtype, device=scores.device).view_as(top_logits)
        base = torch.full_like(scores, -float("inf")) if self.outside == "mask" else scores.clone()
        return base.scatter(-1, candidates, top_logits + self.beta * reward)
