"""Box formats, conversion, area and input validation.

Formats (the torchvision names):
    ``"xyxy"``   (x1, y1, x2, y2): top-left and bottom-right corners.
    ``"xywh"``   (x1, y1, w, h): top-left corner, width and height.
    ``"cxcywh"`` (cx, cy, w, h): centre, width and height.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
BOX_FORMATS: tuple[str, ...] = ("xyxy", "xywh", "cxcywh")


def check_tensor(name: str, t: object) -> Tensor:
    """Raise ``TypeError`` unless ``t`` is a tensor; return it."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def finite_number(v: object) -> bool:
    """Whether ``v`` is an int or float other than ±inf and NaN, as ``v − v == 0``: unlike
    ``math.isfinite`` it also takes the symbolic floats that ``torch.compile(dynamic=True)`` passes
    for float attributes and arguments (``math.isfinite`` on one breaks the graph)."""
    return isinstance(v, (int, float, torch.SymInt, torch.SymFloat)) and v - v == 0


def check_finite(name: str, t: Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` and the first index holding NaN or Inf.

    Happy path: one sum (NaN and ±Inf always make the sum non-finite, so nothing slips through),
    about 4x cheaper than ``isfinite(t).all()``, which only runs when the sum is not finite (a bad
    value, or a sum of finite values that overflowed) and then finds the index.
    """
    if not t.numel():
        return
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(t.sum(dtype=acc))) or bool(torch.isfinite(t).all()):
        return
    bad = (~torch.isfinite(t)).nonzero()[0].tolist()
    raise ValueError(f"{name} has a non-finite value ({t[tuple(bad)].item()}) at index {tuple(bad)}")


def check_format(name: str, fmt: str) -> None:
    if fmt not in BOX_FORMATS:
        raise ValueError(f"{name} must be one of {BOX_FORMATS}, got {fmt!r}")


def check_boxes(name: str, boxes: object, finite: bool = True) -> Tensor:
    """Validate a box tensor ``(..., 4)`` of floating dtype; optionally check it is finite.

    Raises:
        TypeError: not a tensor, or not a floating dtype.
        ValueError: last dimension is not 4, or (``finite=True``) a NaN/Inf value, with its index.
    """
    boxes = check_tensor(name, boxes)
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {boxes.dtype}")
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(boxes.shape)}")
    if finite:
        check_finite(name, boxes)
    return boxes


def box_convert(boxes: Tensor, in_fmt: BoxFormat, out_fmt: BoxFormat) -> Tensor:
    """Convert boxes ``(..., 4)`` between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``.

    Args:
        boxes: ``(..., 4)`` floating tensor.
        in_fmt, out_fmt: one of ``"xyxy"``, ``"xywh"``, ``"cxcywh"``.

    Returns:
        ``(..., 4)`` tensor in ``out_fmt`` (the input itself when the formats are equal).

    Example:
        >>> box_convert(torch.tensor([[1.0, 2.0, 4.0, 8.0]]), "xyxy", "cxcywh")
        tensor([[2.5000, 5.0000, 3.0000, 6.0000]])
    """
    check_boxes("boxes", boxes)
    check_format("in_fmt", in_fmt)
    check_format("out_fmt", out_fmt)
    return convert(boxes, in_fmt, out_fmt)


def convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Unchecked conversion, used inside the library after validation."""
    if in_fmt == out_fmt:
        return boxes
    a, b = boxes[..., :2], boxes[..., 2:]
    if in_fmt == "xyxy":
        lo, hi = a, b
    elif in_fmt == "xywh":
        lo, hi = a, a + b
    else:  # cxcywh
        lo, hi = a - 0.5 * b, a + 0.5 * b
    if out_fmt == "xyxy":
        return torch.cat((lo, hi), dim=-1)
    if out_fmt == "xywh":
        return torch.cat((lo, hi - lo), dim=-1)
    return torch.cat((0.5 * (lo + hi), hi - lo), dim=-1)


def box_area(boxes: Tensor, fmt: BoxFormat = "xyxy") -> Tensor:
    """Area of boxes ``(..., 4)`` → ``(...)``; width and height are clamped at 0.

    Example:
        >>> box_area(torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 0.0, 0.0]]))
        tensor([6., 0.])
    """
    check_boxes("boxes", boxes)
    check_format("fmt", fmt)
    if fmt == "xyxy":
        wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    else:
        wh = boxes[..., 2:].clamp(min=0)
    return wh[..., 0] * wh[..., 1]
