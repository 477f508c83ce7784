"""Torch datasets over prepared blocks (memory-mapped) and an optional toxic mask."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ifguide.artifacts import read_meta, require_fingerprint
from ifguide.data.blocks import Blocks
from ifguide.errors import InputError

logger = logging.getLogger(__name__)


class BlockDataset(torch.utils.data.Dataset):
    """Row ``i`` of the blocks as ``input_ids``/``labels`` (and ``toxic_mask`` when a mask is given)."""

    def __init__(self, input_ids: np.ndarray, mask: np.ndarray | None = None, rows: np.ndarray | None = None):
        self.input_ids = input_ids
        self.mask = mask
        self.rows = np.arange(len(input_ids)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        i = int(self.rows[k])
        ids = torch.from_numpy(np.array(self.input_ids[i], dtype=np.int64))
        item = {"input_ids": ids, "labels": ids.clone()}
        if self.mask is not None:
            item["toxic_mask"] = torch.from_numpy(np.array(self.mask[i], dtype=bool))
        return item


def load_mask(mask: str | os.PathLike | np.ndarray, blocks: Blocks) -> tuple[np.ndarray, dict]:
    """Load a toxic-token mask and check it belongs to ``blocks``.

    Accepts a mask directory (``mask.npy`` + ``meta.json``), the ``mask.npy`` inside one, or an
    array. A mask artifact must carry the blocks' fingerprint; a bare array is checked by shape only.
    Returns the mask and a dict describing what was checked (recorded in the model's meta.json).
    """
    info: dict = {"source": "array" if isinstance(mask, np.ndarray) else str(mask)}
    if isinstance(mask, np.ndarray):
        arr = mask
        info["fingerprint_checked"] = False
    else:
        path = Path(mask)
        directory, file = (path, path / "mask.npy") if path.is_dir() else (path.parent, path)
        if not file.is_file():
            raise InputError(f"--mask: {file}: no such file")
        try:
            arr = np.load(file, mmap_mode="r")
        except ValueError as e:
            raise InputError(f"--mask: {file}: not a .npy array ({e})") from None
        if (directory / "meta.json").is_file():
            meta = read_meta(directory)
            require_fingerprint(meta.get("blocks_fingerprint"), blocks.fingerprint, what="blocks", where=f"--mask {directory}")
            info.update(fingerprint=meta.get("fingerprint"), fingerprint_checked=True, kind=meta.get("kind", "ifguide"))
        else:
            logger.warning("%s has no meta.json: checking the mask by shape only", file)
            info["fingerprint_checked"] = False
    if arr.dtype != np.bool_:
        raise InputError(f"--mask: expected a boolean array, got dtype {arr.dtype}")
    if tuple(arr.shape) != blocks.shape:
        raise InputError(f"--mask: shape {tuple(arr.shape)} does not match the blocks {blocks.shape} ({blocks.path})")
    info["n_masked"] = int(np.count_nonzero(arr))
    return arr, info
