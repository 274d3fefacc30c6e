"""Box codecs: raw network outputs <-> boxes (YOLO decode, SSD encode/decode).

Each detector's codec lives in its own headed section; all are pure elementwise tensor functions
(no validation: the criteria validate their inputs once and call these on the hot path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------------
# YOLO (v3 / v4) decode
# ---------------------------------------------------------------------------------------------------

_MAX_LOG_SCALE = math.log(1e6)  # exp(t_wh) clamp: finite boxes for saturated head outputs


def yolo_grid(height: int, width: int, *, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """Cell offsets of an ``H × W`` grid: ``(H, W, 2)`` with ``[..., 0] = x`` (column), ``[..., 1] = y``."""
    ys = torch.arange(height, dtype=dtype, device=device)
    xs = torch.arange(width, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)


def decode_yolo(raw: Tensor, offset: Tensor, anchors: Tensor, stride: float) -> Tensor:
    """Decode raw YOLO box offsets into centre/size boxes in input pixels.

    ``xy = (σ(t_xy) + offset) · stride``, ``wh = exp(min(t_wh, ln 1e6)) · anchor`` (YOLOv3 ``decode``;
    YOLOv4's ``yolo_head`` gives the same boxes divided by the input size). The clamp (a box a million
    times its anchor; the originals have none) only acts on saturated outputs: exp(t) overflows
    float32 at t ≈ 89, and a box of 1e19 px already makes the IoU's areas inf − inf = NaN.

    Args:
        raw: ``(..., K)`` head outputs with ``K ≥ 4``, channels (tx, ty, tw, th, …).
        offset: the cell ``(gx, gy)`` of each prediction, broadcastable to ``raw[..., :2]``.
        anchors: anchor (w, h) in input pixels, broadcastable to ``raw[..., :2]``.
        stride: input pixels per cell.

    Returns:
        ``(..., 4)`` boxes ``(cx, cy, w, h)`` in input pixels.
    """
    xy = (torch.sigmoid(raw[..., 0:2]) + offset) * stride
    wh = torch.exp(raw[..., 2:4].clamp(max=_MAX_LOG_SCALE)) * anchors
    return torch.cat((xy, wh), dim=-1)


# ---------------------------------------------------------------------------------------------
# YOLOv5 (ultralytics/yolov5 utils/loss.py ComputeLoss, models/yolo.py Detect)
# ---------------------------------------------------------------------------------------------


def decode_yolov5(
    raw: Tensor, anchors: Tensor, grid: Tensor | None = None, stride: float = 1.0, fmt: str = "cxcywh"
) -> Tensor:
    """Decode YOLOv5 box logits into centre-size boxes.

    Args:
        raw: ``(..., 4)`` logits (tx, ty, tw, th).
        anchors: ``(..., 2)`` anchor (w, h) in grid units (pixels / stride), broadcastable.
        grid: ``(..., 2)`` integer cell (x, y) to add to the centre; ``None`` keeps the centre
            relative to its cell, which is how ``ComputeLoss`` compares it with the target.
        stride: multiplies the result (1 keeps grid units; the stride gives input pixels).

        fmt: ``"cxcywh"`` or ``"xyxy"`` (the corners ``xy ∓ wh/2``, without a separate conversion).

    Returns:
        ``(..., 4)`` cxcywh::

            xy = (2·σ(txy) − 0.5 + grid) · stride     (centre may leave its cell by up to 1.5)
            wh = (2·σ(twh))² · anchor · stride        (at most 4 × the anchor)
    """
    s = raw.sigmoid()
    xy = s[..., :2] * 2.0 - 0.5
    if grid is not None:
        xy = xy + grid
    wh = (s[..., 2:4] * 2.0) ** 2 * anchors
    if fmt == "xyxy":  # the corners straight away, as boxes.convert computes them
        half = 0.5 * wh
        out = torch.cat((xy - half, xy + half), dim=-1)
    else:
        out = torch.cat((xy, wh), dim=-1)
    return out * stride if stride != 1.0 else out


# ---------------------------------------------------------------------------------------------
# SSD (SSD.TensorFlow utility/anchor_manipulator.py: encode_all_anchors / decode_all_anchors)
# ---------------------------------------------------------------------------------------------

SSD_VARIANCES: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)


def encode_ssd(boxes: Tensor, priors: Tensor, variances: Sequence[float] = SSD_VARIANCES) -> Tensor:
    """Encode cxcywh boxes as SSD regression targets relative to cxcywh priors.

    Args:
        boxes: ``(..., 4)`` ground truth, cxcywh.
        priors: ``(..., 4)`` priors (default boxes), cxcywh, broadcastable against ``boxes``.
        variances: the prior scaling ``(v_cx, v_cy, v_w, v_h)``.

    Returns:
        ``(..., 4)`` offsets in (cx, cy, w, h) order::

            t_c  = (g_c − p_c) / p_wh / v_c
            t_wh = log(g_wh / p_wh) / v_wh

        (SSD.TensorFlow stores them in (cy, cx, h, w) order; detloss keeps the box order.)
    """
    v = boxes.new_tensor(variances)
    c = (boxes[..., :2] - priors[..., :2]) / priors[..., 2:] / v[:2]
    wh = torch.log(boxes[..., 2:] / priors[..., 2:]) / v[2:]
    return torch.cat((c, wh), dim=-1)


def decode_ssd(offsets: Tensor, priors: Tensor, variances: Sequence[float] = SSD_VARIANCES) -> Tensor:
    """Inverse of :func:`encode_ssd`: offsets ``(..., 4)`` (cx, cy, w, h) → cxcywh boxes ``(..., 4)``::

    g_c  = p_c + t_c · v_c · p_wh
    g_wh = p_wh · exp(t_wh · v_wh)
    """
    v = offsets.new_tensor(variances)
    c = priors[..., :2] + offsets[..., :2] * v[:2] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(offsets[..., 2:] * v[2:])
    return torch.cat((c, wh), dim=-1)


# ---------------------------------------------------------------------------------------------
# Anchor-free distances (GFL / YOLOv8: a distribution over reg_max bins per box side)
# ---------------------------------------------------------------------------------------------


def decode_distances(logits: Tensor, anchor_points: Tensor, *, channels_first: bool = False) -> Tensor:
    """Decode per-side distance distributions into xyxy boxes around anchor points (GFL, YOLOv8).

    Each of the four sides (left, top, right, bottom) carries ``n`` logits; the distance is the
    expectation of the softmax over the bins ``0 … n − 1``::

        d_s  = Σ_i i · softmax(logits_s)_i                      (s = l, t, r, b)
        xyxy = (x − d_l, y − d_t, x + d_r, y + d_b)

    Args:
        logits: ``(..., 4, n)`` side logits (YOLOv8's ``(B, A, 4·reg_max)`` viewed as ``(B, A, 4, reg_max)``);
            with ``channels_first``, ``(..., 4, n, A)`` (a head's ``(B, 4·reg_max, A)`` viewed as
            ``(B, 4, reg_max, A)``), read in place: no permuted copy.
        anchor_points: ``(..., 2)`` anchor centres (x, y) in the distances' units (grid cells),
            broadcastable against the boxes' shape.

    Returns:
        ``(..., 4)`` xyxy boxes in the same units; with ``channels_first``, ``(..., A, 4)``.
    """
    return distances_to_boxes(expected_distances(logits, channels_first=channels_first), anchor_points)


def expected_distances(logits: Tensor, *, channels_first: bool = False) -> Tensor:
    """The distances of :func:`decode_distances` (and of the oriented heads), before they become
    boxes: ``d_s = Σ_i i · softmax(logits_s)_i`` per side.

    Args:
        logits: ``(..., 4, n)``, or with ``channels_first`` ``(..., 4, n, A)`` read in place.

    Returns:
        ``(..., 4)`` (l, t, r, b); with ``channels_first``, ``(..., A, 4)``.
    """
    bin_dim = -2 if channels_first else -1
    bins = torch.arange(logits.shape[bin_dim], dtype=logits.dtype, device=logits.device)
    # the softmax's numerator and denominator apart, so that a strided head is read without a copy;
    # the shift is constant to autograd (the expectation does not depend on it)
    e = (logits - logits.detach().amax(bin_dim, keepdim=True)).exp_()
    weights = torch.stack((bins, torch.ones_like(bins)))  # (2, n): Σ i·e_i and Σ e_i, one pass over e
    if channels_first:  # (2, n) @ (..., 4, n, A) → (..., 4, 2, A), the sides moved last
        num, den = torch.matmul(weights, e).unbind(-2)
        return (num / den).transpose(-1, -2)
    num, den = torch.matmul(e, weights.T).unbind(-1)
    return num / den


def distances_to_boxes(distances: Tensor, anchor_points: Tensor) -> Tensor:
    """xyxy boxes ``(..., 4)`` from side distances ``(..., 4)`` (left, top, right, bottom) around
    anchor points ``(..., 2)`` (broadcastable), all in one unit: ``(x − l, y − t, x + r, y + b)``.
    The distances are used as they are (YOLO26's raw head outputs may be negative)."""
    return torch.cat((anchor_points - distances[..., :2], anchor_points + distances[..., 2:]), dim=-1)


# ---------------------------------------------------------------------------------------------
# Oriented distances (YOLOv8 / YOLO11 OBB: ltrb measured along the box's own axes)
# ---------------------------------------------------------------------------------------------


def decode_rotated_distances(distances: Tensor, angle: Tensor, anchor_points: Tensor) -> Tensor:
    """Decode ltrb distances measured in the box's rotated frame into xywhr boxes (ultralytics'
    ``dist2rbox``, with the angle appended).

    The distances run from the anchor along the box's axes (``l``/``r`` along the width axis at angle
    θ, ``t``/``b`` along the height axis); the centre is the anchor plus the rotated mid-offset::

        (x_f, y_f) = ((r − l)/2, (b − t)/2)
        centre     = anchor + R(θ)·(x_f, y_f) = anchor + (x_f cos θ − y_f sin θ, x_f sin θ + y_f cos θ)
        w, h       = l + r, t + b

    With θ = 0 the box is :func:`decode_distances`'s ``(x − l, y − t, x + r, y + b)`` in cxcywh.

    Args:
        distances: ``(..., 4)`` (l, t, r, b), in the anchors' units.
        angle: ``(...)`` θ in radians, broadcastable against ``distances[..., 0]``.
        anchor_points: ``(..., 2)`` anchor (x, y), broadcastable against ``distances[..., :2]``.

    Returns:
        ``(..., 5)`` xywhr boxes.
    """
    lt, rb = distances[..., :2], distances[..., 2:]
    half = 0.5 * (rb - lt)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = half[..., 0] * cos - half[..., 1] * sin
    y = half[..., 0] * sin + half[..., 1] * cos
    centre = anchor_points + torch.stack((x, y), dim=-1)
    wh = lt + rb
    centre, wh = torch.broadcast_tensors(centre, wh)
    theta = angle.expand(centre.shape[:-1])[..., None]
    return torch.cat((centre, wh, theta.to(centre.dtype)), dim=-1)


def encode_rotated_distances(boxes: Tensor, anchor_points: Tensor) -> Tensor:
    """The inverse of :func:`decode_rotated_distances`: an anchor's ltrb distances to the sides of an
    xywhr box, measured in the box's rotated frame (ultralytics' ``rbox2dist``, unclamped)::

        (d_x, d_y) = R(−θ)·(centre − anchor)
        l, t, r, b = w/2 − d_x, h/2 − d_y, w/2 + d_x, h/2 + d_y

    Negative for an anchor outside the box (a DFL target clamps them to its bins).

    Args:
        boxes: ``(..., 5)`` xywhr boxes.
        anchor_points: ``(..., 2)`` anchor (x, y), broadcastable against ``boxes[..., :2]``.

    Returns:
        ``(..., 4)`` (l, t, r, b).
    """
    off = boxes[..., :2] - anchor_points
    theta = boxes[..., 4]
    cos, sin = torch.cos(theta), torch.sin(theta)
    dx = off[..., 0] * cos + off[..., 1] * sin
    dy = off[..., 1] * cos - off[..., 0] * sin
    hw, hh = 0.5 * boxes[..., 2], 0.5 * boxes[..., 3]
    return torch.stack((hw - dx, hh - dy, hw + dx, hh + dy), dim=-1)
