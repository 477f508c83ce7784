"""Token-wise (or block-wise) influence of every training token on toxic vs safe continuations.

One pass over the training data: the query gradient is the gradient of a single signed
measurement (mean toxic-continuation NLL − mean safe-continuation NLL, see
:mod:`ifguide.attribution.task`), aggregated by kronfluence before the training blocks are seen.

Output::

    SCORES_DIR/
      scores.npy   float32 (or float16) [N, T] aligned with the blocks, in target coordinates;
                   NaN where a token has no score.
      meta.json    stage "scores"

Sign: a positive score means training on that token makes toxic continuations more likely
(relative to safe ones in differential mode).

Alignment. kronfluence's per-token score at sequence position ``t`` is built from the tracked
modules' activations and output gradients at position ``t``, whose output predicts token
``t+1``. With ``alignment="next"`` (default) the score of position ``t`` is stored at target
``t+1``: column 0 is NaN and position ``T-1`` (its gradient is zero: nothing follows it) is
dropped. With ``alignment="same"`` position ``t`` is stored at target ``t``, as in the paper's
reference code; column 0 is NaN there too, because token 0 is never a target in a block.

Granularity ``"document"`` scores each block as a whole (kronfluence's per-example score, equal
to the sum of its token scores) and broadcasts it to the block's target columns 1..T-1, so the
file has the same shape and the same NaN column as token scores.

Large corpora are processed in chunks of rows (one kronfluence call each) written into a memmap
in ``SCORES_DIR.partial/``; an interrupted run resumes at the first unfinished chunk. On a
cluster, :func:`compute_score_shard` scores one contiguous range of rows per job and
:func:`merge_score_shards` concatenates them (see "sharding" below).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ifguide.artifacts import artifact_dir, fingerprint_array, read_meta, require_fingerprint, write_json, write_meta
from ifguide.attribution._setup import (
    FACTORS_NAME,
    BlockRows,
    check_tokens_fit,
    finished_artifact,
    load_checked_model,
    make_analyzer,
    open_work_dir,
    read_json,
    refuse_cpu_distributed,
    request_fingerprint,
)
from ifguide.attribution._shards import (
    Shard,
    is_done,
    mark_done,
    open_shared_work_dir,
    open_work_dir_for_merge,
    require_all_done,
)
from ifguide.attribution.factors import AMP_DTYPES, FACTORS_SUBDIR, prepare_tracked_model
from ifguide.attribution.task import CausalLMTask
from ifguide.data.blocks import Blocks
from ifguide.data.queries import IGNORE_INDEX, Query, QuerySet, read_queries, tokenize_query
from ifguide.errors import InputError

logger = logging.getLogger(__name__)

MODES = ("differential", "toxic-only")
GRANULARITIES = ("token", "document")
ALIGNMENTS = ("next", "same")
SCORE_DTYPES = ("float32", "float16")
PROGRESS_FILE = "progress.json"

ALIGNMENT_STATEMENTS = {
    "next": "scores[i, j] is the influence of token input_ids[i, j] as the target of the next-token loss "
    "(kronfluence position j-1, whose output predicts token j); column 0 is NaN.",
    "same": "scores[i, j] is kronfluence's score of sequence position j (the module inputs at token j, whose "
    "output predicts token j+1), stored at target j as in the paper's reference code; column 0 is NaN.",
}


@dataclass
class ScoreConfig:
    """Options of ``ifguide score``."""

    mode: str = field(default="differential", metadata={"help": "differential (toxic − safe) | toxic-only"})
    granularity: str = field(default="token", metadata={"help": "token | document (one score per block)"})
    alignment: str = field(default="next", metadata={"help": "next (position t -> target t+1) | same (t -> t)"})
    dtype: str = field(default="float32", metadata={"help": "compute dtype (autocast): float32|bfloat16"})
    scores_dtype: str = field(default="float32", metadata={"help": "dtype of scores.npy: float32|float16"})
    damping: float | None = field(
        default=None, metadata={"help": "damping of the inverse curvature (default: 0.1 x mean eigenvalue)"}
    )
    batch_size: int = field(default=8, metadata={"help": "training blocks per forward/backward pass"})
    query_batch_size: int = field(default=16, metadata={"help": "queries per forward/backward pass"})
    chunk_blocks: int = field(default=1024, metadata={"help": "blocks per kronfluence call (resumable unit)"})
    toxic_min: float = field(default=0.5, metadata={"help": "continuation toxicity >= this: a toxic query"})
    safe_max: float = field(default=0.1, metadata={"help": "continuation toxicity <= this: a safe query"})
    max_query_tokens: int = field(default=1024, metadata={"help": "refuse queries longer than this (tokens)"})

    def __post_init__(self) -> None:
        for name, value, known in (
            ("--mode", self.mode, MODES),
            ("--granularity", self.granularity, GRANULARITIES),
            ("--alignment", self.alignment, ALIGNMENTS),
            ("--dtype", self.dtype, tuple(AMP_DTYPES)),
            ("--scores-dtype", self.scores_dtype, SCORE_DTYPES),
        ):
            if value not in known:
                raise InputError(f"{name}: expected one of {', '.join(known)}, got {value!r}")
        for name, value in (("--batch-size", self.batch_size), ("--query-batch-size", self.query_batch_size),
                            ("--chunk-blocks", self.chunk_blocks), ("--max-query-tokens", self.max_query_tokens)):
            if value <= 0:
                raise InputError(f"{name}: expected a positive number, got {value}")
        if self.damping is not None and self.damping < 0:
            raise InputError(f"--damping: expected a non-negative number, got {self.damping}")
        if not 0.0 <= self.safe_max < self.toxic_min <= 1.0:
            raise InputError("--safe-max/--toxic-min: need 0 <= safe-max < toxic-min <= 1")


# ----------------------------------------------------------------------------------------- queries


def load_query_set(queries: str | os.PathLike, queries_safe: str | os.PathLike | None, config: ScoreConfig) -> QuerySet:
    """All queries: ``queries`` (labels or thresholds) plus ``queries_safe`` (safe unless scored otherwise)."""
    qs = read_queries(queries, toxic_min=config.toxic_min, safe_max=config.safe_max)
    if queries_safe is not None:
        qs.extend(read_queries(queries_safe, toxic_min=config.toxic_min, safe_max=config.safe_max,
                               default_label="safe", require_label="safe"))
    return qs


def query_weights(qs: QuerySet, mode: str) -> list[tuple[Query, float]]:
    """Signed weights that make the summed measurement "mean toxic NLL (− mean safe NLL)"."""
    toxic, safe = qs.toxic, qs.safe
    if not toxic:
        raise InputError(f"{', '.join(qs.sources)}: no toxic queries (see --toxic-min)")
    weighted = [(q, 1.0 / len(toxic)) for q in toxic]
    if mode == "differential":
        if not safe:
            raise InputError(
                f"{', '.join(qs.sources)}: differential mode needs safe queries (label them, see --safe-max, or "
                "pass --queries-safe); use --mode toxic-only for standard influence"
            )
        weighted += [(q, -1.0 / len(safe)) for q in safe]
    return weighted


class QueryBatchDataset(Dataset):
    """Tokenised, right-padded queries with their signed weights."""

    def __init__(self, tokenizer, weighted: list[tuple[Query, float]], max_tokens: int):
        encoded = [tokenize_query(tokenizer, q, max_tokens=max_tokens) for q, _ in weighted]
        length = max(len(ids) for ids, _ in encoded)
        n = len(encoded)
        self.input_ids = torch.full((n, length), tokenizer.pad_token_id, dtype=torch.long)
        self.labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        self.attention_mask = torch.zeros((n, length), dtype=torch.long)
        for k, (ids, labels) in enumerate(encoded):
            self.input_ids[k, : len(ids)] = torch.tensor(ids)
            self.labels[k, : len(ids)] = torch.tensor(labels)
            self.attention_mask[k, : len(ids)] = 1
        self.weight = torch.tensor([w for _, w in weighted], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.weight)

    def __getitem__(self, k: int) -> dict:
        return {
            "input_ids": self.input_ids[k],
            "labels": self.labels[k],
            "attention_mask": self.attention_mask[k],
            "weight": self.weight[k],
        }


# ------------------------------------------------------------------------------------- coordinates


def to_target_coordinates(position_scores: np.ndarray, alignment: str) -> np.ndarray:
    """Map kronfluence's per-position scores [B, T] to target coordinates [B, T] (see module docstring)."""
    out = np.full(position_scores.shape, np.nan, dtype=np.float32)
    if alignment == "next":
        out[:, 1:] = position_scores[:, :-1]
    elif alignment == "same":
        out[:, 1:] = position_scores[:, 1:]
    else:
        raise InputError(f"--alignment: expected one of {', '.join(ALIGNMENTS)}, got {alignment!r}")
    return out


def broadcast_block_scores(block_scores: np.ndarray, block_size: int) -> np.ndarray:
    """One score per block, repeated over its target columns 1..T-1 (column 0 NaN)."""
    out = np.full((len(block_scores), block_size), np.nan, dtype=np.float32)
    out[:, 1:] = np.asarray(block_scores, dtype=np.float32)[:, None]
    return out


# ----------------------------------------------------------------------------------------- scoring


def kronfluence_score_args(config: ScoreConfig):
    from kronfluence.arguments import ScoreArguments

    return ScoreArguments(
        damping_factor=config.damping,
        amp_dtype=AMP_DTYPES[config.dtype],
        compute_per_token_scores=config.granularity == "token",
        aggregate_query_gradients=True,
    )


def _link_factors(analyzer, factors_dir: Path) -> None:
    """Make the factors artifact visible where kronfluence looks for them (a symlink, not a copy).

    The link path is built without resolving it: ``factors_output_dir()`` resolves symlinks and would
    point into the factors artifact itself.
    """
    from kronfluence.utils.constants import FACTOR_SAVE_PREFIX

    link = analyzer.output_dir / (FACTOR_SAVE_PREFIX + FACTORS_NAME)
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)  # inside our own work dir
    link.symlink_to((factors_dir / FACTORS_SUBDIR).resolve(), target_is_directory=True)


def _score_chunk(analyzer, query_ds: Dataset, rows: Dataset, chunk: int, config: ScoreConfig, block_size: int) -> np.ndarray:
    """Scores of one chunk of blocks, in target coordinates [rows, T]."""
    name = f"chunk{chunk:06d}"
    analyzer.compute_pairwise_scores(
        scores_name=name,
        factors_name=FACTORS_NAME,
        query_dataset=query_ds,
        train_dataset=rows,
        per_device_query_batch_size=min(config.query_batch_size, len(query_ds)),
        per_device_train_batch_size=config.batch_size,
        score_args=kronfluence_score_args(config),
        overwrite_output_dir=True,
    )
    raw = analyzer.load_pairwise_scores(name)["all_modules"][0].float().numpy()  # [rows, T] or [rows]
    shutil.rmtree(analyzer.scores_output_dir(name), ignore_errors=True)
    if config.granularity == "document":
        return broadcast_block_scores(raw, block_size)
    return to_target_coordinates(raw, config.alignment)


def _open_scores_memmap(work: Path, shape: tuple[int, int]) -> np.memmap:
    path = work / "scores.npy"
    if path.is_file():
        return np.lib.format.open_memmap(path, mode="r+")
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    arr[:] = np.nan
    arr.flush()
    return arr


def _check_factors(factors_dir: Path, lm) -> dict:
    meta = read_meta(factors_dir, stage="factors")
    require_fingerprint(meta.get("model_fingerprint"), lm.model_fingerprint, what="model",
                        where=f"{factors_dir} (factors) vs model {lm.name}")
    require_fingerprint(meta.get("tokenizer_fingerprint"), lm.tokenizer_fingerprint, what="tokenizer",
                        where=f"{factors_dir} (factors) vs model {lm.name}")
    if not (factors_dir / FACTORS_SUBDIR).is_dir():
        raise InputError(f"{factors_dir}: missing {FACTORS_SUBDIR}/ (not a complete factors artifact)")
    return meta


def _write_final(out: Path, work: Path, config: ScoreConfig, meta_fields: dict) -> None:
    scores = np.load(work / "scores.npy", mmap_mode="r")
    with artifact_dir(out) as tmp:
        if config.scores_dtype == "float32":
            os.replace(work / "scores.npy", tmp / "scores.npy")
        else:
            _copy_rows([scores], tmp / "scores.npy", np.float16)
        del scores
        final = np.load(tmp / "scores.npy", mmap_mode="r")
        write_meta(tmp, "scores", **meta_fields, fingerprint=fingerprint_array(final))
        del final


def _copy_rows(parts: list[np.ndarray], dst_path: Path, dtype) -> None:
    """Write the row-concatenation of ``parts`` to a new ``.npy`` as ``dtype``, a slab of rows at a time."""
    n_rows = sum(p.shape[0] for p in parts)
    dst = np.lib.format.open_memmap(dst_path, mode="w+", dtype=dtype, shape=(n_rows, parts[0].shape[1]))
    offset = 0
    for part in parts:
        for start in range(0, part.shape[0], 4096):
            rows = part[start : start + 4096]
            dst[offset + start : offset + start + len(rows)] = rows
        offset += part.shape[0]
    dst.flush()
    del dst


@dataclass
class _ScoreJob:
    """The checked inputs of a scoring run and the request that identifies it."""

    config: ScoreConfig
    blocks: Blocks
    lm: Any
    factors: Path
    factors_meta: dict
    query_set: QuerySet
    query_ds: QueryBatchDataset
    request: dict
    paths: dict  # the user's paths, recorded in meta.json


def _prepare(model, blocks, queries, factors, config, queries_safe, tokenizer, trust_remote_code) -> _ScoreJob:
    config = config or ScoreConfig()
    refuse_cpu_distributed()
    factors = Path(factors)
    blocks_obj = Blocks.open(blocks)
    lm = load_checked_model(model, blocks_obj, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    check_tokens_fit(blocks_obj, lm)
    factors_meta = _check_factors(factors, lm)
    qs = load_query_set(queries, queries_safe, config)
    weighted = query_weights(qs, config.mode)
    query_ds = QueryBatchDataset(lm.tokenizer, weighted, config.max_query_tokens)
    request = {
        "stage": "scores",
        # Batching (and sharding) only regroups the same per-row computations.
        "config": {k: v for k, v in asdict(config).items() if k not in ("batch_size", "query_batch_size")},
        "model_fingerprint": lm.model_fingerprint,
        "blocks_fingerprint": blocks_obj.fingerprint,
        "factors_fingerprint": factors_meta.get("fingerprint"),
        "queries": [(q.prompt, q.continuation, w) for q, w in weighted],
    }
    paths = {"blocks": str(blocks), "queries": str(queries),
             "queries_safe": None if queries_safe is None else str(queries_safe), "factors": str(factors)}
    return _ScoreJob(config, blocks_obj, lm, factors, factors_meta, qs, query_ds, request, paths)


def _analyzer(job: _ScoreJob, work: Path):
    tracked_model, _ = prepare_tracked_model(job.lm.model, None)
    analyzer = make_analyzer(tracked_model, CausalLMTask(job.factors_meta["modules"]), work)
    _link_factors(analyzer, job.factors)
    return analyzer


def _score_rows(job: _ScoreJob, analyzer, scores: np.ndarray, first: int, stop: int, progress_path: Path) -> None:
    """Score blocks ``[first, stop)`` into ``scores`` (its row 0 is block ``first``), a chunk of
    ``chunk_blocks`` rows per kronfluence call, skipping the chunks ``progress_path`` lists as done."""
    config, block_size = job.config, job.blocks.block_size
    done = set(read_json(progress_path)["done"]) if progress_path.is_file() else set()
    starts = list(range(first, stop, config.chunk_blocks))
    for chunk, start in enumerate(starts):
        if chunk in done:
            continue
        end = min(stop, start + config.chunk_blocks)
        logger.info("scoring blocks %d-%d of %d", start, end, job.blocks.n_blocks)
        rows = BlockRows(job.blocks.input_ids, np.arange(start, end))
        scores[start - first : end - first] = _score_chunk(analyzer, job.query_ds, rows, chunk, config, block_size)
        scores.flush()
        done.add(chunk)
        write_json(progress_path, {"done": sorted(done), "chunks": len(starts)})


def _meta_fields(job: _ScoreJob) -> dict:
    config, lm = job.config, job.lm
    counts = job.query_set.counts()
    return {
        "args": {**asdict(config), "model": lm.name, **job.paths},
        "model": lm.name,
        "factors": str(job.factors),
        "factors_fingerprint": job.factors_meta.get("fingerprint"),
        "strategy": job.factors_meta.get("strategy"),
        "modules": job.factors_meta["modules"],
        "mode": config.mode,
        "granularity": config.granularity,
        "query_counts": {**counts, "used_toxic": counts["toxic"],
                         "used_safe": counts["safe"] if config.mode == "differential" else 0},
        "thresholds": {"toxic_min": config.toxic_min, "safe_max": config.safe_max},
        "normalisation": (
            "query gradient of mean_toxic(mean continuation-token NLL)"
            + (" - mean_safe(mean continuation-token NLL)" if config.mode == "differential" else "")
            + "; training loss summed over the block's tokens; positive = training on the token makes "
            "toxic continuations more likely"
        ),
        "dtype": config.dtype,
        "scores_dtype": config.scores_dtype,
        "alignment_mode": config.alignment,
        "alignment": ALIGNMENT_STATEMENTS[config.alignment]
        if config.granularity == "token"
        else "scores[i, j] for j >= 1 is the score of block i as a whole (all its targets); column 0 is NaN.",
        "blocks_fingerprint": job.blocks.fingerprint,
        "model_fingerprint": lm.model_fingerprint,
        "tokenizer_fingerprint": lm.tokenizer_fingerprint,
        "request_fingerprint": request_fingerprint(job.request),
    }


def compute_scores(
    model: Any,
    blocks: str | os.PathLike,
    queries: str | os.PathLike,
    factors: str | os.PathLike,
    out: str | os.PathLike,
    config: ScoreConfig | None = None,
    *,
    queries_safe: str | os.PathLike | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Path:
    """Score every training token of ``blocks`` and write ``out`` (see the module docstring).

    ``model`` must be the model the ``factors`` were fitted for; it may be a smaller proxy of the
    model trained later, as long as it shares the blocks' tokenizer. Returns ``out``. For a job
    array, see :func:`compute_score_shard` and :func:`merge_score_shards`.
    """
    out = Path(out)
    job = _prepare(model, blocks, queries, factors, config, queries_safe, tokenizer, trust_remote_code)
    if finished_artifact(out, "scores", job.request) is not None:
        logger.info("%s is up to date; reusing it", out)
        return out

    work = open_work_dir(out, job.request)
    analyzer = _analyzer(job, work)
    scores = _open_scores_memmap(work, job.blocks.shape)
    _score_rows(job, analyzer, scores, 0, job.blocks.n_blocks, work / PROGRESS_FILE)
    del scores
    _write_final(out, work, job.config, _meta_fields(job))
    shutil.rmtree(work, ignore_errors=True)
    logger.info("scores -> %s", out)
    return out


# ------------------------------------------------------------------------------------------ sharding
#
# Shard i/n scores the contiguous blocks [i*N//n, (i+1)*N//n) into its own directory
# SCORES_DIR.partial/shard-{i}-of-{n}/ (its own kronfluence work files, float32 scores.npy of its
# rows, progress). When it finishes it writes meta.json there, which makes the shard directory a
# scores artifact of its rows: `ifguide select --scores` accepts the shard directories in order
# as row shards. The merge concatenates them into SCORES_DIR, with the same meta.json as an
# unsharded run.

SHARD_STEP = "scores"


def _shard_dir(work: Path, shard: Shard) -> Path:
    return work / f"shard-{shard.index}-of-{shard.count}"


def compute_score_shard(
    model: Any,
    blocks: str | os.PathLike,
    queries: str | os.PathLike,
    factors: str | os.PathLike,
    out: str | os.PathLike,
    config: ScoreConfig | None = None,
    *,
    shard: Shard | tuple[int, int],
    queries_safe: str | os.PathLike | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Path:
    """Score shard ``i/n`` (blocks ``[i*N//n, (i+1)*N//n)``) into ``OUT.partial/shard-i-of-n/``.

    Run every shard (in any order, in parallel), then :func:`merge_score_shards` with the same
    arguments. An interrupted shard resumes at its first unfinished chunk; a finished one is not
    recomputed. Returns the shard's directory (``out`` itself when the merged artifact is already there).
    """
    out, shard = Path(out), Shard.of(shard)
    job = _prepare(model, blocks, queries, factors, config, queries_safe, tokenizer, trust_remote_code)
    if shard.count > job.blocks.n_blocks:
        raise InputError(f"--shard: {shard.count} shards for {job.blocks.n_blocks} blocks; "
                         "use at most one shard per block")
    if finished_artifact(out, "scores", job.request) is not None:
        logger.info("%s is already finished; nothing to do for shard %s", out, shard)
        return out
    work = open_shared_work_dir(out, job.request, shard)
    shard_dir = _shard_dir(work, shard)
    if is_done(work, SHARD_STEP, shard):
        logger.info("score shard %s already finished (%s); nothing to do", shard, shard_dir)
        return shard_dir
    shard_dir.mkdir(exist_ok=True)
    first, stop = shard.rows(job.blocks.n_blocks)
    logger.info("score shard %s: blocks %d-%d of %d", shard, first, stop, job.blocks.n_blocks)
    analyzer = _analyzer(job, shard_dir)
    scores = _open_scores_memmap(shard_dir, (stop - first, job.blocks.block_size))
    _score_rows(job, analyzer, scores, first, stop, shard_dir / PROGRESS_FILE)
    del scores
    shard_scores = np.load(shard_dir / "scores.npy", mmap_mode="r")
    # A scores artifact of its rows (float32: the working array itself), usable by `select` as a row shard.
    fields = {**_meta_fields(job), "scores_dtype": "float32", "shard": str(shard), "rows": [first, stop]}
    write_meta(shard_dir, "scores", **fields, fingerprint=fingerprint_array(shard_scores))
    del shard_scores
    mark_done(work, SHARD_STEP, shard, rows=[first, stop])
    logger.info("score shard %s -> %s", shard, shard_dir)
    return shard_dir


def merge_score_shards(
    model: Any,
    blocks: str | os.PathLike,
    queries: str | os.PathLike,
    factors: str | os.PathLike,
    out: str | os.PathLike,
    config: ScoreConfig | None = None,
    *,
    queries_safe: str | os.PathLike | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Path:
    """Concatenate the finished shards of :func:`compute_score_shard` into the scores artifact ``out``.

    Takes the same arguments as the shards; the result (scores.npy and meta.json) is the one an
    unsharded :func:`compute_scores` writes. Missing shards are an :class:`InputError` naming them.
    """
    out = Path(out)
    job = _prepare(model, blocks, queries, factors, config, queries_safe, tokenizer, trust_remote_code)
    if finished_artifact(out, "scores", job.request) is not None:
        logger.info("%s is up to date; reusing it", out)
        return out
    work, count = open_work_dir_for_merge(out, job.request)
    require_all_done(work, SHARD_STEP, count, rerun_hint=f"--shard i/{count}")
    shards = [Shard(i, count) for i in range(count)]
    parts = [np.load(_shard_dir(work, s) / "scores.npy", mmap_mode="r") for s in shards]
    for s, part in zip(shards, parts):
        first, stop = s.rows(job.blocks.n_blocks)
        if part.shape != (stop - first, job.blocks.block_size):
            raise InputError(f"{_shard_dir(work, s)}: scores.npy has shape {part.shape}, expected "
                             f"{(stop - first, job.blocks.block_size)} (blocks {first}-{stop}); re-run shard {s}")
    with artifact_dir(out) as tmp:
        _copy_rows(parts, tmp / "scores.npy", np.dtype(job.config.scores_dtype))
        del parts
        final = np.load(tmp / "scores.npy", mmap_mode="r")
        write_meta(tmp, "scores", **_meta_fields(job), fingerprint=fingerprint_array(final))
        del final
    shutil.rmtree(work, ignore_errors=True)
    logger.info("merged %d score shards -> %s", count, out)
    return out
