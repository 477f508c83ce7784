"""Fit the curvature factors (EK-FAC by default) of a causal LM on its training blocks.

The work is kronfluence's ``fit_all_factors`` (covariance matrices, eigendecomposition, eigenvalue
correction); this module chooses the tracked modules, feeds the blocks, makes the run resumable
and writes a factors artifact::

    FACTORS_DIR/
      meta.json              stage "factors": strategy, modules, fingerprints of model/tokenizer/blocks
      kronfluence/           kronfluence's factor files (safetensors + factor_arguments.json)

Interrupted runs continue from ``FACTORS_DIR.partial/`` (kronfluence skips the statistics it has
already saved). On a cluster, :func:`fit_factor_shard` / :func:`merge_factor_shards` split the
covariance and lambda passes into independent jobs through kronfluence's data partitions.
Labels are the data's own next tokens (empirical Fisher) by default, so results are
deterministic; ``empirical_fisher=False`` samples them from the model under a fixed seed.
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
    LoadedModel,
    check_tokens_fit,
    finished_artifact,
    load_checked_model,
    make_analyzer,
    open_work_dir,
    refuse_cpu_distributed,
    request_fingerprint,
)
from ifguide.attribution._shards import (
    Shard,
    create_json_once,
    is_done,
    mark_done,
    open_shared_work_dir,
    open_work_dir_for_merge,
    require_all_done,
    work_dir_of,
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


@dataclass
class _FactorJob:
    """The checked inputs of a factor fit and the request that identifies it."""

    config: FactorConfig
    blocks_path: str
    blocks: Blocks
    lm: LoadedModel
    request: dict
    indices: np.ndarray


def _prepare(model: Any, blocks: str | os.PathLike, config: FactorConfig | None, tokenizer: Any,
             trust_remote_code: bool) -> _FactorJob:
    config = config or FactorConfig()
    refuse_cpu_distributed()
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
    indices = fit_indices(blocks_obj.n_blocks, config.max_blocks)
    return _FactorJob(config, str(blocks), blocks_obj, lm, request, indices)


def _analyzer(job: _FactorJob, work: Path):
    tracked_model, modules = prepare_tracked_model(job.lm.model, job.config.modules)
    return make_analyzer(tracked_model, CausalLMTask(modules), work), modules


def _write_factors_artifact(job: _FactorJob, out: Path, factors_src: Path, modules: list[str], request: dict,
                            **extra: Any) -> None:
    """Move kronfluence's factor files into the artifact ``out`` and write its meta.json."""
    with artifact_dir(out) as tmp:
        shutil.move(str(factors_src), tmp / FACTORS_SUBDIR)
        for partial in (tmp / FACTORS_SUBDIR).glob("*_data_partition*_module_partition*.safetensors"):
            partial.unlink()  # per-shard sums, already aggregated into the unpartitioned files
        write_meta(
            tmp,
            "factors",
            args={**asdict(job.config), "model": job.lm.name, "blocks": job.blocks_path},
            strategy=job.config.strategy,
            modules=modules,
            n_blocks_fitted=len(job.indices),
            block_size=job.blocks.block_size,
            model=job.lm.name,
            model_fingerprint=job.lm.model_fingerprint,
            tokenizer_fingerprint=job.lm.tokenizer_fingerprint,
            blocks_fingerprint=job.blocks.fingerprint,
            request_fingerprint=request_fingerprint(request),
            **extra,
            fingerprint=fingerprint_directory(tmp / FACTORS_SUBDIR),
        )


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
    ``out`` made from the same inputs and options is reused as is. For a job array, see
    :func:`fit_factor_shard` and :func:`merge_factor_shards`.
    """
    out = Path(out)
    job = _prepare(model, blocks, config, tokenizer, trust_remote_code)
    if finished_artifact(out, "factors", job.request) is not None:
        logger.info("%s is up to date; reusing it", out)
        return out

    work = open_work_dir(out, job.request)
    analyzer, modules = _analyzer(job, work)
    logger.info("fitting %s factors over %d modules on %d blocks", job.config.strategy, len(modules), len(job.indices))
    torch.manual_seed(job.config.seed)
    analyzer.fit_all_factors(
        factors_name=FACTORS_NAME,
        dataset=BlockRows(job.blocks.input_ids, job.indices),
        per_device_batch_size=job.config.batch_size,
        factor_args=kronfluence_factor_args(job.config),
    )
    _write_factors_artifact(job, out, analyzer.factors_output_dir(FACTORS_NAME), modules, job.request)
    shutil.rmtree(work, ignore_errors=True)
    logger.info("factors -> %s", out)
    return out


# ------------------------------------------------------------------------------------------ sharding
#
# kronfluence splits the fitting examples into ``n`` contiguous data partitions
# (``FactorArguments.covariance_data_partitions`` / ``lambda_data_partitions``) and saves the
# statistics of partition ``i`` as ``<factor>_data_partition{i}_module_partition0.safetensors``;
# aggregating sums them (they are unnormalised sums with their example counts). Shard ``i`` of a
# phase computes exactly partition ``i``. kronfluence would aggregate as soon as it sees every
# partition on disk, which would race between shards finishing together, so shards never
# aggregate: the merge step does.

PHASES = ("covariance", "lambda")


def _sharded_request(job: _FactorJob) -> dict:
    # The partition count is part of kronfluence's factor arguments, hence of the result.
    return {**job.request, "sharded": True}


def _sharded_factor_args(job: _FactorJob, count: int):
    args = kronfluence_factor_args(job.config)
    args.covariance_data_partitions = count
    args.lambda_data_partitions = count
    return args


def _partition(shard: Shard) -> tuple[int, int] | None:
    return None if shard.count == 1 else (shard.index, 0)  # kronfluence does not partition n=1


def _own_partition_files(factors_dir: Path, phase: str, shard: Shard) -> list[Path]:
    from kronfluence.factor.covariance import covariance_matrices_save_path
    from kronfluence.factor.eigen import lambda_matrices_save_path
    from kronfluence.utils.constants import COVARIANCE_FACTOR_NAMES, LAMBDA_FACTOR_NAMES

    if phase == "covariance":
        return [covariance_matrices_save_path(factors_dir, name, _partition(shard)) for name in COVARIANCE_FACTOR_NAMES]
    return [lambda_matrices_save_path(factors_dir, name, _partition(shard)) for name in LAMBDA_FACTOR_NAMES]


def _sharded_analyzer(job: _FactorJob, work: Path, count: int):
    """An analyzer over the shared work dir whose kronfluence bookkeeping files already exist.

    kronfluence writes its argument and dataset files non-atomically and compares them with what
    it would write; creating them once, atomically, means concurrent shards only ever read
    complete files.
    """
    from kronfluence.utils.constants import FACTOR_ARGUMENTS_NAME

    analyzer, modules = _analyzer(job, work)
    factors_dir = analyzer.factors_output_dir(FACTORS_NAME)
    factors_dir.mkdir(parents=True, exist_ok=True)
    factor_args = _sharded_factor_args(job, count)
    create_json_once(factors_dir / f"{FACTOR_ARGUMENTS_NAME}_arguments.json", factor_args.to_dict())
    dataset_meta = {"type": BlockRows.__name__, "dataset_size": len(job.indices), "indices": None}
    for phase in PHASES:
        create_json_once(factors_dir / f"{phase}_dataset_metadata.json", dataset_meta)
    return analyzer, modules, factors_dir, factor_args


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise InputError(f"--phase: expected one of {', '.join(PHASES)}, got {phase!r}")


def _check_shard_count(job: _FactorJob, count: int) -> None:
    if count > len(job.indices):
        raise InputError(f"--shard: {count} shards for {len(job.indices)} fitting blocks; "
                         "use at most one shard per block")


def fit_factor_shard(
    model: Any,
    blocks: str | os.PathLike,
    out: str | os.PathLike,
    config: FactorConfig | None = None,
    *,
    shard: Shard | tuple[int, int],
    phase: str,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Path:
    """Compute one data partition of one phase of a sharded factor fit into ``OUT.partial/``.

    The flow for ``n`` shards (each step a separate process; steps in the same line can run in
    parallel)::

        fit_factor_shard(..., shard=(i, n), phase="covariance")   for i in 0..n-1
        merge_factor_shards(..., phase="covariance")              aggregate + eigendecomposition
        fit_factor_shard(..., shard=(i, n), phase="lambda")       for i in 0..n-1
        merge_factor_shards(..., phase="lambda")                  aggregate, write the artifact ``out``

    Every strategy uses the same four steps (a phase the strategy does not need does nothing).
    A finished shard is not recomputed; an unfinished one (killed, failed) starts its partition
    over, touching no other shard's files. Returns the shared work dir.
    """
    out, shard = Path(out), Shard.of(shard)
    _check_phase(phase)
    job = _prepare(model, blocks, config, tokenizer, trust_remote_code)
    _check_shard_count(job, shard.count)
    if finished_artifact(out, "factors", _sharded_request(job)) is not None:
        logger.info("%s is already finished; nothing to do for shard %s", out, shard)
        return work_dir_of(out)
    work = open_shared_work_dir(out, _sharded_request(job), shard)
    if is_done(work, phase, shard):
        logger.info("%s shard %s already finished; nothing to do", phase, shard)
        return work
    if phase == "covariance" and is_done(work, "covariance"):
        logger.info("the covariance shards are already merged; nothing to do for shard %s", shard)
        return work
    if phase == "lambda" and not is_done(work, "covariance"):
        raise InputError(
            f"--phase lambda: the covariance phase of {work} is not merged yet; run every "
            f"`--shard i/{shard.count} --phase covariance`, then `--merge --phase covariance` first"
        )

    analyzer, modules, factors_dir, factor_args = _sharded_analyzer(job, work, shard.count)
    for path in _own_partition_files(factors_dir, phase, shard):
        path.unlink(missing_ok=True)  # a half-written partition of an earlier, interrupted try
    # Shards never aggregate (see above); instance attributes shadow kronfluence's methods.
    analyzer.aggregate_covariance_matrices = analyzer.aggregate_lambda_matrices = _skip_aggregation
    logger.info("fitting %s shard %s of %s factors over %d modules (%d blocks in all)", phase, shard,
                job.config.strategy, len(modules), len(job.indices))
    torch.manual_seed(job.config.seed + shard.index)  # sampled labels (true Fisher) differ between shards
    fit = analyzer.fit_covariance_matrices if phase == "covariance" else analyzer.fit_lambda_matrices
    fit(
        factors_name=FACTORS_NAME,
        dataset=BlockRows(job.blocks.input_ids, job.indices),
        per_device_batch_size=job.config.batch_size,
        factor_args=factor_args,
        target_data_partitions=None if shard.count == 1 else [shard.index],
    )
    mark_done(work, phase, shard)
    logger.info("%s shard %s -> %s", phase, shard, factors_dir)
    return work


def _skip_aggregation(*args: Any, **kwargs: Any) -> None:
    """Stands in for kronfluence's aggregation inside shards."""


def merge_factor_shards(
    model: Any,
    blocks: str | os.PathLike,
    out: str | os.PathLike,
    config: FactorConfig | None = None,
    *,
    phase: str = "lambda",
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Path:
    """Merge the finished shards of ``phase`` (see :func:`fit_factor_shard` for the flow).

    ``phase="covariance"`` sums the covariance partitions and eigendecomposes them;
    ``phase="lambda"`` sums the lambda partitions and writes the factors artifact ``out``, which
    ``compute_scores`` uses exactly like an unsharded one. Returns ``out`` (or the work dir after
    the covariance merge). Missing shards are an :class:`InputError` naming them.
    """
    out = Path(out)
    _check_phase(phase)
    job = _prepare(model, blocks, config, tokenizer, trust_remote_code)
    request = _sharded_request(job)
    if finished_artifact(out, "factors", request) is not None:
        logger.info("%s is up to date; reusing it", out)
        return out
    work, count = open_work_dir_for_merge(out, request)
    analyzer, modules, factors_dir, factor_args = _sharded_analyzer(job, work, count)
    if phase == "covariance":
        if is_done(work, "covariance"):
            logger.info("the covariance shards of %s are already merged", work)
            return work
        require_all_done(work, "covariance", count, rerun_hint=f"--shard i/{count} --phase covariance")
        analyzer.aggregate_covariance_matrices(factors_name=FACTORS_NAME)
        # overwrite: an eigendecomposition left by an interrupted merge may be incomplete.
        analyzer.perform_eigendecomposition(factors_name=FACTORS_NAME, factor_args=factor_args,
                                            overwrite_output_dir=True)
        mark_done(work, "covariance")
        logger.info("merged %d covariance shards and eigendecomposed them in %s", count, factors_dir)
        return work

    if not is_done(work, "covariance"):
        raise InputError(f"--merge: the covariance phase of {work} is not merged yet; run `--merge --phase covariance` "
                         f"and the `--phase lambda` shards first")
    require_all_done(work, "lambda", count, rerun_hint=f"--shard i/{count} --phase lambda")
    analyzer.aggregate_lambda_matrices(factors_name=FACTORS_NAME)
    _write_factors_artifact(job, out, factors_dir, modules, request, shards=count)
    shutil.rmtree(work, ignore_errors=True)
    logger.info("merged %d shards; factors -> %s", count, out)
    return out
