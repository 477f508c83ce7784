"""Query sets: the prompt/continuation pairs whose likelihood influence scores explain.

A query file is JSON lines in one of two forms:

* RealToxicityPrompts: ``{"prompt": {"text": ..., "toxicity": ...}, "continuation": {"text": ...,
  "toxicity": ...}}``. Without an explicit label, a query is *toxic* when the continuation's
  toxicity is ``>= toxic_min`` and *safe* when it is ``<= safe_max``; queries in between are
  left out (and counted).
* Simple: ``{"prompt": str, "continuation": str, "label": "toxic" | "safe"}``.

A ``label`` field always wins over thresholds. A file can also carry a default label (the
``--queries-safe`` file defaults to safe), used only for records with neither a label nor a
toxicity score. A record labelled against its file's role is an error, never dropped silently.

The query loss is the NLL of the continuation tokens only. Prompt and continuation are
tokenised *together* (as the text ``prompt + continuation``), so the tokens are those the
model would see; character offsets decide which tokens belong to the continuation: a token
is a continuation target when it ends after the prompt's last character, i.e. it holds at
least one continuation character. An EOS token is prepended as context, as in the training
blocks where every document follows an EOS.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ifguide.data.readers import iter_jsonl
from ifguide.errors import InputError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
LABELS = ("toxic", "safe")


@dataclass(frozen=True)
class Query:
    """One prompt/continuation pair with its role."""

    prompt: str
    continuation: str
    label: str  # "toxic" or "safe"
    where: str  # file:line, for error messages


@dataclass
class QuerySet:
    """Queries read from one or more files, with the counts that go into meta.json."""

    queries: list[Query] = field(default_factory=list)
    dropped_between_thresholds: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def toxic(self) -> list[Query]:
        return [q for q in self.queries if q.label == "toxic"]

    @property
    def safe(self) -> list[Query]:
        return [q for q in self.queries if q.label == "safe"]

    def counts(self) -> dict[str, int]:
        return {
            "toxic": len(self.toxic),
            "safe": len(self.safe),
            "dropped_between_thresholds": self.dropped_between_thresholds,
        }

    def extend(self, other: "QuerySet") -> None:
        self.queries.extend(other.queries)
        self.dropped_between_thresholds += other.dropped_between_thresholds
        self.sources.extend(other.sources)


def _text_and_toxicity(value, name: str, where: str) -> tuple[str, float | None]:
    """``"text"`` or ``{"text": ..., "toxicity": ...}`` -> (text, toxicity or None)."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        text = value.get("text")
        if not isinstance(text, str):
            raise InputError(f"{where}: field '{name}.text' must be a string")
        tox = value.get("toxicity")
        if tox is not None and not isinstance(tox, (int, float)):
            raise InputError(f"{where}: field '{name}.toxicity' must be a number or null")
        return text, None if tox is None else float(tox)
    raise InputError(f"{where}: field '{name}' must be a string or an object with 'text'")


def _label_of(rec: dict, toxicity: float | None, where: str, *, toxic_min: float, safe_max: float,
              default_label: str | None) -> str | None:
    """The query's role, or None when its toxicity falls between the thresholds."""
    label = rec.get("label")
    if label is not None:
        if label not in LABELS:
            raise InputError(f"{where}: field 'label' must be 'toxic' or 'safe', got {label!r}")
        return label
    if toxicity is not None:
        if toxicity >= toxic_min:
            return "toxic"
        if toxicity <= safe_max:
            return "safe"
        return None
    if default_label is None:
        raise InputError(
            f"{where}: the query has neither a 'label' nor a 'continuation.toxicity' score; "
            "add one of them (or pass it with --queries-safe, where unlabelled queries are safe)"
        )
    return default_label


def read_queries(
    path: str | os.PathLike,
    *,
    toxic_min: float = 0.5,
    safe_max: float = 0.1,
    default_label: str | None = None,
    require_label: str | None = None,
) -> QuerySet:
    """Read a query file (see the module docstring for the formats and the labelling rules).

    ``require_label`` refuses any query whose role is different (the safe-queries file must not
    contain toxic queries).
    """
    if not 0.0 <= safe_max < toxic_min <= 1.0:
        raise InputError(f"thresholds: need 0 <= safe_max < toxic_min <= 1, got safe_max={safe_max}, toxic_min={toxic_min}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such query file")
    out = QuerySet(sources=[str(path)])
    for where, rec in iter_jsonl(path):
        if not isinstance(rec, dict) or "prompt" not in rec or "continuation" not in rec:
            raise InputError(f"{where}: expected an object with 'prompt' and 'continuation'")
        prompt, _ = _text_and_toxicity(rec["prompt"], "prompt", where)
        continuation, toxicity = _text_and_toxicity(rec["continuation"], "continuation", where)
        if not continuation:
            raise InputError(f"{where}: empty continuation (the query loss is over continuation tokens)")
        label = _label_of(rec, toxicity, where, toxic_min=toxic_min, safe_max=safe_max, default_label=default_label)
        if label is None:
            out.dropped_between_thresholds += 1
            continue
        if require_label is not None and label != require_label:
            raise InputError(f"{where}: a {label} query in a file of {require_label} queries")
        out.queries.append(Query(prompt, continuation, label, where))
    if not out.queries:
        raise InputError(f"{path}: no usable queries (toxic_min={toxic_min}, safe_max={safe_max})")
    return out


def tokenize_query(tokenizer, query: Query, *, max_tokens: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a query; labels are ``-100`` except on continuation tokens.

    ``labels[j]`` is the target ``input_ids[j]`` (the model shifts internally), as in
    ``transformers``' causal-LM convention.
    """
    text = query.prompt + query.continuation
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    boundary = len(query.prompt)
    ids = [tokenizer.eos_token_id] + list(enc["input_ids"])
    is_target = [False] + [end > boundary for _start, end in enc["offset_mapping"]]
    if len(ids) > max_tokens:
        raise InputError(f"{query.where}: query is {len(ids)} tokens long, longer than the limit {max_tokens}")
    labels = [tok if target else IGNORE_INDEX for tok, target in zip(ids, is_target)]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise InputError(f"{query.where}: the continuation produced no tokens")
    return ids, labels
