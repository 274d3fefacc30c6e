"""The IoU family on one geometry: forward formulas, hand-derived backward, the fused Function.

Every kind is an IoU term minus penalty terms built from the shared geometry of
:mod:`detloss.kernels.geometry` (overlap, enclosing box, centre offset, corners); a modifier changes
the IoU term or raises each term to a power, it never repeats the geometry.

Which path runs (eager, the default):

- plain kinds (``IOU_KINDS``, no modifier), up to :data:`KEPT_PARTS_MAX_BOXES` (2^12) boxes:
  :class:`_FusedIoU` keeping the forward's :class:`Parts` for :func:`parts_backward` (no autograd
  graph: the fewest launches);
- plain kinds up to :data:`PLAIN_AUTOGRAD_MAX_BOXES` (2^21) boxes: autograd of :func:`iou_forward`
  itself (its backward reuses the forward's temporaries: fastest at these sizes);
- plain kinds above it: :class:`_FusedIoU` recomputing the parts in the backward
  (:func:`iou_backward`), in cache-sized blocks, keeping only the two box tensors (4-7x less memory,
  and faster);
- modifiers (``alpha``, ``inner_ratio``, ``focaler``): autograd of :func:`iou_forward` at every size.
  A hand-derived backward does not pay there: the modifiers are used on the matched boxes of a
  detector (10³-10⁵ boxes), where autograd is already the faster eager path.

The hand-derived paths are once-differentiable (no double backward), like every fused Function.

With :func:`detloss.set_compile` the Function's forward and backward (plain kinds) and the autograd
formula (modifiers) run compiled by ``torch.compile``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import runtime
from .geometry import Corners, Overlap, area, centre_offset, corners, enclosing, high, overlap, scaled

IOU_KINDS: tuple[str, ...] = ("iou", "giou", "diou", "ciou", "eiou", "siou", "wiou", "mpdiou")
FOUR_OVER_PI2 = 4.0 / math.pi**2
SIOU_THETA = 4.0  # shape-cost exponent of the SIoU paper


class Modifiers(NamedTuple):
    """The keyword modifiers of the IoU family (validated by :func:`detloss.iou.check_modifiers`).

    ``alpha``: Alpha-IoU power; ``inner_ratio``: Inner-IoU's auxiliary box scale; ``focaler``:
    Focaler-IoU's (d, u); ``image_size``: MPDIoU's (w, h) (the kind's parameter, not a modifier).
    """

    alpha: float = 1.0
    inner_ratio: float | None = None
    focaler: tuple[float, float] | None = None
    image_size: tuple[float, float] | None = None

    def plain(self) -> bool:
        """No modifier: the fused Function with the hand-derived backward applies."""
        return self.alpha == 1.0 and self.inner_ratio is None and self.focaler is None


PLAIN = Modifiers()


def iou_forward(
    b1: Tensor, b2: Tensor, kind: str, eps: float, loss: bool, reduce: bool, mods: Modifiers = PLAIN
) -> Tensor:
    """The ``kind`` IoU of broadcastable xyxy boxes ``(..., 4)`` → ``(...)``.

    ``loss``: return ``1 − value``; ``reduce``: return the sum over all boxes (a scalar), computed in
    the same pass when compiled.

    Formulas (box 1 = prediction, box 2 = target, C = enclosing box, widths clamped at 0):

    - iou  = I / (U + eps)
    - giou = iou − (|C| − U) / (|C| + eps)
    - diou = iou − ρ² / (c² + eps), ρ the centre distance, c the diagonal of C
    - ciou = diou − α_v·v, v = 4/π²·(atan(w₂/(h₂ + eps)) − atan(w₁/(h₁ + eps)))²,
      α_v = v / ((1 − iou) + v + eps) held constant in the gradient (CIoU paper; torchvision and
      YOLOv5 do the same, mmdet additionally gates α_v by iou > 0.5 — not done here). (1 − iou)
      comes first: 1 + eps rounds to 1 in float32 for eps < 6e-8, which gave 0/0 on identical boxes
    - eiou = diou − (w₁ − w₂)² / (C_w² + eps) − (h₁ − h₂)² / (C_h² + eps)
    - siou = iou − (Δ + Ω) / 2, Δ = Σ_{x,y} (1 − exp(−(2 − Λ)·(d_t / (C_t + eps))²)) with the angle
      cost Λ = sin(2α) = 2·|dx·dy| / (dx² + dy² + eps) (the paper's 1 − 2·sin²(arcsin(sin α) − π/4),
      written without arcsin so its gradient stays finite), Ω = Σ_{w,h} (1 − exp(−ω_t))^4,
      ω_w = |w₁ − w₂| / (max(w₁, w₂) + eps).
    - wiou (Wise-IoU v1) = 1 − R·(1 − iou), R = exp(ρ² / (C_w² + C_h² + eps)*), ``*`` detached
    - mpdiou = iou − d₁² / (w² + h²) − d₂² / (w² + h²), d₁, d₂ the distances of the top-left and of
      the bottom-right corners, (w, h) = ``mods.image_size``

    Modifiers (at most one; none with wiou): ``alpha`` = a ≠ 1: iou^a − Σ term^a over the kind's
    penalty terms (ciou: (ρ²/c²)^a + (α_v·v)^a; eiou: three terms; siou: ((Δ + Ω)/2)^a; mpdiou: two),
    with x^a := 0 for x <= float tiny (finite gradients at 0 for every a > 0); ``inner_ratio`` = r:
    the iou term on the boxes with the same centres and sides scaled by r, every penalty (and α_v)
    on the original boxes; ``focaler`` = (d, u): the iou term clamp((iou − d)/(u − d), 0, 1).
    """
    return _output(_value(kind, iou_parts(b1, b2, kind, eps), eps, mods), loss, reduce)


def _output(val: Tensor, loss: bool, reduce: bool) -> Tensor:
    """``1 − val`` if ``loss``, summed over the boxes if ``reduce``."""
    val = 1.0 - val if loss else val
    return val.sum() if reduce else val


class Parts(NamedTuple):
    """The geometry that a kind's value and its hand-derived gradient share: both boxes' axis planes,
    their overlap, and (for the kinds that use them) the enclosing sides and the centre offset, each
    ``(2, ...)``."""

    k1: Corners
    k2: Corners
    ov: Overlap
    enclose: Tensor | None
    offset: Tensor | None


_ENCLOSING_KINDS = frozenset({"giou", "diou", "ciou", "eiou", "siou", "wiou"})
_OFFSET_KINDS = frozenset({"diou", "ciou", "eiou", "siou", "wiou"})


def iou_parts(b1: Tensor, b2: Tensor, kind: str, eps: float) -> Parts:
    """:class:`Parts` of broadcastable xyxy boxes ``(..., 4)``."""
    ndim = max(b1.dim(), b2.dim())
    k1, k2 = corners(b1, ndim), corners(b2, ndim)
    ov = overlap(k1, k2, eps)
    enclose = enclosing(k1, k2, ov) if kind in _ENCLOSING_KINDS else None
    offset = centre_offset(k1, k2) if kind in _OFFSET_KINDS else None
    return Parts(k1, k2, ov, enclose, offset)


def _value(kind: str, p: Parts, eps: float, mods: Modifiers) -> Tensor:
    """The kind's value ``(...)`` from its parts (formulas: :func:`iou_forward`)."""
    if kind == "wiou":
        r = torch.exp(_sum_sq(p.offset) / (_sum_sq(p.enclose) + eps).detach())
        return 1.0 - r * (1.0 - p.ov.iou)
    val = _iou_term(p.ov.iou, p.k1, p.k2, eps, mods)
    terms = _penalties(kind, p, eps, mods)
    if terms:
        total = _power(terms[0], mods.alpha)
        for t in terms[1:]:
            total = total + _power(t, mods.alpha)
        val = val - total
    return val


def _sum_sq(t: Tensor) -> Tensor:
    """Squared length over the axis planes: ``(2, ...)`` → x² + y² ``(...)``."""
    return (t * t).sum(0)


def _power(t: Tensor, a: float) -> Tensor:
    """t^a, and 0 (with gradient 0) where t <= float tiny: t^(a−1) is infinite at 0 for a < 1, and a
    rounding-negative penalty would give NaN."""
    if a == 1.0:
        return t
    pos = t > torch.finfo(t.dtype).tiny
    return torch.where(pos, torch.where(pos, t, 1.0) ** a, 0.0)


def _iou_term(iou: Tensor, k1: Corners, k2: Corners, eps: float, mods: Modifiers) -> Tensor:
    """The IoU term of the value: plain, Inner-IoU, Focaler-IoU or Alpha-IoU."""
    if mods.inner_ratio is not None:
        return overlap(scaled(k1, mods.inner_ratio), scaled(k2, mods.inner_ratio), eps).iou
    if mods.focaler is not None:
        d, u = mods.focaler
        return ((iou - d) / (u - d)).clamp(0.0, 1.0)
    return _power(iou, mods.alpha)


def _penalties(kind: str, p: Parts, eps: float, mods: Modifiers) -> list[Tensor]:
    """The kind's additive penalty terms, each ``(...)``, before any Alpha-IoU power."""
    if kind == "iou":
        return []
    if kind == "mpdiou":
        w, h = mods.image_size
        norm = float(w) ** 2 + float(h) ** 2
        return [_sum_sq(p.k1[0] - p.k2[0]) / norm, _sum_sq(p.k1[1] - p.k2[1]) / norm]
    c, ov = p.enclose, p.ov
    if kind == "giou":
        enclose = area(c)
        return [(enclose - ov.union) / (enclose + eps)]
    d = p.offset
    rho2 = _sum_sq(d)
    if kind == "siou":
        dx, dy = d.unbind(0)
        gamma = 2.0 - 2.0 * (dx * dy).abs() / (rho2 + eps)
        ex, ey = torch.exp(-gamma * (d / (c + eps)) ** 2).unbind(0)
        s1, s2 = ov.sides1, ov.sides2
        omega = (s1 - s2).abs() / (high(s1, s2) + eps)
        sw, sh = ((1.0 - torch.exp(-omega)) ** SIOU_THETA).unbind(0)
        return [0.5 * (((2.0 - ex) - ey) + (sw + sh))]
    terms = [rho2 / (_sum_sq(c) + eps)]
    if kind == "ciou":
        (w1, h1), (w2, h2) = ov.sides1.unbind(0), ov.sides2.unbind(0)
        v = FOUR_OVER_PI2 * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
        alpha_v = (v / ((1.0 - ov.iou) + v + eps)).detach()  # a constant in the gradient
        terms.append(alpha_v * v)
    elif kind == "eiou":
        terms += ((ov.sides1 - ov.sides2) ** 2 / (c * c + eps)).unbind(0)
    return terms


# ------------------------------------------------------------------------------------------ backward


def iou_backward(
    b1: Tensor,
    b2: Tensor,
    grad: Tensor,
    kind: str,
    eps: float,
    loss: bool,
    need: tuple[bool, bool],
    image_size: tuple[float, float] | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Hand-derived gradient of :func:`iou_forward` (plain kinds) w.r.t. ``b1`` and ``b2``: the parts
    recomputed (:func:`iou_parts`), then :func:`parts_backward`."""
    return parts_backward(iou_parts(b1, b2, kind, eps), grad, kind, eps, loss, need, image_size)


def parts_backward(
    p: Parts,
    grad: Tensor,
    kind: str,
    eps: float,
    loss: bool,
    need: tuple[bool, bool],
    image_size: tuple[float, float] | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Hand-derived gradient of the plain kinds' value w.r.t. both boxes, from its :class:`Parts`.

    ``grad`` is the adjoint of the output: ``(...)``, or a scalar for the reduced forward (it
    broadcasts); ``image_size`` is MPDIoU's. Returns ``(..., 4)`` gradients of the broadcast shape
    (``None`` where ``need`` is false). The chain rule runs backwards on the axis planes: value →
    (I, U, enclosing sides, centre offset, sides) → corners; ``g_*`` is d(value)/d(*) times ``grad``,
    and every kink passes its gradient as autograd does through the forward formula.
    """
    g = -grad if loss else grad
    (lo1, hi1), (lo2, hi2) = p.k1, p.k2
    ov, c, d = p.ov, p.enclose, p.offset
    s1, s2, si, iou = ov.sides1, ov.sides2, ov.inter_sides, ov.iou
    den = ov.union + eps if eps else ov.union
    g_iou = g  # adjoint of the IoU term
    g_c = g_d = g_s1 = g_s2 = None  # adjoints of the enclosing sides, offset, and both boxes' sides
    if kind == "wiou":
        # 1 − R·(1 − iou), R = exp(ρ²/c²*):  d/d iou = R,  d/dρ² = −(1 − iou)·R/c²,  c² detached
        c2 = _sum_sq(c) + eps
        g_iou = g * torch.exp(_sum_sq(d) / c2)
        g_d = (-2.0 * g_iou * (1.0 - iou) / c2) * d
    g_union = -g_iou * iou / den  # d iou / dU = −I / (U + eps)²
    g_inter = g_iou / den
    if kind == "giou":
        # − (E − U)/(E + eps):  d/dE = −(U + eps)/(E + eps)²,  d/dU = 1/(E + eps);  dE/dc = (c_h, c_w)
        ed = area(c) + eps
        g_union = g_union + g / ed
        g_c = (-g * den / (ed * ed)) * c.flip(0)
    elif kind == "siou":
        # value −= ½·(Σ_t (1 − exp(−γ·q_t)) + Ω), q_t = (d_t / (c_t + eps))², γ = 2 − Λ,
        # Λ = 2|dx·dy| / (ρ² + eps)
        rd = _sum_sq(d) + eps
        dx, dy = d.unbind(0)
        dxy = dx * dy
        angle = 2.0 * dxy.abs() / rd
        gamma = 2.0 - angle
        ce = c + eps
        q = (d / ce) ** 2
        e = torch.exp(-gamma * q)
        h = -0.5 * g
        g_angle = -h * (q * e).sum(0)  # d/dγ = −½·Σ q·e, and dγ/dΛ = −1
        g_q = h * gamma * e
        # dΛ/d(dx) = 2·sign(dx·dy)·dy / rd − Λ·2dx / rd
        g_d = (2.0 * g_angle / rd) * (torch.sign(dxy) * d.flip(0) - angle * d) + g_q * 2.0 * d / (ce * ce)
        g_c = -2.0 * g_q * q / ce
        g_s1, g_s2 = _siou_shape_grads(s1, s2, h, eps)
    elif kind in ("diou", "ciou", "eiou"):  # − ρ² / (c² + eps) − ...
        c2 = _sum_sq(c) + eps
        g_d = (-2.0 * g / c2) * d
        g_c = (2.0 * g * _sum_sq(d) / (c2 * c2)) * c
        if kind == "ciou":
            # − α·v with α constant; v = k·(atan(w₂/(h₂+eps)) − atan(w₁/(h₁+eps)))²
            (w1, h1), (w2, h2) = s1.unbind(0), s2.unbind(0)
            h1e, h2e = h1 + eps, h2 + eps
            diff = torch.atan(w2 / h2e) - torch.atan(w1 / h1e)
            v = FOUR_OVER_PI2 * diff * diff
            alpha = v / ((1.0 - iou) + v + eps)
            g_diff = -g * alpha * (2.0 * FOUR_OVER_PI2) * diff
            # d atan(w/(h+eps)) = ((h+eps)·dw − w·dh) / ((h+eps)² + w²)
            r1 = g_diff / (h1e * h1e + w1 * w1)
            g_s1 = torch.stack((-r1 * h1e, r1 * w1))
            if need[1]:
                r2 = g_diff / (h2e * h2e + w2 * w2)
                g_s2 = torch.stack((r2 * h2e, -r2 * w2))
        elif kind == "eiou":
            ce2 = c * c + eps
            dwh = s1 - s2
            g_s1 = -2.0 * g * dwh / ce2
            g_s2 = -g_s1
            g_c = g_c + 2.0 * g * dwh * dwh * c / (ce2 * ce2)

    # U = w₁h₁ + w₂h₂ − I;  the intersection's sides pass through clamp0 (where min(hi) − max(lo) >= 0)
    g_inter = g_inter - g_union
    g_s1 = _acc(g_s1, g_union * s1.flip(0))
    g_si = (g_inter * si.flip(0)).masked_fill(torch.minimum(hi1, hi2) - torch.maximum(lo1, lo2) < 0, 0.0)
    # low(hi₁, hi₂) gives a tie to hi₁, high(lo₁, lo₂) to lo₂
    g_hi1 = g_si.masked_fill(hi1 > hi2, 0.0)
    g_lo1 = (-g_si).masked_fill(lo1 <= lo2, 0.0)
    if need[1]:
        g_s2 = _acc(g_s2, g_union * s2.flip(0))
        g_hi2, g_lo2 = g_si - g_hi1, -g_si - g_lo1
    if g_c is not None:
        # enclosing sides = high(lo₁ + s₁, lo₂ + s₂) − low(hi₁ − s₁, hi₂ − s₂) (geometry.hull)
        g_p1 = g_c.masked_fill(lo1 + s1 <= lo2 + s2, 0.0)
        g_q1 = (-g_c).masked_fill(hi1 - s1 > hi2 - s2, 0.0)
        g_lo1, g_hi1, g_s1 = g_lo1 + g_p1, g_hi1 + g_q1, g_s1 + (g_p1 - g_q1)
        if need[1]:
            g_p2, g_q2 = g_c - g_p1, -g_c - g_q1
            g_lo2, g_hi2, g_s2 = g_lo2 + g_p2, g_hi2 + g_q2, g_s2 + (g_p2 - g_q2)
    # sides = clamp0(hi − lo)
    g_e1 = g_s1.masked_fill(hi1 - lo1 < 0, 0.0)
    g_lo1, g_hi1 = g_lo1 - g_e1, g_hi1 + g_e1
    if need[1]:
        g_e2 = g_s2.masked_fill(hi2 - lo2 < 0, 0.0)
        g_lo2, g_hi2 = g_lo2 - g_e2, g_hi2 + g_e2
    if d is not None:  # offset = ½((lo₂ + hi₂) − (lo₁ + hi₁))
        hd = 0.5 * g_d
        g_lo1, g_hi1 = g_lo1 - hd, g_hi1 - hd
        if need[1]:
            g_lo2, g_hi2 = g_lo2 + hd, g_hi2 + hd
    if kind == "mpdiou":
        # − (|lo₁ − lo₂|² + |hi₁ − hi₂|²) / (w² + h²)
        iw, ih = image_size
        k = -2.0 * g / (float(iw) ** 2 + float(ih) ** 2)
        t_lo, t_hi = k * (lo1 - lo2), k * (hi1 - hi2)
        g_lo1, g_hi1 = g_lo1 + t_lo, g_hi1 + t_hi
        if need[1]:
            g_lo2, g_hi2 = g_lo2 - t_lo, g_hi2 - t_hi
    g1 = torch.cat((g_lo1, g_hi1)).movedim(0, -1) if need[0] else None  # (x1, y1, x2, y2) last
    g2 = torch.cat((g_lo2, g_hi2)).movedim(0, -1) if need[1] else None
    return g1, g2


def _acc(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a + b


def _siou_shape_grads(a: Tensor, b: Tensor, h: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Adjoints of sides ``a``, ``b`` for ``h·Σ(1 − exp(−ω))^4``, ω = |a − b| / (high(a, b) + eps)
    (high gives a tie to ``b``)."""
    m = high(a, b) + eps
    diff = a - b
    omega = diff.abs() / m
    e = torch.exp(-omega)
    g_omega = h * SIOU_THETA * (1.0 - e) ** (SIOU_THETA - 1.0) * e
    g_diff = g_omega * torch.sign(diff) / m
    g_m = -g_omega * omega / m
    ga_m = g_m.masked_fill(a <= b, 0.0)
    return g_diff + ga_m, (g_m - ga_m) - g_diff


def _iou_forward_blocked(
    b1: Tensor, b2: Tensor, kind: str, eps: float, loss: bool, reduce: bool, mods: Modifiers
) -> Tensor:
    """:func:`iou_forward` over blocks of rows (inputs of one shape; broadcast pairs run whole)."""
    block = runtime.EAGER_BLOCK
    if b1.shape != b2.shape or b1.numel() <= 4 * block:
        return iou_forward(b1, b2, kind, eps, loss, reduce, mods)
    f1, f2 = b1.reshape(-1, 4), b2.reshape(-1, 4)
    parts = runtime.blocks(f1.shape[0], block)
    if reduce:
        return sum(iou_forward(f1[s], f2[s], kind, eps, loss, True, mods) for s in parts)
    out = f1.new_empty(f1.shape[0])
    for s in parts:
        out[s] = iou_forward(f1[s], f2[s], kind, eps, loss, False, mods)
    return out.reshape(b1.shape[:-1])


def _iou_backward_blocked(
    b1: Tensor,
    b2: Tensor,
    grad: Tensor,
    kind: str,
    eps: float,
    loss: bool,
    need: tuple[bool, bool],
    image_size: tuple[float, float] | None,
) -> tuple[Tensor | None, Tensor | None]:
    """:func:`iou_backward` over blocks of rows (inputs of one shape; broadcast pairs run whole)."""
    block = runtime.EAGER_BLOCK
    if b1.shape != b2.shape or b1.numel() <= 4 * block:
        return iou_backward(b1, b2, grad, kind, eps, loss, need, image_size)
    f1, f2 = b1.reshape(-1, 4), b2.reshape(-1, 4)
    fg = grad if grad.dim() == 0 else grad.reshape(-1)
    g1 = f1.new_empty(f1.shape) if need[0] else None
    g2 = f2.new_empty(f2.shape) if need[1] else None
    for s in runtime.blocks(f1.shape[0], block):
        p1, p2 = iou_backward(f1[s], f2[s], fg if fg.dim() == 0 else fg[s], kind, eps, loss, need, image_size)
        if g1 is not None:
            g1[s] = p1
        if g2 is not None:
            g2[s] = p2
    return (None if g1 is None else g1.view(b1.shape)), (None if g2 is None else g2.view(b2.shape))


class _FusedIoU(torch.autograd.Function):
    """The plain kinds with the hand-derived backward. ``keep``: save the forward's :class:`Parts`
    (small inputs: no recomputation, the fewest launches); else save only the two box tensors and
    recompute the parts in the backward, in blocks (large inputs: 4-7x less memory)."""

    @staticmethod
    def forward(
        ctx, b1: Tensor, b2: Tensor, kind: str, eps: float, loss: bool, reduce: bool, mods: Modifiers,
        keep: bool,
    ) -> Tensor:
        ctx.args = (kind, eps, loss, mods.image_size)
        ctx.shapes = (b1.shape, b2.shape)
        ctx.keep = keep
        if not keep:
            ctx.save_for_backward(b1, b2)
            args = (b1.detach(), b2.detach(), kind, eps, loss, reduce, mods)
            return runtime.run(f"iou_forward_{kind}", iou_forward, _iou_forward_blocked, *args)
        p = iou_parts(b1, b2, kind, eps)  # no graph: autograd is off in a Function's forward
        ctx.save_for_backward(*p.k1, *p.k2, *p.ov, p.enclose, p.offset)
        return _output(_value(kind, p, eps, mods), loss, reduce)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        kind, eps, loss, image_size = ctx.args
        need = tuple(ctx.needs_input_grad[:2])
        saved = ctx.saved_tensors
        if ctx.keep:
            p = Parts(saved[0:2], saved[2:4], Overlap(*saved[4:9]), saved[9], saved[10])
            g1, g2 = parts_backward(p, grad, kind, eps, loss, need, image_size)
        else:
            args = (*saved, grad, kind, eps, loss, need, image_size)
            g1, g2 = runtime.run(f"iou_backward_{kind}", iou_backward, _iou_backward_blocked, *args)
        shape1, shape2 = ctx.shapes
        g1 = None if g1 is None else g1.sum_to_size(shape1)  # broadcast inputs: sum the copies
        g2 = None if g2 is None else g2.sum_to_size(shape2)
        return g1, g2, None, None, None, None, None, None


# Eager, which path is fastest depends on the size (measured fwd+bwd, 2 threads): up to
# KEPT_PARTS_MAX_BOXES the Function keeping its parts (no autograd graph of ~40 nodes: 1.3x faster than
# autograd at 1e3 boxes); up to PLAIN_AUTOGRAD_MAX_BOXES autograd of iou_forward itself (its backward
# reuses the forward's temporaries and relu's backward is one op: giou at 1e6 boxes, 1 thread, 215 ms
# against the recomputing Function's 364 ms and the naive formula's 260 ms); above it the recomputing
# Function, which keeps only the boxes (4-7x less memory) where the graph's temporaries pass 200 MB.
KEPT_PARTS_MAX_BOXES = 1 << 12
PLAIN_AUTOGRAD_MAX_BOXES = 1 << 21


def fused_iou(
    b1: Tensor,
    b2: Tensor,
    kind: str = "iou",
    eps: float = 1e-7,
    loss: bool = False,
    reduce: bool = False,
    mods: Modifiers = PLAIN,
) -> Tensor:
    """Unchecked IoU family of broadcastable xyxy boxes ``(..., 4)`` → ``(...)`` (see the module doc
    for which path runs).

    Values are :func:`iou_forward`'s; for plain kinds the gradient is :func:`parts_backward`'s.
    ``loss=True`` returns ``1 − value`` and ``reduce=True`` its sum over the boxes, each saving a pass
    over memory in ``iou_loss``.
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of {IOU_KINDS}, got {kind!r}")
    if kind == "mpdiou" and mods.image_size is None:
        raise ValueError("kind='mpdiou' needs image_size=(width, height) in the boxes' units")
    if not mods.plain():
        args = (b1, b2, kind, eps, loss, reduce, mods)
        return runtime.run(f"iou_autograd_{kind}", iou_forward, iou_forward, *args)
    if not runtime._compile_enabled:
        n = _num_boxes(b1, b2)
        if n <= KEPT_PARTS_MAX_BOXES:
            return _FusedIoU.apply(b1, b2, kind, eps, loss, reduce, mods, True)
        if n <= PLAIN_AUTOGRAD_MAX_BOXES:
            return iou_forward(b1, b2, kind, eps, loss, reduce, mods)
    return _FusedIoU.apply(b1, b2, kind, eps, loss, reduce, mods, False)


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` with a fast path for equal shapes (it costs ~0.1 ms per call: a
    tenth of a whole IoU loss at 1e3 boxes)."""
    return tuple(a) if a == b else tuple(torch.broadcast_shapes(a, b))


def _num_boxes(b1: Tensor, b2: Tensor) -> int:
    return math.prod(broadcast_shape(b1.shape[:-1], b2.shape[:-1]))
