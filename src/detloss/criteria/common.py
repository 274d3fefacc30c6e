"""What every detector criterion shares: the result type and the head-output checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..assign import best_iou_with, gather_at_cells
from ..boxes import check_tensor, convert
from ..codecs import decode_yolo, decode_yolo_grid
from ..iou import check_modifiers, iou_xyxy
from ..losses import weight_reduce


@dataclass
class LossResult:
    """A criterion's output.

    Attributes:
        total: scalar tensor to call ``.backward()`` on.
        components: named scalar parts, e.g. ``{"box", "obj", "cls"}``.
    """

    total: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)


def split_yolo_heads(
    preds: Sequence[Tensor],
    num_anchors: Sequence[int],
    num_classes: int,
    strides: Sequence[int],
    batch_size: int,
) -> list[Tensor]:
    """Check raw YOLO head outputs and view each as ``(B, A, H, W, 5 + C)``.

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
    if isinstance(preds, Tensor) or not isinstance(preds, Sequence):
        raise TypeError("preds must be a list with one tensor per scale")
    if len(preds) != len(strides):
        raise ValueError(f"preds has {len(preds)} scales, the criterion has {len(strides)}")
    k = 5 + num_classes
    views, input_size = [], None
    for i, (p, a, s) in enumerate(zip(preds, num_anchors, strides, strict=True)):
        check_tensor(f"preds[{i}]", p)
        if not p.is_floating_point():
            raise TypeError(f"preds[{i}] must have a floating dtype, got {p.dtype}")
        if p.dim() != 4 or p.shape[1] != a * k:
            raise ValueError(
                f"preds[{i}] must have shape (B, {a}*(5+{num_classes})={a * k}, H, W), "
                f"got {tuple(p.shape)}"
            )
        if p.shape[0] != batch_size:
            raise ValueError(
                f"preds[{i}] has batch size {p.shape[0]} but targets has {batch_size} images"
            )
        size = (p.shape[2] * s, p.shape[3] * s)
        if input_size is None:
            input_size = size
        elif size != input_size:
            raise ValueError(
                f"preds[{i}] grid {tuple(p.shape[2:])} × stride {s} gives input size {size}, "
                f"but preds[0] gives {input_size}: strides and grids disagree"
            )
        b, _, h, w = p.shape
        views.append(p.view(b, a, k, h, w).permute(0, 1, 3, 4, 2))
    return views


def positive_ints(name: str, values: Sequence) -> tuple[int, ...]:
    """Integral positive numbers (int, numpy int, 8.0) → ints; anything else is a ``ValueError``."""
    try:
        out = tuple(int(v) for v in values)
        ok = len(out) > 0 and all(o == v and o >= 1 for o, v in zip(out, values, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    return out


def check_unit(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def anchor_table(anchors: object, num_scales: int) -> tuple[tuple[tuple[float, float], ...], ...]:
    """Anchors ``(S, A, 2)``, flat ``(S·A, 2)`` or YAML-style ``(S, 2·A)`` (YOLOv5's
    ``[[10,13, 16,30, 33,23], ...]``) → nested per scale: ``S`` groups of ``A`` positive (w, h)."""
    try:
        t = torch.as_tensor(anchors, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"anchors must be numbers of shape (S, A, 2), (S*A, 2) or (S, 2*A), got {anchors!r}"
        ) from None
    nested_ok = t.dim() == 3 and t.shape[0] == num_scales and t.shape[2] == 2
    flat_ok = t.dim() == 2 and (t.shape[1] == 2 or (t.shape[0] == num_scales and t.shape[1] % 2 == 0))
    flat = t.reshape(-1, 2) if (nested_ok or flat_ok) and t.numel() else None
    if flat is None or flat.shape[0] % num_scales or not bool((flat > 0).all()):
        raise ValueError(
            f"anchors must be {num_scales} groups (one per stride) of positive (w, h) pairs in input pixels, "
            f"got shape {tuple(t.shape)}"
        )
    per = flat.shape[0] // num_scales
    return tuple(
        tuple((float(w), float(h)) for w, h in flat[i * per : (i + 1) * per].tolist())
        for i in range(num_scales)
    )


def yolo_held_terms(
    view: Tensor,
    cell: Tensor,
    win: Tensor,
    anchors: Tensor,
    stride: int,
    target: Tensor,
    box_scale: Tensor,
    cls_target: Tensor,
    iou_kind: str,
    iou_eps: float,
    unit: Tensor | float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """One scale's box and class sums at the responsible slots, shared by YOLOv3 and YOLOv4.

    The head is decoded with gradient only at each box's cell (a sparse gather, not the whole head)::

        box = Σ win · box_scale · (1 − IoU_kind(decode(t) · unit, target))
        cls = Σ win · Σ_c BCE(t_c, cls_target)

    Args:
        view: ``(B, A, H, W, 5 + C)`` head view. cell: ``(B, M, 2)`` int64 ``(gx, gy)``.
        win: ``(B, M, A)`` weight of each (box, anchor) slot (1 where the box holds it).
        anchors: ``(A, 2)`` pixels. target: ``(B, M, 1, 4)`` xyxy, in the units ``unit`` gives.
        box_scale: ``(B, M, 1)``. cls_target: broadcastable to ``(B, M, A, C)``.

    Returns:
        The objectness plane ``(B, A, H, W)`` (with gradient) and the scalar box and class sums.
    """
    head = view.permute(0, 1, 4, 2, 3)  # (B, A, 5 + C, H, W), the memory order of the raw head
    obj_logit, raw = gather_at_cells(head, cell)  # (B, A, H, W), (B, M, A, 5 + C)
    pred = convert(decode_yolo(raw, cell[:, :, None].to(raw.dtype), anchors, stride), "cxcywh", "xyxy")
    iou = iou_xyxy(pred * unit, target, iou_kind, iou_eps)
    box = weight_reduce(1.0 - iou, win * box_scale, "sum")
    logits = raw[..., 5:]
    bce = F.binary_cross_entropy_with_logits(logits, cls_target.expand_as(logits), reduction="none")
    return obj_logit, box, weight_reduce(bce.sum(-1), win, "sum")


def yolo_best_iou(
    view: Tensor, anchors: Tensor, stride: int, boxes: Tensor, keep: Tensor, fill: float
) -> Tensor:
    """Best IoU of every decoded prediction of a head with the kept boxes of its image, no gradient.

    Returns ``(B, A, H, W)``; ``fill`` where an image keeps no box.
    """
    with torch.no_grad():  # the background / ignore masks are constants of the loss
        dense = convert(decode_yolo_grid(view, anchors, stride), "cxcywh", "xyxy")
        return best_iou_with(dense.flatten(1, 3), boxes, keep, fill).view(view.shape[:4])


IOU_MODIFIERS = ("alpha", "inner_ratio", "focaler")


def iou_options(iou_kind: str, iou_modifiers: Mapping[str, object] | None) -> dict[str, object]:
    """Check a criterion's box-loss IoU (``iou_kind`` and the keyword modifiers of
    :func:`detloss.bbox_iou`: ``alpha``, ``inner_ratio``, ``focaler``) and return the modifiers as
    keyword arguments for :func:`detloss.iou.iou_xyxy`. ``kind="mpdiou"``'s image size is the
    criterion's input size, known only in ``forward``."""
    mods = dict(iou_modifiers or {})
    unknown = sorted(set(mods) - set(IOU_MODIFIERS))
    if unknown:
        raise ValueError(f"iou_modifiers: unknown key(s) {unknown}; allowed: {', '.join(IOU_MODIFIERS)}")
    check_modifiers(iou_kind, **mods, image_size=1.0 if iou_kind == "mpdiou" else None)
    return mods
