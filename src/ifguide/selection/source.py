"""Score inputs for selection: one or many ``[N_k, T]`` float arrays whose rows concatenate.

Selection reads its scores chunk by chunk (rows ``a:b`` at a time), so a corpus whose scores do
not fit in memory can still be ranked. ``.npy`` files are read with plain file reads into a
reused buffer rather than through a memory map: pages of a memory map count towards the
process's resident memory until the kernel evicts them, which makes a 2 GB scan look like a
2 GB process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from ifguide.artifacts import fingerprint_array, fingerprint_json, read_meta
from ifguide.errors import InputError

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.npy"
DEFAULT_CHUNK_ELEMENTS = 1 << 24  # 16 M scores per chunk: ~64 MB of float32, a few hundred MB of temporaries

ScoresLike = Union[str, os.PathLike, np.ndarray]


@dataclass
class _Part:
    """One shard: an in-memory/memory-mapped array, or a C-ordered ``.npy`` file read by offset."""

    name: str
    shape: tuple[int, int]
    dtype: np.dtype
    array: np.ndarray | None = None
    file: Path | None = None
    data_offset: int = 0
    meta: dict | None = None

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.array is not None:
            return np.asarray(self.array[start:stop])
        n_cols = self.shape[1]
        count = (stop - start) * n_cols
        with open(self.file, "rb") as f:
            f.seek(self.data_offset + start * n_cols * self.dtype.itemsize)
            flat = np.fromfile(f, dtype=self.dtype, count=count)
        if flat.size != count:
            raise InputError(f"{self.name}: file is truncated (expected {self.shape} values)")
        return flat.reshape(stop - start, n_cols)

    def fingerprint(self) -> str:
        """The recorded fingerprint of a scores directory, else the sha256 of the array."""
        if self.meta is not None and self.meta.get("fingerprint"):
            return self.meta["fingerprint"]
        array = self.array if self.array is not None else np.load(self.file, mmap_mode="r")
        return fingerprint_array(array)


def _check_float_2d(name: str, shape: tuple, dtype: np.dtype) -> None:
    if dtype.kind != "f":
        raise InputError(f"{name}: scores must be a floating-point array (float16/32/64), got dtype {dtype}")
    if len(shape) != 2:
        raise InputError(f"{name}: scores must be a 2-D array [N, T] aligned with the blocks, got shape {shape}")


def _npy_part(path: Path, meta: dict | None) -> _Part:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except ValueError as e:
        raise InputError(f"{path}: not a .npy array ({e})") from None
    _check_float_2d(str(path), shape, dtype)
    if fortran or not dtype.isnative:
        # rare; fall back to a memory map, which handles any layout
        return _Part(str(path), tuple(shape), dtype, array=np.load(path, mmap_mode="r"), meta=meta)
    return _Part(str(path), tuple(shape), dtype, file=path, data_offset=offset, meta=meta)


def _open_part(item: ScoresLike, index: int) -> _Part:
    if isinstance(item, np.ndarray):
        name = getattr(item, "filename", None) or f"scores[{index}]"
        _check_float_2d(str(name), item.shape, item.dtype)
        return _Part(str(name), tuple(item.shape), item.dtype, array=item)
    path = Path(item)
    if path.is_dir():
        meta = read_meta(path, stage="scores")
        return _npy_part(path / SCORES_FILE, meta)
    if path.suffix == ".npy":
        return _npy_part(path, None)
    raise InputError(f"{path}: expected a scores directory (with {SCORES_FILE} and meta.json) or a .npy file")


@dataclass
class ScoreSource:
    """Row-concatenation of score shards, read in chunks of whole rows."""

    parts: list[_Part]
    n_rows: int = field(init=False)
    n_cols: int = field(init=False)
    dtype: np.dtype = field(init=False)

    def __post_init__(self) -> None:
        if not self.parts:
            raise InputError("--scores: no score arrays given")
        first = self.parts[0]
        for p in self.parts[1:]:
            if p.shape[1] != first.shape[1]:
                raise InputError(
                    f"{p.name}: shards must share the block length T; {first.name} has T={first.shape[1]}, "
                    f"this one T={p.shape[1]}"
                )
            if p.dtype != first.dtype:
                raise InputError(f"{p.name}: shards must share one dtype; {first.name} is {first.dtype}, this is {p.dtype}")
        self.n_rows = sum(p.shape[0] for p in self.parts)
        self.n_cols = first.shape[1]
        self.dtype = first.dtype
        if self.n_rows == 0 or self.n_cols == 0:
            raise InputError(f"{first.name}: scores are empty (shape [{self.n_rows}, {self.n_cols}])")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.n_cols)

    def rows_per_chunk(self, chunk_elements: int) -> int:
        return max(1, int(chunk_elements) // self.n_cols)

    def iter_chunks(self, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, rows)`` over all shards in order; a chunk never spans two shards."""
        step = self.rows_per_chunk(chunk_elements)
        offset = 0
        for part in self.parts:
            for start in range(0, part.shape[0], step):
                stop = min(start + step, part.shape[0])
                yield offset + start, part.rows(start, stop)
            offset += part.shape[0]

    def to_array(self) -> np.ndarray:
        """All scores in memory (tests, the reference implementation and small inputs only)."""
        return np.concatenate([p.rows(0, p.shape[0]) for p in self.parts], axis=0)

    def take_rows(self, rows: Sequence[int]) -> np.ndarray:
        """The given global rows, in the given order (reads only those rows)."""
        out = np.empty((len(rows), self.n_cols), dtype=self.dtype)
        bounds = np.cumsum([0] + [p.shape[0] for p in self.parts])
        for k, row in enumerate(rows):
            if not 0 <= row < self.n_rows:
                raise InputError(f"row {row} out of range for scores with {self.n_rows} rows")
            part = int(np.searchsorted(bounds, row, side="right")) - 1
            local = int(row - bounds[part])
            out[k] = self.parts[part].rows(local, local + 1)[0]
        return out

    def fingerprint(self) -> str:
        """Fingerprint of the scores; several shards hash the list of their fingerprints."""
        fps = [p.fingerprint() for p in self.parts]
        return fps[0] if len(fps) == 1 else fingerprint_json(fps)

    def shard_fingerprints(self) -> list[str]:
        return [p.fingerprint() for p in self.parts]

    def metas(self) -> list[dict]:
        return [p.meta for p in self.parts if p.meta is not None]


def open_scores(scores: ScoresLike | Sequence[ScoresLike] | ScoreSource) -> ScoreSource:
    """Open a path (scores directory or ``.npy``), an array, or a list of them (row shards)."""
    if isinstance(scores, ScoreSource):
        return scores
    items = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    return ScoreSource([_open_part(item, k) for k, item in enumerate(items)])
