"""Module twins: equal to the functionals, hyper-parameters stored, pos_weight kept as a buffer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import detloss
from detloss import (
    bbox_iou,
    distribution_focal_loss,
    iou_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
    varifocal_loss,
)
from tests.helpers import random_boxes
from tests.reference.naive import KINDS

N = 6  # rows of every random input below
POS_WEIGHT = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)


def _boxes(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return random_boxes(N, generator=gen), random_boxes(N, generator=gen)


def _scores(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = 3 * torch.randn(N, 3, dtype=torch.float64, generator=gen)
    targets = torch.rand(N, 3, dtype=torch.float64, generator=gen)
    targets[0] = 0.0  # negatives: the q = 0 branch of VFL, y = 0 of QFL
    return logits, targets


def _bins(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(N, 4, 8, dtype=torch.float64, generator=gen)
    targets = 7 * torch.rand(N, 4, dtype=torch.float64, generator=gen)
    targets[0, 0] = 7.0  # the last bin: y = n - 1
    return logits, targets


def _offsets(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.randn(N, 4, dtype=torch.float64, generator=gen) for _ in range(2))


def _wiou_v3(pred, target, *, reduction, weight, avg_factor):
    """Wise-IoU v3 with μ = 1 (momentum 0 keeps the buffer at its start value), from the paper
    (Tong et al. 2023, arXiv:2301.10051): β = (1 − IoU)/μ, r = β / (δ·α^(β − δ)), both
    constants of the gradient, times Wise-IoU v1's loss."""
    beta = 1.0 - bbox_iou(pred.detach(), target)
    r = beta / (3.0 * 1.9 ** (beta - 3.0))
    w = r if weight is None else r * weight
    return iou_loss(pred, target, "wiou", reduction=reduction, weight=w, avg_factor=avg_factor)


# twin, its functional with the same hyper-parameters (none at their defaults where there are any), inputs
TWINS = {
    "IoULoss": (
        lambda r: detloss.nn.IoULoss("ciou", "xyxy", 1e-9, r, inner_ratio=0.8),
        lambda p, t, **kw: iou_loss(p, t, "ciou", "xyxy", 1e-9, inner_ratio=0.8, **kw),
        _boxes,
    ),
    "WIoULoss": (lambda r: detloss.nn.WIoULoss(momentum=0.0, reduction=r), _wiou_v3, _boxes),
    "SigmoidFocalLoss": (
        lambda r: detloss.nn.SigmoidFocalLoss(0.3, 1.5, r, POS_WEIGHT),
        lambda x, y, **kw: sigmoid_focal_loss(x, y, 0.3, 1.5, pos_weight=POS_WEIGHT, **kw),
        _scores,
    ),
    "SmoothL1Loss": (
        lambda r: detloss.nn.SmoothL1Loss(3.0, 0.5, 2.0, r),
        lambda p, t, **kw: smooth_l1_loss(p, t, 3.0, 0.5, 2.0, **kw),
        _offsets,
    ),
    "QualityFocalLoss": (
        lambda r: detloss.nn.QualityFocalLoss(1.5, r),
        lambda x, y, **kw: quality_focal_loss(x, y, 1.5, **kw),
        _scores,
    ),
    "VarifocalLoss": (
        lambda r: detloss.nn.VarifocalLoss(0.5, 1.5, False, r),
        lambda x, y, **kw: varifocal_loss(x, y, 0.5, 1.5, False, **kw),
        _scores,
    ),
    "DistributionFocalLoss": (
        lambda r: detloss.nn.DistributionFocalLoss(r),
        distribution_focal_loss,
        _bins,
    ),
}


def test_twin_table_covers_every_module():
    public = {
        name for name, obj in vars(detloss.nn).items()
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and not name.startswith("_")
    }
    assert public == set(TWINS)


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize(
    "reduction, weighted, avg_factor",
    [("none", False, None), ("none", True, None), ("sum", False, None), ("sum", True, None),
     ("mean", False, None), ("mean", True, None), ("mean", False, 2.5), ("mean", True, 2.5)],
)
def test_twin_equals_functional_values_and_gradients(name, reduction, weighted, avg_factor):
    make, functional, inputs = TWINS[name]
    gen = torch.Generator().manual_seed(sorted(TWINS).index(name))
    a, b = inputs(gen)
    weight = torch.rand(a.shape[:-1] if name.endswith("IoULoss") else b.shape, dtype=torch.float64,
                        generator=gen) if weighted else None
    results = []
    for call in (make(reduction), functional):
        x = a.clone().requires_grad_()
        out = call(x, b, reduction=reduction, weight=weight, avg_factor=avg_factor) if call is functional \
            else call(x, b, weight, avg_factor)
        grad = torch.rand(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        (out * grad).sum().backward()
        results.append((out, x.grad))
    (value, grad), (expected, expected_grad) = results
    assert value.dtype == torch.float64 and torch.isfinite(value).all()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("reduction", ["avg", "MEAN", None])
def test_every_twin_refuses_an_unknown_reduction(name, reduction):
    with pytest.raises(ValueError, match="reduction must be one of"):
        TWINS[name][0](reduction)


def test_repr_lists_positional_hyper_parameters_and_changed_keywords():
    # positional hyper-parameters always; keyword-only ones (validate, the IoU modifiers) when changed;
    # None and tensors (pos_weight is a buffer) never
    assert repr(detloss.nn.IoULoss()) == "IoULoss(kind='giou', fmt='xyxy', eps=1e-07, reduction='mean')"
    assert repr(detloss.nn.IoULoss("ciou", inner_ratio=0.8, validate=False)) == (
        "IoULoss(kind='ciou', fmt='xyxy', eps=1e-07, reduction='mean', validate=False, inner_ratio=0.8)"
    )
    assert repr(detloss.nn.SigmoidFocalLoss(pos_weight=torch.ones(3))) == (
        "SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction='mean')"
    )
    assert repr(detloss.nn.DistributionFocalLoss("sum")) == "DistributionFocalLoss(reduction='sum')"


def test_smooth_l1_infinite_sigma_is_l1():
    # beta = 1/σ² → 0: the quadratic zone vanishes and smooth L1 is |d| (Fast R-CNN, eq. 3)
    p, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    expected = F.l1_loss(p, t)
    torch.testing.assert_close(detloss.nn.SmoothL1Loss(sigma=math.inf)(p, t), expected)
    torch.testing.assert_close(smooth_l1_loss(p, t, math.inf), expected)


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
    # the hyper-parameters are checked at construction, with the functionals' bounds
    bad = [
        (lambda: detloss.nn.QualityFocalLoss(beta=-0.5), "beta must be a finite number >= 0"),
        (lambda: detloss.nn.QualityFocalLoss(beta=True), "beta must be a finite number"),  # not a bool
        (lambda: detloss.nn.VarifocalLoss(gamma=math.nan), "gamma must be a finite number >= 0"),
        (lambda: detloss.nn.VarifocalLoss(alpha=-1.0), "alpha must be a finite number >= 0"),
        (lambda: detloss.nn.WIoULoss(alpha=0.0), "alpha must be a finite number > 0"),
        (lambda: detloss.nn.WIoULoss(delta=math.inf), "delta must be a finite number > 0"),
        (lambda: detloss.nn.WIoULoss(fmt="xyzw"), "fmt"),
        (lambda: detloss.nn.SmoothL1Loss(sigma=math.nan), "sigma must be > 0"),
    ]
    for make, message in bad:
        with pytest.raises(ValueError, match=message):
            make()
