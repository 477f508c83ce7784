"""suppression_loss against a slow, independent loop over every target."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from ifguide.errors import InputError
from ifguide.training.objective import suppression_loss


def reference_loss(logits, labels, toxic_mask, lam, penalty="neg_ce", ce_clip=None):
    """Paper Eq. 9 written out one target at a time."""
    total, n = 0.0, 0
    B, T, _ = logits.shape
    for b in range(B):
        for j in range(1, T):
            y = int(labels[b, j])
            if y == -100:
                continue
            logp = torch.log_softmax(logits[b, j - 1].double(), dim=-1)[y].item()
            ce = -logp
            n += 1
            if toxic_mask[b, j]:
                if penalty == "neg_ce":
                    total += -lam * (ce if ce_clip is None else min(ce, ce_clip))
                else:
                    total += -lam * math.log(max(1 - math.exp(logp), 1e-6))
            else:
                total += ce
    return total / max(n, 1)


@pytest.mark.parametrize("shape", [(1, 2, 3), (2, 7, 11), (3, 16, 50)])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("penalty", ["neg_ce", "unlikelihood"])
def test_matches_loop_reference(shape, lam, penalty):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, lam, penalty)).encode()))  # str hashes vary per process
    B, T, V = shape
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.2] = -100
    mask = torch.rand(B, T, generator=g) < 0.3
    got = suppression_loss(logits, labels, mask, lam, penalty=penalty).item()
    assert got == pytest.approx(reference_loss(logits, labels, mask, lam, penalty), abs=1e-5, rel=1e-5)


def test_without_mask_equals_stock_causal_lm_loss():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 9, 13, generator=g)
    labels = torch.randint(0, 13, (2, 9), generator=g)
    stock = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1))
    assert suppression_loss(logits, labels, None).item() == pytest.approx(stock.item(), abs=1e-6)
    empty = torch.zeros_like(labels, dtype=torch.bool)
    assert suppression_loss(logits, labels, empty).item() == pytest.approx(stock.item(), abs=1e-6)


def test_mask_column_zero_is_never_a_target():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[1, 2, 3, 4]])
    only_col0 = torch.tensor([[True, False, False, False]])
    assert suppression_loss(logits, labels, only_col0).item() == pytest.approx(suppression_loss(logits, labels, None).item())


def test_gradient_pushes_masked_target_down():
    logits = torch.zeros(1, 3, 4, requires_grad=True)
    labels = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[False, True, False]])  # target labels[0,1]=1, predicted by logits[0,0]
    suppression_loss(logits, labels, mask).backward()
    assert logits.grad[0, 0, 1] > 0  # gradient descent lowers the toxic target's logit
    assert logits.grad[0, 1, 2] < 0  # and raises the benign target's


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(1, 3, 4)
    labels = torch.full((1, 3), -100)
    assert suppression_loss(logits, labels, None).item() == 0.0


@pytest.mark.parametrize("kwargs", [{"lam": -0.1}, {"penalty": "nope"}])
def test_bad_arguments(kwargs):
    with pytest.raises(InputError):
        suppression_loss(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), None, **kwargs)


def test_shape_mismatch():
    with pytest.raises(InputError, match="toxic_mask"):
        suppression_loss(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("clip", [0.5, 2.0, 8.0])
def test_clipped_penalty_matches_reference_and_stops_pushing(clip):
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(2, 9, 13, generator=g) * 4).requires_grad_()
    labels = torch.randint(0, 13, (2, 9), generator=g)
    mask = torch.rand(2, 9, generator=g) < 0.4
    got = suppression_loss(logits, labels, mask, 1.0, ce_clip=clip)
    assert got.item() == pytest.approx(reference_loss(logits.detach(), labels, mask, 1.0, ce_clip=clip), abs=1e-5)
    got.backward()
    # a toxic target already past the clip gets no gradient from the penalty
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].detach().reshape(-1, 13), labels[:, 1:].reshape(-1), reduction="none").view(2, 8)
    past = mask[:, 1:] & (ce > clip)
    if past.any():
        b, j = map(int, past.nonzero()[0])
        assert torch.count_nonzero(logits.grad[b, j]) == 0
