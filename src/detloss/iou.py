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

from .boxes import BoxFormat, _convert, check_boxes, check_format

IoUKind = Literal["iou", "giou", "diou", "ciou", "eiou", "siou"]
IOU_KINDS: tuple[str, ...] = ("iou", "giou", "diou", "ciou", "eiou", "siou")

_FOUR_OVER_PI2 = 4.0 / math.pi**2
_SIOU_THETA = 4.0  # shape-cost exponent of the SIoU paper


def iou_xyxy(boxes1: Tensor, boxes2: Tensor, kind: str = "iou", eps: float = 1e-7) -> Tensor:
    """Unchecked core: the ``kind`` IoU of broadcastable xyxy boxes ``(..., 4)`` → ``(...)``.

    The library's criteria call this after validating their inputs once; users call
    :func:`bbox_iou`. Formulas (box 1 = prediction, box 2 = target, C = enclosing box):

    - iou  = I / (U + eps)
    - giou = iou − (|C| − U) / (|C| + eps)
    - diou = iou − ρ² / (c² + eps), ρ the centre distance, c the diagonal of C
    - ciou = diou − α·v, v = 4/π²·(atan(w₂/h₂) − atan(w₁/h₁))², α = v / ((1 − iou) + v + eps),
      α held constant in the gradient (CIoU paper; torchvision and YOLOv5 do the same, mmdet
      additionally gates α by iou > 0.5 — not done here)
    - eiou = diou − (w₁ − w₂)² / (C_w² + eps) − (h₁ − h₂)² / (C_h² + eps)
    - siou = iou − (Δ + Ω) / 2, Δ = Σ_{x,y} (1 − exp(−(2 − Λ)·(d_t / C_t)²)) with the angle cost
      Λ = sin(2α) = 2·|dx·dy| / (dx² + dy²) (the paper's 1 − 2·sin²(arcsin(sin α) − π/4),
      written without arcsin so its gradient stays finite), Ω = Σ_{w,h} (1 − exp(−ω_t))^4,
      ω_w = |w₁ − w₂| / max(w₁, w₂).
    """
    x1, y1, x2, y2 = boxes1.unbind(-1)
    u1, v1, u2, v2 = boxes2.unbind(-1)
    w1, h1 = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    w2, h2 = (u2 - u1).clamp(min=0), (v2 - v1).clamp(min=0)

    inter = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp(min=0) * (
        torch.minimum(y2, v2) - torch.maximum(y1, v1)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter
    iou = inter / (union + eps)
    if kind == "iou":
        return iou

    # Enclosing box = hull of all corners, so it stays >= 0 and contains both centres even for an
    # inverted box (x2 < x1); for proper boxes this is max(x2, u2) - min(x1, u1).
    cw = torch.maximum(torch.maximum(x1, x2), torch.maximum(u1, u2)) - torch.minimum(
        torch.minimum(x1, x2), torch.minimum(u1, u2)
    )
    ch = torch.maximum(torch.maximum(y1, y2), torch.maximum(v1, v2)) - torch.minimum(
        torch.minimum(y1, y2), torch.minimum(v1, v2)
    )
    if kind == "giou":
        enclose = cw * ch
        return iou - (enclose - union) / (enclose + eps)

    dx = 0.5 * ((u1 + u2) - (x1 + x2))  # centre offset, target minus prediction
    dy = 0.5 * ((v1 + v2) - (y1 + y2))
    rho2 = dx * dx + dy * dy
    if kind == "siou":
        angle = 2.0 * (dx * dy).abs() / (rho2 + eps)
        gamma = 2.0 - angle
        distance = 2.0 - torch.exp(-gamma * (dx / (cw + eps)) ** 2) - torch.exp(
            -gamma * (dy / (ch + eps)) ** 2
        )
        omega_w = (w1 - w2).abs() / (torch.maximum(w1, w2) + eps)
        omega_h = (h1 - h2).abs() / (torch.maximum(h1, h2) + eps)
        shape = (1.0 - torch.exp(-omega_w)) ** _SIOU_THETA + (1.0 - torch.exp(-omega_h)) ** _SIOU_THETA
        return iou - 0.5 * (distance + shape)

    diou = iou - rho2 / (cw * cw + ch * ch + eps)
    if kind == "diou":
        return diou
    if kind == "ciou":
        v = _FOUR_OVER_PI2 * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
        with torch.no_grad():
            # (1 − iou) first: 1 + eps rounds to 1 in float32 for eps < 6e-8, and 0/0 on identical boxes
            alpha = v / ((1.0 - iou) + v + eps)
        return diou - alpha * v
    if kind == "eiou":
        return diou - (w1 - w2) ** 2 / (cw * cw + eps) - (h1 - h2) ** 2 / (ch * ch + eps)
    raise ValueError(f"kind must be one of {IOU_KINDS}, got {kind!r}")


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
    return _convert(boxes1.to(dtype), fmt, "xyxy"), _convert(boxes2.to(dtype), fmt, "xyxy")


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
