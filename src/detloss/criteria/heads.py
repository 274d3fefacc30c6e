"""Reading raw YOLO head outputs: their ``(B, A, H, W, K)`` views, and gathers of the rows at given
cells whose backward fills one gradient buffer per head (the heads' checks are in
:mod:`detloss.checks`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..checks import check_heads


def split_yolo_heads(
    preds: Sequence[Tensor],
    num_anchors: Sequence[int],
    num_classes: int,
    strides: Sequence[int],
    batch_size: int,
) -> list[Tensor]:
    """Check raw YOLO head outputs (:func:`check_heads`) and view each as ``(B, A, H, W, 5 + C)``.

    Args:
        preds: one tensor per scale, ``(B, A*(5+C), H, W)``, channel ``a*(5+C) + k`` with
            k = (tx, ty, tw, th, objectness, class_0 … class_{C−1}).
        num_anchors: anchors per scale.
        num_classes: C.
        strides: per scale; the input size ``stride × (H, W)`` must agree across scales.
        batch_size: the number of target dicts.

    Returns:
        Views (no copy) of shape ``(B, A, H, W, 5 + C)``, one per scale.
    """
    k = 5 + num_classes
    layouts = [f"{a}*(5+{num_classes})" for a in num_anchors]
    check_heads(preds, [a * k for a in num_anchors], layouts, strides, batch_size)
    return [
        p.view(p.shape[0], a, k, p.shape[2], p.shape[3]).permute(0, 1, 3, 4, 2)
        for p, a in zip(preds, num_anchors, strict=True)
    ]


class _HeadAtCells(torch.autograd.Function):
    """Objectness plane and per-box rows of one head; the backward pass fills a single gradient buffer
    (two separate indexing ops would each allocate and zero a head-sized gradient, then add them)."""

    @staticmethod
    def forward(ctx, head: Tensor, obj_channel: int, flat_index: Tensor) -> tuple[Tensor, Tensor]:
        ctx.shape, ctx.obj_channel = head.shape, obj_channel
        ctx.save_for_backward(flat_index)
        # a flat take: advanced indexing with a slice between the indices copies the whole head
        return head[:, :, obj_channel], head.reshape(-1)[flat_index]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_obj: Tensor | None, g_rows: Tensor | None) -> tuple[Tensor | None, None, None]:
        (flat_index,) = ctx.saved_tensors
        ref = g_obj if g_obj is not None else g_rows
        grad = ref.new_zeros(ctx.shape)
        if g_obj is not None:
            grad[:, :, ctx.obj_channel] = g_obj
        if g_rows is not None:  # summed where boxes share a cell
            grad.view(-1).index_add_(0, flat_index.flatten(), g_rows.flatten())
        return grad, None, None


def gather_at_cells(head: Tensor, cell: Tensor, obj_channel: int = 4) -> tuple[Tensor, Tensor]:
    """The objectness plane of a head and its values at each box's cell, for every anchor.

    Args:
        head: ``(B, A, K, H, W)``, the memory order of a raw ``(B, A·K, H, W)`` head output.
        cell: ``(B, M, 2)`` int64 ``(gx, gy)``.
        obj_channel: the channel returned as a plane.

    Returns:
        ``(B, A, H, W)`` channel ``obj_channel`` and ``(B, M, A, K)`` rows; gradients flow back to the
        plane and to the gathered cells only (summed where boxes share a cell).
    """
    b, a, k, h, w = head.shape
    dev = head.device
    bi = torch.arange(b, device=dev).view(b, 1, 1)
    ai = torch.arange(a, device=dev).view(1, 1, a)
    base = (bi * a + ai) * (k * h * w) + cell[..., 1:2] * w + cell[..., 0:1]  # (B, M, A)
    return gather_head(head, base[..., None] + torch.arange(k, device=dev) * (h * w), obj_channel)


def gather_head(head: Tensor, flat_index: Tensor, obj_channel: int = 4) -> tuple[Tensor, Tensor]:
    """The objectness plane ``(B, A, H, W)`` of a head ``(B, A, K, H, W)`` and its values at
    ``flat_index`` (any shape, indices into the head's contiguous memory); one gradient buffer."""
    return _HeadAtCells.apply(head, obj_channel, flat_index)
