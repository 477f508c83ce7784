"""The kronfluence ``Task`` for causal language models.

Training batches are ``{"input_ids": LongTensor[B, T]}`` rows of the blocks; their loss is the
*summed* next-token cross-entropy over the block (kronfluence expects a sum over examples,
and per-token influence decomposes that sum over positions).

Query batches are ``{"input_ids", "attention_mask", "labels", "weight"}``: ``labels`` is -100
outside the continuation, ``weight`` a signed per-query weight. The measurement is

    f(θ) = Σ_q weight_q · mean_{continuation tokens of q} NLL

so with weights ``+1/n_toxic`` on toxic and ``-1/n_safe`` on safe queries (summed over all query
batches by ``aggregate_query_gradients``) it is the differential "mean toxic NLL − mean safe
NLL" in a single measurement. kronfluence's score is ``∇f · H⁻¹ ∇L_train``: a *positive* score
means upweighting the training token *lowers* f, i.e. makes toxic continuations more likely
relative to safe ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kronfluence.task import Task
from torch import nn

from ifguide.data.queries import IGNORE_INDEX


def _next_token_logits_and_targets(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at positions 0..T-2 and the targets they predict (tokens 1..T-1), flattened."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
    labels = batch.get("labels", batch["input_ids"])
    logits = out.logits[:, :-1].float()
    targets = labels[:, 1:]
    return logits, targets


class CausalLMTask(Task):
    """Summed next-token loss on training blocks; signed, length-normalised continuation NLL on queries."""

    def __init__(self, tracked_modules: list[str]):
        super().__init__()
        self.tracked_modules = list(tracked_modules)

    def compute_train_loss(self, batch: dict, model: nn.Module, sample: bool = False) -> torch.Tensor:
        logits, targets = _next_token_logits_and_targets(model, batch)
        flat_logits = logits.reshape(-1, logits.size(-1))
        if sample:
            # True Fisher: targets drawn from the model's own predictions (seeded by the caller).
            with torch.no_grad():
                probs = torch.softmax(flat_logits.detach(), dim=-1)
                sampled = torch.multinomial(probs, num_samples=1).flatten()
            return F.cross_entropy(flat_logits, sampled, reduction="sum")
        return F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")

    def compute_measurement(self, batch: dict, model: nn.Module) -> torch.Tensor:
        logits, targets = _next_token_logits_and_targets(model, batch)
        token_nll = F.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )  # [B, T-1]
        n_targets = (targets != IGNORE_INDEX).sum(dim=1).clamp_min(1)
        per_query_mean_nll = token_nll.sum(dim=1) / n_targets
        return (batch["weight"].to(per_query_mean_nll.dtype) * per_query_mean_nll).sum()

    def get_influence_tracked_modules(self) -> list[str]:
        return self.tracked_modules

    def get_attention_mask(self, batch: dict):
        return batch.get("attention_mask")
