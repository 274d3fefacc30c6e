"""Fused kernels: the IoU family and the sigmoid focal loss with hand-derived backward passes.

Plain eager PyTorch keeps every intermediate of these formulas (intersection, union, enclosing box,
centre offset, atan terms, sigmoid, ...) as a full-size tensor for the backward pass. Here each loss is
a ``torch.autograd.Function`` that saves only its inputs and recomputes the rest in a backward
written out by hand (reverse-mode chain rule, term by term below). The forward and backward are
plain tensor functions, so the same source runs

- eagerly (the default; memory-light, no warm-up), or
- compiled by ``torch.compile`` (inductor's C++ backend): each becomes one loop over the boxes, one
  pass over memory forward and one backward. Opt-in with :func:`set_compile` or the environment
  variable ``DETLOSS_COMPILE=1``, because the first call of each kind compiles for several seconds
  (cached on disk by inductor afterwards). If compilation is unavailable or fails, the eager
  function is used and a warning is emitted once.

There is one implementation of each formula: :func:`iou_forward` and :func:`focal_forward` are the
documented formulas, and the hand-derived derivatives sit next to them. The plain autograd
references they are tested against live in the tests (``tests/test_fused.py``), not in the package.

Gradient conventions follow PyTorch's autograd of the plain formula exactly, so that fused and plain
gradients agree even at the kinks: ``clamp(min=0)`` passes the gradient where its input is ≥ 0,
``minimum``/``maximum`` split it in halves on ties, ``abs`` uses ``sign`` (0 at 0).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

IOU_KINDS: tuple[str, ...] = ("iou", "giou", "diou", "ciou", "eiou", "siou")
FOUR_OVER_PI2 = 4.0 / math.pi**2
SIOU_THETA = 4.0  # shape-cost exponent of the SIoU paper

# --------------------------------------------------------------------------------------------------
# Compilation switch
# --------------------------------------------------------------------------------------------------

_compile_enabled = os.environ.get("DETLOSS_COMPILE", "0").strip().lower() in ("1", "true", "yes", "on")
_compiled: dict[str, Callable] = {}  # name -> compiled function
_failed: set[str] = set()  # names whose compilation failed: eager from then on


def set_compile(enabled: bool = True) -> None:
    """Run the fused kernels through ``torch.compile`` (``True``) or eagerly (``False``, default).

    The environment variable ``DETLOSS_COMPILE=1`` sets the initial value. The first call of each
    (kernel, kind, dtype) compiles for seconds; later calls, and later processes (inductor's disk
    cache), reuse it. A failed compilation falls back to eager with one warning.
    """
    global _compile_enabled
    _compile_enabled = bool(enabled)


def compile_enabled() -> bool:
    """Whether :func:`set_compile` (or ``DETLOSS_COMPILE``) turned the compiled path on."""
    return _compile_enabled


def _compiled_fn(name: str, fn: Callable) -> Callable | None:
    """The compiled ``fn`` when compilation is on and has not failed for ``name``, else ``None``."""
    if not _compile_enabled or name in _failed or torch.compiler.is_compiling():
        # inside a user's torch.compile region dynamo traces the eager function itself
        return None
    compiled = _compiled.get(name)
    if compiled is None:
        # inductor's heuristic refuses to vectorise the stride-4 loads of (N, 4) boxes; without it
        # the loops run in AVX2/AVX-512 lanes (measured 7x faster on the IoU forward)
        options = {"cpp.enable_tiling_heuristics": False}
        compiled = _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True, options=options)
    return compiled


def _run(name: str, fn: Callable, eager: Callable, *args):
    """``fn(*args)`` compiled when enabled and working, else ``eager(*args)`` (``fn`` in blocks)."""
    compiled = _compiled_fn(name, fn)
    if compiled is not None:
        try:
            return compiled(*args)
        except Exception as err:  # no compiler, unsupported platform, inductor bug: stay correct
            _failed.add(name)
            warnings.warn(
                f"detloss: torch.compile of {name} failed ({type(err).__name__}: {err}); using eager",
                RuntimeWarning,
                stacklevel=3,
            )
    return eager(*args)


# Eager kernels run on blocks of EAGER_BLOCK boxes (FOCAL_BLOCK logits): the forward and backward
# create tens of temporaries per element, and a block's temporaries stay in the CPU's caches instead
# of streaming through memory; the peak memory is the outputs plus one block's temporaries instead of
# tens of full-size tensors. Sizes measured on a 2-core EPYC (1 MB L2): smaller blocks pay more Python
# overhead per op, larger ones leave the cache.
EAGER_BLOCK = 1 << 16
FOCAL_BLOCK = 1 << 18


def _blocks(n: int) -> list[slice]:
    return [slice(i, min(i + EAGER_BLOCK, n)) for i in range(0, n, EAGER_BLOCK)]


# --------------------------------------------------------------------------------------------------
# IoU family
# --------------------------------------------------------------------------------------------------


def iou_forward(b1: Tensor, b2: Tensor, kind: str, eps: float, loss: bool, reduce: bool) -> Tensor:
    """The ``kind`` IoU of broadcastable xyxy boxes ``(..., 4)`` → ``(...)``.

    ``loss``: return ``1 − value``; ``reduce``: return the sum over all boxes (a scalar), computed in
    the same pass when compiled.

    Formulas (box 1 = prediction, box 2 = target, C = enclosing box, widths clamped at 0):

    - iou  = I / (U + eps)
    - giou = iou − (|C| − U) / (|C| + eps)
    - diou = iou − ρ² / (c² + eps), ρ the centre distance, c the diagonal of C
    - ciou = diou − α·v, v = 4/π²·(atan(w₂/(h₂ + eps)) − atan(w₁/(h₁ + eps)))²,
      α = v / ((1 − iou) + v + eps) held constant in the gradient (CIoU paper; torchvision and
      YOLOv5 do the same, mmdet additionally gates α by iou > 0.5 — not done here). (1 − iou)
      comes first: 1 + eps rounds to 1 in float32 for eps < 6e-8, which gave 0/0 on identical boxes
    - eiou = diou − (w₁ − w₂)² / (C_w² + eps) − (h₁ − h₂)² / (C_h² + eps)
    - siou = iou − (Δ + Ω) / 2, Δ = Σ_{x,y} (1 − exp(−(2 − Λ)·(d_t / (C_t + eps))²)) with the angle
      cost Λ = sin(2α) = 2·|dx·dy| / (dx² + dy² + eps) (the paper's 1 − 2·sin²(arcsin(sin α) − π/4),
      written without arcsin so its gradient stays finite), Ω = Σ_{w,h} (1 − exp(−ω_t))^4,
      ω_w = |w₁ − w₂| / (max(w₁, w₂) + eps).
    """
    x1, y1, x2, y2 = b1.unbind(-1)
    u1, v1, u2, v2 = b2.unbind(-1)
    w1, h1 = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    w2, h2 = (u2 - u1).clamp(min=0), (v2 - v1).clamp(min=0)
    inter = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp(min=0) * (
        torch.minimum(y2, v2) - torch.maximum(y1, v1)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter
    val = inter / (union + eps)
    if kind != "iou":
        cw, ch = _hull(x1, x2, u1, u2), _hull(y1, y2, v1, v2)  # enclosing box
        if kind == "giou":
            enclose = cw * ch
            val = val - (enclose - union) / (enclose + eps)
        else:
            dx = 0.5 * ((u1 + u2) - (x1 + x2))  # centre offset, target minus prediction
            dy = 0.5 * ((v1 + v2) - (y1 + y2))
            rho2 = dx * dx + dy * dy
            if kind == "siou":
                gamma = 2.0 - 2.0 * (dx * dy).abs() / (rho2 + eps)
                distance = 2.0 - torch.exp(-gamma * (dx / (cw + eps)) ** 2) - torch.exp(
                    -gamma * (dy / (ch + eps)) ** 2
                )
                omega_w = (w1 - w2).abs() / (torch.maximum(w1, w2) + eps)
                omega_h = (h1 - h2).abs() / (torch.maximum(h1, h2) + eps)
                shape = (1.0 - torch.exp(-omega_w)) ** SIOU_THETA + (1.0 - torch.exp(-omega_h)) ** SIOU_THETA
                val = val - 0.5 * (distance + shape)
            else:
                penalty = rho2 / (cw * cw + ch * ch + eps)
                if kind == "ciou":
                    v = FOUR_OVER_PI2 * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
                    alpha = (v / ((1.0 - val) + v + eps)).detach()  # a constant in the gradient
                    penalty = penalty + alpha * v
                elif kind == "eiou":
                    penalty = penalty + (w1 - w2) ** 2 / (cw * cw + eps) + (h1 - h2) ** 2 / (ch * ch + eps)
                val = val - penalty
    val = 1.0 - val if loss else val
    return val.sum() if reduce else val


def _hull(a1: Tensor, a2: Tensor, b1: Tensor, b2: Tensor) -> Tensor:
    """Extent of the enclosing box along one axis: the hull of all four corners, so it stays >= 0 and
    contains both centres even for an inverted box (a2 < a1); max(a2, b2) − min(a1, b1) otherwise."""
    return torch.maximum(torch.maximum(a1, a2), torch.maximum(b1, b2)) - torch.minimum(
        torch.minimum(a1, a2), torch.minimum(b1, b2)
    )


def _pair_grads(g_inner: Tensor, g_outer: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of ``a`` and ``b`` through ``minimum(a, b)`` (adjoint ``g_inner``) and
    ``maximum(a, b)`` (adjoint ``g_outer``), ties split in halves; ``s = sign(b − a)``.

    minimum sends (1 + s)/2 of its adjoint to ``a``, maximum (1 − s)/2.
    """
    p, q = g_inner + g_outer, s * (g_inner - g_outer)
    return 0.5 * (p + q), 0.5 * (p - q)


def iou_backward(
    b1: Tensor, b2: Tensor, grad: Tensor, kind: str, eps: float, loss: bool, need: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """Hand-derived gradient of :func:`iou_forward` w.r.t. ``b1`` and ``b2`` (broadcast shape ``(..., 4)``).

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
    eiw = torch.minimum(x2, u2) - torch.maximum(x1, u1)
    eih = torch.minimum(y2, v2) - torch.maximum(y1, v1)
    iw, ih = eiw.clamp(min=0), eih.clamp(min=0)
    inter = iw * ih
    den = w1 * h1 + w2 * h2 - inter + eps  # union + eps
    iou = inter / den

    g_union = -g * iou / den  # d iou / dU = −I / (U + eps)²
    g_inter = g / den
    g_cw = g_ch = g_dx = g_dy = None
    g_w1 = g_h1 = g_w2 = g_h2 = None
    if kind != "iou":
        cw, ch = _hull(x1, x2, u1, u2), _hull(y1, y2, v1, v2)
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
    elif kind != "iou":  # diou, ciou, eiou: − ρ² / (c² + eps) − ...
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

    gx1, gu1, gx2, gu2 = _axis_grads(x1, x2, u1, u2, g_iw, g_cw, g_w1, g_w2, g_dx)
    gy1, gv1, gy2, gv2 = _axis_grads(y1, y2, v1, v2, g_ih, g_ch, g_h1, g_h2, g_dy)
    g1 = torch.stack((gx1, gy1, gx2, gy2), -1) if need[0] else None
    g2 = torch.stack((gu1, gv1, gu2, gv2), -1) if need[1] else None
    return g1, g2


def _acc(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a + b


def _siou_shape_grads(a: Tensor, b: Tensor, h: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Adjoints of widths ``a``, ``b`` for ``h·(1 − exp(−ω))^4``, ω = |a − b| / (max(a, b) + eps)."""
    m = torch.maximum(a, b) + eps
    d = a - b
    omega = d.abs() / m
    e = torch.exp(-omega)
    g_omega = h * SIOU_THETA * (1.0 - e) ** (SIOU_THETA - 1.0) * e
    g_d = g_omega * torch.sign(d) / m
    g_m = -g_omega * omega / m
    ga_m, gb_m = _pair_grads(torch.zeros_like(g_m), g_m, torch.sign(b - a))
    return g_d + ga_m, gb_m - g_d


def _axis_grads(
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
    :func:`_hull` (``g_c``), widths a2 − a1, b2 − b1 (``g_wa``, ``g_wb``), centre offset
    ½((b1 + b2) − (a1 + a2)) (``g_d``). ``minimum``/``maximum`` split their adjoint on ties as
    autograd does: ``_pair_grads(g_min, g_max, sign(y − x))`` → shares of x and y.
    """
    zero = torch.zeros_like(g_i)
    ga2, gb2 = _pair_grads(g_i, zero, torch.sign(b2 - a2))  # min(a2, b2)
    ga1, gb1 = _pair_grads(zero, -g_i, torch.sign(b1 - a1))  # max(a1, b1)
    if g_c is not None:
        sa, sb = torch.sign(a2 - a1), torch.sign(b2 - b1)
        hi_a, hi_b = _pair_grads(zero, g_c, torch.sign(torch.maximum(b1, b2) - torch.maximum(a1, a2)))
        lo_a, lo_b = _pair_grads(-g_c, zero, torch.sign(torch.minimum(b1, b2) - torch.minimum(a1, a2)))
        p, q = _pair_grads(lo_a, hi_a, sa)  # min(a1, a2) and max(a1, a2)
        ga1, ga2 = ga1 + p, ga2 + q
        p, q = _pair_grads(lo_b, hi_b, sb)
        gb1, gb2 = gb1 + p, gb2 + q
    ga1, ga2 = ga1 - g_wa, ga2 + g_wa
    gb1, gb2 = gb1 - g_wb, gb2 + g_wb
    if g_d is not None:
        hd = 0.5 * g_d
        ga1, ga2, gb1, gb2 = ga1 - hd, ga2 - hd, gb1 + hd, gb2 + hd
    return ga1, gb1, ga2, gb2


def _iou_forward_blocked(b1: Tensor, b2: Tensor, kind: str, eps: float, loss: bool, reduce: bool) -> Tensor:
    """:func:`iou_forward` over blocks of rows (inputs of one shape; broadcast pairs run whole)."""
    if b1.shape != b2.shape or b1.numel() <= 4 * EAGER_BLOCK:
        return iou_forward(b1, b2, kind, eps, loss, reduce)
    f1, f2 = b1.reshape(-1, 4), b2.reshape(-1, 4)
    if reduce:
        return sum(iou_forward(f1[s], f2[s], kind, eps, loss, True) for s in _blocks(f1.shape[0]))
    out = f1.new_empty(f1.shape[0])
    for s in _blocks(f1.shape[0]):
        out[s] = iou_forward(f1[s], f2[s], kind, eps, loss, False)
    return out.reshape(b1.shape[:-1])


def _iou_backward_blocked(
    b1: Tensor, b2: Tensor, grad: Tensor, kind: str, eps: float, loss: bool, need: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """:func:`iou_backward` over blocks of rows (inputs of one shape; broadcast pairs run whole)."""
    if b1.shape != b2.shape or b1.numel() <= 4 * EAGER_BLOCK:
        return iou_backward(b1, b2, grad, kind, eps, loss, need)
    f1, f2 = b1.reshape(-1, 4), b2.reshape(-1, 4)
    fg = grad if grad.dim() == 0 else grad.reshape(-1)
    g1 = f1.new_empty(f1.shape) if need[0] else None
    g2 = f2.new_empty(f2.shape) if need[1] else None
    for s in _blocks(f1.shape[0]):
        p1, p2 = iou_backward(f1[s], f2[s], fg if fg.dim() == 0 else fg[s], kind, eps, loss, need)
        if g1 is not None:
            g1[s] = p1
        if g2 is not None:
            g2[s] = p2
    return (None if g1 is None else g1.view(b1.shape)), (None if g2 is None else g2.view(b2.shape))


class _FusedIoU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, b1: Tensor, b2: Tensor, kind: str, eps: float, loss: bool, reduce: bool) -> Tensor:
        ctx.save_for_backward(b1, b2)
        ctx.args = (kind, eps, loss)
        b1, b2 = b1.detach(), b2.detach()
        return _run(f"iou_forward_{kind}", iou_forward, _iou_forward_blocked, b1, b2, kind, eps, loss, reduce)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        b1, b2 = ctx.saved_tensors
        kind, eps, loss = ctx.args
        need = tuple(ctx.needs_input_grad[:2])
        args = (b1, b2, grad, kind, eps, loss, need)
        g1, g2 = _run(f"iou_backward_{kind}", iou_backward, _iou_backward_blocked, *args)
        g1 = None if g1 is None else g1.sum_to_size(b1.shape)  # broadcast inputs: sum the copies
        g2 = None if g2 is None else g2.sum_to_size(b2.shape)
        return g1, g2, None, None, None, None


def fused_iou(
    b1: Tensor, b2: Tensor, kind: str = "iou", eps: float = 1e-7, loss: bool = False, reduce: bool = False
) -> Tensor:
    """Unchecked fused IoU family of broadcastable xyxy boxes ``(..., 4)`` → ``(...)``.

    Values are :func:`iou_forward`'s; the gradient is :func:`iou_backward`'s, and only ``b1``, ``b2``
    are kept for it. ``loss=True`` returns ``1 − value`` and ``reduce=True`` its sum over the boxes,
    each saving a pass over memory in ``iou_loss``.
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of {IOU_KINDS}, got {kind!r}")
    if not _compile_enabled and _num_boxes(b1, b2) <= PLAIN_AUTOGRAD_MAX_BOXES:
        return iou_forward(b1, b2, kind, eps, loss, reduce)
    return _FusedIoU.apply(b1, b2, kind, eps, loss, reduce)


# Eager and small, autograd of iou_forward itself is faster than the fused Function (measured 1.3-1.6x
# at 1e4-1e5 boxes: its backward reuses the forward's temporaries instead of recomputing them) and its
# memory is small; from 2^18 boxes the Function is both faster and 4-7x lighter. Same formula, same
# gradients (the Function's backward follows autograd's conventions at every kink).
PLAIN_AUTOGRAD_MAX_BOXES = 1 << 18


def _num_boxes(b1: Tensor, b2: Tensor) -> int:
    return math.prod(torch.broadcast_shapes(b1.shape[:-1], b2.shape[:-1]))


# --------------------------------------------------------------------------------------------------
# Sigmoid focal loss
# --------------------------------------------------------------------------------------------------


def _sigmoid_terms(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(log σ(x), σ(x), σ(−x))`` from one ``exp``: e = exp(−|x|) ∈ (0, 1] never overflows, and
    σ(−x) is exact where 1 − σ(x) would round to 0. ``log σ(x) = min(x, 0) − log1p(e)`` is how PyTorch
    computes ``logsigmoid``."""
    e = torch.exp(-x.abs())
    r = 1.0 / (1.0 + e)
    er = e * r
    pos = x >= 0
    return torch.clamp(x, max=0) - torch.log1p(e), torch.where(pos, r, er), torch.where(pos, er, r)


def focal_forward(
    x: Tensor, t: Tensor, pw: Tensor | None, alpha: float, gamma: float, reduce: bool = False
) -> Tensor:
    """Elementwise ``BCEWithLogits(x, t; pos_weight) · α_t · max(1 − p_t, tiny)^γ`` (summed if ``reduce``).

    The cross-entropy is written as PyTorch's ``binary_cross_entropy_with_logits`` computes it,
    ``(1 − t)·x − (1 + (pw − 1)·t)·log σ(x)``, so that it fuses with the focal factors into one pass.
    """
    ls, p, _ = _sigmoid_terms(x)
    if pw is not None:
        ls = ls * ((pw - 1) * t + 1)
    loss = (1 - t) * x - ls
    if gamma != 0:
        # 1 − p_t, clamped away from 0 so that γ < 1 keeps a finite gradient where p_t → 1
        loss = loss * (p + t - 2.0 * p * t).clamp(min=torch.finfo(x.dtype).tiny) ** gamma
    if alpha >= 0:
        loss = loss * (t * alpha + (1.0 - t) * (1.0 - alpha))
    return loss.sum() if reduce else loss


def focal_value_and_grad(
    x: Tensor, t: Tensor, pw: Tensor | None, alpha: float, gamma: float, reduce: bool, need_t: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`focal_forward` and its hand-derived elementwise derivatives d loss/dx, d loss/dt.

    With ℓ the BCE, lw = 1 + (pw − 1)·t, m = q^γ (q = max(1 − p_t, tiny)) and a = α_t, loss = ℓ·m·a:
    dℓ/dx = (1 − t) − lw·σ(−x),  dℓ/dt = −x − (pw − 1)·log σ(x),
    dq/dx = (1 − 2t)·p·(1 − p),  dq/dt = 1 − 2p,  da/dt = 2α − 1.
    ``pos_weight`` gets no gradient, as in PyTorch's BCE; d/dt only if ``need_t`` (else ``None``).
    The loss is summed if ``reduce``; the derivatives are always elementwise.
    """
    ls, p, pm = _sigmoid_terms(x)
    lw = 1.0 if pw is None else (pw - 1) * t + 1
    bce = (1 - t) * x - ls * lw
    dl_dx = (1 - t) - lw * pm
    dl_dt = (-x if pw is None else -x - (pw - 1) * ls) if need_t else None
    loss = bce
    if gamma != 0:
        tiny = torch.finfo(x.dtype).tiny
        q = p + t - 2.0 * p * t
        qc = q.clamp(min=tiny)
        m = qc**gamma
        dm_dq = torch.where(q >= tiny, gamma * m / qc, 0.0)  # clamp passes the gradient at q >= tiny
        dl_dx = dl_dx * m + bce * dm_dq * (1.0 - 2.0 * t) * p * pm
        if need_t:
            dl_dt = dl_dt * m + bce * dm_dq * (1.0 - 2.0 * p)
        loss = bce * m
    if alpha >= 0:
        a = t * alpha + (1.0 - t) * (1.0 - alpha)
        if need_t:
            dl_dt = a * dl_dt + loss * (2.0 * alpha - 1.0)
        dl_dx = a * dl_dx
        loss = loss * a
    return (loss.sum() if reduce else loss), dl_dx, dl_dt


def _focal_rows(x: Tensor, t: Tensor, pw: Tensor | None) -> int | None:
    """Rows of ``x.reshape(-1, C)`` per block, or ``None`` to run whole (small, or odd broadcasting)."""
    if x.dim() == 0 or x.shape != t.shape or x.numel() <= FOCAL_BLOCK:
        return None
    if pw is not None and (pw.dim() > 1 or pw.numel() not in (1, x.shape[-1])):
        return None  # pos_weight broadcasting beyond the class dimension
    return max(1, FOCAL_BLOCK // x.shape[-1])


def _focal_forward_blocked(
    x: Tensor, t: Tensor, pw: Tensor | None, alpha: float, gamma: float, reduce: bool
) -> Tensor:
    """:func:`focal_forward` over blocks of rows."""
    rows = _focal_rows(x, t, pw)
    if rows is None:
        return focal_forward(x, t, pw, alpha, gamma, reduce)
    fx, ft = x.reshape(-1, x.shape[-1]), t.reshape(-1, x.shape[-1])
    blocks = [slice(i, i + rows) for i in range(0, fx.shape[0], rows)]
    if reduce:
        return sum(focal_forward(fx[s], ft[s], pw, alpha, gamma, True) for s in blocks)
    out = torch.empty_like(fx)
    for s in blocks:
        out[s] = focal_forward(fx[s], ft[s], pw, alpha, gamma, False)
    return out.view(x.shape)


def _focal_value_and_grad_blocked(
    x: Tensor, t: Tensor, pw: Tensor | None, alpha: float, gamma: float, reduce: bool, need_t: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`focal_value_and_grad` over blocks of rows."""
    rows = _focal_rows(x, t, pw)
    if rows is None:
        return focal_value_and_grad(x, t, pw, alpha, gamma, reduce, need_t)
    c = x.shape[-1]
    fx, ft = x.reshape(-1, c), t.reshape(-1, c)
    loss = 0.0 if reduce else torch.empty_like(fx)
    dx = torch.empty_like(fx)
    dt = torch.empty_like(ft) if need_t else None
    for i in range(0, fx.shape[0], rows):
        s = slice(i, i + rows)
        bl, bx, bt = focal_value_and_grad(fx[s], ft[s], pw, alpha, gamma, reduce, need_t)
        if reduce:
            loss = loss + bl
        else:
            loss[s] = bl
        dx[s] = bx
        if dt is not None:
            dt[s] = bt
    dt = None if dt is None else dt.view(t.shape)
    return (loss if reduce else loss.view(x.shape)), dx.view(x.shape), dt


class _FusedFocal(torch.autograd.Function):
    """Forward: the loss and, when a gradient is needed, its elementwise derivatives in the same pass
    (saved: one tensor of the logits' size, which the backward would allocate anyway); backward: a
    multiply. Recomputing in the backward instead costs a second exp and log per element."""

    @staticmethod
    def forward(
        ctx, x: Tensor, t: Tensor, pw: Tensor | None, alpha: float, gamma: float, reduce: bool
    ) -> Tensor:
        need_x, need_t = ctx.needs_input_grad[:2]
        x, t = x.detach(), t.detach()
        if not (need_x or need_t):
            args = (x, t, pw, alpha, gamma, reduce)
            return _run("focal_forward", focal_forward, _focal_forward_blocked, *args)
        args = (x, t, pw, alpha, gamma, reduce, need_t)
        fns = (focal_value_and_grad, _focal_value_and_grad_blocked)
        loss, dx, dt = _run("focal_value_and_grad", *fns, *args)
        ctx.save_for_backward(dx if need_x else None, dt)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        dx, dt = ctx.saved_tensors
        gx = None if dx is None else grad * dx
        gt = None if dt is None else grad * dt
        return gx, gt, None, None, None, None


def fused_focal(
    x: Tensor, t: Tensor, pw: Tensor | None, alpha: float, gamma: float, reduce: bool = False
) -> Tensor:
    """Unchecked fused sigmoid focal loss of ``x``, ``t`` of one shape → that shape (or its sum if
    ``reduce``); the backward keeps only the elementwise derivative (see :class:`_FusedFocal`)."""
    if pw is not None and pw.requires_grad:
        raise ValueError("pos_weight cannot require grad (as in F.binary_cross_entropy_with_logits)")
    return _FusedFocal.apply(x, t, pw, alpha, gamma, reduce)
