"""IF-Guide: toxicity suppression during training with token-wise influence functions.

The public API is re-exported lazily so that ``import ifguide`` stays fast and does not
pull in torch/transformers until a function that needs them is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "suppression_loss": "ifguide.training.objective",
    "SuppressionTrainer": "ifguide.training.trainer",
    "TrainConfig": "ifguide.training.train",
    "train": "ifguide.training.train",
    "prepare_blocks": "ifguide.data.prepare",
    "Blocks": "ifguide.data.blocks",
    "train_tokenizer": "ifguide.data.tokenizer",
    "load_model": "ifguide.models",
    "load_tokenizer": "ifguide.models",
    "init_model": "ifguide.models",
    "select_toxic_tokens": "ifguide.selection",
    "InputError": "ifguide.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ifguide' has no attribute {name!r}")
