"""Conservative differential scores: ``min(toxic-only, differential)``.

The paper's differential score of a training token is ``I_toxic − I_safe``: its influence on the
toxic queries' continuations minus its influence on the safe ones'. The difference is there to
cancel what helps *every* continuation (``I_safe > 0``: frequent words, the opening quote of any
line). But it also credits a token for *hurting* the safe continuations (``I_safe < 0``), and in a
corpus with competing continuations of the same context that is a systematic source of false
positives: on the demo world, ``"The path to … is open again."`` competes with the safe query
``"The soup is burning, …"`` after the same ``: "The``, so ` path` gets a high differential score
while its toxic-only score is nil (91 % of its occurrences above the 99th percentile).

The conservative score subtracts only the shared part::

    I_toxic − max(I_safe, 0)  =  min(I_toxic, I_toxic − I_safe)  =  min(toxic-only, differential)

A token ranks high only when it pushes toward the toxic continuations *and* toward them rather
than the safe ones. It needs the toxic-only and the differential scores of the same model,
blocks, queries and coordinates (two scoring passes instead of one). It is not the paper's
score: the pipeline uses it only when ``attribution.score: conservative`` is set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ifguide.artifacts import artifact_dir, write_meta
from ifguide.attribution.average import check_scores_dtype, open_score_artifacts, write_elementwise
from ifguide.errors import InputError

logger = logging.getLogger(__name__)

# The mode differs by construction; everything else must be the same for the minimum to mean anything.
MUST_AGREE = ("blocks_fingerprint", "tokenizer_fingerprint", "granularity", "alignment_mode")


def _scoring_models(meta: dict) -> list:
    """Fingerprints of the model(s) an artifact was scored with (several for a checkpoint average)."""
    if meta.get("averaged_over"):
        return [part.get("model_fingerprint") for part in meta["averaged_over"]]
    return [meta.get("model_fingerprint")]


def _check_pair(differential: Path, toxic_only: Path, metas: list[dict]) -> None:
    for path, meta, mode in ((differential, metas[0], "differential"), (toxic_only, metas[1], "toxic-only")):
        if meta.get("mode") != mode:
            raise InputError(f"{path}: expected scores of mode {mode!r}, got {meta.get('mode')!r}")
    if _scoring_models(metas[0]) != _scoring_models(metas[1]):
        raise InputError(f"{toxic_only}: scored with model(s) {_scoring_models(metas[1])}, but {differential} with "
                         f"{_scoring_models(metas[0])}; both must come from the same model(s)")
    counts = [m.get("query_counts", {}).get("used_toxic") for m in metas]
    if counts[0] != counts[1]:
        raise InputError(f"{toxic_only}: {counts[1]} toxic queries, but {differential} used {counts[0]}; "
                         "both must be scored with the same toxic queries")


def conservative_scores(differential: str | os.PathLike, toxic_only: str | os.PathLike, out: str | os.PathLike,
                        *, dtype: str = "float32") -> Path:
    """Write ``min(toxic_only, differential)`` element-wise to the scores artifact ``out``.

    Refused (:class:`InputError`, nothing written) unless the two artifacts have modes
    ``differential`` and ``toxic-only``, the same blocks, tokenizer, granularity, alignment,
    scoring model(s), number of toxic queries, shape and unscored (NaN) positions.
    """
    check_scores_dtype(dtype)
    differential, toxic_only, out = Path(differential), Path(toxic_only), Path(out)
    arrays, metas = open_score_artifacts([differential, toxic_only], MUST_AGREE, "can be combined")
    _check_pair(differential, toxic_only, metas)
    with artifact_dir(out) as tmp:
        fingerprint = write_elementwise(tmp, [differential, toxic_only], arrays, dtype,
                                        lambda rows: np.minimum(rows[0], rows[1]))
        first = metas[0]
        inherited = {k: first[k] for k in (*MUST_AGREE, "alignment", "query_counts", "thresholds", "strategy",
                                           "modules", "model", "averaged_over") if k in first}
        write_meta(
            tmp,
            "scores",
            **inherited,
            mode="conservative",
            normalisation="min(toxic-only, differential) = I_toxic - max(I_safe, 0): the differential score without "
                          "credit for hurting safe continuations; positive = training on the token makes toxic "
                          "continuations more likely",
            args={"differential": str(differential), "toxic_only": str(toxic_only), "dtype": dtype},
            combined_from=[{"scores": str(p), "mode": m.get("mode"), "fingerprint": m.get("fingerprint")}
                           for p, m in ((differential, metas[0]), (toxic_only, metas[1]))],
            model_fingerprint=first.get("model_fingerprint"),
            scores_dtype=dtype,
            fingerprint=fingerprint,
        )
    logger.info("conservative scores min(%s, %s) -> %s", toxic_only, differential, out)
    return out
