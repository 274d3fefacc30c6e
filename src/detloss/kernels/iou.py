"""The IoU family on one geometry: forward formulas, hand-derived backward, the fused Function.

Every kind is an IoU term minus penalty terms built from the shared geometry of
:mod:`detloss.kernels.geometry` (overlap, enclosing box, centre offset, corners); a modifier changes
the IoU term or raises each term to a power, it never repeats the geometry.

Which path runs (eager, the default):

- plain kinds (``IOU_KINDS``, no modifier), up to :data:`PLAIN_AUTOGRAD_MAX_BOXES` (2^21) boxes:
  autograd of :func:`iou_forward` itself (its backward reuses the forward's temporaries: fastest);
- plain kinds above it: :class:`_FusedIoU`, the hand-derived :func:`iou_backward`, in cache-sized
  blocks, keeping only the two box tensors (4-7x less memory, and faster);
- modifiers (``alpha``, ``inner_ratio``, ``focaler``): autograd of :func:`iou_forward` at every size.
  A hand-derived backward does not pay there: the modifiers are used on the matched boxes of a
  detector (10³-10⁵ boxes), where autograd is already the faster eager path.

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
from .geometry import (
    Corners,
    Overlap,
    axis_grads,
    centre_offset,
    corners,
    enclosing,
    high,
    hull,
    low,
    order,
    overlap,
    pair_grads,
    scaled,
)

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
    ndim = max(b1.dim(), b2.dim())
    k1, k2 = corners(b1, ndim), corners(b2, ndim)
    ov = overlap(k1, k2, eps)
    if kind == "wiou":
        c, d = enclosing(k1, k2, ov), centre_offset(k1, k2)
        r = torch.exp(_sum_sq(d) / (_sum_sq(c) + eps).detach())
        val = 1.0 - r * (1.0 - ov.iou)
    else:
        val = _iou_term(ov.iou, k1, k2, eps, mods)
        terms = _penalties(kind, ov, k1, k2, eps, mods)
        if terms:
            total = _power(terms[0], mods.alpha)
            for t in terms[1:]:
                total = total + _power(t, mods.alpha)
            val = val - total
    val = 1.0 - val if loss else val
    return val.sum() if reduce else val


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


def _penalties(kind: str, ov: Overlap, k1: Corners, k2: Corners, eps: float, mods: Modifiers) -> list[Tensor]:
    """The kind's additive penalty terms, each ``(...)``, before any Alpha-IoU power."""
    if kind == "iou":
        return []
    if kind == "mpdiou":
        w, h = mods.image_size
        norm = float(w) ** 2 + float(h) ** 2
        return [_sum_sq(k1[0] - k2[0]) / norm, _sum_sq(k1[1] - k2[1]) / norm]
    c = enclosing(k1, k2, ov)
    if kind == "giou":
        cw, ch = c.unbind(0)
        enclose = cw * ch
        return [(enclose - ov.union) / (enclose + eps)]
    d = centre_offset(k1, k2)
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
    """Hand-derived gradient of :func:`iou_forward` (plain kinds) w.r.t. ``b1`` and ``b2`` (broadcast
    shape ``(..., 4)``); ``image_size`` is MPDIoU's.

    ``grad`` is the adjoint of the output: ``(...)``, or a scalar for the reduced forward (it
    broadcasts). Only the gradients flagged in ``need`` are computed (``None`` otherwise).

    Recomputes the forward's intermediates, then walks the chain rule backwards: value → (I, U, C_w,
    C_h, dx, dy, widths) → corners. ``g_*`` is the adjoint d(value)/d(*) times ``grad``.
    """
    g = -grad if loss else grad
    x1, y1, x2, y2 = b1.unbind(-1)
    u1, v1, u2, v2 = b2.unbind(-1)
    ew1, eh1, ew2, eh2 = x2 - x1, y2 - y1, u2 - u1, v2 - v1  # unclamped extents
    w1, h1, w2, h2 = ew1.clamp(min=0), eh1.clamp(min=0), ew2.clamp(min=0), eh2.clamp(min=0)
    eiw = low(x2, u2) - high(x1, u1)
    eih = low(y2, v2) - high(y1, v1)
    iw, ih = eiw.clamp(min=0), eih.clamp(min=0)
    inter = iw * ih
    den = w1 * h1 + w2 * h2 - inter + eps  # union + eps
    iou = inter / den

    g_iou = g  # adjoint of the IoU term
    g_cw = g_ch = g_dx = g_dy = None
    g_w1 = g_h1 = g_w2 = g_h2 = None
    if kind not in ("iou", "mpdiou"):
        cw, ch = hull(x1, x2, w1, u1, u2, w2), hull(y1, y2, h1, v1, v2, h2)
    if kind == "wiou":
        # 1 − R·(1 − iou), R = exp(ρ²/c²*):  d/d iou = R,  d/dρ² = −(1 − iou)·R/c²,  c² detached
        dx = 0.5 * ((u1 + u2) - (x1 + x2))
        dy = 0.5 * ((v1 + v2) - (y1 + y2))
        c2 = cw * cw + ch * ch + eps
        r = torch.exp((dx * dx + dy * dy) / c2)
        g_iou = g * r
        g_rho = -2.0 * g_iou * (1.0 - iou) / c2  # times dx → d/d(dx)
        g_dx, g_dy = g_rho * dx, g_rho * dy
    g_union = -g_iou * iou / den  # d iou / dU = −I / (U + eps)²
    g_inter = g_iou / den
    if kind == "giou":
        # − (E − U)/(E + eps):  d/dE = −(U + eps)/(E + eps)²,  d/dU = 1/(E + eps)
        ed = cw * ch + eps
        g_e = -g * den / (ed * ed)
        g_union = g_union + g / ed
        g_cw, g_ch = g_e * ch, g_e * cw
    elif kind == "siou":
        dx = 0.5 * ((u1 + u2) - (x1 + x2))
        dy = 0.5 * ((v1 + v2) - (y1 + y2))
        rd = dx * dx + dy * dy + eps
        dxy = dx * dy
        angle = 2.0 * dxy.abs() / rd
        gamma = 2.0 - angle
        cwe, che = cw + eps, ch + eps
        px, py = (dx / cwe) ** 2, (dy / che) ** 2
        ex, ey = torch.exp(-gamma * px), torch.exp(-gamma * py)
        # value −= ½·(2 − ex − ey):  d/dγ = −½(px·ex + py·ey),  d/dpx = −½γ·ex
        h = -0.5 * g
        g_angle = -h * (px * ex + py * ey)  # γ = 2 − Λ
        g_px, g_py = h * gamma * ex, h * gamma * ey
        # Λ = 2|dx·dy| / rd:  d/d(dx) = 2·sign(dx·dy)·dy / rd − Λ·2dx / rd
        ga = g_angle / rd
        sgn = torch.sign(dxy)
        g_dx = 2.0 * ga * (sgn * dy - angle * dx) + g_px * 2.0 * dx / (cwe * cwe)
        g_dy = 2.0 * ga * (sgn * dx - angle * dy) + g_py * 2.0 * dy / (che * che)
        g_cw, g_ch = -2.0 * g_px * px / cwe, -2.0 * g_py * py / che
        # Ω: (1 − exp(−ω))^4 with ω = |w₁ − w₂| / (max(w₁, w₂) + eps)
        g_w1, g_w2 = _siou_shape_grads(w1, w2, h, eps)
        g_h1, g_h2 = _siou_shape_grads(h1, h2, h, eps)
    elif kind in ("diou", "ciou", "eiou"):  # − ρ² / (c² + eps) − ...
        dx = 0.5 * ((u1 + u2) - (x1 + x2))
        dy = 0.5 * ((v1 + v2) - (y1 + y2))
        c2 = cw * cw + ch * ch + eps
        g_rho = -2.0 * g / c2  # times dx → d/d(dx)
        g_c = 2.0 * g * (dx * dx + dy * dy) / (c2 * c2)  # times cw → d/d(cw)
        g_dx, g_dy = g_rho * dx, g_rho * dy
        g_cw, g_ch = g_c * cw, g_c * ch
        if kind == "ciou":
            # − α·v with α constant; v = k·(atan(w₂/(h₂+eps)) − atan(w₁/(h₁+eps)))²
            h1e, h2e = h1 + eps, h2 + eps
            diff = torch.atan(w2 / h2e) - torch.atan(w1 / h1e)
            v = FOUR_OVER_PI2 * diff * diff
            alpha = v / ((1.0 - iou) + v + eps)
            g_diff = -g * alpha * (2.0 * FOUR_OVER_PI2) * diff
            # d atan(w/(h+eps)) = ((h+eps)·dw − w·dh) / ((h+eps)² + w²)
            r1, r2 = g_diff / (h1e * h1e + w1 * w1), g_diff / (h2e * h2e + w2 * w2)
            g_w1, g_h1 = -r1 * h1e, r1 * w1
            g_w2, g_h2 = r2 * h2e, -r2 * w2
        elif kind == "eiou":
            cwe2, che2 = cw * cw + eps, ch * ch + eps
            dw, dh = w1 - w2, h1 - h2
            g_dw, g_dh = -2.0 * g * dw / cwe2, -2.0 * g * dh / che2
            g_w1, g_w2, g_h1, g_h2 = g_dw, -g_dw, g_dh, -g_dh
            g_cw = g_cw + 2.0 * g * dw * dw * cw / (cwe2 * cwe2)
            g_ch = g_ch + 2.0 * g * dh * dh * ch / (che2 * che2)

    # U = w₁h₁ + w₂h₂ − I
    g_inter = g_inter - g_union
    g_w1 = _acc(g_w1, g_union * h1)
    g_h1 = _acc(g_h1, g_union * w1)
    g_w2 = _acc(g_w2, g_union * h2)
    g_h2 = _acc(g_h2, g_union * w2)
    # clamp(min=0) lets the gradient through where its input is >= 0 (as autograd does)
    g_iw = torch.where(eiw >= 0, g_inter * ih, 0.0)
    g_ih = torch.where(eih >= 0, g_inter * iw, 0.0)
    g_w1 = torch.where(ew1 >= 0, g_w1, 0.0)
    g_h1 = torch.where(eh1 >= 0, g_h1, 0.0)
    g_w2 = torch.where(ew2 >= 0, g_w2, 0.0)
    g_h2 = torch.where(eh2 >= 0, g_h2, 0.0)

    gx1, gu1, gx2, gu2 = axis_grads(x1, x2, u1, u2, g_iw, g_cw, g_w1, g_w2, g_dx)
    gy1, gv1, gy2, gv2 = axis_grads(y1, y2, v1, v2, g_ih, g_ch, g_h1, g_h2, g_dy)
    if kind == "mpdiou":
        # − (|p₁ − q₁|² + |p₂ − q₂|²) / (w² + h²) over the top-left (p₁, q₁) and bottom-right corners
        iw, ih = image_size
        k = -2.0 * g / (float(iw) ** 2 + float(ih) ** 2)
        d1x, d1y, d2x, d2y = k * (x1 - u1), k * (y1 - v1), k * (x2 - u2), k * (y2 - v2)
        gx1, gy1, gx2, gy2 = gx1 + d1x, gy1 + d1y, gx2 + d2x, gy2 + d2y
        gu1, gv1, gu2, gv2 = gu1 - d1x, gv1 - d1y, gu2 - d2x, gv2 - d2y
    g1 = torch.stack((gx1, gy1, gx2, gy2), -1) if need[0] else None
    g2 = torch.stack((gu1, gv1, gu2, gv2), -1) if need[1] else None
    return g1, g2



def _acc(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a + b


def _siou_shape_grads(a: Tensor, b: Tensor, h: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Adjoints of widths ``a``, ``b`` for ``h·(1 − exp(−ω))^4``, ω = |a − b| / (high(a, b) + eps)."""
    m = high(a, b) + eps
    d = a - b
    omega = d.abs() / m
    e = torch.exp(-omega)
    g_omega = h * SIOU_THETA * (1.0 - e) ** (SIOU_THETA - 1.0) * e
    g_d = g_omega * torch.sign(d) / m
    g_m = -g_omega * omega / m
    ga_m, gb_m = pair_grads(torch.zeros_like(g_m), g_m, order(a, b))
    return g_d + ga_m, gb_m - g_d




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
    @staticmethod
    def forward(
        ctx, b1: Tensor, b2: Tensor, kind: str, eps: float, loss: bool, reduce: bool, mods: Modifiers
    ) -> Tensor:
        ctx.save_for_backward(b1, b2)
        ctx.args = (kind, eps, loss, mods.image_size)
        b1, b2 = b1.detach(), b2.detach()
        args = (b1, b2, kind, eps, loss, reduce, mods)
        return runtime.run(f"iou_forward_{kind}", iou_forward, _iou_forward_blocked, *args)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        b1, b2 = ctx.saved_tensors
        kind, eps, loss, image_size = ctx.args
        need = tuple(ctx.needs_input_grad[:2])
        args = (b1, b2, grad, kind, eps, loss, need, image_size)
        g1, g2 = runtime.run(f"iou_backward_{kind}", iou_backward, _iou_backward_blocked, *args)
        g1 = None if g1 is None else g1.sum_to_size(b1.shape)  # broadcast inputs: sum the copies
        g2 = None if g2 is None else g2.sum_to_size(b2.shape)
        return g1, g2, None, None, None, None, None


# Eager, autograd of iou_forward itself is faster than the fused Function: its backward reuses the
# forward's temporaries instead of recomputing them, and relu's backward is one op (measured, 1 thread,
# CPU time at 1e6 boxes: giou 215 ms against the Function's 364 ms and the naive formula's 260 ms).
# The Function keeps only the boxes (4-7x less memory): it takes over above 2^21 boxes, where the
# autograd graph's temporaries pass 200 MB.
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

    Values are :func:`iou_forward`'s; for plain kinds the gradient is :func:`iou_backward`'s, and only
    ``b1``, ``b2`` are kept for it. ``loss=True`` returns ``1 − value`` and ``reduce=True`` its sum
    over the boxes, each saving a pass over memory in ``iou_loss``.
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of {IOU_KINDS}, got {kind!r}")
    if kind == "mpdiou" and mods.image_size is None:
        raise ValueError("kind='mpdiou' needs image_size=(width, height) in the boxes' units")
    if not mods.plain():
        args = (b1, b2, kind, eps, loss, reduce, mods)
        return runtime.run(f"iou_autograd_{kind}", iou_forward, iou_forward, *args)
    if not runtime._compile_enabled and _num_boxes(b1, b2) <= PLAIN_AUTOGRAD_MAX_BOXES:
        return iou_forward(b1, b2, kind, eps, loss, reduce, mods)
    return _FusedIoU.apply(b1, b2, kind, eps, loss, reduce, mods)


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` with a fast path for equal shapes (it costs ~0.1 ms per call: a
    tenth of a whole IoU loss at 1e3 boxes)."""
    return tuple(a) if a == b else tuple(torch.broadcast_shapes(a, b))


def _num_boxes(b1: Tensor, b2: Tensor) -> int:
    return math.prod(broadcast_shape(b1.shape[:-1], b2.shape[:-1]))
