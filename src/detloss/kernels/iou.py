"""The IoU family's forward formulas on one geometry: the kinds, the modifiers, their shared parts.

Every kind is an IoU term minus penalty terms built from the shared geometry of
:mod:`detloss.kernels.geometry` (overlap, enclosing box, centre offset, corners); a modifier changes
the IoU term or raises each term to a power, it never repeats the geometry. :class:`Parts` is what a
kind's value and its hand-derived gradient (:mod:`.iou_grad`) share; the autograd Function and
the choice of execution path are in :mod:`.iou_function`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .geometry import (
    Corners,
    Overlap,
    area,
    centre_offset,
    corners,
    enclosing,
    high,
    hull,
    overlap,
    reusable,
    scaled,
)

IOU_KINDS: tuple[str, ...] = ("iou", "giou", "diou", "ciou", "eiou", "siou", "wiou", "mpdiou")


# The IoU family's two constants are functions returning literals, not module-level floats: under
# torch.compile(dynamic=True) dynamo makes a module-level float (or math.pi) a symbolic graph input,
# which it cannot lift into the graph of a second autograd Function reading it ("lift_tracked_freevar_
# to_input should not be called on root SubgraphTracer", the family of pytorch/pytorch#111031): a
# criterion applying the fused IoU twice (an end-to-end loss's two branches) would not compile.
def four_over_pi2() -> float:
    """CIoU's aspect weight 4/π²."""
    return 0.4052847345693511  # 4.0 / math.pi**2, the same float64


def siou_theta() -> float:
    """The shape-cost exponent θ of the SIoU paper."""
    return 4.0


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
    return output(kind_value(kind, iou_parts(b1, b2, kind, eps), eps, mods), loss, reduce)


def output(val: Tensor, loss: bool, reduce: bool) -> Tensor:
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
    return corner_parts(corners(b1, ndim), corners(b2, ndim), kind, eps)


def corner_parts(k1: Corners, k2: Corners, kind: str, eps: float) -> Parts:
    """:class:`Parts` of boxes given by their broadcastable axis planes
    (:func:`~detloss.kernels.geometry.corners`)."""
    ov = overlap(k1, k2, eps)
    enclose = enclosing(k1, k2, ov) if kind in _ENCLOSING_KINDS else None
    offset = centre_offset(k1, k2) if kind in _OFFSET_KINDS else None
    return Parts(k1, k2, ov, enclose, offset)


def kind_value(kind: str, p: Parts, eps: float, mods: Modifiers) -> Tensor:
    """The kind's value ``(...)`` from its parts (formulas: :func:`iou_forward`)."""
    if kind == "wiou":
        r = torch.exp(sum_sq(p.offset) / (sum_sq(p.enclose) + eps).detach())
        return 1.0 - r * (1.0 - p.ov.iou)
    val = _iou_term(p.ov.iou, p.k1, p.k2, eps, mods)
    terms = _penalties(kind, p, eps, mods)
    if terms:
        total = _power(terms[0], mods.alpha)  # a fresh tensor: without autograd, summed into in place
        reuse = reusable(val, total)
        for t in terms[1:]:
            total = total.add_(_power(t, mods.alpha)) if reuse else total + _power(t, mods.alpha)
        val = torch.sub(val, total, out=total) if reuse else val - total
    return val


def sum_sq(t: Tensor, consume: bool = False) -> Tensor:
    """Squared length over the axis planes: ``(2, ...)`` → x² + y² ``(...)``, as two ops (a square
    and an ``addcmul``): ``(t * t).sum(0)`` was 2.5-4x slower, a reduction over the outer dimension
    (zero fill, then two passes). ``consume``: ``t`` is read by nobody afterwards (the caller's
    promise): x is squared in place and the result is a view of ``t``, no new buffer."""
    x, y = t.unbind(0)
    if consume:
        return x.mul_(x).addcmul_(y, y)
    return (x * x).addcmul_(y, y) if reusable(t) else torch.addcmul(x * x, y, y)


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
        return [sum_sq(p.k1[0] - p.k2[0]) / norm, sum_sq(p.k1[1] - p.k2[1]) / norm]
    c, ov = p.enclose, p.ov
    if kind == "giou":
        enclose = area(c)
        return [(enclose - ov.union) / (enclose + eps)]
    d = p.offset
    rho2 = sum_sq(d)
    if kind == "siou":
        dx, dy = d.unbind(0)
        gamma = 2.0 - 2.0 * (dx * dy).abs() / (rho2 + eps)
        ex, ey = torch.exp(-gamma * (d / (c + eps)) ** 2).unbind(0)
        s1, s2 = ov.sides1, ov.sides2
        omega = (s1 - s2).abs() / (high(s1, s2) + eps)
        sw, sh = ((1.0 - torch.exp(-omega)) ** siou_theta()).unbind(0)
        return [0.5 * (((2.0 - ex) - ey) + (sw + sh))]
    terms = [rho2.div_(sum_sq(c).add_(eps)) if reusable(d, c) else rho2 / (sum_sq(c) + eps)]
    if kind == "ciou":
        terms.append(ciou_penalty(ov, eps))
    elif kind == "eiou":
        terms += ((ov.sides1 - ov.sides2) ** 2 / (c * c + eps)).unbind(0)
    return terms


def aspect(w: Tensor, h_eps: Tensor) -> Tensor:
    """CIoU's aspect angle atan(w / (h + eps)) of a box's clamped width and its height plus eps."""
    return torch.atan(w / h_eps)


def ciou_alpha(v: Tensor, iou: Tensor, eps: float) -> Tensor:
    """CIoU's trade-off α_v = v / ((1 − iou) + v + eps). (1 − iou) comes first: 1 + eps rounds to 1
    in float32 for eps < 6e-8, and v − iou + (1 + eps) gave 0/0 on identical boxes."""
    if reusable(v, iou):
        den = (1.0 - iou).add_(v).add_(eps)
        return torch.div(v, den, out=den)
    return v / ((1.0 - iou) + v + eps)


def ciou_penalty(ov: Overlap, eps: float) -> Tensor:
    """CIoU's aspect penalty α_v·v ``(...)``, v = 4/π²·(aspect₂ − aspect₁)², α_v (:func:`ciou_alpha`)
    held constant in the gradient. The angles are taken per box (``ov``'s sides broadcast), so for a
    pairwise grid they cost one atan per box, not per pair."""
    (w1, h1), (w2, h2) = ov.sides1.unbind(0), ov.sides2.unbind(0)
    diff = aspect(w2, h2 + eps) - aspect(w1, h1 + eps)
    if reusable(diff, ov.iou):
        v = diff.square_().mul_(four_over_pi2())
        return ciou_alpha(v, ov.iou, eps).mul_(v)
    v = four_over_pi2() * diff * diff
    return ciou_alpha(v, ov.iou, eps).detach() * v


def ciou_grid(k1: Corners, k2: Corners, eps: float) -> Tensor:
    """``kind_value("ciou", corner_parts(k1, k2, "ciou", eps), eps, PLAIN)`` for the large pairwise
    grids of the assigners' matching costs: the same pieces and the same operations in the same
    order (equal values), but each grid-sized part is overwritten once nothing reads it any more and
    dropped as soon as it is spent. The general path keeps every part alive to the end (they are the
    saved :class:`Parts` of the fused Function's backward) and squares copies; here at most about
    four grid planes live at a time, and freed buffers are reused instead of fresh ones whose first
    touch page-faults (a 2M-pair block in half the time). Under autograd or compiled (nothing may be
    overwritten there, :func:`~detloss.kernels.geometry.reusable`) it is the general path."""
    if not reusable(*k1, *k2):
        return kind_value("ciou", corner_parts(k1, k2, "ciou", eps), eps, PLAIN)
    ov = overlap(k1, k2, eps)
    penalty = ciou_penalty(ov, eps)
    iou, s1, s2 = ov.iou, ov.sides1, ov.sides2
    del ov  # the union and the intersection's sides (three grid planes) are spent
    c2 = sum_sq(hull(*k1, s1, *k2, s2), consume=True).add_(eps)  # as enclosing(), the sides unpacked
    total = sum_sq(centre_offset(k1, k2), consume=True).div_(c2)  # ρ² / (c² + eps)
    del c2
    return iou.sub_(total.add_(penalty))


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` with a fast path for equal shapes (it costs ~0.1 ms per call: a
    tenth of a whole IoU loss at 1e3 boxes)."""
    return tuple(a) if a == b else tuple(torch.broadcast_shapes(a, b))
