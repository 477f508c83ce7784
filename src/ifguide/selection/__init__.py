"""Toxic-token selection (IF-Guide Algorithm 1), mask artifacts, control masks and the inspector.

``select_toxic_tokens`` turns token-wise influence scores into the bool mask [N, T] of training
targets to suppress; ``random_mask_like`` and ``oracle_mask`` build the control masks every
IF-Guide result is compared against; ``render_inspector_html`` / ``histogram_png`` show what was
selected (``inspect_selection`` writes the full page).
"""

from ifguide.selection.algorithm import Selection, SelectionParams, select_reference, select_toxic_tokens
from ifguide.selection.inspect import histogram_png, inspect_selection, render_inspector_html
from ifguide.selection.masks import (
    oracle_mask,
    oracle_mask_artifact,
    random_mask_artifact,
    random_mask_like,
    read_mask,
    select_to_artifact,
)
from ifguide.selection.quantile import exact_quantile
from ifguide.selection.source import ScoreSource, open_scores

__all__ = [
    "ScoreSource",
    "Selection",
    "SelectionParams",
    "exact_quantile",
    "histogram_png",
    "inspect_selection",
    "open_scores",
    "oracle_mask",
    "oracle_mask_artifact",
    "random_mask_artifact",
    "random_mask_like",
    "read_mask",
    "render_inspector_html",
    "select_reference",
    "select_to_artifact",
    "select_toxic_tokens",
]
