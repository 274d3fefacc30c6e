"""Reading raw YOLO head outputs: their checks, their ``(B, A, H, W, K)`` views, and gathers of the
rows at given cells whose backward fills one gradient buffer per head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..checks import check_tensor


def check_heads(
    preds: Sequence[Tensor],
    channels: Sequence[int],
    layouts: Sequence[str],
    strides: Sequence[int],
    batch_size: int,
) -> list[tuple[int, int]]:
    """Check raw head outputs, one ``(B, channels[i], H, W)`` floating tensor per stride, whose input
    size ``stride × (H, W)`` agrees across scales; ``layouts[i]`` spells head i's channels in the
    error messages (e.g. ``"3*(5+80)"``). Returns the grid sizes ``(H, W)``."""
    if isinstance(preds, Tensor) or not isinstance(preds, Sequence):
        raise TypeError("preds must be a list with one tensor per scale")
    if len(preds) != len(strides):
        raise ValueError(f"preds has {len(preds)} scales, the criterion has {len(strides)} strides")
    sizes, input_size = [], None
    for i, (p, c, layout, s) in enumerate(zip(preds, channels, layouts, strides, strict=True)):
        check_tensor(f"preds[{i}]", p)
        if not p.is_floating_point():
            raise TypeError(f"preds[{i}] must have a floating dtype, got {p.dtype}")
        if p.dim() != 4 or p.shape[1] != c:
            raise ValueError(f"preds[{i}] must have shape (B, {layout}={c}, H, W), got {tuple(p.shape)}")
        if p.shape[0] != batch_size:
            raise ValueError(f"preds[{i}] has batch size {p.shape[0]} but targets has {batch_size} images")
        size = (p.shape[2] * s, p.shape[3] * s)
        if input_size is None:
            input_size = size
        elif size != input_size:
            raise ValueError(
                f"preds[{i}] grid {tuple(p.shape[2:])} × stride {s} gives input size {size}, "
                f"but preds[0] gives {input_size}: strides and grids disagree"
            )
        sizes.append((p.shape[2], p.shape[3]))
    return sizes


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


def check_head_dict(
    preds: object, box_channels: int, num_classes: int, strides: Sequence[int], batch_size: int
) -> list[tuple[int, int]]:
    """Check the mapping an ultralytics head hands its loss, ``{"boxes": (B, box_channels, A),
    "scores": (B, C, A), "feats": [one (B, ·, H_l, W_l) map per stride]}`` (the levels concatenated
    along A in stride order, A = Σ H_l·W_l), whose input size ``stride × (H_l, W_l)`` agrees across
    levels. Returns the grid sizes ``(H_l, W_l)``."""
    missing = [k for k in ("boxes", "scores", "feats") if k not in preds]  # type: ignore[operator]
    if missing:
        raise ValueError(
            f"preds: a mapping of heads needs the keys 'boxes', 'scores', 'feats'; missing {missing}"
        )
    boxes, scores, feats = preds["boxes"], preds["scores"], preds["feats"]  # type: ignore[index]
    if isinstance(feats, Tensor) or not isinstance(feats, Sequence):
        raise TypeError("preds['feats'] must be a list with one feature map per stride")
    if len(feats) != len(strides):
        raise ValueError(f"preds['feats'] has {len(feats)} levels, the criterion has {len(strides)} strides")
    sizes, input_size = [], None
    for i, (f, s) in enumerate(zip(feats, strides, strict=True)):
        check_tensor(f"preds['feats'][{i}]", f)
        if f.dim() != 4:
            raise ValueError(f"preds['feats'][{i}] must have shape (B, channels, H, W), got {tuple(f.shape)}")
        size = (f.shape[2] * s, f.shape[3] * s)
        if input_size is None:
            input_size = size
        elif size != input_size:
            raise ValueError(
                f"preds['feats'][{i}] grid {tuple(f.shape[2:])} × stride {s} gives input size {size}, "
                f"but preds['feats'][0] gives {input_size}: strides and grids disagree"
            )
        sizes.append((f.shape[2], f.shape[3]))
    num_anchors = sum(h * w for h, w in sizes)
    for key, rows in (("boxes", box_channels), ("scores", num_classes)):
        t = check_tensor(f"preds['{key}']", preds[key])  # type: ignore[index]
        if not t.is_floating_point():
            raise TypeError(f"preds['{key}'] must have a floating dtype, got {t.dtype}")
        if t.dim() != 3 or t.shape[1] != rows or t.shape[2] != num_anchors:
            raise ValueError(
                f"preds['{key}'] must have shape (B, {rows}, A={num_anchors}) (A from preds['feats']), "
                f"got {tuple(t.shape)}"
            )
        if t.shape[0] != batch_size:
            raise ValueError(
                f"preds['{key}'] has batch size {t.shape[0]} but targets has {batch_size} images"
            )
    if boxes.dtype != scores.dtype or boxes.device != scores.device:
        raise ValueError("preds['boxes'] and preds['scores'] must share dtype and device")
    return sizes
