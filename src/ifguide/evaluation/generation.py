"""Batched nucleus sampling of continuations, as in the paper's toxicity evaluation.

Prompts are left-padded into batches and each is expanded ``samples`` times inside one
``generate`` call (``num_return_sequences``), so the prompt's KV cache is computed once per
batch rather than once per sample. ``seed`` seeds torch before the first batch: the same
seed, batch size and device reproduce the same samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ifguide.errors import InputError
from ifguide.progress import Progress

logger = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """How continuations are sampled (defaults: the paper's)."""

    samples: int = field(default=25, metadata={"help": "continuations sampled per prompt"})
    max_new_tokens: int = field(default=20, metadata={"help": "tokens generated per continuation"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass (top-k is disabled)"})
    batch_size: int = field(default=100, metadata={"help": "sequences (prompts x samples) per generate call"})

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise InputError(f"--samples: must be >= 1, got {self.samples}")
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens: must be >= 1, got {self.max_new_tokens}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"--top-p: must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size: must be >= 1, got {self.batch_size}")

    @property
    def prompts_per_batch(self) -> int:
        return max(1, self.batch_size // self.samples)


def _max_prompt_tokens(model, max_new_tokens: int) -> int | None:
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return None if limit is None else max(1, limit - max_new_tokens)


def sample_continuations(
    model,
    tokenizer,
    prompts: Sequence[str],
    config: SamplingConfig,
    *,
    seed: int,
    logits_processor=None,
    desc: str = "sample",
) -> list[list[str]]:
    """``config.samples`` sampled continuations (text after the prompt) for every prompt.

    ``logits_processor`` (e.g. RAD) is passed to ``generate``; when it has ``reset(prompt_len)``
    it is told where each batch's continuation starts.
    """
    import torch
    from transformers import LogitsProcessorList

    model.eval()
    device = next(model.parameters()).device
    padding_side, truncation_side = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    max_len = _max_prompt_tokens(model, config.max_new_tokens)
    processors = LogitsProcessorList([logits_processor]) if logits_processor is not None else None
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    out: list[list[str]] = []
    step = config.prompts_per_batch
    try:
        for start in Progress(range(0, len(prompts), step), desc=desc, unit="batch"):
            batch = list(prompts[start : start + step])
            enc = tokenizer(
                batch, return_tensors="pt", padding=True, truncation=max_len is not None, max_length=max_len
            ).to(device)
            prompt_len = enc["input_ids"].shape[1]
            if hasattr(logits_processor, "reset"):
                logits_processor.reset(prompt_len)
            with torch.inference_mode():
                generated = model.generate(
                    **enc,
                    do_sample=True,
                    top_p=config.top_p,
                    top_k=0,
                    temperature=1.0,
                    max_new_tokens=config.max_new_tokens,
                    num_return_sequences=config.samples,
                    pad_token_id=tokenizer.pad_token_id,
                    logits_processor=processors,
                    use_cache=True,
                )
            texts = tokenizer.batch_decode(generated[:, prompt_len:], skip_special_tokens=True)
            out.extend(texts[i * config.samples : (i + 1) * config.samples] for i in range(len(batch)))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = padding_side, truncation_side
    return out
