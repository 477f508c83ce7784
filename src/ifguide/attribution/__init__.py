"""Influence attribution: EK-FAC factors and differential, token-wise influence scores (via kronfluence).

``fit_factors`` fits the curvature factors of a causal LM on its training blocks; ``compute_scores``
scores every training token by how much it makes toxic continuations more likely than safe ones.
Both also run as a job array: ``fit_factor_shard``/``merge_factor_shards`` and
``compute_score_shard``/``merge_score_shards``. ``average_scores`` averages the scores of several
checkpoints of one training run; ``conservative_scores`` combines a differential and a toxic-only
artifact into ``min(toxic-only, differential)``.
"""

from ifguide.attribution._shards import Shard
from ifguide.attribution.average import average_scores
from ifguide.attribution.conservative import conservative_scores
from ifguide.attribution.factors import FactorConfig, fit_factor_shard, fit_factors, merge_factor_shards
from ifguide.attribution.modules import discover_modules, linearize_conv1d
from ifguide.attribution.scores import (
    ScoreConfig,
    compute_score_shard,
    compute_scores,
    merge_score_shards,
    to_target_coordinates,
)

__all__ = [
    "FactorConfig",
    "ScoreConfig",
    "Shard",
    "average_scores",
    "compute_score_shard",
    "conservative_scores",
    "compute_scores",
    "discover_modules",
    "fit_factor_shard",
    "fit_factors",
    "linearize_conv1d",
    "merge_factor_shards",
    "merge_score_shards",
    "to_target_coordinates",
]
