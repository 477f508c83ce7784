"""``ifguide run``: corpus → detoxified model(s) → evaluation → comparison → report.

Stages (each a directory under the run directory, see :mod:`ifguide.pipeline.stages`)::

    tokenizer/  blocks/  heldout/  init/  models/base/
    factors/  scores/{differential,toxic-only,conservative,document}/  masks/{ifguide,random,oracle,...}/
    models/{ifguide,random,...}/  eval/{base,ifguide,...}/  compare/  report.html  summary.json

Every method shares the tokenizer, blocks, base model, seed (hence data order), budget and
evaluation. In the ``pretrain`` setting each masked method trains from the same initialisation
for as many steps as the base model; in ``finetune`` it continues the base model for
``finetune.fraction`` of the base model's steps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ifguide.artifacts import read_meta, sha256_file
from ifguide.errors import InputError
from ifguide.pipeline.config import PipelineConfig
from ifguide.pipeline.stages import StageRunner, artifact_fingerprint

logger = logging.getLogger("ifguide.pipeline")

# Which scores and mask each masked method trains with, and how.
MASKED_METHODS = {
    "ifguide": {"mask": "ifguide"},
    "random": {"mask": "random"},
    "oracle": {"mask": "oracle"},
    "toxic-only": {"mask": "toxic-only"},
    "document": {"mask": "document"},
    "unlikelihood": {"mask": "ifguide", "penalty": "unlikelihood"},
    "remove": {"mask": "ifguide", "lam": 0.0},
    "proxy": {"mask": "proxy"},
}
SCORE_VARIANTS = {"ifguide": "differential", "toxic-only": "toxic-only", "document": "document", "random": "differential",
                  "oracle": "differential", "filter-influence": "differential"}
RAD_METHODS = {"rad": "base", "ifguide+rad": "ifguide"}
FILTER_METHODS = ("filter-scorer", "filter-influence", "filter-oracle")


def _file_key(path: str | None) -> Any:
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        return sorted((str(f.relative_to(p)), sha256_file(f)) for f in p.rglob("*") if f.is_file())
    return str(path)  # a hub name


@dataclass
class Run:
    """State shared by the stages of one pipeline run."""

    cfg: PipelineConfig
    stages: StageRunner
    _tokenizer_fps: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.stages.root

    # ------------------------------------------------------------------ data and base model
    def tokenizer(self) -> str:
        cfg = self.cfg
        if cfg.tokenizer.path:
            return cfg.tokenizer.path
        if cfg.model.path:
            return cfg.model.path

        def build(out: Path) -> None:
            from ifguide.data.tokenizer import train_tokenizer

            train_tokenizer(cfg.data.corpus, cfg.tokenizer.vocab_size, out, line_docs=cfg.data.line_docs)

        key = {"corpus": [_file_key(p) for p in cfg.data.corpus], "vocab": cfg.tokenizer.vocab_size, "line_docs": cfg.data.line_docs}
        return str(self.stages.run("tokenizer", key, build))

    def tokenizer_fp(self, tok: str) -> str:
        """Fingerprint of a tokenizer, loaded once per run (several stage keys need it)."""
        from ifguide.models import fingerprint_tokenizer, load_tokenizer

        if tok not in self._tokenizer_fps:
            self._tokenizer_fps[tok] = fingerprint_tokenizer(load_tokenizer(tok))
        return self._tokenizer_fps[tok]

    def blocks(self, tok: str, name: str = "blocks", data: list[str] | None = None) -> str:
        cfg = self.cfg
        data = data or cfg.data.corpus

        def build(out: Path) -> None:
            from ifguide.data.prepare import prepare_blocks

            prepare_blocks(data, tok, cfg.data.block_size, out, line_docs=cfg.data.line_docs)

        key = {"data": [_file_key(p) for p in data], "tokenizer": self.tokenizer_fp(tok), "block_size": cfg.data.block_size}
        return str(self.stages.run(name, key, build))

    def start_model(self, tok: str, model_cfg=None, name: str = "init") -> str:
        model_cfg = model_cfg or self.cfg.model
        if model_cfg.path:
            return model_cfg.path

        def build(out: Path) -> None:
            from ifguide.models import init_model

            init_model(model_cfg.arch, model_cfg.preset, tok, out, seed=model_cfg.init_seed)

        key = {"arch": model_cfg.arch, "preset": model_cfg.preset, "seed": model_cfg.init_seed, "tokenizer": self.tokenizer_fp(tok)}
        return str(self.stages.run(name, key, build))

    def base_train_config(self, **overrides):
        from ifguide.training.train import TrainConfig

        t = self.cfg.train
        kw = dict(epochs=t.epochs, max_steps=t.max_steps, lr=t.lr, batch_size=t.batch_size, grad_accum=t.grad_accum,
                  weight_decay=t.weight_decay, warmup_ratio=t.warmup_ratio, logging_steps=t.logging_steps,
                  seed=self.cfg.seed, lam=self.cfg.selection.lam, penalty=self.cfg.selection.penalty,
                  ce_clip=self.cfg.selection.ce_clip)
        kw.update(overrides)
        return TrainConfig(**kw)

    def train_stage(self, name: str, start: str, blocks: str, config, mask: str | None = None) -> str:
        def build(out: Path) -> None:
            from ifguide.training.train import train

            train(start, blocks, out, mask=mask, config=config)

        from ifguide.training.train import config_record

        key = {"start": _model_key(start), "blocks": artifact_fingerprint(blocks), "config": config_record(config),
               "mask": artifact_fingerprint(mask) if mask else None}
        return str(self.stages.run(name, key, build))

    def base_model(self, start: str, blocks: str) -> str:
        cfg = self.cfg
        if cfg.setting == "finetune" and cfg.model.path:
            return cfg.model.path  # a pre-trained model is the base as it is (config refuses checkpoints > 1)
        return self.train_stage("models/base", start, blocks, self.scoring_model_config())

    def scoring_model_config(self):
        """Training configuration of a model that computes scores (the base, a proxy): the base's, plus
        the snapshots that ``attribution.checkpoints`` averages over."""
        n = self.cfg.attribution.checkpoints
        return self.base_train_config(**({"snapshots": n} if n > 1 else {}))

    def method_train_config(self, base: str, **overrides):
        """Training configuration of a method: the base's (pretrain) or a short continuation (finetune)."""
        cfg = self.cfg
        if cfg.setting == "pretrain":
            return self.base_train_config(**overrides)
        base_steps = read_meta(base).get("steps") if (Path(base) / "meta.json").is_file() else None
        if not base_steps:
            raise InputError("setting finetune: the base model has no recorded step count; set train.max_steps")
        steps = max(1, round(cfg.finetune.fraction * base_steps))
        return self.base_train_config(max_steps=steps, lr=cfg.finetune.lr, **overrides)

    # ------------------------------------------------------------------ attribution and masks
    def factors(self, model: str, blocks: str, name: str = "factors") -> str:
        a = self.cfg.attribution

        def build(out: Path) -> None:
            from ifguide.attribution.factors import FactorConfig, fit_factors

            fit_factors(model, blocks, out, FactorConfig(strategy=a.strategy, max_blocks=a.max_blocks,
                                                         batch_size=a.batch_size, modules=a.modules))

        key = {"model": _model_key(model), "blocks": artifact_fingerprint(blocks), "strategy": a.strategy,
               "max_blocks": a.max_blocks, "modules": a.modules}
        return str(self.stages.run(name, key, build))

    def scores(self, variant: str, model: str, blocks: str, factors: str, name: str | None = None) -> str:
        a = self.cfg.attribution
        mode = "toxic-only" if variant == "toxic-only" else "differential"
        granularity = "document" if variant == "document" else "token"

        def build(out: Path) -> None:
            from ifguide.attribution.scores import ScoreConfig, compute_scores

            compute_scores(model, blocks, a.queries_toxic, factors, out,
                           ScoreConfig(mode=mode, granularity=granularity, alignment=a.alignment, batch_size=a.batch_size),
                           queries_safe=a.queries_safe)

        key = {"factors": artifact_fingerprint(factors), "blocks": artifact_fingerprint(blocks), "model": _model_key(model),
               "queries": [_file_key(a.queries_toxic), _file_key(a.queries_safe)], "mode": mode,
               "granularity": granularity, "alignment": a.alignment}
        return str(self.stages.run(name or f"scores/{variant}", key, build))

    def influence_scores(self, model: str, blocks: str, variants: list[str], *, prefix: str = "",
                         scores_name=None) -> dict[str, str]:
        """Scores of each variant from ``model`` or, with ``attribution.checkpoints`` > 1, the mean of the
        scores of its training snapshots and of the final model. Each checkpoint's factors are fitted
        once and serve every variant.

        Stages: ``{prefix}factors`` and ``scores_name(variant)`` (default ``{prefix}scores/{variant}``);
        the per-checkpoint ones under ``{prefix}checkpoints/step-K/``.
        """
        name = scores_name or (lambda variant: f"{prefix}scores/{variant}")
        if self.cfg.attribution.checkpoints <= 1:
            factors = self.factors(model, blocks, name=f"{prefix}factors")
            return {v: self.scores(v, model, blocks, factors, name=name(v)) for v in variants}
        from ifguide.training.train import list_snapshots

        final = f"step-{read_meta(model, stage='model')['steps']}"
        parts: dict[str, list[str]] = {v: [] for v in variants}
        for ckpt, tag in [(str(Path(model) / s), Path(s).name) for s in list_snapshots(model)] + [(model, final)]:
            factors = self.factors(ckpt, blocks, name=f"{prefix}checkpoints/{tag}/factors")
            for v in variants:
                parts[v].append(self.scores(v, ckpt, blocks, factors, name=f"{prefix}checkpoints/{tag}/scores/{v}"))
        return {v: self.averaged_scores(name(v), parts[v]) for v in variants}

    def averaged_scores(self, name: str, parts: list[str]) -> str:
        def build(out: Path) -> None:
            from ifguide.attribution.average import average_scores

            average_scores(parts, out)

        return str(self.stages.run(name, {"average_of": [artifact_fingerprint(p) for p in parts]}, build))

    def conservative_scores(self, differential: str, toxic_only: str, name: str = "scores/conservative") -> str:
        def build(out: Path) -> None:
            from ifguide.attribution.conservative import conservative_scores

            conservative_scores(differential, toxic_only, out)

        key = {"differential": artifact_fingerprint(differential), "toxic_only": artifact_fingerprint(toxic_only)}
        return str(self.stages.run(name, key, build))

    def document_scores(self, token_scores: str) -> str:
        """Document-level scores as the row sums of the token scores.

        kronfluence's per-example score of a block is the sum of its per-token scores (the
        training loss is summed over the block's targets), so this equals ``ifguide score
        --granularity document`` without a second pass over the corpus (checked in the tests).
        """

        def build(out: Path) -> None:
            from ifguide.artifacts import artifact_dir, fingerprint_array, write_meta

            src = np.load(Path(token_scores) / "scores.npy", mmap_mode="r")
            meta = read_meta(token_scores, stage="scores")
            with artifact_dir(out) as tmp:
                dst = np.lib.format.open_memmap(tmp / "scores.npy", mode="w+", dtype=src.dtype, shape=src.shape)
                step = max(1, (1 << 22) // max(1, src.shape[1]))
                for r in range(0, src.shape[0], step):
                    rows = np.asarray(src[r : r + step], dtype=np.float64)
                    finite = np.isfinite(rows)
                    sums = np.where(finite, rows, 0.0).sum(axis=1, keepdims=True)
                    dst[r : r + step] = np.where(finite, sums, np.nan)
                dst.flush()
                keep = ("model", "factors", "factors_fingerprint", "strategy", "modules", "mode", "query_counts", "thresholds",
                        "normalisation", "alignment_mode", "blocks_fingerprint", "model_fingerprint", "tokenizer_fingerprint")
                write_meta(tmp, "scores", **{k: meta[k] for k in keep if k in meta}, granularity="document",
                           derived_from=meta["fingerprint"],
                           alignment="scores[i, j] for j >= 1 is the score of block i as a whole (the sum of its token "
                                     "scores); column 0 is NaN.",
                           fingerprint=fingerprint_array(dst))
                del dst

        return str(self.stages.run("scores/document", {"token_scores": artifact_fingerprint(token_scores)}, build))

    def select(self, name: str, scores: str) -> str:
        s = self.cfg.selection

        def build(out: Path) -> None:
            from ifguide.selection.masks import select_to_artifact

            select_to_artifact(scores, out, threshold=s.threshold, window=s.window, budget=s.budget)

        key = {"scores": artifact_fingerprint(scores), "threshold": s.threshold, "window": s.window, "budget": s.budget}
        return str(self.stages.run(f"masks/{name}", key, build))

    def control_mask(self, kind: str, like: str, blocks: str, scores: str) -> str:
        def build(out: Path) -> None:
            from ifguide.selection.masks import oracle_mask_artifact, random_mask_artifact

            if kind == "random":
                random_mask_artifact(like, out, seed=self.cfg.seed, window=self.cfg.selection.window, scores=scores)
            else:
                oracle_mask_artifact(like, blocks, out, seed=self.cfg.seed)

        key = {"like": artifact_fingerprint(like), "blocks": artifact_fingerprint(blocks), "seed": self.cfg.seed, "kind": kind}
        return str(self.stages.run(f"masks/{kind}", key, build))

    # ------------------------------------------------------------------ evaluation
    def reward_model(self, tok: str) -> str:
        """The RAD reward: a classifier trained on ``evaluation.rad_reward_data`` (independent of the
        evaluation's scorer), as a scorer name."""
        data = self.cfg.evaluation.rad_reward_data

        def build(out: Path) -> None:
            from ifguide.baselines.reward import RewardModelConfig, train_reward_model

            train_reward_model(data, tok, out, RewardModelConfig(seed=self.cfg.seed))

        key = {"data": _file_key(data), "tokenizer": self.tokenizer_fp(tok), "seed": self.cfg.seed}
        return "hf:" + str(self.stages.run("reward_model", key, build))

    def eval_config(self, decoding: str = "plain", heldout: str | None = None, rad_scorer: str | None = None):
        from ifguide.evaluation.evaluate import EvalConfig

        e = self.cfg.evaluation
        return EvalConfig(scorer=e.scorer, samples=e.samples, max_new_tokens=e.max_new_tokens, top_p=e.top_p,
                          seeds=tuple(e.seeds), max_prompts=e.max_prompts, decoding=decoding, rad_k=e.rad_k,
                          rad_beta=e.rad_beta, rad_scorer=rad_scorer or e.rad_scorer, ppl_data=heldout,
                          lambada=e.lambada, lm_eval_tasks=tuple(e.lm_eval_tasks), batch_size=e.batch_size)

    def evaluate(self, name: str, model: str, decoding: str, heldout: str | None, rad_scorer: str | None = None) -> str:
        config = self.eval_config(decoding, heldout, rad_scorer)

        def build(out: Path) -> None:
            from ifguide.evaluation.evaluate import evaluate

            evaluate(model, self.cfg.evaluation.prompts, out, config)

        settings = dataclasses.asdict(config)
        settings.pop("ppl_data")  # a path: the held-out data is keyed by its fingerprint below
        if decoding == "plain":  # RAD's settings do not change a plain evaluation
            settings = {k: v for k, v in settings.items() if not k.startswith("rad_")}
        elif config.rad_scorer and config.rad_scorer.startswith("hf:") and (Path(config.rad_scorer[3:]) / "meta.json").is_file():
            settings["rad_scorer"] = artifact_fingerprint(config.rad_scorer[3:])  # the model, not its path
        key = {"model": _model_key(model), "prompts": _file_key(self.cfg.evaluation.prompts), "config": settings,
               "heldout": artifact_fingerprint(heldout) if heldout and (Path(heldout) / "meta.json").is_file() else _file_key(heldout)}
        return str(self.stages.run(f"eval/{name}", key, build))


def _model_key(model: str) -> Any:
    p = Path(model)
    if (p / "meta.json").is_file():
        return artifact_fingerprint(p)
    return _file_key(model)


def attribution_quality(mask_dir: str, blocks_dir: str, window: int, scores_dir: str | None = None) -> dict | None:
    """Precision/recall of a selection against the corpus's ground-truth toxic tokens.

    A selected token counts as correct when it is planted toxicity or within ``window`` tokens of
    it (the selection adds a ±window context by design). Recall is the share of planted targets
    (column ≥ 1) that were selected. With scores, also the token-level AUROC of the scores.
    """
    from ifguide.data.blocks import Blocks
    from ifguide.selection.algorithm import dilate_rows
    from ifguide.selection.masks import read_mask

    blocks = Blocks.open(blocks_dir)
    if blocks.toxic_labels is None:
        return None
    planted = np.asarray(blocks.toxic_labels, dtype=bool).copy()
    planted[:, 0] = False
    mask = np.asarray(read_mask(mask_dir)[0], dtype=bool)
    near = dilate_rows(planted, window)
    n_sel = int(mask.sum())
    out = {
        "precision": float((mask & near).sum() / n_sel) if n_sel else None,
        "recall": float((mask & planted).sum() / planted.sum()) if planted.sum() else None,
        "strict_precision": float((mask & planted).sum() / n_sel) if n_sel else None,
        "n_selected": n_sel,
        "n_planted": int(planted.sum()),
    }
    if scores_dir is not None:
        from sklearn.metrics import roc_auc_score

        scores = np.load(Path(scores_dir) / "scores.npy", mmap_mode="r")
        finite = np.isfinite(scores)
        if planted[finite].any() and (~planted[finite]).any():
            out["token_auroc"] = float(roc_auc_score(planted[finite], np.asarray(scores)[finite]))
    return out


def run_pipeline(cfg: PipelineConfig, out: str | os.PathLike | None = None, *, force: bool = False) -> dict:
    """Run every stage the configured methods need; return the summary (also ``OUT/summary.json``)."""
    out = Path(out or cfg.out or "runs/ifguide")
    t_start = time.perf_counter()
    run = Run(cfg, StageRunner(out, force=force))
    methods = list(dict.fromkeys(cfg.methods))
    tok = run.tokenizer()
    blocks = run.blocks(tok)
    heldout = run.blocks(tok, "heldout", [cfg.data.heldout]) if cfg.data.heldout else None
    start = run.start_model(tok)
    base = run.base_model(start, blocks)

    models: dict[str, str] = {"base": base}
    masks: dict[str, str] = {}
    scores: dict[str, str] = {}
    guide = cfg.attribution.score  # the scores IF-Guide's mask (and the controls sized like it) come from
    needs_scores = {SCORE_VARIANTS[m] for m in methods if m in SCORE_VARIANTS} | set(cfg.attribution.ablations) | (
        {"differential"} if set(methods) & {"unlikelihood", "remove", "ifguide+rad", "filter-scorer"} else set()
    )
    if needs_scores - {"differential"}:
        needs_scores.add("differential")
    if needs_scores and guide == "conservative":
        needs_scores.add("toxic-only")
    if needs_scores:
        scores.update(run.influence_scores(base, blocks, sorted(needs_scores - {"document"})))
        if guide == "conservative":
            scores["conservative"] = run.conservative_scores(scores["differential"], scores["toxic-only"])
        scores["ifguide"] = scores[guide]
        if "document" in needs_scores:
            scores["document"] = run.document_scores(scores["differential"])
        masks["ifguide"] = run.select("ifguide", scores["ifguide"])
        for variant in ("toxic-only", "document"):
            if variant in scores:
                masks[variant] = run.select(variant, scores[variant])
        if "differential" in cfg.attribution.ablations:  # only with score: conservative (checked by the config)
            masks["differential"] = run.select("differential", scores["differential"])
        for kind in ("random", "oracle"):
            if kind in methods:
                masks[kind] = run.control_mask(kind, masks["ifguide"], blocks, scores["ifguide"])
    if "proxy" in methods:
        masks["proxy"], scores["proxy"] = _proxy_mask(run, tok, blocks)

    train_start = start if cfg.setting == "pretrain" else base
    for m in methods:
        if m in MASKED_METHODS:
            spec = MASKED_METHODS[m]
            overrides = {k: v for k, v in spec.items() if k in ("lam", "penalty")}
            config = run.method_train_config(base, **overrides)
            models[m] = run.train_stage(f"models/{m}", train_start, blocks, config, mask=masks[spec["mask"]])
        elif m in FILTER_METHODS:
            models[m] = _filtered_model(run, m, train_start, base, blocks, tok, masks.get("ifguide"), scores.get("ifguide"))
        elif m == "dpo":
            models[m] = _dpo_model(run, base)

    evals: dict[str, str] = {}
    reward = run.reward_model(tok) if cfg.evaluation.rad_reward_data and set(methods) & set(RAD_METHODS) else None
    for m in methods:
        if m in RAD_METHODS:
            evals[m] = run.evaluate(m, models[RAD_METHODS[m]], "rad", heldout, rad_scorer=reward)
        else:
            evals[m] = run.evaluate(m, models[m], "plain", heldout)

    from ifguide.pipeline.report import write_report, write_summary

    quality = {}
    if cfg.demo_labels:
        for m in methods:
            spec = MASKED_METHODS.get(m)
            if spec and spec["mask"] in masks:
                mask = spec["mask"]  # masks built from scores are stored under the name of their scores
                quality[m] = attribution_quality(masks[mask], blocks, cfg.selection.window,
                                                 scores.get(mask) if mask in ("ifguide", "toxic-only", "document") else None)
        for variant in cfg.attribution.ablations:
            if variant not in quality:
                quality[variant] = attribution_quality(masks[variant], blocks, cfg.selection.window,
                                                       scores.get(variant))
    summary = write_summary(run, methods, evals, models, masks, quality, time.perf_counter() - t_start)
    write_report(run, summary, methods, evals, models, masks, scores, blocks, tok)
    return summary


def _proxy_mask(run: Run, tok: str, blocks: str) -> tuple[str, str]:
    """Scores from a smaller proxy model (trained like the base) guide the target model."""
    proxy_cfg = run.cfg.attribution.proxy
    start = run.start_model(tok, proxy_cfg, name="proxy/init")
    proxy = run.train_stage("proxy/model", start, blocks, run.scoring_model_config()) if not proxy_cfg.path else proxy_cfg.path
    if run.cfg.attribution.score == "differential":
        scores = run.influence_scores(proxy, blocks, ["differential"], prefix="proxy/",
                                      scores_name=lambda _: "proxy/scores")["differential"]
    else:
        parts = run.influence_scores(proxy, blocks, ["differential", "toxic-only"], prefix="proxy/",
                                     scores_name=lambda variant: f"proxy/scores-{variant}")
        scores = run.conservative_scores(parts["differential"], parts["toxic-only"], name="proxy/scores")
    return run.select("proxy", scores), scores


def _filtered_model(run: Run, method: str, start: str, base: str, blocks: str, tok: str, like_mask: str | None,
                    scores: str | None) -> str:
    """Train on the corpus minus the blocks a filter drops: at IF-Guide's token budget, or (filter-oracle)
    every block with labelled toxicity."""
    try:
        from ifguide.baselines.filtering import filter_to_artifact, read_rows
    except ImportError as e:  # pragma: no cover - depends on the optional module being present
        raise InputError(f"method {method}: the filtering baselines are unavailable ({e})") from None

    by_scorer, by_labels = method == "filter-scorer", method == "filter-oracle"
    scorer = run.cfg.evaluation.scorer if by_scorer else None
    scores = scores if method == "filter-influence" else None
    like_mask = None if by_labels else like_mask

    def build(out: Path) -> None:
        filter_to_artifact(blocks, out, like_mask=like_mask, tokenizer=tok, scorer=scorer, scores=scores, labels=by_labels)

    key = {"blocks": artifact_fingerprint(blocks), "like_mask": like_mask and artifact_fingerprint(like_mask),
           "scorer": scorer, "scores": scores and artifact_fingerprint(scores)}
    if by_labels:  # only then, so that runs made before filter-oracle existed keep their filter stages
        key["labels"] = True
    rows_dir = run.stages.run(f"rows/{method}", key, build)
    config = run.method_train_config(base, rows=read_rows(rows_dir, blocks).tolist())
    return run.train_stage(f"models/{method}", start, blocks, config)


def _dpo_model(run: Run, base: str) -> str:
    try:
        from ifguide.baselines.dpo import DPOConfig, pairs_from_queries, read_pairs, train_dpo
    except ImportError as e:  # pragma: no cover
        raise InputError(f"method dpo: the DPO baseline is unavailable ({e})") from None
    d, a = run.cfg.dpo, run.cfg.attribution
    config = DPOConfig(beta=d.beta, steps=d.steps, lr=d.lr, batch_size=d.batch_size, seed=run.cfg.seed)

    def build(out: Path) -> None:
        pairs = read_pairs(d.pairs) if d.pairs else pairs_from_queries(a.queries_toxic, a.queries_safe)
        train_dpo(base, out, pairs=pairs, config=config)

    key = {"base": _model_key(base), "pairs": _file_key(d.pairs) if d.pairs else [_file_key(a.queries_toxic), _file_key(a.queries_safe)],
           "config": dataclasses.asdict(config)}
    return str(run.stages.run("models/dpo", key, build))
