"""distribution_focal_loss (GFL eq. 6), its Module twin, and decode_distances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import detloss
from detloss.codecs import decode_distances
from detloss.nn import DistributionFocalLoss

D = torch.float64


def naive_dfl(logits: list[float], y: float) -> float:
    """−((i + 1 − y)·log S_i + (y − i)·log S_{i+1}), i = ⌊y⌋, in Python floats (y = n − 1: −log S_{n−1})."""
    z = max(logits)
    log_sum = z + math.log(sum(math.exp(v - z) for v in logits))
    log_s = [v - log_sum for v in logits]
    i = math.floor(y)
    if i == len(logits) - 1:
        return -log_s[i]
    return -((i + 1 - y) * log_s[i] + (y - i) * log_s[i + 1])


def test_hand_value_uniform_bins():
    # 4 equal logits: S = 1/4 everywhere, so any target costs log 4
    out = detloss.distribution_focal_loss(
        torch.zeros(3, 4, dtype=D), torch.tensor([0.0, 1.3, 3.0], dtype=D), reduction="none"
    )
    torch.testing.assert_close(out, torch.full((3,), math.log(4), dtype=D))


def test_against_python_floats_and_soft_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g, dtype=D)
    y = torch.rand(50, generator=g, dtype=D) * 6
    y[:3] = torch.tensor([0.0, 6.0, 2.0], dtype=D)  # both ends and an exact bin
    out = detloss.distribution_focal_loss(logits, y, reduction="none")
    ref = torch.tensor([naive_dfl(lg, t) for lg, t in zip(logits.tolist(), y.tolist(), strict=True)], dtype=D)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # the same as the cross-entropy against the two-point distribution on ⌊y⌋ and ⌊y⌋ + 1
    soft = torch.zeros(50, 8, dtype=D)
    i = y.floor().long()
    soft.scatter_(1, i[:, None], (i + 1 - y)[:, None])
    soft.scatter_add_(1, (i + 1)[:, None], (y - i)[:, None])
    torch.testing.assert_close(
        out, F.cross_entropy(logits, soft[:, :7], reduction="none"), rtol=1e-12, atol=1e-12
    )


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 2, 5, generator=g, dtype=D, requires_grad=True)
    y = (torch.rand(6, 2, generator=g, dtype=D) * 4).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: detloss.distribution_focal_loss(a, b, reduction="none"), (logits, y)
    )


def test_minimum_at_the_two_point_distribution():
    # the gradient vanishes where S is the two-point distribution (1 − f on bin i, f on bin i + 1)
    y, f = torch.tensor([2.25], dtype=D), 0.25
    probs = torch.tensor([[1e-300, 1e-300, 1 - f, f, 1e-300]], dtype=D)
    logits = probs.log().requires_grad_()
    detloss.distribution_focal_loss(logits, y, reduction="sum").backward()
    assert logits.grad.abs().max() < 1e-12


def test_reductions_weight_avg_factor():
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(8, 4, generator=g, dtype=D), torch.rand(8, generator=g, dtype=D) * 3
    w = torch.rand(8, generator=g, dtype=D)
    none = detloss.distribution_focal_loss(logits, y, reduction="none")
    torch.testing.assert_close(detloss.distribution_focal_loss(logits, y), none.mean())
    torch.testing.assert_close(
        detloss.distribution_focal_loss(logits, y, reduction="sum", weight=w), (none * w).sum()
    )
    torch.testing.assert_close(
        detloss.distribution_focal_loss(logits, y, weight=w, avg_factor=2.5), (none * w).sum() / 2.5
    )
    with pytest.raises(ValueError, match="avg_factor"):
        detloss.distribution_focal_loss(logits, y, reduction="sum", avg_factor=2.0)
    empty = detloss.distribution_focal_loss(torch.zeros(0, 4, dtype=D), torch.zeros(0, dtype=D))
    assert empty == 0


def test_module_twin():
    g = torch.Generator().manual_seed(3)
    logits, y = torch.randn(5, 6, generator=g, dtype=D), torch.rand(5, generator=g, dtype=D) * 5
    w = torch.rand(5, generator=g, dtype=D)
    mod = DistributionFocalLoss(reduction="sum")
    torch.testing.assert_close(
        mod(logits, y, w), detloss.distribution_focal_loss(logits, y, reduction="sum", weight=w)
    )
    assert "sum" in repr(mod)
    with pytest.raises(ValueError, match="reduction"):
        DistributionFocalLoss(reduction="avg")


@pytest.mark.parametrize("bad", [-0.01, 3.0001, float("nan")])
def test_targets_out_of_range(bad):
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\].*index \(1,\)"):
        detloss.distribution_focal_loss(torch.zeros(2, 4), torch.tensor([1.0, bad]))


def test_shape_and_type_errors():
    with pytest.raises(ValueError, match="n >= 2"):
        detloss.distribution_focal_loss(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match="targets must have shape"):
        detloss.distribution_focal_loss(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(TypeError, match="logits"):
        detloss.distribution_focal_loss(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3))
    with pytest.raises(TypeError, match="targets"):
        detloss.distribution_focal_loss(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_finite(dtype):
    logits = (torch.randn(64, 16) * 30).to(dtype).requires_grad_()
    y = (torch.rand(64) * 15).to(dtype)
    y[0] = 15.0
    out = detloss.distribution_focal_loss(logits, y)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(logits.grad).all()
    ref = detloss.distribution_focal_loss(logits.detach().float(), y.float())
    torch.testing.assert_close(out, ref)


def test_decode_distances_hand_case():
    # bins {0, 1, 2}: logits putting all mass on bin 2 (left), bin 0 (top), half 1 / half 2 (right), uniform
    big = 60.0
    logits = torch.tensor(
        [[[0, 0, big], [big, 0, 0], [0, big, big], [0, 0, 0]]], dtype=D
    )  # (1, 4, 3): l, t, r, b
    box = decode_distances(logits, torch.tensor([[10.0, 20.0]], dtype=D))
    torch.testing.assert_close(box, torch.tensor([[8.0, 20.0, 11.5, 21.0]], dtype=D))


def test_decode_distances_channels_first_reads_the_head_in_place():
    """``channels_first`` on a head's ``(B, 4, n, A)`` view gives the boxes of the permuted
    ``(B, A, 4, n)`` layout, values and gradients."""
    torch.manual_seed(0)
    head = torch.randn(2, 4 * 5 + 3, 7, dtype=D, requires_grad=True)  # (B, 4·n + C, A)
    points = torch.rand(7, 2, dtype=D) * 10
    sides = head[:, :20].unflatten(1, (4, 5))  # (B, 4, n, A), strided
    fast = decode_distances(sides, points, channels_first=True)
    ref = decode_distances(sides.permute(0, 3, 1, 2), points)
    torch.testing.assert_close(fast, ref, rtol=1e-14, atol=1e-14)
    w = torch.rand_like(ref)
    g_fast, g_ref = (torch.autograd.grad((x * w).sum(), head)[0] for x in (fast, ref))
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-12, atol=1e-14)
