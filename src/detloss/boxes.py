"""Box formats, conversion and area.

Formats (the torchvision names):
    ``"xyxy"``   (x1, y1, x2, y2): top-left and bottom-right corners.
    ``"xywh"``   (x1, y1, w, h): top-left corner, width and height.
    ``"cxcywh"`` (cx, cy, w, h): centre, width and height.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .checks import check_boxes, check_finite, check_one_of, check_tensor
from .kernels.rotated import rotated_corners

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
BOX_FORMATS: tuple[str, ...] = ("xyxy", "xywh", "cxcywh")
RotatedBoxFormat = Literal["xywhr", "xyxyxyxy"]
#: the oriented formats (:func:`detloss.box_convert_rotated`) and the last dimension of each
ROTATED_BOX_FORMATS: dict[str, int] = {"xywhr": 5, "xyxyxyxy": 8}


def box_convert(
    boxes: Tensor, in_fmt: BoxFormat | RotatedBoxFormat, out_fmt: BoxFormat | RotatedBoxFormat
) -> Tensor:
    """Convert boxes ``(..., 4)`` between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``, or oriented boxes
    between ``"xywhr"`` ``(..., 5)`` and ``"xyxyxyxy"`` ``(..., 8)`` (the 4 corners: this is then
    :func:`detloss.box_convert_rotated`). An axis-aligned format does not convert to an oriented one.

    Args:
        boxes: ``(..., 4)`` floating tensor (``(..., 5)`` / ``(..., 8)`` for the oriented formats).
        in_fmt, out_fmt: one of ``"xyxy"``, ``"xywh"``, ``"cxcywh"``, or both of ``"xywhr"``,
            ``"xyxyxyxy"``.

    Returns:
        ``(..., 4)`` tensor in ``out_fmt`` (the input itself when the formats are equal).

    Example:
        >>> box_convert(torch.tensor([[1.0, 2.0, 4.0, 8.0]]), "xyxy", "cxcywh")
        tensor([[2.5000, 5.0000, 3.0000, 6.0000]])
        >>> box_convert(torch.tensor([1.0, 2.0, 4.0, 2.0, 0.0]), "xywhr", "xyxyxyxy")
        tensor([ 3.,  3.,  3.,  1., -1.,  1., -1.,  3.])
    """
    if in_fmt in ROTATED_BOX_FORMATS or out_fmt in ROTATED_BOX_FORMATS:
        for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
            if fmt not in ROTATED_BOX_FORMATS:
                raise ValueError(
                    f"{name} must be one of {tuple(ROTATED_BOX_FORMATS)} when the other format is "
                    f"oriented (an axis-aligned box does not convert to an oriented one), got {fmt!r}"
                )
        return convert_rotated(boxes, in_fmt, out_fmt)
    check_boxes("boxes", boxes)
    check_one_of("in_fmt", in_fmt, BOX_FORMATS)
    check_one_of("out_fmt", out_fmt, BOX_FORMATS)
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
    check_one_of("fmt", fmt, BOX_FORMATS)
    if fmt == "xyxy":
        wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    else:
        wh = boxes[..., 2:].clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def convert_rotated(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """:func:`detloss.box_convert_rotated` (its docstring has the formulas), checked: ``boxes`` a
    floating tensor ``(..., 5)`` or ``(..., 8)`` as ``in_fmt`` says, finite."""
    check_tensor("boxes", boxes)
    check_one_of("in_fmt", in_fmt, tuple(ROTATED_BOX_FORMATS))
    check_one_of("out_fmt", out_fmt, tuple(ROTATED_BOX_FORMATS))
    size = ROTATED_BOX_FORMATS[in_fmt]
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must have a floating dtype, got {boxes.dtype}")
    if boxes.dim() == 0 or boxes.shape[-1] != size:
        raise ValueError(f"boxes in {in_fmt!r} must have shape (..., {size}), got {tuple(boxes.shape)}")
    check_finite("boxes", boxes)  # as box_convert: NaN/±Inf are a ValueError naming the index
    if in_fmt == out_fmt:
        return boxes
    if in_fmt == "xywhr":
        return rotated_corners(boxes).flatten(-2)
    p = boxes.unflatten(-1, (4, 2))
    centre = p.mean(-2)
    u = 0.25 * (p[..., 0, :] - p[..., 3, :] + p[..., 1, :] - p[..., 2, :])
    v = 0.25 * (p[..., 0, :] - p[..., 1, :] + p[..., 3, :] - p[..., 2, :])
    half_w = torch.linalg.vector_norm(u, dim=-1)
    cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    tiny = torch.finfo(half_w.dtype).tiny
    h = 2.0 * cross / half_w.clamp(min=tiny)
    theta = torch.atan2(u[..., 1], u[..., 0])
    return torch.cat((centre, (2.0 * half_w)[..., None], h[..., None], theta[..., None]), dim=-1)
