"""YOLOv5 decode and SSD encode/decode: hand values, round trips, gradients."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.codecs import decode_ssd, decode_yolov5, encode_ssd

D = torch.float64


def test_decode_yolov5_hand_values():
    # σ(0) = 0.5 → xy = 2·0.5 − 0.5 = 0.5, wh = (2·0.5)²·anchor = anchor
    raw = torch.zeros(4, dtype=D)
    out = decode_yolov5(raw, torch.tensor([1.25, 1.625], dtype=D))
    torch.testing.assert_close(out, torch.tensor([0.5, 0.5, 1.25, 1.625], dtype=D))
    # σ(log 3) = 0.75 → xy = 1.0, wh = 1.5² · a = 2.25 a; with grid (3, 4) and stride 8
    raw = torch.full((4,), math.log(3), dtype=D)
    out = decode_yolov5(raw, torch.tensor([2.0, 1.0], dtype=D), torch.tensor([3.0, 4.0], dtype=D), 8)
    torch.testing.assert_close(out, torch.tensor([32.0, 40.0, 36.0, 18.0], dtype=D))
    # the range limits: centre in (−0.5, 1.5) of the cell, size in (0, 4·anchor)
    big = decode_yolov5(torch.full((4,), 50.0, dtype=D), torch.ones(2, dtype=D))
    torch.testing.assert_close(big, torch.tensor([1.5, 1.5, 4.0, 4.0], dtype=D))


def test_encode_ssd_hand_values():
    prior = torch.tensor([0.5, 0.5, 0.2, 0.4], dtype=D)
    box = torch.tensor([0.52, 0.46, 0.3, 0.4], dtype=D)
    # ((0.52−0.5)/0.2)/0.1 = 1, ((0.46−0.5)/0.4)/0.1 = −1, log(1.5)/0.2, log(1)/0.2 = 0
    expect = torch.tensor([1.0, -1.0, math.log(1.5) / 0.2, 0.0], dtype=D)
    torch.testing.assert_close(encode_ssd(box, prior), expect)
    torch.testing.assert_close(decode_ssd(expect, prior), box)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.01, 10.0), min_size=8, max_size=8),
    st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4),
)
def test_ssd_round_trip(vals, var):
    box = torch.tensor(vals[:4], dtype=D)
    prior = torch.tensor(vals[4:], dtype=D)
    torch.testing.assert_close(decode_ssd(encode_ssd(box, prior, var), prior, var), box)
    off = torch.tensor(vals[:4], dtype=D) - 5
    torch.testing.assert_close(encode_ssd(decode_ssd(off, prior, var), prior, var), off)


def test_codecs_broadcast_and_gradcheck():
    priors = torch.rand(5, 4, dtype=D) + 0.1
    boxes = torch.rand(3, 1, 4, dtype=D) + 0.1
    assert encode_ssd(boxes, priors).shape == (3, 5, 4)
    raw = torch.randn(2, 3, 4, dtype=D, requires_grad=True)
    anchors = torch.rand(3, 2, dtype=D) + 0.5
    assert torch.autograd.gradcheck(lambda r: decode_yolov5(r, anchors), (raw,))
    off = torch.randn(2, 5, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda o: decode_ssd(o, priors), (off,))
