"""Box codecs: raw head outputs ↔ boxes (YOLO decode; SSD encode/decode)."""

from __future__ import annotations

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------------
# YOLO (v3 / v4) decode
# ---------------------------------------------------------------------------------------------------


def yolo_grid(height: int, width: int, *, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """Cell offsets of an ``H × W`` grid: ``(H, W, 2)`` with ``[..., 0] = x`` (column), ``[..., 1] = y``."""
    ys = torch.arange(height, dtype=dtype, device=device)
    xs = torch.arange(width, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)


def decode_yolo(raw: Tensor, offset: Tensor, anchors: Tensor, stride: float) -> Tensor:
    """Decode raw YOLO box offsets into centre/size boxes in input pixels.

    ``xy = (σ(t_xy) + offset) · stride``, ``wh = exp(t_wh) · anchor`` (YOLOv3 ``decode``; YOLOv4's
    ``yolo_head`` gives the same boxes divided by the input size).

    Args:
        raw: ``(..., K)`` head outputs with ``K ≥ 4``, channels (tx, ty, tw, th, …).
        offset: the cell ``(gx, gy)`` of each prediction, broadcastable to ``raw[..., :2]``.
        anchors: anchor (w, h) in input pixels, broadcastable to ``raw[..., :2]``.
        stride: input pixels per cell.

    Returns:
        ``(..., 4)`` boxes ``(cx, cy, w, h)`` in input pixels.
    """
    xy = (torch.sigmoid(raw[..., 0:2]) + offset) * stride
    wh = torch.exp(raw[..., 2:4]) * anchors
    return torch.cat((xy, wh), dim=-1)


def decode_yolo_grid(raw: Tensor, anchors: Tensor, stride: float) -> Tensor:
    """:func:`decode_yolo` over a head ``(B, A, H, W, K)`` with ``(A, 2)`` anchors → ``(B, A, H, W, 4)``."""
    _, a, h, w, _ = raw.shape
    grid = yolo_grid(h, w, dtype=raw.dtype, device=raw.device)  # (H, W, 2)
    return decode_yolo(raw, grid, anchors.to(raw).view(1, a, 1, 1, 2), stride)
