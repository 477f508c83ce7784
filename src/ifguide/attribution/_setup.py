"""Plumbing shared by factor fitting and scoring: loading and checking inputs, wrapping the model
for kronfluence, datasets over the blocks, and the resumable ``OUT.partial/`` work directory."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ifguide.artifacts import fingerprint_json, read_meta, require_fingerprint, write_json
from ifguide.data.blocks import Blocks
from ifguide.errors import InputError
from ifguide.models import fingerprint_model, fingerprint_tokenizer, load_model, load_tokenizer, model_fingerprint_from_dir

logger = logging.getLogger(__name__)

ANALYSIS_NAME = "kronfluence"  # kronfluence's results live in WORK/kronfluence/
FACTORS_NAME = "ifguide"  # ... and the factors in WORK/kronfluence/factors_ifguide/
REQUEST_FILE = "request.json"


def refuse_cpu_distributed() -> None:
    """kronfluence's distributed mode needs CUDA; on CPU every torchrun rank would silently redo the
    whole job (and race on the same files)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        raise InputError(
            "WORLD_SIZE > 1 without CUDA: kronfluence's distributed mode needs GPUs (nccl); under torchrun on "
            "CPU each rank would run the whole job alone. Run one process per shard with --shard i/n instead."
        )


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the fingerprints that tie artifacts to it."""

    model: torch.nn.Module
    tokenizer: Any
    model_fingerprint: str
    tokenizer_fingerprint: str
    name: str


def load_checked_model(model: Any, blocks: Blocks, *, tokenizer: Any = None, trust_remote_code: bool = False) -> LoadedModel:
    """Load the model (float32: kronfluence keeps its statistics in float32; ``--dtype`` selects
    autocast) and refuse it when its tokenizer is not the one the blocks were made with.

    A smaller proxy model is fine as long as the tokenizer is the same.
    """
    name = model if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if tokenizer is None:
        if not isinstance(model, (str, os.PathLike)):
            raise InputError("a model object was given without its tokenizer; pass tokenizer=...")
        tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    tok_fp = fingerprint_tokenizer(tokenizer)
    require_fingerprint(blocks.tokenizer_fingerprint, tok_fp, what="tokenizer", where=f"{blocks.path} vs model {name}")
    lm = load_model(model, dtype="float32", trust_remote_code=trust_remote_code)
    recorded = model_fingerprint_from_dir(model) if isinstance(model, (str, os.PathLike)) else None
    return LoadedModel(lm, tokenizer, recorded or fingerprint_model(lm), tok_fp, str(name))


def check_tokens_fit(blocks: Blocks, lm: LoadedModel) -> None:
    vocab = lm.model.get_input_embeddings().num_embeddings
    top = int(np.max(blocks.input_ids[: min(blocks.n_blocks, 4096)])) if blocks.n_blocks else 0
    if top >= vocab:
        raise InputError(f"{blocks.path}: token id {top} is outside the model's embedding table ({vocab})")


class BlockRows(Dataset):
    """Rows ``indices`` of the blocks as ``{"input_ids": LongTensor[T]}`` (read lazily from the memmap)."""

    def __init__(self, input_ids: np.ndarray, indices: np.ndarray):
        self.input_ids = input_ids
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        row = np.asarray(self.input_ids[self.indices[k]], dtype=np.int64)
        return {"input_ids": torch.from_numpy(row)}


def make_analyzer(model: torch.nn.Module, task, work: Path):
    """Wrap the tracked modules and build a kronfluence Analyzer writing under ``work``."""
    from kronfluence.analyzer import Analyzer, prepare_model

    model = prepare_model(model, task)
    # kronfluence sets the *root* logger's level to its log_level; keep the user's logging as it was.
    root_level = logging.getLogger().level
    try:
        return Analyzer(
            analysis_name=ANALYSIS_NAME,
            model=model,
            task=task,
            cpu=not torch.cuda.is_available(),
            output_dir=str(work),
            disable_tqdm=not logger.isEnabledFor(logging.INFO),
            log_level=logging.WARNING,
        )
    finally:
        logging.getLogger().setLevel(root_level)


def open_work_dir(out: Path, request: dict) -> Path:
    """The persistent work dir ``OUT.partial/`` of an interrupted run with the same request, or a
    fresh one (an old one built for a different request is discarded)."""
    work = out.with_name(out.name + ".partial")
    request_path = work / REQUEST_FILE
    if work.exists():
        previous = None
        if request_path.is_file():
            try:
                previous = read_json(request_path)
            except ValueError:
                previous = None
        if previous == _normalise(request):
            logger.info("resuming from %s", work)
            return work
        logger.warning("%s was started with different inputs or options; starting over", work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(request_path, request)
    return work


def _normalise(obj: Any) -> Any:
    import json

    from ifguide.artifacts import _jsonable

    return json.loads(json.dumps(_jsonable(obj)))


def read_json(path: Path) -> Any:
    import json

    return json.loads(Path(path).read_text())


def finished_artifact(out: Path, stage: str, request: dict) -> dict | None:
    """The meta of ``out`` when it is a finished artifact of this very request (then it is reused)."""
    if not (out / "meta.json").is_file():
        return None
    try:
        meta = read_meta(out, stage=stage)
    except InputError:
        return None
    return meta if meta.get("request_fingerprint") == fingerprint_json(_normalise(request)) else None


def request_fingerprint(request: dict) -> str:
    return fingerprint_json(_normalise(request))
