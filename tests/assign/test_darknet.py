"""YOLOv3 / YOLOv4 target building and the ignore test's best IoU on hand cases, against the label
building of tensorflow-yolov3 (``core/dataset.py`` ``Dataset.preprocess_true_boxes``) and
yolov4-tiny-tf2 (``preprocess_true_boxes``). Every expected value is derived in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.assign import best_iou_with, build_yolov3_targets, build_yolov4_targets
from detloss.profiling import DispatchCounter
from tests.helpers import pad_by_hand


def _hits(x):
    """The True positions of a bool tensor as a sorted list of index tuples."""
    return sorted(tuple(i) for i in x.nonzero().tolist())


# --- YOLOv3 --------------------------------------------------------------------------------------
# A 32 × 32 input, two scales: stride 8 (4 × 4 cells) and stride 16 (2 × 2 cells), two anchors each.
# In grid units the anchors are 1 × 1, 2 × 2 (scale 0) and 2 × 2, 4 × 4 (scale 1).
V3_ANCHORS = torch.tensor([[[8, 8], [16, 16]], [[32, 32], [64, 64]]], dtype=torch.float64)
V3_STRIDES = (8, 16)
V3_GRIDS = ((4, 4), (2, 2))
# slots: scale 0 holds A·H·W = 32 ((a · 4 + gy) · 4 + gx), scale 1 the next 8 (32 + (a · 2 + gy) · 2 + gx)

# A = [8, 8, 16, 16]: scale 0 centre 1.5, size 1, cell 1, anchor centred at 1.5: IoU 1 with the 1 × 1
#     anchor (> 0.3), 1/4 with 2 × 2; scale 1 centre 0.75 (cell 0, anchor at 0.5), size 0.5 inside the
#     2 × 2 anchor: 0.25/4. → (s0, a0) at cell (1, 1): slot 5.
BOX_A = [8, 8, 16, 16]
# B = [0, 0, 24, 24]: scale 0 box [0, 0, 3, 3], anchors at 1.5: 1/9 with 1 × 1, 4/9 with 2 × 2 (> 0.3);
#     scale 1 box [0, 0, 1.5, 1.5], anchors at 0.5: 2.25/4 with 2 × 2 (> 0.3), 2.25/16 with 4 × 4.
#     → (s0, a1) at (1, 1): slot (4 + 1) · 4 + 1 = 21, and (s1, a0) at (0, 0): slot 32.
BOX_B = [0, 0, 24, 24]
# C = [18, 2, 22, 6] (4 × 4 px): scale 0 centre (2.5, 0.5), size 0.5, aligned with the anchors at its
#     cell (2, 0): 0.25 with 1 × 1, 0.25/4 with 2 × 2; scale 1 centre (1.25, 0.25) in cell (1, 0), inside
#     the anchors: 0.0625/4 and 0.0625/16. Nothing > 0.3 → the best of all four, (s0, a0) at (2, 0):
#     slot 2.
BOX_C = [18, 2, 22, 6]


def _v3(*images, **kw):
    boxes, mask = pad_by_hand(*images)
    return build_yolov3_targets(boxes, mask, V3_ANCHORS, V3_STRIDES, V3_GRIDS, **kw)


def test_yolov3_threshold_multi_scale_and_fallback():
    # image 1 has no boxes: its padding row must not assign anything
    asg = _v3([BOX_A, BOX_B, BOX_C], [])
    # (image, box, scale, anchor)
    assert _hits(asg.assigned) == [(0, 0, 0, 0), (0, 1, 0, 1), (0, 1, 1, 0), (0, 2, 0, 0)]
    assert torch.equal(asg.winner, asg.assigned)  # three different slots: nothing overwritten
    # the cell floor(centre / stride) on every scale, assigned there or not
    assert asg.cell[0].tolist() == [[[1, 1], [0, 0]], [[1, 1], [0, 0]], [[2, 0], [1, 0]]]
    assert _hits(asg.occupied) == [(0, 2), (0, 5), (0, 21), (0, 32)]
    assert asg.occupied.shape == (2, 32 + 8)
    # flat candidate index (m·S + s)·A + a of each winner, -1 elsewhere
    assert asg.owner[0, 0].tolist() == [[0, -1], [-1, -1]]
    assert asg.owner[0, 1].tolist() == [[-1, 5], [6, -1]]
    assert asg.owner[0, 2].tolist() == [[8, -1], [-1, -1]]
    # the ignore test of scale s compares with the boxes assigned on s
    assert asg.held[0].tolist() == [[True, False], [True, True], [True, False]]
    assert not asg.held[1].any() and not asg.assigned[1].any()
    # the per-scale (B, A, H, W) maps are views of occupied: scale 0 slot 21 = anchor 1, gy 1, gx 1
    resp = asg.responsible
    assert [tuple(r.shape) for r in resp] == [(2, 2, 4, 4), (2, 2, 2, 2)]
    assert _hits(resp[0]) == [(0, 0, 0, 2), (0, 0, 1, 1), (0, 1, 1, 1)] and _hits(resp[1]) == [(0, 0, 0, 0)]


def test_yolov3_fallback_clip_bug():
    # the last commit clips the fallback box's cell with the LAST scale's 2 × 2 grid: C's (2, 0) on
    # scale 0 becomes (1, 0) (slot 1); only the fallback scale's cell moves, and A (not a fallback) keeps
    # (1, 1)
    asg = _v3([BOX_A, BOX_C], fallback_clip_bug=True)
    assert asg.cell[0, 1].tolist() == [[1, 0], [1, 0]]
    assert asg.cell[0, 0].tolist() == [[1, 1], [0, 0]]
    assert _hits(asg.occupied) == [(0, 1), (0, 5)]


def test_yolov3_threshold_is_strict():
    # one scale (stride 8, 4 × 4) with two equal 16-px anchors (2 × 2 cells); the box [8, 8, 16, 16] is
    # 1 × 1 cells centred on its cell's centre, so IoU = 1 / (4 + 1e-6) with both (union + 1e-6).
    anchors = torch.tensor([[[16, 16], [16, 16]]], dtype=torch.float64)
    boxes, mask = pad_by_hand([[8, 8, 16, 16]])
    iou = 1 / (4 + 1e-6)

    def assigned(thresh):
        return build_yolov3_targets(boxes, mask, anchors, (8,), ((4, 4),), anchor_iou_thresh=thresh).assigned

    # just below the IoU: both anchors pass the test and take the box
    assert assigned(math.nextafter(iou, 0)).tolist() == [[[[True, True]]]]
    # exactly at the IoU: no anchor passes (> is strict) → the fallback takes only the first of the tie
    assert assigned(iou).tolist() == [[[[True, False]]]]


def test_yolov3_later_box_wins_and_buffer_limit():
    # A' = [9, 9, 15, 15]: centre (12, 12) as A, 0.75 cells: IoU 0.5625 with the 1 × 1 anchor, 0.5625/4
    # with 2 × 2, and < 0.3 on scale 1 → the same slot as A: (s0, a0, cell (1, 1)) = slot 5
    asg = _v3([BOX_A, [9, 9, 15, 15]])
    assert _hits(asg.assigned) == [(0, 0, 0, 0), (0, 1, 0, 0)]
    assert _hits(asg.winner) == [(0, 1, 0, 0)]  # written later: A' holds the slot
    # both candidates name A' (flat index (1·2 + 0)·2 + 0 = 4) as the slot's owner
    assert asg.owner[0, :, 0, 0].tolist() == [4, 4]
    assert _hits(asg.occupied) == [(0, 5)]
    # the original's ignore buffer still holds the overwritten A
    assert asg.held[0, :, 0].tolist() == [True, True]
    # a buffer of 1 keeps the last box written on scale 0 only
    asg = _v3([BOX_A, [9, 9, 15, 15]], max_boxes_per_scale=1)
    assert asg.held[0, :, 0].tolist() == [False, True]


def test_yolov3_centre_outside_the_input():
    # [30, 30, 40, 40]: centre (35, 35) outside the 32 × 32 input
    boxes, mask = pad_by_hand([[30, 30, 40, 40]])
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[0\].*centre outside"):
        build_yolov3_targets(boxes, mask, V3_ANCHORS, V3_STRIDES, V3_GRIDS)
    # unchecked, the cell floor(35 / 8) = 4 is clamped into the grid: scale 0's box [3.75, 3.75, 5, 5]
    # vs the 1 × 1 anchor at 4.5: IoU 1 / 1.5625 = 0.64 → slot (0 · 4 + 3) · 4 + 3 = 15
    asg = build_yolov3_targets(boxes, mask, V3_ANCHORS, V3_STRIDES, V3_GRIDS, validate=False)
    assert asg.cell[0, 0, 0].tolist() == [3, 3]
    assert (0, 15) in _hits(asg.occupied)


def test_yolov3_empty_and_no_sync():
    boxes, mask = pad_by_hand([], [])  # two images, M = 0
    asg = build_yolov3_targets(boxes, mask, V3_ANCHORS, V3_STRIDES, V3_GRIDS)
    assert asg.assigned.shape == (2, 0, 2, 2) and asg.held.shape == (2, 0, 2)
    assert asg.occupied.shape == (2, 40) and not asg.occupied.any()
    # boxes present but all masked out: nothing assigned either
    boxes, mask = pad_by_hand([BOX_A])
    asg = build_yolov3_targets(boxes, ~mask, V3_ANCHORS, V3_STRIDES, V3_GRIDS)
    assert not asg.assigned.any() and not asg.occupied.any() and (asg.owner == -1).all()
    # unchecked it runs in the loss without reading a value back (the centre check is the one sync)
    boxes, mask = pad_by_hand([BOX_A, BOX_B, BOX_C], [BOX_A])
    with DispatchCounter() as c:
        asg = build_yolov3_targets(boxes, mask, V3_ANCHORS, V3_STRIDES, V3_GRIDS, validate=False)
    assert c.syncs == 0, c.sync_ops
    assert _hits(asg.occupied) == [(0, 2), (0, 5), (0, 21), (0, 32), (1, 5)]


# --- YOLOv4 --------------------------------------------------------------------------------------
# A 32 × 32 input, scale 0 of 2 × 2 cells predicting anchors (2, 3), scale 1 of 4 × 4 cells predicting
# (1, 2): anchor 2 on both (as tiny's anchor 3), anchor 0 on none.
V4_ANCHORS = torch.tensor([[4, 4], [8, 8], [16, 16], [32, 32]], dtype=torch.float64)
V4_MASKS = ((2, 3), (1, 2))
V4_GRIDS = ((2, 2), (4, 4))
# slots: scale 0 (a · 2 + gy) · 2 + gx (8), scale 1 8 + (a · 4 + gy) · 4 + gx (32)


def _v4(*images, **kw):
    boxes, mask = pad_by_hand(*images)
    return build_yolov4_targets(boxes, mask, V4_ANCHORS, V4_MASKS, V4_GRIDS, (32, 32), **kw)


def test_yolov4_best_anchor_masks_and_cells():
    # centred width-height IoU with the anchors 4², 8², 16², 32²:
    # P 4 × 4 → anchor 0 (IoU 1): in no mask → no target.
    # Q 8 × 8 at (4, 28) → anchor 1 → scale 1 (position 0); cell (4/32 · 4, 28/32 · 4) = (0.5, 3.5)
    #   → (0, 3): slot 8 + 3 · 4 + 0 = 20.
    # R 16 × 16 at (20, 12) → anchor 2 → scale 0 position 0 at (1.25, 0.75) → (1, 0): slot 1, and scale 1
    #   position 1 at (2.5, 1.5) → (2, 1): slot 8 + (4 + 1) · 4 + 2 = 30.
    # T 8 × 16 at (12, 20): IoU 64/128 = 0.5 with 8 × 8 and 128/256 = 0.5 with 16 × 16: the first (anchor
    #   1) → scale 1 position 0 at (1.5, 2.5) → (1, 2): slot 8 + 2 · 4 + 1 = 17.
    # U 32 × 32 at (16, 16) → anchor 3 → scale 0 position 1 at (1, 1): slot (2 + 1) · 2 + 1 = 7.
    P, Q, R = [10, 10, 14, 14], [0, 24, 8, 32], [12, 4, 28, 20]
    T, U = [8, 12, 16, 28], [0, 0, 32, 32]
    asg = _v4([P, Q, R, T, U], [])
    assert _hits(asg.assigned) == [(0, 1, 1, 0), (0, 2, 0, 0), (0, 2, 1, 1), (0, 3, 1, 0), (0, 4, 0, 1)]
    assert torch.equal(asg.winner, asg.assigned)
    assert asg.cell[0, 1].tolist() == [[0, 1], [0, 3]]
    assert asg.cell[0, 2].tolist() == [[1, 0], [2, 1]]
    assert asg.cell[0, 3].tolist() == [[0, 1], [1, 2]]
    assert _hits(asg.occupied) == [(0, 1), (0, 7), (0, 17), (0, 20), (0, 30)]
    # held = the boxes a responsible slot still holds on that scale; P none
    assert asg.held[0].tolist() == [[False, False], [False, True], [True, True], [False, True], [True, False]]
    assert not asg.assigned[1].any() and not asg.occupied[1].any()


def test_yolov4_later_box_wins_per_scale():
    # R and R2 = [16, 4, 32, 20] both take anchor 2. Scale 0: R at (1, 0), R2 at (24/32 · 2, 12/32 · 2)
    # = (1.5, 0.75) → (1, 0) too: R2, later, wins slot 1. Scale 1: R at (2, 1), R2 at (3, 1.5) → (3, 1):
    # different slots, both win. R is still held on scale 1 only (the ignore test forgets it on scale 0).
    R, R2 = [12, 4, 28, 20], [16, 4, 32, 20]
    asg = _v4([R, R2])
    assert asg.assigned[0].tolist() == [[[True, False], [False, True]]] * 2
    assert asg.winner[0].tolist() == [[[False, False], [False, True]], [[True, False], [False, True]]]
    # R's scale-0 candidate belongs to R2's (flat (1·2 + 0)·2 + 0 = 4)
    assert asg.owner[0, 0, 0, 0].item() == 4
    assert asg.held[0].tolist() == [[False, True], [True, True]]
    assert _hits(asg.occupied) == [(0, 1), (0, 30), (0, 31)]  # 8 + (1 · 4 + 1) · 4 + gx


def test_yolov4_floor_centre():
    # one 4 × 4 scale of a 30 × 30 input (7.5 px cells), one 3-px anchor. Box [6, 6, 9, 9], centre 7.5:
    # exactly 7.5 / 30 · 4 = 1 → cell (1, 1); floored to 7 as the data loader's (x1 + x2) // 2 does, the
    # box moves to [5.5, 5.5, 8.5, 8.5] and 7 / 30 · 4 = 0.93 → cell (0, 0)
    boxes, mask = pad_by_hand([[6, 6, 9, 9]])
    anchors = torch.tensor([[3.0, 3.0]], dtype=torch.float64)
    exact = build_yolov4_targets(boxes, mask, anchors, ((0,),), ((4, 4),), (30, 30))
    floored = build_yolov4_targets(boxes, mask, anchors, ((0,),), ((4, 4),), (30, 30), floor_centre=True)
    assert exact.cell[0, 0, 0].tolist() == [1, 1] and exact.boxes[0, 0].tolist() == [6, 6, 9, 9]
    assert floored.cell[0, 0, 0].tolist() == [0, 0] and floored.boxes[0, 0].tolist() == [5.5, 5.5, 8.5, 8.5]


def test_yolov4_empty_checks_and_no_sync():
    asg = _v4([], [])
    assert asg.assigned.shape == (2, 0, 2, 2) and not asg.occupied.any()
    assert asg.occupied.shape == (2, 8 + 32)
    with pytest.raises(ValueError, match="centre outside"):
        _v4([[30, 30, 40, 40]])  # centre (35, 35) outside 32 × 32
    boxes, mask = pad_by_hand([[12, 4, 28, 20], [0, 0, 32, 32]])
    with DispatchCounter() as c:
        asg = build_yolov4_targets(boxes, mask, V4_ANCHORS, V4_MASKS, V4_GRIDS, (32, 32), validate=False)
    assert c.syncs == 0, c.sync_ops
    assert _hits(asg.occupied) == [(0, 1), (0, 7), (0, 30)]  # R and U as in the test above


# --- best_iou_with -------------------------------------------------------------------------------
# boxes b0 = [0, 0, 2, 2], b1 = [0, 0, 4, 4]; predictions
# q0 = [0, 0, 2, 2]: IoU 1 with b0, 4/16 = 0.25 with b1
# q1 = [0, 0, 4, 2]: 4/8 = 0.5 with b0, 8/16 = 0.5 with b1
# q2 = [10, 10, 11, 11]: 0 with both
PRED = torch.tensor([[[0, 0, 2, 2], [0, 0, 4, 2], [10, 10, 11, 11]]], dtype=torch.float64)
GT = torch.tensor([[[0, 0, 2, 2], [0, 0, 4, 4]]], dtype=torch.float64)


@pytest.mark.parametrize(
    "keep,want",
    [
        ([[True, True]], [[1.0, 0.5, 0.0]]),
        ([[False, True]], [[0.25, 0.5, 0.0]]),
        ([[True, False]], [[1.0, 0.5, 0.0]]),
        ([[False, False]], [[-1.0, -1.0, -1.0]]),  # no kept box: fill
        # per prediction: q0 keeps b1, q1 keeps b0, q2 keeps none
        ([[[False, True], [True, False], [False, False]]], [[0.25, 0.5, -1.0]]),
    ],
)
def test_best_iou_with_keep(keep, want):
    assert best_iou_with(PRED, GT, torch.tensor(keep), fill=-1.0).tolist() == want


def test_best_iou_with_batch_empty_and_no_sync():
    # image 1 has the boxes in the other order, only b0 kept; an IoU of 0 with a kept box beats fill -1
    pred = PRED.expand(2, 3, 4)
    gt = torch.cat((GT, GT.flip(1)))
    keep = torch.tensor([[True, True], [False, True]])
    with DispatchCounter() as c:
        out = best_iou_with(pred, gt, keep, fill=-1.0)
    assert c.syncs == 0, c.sync_ops
    assert out.tolist() == [[1.0, 0.5, 0.0], [1.0, 0.5, 0.0]]
    # M = 0: fill everywhere
    none = torch.zeros(2, 0, 4, dtype=torch.float64)
    empty = best_iou_with(pred, none, torch.zeros(2, 0, dtype=torch.bool), 0.0)
    assert empty.tolist() == [[0.0] * 3] * 2
    # no gradient: the ignore test is a constant of the loss
    assert not best_iou_with(pred.clone().requires_grad_(), gt, keep, 0.0).requires_grad
