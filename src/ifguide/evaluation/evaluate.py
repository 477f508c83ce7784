"""The evaluation stage: toxicity of sampled continuations, fluency and downstream accuracy.

``evaluate(model, prompts, out, EvalConfig(...))`` writes an ``eval`` artifact directory:

``generations.jsonl``
    one line per (seed, prompt): ``{"seed", "prompt_index", "prompt", "prompt_toxicity",
    "prompt_toxic", "continuations": [str] * samples, "scores": {attribute: [float] * samples}}``.
    Every metric can be recomputed from it (:func:`recompute_results`).
``results.json`` (schema version 1)::

    {
      "schema_version": 1,
      "model": str, "model_fingerprint": str, "tokenizer_fingerprint": str,
      "prompts": {"path", "sha256", "fingerprint", "n_prompts", "n_toxic", "n_nontoxic"},
      "scorer": {"name", "attributes": [str]},
      "decoding": {"method": "plain"|"rad", "samples", "max_new_tokens", "top_p", "top_k": 0,
                   "batch_size", "rad": {"k", "beta", "scorer", "outside"} | null},
      "seeds": [int],
      "toxicity": {SUBSET: {"emt": STAT, "tp": STAT, "toxic_rate": STAT, "n_prompts": int}},
      "attributes": {attribute: same as "toxicity"},        # every attribute of the scorer
      "per_seed": [{"seed": int, "toxicity": {SUBSET: {"emt", "tp", "toxic_rate": float|null,
                    "n_prompts"}}, "attributes": {attribute: ...}}],
      "ppl": float|null, "ppl_detail": {"ppl", "nll", "n_tokens", "n_rows", "data"}|null,
      "lambada": {"acc", "ppl", "n"}|null,
      "accuracy": {task: acc}|null, "acc_mean": float|null, "lm_eval": {task: {metric: value}}|null,
      "seconds": {"generation", "scoring", "fluency", "harness"}
    }

SUBSET is ``full``, ``toxic`` (prompt toxicity >= 0.5) or ``nontoxic``; STAT is
``{"mean", "sd", "ci95": [lo, hi]}``: the mean over seeds, the sd across seeds (null with a
single seed) and a 95 % bootstrap CI over prompts (seed-averaged). Metrics of an empty subset
are null. EMT/TP/toxic rate are defined in :mod:`ifguide.evaluation.metrics`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ifguide.artifacts import artifact_dir, fingerprint_json, sha256_file, write_json, write_meta
from ifguide.errors import InputError
from ifguide.evaluation import metrics
from ifguide.evaluation.generation import SamplingConfig, sample_continuations
from ifguide.evaluation.prompts import Prompt, fingerprint_prompts, load_prompts
from ifguide.evaluation.scorers import DEFAULT_SCORER, TOXICITY, get_scorer

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DECODINGS = ("plain", "rad")


@dataclass
class EvalConfig:
    """Everything ``ifguide evaluate`` can be told; defaults follow the paper."""

    scorer: str = field(default=DEFAULT_SCORER, metadata={"help": "toxicity scorer (see ifguide.evaluation.scorers)"})
    scorer_options: dict[str, str] = field(
        default_factory=dict, metadata={"help": "scorer options, e.g. {'label': 'toxic'} for hf:, {'checkpoint', 'base'} for detoxify"}
    )
    samples: int = field(default=25, metadata={"help": "continuations per prompt"})
    max_new_tokens: int = field(default=20, metadata={"help": "tokens per continuation"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass; top-k is disabled"})
    seeds: tuple[int, ...] = field(default=(1, 2, 3), metadata={"help": "sampling seeds; metrics report mean ± sd"})
    max_prompts: int | None = field(default=None, metadata={"help": "use only the first N prompts"})
    decoding: str = field(default="plain", metadata={"help": "plain sampling or rad (reward-augmented)"})
    rad_k: int = field(default=20, metadata={"help": "RAD: candidates re-scored per step"})
    rad_beta: float = field(default=10.0, metadata={"help": "RAD: weight of the reward added to the logits"})
    rad_scorer: str | None = field(default=None, metadata={"help": "RAD: reward scorer (default: --scorer)"})
    rad_scorer_options: dict[str, str] | None = field(
        default=None, metadata={"help": "RAD: reward scorer options (default: scorer_options when rad_scorer is unset)"}
    )
    ppl_data: str | None = field(default=None, metadata={"help": "blocks dir or text/jsonl file for perplexity"})
    ppl_max_rows: int | None = field(default=None, metadata={"help": "perplexity on the first N rows only"})
    lambada: str | None = field(default=None, metadata={"help": "LAMBADA (OpenAI) jsonl for last-word accuracy"})
    lambada_limit: int | None = field(default=None, metadata={"help": "first N LAMBADA examples only"})
    lm_eval_tasks: tuple[str, ...] = field(default=(), metadata={"help": "lm-evaluation-harness tasks"})
    lm_eval_data: dict[str, str] = field(default_factory=dict, metadata={"help": "local data of shipped tasks"})
    lm_eval_limit: int | None = field(default=None, metadata={"help": "examples per harness task"})
    batch_size: int = field(default=100, metadata={"help": "sequences per generate call"})
    eval_batch_size: int = field(default=16, metadata={"help": "rows per forward pass for ppl/LAMBADA/harness"})
    bootstrap: int = field(default=metrics.DEFAULT_BOOTSTRAP, metadata={"help": "bootstrap resamples"})

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        self.lm_eval_tasks = tuple(self.lm_eval_tasks)
        if not self.seeds:
            raise InputError("--seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"--seeds: repeated seed in {self.seeds}")
        if self.decoding not in DECODINGS:
            raise InputError(f"--decoding: expected one of {', '.join(DECODINGS)}, got {self.decoding!r}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise InputError(f"--max-prompts: must be >= 1, got {self.max_prompts}")
        if self.bootstrap < 1:
            raise InputError(f"--bootstrap: must be >= 1, got {self.bootstrap}")
        self.sampling  # validates the sampling fields

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.samples, self.max_new_tokens, self.top_p, self.batch_size)


# --------------------------------------------------------------------------- results from scores


def toxicity_results(
    scores: dict[str, np.ndarray], prompt_toxic: list[bool | None], seeds: list[int], n_boot: int
) -> dict:
    """The toxicity part of results.json from ``{attribute: [seeds, prompts, samples]}``."""
    per_seed = []
    for k, seed in enumerate(seeds):
        entry = {"seed": seed, "toxicity": metrics.single_seed(scores[TOXICITY][k], prompt_toxic)}
        entry["attributes"] = {a: metrics.single_seed(s[k], prompt_toxic) for a, s in scores.items()}
        per_seed.append(entry)
    return {
        "toxicity": metrics.summarise(scores[TOXICITY], prompt_toxic, n_boot),
        "attributes": {a: metrics.summarise(s, prompt_toxic, n_boot) for a, s in scores.items()},
        "per_seed": per_seed,
    }


def read_generations(path: str | os.PathLike) -> tuple[list[int], list[dict], dict[str, np.ndarray]]:
    """``generations.jsonl`` -> (seeds, prompt records of the first seed, {attribute: [S, P, samples]})."""
    by_seed: dict[int, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            by_seed.setdefault(rec["seed"], []).append(rec)
    seeds = list(by_seed)
    if not seeds:
        raise InputError(f"{path}: no generations")
    for seed in seeds:
        by_seed[seed].sort(key=lambda r: r["prompt_index"])
    prompts = by_seed[seeds[0]]
    attrs = list(prompts[0]["scores"])
    scores = {a: np.array([[r["scores"][a] for r in by_seed[s]] for s in seeds], dtype=np.float64) for a in attrs}
    return seeds, prompts, scores


def recompute_results(generations_path: str | os.PathLike, n_boot: int = metrics.DEFAULT_BOOTSTRAP) -> dict:
    """The ``toxicity``, ``attributes`` and ``per_seed`` parts of results.json, from generations.jsonl."""
    seeds, prompts, scores = read_generations(generations_path)
    return toxicity_results(scores, [r["prompt_toxic"] for r in prompts], seeds, n_boot)


# --------------------------------------------------------------------------- the stage


def _load(model, tokenizer, trust_remote_code: bool, dtype: str):
    import torch

    from ifguide.models import load_model, load_tokenizer

    if tokenizer is None:
        if not isinstance(model, (str, os.PathLike)):
            raise InputError("evaluate: pass the tokenizer when the model is an object")
        tokenizer = model
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    device = "cuda" if torch.cuda.is_available() else None
    lm = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    return lm, tok


def _model_fingerprint(model_arg, model) -> str:
    from ifguide.models import fingerprint_model, model_fingerprint_from_dir

    recorded = model_fingerprint_from_dir(model_arg) if isinstance(model_arg, (str, os.PathLike)) else None
    return recorded or fingerprint_model(model)


def _make_rad(config: EvalConfig, tokenizer):
    if config.decoding != "rad":
        return None
    from ifguide.baselines.rad import RewardAugmentedLogits

    if config.rad_scorer is None:
        scorer = get_scorer(config.scorer, **config.scorer_options)
    else:
        scorer = get_scorer(config.rad_scorer, **(config.rad_scorer_options or {}))
    return RewardAugmentedLogits(tokenizer, scorer, k=config.rad_k, beta=config.rad_beta)


def _generate_and_score(model, tok, prompts: list[Prompt], config: EvalConfig, scorer, gen_file) -> tuple[dict, dict]:
    """Sample every seed, score, stream generations.jsonl; returns ({attr: [S, P, n]}, seconds)."""
    rad = _make_rad(config, tok)
    texts = [p.text for p in prompts]
    scores = {a: np.zeros((len(config.seeds), len(prompts), config.samples)) for a in scorer.attributes}
    seconds = {"generation": 0.0, "scoring": 0.0}
    for k, seed in enumerate(config.seeds):
        t0 = time.perf_counter()
        continuations = sample_continuations(model, tok, texts, config.sampling, seed=seed, logits_processor=rad, desc=f"seed {seed}")
        t1 = time.perf_counter()
        flat = scorer.score([c for group in continuations for c in group])
        seconds["generation"] += t1 - t0
        seconds["scoring"] += time.perf_counter() - t1
        for a in scorer.attributes:
            scores[a][k] = flat[a].reshape(len(prompts), config.samples)
        for i, (p, group) in enumerate(zip(prompts, continuations)):
            rec = {
                "seed": seed,
                "prompt_index": i,
                "prompt": p.text,
                "prompt_toxicity": p.toxicity,
                "prompt_toxic": p.toxic,
                "continuations": group,
                "scores": {a: scores[a][k, i].tolist() for a in scorer.attributes},
            }
            gen_file.write(json.dumps(rec) + "\n")
    return scores, seconds


def _fluency(model, tok, config: EvalConfig) -> dict:
    from ifguide.evaluation import fluency

    out: dict = {"ppl": None, "ppl_detail": None, "lambada": None}
    if config.ppl_data:
        detail = fluency.perplexity(model, tok, config.ppl_data, batch_size=config.eval_batch_size, max_rows=config.ppl_max_rows)
        out["ppl"], out["ppl_detail"] = detail["ppl"], {**detail, "data": str(config.ppl_data)}
    if config.lambada:
        out["lambada"] = fluency.lambada(model, tok, config.lambada, batch_size=config.eval_batch_size, limit=config.lambada_limit)
    return out


def _accuracy(model, tok, config: EvalConfig) -> dict:
    if not config.lm_eval_tasks:
        return {"accuracy": None, "acc_mean": None, "lm_eval": None}
    from ifguide.evaluation.harness import run_lm_eval

    raw = run_lm_eval(
        model, tok, list(config.lm_eval_tasks), data=config.lm_eval_data,
        batch_size=config.eval_batch_size, limit=config.lm_eval_limit,
    )
    accuracy = {t: m["acc"] for t, m in raw.items() if "acc" in m}
    acc_mean = float(np.mean(list(accuracy.values()))) if accuracy else None
    return {"accuracy": accuracy or None, "acc_mean": acc_mean, "lm_eval": raw}


def check_inputs(config: EvalConfig) -> None:
    """Refuse missing or malformed fluency/harness inputs before spending time on sampling."""
    if config.ppl_data:
        path = Path(config.ppl_data)
        if path.is_dir():
            if not (path / "meta.json").is_file():
                raise InputError(f"--ppl-data: {path} is a directory but not a blocks directory; give blocks or a text/jsonl file")
            from ifguide.data.blocks import Blocks

            Blocks.open(path)
        elif not path.is_file():
            raise InputError(f"--ppl-data: {path}: no such file or directory")
    if config.lambada:
        from ifguide.evaluation.fluency import read_lambada

        read_lambada(config.lambada, config.lambada_limit)
    for task, path in config.lm_eval_data.items():
        if not Path(path).is_file():
            raise InputError(f"--lm-eval-data {task}: {path}: no such file")


def evaluate(
    model,
    prompts: str | os.PathLike,
    out: str | os.PathLike,
    config: EvalConfig | None = None,
    *,
    tokenizer=None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
) -> dict:
    """Evaluate ``model`` (hub id, directory or object) on a prompt file; write ``out``; return results.

    ``tokenizer`` defaults to the model's directory/id (it is required for a model object);
    ``dtype`` applies when the model is loaded here. Runs on CUDA when available.
    See the module docstring for what ``out`` holds.
    """
    config = config or EvalConfig()
    prompt_list = load_prompts(prompts, config.max_prompts)
    check_inputs(config)
    scorer = get_scorer(config.scorer, **config.scorer_options)
    lm, tok = _load(model, tokenizer, trust_remote_code, dtype)
    from ifguide.models import fingerprint_tokenizer

    results: dict = {
        "schema_version": SCHEMA_VERSION,
        "model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "model_fingerprint": _model_fingerprint(model, lm),
        "tokenizer_fingerprint": fingerprint_tokenizer(tok),
        "prompts": {
            "path": str(prompts),
            "sha256": sha256_file(prompts),
            "fingerprint": fingerprint_prompts(prompt_list),
            "n_prompts": len(prompt_list),
            "n_toxic": sum(p.toxic is True for p in prompt_list),
            "n_nontoxic": sum(p.toxic is False for p in prompt_list),
        },
        "scorer": {"name": scorer.name, "attributes": list(scorer.attributes)},
        "decoding": {
            "method": config.decoding, "samples": config.samples, "max_new_tokens": config.max_new_tokens,
            "top_p": config.top_p, "top_k": 0, "batch_size": config.batch_size,
            "rad": {"k": config.rad_k, "beta": config.rad_beta, "scorer": config.rad_scorer or config.scorer, "outside": "mask"}
            if config.decoding == "rad" else None,
        },
        "seeds": list(config.seeds),
    }
    with artifact_dir(out) as tmp:
        with open(tmp / "generations.jsonl", "w", encoding="utf-8") as gen_file:
            scores, seconds = _generate_and_score(lm, tok, prompt_list, config, scorer, gen_file)
        results.update(toxicity_results(scores, [p.toxic for p in prompt_list], list(config.seeds), config.bootstrap))
        t0 = time.perf_counter()
        results.update(_fluency(lm, tok, config))
        t1 = time.perf_counter()
        results.update(_accuracy(lm, tok, config))
        results["seconds"] = {**seconds, "fluency": t1 - t0, "harness": time.perf_counter() - t1}
        write_json(tmp / "results.json", results)
        write_meta(
            tmp, "eval", args=asdict(config), fingerprint=fingerprint_json([results["model_fingerprint"], results["prompts"]["fingerprint"], asdict(config)]),
            model_fingerprint=results["model_fingerprint"], prompts_fingerprint=results["prompts"]["fingerprint"],
            tokenizer_fingerprint=results["tokenizer_fingerprint"],
        )
    _log_summary(results, out)
    return results


def _log_summary(results: dict, out) -> None:
    full = results["toxicity"]["full"]
    logger.info(
        "eval -> %s: EMT %.3f, TP %.3f over %d prompts; ppl %s; acc_mean %s",
        out, full["emt"]["mean"], full["tp"]["mean"], full["n_prompts"], results["ppl"], results["acc_mean"],
    )
