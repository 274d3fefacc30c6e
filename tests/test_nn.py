"""Module twins: equal to the functionals, hyper-parameters stored, pos_weight kept as a buffer."""

from __future__ import annotations

import pytest
import torch

import detloss
from detloss import iou_loss, sigmoid_focal_loss, smooth_l1_loss
from tests.helpers import random_boxes
from tests.reference.naive import KINDS


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_loss_module(kind, reduction):
    p, t = random_boxes(5), random_boxes(5)
    w = torch.rand(5, dtype=torch.float64)
    mod = detloss.nn.IoULoss(kind, fmt="xywh", eps=1e-9, reduction=reduction)
    for kw in ({}, {"weight": w}):
        torch.testing.assert_close(
            mod(p, t, **kw), iou_loss(p, t, kind, "xywh", 1e-9, reduction=reduction, **kw), rtol=0, atol=0
        )
    assert f"kind={kind!r}" in repr(mod)


def test_iou_loss_module_avg_factor_and_default():
    p, t = random_boxes(5), random_boxes(5)
    mod = detloss.nn.IoULoss()
    assert mod.kind == "giou" and mod.reduction == "mean"
    torch.testing.assert_close(mod(p, t, avg_factor=2.0), iou_loss(p, t, reduction="sum") / 2.0)


def test_sigmoid_focal_module_with_pos_weight_buffer():
    pw = torch.tensor([1.0, 2.0, 0.5])
    mod = detloss.nn.SigmoidFocalLoss(alpha=0.3, gamma=1.5, reduction="sum", pos_weight=pw)
    assert "pos_weight" in dict(mod.named_buffers())
    assert "pos_weight" in mod.state_dict()
    x, y = torch.randn(4, 3), torch.rand(4, 3)
    torch.testing.assert_close(mod(x, y), sigmoid_focal_loss(x, y, 0.3, 1.5, pos_weight=pw, reduction="sum"))
    # the buffer follows .to(): float64 inputs then meet a float64 pos_weight
    mod = mod.double()
    assert mod.pos_weight.dtype == torch.float64
    torch.testing.assert_close(
        mod(x.double(), y.double()),
        sigmoid_focal_loss(x.double(), y.double(), 0.3, 1.5, pos_weight=pw.double(), reduction="sum"),
    )
    w = torch.rand(4, 1)
    mod = detloss.nn.SigmoidFocalLoss()
    assert mod.pos_weight is None and mod.alpha == 0.25 and mod.gamma == 2.0
    expected = sigmoid_focal_loss(x, y, weight=w, avg_factor=3)
    torch.testing.assert_close(mod(x, y, weight=w, avg_factor=3), expected)


def test_smooth_l1_module():
    p, t = torch.randn(6, 4), torch.randn(6, 4)
    mod = detloss.nn.SmoothL1Loss(sigma=3.0, inside_weight=0.5, outside_weight=2.0, reduction="none")
    torch.testing.assert_close(mod(p, t), smooth_l1_loss(p, t, 3.0, 0.5, 2.0, reduction="none"))
    mod = detloss.nn.SmoothL1Loss()
    w = torch.rand(6, 4)
    torch.testing.assert_close(mod(p, t, weight=w), smooth_l1_loss(p, t, weight=w))


def test_module_gradients_flow():
    p = random_boxes(4).requires_grad_()
    detloss.nn.IoULoss("ciou")(p, random_boxes(4)).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_module_constructor_errors():
    with pytest.raises(ValueError, match="kind"):
        detloss.nn.IoULoss("xiou")
    with pytest.raises(ValueError, match="eps"):
        detloss.nn.IoULoss(eps=0.0)
    for cls in (detloss.nn.IoULoss, detloss.nn.SigmoidFocalLoss, detloss.nn.SmoothL1Loss):
        with pytest.raises(ValueError, match="reduction"):
            cls(reduction="avg")
    with pytest.raises(ValueError, match="sigma"):
        detloss.nn.SmoothL1Loss(sigma=0.0)
