"""The sigmoid focal loss as one fused kernel: loss and elementwise derivative in one forward pass.

The forward evaluates PyTorch's own ``binary_cross_entropy_with_logits`` and the focal factors with
as few ops as the formula allows (about 20 elementwise launches for loss and derivative together,
against about 40 for autograd of the plain formula) and saves only d loss/d logits; the backward is
one multiply. Above :data:`detloss.kernels.runtime.FOCAL_BLOCK` logits it runs in cache-sized blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import runtime


def power_and_derivative(q: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """``(m, dm/dq)`` for m = q^γ (the focal factor here, IA-BCE's negative weight in :mod:`.ia_bce`);
    for γ < 1, q is clamped at float tiny (its derivative is infinite at 0), the clamp passing the
    gradient where q >= tiny as autograd does."""
    if gamma == 2:  # the usual γ: q², 2q (``q ** 1.0`` would still copy q)
        return q * q, 2.0 * q
    if gamma >= 1:
        return q**gamma, (gamma * q ** (gamma - 1.0) if gamma != 1 else torch.ones_like(q))
    tiny = torch.finfo(q.dtype).tiny
    qc = q.clamp(min=tiny)
    m = qc**gamma
    return m, torch.where(q >= tiny, gamma * m / qc, 0.0)


def _alpha_t(t: Tensor, alpha: float) -> Tensor:
    """α_t = (1 − α) + (2α − 1)·t. Not ``torch.rsub(t, 1 − α, alpha=1 − 2α)`` (one op): under
    ``torch.compile(dynamic=True)`` a module's float α is symbolic, and torch 2.13 drops a symbolic
    ``alpha=`` of rsub (``tests/test_losses.py`` compiles with float attributes)."""
    return t * (2.0 * alpha - 1.0) + (1.0 - alpha)


def focal_forward(
    x: Tensor, t: Tensor, pw: Tensor | None, alpha: float, gamma: float, reduce: bool = False
) -> Tensor:
    """Elementwise ``BCEWithLogits(x, t; pos_weight) · α_t · (1 − p_t)^γ`` (summed if ``reduce``).

    1 − p_t = σ(x) + t·(σ(−x) − σ(x)) (a lerp: exact for hard targets, where 1 − σ(x) would round
    to 0); α_t = (1 − α) + (2α − 1)·t; α < 0 disables α_t.
    """
    loss = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")
    if gamma != 0:
        q = torch.lerp(torch.sigmoid(x), torch.sigmoid(-x), t)
        loss = loss * power_and_derivative(q, gamma)[0]
    if alpha >= 0:
        loss = loss * _alpha_t(t, alpha)
    return loss.sum() if reduce else loss


def focal_value_and_grad(
    x: Tensor, t: Tensor, pw: Tensor | None, alpha: float, gamma: float, reduce: bool, need_t: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`focal_forward` and its hand-derived elementwise derivatives d loss/dx, d loss/dt.

    With ℓ the BCE, lw = 1 + (pw − 1)·t, s = σ(x), s̄ = σ(−x), q = 1 − p_t, m = q^γ and a = α_t,
    loss = ℓ·m·a: dℓ/dx = s − t (lw·s̄ form (1 − t) − lw·s̄ with pos_weight), dℓ/dt = −x − (pw − 1)·log s,
    dq/dx = (1 − 2t)·s·s̄, dq/dt = s̄ − s, da/dt = 2α − 1.
    ``pos_weight`` gets no gradient, as in PyTorch's BCE; d/dt only if ``need_t`` (else ``None``).
    The loss is summed if ``reduce``; the derivatives are always elementwise.
    """
    bce = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")
    s = torch.sigmoid(x)
    sm = torch.sigmoid(-x)
    dl_dx = s - t if pw is None else (1.0 - t) - ((pw - 1.0) * t + 1.0) * sm
    dl_dt = None
    if need_t:
        dl_dt = -x if pw is None else -x - (pw - 1.0) * F.logsigmoid(x)
    loss = bce
    if gamma != 0:
        q = torch.lerp(s, sm, t)
        m, dm = power_and_derivative(q, gamma)
        bdm = bce * dm
        dq_dx = torch.rsub(t, 1.0, alpha=2.0) * (s * sm)  # (1 − 2t)·s·s̄
        dl_dx = torch.addcmul(dl_dx * m, bdm, dq_dx)
        if need_t:
            dl_dt = torch.addcmul(dl_dt * m, bdm, sm - s)
        loss = bce * m
    if alpha >= 0:
        a = _alpha_t(t, alpha)
        if need_t:
            dl_dt = a * dl_dt + loss * (2.0 * alpha - 1.0)
        dl_dx = a * dl_dx
        loss = loss * a
    return (loss.sum() if reduce else loss), dl_dx, dl_dt


def _focal_rows(x: Tensor, t: Tensor, pw: Tensor | None) -> int | None:
    """Rows of ``x.reshape(-1, C)`` per block, or ``None`` to run whole (small, or odd broadcasting)."""
    if x.dim() == 0 or x.shape != t.shape or x.numel() <= runtime.FOCAL_BLOCK:
        return None
    if pw is not None and (pw.dim() > 1 or pw.numel() not in (1, x.shape[-1])):
        return None  # pos_weight broadcasting beyond the class dimension
    return max(1, runtime.FOCAL_BLOCK // x.shape[-1])


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
            return runtime.run("focal_forward", focal_forward, _focal_forward_blocked, *args)
        args = (x, t, pw, alpha, gamma, reduce, need_t)
        fns = (focal_value_and_grad, _focal_value_and_grad_blocked)
        loss, dx, dt = runtime.run("focal_value_and_grad", *fns, *args)
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
