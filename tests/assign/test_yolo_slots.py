"""The YOLO builders' slots: later write wins (one scatter for YOLOv3/v4 and YOLOv5), and YOLOv5's slots
index the objectness logits laid out (B, P), image after image."""

from __future__ import annotations

import torch

from detloss.assign import PaddedTargets, resolve_collisions, yolov5_candidates, yolov5_layout


def test_later_write_wins_per_row():
    # row 0: candidates 0 and 2 write slot 2, 2 is later; 4 also writes slot 2 but is not assigned
    slot = torch.tensor([[2, 0, 2, 1, 2], [1, 1, 1, 0, 0]])
    assigned = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    owner, occupied = resolve_collisions(slot, assigned, 3)
    assert owner.tolist() == [[2, 1, 2, -1, -1], [2, -1, 2, 4, 4]]
    assert occupied.tolist() == [[True, False, True], [True, True, False]]


def test_nothing_assigned():
    slot, assigned = torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.bool)
    owner, occupied = resolve_collisions(slot, assigned, 5)
    assert (owner == -1).all() and not occupied.any()


def test_yolov5_slots_are_image_major():
    """One box (image 1, centre (18, 10) px, 16 × 16) on one 8-px scale of a 32 × 32 input (4 × 4
    cells, 3 anchors, 48 slots per image): centre (2.25, 1.25) cells, fractions 0.25 < 0.5, so its own
    cell (2, 1) and the left (1, 1) and upper (2, 0) neighbours; anchor 1 (2 × 2 cells) fits, the
    others (ratios 4 and 4.5, not < 4) do not."""
    anchors = torch.tensor([[[0.5, 0.5], [2.0, 2.0], [9.0, 9.0]]], dtype=torch.float64)
    layout = yolov5_layout(2, anchors, (8,), ((4, 4),))
    assert layout.per_image == 48 and layout.num_slots == 96
    boxes = torch.zeros(2, 1, 4, dtype=torch.float64)
    boxes[1, 0] = torch.tensor([10.0, 2.0, 26.0, 18.0])
    mask = torch.tensor([[False], [True]])
    cand = yolov5_candidates(PaddedTargets(boxes, torch.zeros(2, 1, dtype=torch.int64), mask), layout)
    group, anchor, target = cand.valid[0].nonzero(as_tuple=True)
    assert anchor.tolist() == [1, 1, 1] and target.tolist() == [1, 1, 1]
    cells = [(2, 1), (1, 1), (2, 0)]  # own, left, up
    assert group.tolist() == [0, 1, 2]
    want = [48 + (1 * 4 + gy) * 4 + gx for gx, gy in cells]  # image 1 · P + (anchor · H + gy) · W + gx
    assert cand.slot[0][group, anchor, target].tolist() == want
    assert cand.winner[0][group, anchor, target].all()
