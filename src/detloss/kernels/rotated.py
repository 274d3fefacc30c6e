"""Geometry of oriented (rotated) boxes: their corners, their Gaussians and the exact overlap polygon.

Boxes are ``(..., 5)`` xywhr: centre x, centre y, width, height and θ, the counter-clockwise angle in
radians from the x axis to the width axis (OpenCV's and ultralytics' xywhr). Every similarity here
is computed in the frame of ``boxes1``: the second box's centre offset ``d = R(−θ₁)(c₂ − c₁)`` and
the relative angle ``φ = θ₂ − θ₁``. Then the first box is axis-aligned at the origin, the values are
exactly invariant to translating or rotating both boxes, and the Gaussian formulas need no matrix
inverse or determinant: their entries are written out from ``diag(p₁, q₁)`` and
``R(φ)·diag(p₂, q₂)·R(φ)ᵀ``, sums of non-negative terms where the matrix forms subtract (a sliver's
covariance has ``a·b − c² ≈ 0`` by cancellation, which makes the originals' NaN). The one
exception is :func:`probiou_grid`, the assigners' gradient-free ProbIoU of (box, anchor) grids, in
the image frame as ultralytics computes it: fewer operations per pair, its determinant clamped.

Everything is elementwise over broadcast shapes, sync-free (no data-dependent shape) and
differentiable with plain autograd; the public, checked functions are in :mod:`detloss.rotated`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ROTATED_KINDS",
    "Gaussians",
    "gaussians",
    "gwd_similarity",
    "kld_similarity",
    "polygon_iou",
    "probiou",
    "probiou_grid",
    "rotated_corners",
    "rotated_similarity",
]

#: the similarity kinds of :func:`rotated_similarity`
ROTATED_KINDS: tuple[str, ...] = ("iou", "probiou", "kld", "gwd")

# the largest B whose exp(−B) is a normal float32 (exp(−87.3) ≈ 1.18e-38 is the smallest normal)
_EXP_NORMAL = 80.0

# mmrotate's xy_wh_r_2_xy_sigma clamps width and height to [1e-7, 1e7] before squaring them
_GD_MIN_SIDE, _GD_MAX_SIDE = 1e-7, 1e7


def rotated_corners(boxes: Tensor) -> Tensor:
    """The 4 corners of xywhr boxes ``(..., 5)`` → ``(..., 4, 2)``.

    With ``u = (w/2)(cos θ, sin θ)`` (half the width axis) and ``v = (h/2)(−sin θ, cos θ)`` the
    corners are ``c + u + v, c + u − v, c − u − v, c − u + v`` (ultralytics' ``xywhr2xyxyxyxy`` order:
    consecutive corners share an edge, the first two the edge at ``+u``).
    """
    c = boxes[..., 0:2]
    w, h, t = boxes[..., 2:3], boxes[..., 3:4], boxes[..., 4:5]
    cos, sin = torch.cos(t), torch.sin(t)
    u = torch.cat((cos, sin), dim=-1) * (0.5 * w)
    v = torch.cat((-sin, cos), dim=-1) * (0.5 * h)
    return torch.stack((c + u + v, c + u - v, c - u - v, c - u + v), dim=-2)


def _relative(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dx, dy, cos φ, sin φ)``: the second centre in the first box's frame and the relative angle."""
    t1 = boxes1[..., 4]
    c1, s1 = torch.cos(t1), torch.sin(t1)
    ox = boxes2[..., 0] - boxes1[..., 0]
    oy = boxes2[..., 1] - boxes1[..., 1]
    phi = boxes2[..., 4] - t1
    return c1 * ox + s1 * oy, c1 * oy - s1 * ox, torch.cos(phi), torch.sin(phi)


def _std(side: Tensor, scale: float, floor: float) -> Tensor:
    """``√(side²·scale + floor)`` with a finite gradient at ``side = 0`` (``|side|·√scale`` when the floor
    is 0, where autograd's sqrt′(0) = ∞ would meet the square's 0 and give NaN)."""
    if floor == 0.0:
        return side.abs() * math.sqrt(scale)
    return torch.sqrt(side.square() * scale + floor)


def _rotated_second(p2: Tensor, q2: Tensor, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The entries ``(xx, yy, xy)`` of ``R(φ)·diag(p₂, q₂)·R(φ)ᵀ``."""
    c2, s2 = c.square(), s.square()
    return p2 * c2 + q2 * s2, p2 * s2 + q2 * c2, (p2 - q2) * c * s


def probiou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7, floor: float = 0.0) -> Tensor:
    """ProbIoU (Llerena et al. 2021) of broadcastable xywhr boxes → ``(...)``, symmetric.

    Each box is the Gaussian with covariance ``Σ = R(θ)·diag(p, q)·R(θ)ᵀ``, ``p = w²/12 + floor``,
    ``q = h²/12 + floor`` (the centre is not in it). With ``S = Σ₁ + Σ₂``, ``D = det S`` and ``Δ`` the
    centre offset::

        t₁₂ = ¼·Δᵀ adj(S) Δ / (D + eps)                       (ultralytics' t1 + t2)
        t₃  = ½·ln(D / (4·√(det Σ₁ · det Σ₂) + eps) + eps)
        B   = clamp(t₁₂ + t₃, eps, 100)                       (Bhattacharyya distance)
        probiou = 1 − √(1 − exp(−B) + eps)                    (1 − Hellinger distance)

    These are ultralytics 8.4.190's ``probiou`` eps placements, so its maximum is ``1 − √eps``-ish
    (≈ 0.99955 at eps = 1e-7), as there. ``D = p₁q₁ + p₂q₂ + p₁(p₂ sin²φ + q₂ cos²φ) +
    q₁(p₂ cos²φ + q₂ sin²φ)`` and ``det Σᵢ = pᵢqᵢ`` are computed without cancellation, and
    ``√(pᵢqᵢ)`` as ``√pᵢ·√qᵢ`` with a finite gradient at a zero side.
    """
    dx, dy, c, s = _relative(boxes1, boxes2)
    w1, h1, w2, h2 = boxes1[..., 2], boxes1[..., 3], boxes2[..., 2], boxes2[..., 3]
    p1, q1 = w1.square() / 12 + floor, h1.square() / 12 + floor
    p2, q2 = w2.square() / 12 + floor, h2.square() / 12 + floor
    xx, yy, xy = _rotated_second(p2, q2, c, s)
    a, b = p1 + xx, q1 + yy  # S = [[a, xy], [xy, b]] in the first box's frame
    det_s = p1 * q1 + p2 * q2 + p1 * yy + q1 * xx
    t12 = 0.25 * (b * dx.square() + a * dy.square() - 2.0 * xy * dx * dy) / (det_s + eps)
    root = (_std(w1, 1 / 12, floor) * _std(h1, 1 / 12, floor)
            * _std(w2, 1 / 12, floor) * _std(h2, 1 / 12, floor))
    # ½·ln(det/y + eps) as ½·(ln(det + eps·y) − ln y), y = 4·root + eps: the same value, but the
    # backward never forms det/y² (∞ in float32 for a zero-area box against a ~1e7 px one, then
    # 0·∞ = NaN behind the clamp)
    y = 4.0 * root + eps
    t3 = 0.5 * (torch.log(det_s + eps * y) - torch.log(y))
    bd = (t12 + t3).clamp(eps, 100.0)
    return 1.0 - torch.sqrt(1.0 - torch.exp(-bd) + eps)


class Gaussians(NamedTuple):
    """The per-box parts of ProbIoU in the image frame (each ``(...)``, the boxes' batch shape): the
    centre ``x, y``, the covariance ``Σ = [[a, c], [c, b]] = R(θ)·diag(p, q)·R(θ)ᵀ`` with
    ``p = w²/12 + floor``, ``q = h²/12 + floor``, and ``root = √p·√q = √det Σ``."""

    x: Tensor
    y: Tensor
    a: Tensor
    b: Tensor
    c: Tensor
    root: Tensor


def gaussians(boxes: Tensor, floor: float = 0.0) -> Gaussians:
    """:class:`Gaussians` of xywhr boxes ``(..., 5)``, made once per box for :func:`probiou_grid`."""
    x, y, w, h, t = boxes.unbind(-1)
    p, q = w.square() / 12 + floor, h.square() / 12 + floor
    cos, sin = torch.cos(t), torch.sin(t)
    cos2, sin2 = cos.square(), sin.square()
    root = _std(w, 1 / 12, floor) * _std(h, 1 / 12, floor)
    return Gaussians(
        x.contiguous(), y.contiguous(), p * cos2 + q * sin2, p * sin2 + q * cos2, (p - q) * cos * sin, root
    )


@torch.no_grad()
def probiou_grid(first: Gaussians, second: Gaussians, eps: float = 1e-7) -> Tensor:
    """ProbIoU of the broadcast pairs of two sets of boxes given by their :class:`Gaussians` (made
    with the same ``floor``), without gradient: the assigners' ``(B, m, A)`` grids of (box, anchor)
    pairs. :func:`probiou`'s formula and eps placements, written in the image frame as ultralytics
    computes it, ``S = Σ₁ + Σ₂ = [[A, C], [C, B]]``, ``D = A·B − C²``::

        B_d     = clamp(¼·(A·Δy² + B·Δx² − 2·C·Δx·Δy) / (D + eps) + ½·ln(D / (4·root₁·root₂ + eps) + eps),
                        eps, 100)
        probiou = 1 − √(1 − exp(−B_d) + eps)

    About 30 grid-sized operations instead of the frame-relative form's ~55 (no per-pair cosine or
    sine), each temporary overwritten once spent. Equal to :func:`probiou` up to rounding: ``D`` is
    a difference here, clamped at 0 (two nearly parallel slivers give rounding noise instead of a
    NaN); the assigners read it without gradient, and the losses' ProbIoU is :func:`probiou`."""
    dx = first.x - second.x
    dy = first.y - second.y
    sa = first.a + second.a
    sb = first.b + second.b
    sc = first.c + second.c
    det = sa * sb
    det.addcmul_(sc, sc, value=-1.0).clamp_(min=0.0)
    # t₁₂ = ¼·(A·Δy² + B·Δx² − 2·C·Δx·Δy) / (D + eps), its parts overwritten as they are spent
    num = sc.mul_(dx).mul_(dy).mul_(-2.0)
    num.addcmul_(sb, dx.square_())
    num.addcmul_(sa, dy.square_())
    t12 = num.div_(torch.add(det, eps, out=sa))
    # t₃ = ½·ln(D / (4·root₁·root₂ + eps) + eps)
    y = torch.mul(first.root * 4.0, second.root, out=sb).add_(eps)
    t3 = det.div_(y).add_(eps).log_()
    del dx, dy, sa, sb, y
    # −B = −(t₃ + t₁₂) clamped to [−80, −eps]: above 80, 1 − exp(−B) is 1 exactly in float32 and
    # float64 alike (exp(−80) ≈ 1.8e-35 is below half an ulp of 1), so clamping at 80 instead of 100
    # gives the same values, but exp(−B) stays a normal number: exp(−100) ≈ 3.7e-44 is a float32
    # subnormal, and most pairs of a grid (an anchor far from the box) would take the CPU's slow
    # subnormal path (~20x per op)
    neg_bd = t3.mul_(-0.5).sub_(t12, alpha=0.25).clamp_(-min(100.0, _EXP_NORMAL), -eps)
    return neg_bd.exp_().neg_().add_(1.0).add_(eps).sqrt_().neg_().add_(1.0)


def _gd_variances(boxes: Tensor, floor: float) -> tuple[Tensor, Tensor]:
    """mmrotate's Gaussian of a box: ``σ² = (clamp(side, 1e-7, 1e7)/2)² + floor`` per axis."""
    wh = boxes[..., 2:4].clamp(_GD_MIN_SIDE, _GD_MAX_SIDE)
    var = 0.25 * wh.square() + floor
    return var[..., 0], var[..., 1]


def _log1p_similarity(distance: Tensor) -> Tensor:
    """mmrotate's ``postprocess(fun="log1p", tau=1)`` as a similarity: ``1/(1 + ln(1 + d))``."""
    return 1.0 / (1.0 + torch.log1p(distance))


def kld_similarity(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7, floor: float = 0.0) -> Tensor:
    """KLD similarity (Yang et al., NeurIPS 2021) as mmrotate 1.x's ``GDLoss("kld", fun="log1p",
    tau=1.0, alpha=1.0)`` computes it, ``1 − loss``; ``boxes1`` is its ``pred`` (not symmetric).

    Gaussians ``N(c, R·diag(p, q)·Rᵀ)`` with ``p = (w/2)² + floor``, ``q = (h/2)² + floor``, sides
    clamped to [1e-7, 1e7]; mmrotate's divergence is ``KL(N₂ ‖ N₁)`` (the target's against the
    prediction's Gaussian)::

        KL  = ½·Δᵀ Σ₁⁻¹ Δ + ½·tr(Σ₁⁻¹ Σ₂) + ½·ln(det Σ₁ / det Σ₂) − 1
        sim = 1 / (1 + ln(1 + √max(KL, eps)))

    In the first box's frame ``Σ₁⁻¹ = diag(1/p₁, 1/q₁)``: no inverse of a near-singular matrix
    (mmrotate's NaN on zero-area boxes in float32).
    """
    dx, dy, c, s = _relative(boxes1, boxes2)
    p1, q1 = _gd_variances(boxes1, floor)
    p2, q2 = _gd_variances(boxes2, floor)
    xx, yy, _ = _rotated_second(p2, q2, c, s)
    kl = 0.5 * (dx.square() / p1 + dy.square() / q1 + xx / p1 + yy / q1
                + torch.log(p1) + torch.log(q1) - torch.log(p2) - torch.log(q2)) - 1.0
    return _log1p_similarity(torch.sqrt(kl.clamp(min=eps)))


def gwd_similarity(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7, floor: float = 0.0) -> Tensor:
    """GWD similarity (Yang et al., ICML 2021) as mmrotate 1.x's ``GDLoss("gwd", fun="log1p", tau=1.0,
    alpha=1.0, normalize=True)`` computes it, ``1 − loss``; symmetric.

    Same Gaussians as :func:`kld_similarity`. With ``T = √max(det Σ₁·det Σ₂, eps)``::

        W²  = |Δ|² + tr Σ₁ + tr Σ₂ − 2·√max(tr(Σ₁Σ₂) + 2T, eps)   (squared Wasserstein-2 distance)
        d   = √max(W², eps) / (2·max(√max(√max(T, eps), eps), eps))   (normalised by ≈ (w₁h₁w₂h₂)^¼)
        sim = 1 / (1 + ln(1 + d))

    mmrotate's clamps, with ``eps`` in place of its fixed 1e-7; ``√(det Σ₁·det Σ₂)`` is computed as
    ``√p₁·√q₁·√p₂·√q₂`` (no float32 overflow of the product of four variances), and the Bures term
    ``tr Σ₁ + tr Σ₂ − 2·√(tr(Σ₁Σ₂) + 2T)`` as a ratio of sums of squares (no cancellation).
    """
    dx, dy, c, s = _relative(boxes1, boxes2)
    p1, q1 = _gd_variances(boxes1, floor)
    p2, q2 = _gd_variances(boxes2, floor)
    a1, b1, a2, b2 = torch.sqrt(p1), torch.sqrt(q1), torch.sqrt(p2), torch.sqrt(q2)
    c2, s2 = c.square(), s.square()
    # tr(Σ₁Σ₂) + 2√(det Σ₁ det Σ₂) = c²·A² + s²·B² with A = a₁a₂ + b₁b₂, B = a₁b₂ + b₁a₂ (a = √p,
    # b = √q), so the Bures term X − 2√F (X = tr Σ₁ + tr Σ₂) is (X² − 4F) / (X + 2√F) with
    # X² − 4F = c²(X − 2A)(X + 2A) + s²(X − 2B)(X + 2B), each factor a sum of squares: no
    # cancellation of two large traces (a float32 sliver's W² is otherwise rounding noise)
    x = p1 + q1 + p2 + q2
    aa, bb = a1 * a2 + b1 * b2, a1 * b2 + b1 * a2
    f = c2 * aa.square() + s2 * bb.square()
    num = (c2 * ((a1 - a2).square() + (b1 - b2).square()) * ((a1 + a2).square() + (b1 + b2).square())
           + s2 * ((a1 - b2).square() + (b1 - a2).square()) * ((a1 + b2).square() + (b1 + a2).square()))
    root_f = torch.sqrt(f)
    bures = num / (x + 2.0 * root_f)
    # mmrotate's clamps, √max(·, eps) on T and max(·, eps) on F, as a correction that is exactly 0
    # where they do not bind
    det = a1 * b1 * a2 * b2
    det_root = det.clamp(min=math.sqrt(eps))
    gap = det_root - det  # ≥ 0
    f_clamped = (f + 2.0 * gap).clamp(min=eps)
    shift = torch.where(f + 2.0 * gap >= eps, -2.0 * gap, f - eps)  # f − f_clamped
    w2 = dx.square() + dy.square() + bures + 2.0 * shift / (root_f + torch.sqrt(f_clamped))
    scale = 2.0 * torch.sqrt(torch.sqrt(det_root.clamp(min=eps)).clamp(min=eps)).clamp(min=eps)
    return _log1p_similarity(torch.sqrt(w2.clamp(min=eps)) / scale)


def _tolerance(dtype: torch.dtype) -> float:
    """Relative slack of the polygon's inclusion tests: points on an edge count as inside whatever
    the rounding (identical and touching boxes keep their shared corners)."""
    return 64.0 * torch.finfo(dtype).eps


def polygon_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Exact IoU of broadcastable xywhr boxes → ``(...)``: area of the intersection polygon over the
    union, ``I / (A₁ + A₂ − I + eps)``; widths and heights are clamped at 0.

    In the first box's frame (axis-aligned, centred at 0) the intersection of two rectangles is the
    convex polygon whose vertices are among 24 fixed candidates: the 4 corners of each box inside
    the other, and the 16 crossings of the second box's 4 edges with the first box's 4 side lines.
    Invalid candidates are masked; the valid ones are sorted by angle around their centroid (a
    fixed-size sort of 24), the masked ones moved to the end and replaced by the first vertex (zero
    area), and the shoelace formula gives ``I``. The mask, the centroid and the sort order are
    constants to autograd (the area does not depend on them where they are locally constant), the
    vertex coordinates carry the gradient; every division is guarded, so identical, nested,
    touching, zero-area and 90°-apart boxes give finite values and gradients.
    """
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    dx, dy, c, s = _relative(boxes1, boxes2)
    hw1, hh1 = 0.5 * boxes1[..., 2].clamp(min=0), 0.5 * boxes1[..., 3].clamp(min=0)
    hw2, hh2 = 0.5 * boxes2[..., 2].clamp(min=0), 0.5 * boxes2[..., 3].clamp(min=0)
    hw1, hh1, hw2, hh2, dx, dy, c, s = torch.broadcast_tensors(hw1, hh1, hw2, hh2, dx, dy, c, s)
    with torch.no_grad():
        tol = _tolerance(dtype) * (hw1 + hh1 + hw2 + hh2 + dx.abs() + dy.abs())

    # corners of box 1 (in its own frame) and of box 2 (u, v: its half axes), counter-clockwise
    sx = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=dtype, device=dx.device)
    sy = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=dtype, device=dx.device)
    a = torch.stack((sx * hw1[..., None], sy * hh1[..., None]), dim=-1)  # (..., 4, 2)
    ux, uy, vx, vy = c * hw2, s * hw2, -s * hh2, c * hh2
    bx = dx[..., None] + sx * ux[..., None] + sy * vx[..., None]
    by = dy[..., None] + sx * uy[..., None] + sy * vy[..., None]
    b = torch.stack((bx, by), dim=-1)

    with torch.no_grad():
        t4 = tol[..., None]
        b_in = (bx.abs() <= hw1[..., None] + t4) & (by.abs() <= hh1[..., None] + t4)
        rx, ry = a[..., 0] - dx[..., None], a[..., 1] - dy[..., None]  # box 1's corners in box 2's frame
        qx, qy = c[..., None] * rx + s[..., None] * ry, c[..., None] * ry - s[..., None] * rx
        a_in = (qx.abs() <= hw2[..., None] + t4) & (qy.abs() <= hh2[..., None] + t4)

    # box 2's edges P→Q against the lines x = ±hw1 (|y| ≤ hh1) and y = ±hh1 (|x| ≤ hw1)
    px, py = bx[..., None, :], by[..., None, :]  # (..., 1, 4): the edges' starts
    ex = torch.roll(bx, -1, dims=-1)[..., None, :] - px
    ey = torch.roll(by, -1, dims=-1)[..., None, :] - py
    sgn = torch.tensor([1.0, -1.0], dtype=dtype, device=dx.device)[:, None]  # (2, 1): the two lines
    lx, ly = sgn * hw1[..., None, None], sgn * hh1[..., None, None]  # (..., 2, 1)
    points, masks = [a, b], [a_in, b_in]
    for line, edge_along, edge_across, start_along, start_across, half_across in (
        (lx, ex, ey, px, py, hh1), (ly, ey, ex, py, px, hw1)
    ):
        t5 = tol[..., None, None]
        ok_den = edge_along.detach().abs() > t5
        den = torch.where(ok_den, edge_along, torch.ones_like(edge_along))
        t = (line - start_along) / den
        across = start_across + t * edge_across  # (..., 2, 4)
        along = line.expand_as(across)
        with torch.no_grad():
            valid = ok_den & (t >= 0) & (t <= 1) & (across.abs() <= half_across[..., None, None] + t5)
        xy = (along, across) if line is lx else (across, along)
        points.append(torch.stack(xy, dim=-1).flatten(-3, -2))
        masks.append(valid.flatten(-2))
    pts = torch.cat(points, dim=-2)  # (..., 24, 2)
    valid = torch.cat(masks, dim=-1)  # (..., 24)

    with torch.no_grad():
        fmask = valid.to(dtype)
        centre = (pts * fmask[..., None]).sum(-2) / fmask.sum(-1).clamp(min=1)[..., None]
        rel = pts - centre[..., None, :]
        key = torch.where(valid, torch.atan2(rel[..., 1], rel[..., 0]), torch.full_like(fmask, 10.0))
        order = key.argsort(dim=-1)
        valid_sorted = valid.gather(-1, order)
    rel = pts.gather(-2, order[..., None].expand_as(pts)) - centre[..., None, :]
    rel = torch.where(valid_sorted[..., None], rel, rel[..., :1, :])
    nxt = torch.roll(rel, -1, dims=-2)
    inter = 0.5 * (rel[..., 0] * nxt[..., 1] - rel[..., 1] * nxt[..., 0]).sum(-1)
    area1, area2 = 4.0 * hw1 * hh1, 4.0 * hw2 * hh2
    # 0 ≤ I ≤ min(A₁, A₂): rounding of nearly coincident edges (cos(π/2) ≠ 0 in float) must not
    # give an IoU above 1
    inter = torch.minimum(inter.clamp(min=0), torch.minimum(area1, area2))
    union = area1 + area2 - inter
    return inter / (union + eps)


def rotated_similarity(
    boxes1: Tensor, boxes2: Tensor, kind: str = "probiou", eps: float = 1e-7, floor: float = 0.0
) -> Tensor:
    """Unchecked core: the ``kind`` similarity of broadcastable xywhr boxes ``(..., 5)`` → ``(...)``.

    ``kind``: ``"iou"`` (:func:`polygon_iou`, ``floor`` unused), ``"probiou"`` (:func:`probiou`),
    ``"kld"`` (:func:`kld_similarity`), ``"gwd"`` (:func:`gwd_similarity`). Computed in the inputs'
    promoted dtype; callers upcast half precision first.
    """
    if kind == "iou":
        return polygon_iou(boxes1, boxes2, eps)
    if kind == "probiou":
        return probiou(boxes1, boxes2, eps, floor)
    if kind == "kld":
        return kld_similarity(boxes1, boxes2, eps, floor)
    if kind == "gwd":
        return gwd_similarity(boxes1, boxes2, eps, floor)
    raise ValueError(f"kind must be one of {ROTATED_KINDS}, got {kind!r}")
