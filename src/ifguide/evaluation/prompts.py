"""Prompt files for the toxicity evaluation.

Two jsonl schemas are accepted, one record a line:

* RealToxicityPrompts: ``{"prompt": {"text": str, "toxicity": float | null, ...}, ...}``;
* plain: ``{"prompt": str}``, optionally with ``"toxic": bool`` or ``"toxicity": float``.

A prompt is *toxic* when its toxicity is >= 0.5 (the RTP convention) or ``toxic`` is true;
a prompt without either is in the full set only. Malformed lines are refused, never skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ifguide.artifacts import fingerprint_json
from ifguide.errors import InputError

TOXIC_PROMPT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Prompt:
    text: str
    toxicity: float | None = None
    toxic: bool | None = None  # None: unknown


def _toxicity(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InputError(f"{where}: toxicity must be a number in [0, 1] or null, got {value!r}")
    return float(value)


def parse_prompt(record, where: str) -> Prompt:
    """One jsonl record (either schema) as a :class:`Prompt`."""
    if not isinstance(record, dict) or "prompt" not in record:
        raise InputError(f"{where}: expected an object with a 'prompt' field")
    prompt = record["prompt"]
    if isinstance(prompt, dict):  # RTP schema
        text, toxicity = prompt.get("text"), _toxicity(prompt.get("toxicity"), where + ": prompt.toxicity")
    else:
        text, toxicity = prompt, _toxicity(record.get("toxicity"), where + ": toxicity")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: the prompt text must be a non-empty string")
    flag = record.get("toxic")
    if flag is not None and not isinstance(flag, bool):
        raise InputError(f"{where}: 'toxic' must be true/false, got {flag!r}")
    toxic = flag if flag is not None else (None if toxicity is None else toxicity >= TOXIC_PROMPT_THRESHOLD)
    return Prompt(text=text, toxicity=toxicity, toxic=toxic)


def load_prompts(path: str | os.PathLike, max_prompts: int | None = None) -> list[Prompt]:
    """Read a prompt file (the first ``max_prompts`` prompts when given)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--prompts: {path}: no such file")
    prompts: list[Prompt] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if max_prompts is not None and len(prompts) >= max_prompts:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            prompts.append(parse_prompt(record, f"{path}:{n}"))
    if not prompts:
        raise InputError(f"--prompts: {path} holds no prompts")
    return prompts


def fingerprint_prompts(prompts: list[Prompt]) -> str:
    """sha256 of the prompt texts and toxicity labels (what makes two evaluations comparable)."""
    return fingerprint_json([[p.text, p.toxicity, p.toxic] for p in prompts])
