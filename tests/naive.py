"""Naive, independent references for the tests: per-box Python float arithmetic from the papers.

Nothing here imports detloss. Loops are fine: these run on a few hundred boxes at most.
"""

from __future__ import annotations

import math

import torch

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


def random_boxes(n: int, dtype: torch.dtype = torch.float64, lo: float = 0.5, hi: float = 10.0,
                 span: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 4)`` xyxy boxes: corners in [0, span), width and height in [lo, hi)."""
    xy = torch.rand(n, 2, dtype=torch.float64, generator=generator) * span
    wh = lo + torch.rand(n, 2, dtype=torch.float64, generator=generator) * (hi - lo)
    return torch.cat((xy, xy + wh), dim=1).to(dtype)
