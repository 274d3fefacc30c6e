"""YOLOv5 target building on hand cases, against ultralytics/yolov5 ``utils/loss.py``
``ComputeLoss.build_targets``: the anchor-ratio test, the neighbour cells of g = 0.5, the clamped cell
indices with the unclamped box offset, the match order (offset group → anchor → target) and the last
write per (image, anchor, cell). Every expected value is derived in the comments; all boxes are given in
input pixels with stride 8, so a grid unit is 8 px."""

from __future__ import annotations

import torch

from detloss.assign import PaddedTargets, build_yolov5_targets, yolov5_candidates, yolov5_layout
from detloss.profiling import DispatchCounter


def _targets(*images):
    """Per-image lists of (cx, cy, w, h, label) in GRID units of stride 8 → padded xyxy input pixels."""
    m = max((len(b) for b in images), default=0)
    boxes = torch.zeros(len(images), m, 4, dtype=torch.float64)
    labels = torch.zeros(len(images), m, dtype=torch.int64)
    mask = torch.zeros(len(images), m, dtype=torch.bool)
    for i, img in enumerate(images):
        for j, (cx, cy, w, h, c) in enumerate(img):
            xyxy = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            boxes[i, j] = torch.tensor(xyxy, dtype=torch.float64) * 8
            labels[i, j], mask[i, j] = c, True
    return PaddedTargets(boxes, labels, mask)


def _cells(out):
    """The matches' (gi, gj) in match order."""
    return list(zip(out.gi.tolist(), out.gj.tolist(), strict=True))


def _build(t, anchors, **kw):
    return build_yolov5_targets(t, torch.tensor(anchors, dtype=torch.float64), 8, (4, 4), **kw)


def test_match_order_cells_and_boxes():
    # 4 × 4 grid, anchors 1 × 1 and 2 × 2; image 0: t0 and a padding row, image 1: t2 and a padding row
    # (flat target indices 0 and 2).
    # t0 centre (2.25, 1.25), 2 × 2, class 5: ratios 2 and 1 (< 4) → both anchors. frac(x) = 0.25 < 0.5 and
    #   x > 1 → left; the same in y → up; W − x = 1.75 and H − y = 2.75 (frac 0.75) → no right/down.
    #   Cells trunc(centre − offset): own (2, 1), left trunc(1.75, 1.25) = (1, 1), up (2, 0).
    # t2 centre (1.75, 2.75), 1 × 1, class 7: ratios 1 and 2 → both anchors. frac 0.75 → no left/up;
    #   W − x = 2.25, H − y = 1.25 (frac 0.25, > 1) → right (2, 2) and down trunc(1.75, 3.25) = (1, 3).
    t = _targets([(2.25, 1.25, 2, 2, 5)], [(1.75, 2.75, 1, 1, 7)])
    t = PaddedTargets(  # add the padding rows
        torch.cat((t.boxes, torch.zeros(2, 1, 4, dtype=torch.float64)), 1),
        torch.cat((t.labels, torch.zeros(2, 1, dtype=torch.int64)), 1),
        torch.cat((t.mask, torch.zeros(2, 1, dtype=torch.bool)), 1),
    )
    anchors = [[1.0, 1.0], [2.0, 2.0]]
    out = _build(t, anchors)
    # group 0 (a0: t0, t2; a1: t0, t2), left (a0 t0, a1 t0), up (same), right (a0 t2, a1 t2), down (same)
    assert out.batch.tolist() == [0, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    assert out.anchor.tolist() == [0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert out.gi.tolist() == [2, 1, 2, 1, 1, 1, 2, 2, 2, 2, 1, 1]
    assert out.gj.tolist() == [1, 2, 1, 2, 1, 1, 0, 0, 2, 2, 3, 3]
    assert out.labels.tolist() == [5, 7, 5, 7, 5, 5, 5, 5, 7, 7, 7, 7]
    assert out.anchors.tolist() == [anchors[a] for a in out.anchor.tolist()]
    # cxcywh: centre minus the cell, then w, h (grid units)
    own0, own2 = [0.25, 0.25, 2, 2], [0.75, 0.75, 1, 1]
    left0, up0 = [1.25, 0.25, 2, 2], [0.25, 1.25, 2, 2]
    right2, down2 = [-0.25, 0.75, 1, 1], [0.75, -0.25, 1, 1]
    want = [own0, own2, own0, own2, left0, left0, up0, up0, right2, right2, down2, down2]
    assert out.box.tolist() == want
    assert out.winner.all()  # twelve different (image, anchor, cell)


def test_anchor_ratio_is_strict_on_both_sides():
    # box 0: 4 × 1 cells. vs anchor 1 × 1: w ratio 4 → max(4, 1/4) = 4, not < 4 → out;
    #   vs 2 × 2: ratios 2 and 1/2 → 2 → in.
    # box 1: 0.25 × 1 cells. vs 1 × 1: 1/r = 4 → out (the inverse side is strict too);
    #   vs 2 × 2: 1/0.125 = 8 → out: no match at all.
    t = _targets([(2.0, 2.0, 4, 1, 0), (2.0, 2.0, 0.25, 1, 0)])
    layout = yolov5_layout(1, torch.tensor([[[1.0, 1.0], [2.0, 2.0]]], dtype=torch.float64), (8,), ((4, 4),))
    own = yolov5_candidates(t, layout).valid[0, 0]  # (A, N): the own-cell group
    assert own.tolist() == [[False, False], [True, False]]
    # just above 4, both ratios of exactly 4 pass; the 8 still fails
    own = yolov5_candidates(t, layout, anchor_t=4.001).valid[0, 0]
    assert own.tolist() == [[True, True], [True, False]]


def test_neighbour_conditions_at_the_edges():
    # one 1 × 1 anchor, 1 × 1 boxes (ratio 1). Per box, the (gi, gj) of its matches in group order:
    cases = [
        # x = y = 0.25: frac < 0.5 but not > 1 → no left/up; W − x = 3.75 (frac 0.75) → no right/down
        ((0.25, 0.25), [(0, 0)]),
        # x = 1.25 > 1, frac 0.25 → left, cell trunc(0.75) = 0; y = 3.75: frac 0.75 → no up, and
        # H − y = 0.25 is not > 1 → no down; W − x = 2.75 (frac 0.75) → no right
        ((1.25, 3.75), [(1, 3), (0, 3)]),
        # fractions exactly 0.5 (x, y, W − x, H − y) are not < 0.5: the own cell only
        ((2.5, 2.5), [(2, 2)]),
    ]
    for (cx, cy), cells in cases:
        out = _build(_targets([(cx, cy, 1, 1, 0)]), [[1.0, 1.0]])
        assert _cells(out) == cells, (cx, cy)
        assert out.winner.all()


def test_integer_centre_down_neighbour_is_the_own_cell():
    # centre (3, 1): x = 3 > 1 with frac 0 → left, trunc(2.5) = 2; W − x = 1 is not > 1 → no right;
    # y = 1 is not > 1 → no up; H − y = 3 with frac 0 → down, but trunc(1 + 0.5) = 1 is the own row.
    # The original writes that cell twice (own, then down): the later down match holds it.
    out = _build(_targets([(3.0, 1.0, 1, 1, 0)]), [[1.0, 1.0]])
    assert _cells(out) == [(3, 1), (2, 1), (3, 1)]
    assert out.box.tolist() == [[0, 0, 1, 1], [1, 0, 1, 1], [0, 0, 1, 1]]
    assert out.winner.tolist() == [False, True, True]


def test_cells_clamped_box_keeps_the_unclamped_offset():
    # t0 centre (4.25, 0.5) lies right of the 4-wide grid (not validated here): own cell trunc 4 → gi 3,
    #   box x 4.25 − 4 = 0.25; x > 1 with frac 0.25 → left, trunc(3.75) = 3, box x 1.25; W − x = −0.25
    #   → no right; y = 0.5 (frac 0.5) → neither up nor down. Both write (gi 3, gj 0): left wins.
    # t1 centre (−0.75, 1.5): .long() truncates toward zero, cell 0 with box x −0.75 (a floor would give
    #   −1 → clamped 0 with box 0.25); −0.75 is not > 1 and W − x = 4.75 (frac 0.75): own cell only;
    #   y 1.5 (frac 0.5 both ways) → row 1, box y 0.5.
    out = _build(_targets([(4.25, 0.5, 1, 1, 0), (-0.75, 1.5, 1, 1, 0)]), [[1.0, 1.0]])
    assert out.gi.tolist() == [3, 0, 3] and out.gj.tolist() == [0, 1, 0]
    assert out.box.tolist() == [[0.25, 0.5, 1, 1], [-0.75, 0.5, 1, 1], [1.25, 0.5, 1, 1]]
    assert out.winner.tolist() == [False, True, True]


def test_later_group_beats_later_target():
    # one 2 × 2 anchor, two 2 × 2 boxes in one image:
    # t0 (2.25, 1.25): own (2, 1), left (1, 1), up (2, 0).
    # t1 (1.75, 1.75): own (1, 1); right (W − x = 2.25) trunc(2.25) = 2 → (2, 1); down trunc(2.25) → (1, 2).
    # Write order: g0 t0 (2, 1), g0 t1 (1, 1), g1 t0 (1, 1), g2 t0 (2, 0), g3 t1 (2, 1), g4 t1 (1, 2):
    # on (1, 1) t0's left match (group 1) outlives t1's own match (group 0) although t1 is the later
    # target; on (2, 1) t1's right match outlives t0's own match.
    out = _build(_targets([(2.25, 1.25, 2, 2, 0), (1.75, 1.75, 2, 2, 1)]), [[2.0, 2.0]])
    assert _cells(out) == [(2, 1), (1, 1), (1, 1), (2, 0), (2, 1), (1, 2)]
    assert out.labels.tolist() == [0, 1, 0, 0, 1, 1]
    assert out.winner.tolist() == [False, False, True, True, True, True]


def test_layout_and_two_scales():
    # two scales of a 48 × 32 input: stride 8 → H 4, W 6; stride 16 → H 2, W 3; two anchors each.
    anchors = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]] * 2, dtype=torch.float64)
    layout = yolov5_layout(2, anchors, (8, 16), ((4, 6), (2, 3)))
    # slots of one image: 2 · 4 · 6 + 2 · 2 · 3 = 60; scale 1 starts after scale 0's 48
    assert layout.per_image == 60 and layout.num_slots == 120
    assert layout.slot_start.flatten().tolist() == [0, 48]
    assert layout.size.tolist() == [[[6.0, 4.0]], [[3.0, 2.0]]]  # (W, H)
    assert layout.last_cell.flatten().tolist() == [5, 3, 2, 1]  # (W − 1, H − 1)
    assert layout.height.flatten().tolist() == [4, 2] and layout.width.flatten().tolist() == [6, 3]
    assert layout.stride.flatten().tolist() == [8.0, 16.0]
    assert layout.offsets.reshape(-1, 2).tolist() == [[0, 0], [0.5, 0], [0, 0.5], [-0.5, 0], [0, -0.5]]

    # image 0: padding only; image 1: box centre (20, 12) px, 16 × 16 px (target n = 1).
    # scale 0: centre (2.5, 1.5), 2 × 2: both anchors; every fraction is 0.5 → own cell (2, 1) only:
    #   slot 60 + (a · 4 + 1) · 6 + 2 = 68 (a0), 92 (a1).
    # scale 1: centre (1.25, 0.75), 1 × 1: both anchors; left (x > 1, frac 0.25) → (0, 0); up no
    #   (frac 0.75); right no (W − x = 1.75); down (H − y = 1.25) → trunc(0.75 + 0.5) = 1 → (1, 1).
    #   slots 60 + 48 + (a · 2 + gj) · 3 + gi: own (1, 0) 109 / 115, left (0, 0) 108 / 114, down (1, 1)
    #   112 / 118.
    boxes = torch.tensor([[[0, 0, 0, 0]], [[12, 4, 28, 20]]], dtype=torch.float64)
    t = PaddedTargets(boxes, torch.zeros(2, 1, dtype=torch.int64), torch.tensor([[False], [True]]))
    with DispatchCounter() as c:  # the criterion's path: layout and candidates without a host sync
        layout = yolov5_layout(2, anchors, (8, 16), ((4, 6), (2, 3)))
        cand = yolov5_candidates(t, layout)
    assert c.syncs == 0, c.sync_ops
    assert cand.valid.shape == (2, 5, 2, 2)
    s0, s1 = cand.valid[0].nonzero().tolist(), cand.valid[1].nonzero().tolist()
    assert s0 == [[0, 0, 1], [0, 1, 1]]
    assert s1 == [[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1], [4, 0, 1], [4, 1, 1]]
    assert [cand.slot[0][tuple(i)].item() for i in s0] == [68, 92]
    assert [cand.slot[1][tuple(i)].item() for i in s1] == [109, 115, 108, 114, 112, 118]
    assert cand.winner.sum().item() == 8 and torch.equal(cand.winner, cand.valid)
    # the head plane image · A + anchor; scale 1's down target: centre − unclamped cell (1, 1)
    assert cand.plane.tolist() == [[0, 2], [1, 3]]
    assert cand.box[1, 4, 0, 1].tolist() == [0.25, -0.25, 1.0, 1.0]


def test_empty():
    anchors = torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    # M = 0: no candidates, no matches, no error
    t = PaddedTargets(torch.zeros(2, 0, 4, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.int64),
                      torch.zeros(2, 0, dtype=torch.bool))
    layout = yolov5_layout(2, anchors[None], (8,), ((4, 4),))
    with DispatchCounter() as c:
        cand = yolov5_candidates(t, layout)
    assert c.syncs == 0, c.sync_ops
    assert cand.valid.shape == (1, 5, 2, 0) and cand.winner.shape == (1, 5, 2, 0)
    out = build_yolov5_targets(t, anchors, 8, (4, 4))
    assert out.batch.shape == (0,) and out.box.shape == (0, 4) and out.anchors.shape == (0, 2)
    # boxes that would match, all masked out: nothing either
    t = _targets([(2.25, 1.25, 2, 2, 0)], [(1.75, 2.75, 1, 1, 0)])
    t = PaddedTargets(t.boxes, t.labels, torch.zeros_like(t.mask))
    assert not yolov5_candidates(t, layout).valid.any()
    assert build_yolov5_targets(t, anchors, 8, (4, 4)).batch.numel() == 0
