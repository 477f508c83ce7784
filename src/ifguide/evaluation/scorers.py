"""Toxicity scorers: a registry of classifiers that map texts to scores in [0, 1].

A scorer is named by a spec ``FAMILY[:ARG]``:

``profanity-check`` (default)
    ``alt-profanity-check``'s linear SVM (``predict_prob``); offline, fast, a proxy only.
``wordlist``
    1.0 when the text contains a word or phrase of a profanity list, else 0.0; a check that
    does not depend on any classifier. The list is better-profanity's ``profanity_wordlist.txt``
    (``pip install better-profanity``) or any file of one entry per line (option ``wordlist``).
``detoxify:original|unbiased|multilingual``
    The paper's scorer. Online, the ``detoxify`` package downloads its checkpoint and base
    model. Fully offline: give the released checkpoint (``.ckpt``) and a local folder with the
    base model's config and vocabulary (``bert-base-uncased`` for original, ``roberta-base``
    for unbiased, ``xlm-roberta-base`` for multilingual) through the options ``checkpoint`` and
    ``base`` or the environment variables ``IFGUIDE_DETOXIFY_CHECKPOINT`` and
    ``IFGUIDE_DETOXIFY_BASE``. ifguide then loads them itself, without touching the network.
``hf:MODEL_ID_OR_DIR``
    Any Hugging Face sequence classifier; option ``label`` names the toxic class (its name in
    ``id2label`` or its index). Single-logit and multi-label heads use a sigmoid, others a softmax.

Every scorer returns a dict of float arrays, one per attribute; ``"toxicity"`` is always
present and always first. Scorers batch their inputs and are loaded once per process
(:func:`get_scorer` caches them), so RAD and the evaluation share one copy.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ifguide.errors import InputError

logger = logging.getLogger(__name__)

TOXICITY = "toxicity"
DEFAULT_SCORER = "profanity-check"


class Scorer:
    """Base class: subclasses set ``name``/``attributes`` and implement :meth:`_score_batch`."""

    name: str = ""
    attributes: tuple[str, ...] = (TOXICITY,)
    batch_size: int = 256

    def score(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Scores of every text for every attribute, as float64 arrays of ``len(texts)``."""
        texts = list(texts)
        parts: dict[str, list[np.ndarray]] = {a: [] for a in self.attributes}
        for start in range(0, len(texts), self.batch_size):
            batch = self._score_batch(texts[start : start + self.batch_size])
            for a in self.attributes:
                parts[a].append(np.asarray(batch[a], dtype=np.float64).reshape(-1))
        return {a: (np.concatenate(v) if v else np.zeros(0)) for a, v in parts.items()}

    def _score_batch(self, texts: list[str]) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class _Family:
    factory: Callable[..., Scorer]
    help: str
    needs_arg: bool


_FAMILIES: dict[str, _Family] = {}
_CACHE: dict[tuple, Scorer] = {}


def register_scorer(family: str, help: str, *, needs_arg: bool = False):
    """Decorator adding a scorer family; the factory gets ``(arg, **options)``."""

    def deco(factory: Callable[..., Scorer]) -> Callable[..., Scorer]:
        _FAMILIES[family] = _Family(factory, help, needs_arg)
        return factory

    return deco


def known_scorers() -> dict[str, str]:
    """Family name (with ``:ARG`` where one is needed) -> help text."""
    return {(f"{k}:ARG" if f.needs_arg else k): f.help for k, f in _FAMILIES.items()}


def get_scorer(spec: str | Scorer, **options) -> Scorer:
    """The scorer for ``spec`` (``FAMILY[:ARG]``), loaded once per process and option set.

    ``options`` are the family's keyword options (``label`` for ``hf``, ``checkpoint``/``base``
    for ``detoxify``, ``wordlist`` for ``wordlist``); ``None`` values are ignored.
    """
    if isinstance(spec, Scorer):
        return spec
    family, _, arg = str(spec).partition(":")
    if family not in _FAMILIES:
        listing = "; ".join(f"{k} ({h})" for k, h in known_scorers().items())
        raise InputError(f"--scorer: unknown scorer {spec!r}; known: {listing}")
    entry = _FAMILIES[family]
    if entry.needs_arg and not arg:
        raise InputError(f"--scorer: {family} needs an argument, e.g. {family}:NAME ({entry.help})")
    if not entry.needs_arg and arg:
        raise InputError(f"--scorer: {family} takes no argument, got {spec!r}")
    options = {k: v for k, v in options.items() if v is not None}
    accepted = [n for n in inspect.signature(entry.factory).parameters if n != "arg"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"--scorer {spec}: unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'none'}"
        )
    key = (family, arg, tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = entry.factory(arg or None, **options)
    return _CACHE[key]


# --------------------------------------------------------------------------- profanity-check


class ProfanityCheckScorer(Scorer):
    name = "profanity-check"

    def __init__(self) -> None:
        try:
            from profanity_check import predict_prob
        except ImportError as e:
            raise InputError("scorer profanity-check needs `pip install alt-profanity-check`") from e
        self._predict_prob = predict_prob

    def _score_batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {TOXICITY: self._predict_prob(texts)}


@register_scorer("profanity-check", "alt-profanity-check linear SVM, offline (default)")
def _profanity_check(arg: str | None) -> Scorer:
    return ProfanityCheckScorer()


# --------------------------------------------------------------------------- wordlist

_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


def _normalise(text: str) -> str:
    """Lower-case words separated by single spaces, padded, so phrases match on word boundaries."""
    return " " + " ".join(_WORD.findall(text.lower())) + " "


class WordlistScorer(Scorer):
    """Flags a text containing any listed word or multi-word phrase (whole words only)."""

    name = "wordlist"
    batch_size = 4096

    def __init__(self, entries: Sequence[str]) -> None:
        normalised = {_normalise(e).strip() for e in entries}
        normalised.discard("")
        self.words = frozenset(e for e in normalised if " " not in e)
        self.phrases = tuple(sorted(f" {e} " for e in normalised if " " in e))

    def flags(self, text: str) -> bool:
        norm = _normalise(text)
        return any(w in self.words for w in norm.split()) or any(p in norm for p in self.phrases)

    def _score_batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {TOXICITY: np.array([float(self.flags(t)) for t in texts])}


def _default_wordlist() -> Path:
    from importlib import resources

    try:
        return Path(str(resources.files("better_profanity") / "profanity_wordlist.txt"))
    except ModuleNotFoundError:
        raise InputError(
            "scorer wordlist: no word list given and better-profanity is not installed "
            "(`pip install better-profanity`, or pass the option wordlist=PATH)"
        ) from None


@register_scorer("wordlist", "profanity word list (better-profanity's, or option wordlist=PATH)")
def _wordlist(arg: str | None, wordlist: str | None = None) -> Scorer:
    path = Path(wordlist) if wordlist else _default_wordlist()
    if not path.is_file():
        raise InputError(f"{path}: word list not found")
    return WordlistScorer(path.read_text(encoding="utf-8").splitlines())


# --------------------------------------------------------------------------- HF classifiers


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _toxic_index(id2label: dict, label: str | int | None, where: str) -> int:
    """Index of the toxic class: the given name/index, else the one label containing 'toxic'."""
    names = {int(i): str(n) for i, n in id2label.items()}
    if label is not None:
        text = str(label)
        if text.lstrip("-").isdigit() and int(text) in names:
            return int(text)
        matches = [i for i, n in names.items() if n.lower() == text.lower()]
        if not matches:
            raise InputError(f"{where}: --label {label!r} is not a class; classes: {names}")
        return matches[0]
    guesses = [i for i, n in names.items() if "toxic" in n.lower() and "non" not in n.lower()]
    if len(guesses) == 1:
        return guesses[0]
    raise InputError(f"{where}: cannot tell which class is toxic; pass --label (classes: {names})")


class HFClassifierScorer(Scorer):
    """A ``transformers`` sequence classifier; reports the toxic class's probability."""

    batch_size = 64

    def __init__(self, model, tokenizer, *, toxic_index: int, name: str, max_length: int = 512) -> None:
        self.model = model.eval().to(_device())
        self.tokenizer = tokenizer
        self.toxic_index = toxic_index
        self.name = name
        self.max_length = max_length
        cfg = model.config
        self.sigmoid = cfg.num_labels == 1 or cfg.problem_type == "multi_label_classification"

    def _score_batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        import torch

        enc = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        ).to(self.model.device)
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()
        probs = logits.sigmoid() if self.sigmoid else logits.softmax(-1)
        return {TOXICITY: probs[:, self.toxic_index].cpu().numpy()}


@register_scorer("hf", "any Hugging Face sequence classifier, hf:ID_OR_DIR (option label=toxic class)", needs_arg=True)
def _hf(arg: str, label: str | int | None = None) -> Scorer:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(arg)
        model = AutoModelForSequenceClassification.from_pretrained(arg)
    except (OSError, ValueError) as e:
        raise InputError(f"--scorer hf:{arg}: cannot load a sequence classifier ({type(e).__name__}: {e})") from None
    idx = 0 if model.config.num_labels == 1 else _toxic_index(model.config.id2label, label, f"hf:{arg}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
        model.config.pad_token_id = tok.pad_token_id
    return HFClassifierScorer(model, tok, toxic_index=idx, name=f"hf:{arg}")


# --------------------------------------------------------------------------- Detoxify

DETOXIFY_VARIANTS = ("original", "unbiased", "multilingual", "original-small", "unbiased-small")
_DETOXIFY_RENAMES = {"toxic": TOXICITY, "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}


class DetoxifyScorer(Scorer):
    """Detoxify's multi-label model: sigmoid of each class, ``toxicity`` first."""

    batch_size = 64

    def __init__(self, model, tokenizer, class_names: Sequence[str], *, name: str) -> None:
        self.model = model.eval().to(_device())
        self.tokenizer = tokenizer
        self.class_names = [_DETOXIFY_RENAMES.get(c, c) for c in class_names]
        if TOXICITY not in self.class_names:
            raise InputError(f"{name}: checkpoint has no toxicity class (classes: {self.class_names})")
        self.attributes = (TOXICITY, *[c for c in self.class_names if c != TOXICITY])
        self.name = name

    def _score_batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=512)
        with torch.inference_mode():
            probs = self.model(**enc.to(self.model.device)).logits.float().sigmoid().cpu().numpy()
        return {c: probs[:, i] for i, c in enumerate(self.class_names)}


def load_detoxify_local(checkpoint: str | os.PathLike, base: str | os.PathLike, *, name: str) -> DetoxifyScorer:
    """Build Detoxify from a released checkpoint and a local base-model folder, offline.

    The checkpoint is Detoxify's: a dict with ``config`` (``arch.args``: ``model_name``, e.g.
    ``BertForSequenceClassification``, and ``num_classes``; ``dataset.args.classes``) and the
    classifier's ``state_dict``. ``base`` holds the base model's ``config.json`` and vocabulary.
    """
    import torch
    import transformers

    ckpt, base = Path(checkpoint), Path(base)
    if not ckpt.is_file():
        raise InputError(f"{name}: checkpoint {ckpt} not found")
    if not (base / "config.json").is_file():
        raise InputError(f"{name}: {base} does not hold the base model's config.json and vocabulary")
    loaded = torch.load(ckpt, map_location="cpu", weights_only=False)
    try:
        arch = loaded["config"]["arch"]["args"]
        classes = loaded["config"]["dataset"]["args"]["classes"]
        state_dict = loaded["state_dict"]
        model_cls = getattr(transformers, arch["model_name"])
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{ckpt}: not a Detoxify checkpoint (missing {e})") from None
    config = transformers.AutoConfig.from_pretrained(base, num_labels=arch["num_classes"])
    model = model_cls(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise InputError(f"{ckpt}: weights do not fit {base} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    tok = transformers.AutoTokenizer.from_pretrained(base)
    return DetoxifyScorer(model, tok, classes, name=name)


@register_scorer(
    "detoxify",
    "Detoxify original|unbiased|multilingual (options checkpoint=, base= for offline use)",
    needs_arg=True,
)
def _detoxify(arg: str, checkpoint: str | None = None, base: str | None = None) -> Scorer:
    if arg not in DETOXIFY_VARIANTS:
        raise InputError(f"--scorer detoxify:{arg}: unknown variant; known: {', '.join(DETOXIFY_VARIANTS)}")
    name = f"detoxify:{arg}"
    checkpoint = checkpoint or os.environ.get("IFGUIDE_DETOXIFY_CHECKPOINT")
    base = base or os.environ.get("IFGUIDE_DETOXIFY_BASE")
    if checkpoint and base:
        return load_detoxify_local(checkpoint, base, name=name)
    offline_hint = (
        "For offline use, give the released checkpoint and a local folder with the base model's "
        "config and vocabulary: IFGUIDE_DETOXIFY_CHECKPOINT=PATH.ckpt IFGUIDE_DETOXIFY_BASE=DIR "
        "(or the scorer options checkpoint=, base=)."
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        # Detoxify would download the checkpoint and the base model's config: refuse up front
        raise InputError(f"{name}: HF_HUB_OFFLINE is set and no local Detoxify weights were given. {offline_hint}")
    try:
        from detoxify import Detoxify
    except ImportError:
        raise InputError(f"{name}: the detoxify package is not installed (`pip install detoxify`). {offline_hint}") from None
    try:
        model = Detoxify(arg, checkpoint=checkpoint, device=str(_device()))
    except Exception as e:  # network, cache and hub failures all surface as different types
        raise InputError(f"{name}: cannot load the Detoxify weights ({type(e).__name__}: {e}). {offline_hint}") from None
    return DetoxifyScorer(model.model, model.tokenizer, model.class_names, name=name)
