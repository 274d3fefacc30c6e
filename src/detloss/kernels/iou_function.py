"""The fused IoU Function and the choice of its execution path.

Which path runs (eager, the default; the size thresholds and their measurements are in
:mod:`.runtime`):

- plain kinds (``IOU_KINDS``, no modifier), up to ``KEPT_PARTS_MAX_BOXES`` boxes: :class:`_FusedIoU`
  keeping the forward's :class:`~.iou.Parts` for :func:`~.iou_grad.parts_backward` (no autograd
  graph: the fewest launches);
- plain kinds up to ``PLAIN_AUTOGRAD_MAX_BOXES`` boxes: autograd of :func:`~.iou.iou_forward` itself
  (its backward reuses the forward's temporaries: fastest at these sizes);
- plain kinds above it: :class:`_FusedIoU` recomputing the parts in the backward
  (:func:`~.iou_grad.iou_backward`), in cache-sized blocks, keeping only the two box tensors
  (4-7x less memory, and faster);
- modifiers (``alpha``, ``inner_ratio``, ``focaler``): autograd of :func:`~.iou.iou_forward` at every
  size. A hand-derived backward does not pay there: the modifiers are used on the matched boxes of a
  detector (10³-10⁵ boxes), where autograd is already the faster eager path.

With :func:`detloss.set_compile` the Function's forward and backward (plain kinds) and the autograd
formula (modifiers) run compiled by ``torch.compile``. The hand-derived paths are
once-differentiable (no double backward), like every fused Function.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import runtime
from .geometry import Overlap
from .iou import (
    IOU_KINDS,
    PLAIN,
    Modifiers,
    Parts,
    broadcast_shape,
    iou_forward,
    iou_parts,
    kind_value,
    output,
)
from .iou_grad import Grads, Need, iou_backward, parts_backward


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
    b1: Tensor, b2: Tensor, grad: Tensor, kind: str, eps: float, loss: bool, need: Need,
    image_size: tuple[float, float] | None,
) -> Grads:
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
        return output(kind_value(kind, p, eps, mods), loss, reduce)

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
    if not runtime.compile_enabled():
        n = _num_boxes(b1, b2)
        if n <= runtime.KEPT_PARTS_MAX_BOXES:
            return _FusedIoU.apply(b1, b2, kind, eps, loss, reduce, mods, True)
        if n <= runtime.PLAIN_AUTOGRAD_MAX_BOXES:
            return iou_forward(b1, b2, kind, eps, loss, reduce, mods)
    return _FusedIoU.apply(b1, b2, kind, eps, loss, reduce, mods, False)


def _num_boxes(b1: Tensor, b2: Tensor) -> int:
    return math.prod(broadcast_shape(b1.shape[:-1], b2.shape[:-1]))
