"""Toxic-token selection (IF-Guide Algorithm 1), mask artifacts, control masks and the inspector.

``select_toxic_tokens`` turns token-wise influence scores into the bool mask [N, T] of training
targets to suppress; ``random_mask_like`` and ``oracle_mask`` build the control masks every
IF-Guide result is compared against; ``render_inspector_html`` shows what was selected.
"""

from ifguide.selection.algorithm import Selection, SelectionParams, select_reference, select_toxic_tokens
from ifguide.selection.quantile import exact_quantile
from ifguide.selection.source import ScoreSource, open_scores

__all__ = [
    "Selection",
    "SelectionParams",
    "ScoreSource",
    "exact_quantile",
    "open_scores",
    "select_reference",
    "select_toxic_tokens",
]
