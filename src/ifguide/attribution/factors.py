"""Fit the curvature factors (EK-FAC by default) of a causal LM on its training blocks.

The work is kronfluence's ``fit_all_factors`` (covariance matrices, eigendecomposition, eigenvalue
correction); this module chooses the tracked modules, feeds the blocks, makes the run resumable
and writes a factors artifact::

    FACTORS_DIR/
      meta.json              stage "factors": strategy, modules, fingerprints of model/tokenizer/blocks
      kronfluence/           kronfluence's factor files (safetensors + factor_arguments.json)

Interrupted runs continue from ``FACTORS_DIR.partial/`` (kronfluence skips the statistics it has
already saved). Labels are the data's own next tokens (empirical Fisher) by default, so results
are deterministic; ``empirical_fisher=False`` samples them from the model under a fixed seed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ifguide.artifacts import artifact_dir, sha256_file, write_meta
from ifguide.attribution._setup import (
    FACTORS_NAME,
    BlockRows,
    check_tokens_fit,
    finished_artifact,
    load_checked_model,
    make_analyzer,
    open_work_dir,
    refuse_cpu_distributed,
    request_fingerprint,
)
from ifguide.attribution.modules import discover_modules, has_conv1d, linearize_conv1d
from ifguide.attribution.task import CausalLMTask
from ifguide.data.blocks import Blocks
from ifguide.errors import InputError

logger = logging.getLogger(__name__)

STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")
AMP_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
FACTORS_SUBDIR = "kronfluence"


@dataclass
class FactorConfig:
    """Options of ``ifguide fit-factors``."""

    strategy: str = field(default="ekfac", metadata={"help": "curvature approximation: " + "|".join(STRATEGIES)})
    max_blocks: int | None = field(
        default=None, metadata={"help": "fit on at most this many blocks, evenly spaced over the corpus (default: all)"}
    )
    batch_size: int = field(default=8, metadata={"help": "blocks per forward/backward pass"})
    dtype: str = field(default="float32", metadata={"help": "compute dtype (autocast): float32|bfloat16"})
    modules: str | None = field(
        default=None, metadata={"help": "regex over module names to track (default: every nn.Linear in the blocks)"}
    )
    empirical_fisher: bool = field(
        default=True, metadata={"help": "use the data's next tokens as labels (deterministic) instead of sampling"}
    )
    seed: int = field(default=0, metadata={"help": "seed for sampled labels (true Fisher)"})

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.dtype not in AMP_DTYPES:
            raise InputError(f"--dtype: expected one of {', '.join(AMP_DTYPES)}, got {self.dtype!r}")
        if self.max_blocks is not None and self.max_blocks <= 0:
            raise InputError(f"--max-blocks: expected a positive number, got {self.max_blocks}")
        if self.batch_size <= 0:
            raise InputError(f"--batch-size: expected a positive number, got {self.batch_size}")


def fit_indices(n_blocks: int, max_blocks: int | None) -> np.ndarray:
    """Blocks used for fitting: all, or ``max_blocks`` evenly spaced ones (deterministic)."""
    if max_blocks is None or max_blocks >= n_blocks:
        return np.arange(n_blocks)
    return np.unique(np.linspace(0, n_blocks - 1, max_blocks).round().astype(np.int64))


def kronfluence_factor_args(config: FactorConfig):
    from kronfluence.arguments import FactorArguments

    return FactorArguments(
        strategy=config.strategy,
        use_empirical_fisher=config.empirical_fisher,
        amp_dtype=AMP_DTYPES[config.dtype],
        covariance_max_examples=None,
        lambda_max_examples=None,
    )


def fingerprint_directory(path: Path) -> str:
    """sha256 over the relative names and sha256 of every file under ``path``."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def prepare_tracked_model(model: torch.nn.Module, modules: str | None) -> tuple[torch.nn.Module, list[str]]:
    """A copy of the model kronfluence can wrap (GPT-2 Conv1D -> Linear) and the tracked module names."""
    import copy

    model = linearize_conv1d(model) if has_conv1d(model) else copy.deepcopy(model)
    return model, discover_modules(model, modules)


def fit_factors(
    model: Any,
    blocks: str | os.PathLike,
    out: str | os.PathLike,
    config: FactorConfig | None = None,
    *,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Path:
    """Fit influence factors of ``model`` on ``blocks`` and write them to ``out``; returns ``out``.

    ``model`` is a hub id, a local directory or a model object (then pass ``tokenizer``). A finished
    ``out`` made from the same inputs and options is reused as is.
    """
    config = config or FactorConfig()
    refuse_cpu_distributed()
    out = Path(out)
    blocks_obj = Blocks.open(blocks)
    lm = load_checked_model(model, blocks_obj, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    check_tokens_fit(blocks_obj, lm)
    request = {
        "stage": "factors",
        "config": asdict(config),
        "model_fingerprint": lm.model_fingerprint,
        "tokenizer_fingerprint": lm.tokenizer_fingerprint,
        "blocks_fingerprint": blocks_obj.fingerprint,
    }
    if finished_artifact(out, "factors", request) is not None:
        logger.info("%s is up to date; reusing it", out)
        return out

    tracked_model, modules = prepare_tracked_model(lm.model, config.modules)
    indices = fit_indices(blocks_obj.n_blocks, config.max_blocks)
    logger.info("fitting %s factors over %d modules on %d blocks", config.strategy, len(modules), len(indices))
    work = open_work_dir(out, request)
    torch.manual_seed(config.seed)
    analyzer = make_analyzer(tracked_model, CausalLMTask(modules), work)
    analyzer.fit_all_factors(
        factors_name=FACTORS_NAME,
        dataset=BlockRows(blocks_obj.input_ids, indices),
        per_device_batch_size=config.batch_size,
        factor_args=kronfluence_factor_args(config),
    )
    factors_src = analyzer.factors_output_dir(FACTORS_NAME)
    with artifact_dir(out) as tmp:
        shutil.move(str(factors_src), tmp / FACTORS_SUBDIR)
        write_meta(
            tmp,
            "factors",
            args={**asdict(config), "model": lm.name, "blocks": str(blocks)},
            strategy=config.strategy,
            modules=modules,
            n_blocks_fitted=len(indices),
            block_size=blocks_obj.block_size,
            model=lm.name,
            model_fingerprint=lm.model_fingerprint,
            tokenizer_fingerprint=lm.tokenizer_fingerprint,
            blocks_fingerprint=blocks_obj.fingerprint,
            request_fingerprint=request_fingerprint(request),
            fingerprint=fingerprint_directory(tmp / FACTORS_SUBDIR),
        )
    shutil.rmtree(work, ignore_errors=True)
    logger.info("factors -> %s", out)
    return out
