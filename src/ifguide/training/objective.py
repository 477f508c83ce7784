"""The IF-Guide suppression objective (paper Eq. 9).

Ordinary next-token cross-entropy on benign targets, and a penalty on the targets that
attribution selected as toxic, normalised by the number of targets::

    loss = ( Σ_benign CE  +  Σ_toxic penalty ) / n_targets
    penalty = −λ · CE            (``"neg_ce"``, the paper's; unbounded below)
            = −λ · min(CE, c)    (``"neg_ce"`` with ``ce_clip=c``: no push once p < e^−c)
            = −λ · log(1 − p)    (``"unlikelihood"``; bounded below by 0)

Why a clip: the gradient of −CE with respect to a toxic target's logit stays ≈ 1 however small
its probability already is, so the output-layer row of that token keeps moving against the
contexts it appeared in; on small corpora this can make the token *more* likely elsewhere
(measured on the demo world: toxic-target CE ≈ 54 and insults in unrelated contexts with λ = 1).

Shapes and alignment (the same convention as scores and masks, see ``ifguide.data.blocks``):
``logits[:, j-1]`` predicts ``labels[:, j]``; ``toxic_mask[b, j]`` marks the *target*
``labels[b, j]``; ``labels == -100`` is ignored; column 0 is never a target.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ifguide.errors import InputError

IGNORE_INDEX = -100
PENALTIES = ("neg_ce", "unlikelihood")
# log(1 - p) is clamped at log(_UL_EPS) so a target the model is certain of still has a finite gradient.
_UL_EPS = 1e-6


class LossParts(NamedTuple):
    loss: torch.Tensor  # the objective (scalar, differentiable)
    benign_ce_sum: torch.Tensor  # Σ CE over benign targets (detached)
    toxic_ce_sum: torch.Tensor  # Σ CE over toxic targets (detached)
    n_benign: torch.Tensor
    n_toxic: torch.Tensor


def _log_one_minus_p(logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """log(1 − p(target)) at the positions ``where`` (0 elsewhere), clamped at log(_UL_EPS).

    Computed as logsumexp over the other tokens minus logsumexp over all, not as
    log(1 − exp(−CE)): when the model is confident, CE is tiny and float32 loses most of its digits.
    """
    flat_where = where.reshape(-1).nonzero().squeeze(1)
    out = torch.zeros(where.numel(), dtype=torch.float32, device=logits.device)
    if flat_where.numel():
        rows = logits.reshape(-1, logits.size(-1))[flat_where].float()
        others = rows.scatter(1, targets.reshape(-1)[flat_where, None], float("-inf"))
        value = torch.logsumexp(others, dim=1) - torch.logsumexp(rows, dim=1)
        out = out.index_put((flat_where,), torch.clamp(value, min=math.log(_UL_EPS)))
    return out.view_as(where)


def suppression_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    toxic_mask: torch.Tensor | None = None,
    lam: float = 1.0,
    *,
    penalty: str = "neg_ce",
    ce_clip: float | None = None,
    num_targets: int | torch.Tensor | None = None,
    return_parts: bool = False,
) -> torch.Tensor | LossParts:
    """IF-Guide loss for a batch of causal-LM logits ``[B, T, V]`` and labels ``[B, T]``.

    ``num_targets`` overrides the normaliser (the number of non-ignored targets in this batch),
    e.g. with the global count of a gradient-accumulated or data-parallel batch, as
    ``transformers.Trainer`` passes it. ``ce_clip`` bounds the ``neg_ce`` penalty (see above). Without a mask (or with λ = 0 and ``neg_ce``) this is the
    stock causal-LM loss, except that λ = 0 keeps the masked targets in the denominator.
    """
    if lam < 0:
        raise InputError(f"lam: the penalty weight λ must be ≥ 0, got {lam}")
    if ce_clip is not None and ce_clip <= 0:
        raise InputError(f"ce_clip: must be > 0 nats, got {ce_clip}")
    if penalty not in PENALTIES:
        raise InputError(f"penalty: expected one of {', '.join(PENALTIES)}, got {penalty!r}")
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise InputError(f"logits must be [B, T, V] and labels [B, T]; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if toxic_mask is not None and toxic_mask.shape != labels.shape:
        raise InputError(f"toxic_mask must have the labels' shape {tuple(labels.shape)}, got {tuple(toxic_mask.shape)}")

    # Shift the labels, not the logits: position j of `targets` is the target predicted by logits[:, j]
    # (the last position has none). Slicing the [B, T, V] logits would copy them.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    valid = targets != IGNORE_INDEX
    # Cross-entropy in float32 whatever the model's dtype: the penalty term is a small difference of large sums.
    ce = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)
    toxic = valid & F.pad(toxic_mask[:, 1:].bool(), (0, 1), value=False) if toxic_mask is not None else torch.zeros_like(valid)
    benign = valid & ~toxic

    if penalty == "neg_ce":
        toxic_term = -lam * (ce if ce_clip is None else torch.clamp(ce, max=ce_clip))
    else:
        toxic_term = -lam * _log_one_minus_p(logits, targets, toxic)
    total = torch.where(benign, ce, torch.zeros_like(ce)).sum() + torch.where(toxic, toxic_term, torch.zeros_like(ce)).sum()
    denominator = valid.sum() if num_targets is None else num_targets
    if not torch.is_tensor(denominator):
        denominator = torch.tensor(denominator, device=ce.device)
    loss = total / denominator.to(ce.dtype).clamp(min=1)
    if not return_parts:
        return loss
    with torch.no_grad():
        return LossParts(
            loss=loss,
            benign_ce_sum=torch.where(benign, ce, 0.0).sum().detach(),
            toxic_ce_sum=torch.where(toxic, ce, 0.0).sum().detach(),
            n_benign=benign.sum(),
            n_toxic=toxic.sum(),
        )
