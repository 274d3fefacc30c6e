"""What every detector criterion shares: the result type and the head-output checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..assign import best_iou_with, gather_head
from ..boxes import convert
from ..checks import check_modifiers, check_tensor
from ..codecs import decode_yolo, yolo_grid
from ..iou import iou_xyxy
from ..kernels import fused_focal
from ..losses import weight_reduce

T = TypeVar("T")


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


def class_targets(labels: Tensor, num_classes: int, smoothing: float, dtype: torch.dtype) -> Tensor:
    """``(*, C)`` smoothed one-hot ``onehot·(1 − ε) + ε/C`` of checked class ids, without a host sync
    (``F.one_hot`` and :func:`detloss.smooth_labels` read the ids to check them)."""
    onehot = (labels[..., None] == torch.arange(num_classes, device=labels.device)).to(dtype)
    return onehot * (1.0 - smoothing) + smoothing / num_classes if smoothing else onehot


def focal_sum(
    logits: Tensor,
    target: Tensor,
    weight: Tensor,
    alpha: float,
    gamma: float,
    pos_weight: Tensor | None = None,
) -> Tensor:
    """``Σ weight · BCE(logits, target; pos_weight) · α_t · (1 − p_t)^γ`` (:func:`detloss.sigmoid_focal_loss`
    without its argument checks, which the criteria ran at construction: the checks branch on the
    float hyper-parameters, which ``torch.compile(dynamic=True)`` traces as symbols)."""
    if gamma == 0 and alpha < 0:  # plain BCE: PyTorch's fused op (the kernel computes the same)
        return F.binary_cross_entropy_with_logits(
            logits, target, weight, pos_weight=pos_weight, reduction="sum"
        )
    return weight_reduce(fused_focal(logits, target, pos_weight, alpha, gamma), weight, "sum")


@dataclass
class YoloTerms:
    """The per-criterion sums of YOLOv3/v4 over all scales at once.

    Attributes:
        obj_logit: ``(B, P)`` objectness logits of all scales, P = Σ_s A·H_s·W_s, in slot order.
        best_iou: ``(B, P)`` best IoU of each decoded prediction with the boxes its scale compares
            with (no gradient), ``fill`` where there are none.
        box, cls: scalar sums over the responsible slots.
    """

    obj_logit: Tensor
    best_iou: Tensor
    box: Tensor
    cls: Tensor


class ConstantCache:
    """A criterion's constant tensors (grids, index tables) per input layout, built once in eager mode.

    Rebuilding them costs a dozen small launches per call; YOLO's ``Detect`` caches its grids the same
    way. Under ``torch.compile`` they are built inside the traced graph instead (the compiler folds
    them), so the cache never leaks tensors into a graph or guards on its contents.
    """

    def __init__(self, size: int = 8) -> None:
        self._items: dict[tuple, object] = {}
        self._size = size

    def get(self, key: tuple, build: Callable[[], T]) -> T:
        if torch.compiler.is_compiling():
            return build()
        # tensors made under inference_mode cannot be saved for a later backward: kept apart
        key = (*key, torch.is_inference_mode_enabled())
        value = self._items.get(key)
        if value is None:
            if len(self._items) >= self._size:
                self._items.clear()
            value = self._items[key] = build()
        return value  # type: ignore[return-value]


@dataclass
class YoloTables:
    """The per-layout constants of :func:`yolo_terms` (S scales, P = Σ_s A·H_s·W_s predictions).

    Attributes:
        anchors: ``(S, A, 2)`` pixels. stride: ``(S, 1, 1)``.
        plane_base: ``(B, 1, S, A)`` int64 flat offset of channel 0 of plane (b, a) in head s.
        width: ``(S, 1)`` int64 W_s. channel: ``(S, 1, K)`` int64 offset of channel k, ``k · H_s·W_s``.
        dense_offset, dense_anchor: ``(P, 2)`` cell and anchor of every prediction; dense_stride ``(P, 1)``.
        dense_scale: ``(P,)`` int64 scale of every prediction.
    """

    anchors: Tensor
    stride: Tensor
    plane_base: Tensor
    width: Tensor
    channel: Tensor
    dense_offset: Tensor
    dense_anchor: Tensor
    dense_stride: Tensor
    dense_scale: Tensor


def yolo_tables(
    batch: int,
    anchors: Sequence[Sequence[Sequence[float]]],
    strides: Sequence[int],
    grids: Sequence[tuple[int, int]],
    channels: int,
    dtype: torch.dtype,
    device: torch.device,
) -> YoloTables:
    """Build :class:`YoloTables` for heads ``(B, A·K, H_s, W_s)`` with ``K = channels``."""
    anchor_t = torch.tensor(anchors, dtype=dtype, device=device)  # (S, A, 2)
    a = anchor_t.shape[1]
    hw = torch.tensor([h * w for h, w in grids], device=device)
    plane = torch.arange(batch * a, device=device).view(batch, 1, 1, a)
    offset, anchor, scale = [], [], []
    for s, (h, w) in enumerate(grids):
        offset.append(yolo_grid(h, w, dtype=dtype, device=device).expand(a, h, w, 2).reshape(-1, 2))
        anchor.append(anchor_t[s].view(a, 1, 1, 2).expand(a, h, w, 2).reshape(-1, 2))
        scale.append(a * h * w)
    dense_scale = torch.repeat_interleave(
        torch.arange(len(grids), device=device), torch.tensor(scale, device=device), output_size=sum(scale)
    )
    stride = torch.tensor(strides, dtype=dtype, device=device)
    return YoloTables(
        anchors=anchor_t,
        stride=stride.view(-1, 1, 1),
        plane_base=plane * (channels * hw).view(1, 1, -1, 1),
        width=torch.tensor([w for _, w in grids], device=device).view(-1, 1),
        channel=(torch.arange(channels, device=device) * hw[:, None]).view(-1, 1, channels),
        dense_offset=torch.cat(offset),
        dense_anchor=torch.cat(anchor),
        dense_stride=stride[dense_scale, None],
        dense_scale=dense_scale,
    )


def yolo_terms(
    views: Sequence[Tensor],
    cell: Tensor,
    win: Tensor,
    tables: YoloTables,
    target: Tensor,
    box_scale: Tensor,
    cls_target: Tensor,
    held: Tensor,
    held_boxes: Tensor,
    iou_kind: str,
    iou_eps: float,
    fill: float,
    unit: Tensor | float = 1.0,
    iou_kw: Mapping[str, object] | None = None,
) -> YoloTerms:
    """The box and class sums at the responsible slots and the dense best IoU, shared by YOLOv3 and
    YOLOv4: one gather per head (indexed for all scales at once), then one decode, one IoU and one
    BCE over the slots of all scales::

        box = Σ win · box_scale · (1 − IoU_kind(decode(t) · unit, target))
        cls = Σ win · Σ_c BCE(t_c, cls_target)
        best_iou = max over the held boxes of IoU(decode(t), box)      (dense, pixels, no gradient)

    The head is decoded with gradient only at each box's cell (a sparse gather, not the whole head).

    Args:
        views: S head views ``(B, A, H, W, 5 + C)``. cell: ``(B, M, S, 2)`` int64 ``(gx, gy)``.
        win: ``(B, M, S, A)`` weight of each (box, scale, anchor) slot (1 where the box holds it).
        tables: the layout's constants (:func:`yolo_tables`).
        target: ``(B, M, 1, 1, 4)`` xyxy, in the units ``unit`` gives.
        box_scale: ``(B, M, 1, 1)``. cls_target: broadcastable to ``(B, M, S, A, C)``.
        held: ``(B, M, S)`` bool, the boxes each scale's best IoU compares with; held_boxes:
            ``(B, M, 4)`` xyxy pixels.
        fill: best IoU where a scale holds no box of the image.
        iou_kw: keyword modifiers and ``image_size`` for the box loss's IoU (:func:`iou_options`).
    """
    dtype = views[0].dtype
    # flat index of every (box, scale, anchor, channel) in its head, all scales at once
    base = tables.plane_base + cell[..., 1:2] * tables.width + cell[..., 0:1]  # (B, M, S, A)
    index = base[..., None] + tables.channel  # (B, M, S, A, K)
    planes, rows = [], []
    for s, v in enumerate(views):  # the heads are separate tensors: one gather each
        obj, r = gather_head(v.permute(0, 1, 4, 2, 3), index[:, :, s])  # (B, A, H, W), (B, M, A, K)
        planes.append(obj.flatten(1))
        rows.append(r)
    raw = torch.stack(rows, 2)  # (B, M, S, A, 5 + C)
    pred = decode_yolo(raw, cell[..., None, :].to(dtype), tables.anchors, tables.stride)
    iou = iou_xyxy(convert(pred, "cxcywh", "xyxy") * unit, target, iou_kind, iou_eps, **(iou_kw or {}))
    box = weight_reduce(1.0 - iou, win * box_scale, "sum")
    logits = raw[..., 5:]
    cls = F.binary_cross_entropy_with_logits(
        logits, cls_target.expand_as(logits), win[..., None], reduction="sum"
    )
    with torch.no_grad():  # the background / ignore masks are constants of the loss
        dense = torch.cat([v[..., :4].flatten(1, 3) for v in views], 1)  # (B, P, 4)
        dense = decode_yolo(dense, tables.dense_offset, tables.dense_anchor, tables.dense_stride)
        keep = held.transpose(1, 2)[:, tables.dense_scale]  # (B, P, M)
        best = best_iou_with(convert(dense, "cxcywh", "xyxy"), held_boxes, keep, fill)
    return YoloTerms(torch.cat(planes, 1), best, box, cls)


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
