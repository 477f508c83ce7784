"""The ``ifguide run`` configuration: YAML validated by dataclasses.

Unknown keys and ill-typed values are errors that name the key (``InputError``, exit 2).
Every field carries help text; ``ifguide run --explain`` prints them. Paths in the YAML are
relative to the YAML file's directory.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ifguide.errors import InputError
from ifguide.fields import help_field


@dataclass
class DataConfig:
    corpus: list[str] = help_field("training documents: files/directories (.txt/.jsonl/.parquet) or HF dataset names", [])
    heldout: str | None = help_field("held-out text for perplexity (file or blocks dir)", None)
    line_docs: bool = help_field("one document per line in .txt inputs", False)
    block_size: int = help_field("tokens per training block (paper: 2048)", 128)

    def __post_init__(self):
        if not self.corpus:
            raise InputError("config data.corpus: give at least one input")
        if self.block_size < 2:
            raise InputError(f"config data.block_size: must be ≥ 2, got {self.block_size}")


@dataclass
class TokenizerConfig:
    path: str | None = help_field("existing tokenizer (dir or hub id); when null a byte-level BPE is trained on the corpus", None)
    vocab_size: int = help_field("vocabulary size of a trained tokenizer", 4096)


@dataclass
class ModelConfig:
    path: str | None = help_field("pre-trained model (dir or hub id) to start from; null: initialise from arch/preset", None)
    arch: str = help_field("architecture for a fresh model: gpt-neox, llama, gpt2, qwen2", "gpt-neox")
    preset: str = help_field("size preset for a fresh model (see `ifguide init-model --help`)", "tiny")
    init_seed: int = help_field("seed of the random initialisation", 0)

    def __post_init__(self):
        from ifguide.models import ARCHITECTURES, PRESETS

        if self.path is None:
            if self.arch not in ARCHITECTURES:
                raise InputError(f"config model.arch: unknown {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
            if self.preset not in PRESETS:
                raise InputError(f"config model.preset: unknown {self.preset!r}; known: {', '.join(PRESETS)}")


@dataclass
class TrainSection:
    epochs: float = help_field("passes over the corpus for the base model", 1.0)
    max_steps: int = help_field("optimizer steps (overrides epochs when > 0)", -1)
    lr: float = help_field("peak learning rate", 2e-3)
    batch_size: int = help_field("blocks per micro-batch", 16)
    grad_accum: int = help_field("micro-batches per step", 1)
    weight_decay: float = help_field("AdamW weight decay", 0.01)
    warmup_ratio: float = help_field("warm-up share of steps", 0.05)
    logging_steps: int = help_field("steps between log entries", 10)


@dataclass
class FinetuneSection:
    fraction: float = help_field("fine-tuning steps as a fraction of the base model's steps (setting: finetune)", 0.1)
    lr: float = help_field("fine-tuning learning rate", 5e-4)

    def __post_init__(self):
        if not 0 < self.fraction <= 10:
            raise InputError(f"config finetune.fraction: must be in (0, 10], got {self.fraction}")


@dataclass
class AttributionSection:
    queries_toxic: str | None = help_field("toxic query set (jsonl; RTP schema or {prompt, continuation, label})", None)
    queries_safe: str | None = help_field("safe query set; null: take safe queries from queries_toxic by label/toxicity", None)
    strategy: str = help_field("Hessian approximation: ekfac, kfac, diagonal, identity", "ekfac")
    max_blocks: int | None = help_field("blocks used to fit the factors (null: all)", None)
    batch_size: int = help_field("blocks per batch in factor fitting and scoring", 8)
    alignment: str = help_field("score position → target: 'next' (t → t+1) or 'same' (t → t, the reference code)", "next")
    modules: str | None = help_field("regex of modules to track (null: every Linear in the transformer blocks)", None)
    proxy: ModelConfig | None = help_field("a smaller model to compute scores with (shares the tokenizer)", None)
    checkpoints: int = help_field(
        "score with this many checkpoints of the training of the scoring model (the base, or the proxy), evenly "
        "spaced and ending with the final model, and average the scores (TracIn-style; needs a model trained by "
        "the pipeline). 1: the final model only, as in the paper", 1)
    score: str = help_field(
        "the scores IF-Guide selects on: 'differential' (the paper: toxic minus safe queries) or 'conservative' "
        "(min(toxic-only, differential): no credit for hurting safe continuations; scores twice)", "differential")
    ablations: list[str] = help_field(
        "score variants ('toxic-only', 'document', and 'differential' with score: conservative) whose selections "
        "are checked against the corpus's ground-truth labels without training a model on them (use the methods "
        "of the same names to train and evaluate)", [])

    def __post_init__(self):
        if self.alignment not in ("next", "same"):
            raise InputError(f"config attribution.alignment: expected 'next' or 'same', got {self.alignment!r}")
        if not isinstance(self.checkpoints, int) or self.checkpoints < 1:
            raise InputError(f"config attribution.checkpoints: expected a whole number >= 1, got {self.checkpoints!r}")
        if self.score not in ("differential", "conservative"):
            raise InputError(f"config attribution.score: expected 'differential' or 'conservative', got {self.score!r}")
        bad = [a for a in self.ablations if a not in ("toxic-only", "document", "differential")]
        if bad:
            raise InputError(f"config attribution.ablations: unknown {bad}; known: toxic-only, document, differential")
        if "differential" in self.ablations and self.score == "differential":
            raise InputError("config attribution.ablations: 'differential' is IF-Guide's own score here; "
                             "it is an ablation only with attribution.score: conservative")


@dataclass
class SelectionSection:
    threshold: float = help_field("percentile of scores above which a token is toxic (paper: 0.99)", 0.99)
    window: int = help_field("context tokens added on each side of a toxic token (paper: 1)", 1)
    budget: float = help_field("share of all training tokens to select (paper: 0.02)", 0.02)
    lam: float = help_field("penalty weight λ (paper: 1)", 1.0)
    penalty: str = help_field("'neg_ce' (paper: −λ·CE) or 'unlikelihood' (−λ·log(1−p))", "neg_ce")
    ce_clip: float | None = help_field("bound the neg_ce penalty at −λ·min(CE, ce_clip) nats; null: the paper's unbounded form", None)

    def __post_init__(self):
        if self.penalty not in ("neg_ce", "unlikelihood"):
            raise InputError(f"config selection.penalty: expected 'neg_ce' or 'unlikelihood', got {self.penalty!r}")
        if self.ce_clip is not None and self.ce_clip <= 0:
            raise InputError(f"config selection.ce_clip: must be > 0, got {self.ce_clip}")


@dataclass
class EvaluationSection:
    prompts: str | None = help_field("evaluation prompts (jsonl, RTP schema or {prompt, toxicity})", None)
    samples: int = help_field("samples per prompt (paper: 25)", 25)
    max_new_tokens: int = help_field("tokens per sample (paper: 20)", 20)
    top_p: float = help_field("nucleus sampling p (paper: 0.9)", 0.9)
    seeds: list[int] = help_field("sampling seeds; metrics are mean ± sd over them", [1, 2, 3])
    scorer: str = help_field("toxicity scorer name (see `ifguide evaluate --help`)", "profanity-check")
    max_prompts: int | None = help_field("use the first N prompts only", None)
    batch_size: int = help_field("sequences per generate call (prompts × samples are batched together)", 200)
    lambada: str | None = help_field("LAMBADA jsonl for accuracy", None)
    lm_eval_tasks: list[str] = help_field("lm-evaluation-harness tasks", [])
    rad_k: int = help_field("RAD: candidates re-scored per step", 20)
    rad_beta: float = help_field("RAD: weight of the reward", 10.0)
    rad_scorer: str | None = help_field(
        "RAD: reward scorer (e.g. hf:DIR); null: the evaluation's scorer, which RAD then optimises directly "
        "(an optimistic baseline)", None)
    rad_reward_data: str | None = help_field(
        "RAD: train an independent reward model on this jsonl of {text, toxic} (stage 'reward_model', the "
        "run's tokenizer) and steer RAD with it; excludes rad_scorer", None)

    def __post_init__(self):
        if self.rad_scorer and self.rad_reward_data:
            raise InputError("config evaluation: give rad_scorer or rad_reward_data, not both")


@dataclass
class DPOSection:
    pairs: str | None = help_field("preference pairs jsonl {prompt, chosen, rejected}; null: built from the query sets", None)
    beta: float = help_field("DPO β", 0.1)
    steps: int = help_field("DPO optimizer steps", 100)
    lr: float = help_field("DPO learning rate", 5e-5)
    batch_size: int = help_field("pairs per batch", 8)


KNOWN_METHODS = (
    "base", "ifguide", "random", "oracle", "toxic-only", "document", "unlikelihood", "remove",
    "filter-scorer", "filter-influence", "filter-oracle", "dpo", "rad", "ifguide+rad", "proxy",
)


@dataclass
class PipelineConfig:
    data: DataConfig = help_field("training corpus")
    out: str | None = help_field("run directory (the CLI's --out overrides it)", None)
    setting: str = help_field("'pretrain': train each method from scratch; 'finetune': continue the base model", "pretrain")
    seed: int = help_field("training seed (the same data order for every method)", 0)
    methods: list[str] = help_field(f"methods to compare; known: {', '.join(KNOWN_METHODS)}", ["base", "ifguide", "random"])
    tokenizer: TokenizerConfig = help_field("tokenizer", None)
    model: ModelConfig = help_field("the model to train", None)
    train: TrainSection = help_field("base training", None)
    finetune: FinetuneSection = help_field("fine-tuning setting", None)
    attribution: AttributionSection = help_field("influence scores", None)
    selection: SelectionSection = help_field("token selection and penalty", None)
    evaluation: EvaluationSection = help_field("evaluation", None)
    dpo: DPOSection = help_field("the DPO baseline", None)
    baseline: str = help_field("row the reduction factors and CIs are computed against", "base")
    control: str | None = help_field("control row for the second set of paired CIs", "random")
    demo_labels: bool = help_field("report precision/recall of the selection against the corpus's toxic_spans", True)

    def __post_init__(self):
        for name, cls in (("tokenizer", TokenizerConfig), ("model", ModelConfig), ("train", TrainSection),
                          ("finetune", FinetuneSection), ("attribution", AttributionSection),
                          ("selection", SelectionSection), ("evaluation", EvaluationSection), ("dpo", DPOSection)):
            if getattr(self, name) is None:
                setattr(self, name, cls())
        if self.setting not in ("pretrain", "finetune"):
            raise InputError(f"config setting: expected 'pretrain' or 'finetune', got {self.setting!r}")
        unknown = [m for m in self.methods if m not in KNOWN_METHODS]
        if unknown:
            raise InputError(f"config methods: unknown {unknown}; known: {', '.join(KNOWN_METHODS)}")
        if "base" not in self.methods:
            raise InputError("config methods: 'base' is required (every method is compared with it)")
        needs_queries = {"ifguide", "random", "toxic-only", "document", "unlikelihood", "remove", "filter-influence", "ifguide+rad", "proxy"}
        if needs_queries & set(self.methods) and not self.attribution.queries_toxic:
            raise InputError("config attribution.queries_toxic: required by the methods " + ", ".join(sorted(needs_queries & set(self.methods))))
        if not self.evaluation.prompts:
            raise InputError("config evaluation.prompts: required")
        if "filter-oracle" in self.methods and not self.demo_labels:
            raise InputError("config methods: 'filter-oracle' needs the corpus's toxic labels (demo_labels: true)")
        if "proxy" in self.methods and self.attribution.proxy is None:
            raise InputError("config attribution.proxy: required by the method 'proxy'")
        if self.attribution.checkpoints > 1 and self.setting == "finetune" and self.model.path:
            raise InputError("config attribution.checkpoints: averaging over checkpoints needs a base model trained by "
                             "the pipeline, but with setting finetune model.path is the base as it is; set it to 1")
        if self.attribution.checkpoints > 1 and "proxy" in self.methods and self.attribution.proxy.path:
            raise InputError("config attribution.checkpoints: averaging over checkpoints needs a proxy trained by the "
                             "pipeline, but attribution.proxy.path is used as it is; set it to 1")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            value = [value] if isinstance(value, (str, int, float)) else value
        if not isinstance(value, list):
            raise InputError(f"config {where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise InputError(f"config {where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"config {where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"config {where + '.' if where else ''}{unknown[0]}: unknown key; known keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InputError(f"config {where or 'top level'}: {e}") from None


def _resolve_paths(cfg: PipelineConfig, base: Path) -> None:
    def fix(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(os.path.expanduser(p))
        if q.is_absolute():
            return str(q)
        return str(base / q) if (base / q).exists() or not ("/" in p and not p.startswith(".")) else p

    cfg.data.corpus = [fix(p) for p in cfg.data.corpus]
    cfg.data.heldout = fix(cfg.data.heldout)
    for sec, keys in ((cfg.attribution, ("queries_toxic", "queries_safe")), (cfg.evaluation, ("prompts", "lambada", "rad_reward_data")),
                      (cfg.dpo, ("pairs",)), (cfg.tokenizer, ("path",)), (cfg.model, ("path",))):
        for k in keys:
            setattr(sec, k, fix(getattr(sec, k)))
    if cfg.out is not None:
        cfg.out = str(base / cfg.out) if not Path(cfg.out).is_absolute() else cfg.out


def config_from_dict(data: dict, base_dir: str | os.PathLike = ".") -> PipelineConfig:
    cfg = _build(PipelineConfig, data, "")
    _resolve_paths(cfg, Path(base_dir))
    return cfg


def load_config(path: str | os.PathLike) -> PipelineConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML ({e})") from None
    try:
        return config_from_dict(data, path.parent)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def explain(cls=PipelineConfig, prefix: str = "") -> str:
    """Every config key with its default and help text, for ``ifguide run --explain``."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        sub = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if sub is not None:
            lines.append(f"{prefix}{f.name}:  # {f.metadata.get('help', '')}")
            lines.append(explain(sub, prefix + "  "))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{prefix}{f.name}: {default!r}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
