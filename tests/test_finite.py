"""Finite values and finite gradients on every legal degenerate input, for every loss.

Boxes: zero-area, tiny (1e-6), huge (1e6), identical, concentric, far apart, in every format and
IoU kind. Logits of ±1e4 for the focal loss, differences of ±1e6 for smooth L1, empty inputs.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import detloss
from detloss.kernels import IOU_KINDS

KW = {"mpdiou": {"image_size": (640.0, 480.0)}}  # MPDIoU's required image size


def elementwise_iou_loss(kind, fmt="xyxy"):
    return lambda p, t: detloss.iou_loss(p, t, kind, fmt, reduction="none", **KW.get(kind, {}))

PROPS = settings(max_examples=40, deadline=None, database=None, derandomize=True)
SIZES = (0.0, 1e-6, 1e-3, 1.0, 3.0, 1e6)


@st.composite
def degenerate_pairs(draw):
    """Two cxcywh boxes ``(1, 4)`` related in one of the ways that break naive IoU code."""
    cx, cy = draw(st.sampled_from((0.0, 1e-6, 5.0, -3e5, 1e6))), draw(st.sampled_from((0.0, 7.0, 1e6)))
    w1, h1, w2, h2 = (draw(st.sampled_from(SIZES)) for _ in range(4))
    how = draw(st.sampled_from(("identical", "concentric", "shifted", "far", "touching")))
    if how == "identical":
        w2, h2 = w1, h1
    dx = {
        "identical": 0.0,
        "concentric": 0.0,
        "shifted": 0.5 * (w1 + w2) * 0.3,
        "far": 1e6,
        "touching": 0.5 * (w1 + w2),
    }[how]
    return torch.tensor([[cx, cy, w1, h1]]), torch.tensor([[cx + dx, cy, w2, h2]])


def finite_loss_and_grad(loss_fn, *inputs):
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    loss = loss_fn(*inputs)
    assert torch.isfinite(loss).all(), loss
    loss.sum().backward()
    for x in inputs:
        if x.requires_grad:
            assert x.grad is not None and torch.isfinite(x.grad).all(), x.grad
    return loss


@PROPS
@given(
    pair=degenerate_pairs(),
    kind=st.sampled_from(IOU_KINDS),
    fmt=st.sampled_from(("xyxy", "xywh", "cxcywh")),
    dtype=st.sampled_from((torch.float32, torch.float64)),
)
def test_iou_loss_finite_on_degenerate_boxes(pair, kind, fmt, dtype):
    pred, target = (detloss.box_convert(b.to(dtype), "cxcywh", fmt) for b in pair)
    finite_loss_and_grad(elementwise_iou_loss(kind, fmt), pred, target)
    iou = detloss.bbox_iou(pred, target, kind, fmt, **KW.get(kind, {}))
    assert torch.isfinite(iou).all()
    pairwise = detloss.box_iou(torch.cat((pred, target)), target, kind, fmt, **KW.get(kind, {}))
    assert torch.isfinite(pairwise).all()


@pytest.mark.parametrize("kind", IOU_KINDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_iou_loss_finite_half_precision(kind, dtype):
    """Half-precision boxes: tiny, identical, concentric, huge (6e4, near float16's max) give finite
    float32 losses and finite half-precision gradients. Zero-area boxes give finite values; their
    float32 gradient can reach ~h/eps (7e7 for identical 0×7 boxes), which no half-precision leaf
    can hold: that case is checked in float32 (docs/reliability.md)."""
    rows = [[0, 0, 1e-2, 1e-2], [5, 5, 9, 9], [0, 0, 6e4, 6e4], [1, 1, 2, 8], [3, 3, 11, 11]]
    pred = torch.tensor(rows, dtype=dtype)
    for target in (pred, pred.flip(0), torch.tensor([[2.0, 2.0, 12.0, 12.0]], dtype=dtype)):
        loss = finite_loss_and_grad(elementwise_iou_loss(kind), pred, target)
        assert loss.dtype == torch.float32
    zero = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 8]], dtype=dtype)
    assert torch.isfinite(elementwise_iou_loss(kind)(zero, zero)).all()
    finite_loss_and_grad(elementwise_iou_loss(kind), zero.float(), zero.float())


def test_identical_boxes_give_zero_loss_and_concentric_boxes_the_area_ratio():
    """Hand values: identical boxes have IoU 1 in every kind; concentric 2x2 in 4x4 has IoU 1/4 and
    no centre penalty (DIoU = IoU; GIoU = IoU since the enclosing box is the outer box)."""
    b = torch.tensor([[1e6, 1e6, 1e6 + 3, 1e6 + 5]], dtype=torch.float64)
    for kind in IOU_KINDS:
        loss = detloss.iou_loss(b, b, kind, **KW.get(kind, {}))
        torch.testing.assert_close(loss, torch.tensor(0.0, dtype=torch.float64), atol=1e-6, rtol=0)
    inner = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=torch.float64)
    outer = torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
    for kind in ("iou", "giou", "diou", "ciou"):  # ciou: same aspect ratio, v = 0
        torch.testing.assert_close(
            detloss.bbox_iou(inner, outer, kind), torch.tensor([0.25], dtype=torch.float64)
        )


@PROPS
@given(
    logit=st.sampled_from((1e4, -1e4, 100.0, -100.0, 0.0, 1e-6, 30.0)),
    target=st.sampled_from((0.0, 1.0, 0.5, 0.9)),
    gamma=st.sampled_from((0.0, 0.5, 1.5, 2.0)),
    alpha=st.sampled_from((0.25, -1.0)),
    dtype=st.sampled_from((torch.float32, torch.float64, torch.float16, torch.bfloat16)),
)
def test_sigmoid_focal_loss_finite_on_saturated_logits(logit, target, gamma, alpha, dtype):
    logits = torch.full((3,), logit, dtype=dtype)
    targets = torch.full((3,), target)
    loss = finite_loss_and_grad(
        lambda x, t: detloss.sigmoid_focal_loss(x, t, alpha, gamma, reduction="none"), logits, targets
    )
    assert (loss >= 0).all()


@PROPS
@given(
    d=st.sampled_from((0.0, 1e-6, -1e-6, 1.0, 1e4, -1e6)),
    sigma=st.sampled_from((0.1, 1.0, 3.0, 100.0)),
    dtype=st.sampled_from((torch.float32, torch.float64, torch.float16, torch.bfloat16)),
)
def test_smooth_l1_loss_finite(d, sigma, dtype):
    target = torch.zeros(4, dtype=dtype)
    pred = (target + d) if abs(d) < 6e4 or dtype != torch.float16 else target + 6e4
    finite_loss_and_grad(lambda p, t: detloss.smooth_l1_loss(p, t, sigma, reduction="sum"), pred, target)


@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
def test_empty_inputs_give_zero_with_a_graph(reduction):
    e = torch.zeros(0, 4, requires_grad=True)
    losses = [
        detloss.iou_loss(e, e.detach(), "ciou", reduction=reduction),
        detloss.sigmoid_focal_loss(e, torch.zeros(0, 4), reduction=reduction),
        detloss.smooth_l1_loss(e, torch.zeros(0, 4), reduction=reduction),
    ]
    for loss in losses:
        assert torch.isfinite(loss).all() and loss.sum() == 0
        (g,) = torch.autograd.grad(loss.sum(), e)
        assert g.shape == e.shape
    assert detloss.box_iou(torch.zeros(0, 4), torch.ones(2, 4)).shape == (0, 2)


def test_smooth_labels_finite_at_the_ends():
    onehot = torch.eye(3)
    for eps in (0.0, 1.0, 1e-8):
        out = detloss.smooth_labels(onehot, eps)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.sum(-1), torch.ones(3))
