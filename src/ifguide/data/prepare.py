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

from ifguide.artifacts import artifact_dir, fingerprint_array, sha256_file, write_meta
from ifguide.data.readers import Document, iter_documents, resolve_sources
from ifguide.errors import InputError
from ifguide.progress import Progress

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
        with open(raw_ids, "wb") as f_ids, open(raw_lab, "wb") as f_lab, Progress(
            desc="prepare", unit="tok", unit_scale=True
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


def merge_blocks(shards: Iterable[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Concatenate blocks directories prepared as shards (``prepare --shard i/n``) into one.

    Rows are concatenated in the order given; document spans are shifted into the merged stream
    (spans of a shard's dropped tail are cut at its last kept token). All shards must share the
    tokenizer, block size and dtype.
    """
    from ifguide.data.blocks import Blocks

    parts = [Blocks.open(s) for s in shards]
    if not parts:
        raise InputError("prepare --merge: give the shard directories to merge")
    first = parts[0]
    for p in parts[1:]:
        for key, what in (("tokenizer_fingerprint", "tokenizer"), ("block_size", "block size")):
            if p.meta.get(key) != first.meta.get(key):
                raise InputError(f"prepare --merge: {p.path} has another {what} than {first.path}")
        if p.input_ids.dtype != first.input_ids.dtype:
            raise InputError(f"prepare --merge: {p.path} stores {p.input_ids.dtype}, {first.path} {first.input_ids.dtype}")
    labelled = [p.toxic_labels is not None for p in parts]
    n_rows, T = sum(p.n_blocks for p in parts), first.block_size
    with artifact_dir(out) as tmp:
        ids = np.lib.format.open_memmap(tmp / "input_ids.npy", mode="w+", dtype=first.input_ids.dtype, shape=(n_rows, T))
        # a shard without labels had no labelled document: in a merged labelled corpus its tokens are 0, as
        # prepare itself writes for unlabelled documents next to labelled ones
        labels = np.lib.format.open_memmap(tmp / "toxic_labels.npy", mode="w+", dtype=bool, shape=(n_rows, T)) if any(labelled) else None
        spans, row, sources = [], 0, []
        for p in parts:
            for r in range(0, p.n_blocks, _COPY_ROWS):
                rows = slice(r, min(r + _COPY_ROWS, p.n_blocks))
                ids[row + rows.start : row + rows.stop] = p.input_ids[rows]
                if labels is not None:
                    labels[row + rows.start : row + rows.stop] = p.toxic_labels[rows] if p.toxic_labels is not None else False
            kept = p.n_blocks * T
            s = np.asarray(p.doc_spans, dtype=np.int64).copy()
            s = s[s[:, 0] < kept]
            s[:, 1] = np.minimum(s[:, 1], kept)
            s[:, :2] += row * T
            s[:, 2] += len(sources)
            spans.append(s)
            sources += p.meta.get("sources", [])
            row += p.n_blocks
        ids.flush()
        np.save(tmp / "doc_spans.npy", np.concatenate(spans))
        del ids, labels
        merged = np.load(tmp / "input_ids.npy", mmap_mode="r")
        write_meta(
            tmp, "blocks",
            args={"merged_from": [str(p.path) for p in parts], "block_size": T},
            sources=sources, inputs={str(p.path): p.fingerprint for p in parts},
            tokenizer_fingerprint=first.tokenizer_fingerprint, fingerprint=fingerprint_array(merged),
            block_size=T, n_blocks=n_rows, n_documents=int(sum(len(s) for s in spans)), n_tokens=n_rows * T,
            n_tokens_dropped=int(sum(p.meta.get("n_tokens_dropped", 0) for p in parts)),
            has_toxic_labels=any(labelled), eos_token_id=first.meta.get("eos_token_id"),
        )
        del merged
    logger.info("merged %d shards into %d blocks -> %s", len(parts), n_rows, out)
    return Path(out)
