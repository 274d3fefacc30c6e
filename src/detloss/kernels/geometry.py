"""The geometry every IoU-family kind shares, written once: corners, overlap, enclosing box and
centre offset.

The forward helpers work on **axis planes**: a box tensor ``(..., 4)`` becomes its low corner
``lo = (x1, y1)`` and high corner ``hi = (x2, y2)``, each ``(2, ...)`` with the axes in front. One
elementwise op then covers both axes (half the launches of per coordinate ops, the cost that
dominates at detection sizes of 10³-10⁴ boxes); products across the axes are :func:`area`, sums
across them (squared distances) ``sum(0)``. How the planes are built depends on the path, never the
formulas (:func:`corners`, :func:`boxes_of`): eagerly ``torch.stack`` of the stride-4 coordinate
views makes contiguous planes as fast as a copy, and the later ops run on contiguous memory (ops on
``(..., 2)`` corner pairs, an inner loop of two, ran several times slower); compiled, the planes are
strided views of the boxes, which inductor fuses into one loop over the boxes. Widths are clamped at
0, so an inverted box (x2 < x1) is empty; the enclosing box spans all four corners of both boxes.

Minimum and maximum are :func:`low` and :func:`high`: under autograd ``clamp`` with a tensor bound on
small tensors (fewest launches; up to ``runtime.CLAMP_MAX_NUMEL``) and the ``relu`` form on large
ones (a backward of one op where ``torch.minimum``'s takes five: 5x faster fwd+bwd at 1e5
elements); the same values, exact at ties. On a tie the gradient goes to one side (``low`` to its
first argument, ``high`` to its second) instead of half to each. :func:`clamp0` is ``clamp(min=0)``
with a backward of one op.

The hand-derived backward (:func:`detloss.kernels.iou_grad.parts_backward`) follows autograd's
conventions of these formulas exactly, so that hand-derived and autograd gradients agree at the
kinks: ``clamp(min=0)`` passes the gradient where its input is >= 0, and :func:`low` / :func:`high`
send it to one side on a tie.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import runtime

Corners = tuple[Tensor, Tensor]  # lo = (x1, y1), hi = (x2, y2), each (2, ...)


class Overlap(NamedTuple):
    """IoU and its parts for a pair of broadcastable boxes: ``iou`` and ``union`` ``(...)``, the
    clamped sides ``(2, ...)`` (width, height) of each box and of their intersection."""

    iou: Tensor  # I / (U + eps)
    union: Tensor  # U = w₁h₁ + w₂h₂ − I
    sides1: Tensor  # clamped sides of box 1
    sides2: Tensor  # of box 2
    inter_sides: Tensor  # of the intersection


def corners(b: Tensor, ndim: int) -> Corners:
    """``(..., 4)`` xyxy → the axis planes lo = (x1, y1) and hi = (x2, y2), each ``(2, ...)`` with
    ``ndim − 1`` box dimensions (leading 1s added, so that boxes of fewer dimensions still broadcast
    once the axes stand in front)."""
    if b.dim() < ndim:
        b = b.view((1,) * (ndim - b.dim()) + b.shape)
    if torch.compiler.is_compiling():
        # strided views, no copy: inductor materialises every stacked plane in a buffer of its own
        # (one loop each, then the kernel), where views fuse into the kernel's one loop
        return b[..., :2].movedim(-1, 0), b[..., 2:].movedim(-1, 0)
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack((x1, y1)), torch.stack((x2, y2))


def planes(x: Tensor, y: Tensor) -> Tensor:
    """Per-axis tensors x, y of one shape ``(...)`` → the axis planes ``(2, ...)``."""
    if torch.compiler.is_compiling():
        # inductor makes every cat on the CPU a buffer of its own, filled in a loop of its own; a
        # select on the axis index is elementwise and fuses into the kernel's loop
        axis = torch.arange(2, device=x.device).view((2,) + (1,) * x.dim())
        return torch.where(axis == 0, x, y)
    return torch.stack((x, y))


def boxes_of(lo: Tensor, hi: Tensor) -> Tensor:
    """The inverse of :func:`corners`: axis planes lo, hi ``(2, ...)`` → ``(..., 4)`` (x1, y1, x2, y2)."""
    if torch.compiler.is_compiling():
        # one plane per coordinate, stacked last: inductor fuses the whole backward into one loop over
        # the boxes writing four strided outputs, where a cat of planes ran a loop of two inner lanes
        return torch.stack((*lo.unbind(0), *hi.unbind(0)), -1)
    return torch.cat((lo, hi)).movedim(0, -1)


def coordinate_planes(b: Tensor) -> Tensor:
    """``(..., 4)`` boxes as a view whose coordinates each lie contiguous (one copy): their
    ``unbind(-1)`` are contiguous tensors instead of stride-4 views. Broadcast pairwise ops
    (boxes ``(B, 1, P)`` against ``(B, M, 1)``) ran 1.5–5× slower over stride-4 rows; same-shape
    elementwise ops run at full speed on the views and need no copy."""
    return b.movedim(-1, 0).contiguous().movedim(0, -1)


def clamp0(x: Tensor) -> Tensor:
    """``clamp(x, min=0)``, values and gradient (passed where x >= 0) alike, as ``threshold`` at
    −(the smallest subnormal) = −(smallest normal × eps), an exact power of two: its backward is one
    op where clamp's takes three (measured: a third of the small IoU losses' backward time). The
    bound is computed here, not read from a module-level table: under ``torch.compile(dynamic=True)``
    a float read from a global becomes a symbol, and its specialisation restarts the analysis."""
    info = torch.finfo(x.dtype)
    return torch.threshold(x, -info.smallest_normal * info.eps, 0.0)


def _needs_grad(a: Tensor, b: Tensor) -> bool:
    return torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)


def _small(a: Tensor, b: Tensor) -> bool:
    return max(a.numel(), b.numel()) <= runtime.CLAMP_MAX_NUMEL


def low(a: Tensor, b: Tensor) -> Tensor:
    """min(a, b); on a tie the gradient goes to ``a``. Under autograd ``clamp(a, max=b)`` for small
    tensors, else a − relu(a − b) (the same values, exact at ties, and the same gradients); without
    autograd (matching costs, the fused kernels' forward) one ``torch.minimum``."""
    if not _needs_grad(a, b):
        return torch.minimum(a, b)
    return torch.clamp(a, max=b) if _small(a, b) else a - torch.relu(a - b)


def high(a: Tensor, b: Tensor) -> Tensor:
    """max(a, b); on a tie the gradient goes to ``b``: ``clamp(b, min=a)`` or b + relu(a − b) under
    autograd (as :func:`low`), one ``torch.maximum`` without."""
    if not _needs_grad(a, b):
        return torch.maximum(a, b)
    return torch.clamp(b, min=a) if _small(a, b) else b + torch.relu(a - b)


def reusable(*ts: Tensor) -> bool:
    """Whether a formula's fresh temporaries may be overwritten in place: no autograd through ``ts``
    and no compiled region (inductor fuses the temporaries away). The matching costs of the
    assigners are grids of (boxes × anchors) pairs: in place they allocate a few grid-sized buffers
    instead of one per op, and each new buffer's first touch page-faults (measured 2-3x slower)."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


def overlap(k1: Corners, k2: Corners, eps: float) -> Overlap:
    """IoU = I / (U + eps) with the clamped intersection I and the union U."""
    (lo1, hi1), (lo2, hi2) = k1, k2
    s1, s2 = clamp0(hi1 - lo1), clamp0(hi2 - lo2)
    if reusable(lo1, hi1, lo2, hi2):  # the same formula, low/high's fresh outputs reused in place
        si = low(hi1, hi2).sub_(high(lo1, lo2)).clamp_(min=0)
        inter = area(si)
        union = torch.add(area(s1), area(s2)).sub_(inter)
        return Overlap(inter.div_(union + eps if eps else union), union, s1, s2, si)
    si = clamp0(low(hi1, hi2) - high(lo1, lo2))
    inter = area(si)
    union = area(s1) + area(s2) - inter
    return Overlap(inter / (union + eps if eps else union), union, s1, s2, si)


def area(sides: Tensor) -> Tensor:
    """w·h of sides ``(2, ...)``: ``prod(0)`` without autograd (one op); under autograd the two
    planes multiplied (prod's backward tests for zeros on the host)."""
    if not (sides.requires_grad and torch.is_grad_enabled()):
        return sides.prod(0)
    w, h = sides.unbind(0)
    return w * h


def hull(a1: Tensor, a2: Tensor, wa: Tensor, b1: Tensor, b2: Tensor, wb: Tensor) -> Tensor:
    """Sides of the enclosing box, per axis plane, of box a (low corner ``a1``, high ``a2``, clamped
    sides ``wa``) and box b: the hull of all four corners, so it stays >= 0 and contains both centres
    even for an inverted box (a2 < a1); max(a2, b2) − min(a1, b1) otherwise.

    With the clamped sides ``wa = clamp(a2 − a1, 0)`` (and ``wb``), max(a1, a2) = a1 + wa and
    min(a1, a2) = a2 − wa: the hull is one :func:`high` and one :func:`low` of those, with the
    gradients of the nested form at every tie (``clamp`` passes at 0 where ``relu`` does not)."""
    hi, lo = high(a1 + wa, b1 + wb), low(a2 - wa, b2 - wb)
    return hi.sub_(lo) if reusable(a1, a2, wa, b1, b2, wb) else hi - lo


def enclosing(k1: Corners, k2: Corners, ov: Overlap) -> Tensor:
    """Sides of the box enclosing both boxes, ``(2, ...)`` (width, height): :func:`hull` of both axes."""
    return hull(k1[0], k1[1], ov.sides1, k2[0], k2[1], ov.sides2)


def centre_offset(k1: Corners, k2: Corners) -> Tensor:
    """Centre of box 2 minus centre of box 1 (target minus prediction), ``(2, ...)`` (dx, dy)."""
    if reusable(*k1, *k2):
        # halved per box, not per pair (the grid of pairs is the large one): the same values, as
        # halving is exact; sub's alpha = 0.5 halves the other sum inside the subtraction
        return torch.sub((k2[0] + k2[1]).mul_(0.5), k1[0] + k1[1], alpha=0.5)
    return 0.5 * ((k2[0] + k2[1]) - (k1[0] + k1[1]))


def scaled(k: Corners, ratio: float) -> Corners:
    """The box with the same centre and its sides scaled by ``ratio`` (Inner-IoU's auxiliary box)."""
    lo, hi = k
    centre, half = 0.5 * (lo + hi), (0.5 * ratio) * (hi - lo)
    return centre - half, centre + half
