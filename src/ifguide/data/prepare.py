"""Tokenise documents, join them with EOS and cut the stream into fixed blocks of T tokens.

This is the ``group_texts`` recipe of the Hugging Face examples, done in a stream: tokens are
appended to a raw file on disk as documents are tokenised, then copied into ``input_ids.npy``,
so memory does not grow with the corpus. The trailing partial block is dropped (and counted
in meta.json), as ``group_texts`` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ifguide.artifacts import artifact_dir, fingerprint_array, sha256_file, write_meta
from ifguide.data.readers import Document, iter_documents, resolve_sources
from ifguide.errors import InputError

logger = logging.getLogger(__name__)

_BATCH_DOCS = 512
_COPY_ROWS = 1 << 14


def _batched(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for d in docs:
        batch.append(d)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _token_labels(doc: Document, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Per-token ground truth: a token is toxic when its characters overlap a toxic span."""
    labels = np.zeros(len(offsets), dtype=np.uint8)
    if doc.toxic:
        labels[:] = 1
    for s, e in doc.toxic_spans or ():
        for k, (a, b) in enumerate(offsets):
            if a < e and b > s:
                labels[k] = 1
    return labels


def _raw_to_npy(raw: Path, npy: Path, dtype: np.dtype, n_rows: int, block_size: int) -> None:
    src = np.memmap(raw, dtype=dtype, mode="r", shape=(n_rows * block_size,)) if n_rows else None
    dst = np.lib.format.open_memmap(npy, mode="w+", dtype=dtype, shape=(n_rows, block_size))
    for r in range(0, n_rows, _COPY_ROWS):
        rows = min(_COPY_ROWS, n_rows - r)
        dst[r : r + rows] = src[r * block_size : (r + rows) * block_size].reshape(rows, block_size)
    dst.flush()
    del dst, src
    raw.unlink()


def prepare_blocks(
    data: Iterable[str | os.PathLike],
    tokenizer,
    block_size: int,
    out: str | os.PathLike,
    *,
    line_docs: bool = False,
    text_field: str = "text",
    dtype: str = "auto",
    shard: tuple[int, int] | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Write a blocks directory (see :mod:`ifguide.data.blocks`) and return its path.

    ``shard=(i, n)`` keeps documents ``k`` with ``k % n == i`` (document-level round robin), so
    ``n`` independent jobs prepare disjoint parts of a corpus.
    """
    from ifguide.models import fingerprint_tokenizer, load_tokenizer

    if block_size < 2:
        raise InputError(f"--block-size: must be at least 2 (one input and one target), got {block_size}")
    data = list(data)
    if not data:
        raise InputError("--data: no inputs given")
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    if dtype == "auto":
        np_dtype = np.dtype(np.uint16 if len(tok) <= np.iinfo(np.uint16).max + 1 else np.int32)
    elif dtype in ("uint16", "int32"):
        np_dtype = np.dtype(dtype)
        if np_dtype == np.uint16 and len(tok) > 65536:
            raise InputError(f"--dtype uint16 cannot hold a vocabulary of {len(tok)} tokens")
    else:
        raise InputError(f"--dtype: expected auto, uint16 or int32, got {dtype!r}")
    sources = resolve_sources(data)
    eos = tok.eos_token_id

    with artifact_dir(out) as tmp:
        raw_ids, raw_lab = tmp / "input_ids.bin", tmp / "toxic_labels.bin"
        spans: list[tuple[int, int, int]] = []
        n_tokens = n_docs = 0
        any_labels = False
        docs = iter_documents(sources, line_docs=line_docs, text_field=text_field)
        if shard is not None:
            i, n = shard
            docs = (d for k, d in enumerate(docs) if k % n == i)
        with open(raw_ids, "wb") as f_ids, open(raw_lab, "wb") as f_lab, tqdm(
            desc="prepare", unit="tok", unit_scale=True, disable=None
        ) as bar:
            for batch in _batched(docs, _BATCH_DOCS):
                want_offsets = any(d.toxic_spans for d in batch)
                enc = tok(
                    [d.text for d in batch],
                    add_special_tokens=False,
                    return_offsets_mapping=want_offsets,
                    return_attention_mask=False,
                )
                for k, (doc, ids) in enumerate(zip(batch, enc["input_ids"])):
                    ids = np.asarray(ids + [eos], dtype=np_dtype)
                    offsets = enc["offset_mapping"][k] if want_offsets else [(0, 0)] * (len(ids) - 1)
                    labels = _token_labels(doc, offsets)
                    labels = np.append(labels, np.uint8(bool(doc.toxic)))  # the joining EOS
                    any_labels |= doc.toxic_spans is not None or doc.toxic is not None
                    f_ids.write(ids.tobytes())
                    f_lab.write(labels.tobytes())
                    spans.append((n_tokens, n_tokens + len(ids), doc.source))
                    n_tokens += len(ids)
                    n_docs += 1
                bar.update(sum(len(x) + 1 for x in enc["input_ids"]))
        if n_docs == 0:
            raise InputError(f"--data: the corpus is empty (no documents in {', '.join(map(str, data))})")
        n_blocks = n_tokens // block_size
        if n_blocks == 0:
            raise InputError(
                f"--data: the corpus has {n_tokens} tokens, fewer than one block of {block_size}; "
                "give more text or a smaller --block-size"
            )
        _raw_to_npy(raw_ids, tmp / "input_ids.npy", np_dtype, n_blocks, block_size)
        if any_labels:
            # the raw label bytes are 0/1, which is numpy's bool layout
            _raw_to_npy(raw_lab, tmp / "toxic_labels.npy", np.dtype(bool), n_blocks, block_size)
        else:
            raw_lab.unlink()
        np.save(tmp / "doc_spans.npy", np.asarray(spans, dtype=np.int64).reshape(-1, 3))
        ids = np.load(tmp / "input_ids.npy", mmap_mode="r")
        write_meta(
            tmp,
            "blocks",
            args={
                "block_size": block_size,
                "line_docs": line_docs,
                "text_field": text_field,
                "dtype": str(np_dtype),
                "shard": list(shard) if shard else None,
                "tokenizer": str(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tok.name_or_path,
            },
            sources=[s.name for s in sources],
            inputs={s.name: (sha256_file(s.name) if s.local else "hf-dataset") for s in sources},
            tokenizer_fingerprint=fingerprint_tokenizer(tok),
            fingerprint=fingerprint_array(ids),
            block_size=block_size,
            n_blocks=n_blocks,
            n_documents=n_docs,
            n_tokens=n_blocks * block_size,
            n_tokens_dropped=n_tokens - n_blocks * block_size,
            has_toxic_labels=any_labels,
            eos_token_id=eos,
        )
        del ids
    logger.info("prepared %d blocks of %d tokens from %d documents -> %s", n_blocks, block_size, n_docs, out)
    return Path(out)
