"""Fluency: token-weighted perplexity on held-out text, and LAMBADA last-word accuracy.

LAMBADA is scored exactly as lm-evaluation-harness scores ``lambada_openai``: the context is
the text up to its last space, the target is ``" " + last word``; the target's tokens are
those of ``tokenize(context + target)`` past ``tokenize(context)`` (see :func:`encode_lambada`); an example is correct when the argmax at every
target position is the target token, and perplexity is ``exp(-mean(log p(target)))`` over
examples (the harness's ``perplexity`` aggregation).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ifguide.errors import InputError
from ifguide.progress import Progress

logger = logging.getLogger(__name__)


def _device(model):
    return next(model.parameters()).device


def _context_window(model, default: int = 1024) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or default)


# --------------------------------------------------------------------------- perplexity


def _rows_from_blocks(path: Path, tokenizer) -> list[np.ndarray]:
    from ifguide.artifacts import require_fingerprint
    from ifguide.data.blocks import Blocks
    from ifguide.models import fingerprint_tokenizer

    blocks = Blocks.open(path)
    require_fingerprint(
        blocks.tokenizer_fingerprint, fingerprint_tokenizer(tokenizer), what="tokenizer", where=f"--ppl-data {path}"
    )
    return [np.asarray(row, dtype=np.int64) for row in blocks.input_ids]


def _rows_from_text(path: Path, tokenizer, window: int) -> list[np.ndarray]:
    """Documents joined with EOS (as in training) and cut into windows; the last may be shorter."""
    from ifguide.data.readers import iter_documents, resolve_sources

    if path.suffix in (".jsonl", ".json", ".parquet"):
        texts = (doc.text for doc in iter_documents(resolve_sources([path])))
    else:  # any other file (.txt, WikiText's .raw, ...) is one plain-text document
        texts = iter([path.read_text(encoding="utf-8")])
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    ids = np.asarray(stream, dtype=np.int64)
    rows = [ids[i : i + window] for i in range(0, len(ids), window)]
    return [r for r in rows if len(r) >= 2]


def perplexity(
    model,
    tokenizer,
    data: str | os.PathLike,
    *,
    batch_size: int = 8,
    window: int | None = None,
    max_rows: int | None = None,
) -> dict:
    """Token-weighted perplexity ``exp(sum NLL / n_targets)`` of ``data``.

    ``data`` is a blocks directory (its blocks as they are; the tokenizer must be the one the
    blocks were made with) or a text/jsonl file (tokenised with ``tokenizer``, documents joined
    with EOS, cut into non-overlapping windows of ``window`` tokens, by default the model's
    context). Within each row the first token is context only, never a target.
    Returns ``{"ppl", "nll", "n_tokens", "n_rows"}``.
    """
    import torch

    path = Path(data)
    if not path.exists():
        raise InputError(f"--ppl-data: {path}: no such file or directory")
    if path.is_dir():
        rows = _rows_from_blocks(path, tokenizer)
    else:
        rows = _rows_from_text(path, tokenizer, window or min(_context_window(model), 1024))
    rows = rows[:max_rows] if max_rows else rows
    if not rows:
        raise InputError(f"--ppl-data: {path} holds fewer than two tokens")
    model.eval()
    device = _device(model)
    total_nll, total_n = 0.0, 0
    for start in Progress(range(0, len(rows), batch_size), desc="perplexity", unit="batch"):
        batch = rows[start : start + batch_size]
        width = max(len(r) for r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, : len(r)] = torch.from_numpy(r)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
        )
        target_mask = mask[:, 1:].bool()
        total_nll += float(nll[target_mask].sum())
        total_n += int(target_mask.sum())
    mean = total_nll / total_n
    return {"ppl": float(np.exp(mean)), "nll": mean, "n_tokens": total_n, "n_rows": len(rows)}


# --------------------------------------------------------------------------- LAMBADA


@dataclass(frozen=True)
class LambadaExample:
    context: list[int]
    target: list[int]


def split_last_word(text: str) -> tuple[str, str]:
    """``lambada_openai``'s split: context = words but the last, target = ``" " + last word``."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def encode_lambada(tokenizer, text: str) -> LambadaExample:
    """Context and target token ids, tokenised the way lm-evaluation-harness's HFLM does: the
    tokenizer's default special tokens, trailing whitespace of the context moved to the target,
    and an empty context replaced by the BOS (else EOS) token."""
    context, target = split_last_word(text)
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return LambadaExample([prefix], tokenizer(target)["input_ids"])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, target = context[:-n_spaces], context[-n_spaces:] + target
    whole = tokenizer(context + target)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    return LambadaExample(ctx, whole[len(ctx) :])


def read_lambada(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--lambada: {path}: no such file")
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or not rec["text"].strip():
                raise InputError(f"{path}:{n}: expected {{\"text\": non-empty string}}")
            texts.append(rec["text"])
            if limit and len(texts) >= limit:
                break
    if not texts:
        raise InputError(f"--lambada: {path} holds no examples")
    return texts


def lambada_scores(model, tokenizer, examples: list[LambadaExample], *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per example: target log-probability and whether greedy decoding reproduces the target."""
    import torch

    window = _context_window(model)
    device = _device(model)
    model.eval()
    logprobs, greedy = np.zeros(len(examples)), np.zeros(len(examples), bool)
    for start in Progress(range(0, len(examples), batch_size), desc="lambada", unit="batch"):
        batch = examples[start : start + batch_size]
        seqs = [(ex.context + ex.target)[-(window + 1) :][:-1] for ex in batch]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.inference_mode():
            logp = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1)
        for i, (ex, s) in enumerate(zip(batch, seqs)):
            n = len(ex.target)
            # positions len(s)-n .. len(s)-1 predict the n target tokens
            rows = logp[i, len(s) - n : len(s)]
            target = torch.tensor(ex.target, device=rows.device)
            logprobs[start + i] = float(rows.gather(1, target[:, None]).sum())
            greedy[start + i] = bool((rows.argmax(-1) == target).all())
    return logprobs, greedy


def lambada(model, tokenizer, path: str | os.PathLike, *, batch_size: int = 16, limit: int | None = None) -> dict:
    """LAMBADA (OpenAI version) accuracy and perplexity: ``{"acc", "ppl", "n"}``."""
    examples = [encode_lambada(tokenizer, t) for t in read_lambada(path, limit)]
    logprobs, greedy = lambada_scores(model, tokenizer, examples, batch_size=batch_size)
    return {"acc": float(greedy.mean()), "ppl": float(np.exp(-logprobs.mean())), "n": len(examples)}
