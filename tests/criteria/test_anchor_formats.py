"""The criteria accept anchors nested per scale, flat, or YAML-style (one flat row per scale)."""

from __future__ import annotations

import pytest
import torch

from detloss.criteria import YOLOv3Loss, YOLOv5Loss
from detloss.criteria.anchors import anchor_table

NESTED = [
    [[10, 13], [16, 30], [33, 23]],
    [[30, 61], [62, 45], [59, 119]],
    [[116, 90], [156, 198], [373, 326]],
]
FLAT = [pair for scale in NESTED for pair in scale]
YAML = [[v for pair in scale for v in pair] for scale in NESTED]  # [[10,13, 16,30, 33,23], ...]


@pytest.mark.parametrize("anchors", [NESTED, FLAT, YAML, torch.tensor(NESTED)])
def test_anchor_table_forms_agree(anchors):
    expected = tuple(tuple((float(w), float(h)) for w, h in scale) for scale in NESTED)
    assert anchor_table(anchors, 3) == expected


@pytest.mark.parametrize(
    "bad",
    [NESTED[:2], [[10, 13], [16, 30]], [[10, 13, 16]], [[[10, -13]] * 3] * 3, "big", []],
)
def test_anchor_table_rejects_bad_anchors(bad):
    with pytest.raises(ValueError, match="anchors"):
        anchor_table(bad, 3)


@pytest.mark.parametrize("criterion", [YOLOv3Loss, YOLOv5Loss])
def test_criteria_give_the_same_loss_for_every_anchor_form(criterion):
    g = torch.Generator().manual_seed(0)
    preds = [torch.randn(1, 3 * 7, 64 // s, 64 // s, generator=g, dtype=torch.float64) for s in (8, 16, 32)]
    boxes = torch.tensor([[8.0, 10.0, 40.0, 50.0]], dtype=torch.float64)
    targets = [{"boxes": boxes, "labels": torch.tensor([1])}]
    totals = [criterion(2, anchors)(preds, targets).total for anchors in (NESTED, FLAT, YAML)]
    assert totals[0] == totals[1] == totals[2]


def test_yolov4_masks_follow_the_strides_when_only_anchors_are_given():
    from detloss.criteria import YOLOv4Loss

    nine = [12, 16, 19, 36, 40, 28, 36, 75, 76, 55, 72, 146, 142, 110, 192, 243, 459, 401]
    # the preset's own masks when they fit
    assert YOLOv4Loss(3).anchor_masks == ((3, 4, 5), (1, 2, 3))
    assert YOLOv4Loss(3, "yolov4").anchor_masks == ((6, 7, 8), (3, 4, 5), (0, 1, 2))
    # custom anchors and strides: largest anchors on the largest stride, in the strides' order
    assert YOLOv4Loss(3, anchors=nine, strides=(32, 16, 8)).anchor_masks == ((6, 7, 8), (3, 4, 5), (0, 1, 2))
    assert YOLOv4Loss(3, anchors=nine, strides=(8, 16, 32)).anchor_masks == ((0, 1, 2), (3, 4, 5), (6, 7, 8))
    with pytest.raises(ValueError, match="split evenly"):
        YOLOv4Loss(3, anchors=nine[:16], strides=(32, 16, 8))
