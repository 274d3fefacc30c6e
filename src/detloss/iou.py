"""The IoU family: one geometric core for IoU, GIoU, DIoU, CIoU, EIoU and SIoU.

Every variant is the IoU minus a penalty built from the same four quantities — intersection,
union, enclosing box and centre offset — which :func:`iou_xyxy` computes once and then branches on
``kind``. :func:`bbox_iou` applies it elementwise (broadcasting), :func:`box_iou` pairwise.

Numerics: every denominator carries ``eps`` so that zero-area, identical, concentric and far-apart
boxes give finite values and finite gradients; widths and heights are clamped at 0, so an inverted
xyxy box (x2 < x1) behaves as an empty box, and the enclosing box spans all corners.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .boxes import BoxFormat, check_boxes, check_format, convert
from .kernels import IOU_KINDS, fused_iou

IoUKind = Literal["iou", "giou", "diou", "ciou", "eiou", "siou"]



def iou_xyxy(boxes1: Tensor, boxes2: Tensor, kind: str = "iou", eps: float = 1e-7) -> Tensor:
    """Unchecked core: the ``kind`` IoU of broadcastable xyxy boxes ``(..., 4)`` → ``(...)``.

    The library's criteria call this after validating their inputs once; users call
    :func:`bbox_iou`. It runs the fused kernel of :mod:`detloss.kernels`: the formulas are in
    :func:`detloss.kernels.iou_forward` (iou, giou, diou, ciou with α constant in the gradient,
    eiou, siou without arcsin); the backward is hand-derived and keeps only the two box tensors.
    """
    return fused_iou(boxes1, boxes2, kind, eps)


def check_kind(kind: str) -> None:
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of {IOU_KINDS}, got {kind!r}")


_MIN_EPS = torch.finfo(torch.float32).tiny  # a smaller eps is 0 in float32: 0/0 on zero-area boxes


def check_eps(eps: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= _MIN_EPS):
        raise ValueError(
            f"eps must be a finite number >= {_MIN_EPS:.3g} (float32's smallest normal), got {eps!r}"
        )


def compute_dtype(t: Tensor) -> torch.dtype:
    """float16/bfloat16 are computed in float32: their range and precision lose small areas."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def prepare_pair(
    boxes1: Tensor, boxes2: Tensor, fmt: str, validate: bool = True,
    names: tuple[str, str] = ("boxes1", "boxes2"),
) -> tuple[Tensor, Tensor]:
    """Validate two box tensors (errors use ``names``), upcast half precision, convert to xyxy."""
    check_boxes(names[0], boxes1, finite=validate)
    check_boxes(names[1], boxes2, finite=validate)
    check_format("fmt", fmt)
    dtype = torch.promote_types(compute_dtype(boxes1), compute_dtype(boxes2))
    return convert(boxes1.to(dtype), fmt, "xyxy"), convert(boxes2.to(dtype), fmt, "xyxy")


def bbox_iou(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: IoUKind = "iou",
    fmt: BoxFormat = "xyxy",
    eps: float = 1e-7,
    *,
    validate: bool = True,
) -> Tensor:
    """Elementwise IoU-family similarity of two broadcastable box tensors.

    Args:
        boxes1: ``(..., 4)`` boxes, e.g. predictions.
        boxes2: ``(..., 4)`` boxes broadcastable against ``boxes1``, e.g. targets.
        kind: ``"iou" | "giou" | "diou" | "ciou" | "eiou" | "siou"`` (formulas in :func:`iou_xyxy`).
        fmt: box format of both inputs, ``"xyxy" | "xywh" | "cxcywh"``.
        eps: added to every denominator (keeps degenerate boxes finite).
        validate: check shapes, dtypes and finiteness (one reduction per input); ``False`` skips
            the value check for pipelines that validated their data already.

    Returns:
        ``(...)`` tensor of the broadcast shape, in the input dtype. Ranges: iou [0, 1],
        giou and diou [−1, 1], ciou [−1.5, 1], siou (−2, 1], eiou (−3, 1].

    Example:
        >>> b1 = torch.tensor([0.0, 0.0, 2.0, 2.0]); b2 = torch.tensor([1.0, 1.0, 3.0, 3.0])
        >>> bbox_iou(b1, b2)  # 1 / 7
        tensor(0.1429)
    """
    check_kind(kind)
    check_eps(eps)
    b1, b2 = prepare_pair(boxes1, boxes2, fmt, validate)
    try:
        torch.broadcast_shapes(b1.shape, b2.shape)
    except RuntimeError:
        raise ValueError(
            f"boxes1 {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)} do not broadcast"
        ) from None
    out_dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    return iou_xyxy(b1, b2, kind, eps).to(out_dtype)


def box_iou(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: IoUKind = "iou",
    fmt: BoxFormat = "xyxy",
    eps: float = 1e-7,
    *,
    validate: bool = True,
) -> Tensor:
    """Pairwise IoU-family similarity: ``(N, 4) × (M, 4)`` → ``(N, M)``.

    The elementwise core over broadcast shapes ``(N, 1, 4)`` and ``(1, M, 4)``.

    Example:
        >>> box_iou(torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]])).shape
        torch.Size([0, 1])
    """
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if check_boxes(name, b, finite=False).dim() != 2:
            raise ValueError(f"{name} must have shape (N, 4), got {tuple(b.shape)}")
        if validate:  # here, so a bad value's index is reported in the caller's (N, 4) layout
            check_boxes(name, b)
    return bbox_iou(boxes1[:, None, :], boxes2[None, :, :], kind, fmt, eps, validate=False)
