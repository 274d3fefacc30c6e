"""IA-BCE (LW-DETR's class term) as one fused kernel: loss and elementwise derivative in one forward.

With p = σ(x), s = softplus(x) = −log(1 − p) (evaluated as ``−logsigmoid(−x)``: exact for every
finite x) and t = max(p^α·IoU^(1 − α), 0.01) held constant::

    positive:  loss = s − t·x                  dloss/dx = p − t
    negative:  loss = m·s,  m = p^γ            dloss/dx = m·p + s·dm/dx,  dm/dx = γ·p^(γ−1)·p·(1 − p)

(for γ < 1, p is clamped at float tiny in m, whose derivative is then 0 below it, as autograd of the
clamp gives). About 20 elementwise launches for loss and derivative together, against about 36 for
autograd of the formula; the backward is one multiply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .focal import power_and_derivative


def ia_bce_value_and_grad(
    x: Tensor, positive: Tensor, iou: Tensor, alpha: float, gamma: float, need_grad: bool = True
) -> tuple[Tensor, Tensor | None]:
    """IA-BCE of logits ``x`` at the ``positive`` (bool) pairs with their ``iou`` (broadcastable) and,
    with ``need_grad``, its derivative d loss/dx, both of ``x``'s shape (the module docstring's
    formulas)."""
    p = torch.sigmoid(x)
    s = F.logsigmoid(-x).neg_()
    t = torch.where(positive, (p**alpha * iou ** (1.0 - alpha)).clamp_(min=0.01), 0.0)
    m, dm_dp = power_and_derivative(p, gamma)
    loss = torch.where(positive, s - t * x, m * s)
    if not need_grad:
        return loss, None
    dm = dm_dp.mul_(p * (1.0 - p))  # dp/dx = p·(1 − p)
    return loss, torch.where(positive, p - t, torch.addcmul(m * p, s, dm))


class _FusedIABCE(torch.autograd.Function):
    """Forward: the loss and, when the logits need a gradient, its elementwise derivative (saved: one
    tensor of the logits' size); backward: a multiply."""

    @staticmethod
    def forward(ctx, x: Tensor, positive: Tensor, iou: Tensor, alpha: float, gamma: float) -> Tensor:
        need = ctx.needs_input_grad[0]
        loss, grad = ia_bce_value_and_grad(x.detach(), positive, iou.detach(), alpha, gamma, need)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (grad,) = ctx.saved_tensors
        return (None if grad is None else grad_out * grad), None, None, None, None


def fused_ia_bce(x: Tensor, positive: Tensor, iou: Tensor, alpha: float, gamma: float) -> Tensor:
    """Unchecked elementwise IA-BCE of logits ``x`` (``positive`` bool of ``x``'s shape, ``iou``
    broadcastable to it, read without gradient) → ``x``'s shape; the backward keeps only the
    elementwise derivative (see :class:`_FusedIABCE`)."""
    return _FusedIABCE.apply(x, positive, iou, alpha, gamma)
