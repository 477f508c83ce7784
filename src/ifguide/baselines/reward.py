"""A toxicity reward model for RAD: a small sequence classifier trained on labelled comments.

RAD (Deng & Raffel, EMNLP 2023) steers decoding with a reward model that is *not* the
classifier the evaluation uses: theirs is GPT-2 fine-tuned on Jigsaw comments, and toxicity is
then measured by Perspective API (by Detoxify in IF-Guide's code). With the evaluation's own
scorer as the reward, RAD optimises the metric itself at every step, which measures how well it
games the scorer rather than how well it detoxifies. :func:`train_reward_model` builds such an
independent reward model offline: a ``transformers`` sequence classifier (a size preset of
:mod:`ifguide.models`, randomly initialised, or the backbone of a given causal LM) trained on a
JSON-lines file of ``{"text": str, "toxic": bool}``. The saved directory is a scorer
(``hf:DIR``) for ``ifguide evaluate --decoding rad --rad-scorer hf:DIR`` and for anything else
that takes a scorer.

``meta.json`` records the data's sha256, the split and the held-out accuracy and AUROC, so a
weak reward model is visible, not assumed away.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ifguide.artifacts import artifact_dir, sha256_file, write_meta
from ifguide.errors import InputError
from ifguide.fields import help_field

logger = logging.getLogger(__name__)

LABELS = {0: "non-toxic", 1: "toxic"}


@dataclass
class RewardModelConfig:
    """How to train the reward model."""

    arch: str = help_field("architecture of a randomly initialised classifier (see init-model)", "gpt-neox")
    preset: str = help_field("size preset of a randomly initialised classifier", "tiny")
    init: str | None = help_field("start from this causal LM's backbone instead (hub id or directory)", None)
    epochs: float = help_field("passes over the training split", 2.0)
    lr: float = help_field("AdamW learning rate (linear decay)", 1e-3)
    batch_size: int = help_field("texts per optimizer step", 32)
    max_length: int = help_field("tokens per text; longer texts are cut at the end", 128)
    heldout: float = help_field("share of the texts held out to report accuracy and AUROC", 0.1)
    seed: int = help_field("seed of the split, the initialisation and the data order", 0)

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise InputError(f"--epochs: must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise InputError(f"--lr: must be > 0, got {self.lr}")
        for name in ("batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(self, name)}")
        if not 0 < self.heldout < 1:
            raise InputError(f"--heldout: must be a share in (0, 1), got {self.heldout}")


def read_labelled(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels of a JSON-lines file of ``{"text": str, "toxic": bool}``."""
    from ifguide.data.readers import iter_jsonl

    if not Path(path).is_file():
        raise InputError(f"--data {path}: no such file (expected JSON lines of {{\"text\": str, \"toxic\": bool}})")
    texts, labels = [], []
    for where, rec in iter_jsonl(Path(path)):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise InputError(f"{where}: expected an object with a string field 'text' and a boolean 'toxic'")
        if not isinstance(rec.get("toxic"), bool):
            raise InputError(f"{where}: field 'toxic' must be true or false, got {rec.get('toxic')!r}")
        if rec["text"].strip():
            texts.append(rec["text"])
            labels.append(int(rec["toxic"]))
    if not texts:
        raise InputError(f"{path}: holds no labelled texts")
    if len(set(labels)) < 2:
        raise InputError(f"{path}: needs both toxic and non-toxic texts, got only {LABELS[labels[0]]} ones")
    return texts, labels


def _build_classifier(config: RewardModelConfig, tok):
    import torch
    from transformers import AutoModelForSequenceClassification

    from ifguide.models import make_config

    label_kw = dict(num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    torch.manual_seed(config.seed)
    if config.init is not None:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(config.init, **label_kw)
        except (OSError, ValueError) as e:
            raise InputError(f"--init {config.init}: cannot load it as a sequence classifier ({e})") from None
    else:
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        cfg = make_config(config.arch, config.preset, len(tok), bos_id=bos, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
        for k, v in label_kw.items():
            setattr(cfg, k, v)
        model = AutoModelForSequenceClassification.from_config(cfg)
    model.config.pad_token_id = tok.pad_token_id
    return model


def _split(n: int, heldout: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(heldout * n))
    return order[n_held:], order[:n_held]


def heldout_metrics(scorer, texts: list[str], labels: list[int]) -> dict[str, float]:
    """Accuracy (at 0.5) and AUROC of a scorer's toxicity on labelled texts."""
    from sklearn.metrics import roc_auc_score

    p = np.asarray(scorer.score(texts)["toxicity"], dtype=np.float64)
    y = np.asarray(labels)
    return {"accuracy": float(((p >= 0.5) == y).mean()), "auroc": float(roc_auc_score(y, p))}


def train_reward_model(
    data: str | os.PathLike,
    tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    config: RewardModelConfig | None = None,
) -> Path:
    """Train a toxicity classifier on ``data`` and save it (with the tokenizer) to ``out``.

    Returns ``out``, a directory loadable as the scorer ``hf:OUT``.
    """
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from ifguide.evaluation.scorers import HFClassifierScorer
    from ifguide.models import fingerprint_model, fingerprint_tokenizer, load_tokenizer

    config = config or RewardModelConfig()
    texts, labels = read_labelled(data)
    tok = load_tokenizer(tokenizer)
    train_idx, held_idx = _split(len(texts), config.heldout, config.seed)
    enc = tok([texts[i] for i in train_idx], truncation=True, max_length=config.max_length)
    train_set = Dataset.from_dict({**enc, "labels": [labels[i] for i in train_idx]})
    model = _build_classifier(config, tok)
    out = Path(out)
    with artifact_dir(out) as tmp:
        args = TrainingArguments(
            output_dir=str(tmp / "trainer"), num_train_epochs=config.epochs, learning_rate=config.lr,
            per_device_train_batch_size=config.batch_size, lr_scheduler_type="linear", warmup_steps=0.05,  # a float < 1 is a ratio
            weight_decay=0.01, seed=config.seed, data_seed=config.seed, save_strategy="no", report_to=[],
            logging_steps=50, disable_tqdm=False, use_cpu=not torch.cuda.is_available(),
        )
        Trainer(model=model, args=args, train_dataset=train_set, data_collator=DataCollatorWithPadding(tok)).train()
        model.eval()
        scorer = HFClassifierScorer(model, tok, toxic_index=1, name="reward", max_length=config.max_length)
        metrics = heldout_metrics(scorer, [texts[i] for i in held_idx], [labels[i] for i in held_idx])
        shutil.rmtree(tmp / "trainer", ignore_errors=True)  # Trainer's scratch space, not part of the artifact
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_meta(
            tmp, "reward_model", args=asdict(config), data=str(data), data_sha256=sha256_file(Path(data)),
            n_train=len(train_idx), n_heldout=len(held_idx), toxic_share=float(np.mean(labels)),
            heldout=metrics, parameters=sum(p.numel() for p in model.parameters()),
            tokenizer_fingerprint=fingerprint_tokenizer(tok), fingerprint=fingerprint_model(model),
        )
    logger.info("reward model -> %s: held-out accuracy %.3f, AUROC %.3f (%d texts)",
                out, metrics["accuracy"], metrics["auroc"], len(held_idx))
    return out
