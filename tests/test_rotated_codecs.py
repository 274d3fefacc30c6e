"""The oriented distance codecs: ltrb in the box's rotated frame <-> xywhr (ultralytics' ``dist2rbox``
and ``rbox2dist``), checked by hand cases and round trips."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from detloss.codecs import decode_distances, decode_rotated_distances, encode_rotated_distances

F64 = torch.float64


def test_zero_angle_is_the_axis_aligned_decode():
    anchors = torch.tensor([[5.0, 6.0], [1.5, 0.5]], dtype=F64)
    sides = torch.tensor([[1, 2, 3, 0], [0, 3, 1, 2]])  # ltrb, whole bins
    # decode_distances takes per-side bin logits: one-hot logits of a huge margin give the bin itself
    xyxy = decode_distances(torch.nn.functional.one_hot(sides, 4).to(F64) * 1e3, anchors)
    box = decode_rotated_distances(sides.to(F64), torch.zeros(2, dtype=F64), anchors)
    cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), -1)
    torch.testing.assert_close(box[:, :4], cxcywh)
    assert box[:, 4].tolist() == [0.0, 0.0]
    torch.testing.assert_close(encode_rotated_distances(box, anchors), sides.to(F64))


def test_quarter_turn_swaps_the_axes():
    # θ = π/2: the width axis points along +y, so l/r move the centre along y and t/b along −x
    anchor = torch.tensor([10.0, 20.0], dtype=F64)
    box = decode_rotated_distances(torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=F64),
                                   torch.tensor(math.pi / 2, dtype=F64), anchor)
    # mid-offset in the box frame (x_f, y_f) = ((3 − 1)/2, (6 − 2)/2) = (1, 2) → world (−2, 1)
    torch.testing.assert_close(box, torch.tensor([8.0, 21.0, 4.0, 8.0, math.pi / 2], dtype=F64))
    back = encode_rotated_distances(box, anchor)
    torch.testing.assert_close(back, torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=F64))


def test_anchor_outside_gives_negative_distances():
    box = torch.tensor([0.0, 0.0, 2.0, 2.0, 0.3], dtype=F64)
    d = encode_rotated_distances(box, torch.tensor([5.0, 0.0], dtype=F64))
    assert (d < 0).any()


side = st.floats(0.0, 50.0, allow_nan=False)


@given(st.tuples(side, side, side, side), st.floats(-4, 4), st.floats(-100, 100), st.floats(-100, 100))
def test_round_trip(ltrb, theta, ax, ay):
    dist = torch.tensor(ltrb, dtype=F64)
    anchor = torch.tensor([ax, ay], dtype=F64)
    box = decode_rotated_distances(dist, torch.tensor(theta, dtype=F64), anchor)
    assert box[4].item() == theta and box[2].item() == ltrb[0] + ltrb[2]
    torch.testing.assert_close(encode_rotated_distances(box, anchor), dist, rtol=1e-9, atol=1e-9)


def test_broadcasting_shapes():
    dist = torch.rand(2, 7, 4)
    angle = torch.rand(2, 7)
    anchors = torch.rand(7, 2)
    box = decode_rotated_distances(dist, angle, anchors)
    assert box.shape == (2, 7, 5)
    assert encode_rotated_distances(box, anchors).shape == (2, 7, 4)
