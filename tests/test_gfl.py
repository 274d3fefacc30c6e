"""GFL's quality focal loss and VarifocalNet's varifocal loss against mmdet's formulas.

The references below are written here from mmdet's ``gfocal_loss.py`` (``quality_focal_loss``: the
negatives supervised by 0 with σ^β, the positive (anchor, class) cells re-written with
BCE(x, score)·|score − σ|^β, then summed over classes) and ``varifocal_loss.py`` (focal weight
q·[q > 0] + α·|σ − q|^γ·[q <= 0]), both Apache-2.0; the masked assignment form is kept on purpose,
so they share no code path with detloss's elementwise formulas.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import detloss
from detloss import quality_focal_loss, varifocal_loss


def mmdet_qfl(pred, label, score, beta=2.0):
    """mmdet's quality_focal_loss: (N, C) logits, labels (N,) with C = background, scores (N,) → (N,)."""
    sig = pred.sigmoid()
    loss = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * sig.pow(beta)
    pos = ((label >= 0) & (label < pred.shape[1])).nonzero().squeeze(1)
    pos_label = label[pos]
    scale = score[pos] - sig[pos, pos_label]
    loss = loss.clone()
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none"
    ) * scale.abs().pow(beta)
    return loss.sum(dim=1)


def mmdet_vfl(pred, target, alpha=0.75, gamma=2.0, iou_weighted=True):
    """mmdet's varifocal_loss, elementwise (reduction 'none')."""
    sig = pred.sigmoid()
    pos_w = target if iou_weighted else torch.ones_like(target)
    negative = alpha * (sig - target).abs().pow(gamma) * (target <= 0).float()
    focal_weight = pos_w * (target > 0).float() + negative
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight


def qfl_inputs(gen, n=64, c=7):
    pred = torch.randn(n, c, generator=gen, dtype=torch.float64) * 3
    label = torch.randint(0, c + 1, (n,), generator=gen)  # c = background
    score = torch.rand(n, generator=gen, dtype=torch.float64)
    dense = torch.zeros(n, c, dtype=torch.float64)
    fg = label < c
    dense[fg.nonzero().squeeze(1), label[fg]] = score[fg]
    return pred, label, score, dense


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5])
def test_qfl_matches_mmdet(beta):
    gen = torch.Generator().manual_seed(0)
    pred, label, score, dense = qfl_inputs(gen)
    a, b = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ours = quality_focal_loss(a, dense, beta, reduction="none").sum(-1)
    ref = mmdet_qfl(b, label, score, beta)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    g = torch.rand(64, generator=gen, dtype=torch.float64)
    ours.backward(g)
    ref.backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    # mmdet's QualityFocalLoss(reduction="mean", avg_factor=k): per-anchor sums, then sum / k
    k = 13.0
    torch.testing.assert_close(quality_focal_loss(pred, dense, beta, reduction="sum") / k, ref.sum() / k)


@pytest.mark.parametrize("iou_weighted", [True, False])
@pytest.mark.parametrize("alpha,gamma", [(0.75, 2.0), (0.25, 1.5), (1.0, 0.5)])
def test_vfl_matches_mmdet(alpha, gamma, iou_weighted):
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(50, 6, generator=gen, dtype=torch.float64) * 3
    target = torch.rand(50, 6, generator=gen, dtype=torch.float64) * (torch.rand(50, 6, generator=gen) < 0.3)
    a, b = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ours = varifocal_loss(a, target, alpha, gamma, iou_weighted, reduction="none")
    ref = mmdet_vfl(b, target, alpha, gamma, iou_weighted)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    w = torch.rand(50, 6, generator=gen, dtype=torch.float64)
    for red, expected in (("mean", (ref * w).mean()), ("sum", (ref * w).sum())):
        out = varifocal_loss(pred, target, alpha, gamma, iou_weighted, reduction=red, weight=w)
        torch.testing.assert_close(out, expected.detach())
    out = varifocal_loss(pred, target, alpha, gamma, iou_weighted, avg_factor=4.0)
    torch.testing.assert_close(out, ref.sum().detach() / 4.0)


def test_hand_values():
    x = torch.tensor([0.0], dtype=torch.float64)  # σ = 1/2
    log2 = torch.log(torch.tensor(2.0, dtype=torch.float64))
    # QFL, y = 1: |1 − 1/2|² · log 2;  VFL, q = 0.6: 0.6·BCE(0, 0.6) = 0.6·log 2;  q = 0: 0.75·(1/2)²·log 2
    torch.testing.assert_close(quality_focal_loss(x, torch.ones(1, dtype=torch.float64)), 0.25 * log2)
    torch.testing.assert_close(varifocal_loss(x, torch.tensor([0.6], dtype=torch.float64)), 0.6 * log2)
    torch.testing.assert_close(varifocal_loss(x, torch.zeros(1, dtype=torch.float64)), 0.75 * 0.25 * log2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits_and_half_precision_are_finite(dtype):
    x = torch.tensor([[-1e4, -30.0, 0.0, 30.0, 1e4]] * 3, dtype=torch.float32).to(dtype)
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)
    t = torch.tensor([[0.0] * 5, [1.0] * 5, [0.3] * 5], dtype=dtype)
    for fn in (lambda a, b: quality_focal_loss(a, b, reduction="none"),
               lambda a, b: quality_focal_loss(a, b, 0.5, reduction="none"),
               lambda a, b: varifocal_loss(a, b, reduction="none"),
               lambda a, b: varifocal_loss(a, b, gamma=0.5, reduction="none")):
        leaf = x.clone().requires_grad_()
        loss = fn(leaf, t)
        loss.sum().backward()
        assert loss.dtype == (torch.float32 if dtype != torch.float64 else dtype)
        assert torch.isfinite(loss).all() and torch.isfinite(leaf.grad).all()
    # confident and right: ~0 loss; confident and wrong: a large, finite loss
    assert quality_focal_loss(x[1:2, 4:], t[1:2, 4:]).item() == 0.0
    assert varifocal_loss(x[0:1, 4:], t[0:1, 4:]).item() > 1e3


def test_modules_errors_and_contract():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, generator=gen)
    t = torch.rand(8, 3, generator=gen)
    qfl = detloss.nn.QualityFocalLoss(beta=1.5, reduction="sum")
    vfl = detloss.nn.VarifocalLoss(iou_weighted=False)
    torch.testing.assert_close(qfl(x, t), quality_focal_loss(x, t, 1.5, reduction="sum"))
    expected = varifocal_loss(x, t, iou_weighted=False, avg_factor=3.0)
    torch.testing.assert_close(vfl(x, t, avg_factor=3.0), expected)
    assert "beta=1.5" in repr(qfl) and "iou_weighted=False" in repr(vfl)
    for fn in (quality_focal_loss, varifocal_loss):
        with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\].*index \(1, 2\)"):
            bad = t.clone()
            bad[1, 2] = 1.5
            fn(x, bad)
        with pytest.raises(ValueError, match="logits has a non-finite"):
            fn(torch.full((2,), float("nan")), torch.zeros(2))
        with pytest.raises(ValueError, match="shape"):
            fn(x, t[:4])
        with pytest.raises(ValueError, match="avg_factor"):
            fn(x, t, reduction="sum", avg_factor=2.0)
        torch.testing.assert_close(fn(x, t, reduction="none", avg_factor=2.0), fn(x, t, reduction="none"))
        empty = torch.zeros(0, 3, requires_grad=True)
        assert fn(empty, torch.zeros(0, 3)).item() == 0.0
    with pytest.raises(ValueError, match="beta"):
        detloss.nn.QualityFocalLoss(beta=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        varifocal_loss(x, t, gamma=float("inf"))
