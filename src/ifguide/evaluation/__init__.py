"""Evaluation of detoxified models: toxicity of sampled continuations (EMT, TP), fluency
(perplexity, LAMBADA), downstream accuracy (lm-evaluation-harness) and comparisons.

Main entry points: :func:`evaluate`, :func:`recompute_results`, :func:`compare`, :func:`get_scorer`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalConfig": "ifguide.evaluation.evaluate",
    "evaluate": "ifguide.evaluation.evaluate",
    "recompute_results": "ifguide.evaluation.evaluate",
    "compare": "ifguide.evaluation.compare",
    "ComparisonTable": "ifguide.evaluation.compare",
    "get_scorer": "ifguide.evaluation.scorers",
    "known_scorers": "ifguide.evaluation.scorers",
    "load_prompts": "ifguide.evaluation.prompts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ifguide.evaluation' has no attribute {name!r}")
