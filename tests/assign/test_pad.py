"""pad_targets: padding and mask values, empty images, errors naming the image and the box."""

from __future__ import annotations

import pytest
import torch

from detloss.assign import pad_targets


def _t(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def test_padding_and_mask():
    targets = [
        _t([[0, 0, 2, 2], [1, 1, 3, 4]], [3, 1]),
        _t([], []),
        _t([[5, 5, 6, 7], [0, 1, 2, 3], [1, 2, 9, 9]], [0, 2, 4]),
    ]
    out = pad_targets(targets, num_classes=5)
    assert out.boxes.shape == (3, 3, 4) and out.labels.shape == (3, 3) and out.mask.shape == (3, 3)
    assert out.boxes.dtype == torch.float32 and out.labels.dtype == torch.int64
    assert out.mask.dtype == torch.bool
    assert out.mask.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert out.counts.tolist() == [2, 0, 3]
    assert out.boxes[0].tolist() == [[0, 0, 2, 2], [1, 1, 3, 4], [0, 0, 0, 0]]
    assert out.boxes[1].tolist() == [[0, 0, 0, 0]] * 3
    assert out.boxes[2].tolist() == [[5, 5, 6, 7], [0, 1, 2, 3], [1, 2, 9, 9]]
    assert out.labels.tolist() == [[3, 1, 0], [0, 0, 0], [0, 2, 4]]


def test_dtype_and_empty_batches():
    out = pad_targets([_t([[0, 0, 1, 1]], [0])], 1, dtype=torch.float64, device="cpu")
    assert out.boxes.dtype == torch.float64 and out.boxes.tolist() == [[[0, 0, 1, 1]]]
    out = pad_targets([_t([], []), _t([], [])], 3)
    assert out.boxes.shape == (2, 0, 4) and out.labels.shape == (2, 0) and out.mask.shape == (2, 0)
    assert out.counts.tolist() == [0, 0]
    out = pad_targets([], 3)
    assert out.boxes.shape == (0, 0, 4) and out.counts.tolist() == []
    # a tuple is a sequence too
    assert pad_targets((_t([[0, 0, 1, 1]], [2]),), 3).labels.tolist() == [[2]]


def test_gradient_flows_to_target_boxes():
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    out = pad_targets([{"boxes": b, "labels": torch.tensor([0])}, _t([], [])], 1)
    out.boxes.sum().backward()
    assert b.grad.tolist() == [[1.0, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    "boxes,match",
    [
        ([[0, 0, 2, 2], [1, 1, 1, 3]], r"targets\[1\]\['boxes'\]\[1\].*width or height"),  # zero width
        ([[0, 0, 2, 2], [1, 3, 2, 1]], r"targets\[1\]\['boxes'\]\[1\].*width or height"),  # y2 < y1
        ([[0, 0, 2, 2], [1, 1, float("nan"), 3]], r"targets\[1\]\['boxes'\].*index \(1, 2\)"),
        ([[0, 0, 2, 2], [1, 1, 2, float("inf")]], r"targets\[1\]\['boxes'\].*index \(1, 3\)"),
    ],
)
def test_bad_boxes_name_image_and_box(boxes, match):
    targets = [_t([[0, 0, 1, 1]], [0]), _t(boxes, [0, 1])]
    with pytest.raises(ValueError, match=match):
        pad_targets(targets, 2)


def test_cxcywh_format_checks_width_and_height():
    # (cx, cy, w, h) = (5, 5, 2, 1) is a valid cxcywh box, though as xyxy x2 < x1
    ok = _t([[5, 5, 2, 1]], [0])
    assert pad_targets([ok], 1, fmt="cxcywh").boxes.tolist() == [[[5, 5, 2, 1]]]  # padded, not converted
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[0\].*\(xyxy boxes need x2 > x1"):
        pad_targets([ok], 1)
    bad = _t([[0.5, 0.5, 0.2, 0.1], [0.5, 0.5, 0.2, 0.0]], [0, 0])
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[1\].*\(cxcywh boxes need w > 0"):
        pad_targets([ok, bad], 1, fmt="cxcywh")
    with pytest.raises(ValueError, match="fmt must be one of"):
        pad_targets([ok], 1, fmt="xywh")
    with pytest.raises(ValueError, match="input_size"):
        pad_targets([ok], 1, fmt="cxcywh", input_size=(8, 8))


def test_mixed_dtypes_are_concatenated_then_cast_once():
    # float64 and float16 boxes into float32: the same values as casting each image on its own
    a = torch.tensor([[0.1, 0.2, 0.30000001, 0.4]], dtype=torch.float64)
    b = torch.tensor([[0.5, 0.5, 0.7, 0.9]], dtype=torch.float16)
    lab = torch.tensor([0])
    out = pad_targets([{"boxes": a, "labels": lab}, {"boxes": b, "labels": lab}], 1)
    assert out.boxes.dtype == torch.float32
    assert torch.equal(out.boxes[0, 0], a[0].float()) and torch.equal(out.boxes[1, 0], b[0].float())


def test_validate_false_skips_value_checks():
    out = pad_targets([_t([[1, 1, 1, 3]], [7])], 2, validate=False)
    assert out.labels.tolist() == [[7]]


def test_errors():
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\].*class id 5 at index \(0,\)"):
        pad_targets([_t([[0, 0, 1, 1]], [0]), _t([[0, 0, 1, 1]], [5])], 5)
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\].*class id -1 at index \(1,\)"):
        pad_targets([_t([[0, 0, 1, 1], [0, 0, 2, 2]], [0, -1])], 5)
    with pytest.raises(ValueError, match=r"targets\[0\].*\(2, 4\) and \(3,\)"):
        pad_targets([_t([[0, 0, 1, 1], [0, 0, 2, 2]], [0, 1, 2])], 5)
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\].*\(\.\.\., 4\)"):
        pad_targets([{"boxes": torch.zeros(2, 5), "labels": torch.zeros(2, dtype=torch.int64)}], 5)
    with pytest.raises(ValueError, match=r"targets\[0\]"):
        pad_targets([{"boxes": torch.zeros(1, 2, 4), "labels": torch.zeros(1, dtype=torch.int64)}], 5)
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\].*integer"):
        pad_targets([{"boxes": torch.tensor([[0.0, 0, 1, 1]]), "labels": torch.tensor([0.0])}], 5)
    with pytest.raises(TypeError, match=r"targets\[0\]\['boxes'\].*floating"):
        pad_targets([{"boxes": torch.tensor([[0, 0, 1, 1]]), "labels": torch.tensor([0])}], 5)
    with pytest.raises(TypeError, match=r"targets\[1\] must be a dict"):
        pad_targets([_t([[0, 0, 1, 1]], [0]), {"boxes": torch.zeros(0, 4)}], 5)
    with pytest.raises(TypeError, match=r"targets\[0\] must be a dict"):
        pad_targets([torch.zeros(1, 4)], 5)
    with pytest.raises(TypeError, match="list of dicts"):
        pad_targets(_t([[0, 0, 1, 1]], [0]), 5)
    with pytest.raises(TypeError, match="list of dicts"):
        pad_targets(torch.zeros(2, 1, 4), 5)
