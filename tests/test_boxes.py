"""Box formats: conversion round trips, hand-computed conversions and areas, validation errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detloss import box_area, box_convert
from detloss.checks import check_boxes

FORMATS = ("xyxy", "xywh", "cxcywh")
# dyadic coordinates: every conversion below is exact in float64
coord = st.integers(-1000, 1000).map(lambda k: k / 8)
size = st.integers(0, 800).map(lambda k: k / 8)
xywh_boxes = st.lists(st.tuples(coord, coord, size, size), min_size=0, max_size=6)


def _boxes(fmt: str, rows: list[tuple[float, float, float, float]]) -> torch.Tensor:
    """Build boxes in ``fmt`` by hand from (x, y, w, h) rows."""
    out = []
    for x, y, w, h in rows:
        out.append({"xyxy": (x, y, x + w, y + h), "xywh": (x, y, w, h),
                    "cxcywh": (x + w / 2, y + h / 2, w, h)}[fmt])
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 4)


@pytest.mark.parametrize("in_fmt,out_fmt", list(itertools.permutations(FORMATS, 2)))
@given(rows=xywh_boxes)
def test_convert_matches_hand_built_and_round_trips(in_fmt, out_fmt, rows):
    src, dst = _boxes(in_fmt, rows), _boxes(out_fmt, rows)
    out = box_convert(src, in_fmt, out_fmt)
    torch.testing.assert_close(out, dst, rtol=0, atol=1e-12)
    torch.testing.assert_close(box_convert(out, out_fmt, in_fmt), src, rtol=0, atol=1e-12)


def test_convert_docstring_example_and_batch_dims():
    b = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    # centre (2.5, 5), size (3, 6)
    assert box_convert(b, "xyxy", "cxcywh").tolist() == [[2.5, 5.0, 3.0, 6.0]]
    assert box_convert(b, "xyxy", "xywh").tolist() == [[1.0, 2.0, 3.0, 6.0]]
    x = torch.rand(2, 3, 5, 4)
    assert box_convert(x, "cxcywh", "xyxy").shape == (2, 3, 5, 4)
    assert box_convert(x, "xyxy", "xyxy") is x


def test_convert_keeps_gradient():
    b = torch.tensor([[1.0, 2.0, 4.0, 8.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_convert(t, "xywh", "cxcywh"), (b,))


def test_area_hand_values():
    b = torch.tensor([[0.0, 0.0, 2.0, 3.0],   # 2 * 3 = 6
                      [1.0, 1.0, 0.0, 0.0],   # inverted: clamped to 0
                      [-1.0, -2.0, 1.0, 2.0],  # 2 * 4 = 8
                      [0.5, 0.5, 0.5, 4.0]])   # zero width: 0
    assert box_area(b).tolist() == [6.0, 0.0, 8.0, 0.0]
    assert box_area(torch.tensor([[5.0, 5.0, 2.0, 3.0]]), "xywh").tolist() == [6.0]
    assert box_area(torch.tensor([[5.0, 5.0, 2.0, 3.0]]), "cxcywh").tolist() == [6.0]
    assert box_area(torch.tensor([[5.0, 5.0, -2.0, 3.0]]), "cxcywh").tolist() == [0.0]
    assert box_area(torch.zeros(0, 4)).shape == (0,)
    assert box_area(torch.zeros(2, 3, 4)).shape == (2, 3)


@pytest.mark.parametrize("fmt", FORMATS)
@given(rows=xywh_boxes)
def test_area_is_format_independent(fmt, rows):
    expected = torch.tensor([w * h for _, _, w, h in rows], dtype=torch.float64)
    torch.testing.assert_close(box_area(_boxes(fmt, rows), fmt), expected, rtol=1e-12, atol=1e-12)


def test_errors():
    b = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="in_fmt"):
        box_convert(b, "xyxz", "xyxy")
    with pytest.raises(ValueError, match="out_fmt"):
        box_convert(b, "xyxy", "yolo")
    with pytest.raises(ValueError, match="fmt"):
        box_area(b, "xyx")
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        box_convert(torch.zeros(3, 5), "xyxy", "xywh")
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        box_area(torch.tensor(1.0))
    with pytest.raises(TypeError, match="floating"):
        box_area(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        box_area([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.zeros(3, 4)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"index \(2, 1\)"):
        box_convert(bad, "xyxy", "xywh")
    bad[2, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"boxes.*index \(2, 1\)"):
        box_area(bad)


def test_check_boxes_names_the_argument_and_can_skip_finiteness():
    bad = torch.tensor([[0.0, float("inf"), 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"my_boxes .*\(0, 1\)"):
        check_boxes("my_boxes", bad)
    assert check_boxes("my_boxes", bad, finite=False) is bad
