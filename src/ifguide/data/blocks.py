"""Reading a prepared corpus: fixed-length token blocks on disk.

A blocks directory (written by :func:`ifguide.data.prepare.prepare_blocks`) holds

``input_ids.npy``
    int32 or uint16 array [N, T], memory-mapped on read. Block ``i`` is row ``i``.
``doc_spans.npy``
    int64 [D, 3]: for each document, ``(start, end, source)`` offsets into the flattened
    token stream (``input_ids.reshape(-1)``; ``end`` exclusive, the joining EOS included)
    and the index of its input in ``meta["sources"]``. Tokens past ``N*T`` were dropped.
``toxic_labels.npy`` (optional)
    bool [N, T]: ground-truth toxicity of each token, present when the input records carried
    ``toxic_spans`` or ``toxic`` fields (the demo world and the benchmarks).
``meta.json``
    stage ``"blocks"``; ``fingerprint`` (of ``input_ids``), ``tokenizer_fingerprint``,
    ``block_size``, ``n_blocks``, sizes, and sha256 of the inputs.

Coordinates: ``input_ids[i, j]`` is token ``j`` of block ``i``. Everything aligned with the
blocks (scores, masks, labels) uses *target coordinates*: entry ``[i, j]`` concerns token
``input_ids[i, j]`` as the target of the next-token loss ``-log p(x_j | x_<j)``. Column 0 is
never a target inside a block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ifguide.artifacts import read_meta
from ifguide.errors import InputError


@dataclass
class Blocks:
    """A prepared corpus opened read-only (arrays are memory-mapped)."""

    path: Path
    meta: dict

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Blocks":
        path = Path(path)
        meta = read_meta(path, stage="blocks")
        if not (path / "input_ids.npy").is_file():
            raise InputError(f"{path}: missing input_ids.npy")
        return cls(path=path, meta=meta)

    @cached_property
    def input_ids(self) -> np.ndarray:
        arr = np.load(self.path / "input_ids.npy", mmap_mode="r")
        if arr.ndim != 2:
            raise InputError(f"{self.path}/input_ids.npy: expected a 2-D array [N, T], got shape {arr.shape}")
        return arr

    @cached_property
    def doc_spans(self) -> np.ndarray:
        return np.load(self.path / "doc_spans.npy", mmap_mode="r")

    @cached_property
    def toxic_labels(self) -> np.ndarray | None:
        p = self.path / "toxic_labels.npy"
        return np.load(p, mmap_mode="r") if p.is_file() else None

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.meta["tokenizer_fingerprint"]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    @property
    def n_blocks(self) -> int:
        return self.input_ids.shape[0]

    @property
    def block_size(self) -> int:
        return self.input_ids.shape[1]

    def doc_index_of_tokens(self, flat_positions: np.ndarray) -> np.ndarray:
        """Document index of each flattened token position (``i * T + j``)."""
        starts = np.asarray(self.doc_spans[:, 0])
        return np.searchsorted(starts, flat_positions, side="right") - 1
