"""Streaming readers for corpus documents: .txt, .jsonl, .parquet, directories, HF datasets.

Documents are yielded one at a time so that preparing a corpus larger than RAM works.
Malformed input is an :class:`~ifguide.errors.InputError` naming the file and line; nothing
is silently skipped or repaired.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ifguide.errors import InputError

logger = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
TEXT_FIELD = "text"


@dataclass
class Document:
    text: str
    source: int  # index into the list of inputs
    toxic_spans: list[tuple[int, int]] | None = None  # character spans of known toxic text
    toxic: bool | None = None  # the whole document is known toxic / benign


@dataclass(frozen=True)
class Source:
    """One input: a local file, or a Hugging Face dataset name (``hf:NAME[:CONFIG][@SPLIT]`` or a bare name)."""

    name: str
    local: bool


def resolve_inputs(data: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Expand directories into their supported files (sorted); refuse missing paths."""
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    files: list[Path] = []
    for item in data:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
            if not found:
                raise InputError(f"{p}: directory holds no {'/'.join(SUFFIXES)} files")
            files.extend(found)
        elif p.is_file():
            if p.suffix not in SUFFIXES:
                raise InputError(f"{p}: unsupported file type {p.suffix!r}; expected one of {', '.join(SUFFIXES)}")
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    if not files:
        raise InputError("no input files given")
    return files


def resolve_sources(data: Iterable[str | os.PathLike]) -> list[Source]:
    """Local paths become files; a name that is not a path and looks like a dataset id is a HF dataset."""
    sources: list[Source] = []
    for item in data:
        text = str(item)
        if text.startswith("hf:") or (not Path(text).exists() and "/" in text and not text.startswith((".", "/"))):
            sources.append(Source(text.removeprefix("hf:"), local=False))
        else:
            sources.extend(Source(str(f), local=True) for f in resolve_inputs([item]))
    return sources


def _parse_spans(value, where: str) -> list[tuple[int, int]]:
    if not isinstance(value, list) or not all(
        isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(x, int) for x in s) and s[0] <= s[1]
        for s in value
    ):
        raise InputError(f"{where}: field 'toxic_spans' must be a list of [start, end] character offsets")
    return [(int(a), int(b)) for a, b in value]


def _record_to_document(rec, source: int, where: str, field: str) -> Document:
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if field not in rec:
        raise InputError(f"{where}: missing field {field!r}")
    text = rec[field]
    if not isinstance(text, str):
        raise InputError(f"{where}: field {field!r} must be a string, got {type(text).__name__}")
    spans = _parse_spans(rec["toxic_spans"], where) if rec.get("toxic_spans") is not None else None
    toxic = rec.get("toxic")
    if toxic is not None and not isinstance(toxic, bool):
        raise InputError(f"{where}: field 'toxic' must be true/false")
    return Document(text=text, source=source, toxic_spans=spans, toxic=toxic)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Yield ``("FILE:LINE", record)`` for every non-blank line of a jsonl file.

    A line that is not JSON is an :class:`InputError` naming the file and line; nothing is skipped.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: malformed JSON ({e.msg})") from None


def _iter_jsonl(path: Path, source: int, field: str) -> Iterator[Document]:
    for where, rec in iter_jsonl(path):
        yield _record_to_document(rec, source, where, field)


def _iter_parquet(path: Path, source: int, field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise InputError(f"{path}: parquet file has no column {field!r} (columns: {pf.schema_arrow.names})")
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            row += 1
            yield _record_to_document(rec, source, f"{path}: row {row}", field)


def _iter_hf(name: str, source: int, field: str) -> Iterator[Document]:
    """Stream a Hugging Face dataset: ``NAME[:CONFIG][@SPLIT]`` (split defaults to train)."""
    from datasets import load_dataset

    spec, _, split = name.partition("@")
    path, _, config = spec.partition(":")
    try:
        ds = load_dataset(path, config or None, split=split or "train", streaming=True)
    except Exception as e:  # the hub raises many types; all mean "cannot get this dataset"
        raise InputError(f"{name}: cannot load Hugging Face dataset ({type(e).__name__}: {e})") from None
    for k, rec in enumerate(ds):
        yield _record_to_document(rec, source, f"{name}: record {k}", field)


def iter_documents(
    sources: Iterable[Source | str | os.PathLike],
    *,
    line_docs: bool = False,
    text_field: str = TEXT_FIELD,
) -> Iterator[Document]:
    """Yield the documents of every input in order."""
    for idx, src in enumerate(sources):
        if not isinstance(src, Source):
            src = Source(str(src), local=True)
        if not src.local:
            yield from _iter_hf(src.name, idx, text_field)
            continue
        path = Path(src.name)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        if path.suffix in (".jsonl", ".json"):
            yield from _iter_jsonl(path, idx, text_field)
        elif path.suffix == ".parquet":
            yield from _iter_parquet(path, idx, text_field)
        elif line_docs:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield Document(text=line.rstrip("\n"), source=idx)
        else:
            yield Document(text=path.read_text(encoding="utf-8"), source=idx)
