"""Influence attribution: EK-FAC factors and differential, token-wise influence scores (via kronfluence).

``fit_factors`` fits the curvature factors of a causal LM on its training blocks; ``compute_scores``
scores every training token by how much it makes toxic continuations more likely than safe ones.
"""

from ifguide.attribution.factors import FactorConfig, fit_factors
from ifguide.attribution.modules import discover_modules, linearize_conv1d
from ifguide.attribution.scores import ScoreConfig, compute_scores, to_target_coordinates

__all__ = [
    "FactorConfig",
    "ScoreConfig",
    "compute_scores",
    "discover_modules",
    "fit_factors",
    "linearize_conv1d",
    "to_target_coordinates",
]
