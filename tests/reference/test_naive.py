"""The library's IoU-family and focal losses equal the torch-written naive formulas of
``tests/reference/naive.py`` (the "naive" peer of ``benchmarks/bench.py``) in float64."""

from __future__ import annotations

import pytest
import torch

import detloss
from tests.helpers import random_boxes
from tests.reference.naive import MPDIOU_IMAGE, naive_focal_loss, naive_iou_loss

MODIFIERS = {"alpha": {"alpha": 3.0}, "inner": {"inner_ratio": 0.8}, "focaler": {"focaler": (0.0, 0.95)}}
CASES = [(kind, "") for kind in detloss.iou.IOU_KINDS] + [("ciou", m) for m in MODIFIERS]


@pytest.mark.parametrize(("kind", "modifier"), CASES, ids=[f"{k}+{m}" if m else k for k, m in CASES])
def test_iou_loss_equals_the_naive_formula(kind, modifier):
    gen = torch.Generator().manual_seed(0)
    # 10-px boxes in a 20-px span: overlapping, nested and disjoint pairs
    pred, target = random_boxes(500, generator=gen), random_boxes(500, generator=gen)
    mods = MODIFIERS.get(modifier, {})
    image = {"image_size": MPDIOU_IMAGE} if kind == "mpdiou" else {}
    ours = detloss.iou_loss(pred, target, kind, **mods, **image)
    torch.testing.assert_close(naive_iou_loss(pred, target, kind, **mods), ours, rtol=1e-10, atol=1e-12)


def test_sigmoid_focal_loss_equals_the_naive_formula():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 80, generator=gen, dtype=torch.float64) * 3
    targets = (torch.rand(50, 80, generator=gen) < 0.05).double()
    ours = detloss.sigmoid_focal_loss(logits, targets)
    torch.testing.assert_close(naive_focal_loss(logits, targets), ours, rtol=1e-12, atol=1e-14)


def test_naive_formula_refuses_an_unknown_kind():
    boxes = random_boxes(3)
    with pytest.raises(ValueError, match="dice"):
        naive_iou_loss(boxes, boxes, "dice")
