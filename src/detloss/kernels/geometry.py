"""The geometry every IoU-family kind shares, written once: corners, sides, overlap, enclosing box,
centre offset, and the adjoints that scatter their gradients back to the corners.

Forward helpers work on corner pairs ``lt = (x1, y1)``, ``rb = (x2, y2)`` of shape ``(..., 2)``, so
one op covers both axes (half the launches of per-coordinate code). Widths are clamped at 0, so an
inverted box (x2 < x1) is empty; the enclosing box spans all four corners of both boxes.

Backward helpers follow PyTorch's autograd conventions exactly, so that hand-derived and autograd
gradients agree at the kinks: ``clamp(min=0)`` passes the gradient where its input is >= 0,
``minimum``/``maximum`` split it in halves on ties.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Overlap(NamedTuple):
    """IoU and its parts for a pair of broadcastable box tensors, each ``(...)`` unless noted."""

    iou: Tensor  # I / (U + eps)
    union: Tensor  # U = w₁h₁ + w₂h₂ − I
    wh1: Tensor  # (..., 2) clamped width and height of box 1
    wh2: Tensor  # (..., 2) of box 2


def corners(b: Tensor) -> tuple[Tensor, Tensor]:
    """``(..., 4)`` xyxy → ``lt, rb`` of shape ``(..., 2)`` (views)."""
    lt, rb = b.unflatten(-1, (2, 2)).unbind(-2)
    return lt, rb


def overlap(lt1: Tensor, rb1: Tensor, lt2: Tensor, rb2: Tensor, eps: float) -> Overlap:
    """IoU = I / (U + eps) with the clamped intersection I and the union U."""
    wh1, wh2 = (rb1 - lt1).clamp(min=0), (rb2 - lt2).clamp(min=0)
    iw, ih = (torch.minimum(rb1, rb2) - torch.maximum(lt1, lt2)).clamp(min=0).unbind(-1)
    w1, h1 = wh1.unbind(-1)
    w2, h2 = wh2.unbind(-1)
    inter = iw * ih
    union = w1 * h1 + w2 * h2 - inter
    return Overlap(inter / (union + eps), union, wh1, wh2)


def hull(lt1: Tensor, rb1: Tensor, lt2: Tensor, rb2: Tensor) -> Tensor:
    """``(..., 2)`` width and height of the enclosing box: the hull of all four corners, so it stays
    >= 0 and contains both centres even for an inverted box; max(x₂, u₂) − min(x₁, u₁) otherwise."""
    hi = torch.maximum(torch.maximum(lt1, rb1), torch.maximum(lt2, rb2))
    lo = torch.minimum(torch.minimum(lt1, rb1), torch.minimum(lt2, rb2))
    return hi - lo


def centre_offset(lt1: Tensor, rb1: Tensor, lt2: Tensor, rb2: Tensor) -> Tensor:
    """``(..., 2)`` centre of box 2 minus centre of box 1 (target minus prediction)."""
    return 0.5 * ((lt2 + rb2) - (lt1 + rb1))


def scaled(lt: Tensor, rb: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """The box with the same centre and width, height scaled by ``ratio`` (Inner-IoU's auxiliary box)."""
    centre, half = 0.5 * (lt + rb), (0.5 * ratio) * (rb - lt)
    return centre - half, centre + half


def squared_norm(d: Tensor) -> Tensor:
    """``(..., 2)`` → ``(...)``: dx² + dy²."""
    dx, dy = d.unbind(-1)
    return dx * dx + dy * dy


# ------------------------------------------------------------------------------------------ backward


def pair_grads(g_inner: Tensor, g_outer: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of ``a`` and ``b`` through ``minimum(a, b)`` (adjoint ``g_inner``) and
    ``maximum(a, b)`` (adjoint ``g_outer``), ties split in halves; ``s = sign(b − a)``.

    minimum sends (1 + s)/2 of its adjoint to ``a``, maximum (1 − s)/2.
    """
    p, q = g_inner + g_outer, s * (g_inner - g_outer)
    return 0.5 * (p + q), 0.5 * (p - q)


def axis_grads(
    a1: Tensor,
    a2: Tensor,
    b1: Tensor,
    b2: Tensor,
    g_i: Tensor,
    g_c: Tensor | None,
    g_wa: Tensor,
    g_wb: Tensor,
    g_d: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scatter one axis's adjoints to the corners of box a (a1, a2) and box b (b1, b2).

    Intersection extent = min(a2, b2) − max(a1, b1) (adjoint ``g_i``), enclosing extent =
    :func:`hull` (``g_c``), widths a2 − a1, b2 − b1 (``g_wa``, ``g_wb``), centre offset
    ½((b1 + b2) − (a1 + a2)) (``g_d``). ``minimum``/``maximum`` split their adjoint on ties as
    autograd does: ``pair_grads(g_min, g_max, sign(y − x))`` → shares of x and y.
    Returns the adjoints of (a1, b1, a2, b2).
    """
    zero = torch.zeros_like(g_i)
    ga2, gb2 = pair_grads(g_i, zero, torch.sign(b2 - a2))  # min(a2, b2)
    ga1, gb1 = pair_grads(zero, -g_i, torch.sign(b1 - a1))  # max(a1, b1)
    if g_c is not None:
        sa, sb = torch.sign(a2 - a1), torch.sign(b2 - b1)
        hi_a, hi_b = pair_grads(zero, g_c, torch.sign(torch.maximum(b1, b2) - torch.maximum(a1, a2)))
        lo_a, lo_b = pair_grads(-g_c, zero, torch.sign(torch.minimum(b1, b2) - torch.minimum(a1, a2)))
        p, q = pair_grads(lo_a, hi_a, sa)  # min(a1, a2) and max(a1, a2)
        ga1, ga2 = ga1 + p, ga2 + q
        p, q = pair_grads(lo_b, hi_b, sb)
        gb1, gb2 = gb1 + p, gb2 + q
    ga1, ga2 = ga1 - g_wa, ga2 + g_wa
    gb1, gb2 = gb1 - g_wb, gb2 + g_wb
    if g_d is not None:
        hd = 0.5 * g_d
        ga1, ga2, gb1, gb2 = ga1 - hd, ga2 - hd, gb1 + hd, gb2 + hd
    return ga1, gb1, ga2, gb2
