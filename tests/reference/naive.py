"""Naive, independent references of the library's formulas: nothing here imports detloss.

Two kinds of reference, one per use:

- per-box Python float arithmetic from the papers (:func:`iou_pair`, :func:`iou_rows`), the tests'
  ground truth; loops are fine, they run on a few hundred boxes at most;
- the same losses written plainly in torch, the way torchvision's ``ops/*_loss.py`` write them
  (:func:`naive_iou_loss`, :func:`naive_focal_loss`, :func:`ciou_frozen_alpha`): autograd keeps every
  intermediate. The tests check the library against them; ``benchmarks/bench.py`` times them as the
  "naive" peer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: the kinds :func:`iou_pair` implements
KINDS = ("iou", "giou", "diou", "ciou", "eiou", "siou")


def iou_pair(b1: list[float], b2: list[float], kind: str) -> float:
    """The ``kind`` IoU of two xyxy boxes, written from the papers' definitions (no eps).

    The boxes are assumed non-degenerate (positive width and height) except where noted.
    """
    x1, y1, x2, y2 = b1
    u1, v1, u2, v2 = b2
    w1, h1 = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    w2, h2 = max(u2 - u1, 0.0), max(v2 - v1, 0.0)
    iw = max(min(x2, u2) - max(x1, u1), 0.0)
    ih = max(min(y2, v2) - max(y1, v1), 0.0)
    inter = iw * ih
    union = w1 * h1 + w2 * h2 - inter
    iou = inter / union if union > 0 else 0.0
    if kind == "iou":
        return iou
    cw = max(x2, u2) - min(x1, u1)
    ch = max(y2, v2) - min(y1, v1)
    if kind == "giou":  # Rezatofighi et al. 2019
        c = cw * ch
        return iou - (c - union) / c
    dx = (u1 + u2) / 2 - (x1 + x2) / 2
    dy = (v1 + v2) / 2 - (y1 + y2) / 2
    rho2 = dx * dx + dy * dy
    diou = iou - rho2 / (cw * cw + ch * ch)  # Zheng et al. 2020
    if kind == "diou":
        return diou
    if kind == "ciou":
        v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
        alpha = v / ((1 - iou) + v) if v > 0 else 0.0
        return diou - alpha * v
    if kind == "eiou":  # Zhang et al. 2022 (Focal-EIoU)
        return diou - (w1 - w2) ** 2 / cw**2 - (h1 - h2) ** 2 / ch**2
    if kind == "siou":  # Gevorgyan 2022, with the paper's arcsin form of the angle cost
        sigma = math.sqrt(rho2)
        if sigma > 0:
            lam = 1 - 2 * math.sin(math.asin(abs(dy) / sigma) - math.pi / 4) ** 2
        else:
            lam = 0.0  # dx = dy = 0: the distance cost is 0 whatever the angle cost
        gamma = 2 - lam
        delta = (1 - math.exp(-gamma * (dx / cw) ** 2)) + (1 - math.exp(-gamma * (dy / ch) ** 2))
        omega_w = abs(w1 - w2) / max(w1, w2)
        omega_h = abs(h1 - h2) / max(h1, h2)
        omega = (1 - math.exp(-omega_w)) ** 4 + (1 - math.exp(-omega_h)) ** 4
        return iou - (delta + omega) / 2
    raise ValueError(kind)


def iou_rows(b1: torch.Tensor, b2: torch.Tensor, kind: str) -> torch.Tensor:
    """Row-by-row :func:`iou_pair` of two ``(N, 4)`` tensors → ``(N,)`` float64."""
    vals = [iou_pair(p, q, kind) for p, q in zip(b1.double().tolist(), b2.double().tolist(), strict=True)]
    return torch.tensor(vals, dtype=torch.float64)


def ciou_frozen_alpha(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Straightforward torch CIoU of xyxy boxes with α detached: the gradient the CIoU paper uses."""
    w1, h1 = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1]
    w2, h2 = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1]
    iw = (torch.min(b1[..., 2], b2[..., 2]) - torch.max(b1[..., 0], b2[..., 0])).clamp(min=0)
    ih = (torch.min(b1[..., 3], b2[..., 3]) - torch.max(b1[..., 1], b2[..., 1])).clamp(min=0)
    inter = iw * ih
    iou = inter / (w1 * h1 + w2 * h2 - inter)
    cw = torch.max(b1[..., 2], b2[..., 2]) - torch.min(b1[..., 0], b2[..., 0])
    ch = torch.max(b1[..., 3], b2[..., 3]) - torch.min(b1[..., 1], b2[..., 1])
    dx = (b2[..., 0] + b2[..., 2] - b1[..., 0] - b1[..., 2]) / 2
    dy = (b2[..., 1] + b2[..., 3] - b1[..., 1] - b1[..., 3]) / 2
    v = 4 / math.pi**2 * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    alpha = (v / ((1 - iou) + v)).detach()
    return iou - (dx**2 + dy**2) / (cw**2 + ch**2) - alpha * v


#: the image size :func:`naive_iou_loss` normalises MPDIoU's corner distances by by default
MPDIOU_IMAGE = (672.0, 672.0)


def _iou_parts(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, ...]:
    """IoU, union and both boxes' clamped widths and heights of ``(..., 4)`` xyxy boxes, each ``(...)``."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    intsct = (xkis2 - xkis1).clamp(min=0) * (ykis2 - ykis1).clamp(min=0)
    w1, h1 = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    w2, h2 = (x2g - x1g).clamp(min=0), (y2g - y1g).clamp(min=0)
    union = w1 * h1 + w2 * h2 - intsct
    return intsct / (union + eps), union, w1, h1, w2, h2


def naive_iou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: str,
    eps: float = 1e-7,
    *,
    alpha: float = 1.0,
    inner_ratio: float | None = None,
    focaler: tuple[float, float] | None = None,
    image_size: tuple[float, float] = MPDIOU_IMAGE,
) -> Tensor:
    """The mean IoU-family loss of ``(N, 4)`` xyxy boxes, a scalar, written as torchvision's
    ``ops/*_loss.py`` write it; the YOLO community's variants as their snippets write them (Wise-IoU v1,
    MPDIoU, and one modifier: Alpha-IoU ``alpha``, Inner-IoU ``inner_ratio``, Focaler-IoU ``focaler``)."""
    iou, union, w1, h1, w2, h2 = _iou_parts(boxes1, boxes2, eps)
    if inner_ratio is not None:

        def inner(b: Tensor) -> Tensor:
            c, half = (b[..., :2] + b[..., 2:]) / 2, (b[..., 2:] - b[..., :2]) * inner_ratio / 2
            return torch.cat([c - half, c + half], -1)

        term = _iou_parts(inner(boxes1), inner(boxes2), eps)[0]
    elif focaler is not None:
        term = ((iou - focaler[0]) / (focaler[1] - focaler[0])).clamp(0, 1)
    else:
        term = iou**alpha if alpha != 1 else iou
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    if kind == "iou":
        return (1 - term).mean()
    if kind == "mpdiou":
        norm = image_size[0] ** 2 + image_size[1] ** 2
        d1, d2 = ((x1 - x1g) ** 2 + (y1 - y1g) ** 2) / norm, ((x2 - x2g) ** 2 + (y2 - y2g) ** 2) / norm
        if alpha != 1:
            d1, d2 = d1**alpha, d2**alpha
        return (1 - term + d1 + d2).mean()
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    if kind == "wiou":
        rho2 = ((x1g + x2g - x1 - x2) / 2) ** 2 + ((y1g + y2g - y1 - y2) / 2) ** 2
        r = torch.exp(rho2 / ((xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps).detach())
        return (r * (1 - iou)).mean()
    if kind == "giou":
        area_c = (xc2 - xc1) * (yc2 - yc1)
        penalty = (area_c - union) / (area_c + eps)
        return (1 - term + (penalty**alpha if alpha != 1 else penalty)).mean()
    x_p, y_p = (x2 + x1) / 2, (y2 + y1) / 2
    x_g, y_g = (x1g + x2g) / 2, (y1g + y2g) / 2
    if kind == "siou":
        dx, dy = x_g - x_p, y_g - y_p
        sin2a = 2 * (dx * dy).abs() / (dx**2 + dy**2 + eps)
        gamma = 2 - sin2a
        dist = (
            2
            - torch.exp(-gamma * (dx / (xc2 - xc1 + eps)) ** 2)
            - torch.exp(-gamma * (dy / (yc2 - yc1 + eps)) ** 2)
        )
        ow = (w1 - w2).abs() / (torch.max(w1, w2) + eps)
        oh = (h1 - h2).abs() / (torch.max(h1, h2) + eps)
        shape = (1 - torch.exp(-ow)) ** 4 + (1 - torch.exp(-oh)) ** 4
        penalty = 0.5 * (dist + shape)
        return (1 - term + (penalty**alpha if alpha != 1 else penalty)).mean()
    diag = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    terms = [((x_p - x_g) ** 2 + (y_p - y_g) ** 2) / diag]
    if kind == "ciou":
        v = (4 / (torch.pi**2)) * torch.pow(torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps)), 2)
        with torch.no_grad():
            alpha_v = v / (1 - iou + v + eps)
        terms.append(alpha_v * v)
    elif kind == "eiou":
        terms += [(w1 - w2) ** 2 / ((xc2 - xc1) ** 2 + eps), (h1 - h2) ** 2 / ((yc2 - yc1) ** 2 + eps)]
    elif kind != "diou":
        raise ValueError(kind)
    loss = 1 - term
    for t in terms:
        loss = loss + (t**alpha if alpha != 1 else t)
    return loss.mean()


def naive_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """The mean sigmoid focal loss of logits and same-shaped targets, a scalar, written as torchvision
    (and fvcore) write it."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).mean()
