"""The hand-derived gradient of the plain IoU kinds (no modifier), from the forward's :class:`Parts`.

The chain rule runs backwards on the axis planes: value → (I, U, enclosing sides, centre offset,
sides) → corners. It follows autograd's conventions of the forward formulas exactly, so that
hand-derived and autograd gradients agree at the kinks: ``clamp(min=0)`` passes the gradient where
its input is >= 0, and :func:`~detloss.kernels.geometry.low` / :func:`~detloss.kernels.geometry.high`
send it to one side on a tie. Once-differentiable: it is the backward of a Function.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .geometry import area, boxes_of, high, planes
from .iou import Parts, aspect, ciou_alpha, four_over_pi2, iou_parts, siou_theta, sum_sq

Need = tuple[bool, bool]  # whether each of the two boxes needs its gradient
Grads = tuple[Tensor | None, Tensor | None]  # the two gradients, None where not needed


def iou_backward(
    b1: Tensor, b2: Tensor, grad: Tensor, kind: str, eps: float, loss: bool, need: Need,
    image_size: tuple[float, float] | None = None,
) -> Grads:
    """Hand-derived gradient of :func:`iou_forward` (plain kinds) w.r.t. ``b1`` and ``b2``: the parts
    recomputed (:func:`iou_parts`), then :func:`parts_backward`."""
    return parts_backward(iou_parts(b1, b2, kind, eps), grad, kind, eps, loss, need, image_size)


def parts_backward(
    p: Parts, grad: Tensor, kind: str, eps: float, loss: bool, need: Need,
    image_size: tuple[float, float] | None = None,
) -> Grads:
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
        c2 = sum_sq(c) + eps
        g_iou = g * torch.exp(sum_sq(d) / c2)
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
        rd = sum_sq(d) + eps
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
        c2 = sum_sq(c) + eps
        g_d = (-2.0 * g / c2) * d
        g_c = (2.0 * g * sum_sq(d) / (c2 * c2)) * c
        if kind == "ciou":
            # − α·v with α constant; v = k·(atan(w₂/(h₂+eps)) − atan(w₁/(h₁+eps)))²
            (w1, h1), (w2, h2) = s1.unbind(0), s2.unbind(0)
            h1e, h2e = h1 + eps, h2 + eps
            diff = aspect(w2, h2e) - aspect(w1, h1e)
            alpha = ciou_alpha(four_over_pi2() * diff * diff, iou, eps)
            g_diff = -g * alpha * (2.0 * four_over_pi2()) * diff
            # d atan(w/(h+eps)) = ((h+eps)·dw − w·dh) / ((h+eps)² + w²)
            r1 = g_diff / (h1e * h1e + w1 * w1)
            g_s1 = planes(-r1 * h1e, r1 * w1)
            if need[1]:
                r2 = g_diff / (h2e * h2e + w2 * w2)
                g_s2 = planes(r2 * h2e, -r2 * w2)
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
    g1 = boxes_of(g_lo1, g_hi1) if need[0] else None
    g2 = boxes_of(g_lo2, g_hi2) if need[1] else None
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
    g_omega = h * siou_theta() * (1.0 - e) ** (siou_theta() - 1.0) * e
    g_diff = g_omega * torch.sign(diff) / m
    g_m = -g_omega * omega / m
    ga_m = g_m.masked_fill(a <= b, 0.0)
    return g_diff + ga_m, (g_m - ga_m) - g_diff
