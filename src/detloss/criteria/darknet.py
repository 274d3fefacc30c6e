"""What only YOLOv3 and YOLOv4 share (the darknet family: one responsible anchor slot per box and scale,
an ignore threshold for the rest): the constructor and input handling of both criteria, the per-layout
tables, and the box, class and best-IoU terms over all scales at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assign import PaddedTargets, best_iou_with
from ..boxes import convert
from ..checks import check_eps, check_num_classes, check_number, check_unit
from ..codecs import decode_yolo, yolo_grid
from ..distributed import global_count
from ..iou import compute_dtype, iou_xyxy
from ..labels import smoothed
from .box_iou import iou_options
from .cache import ConstantCache
from .heads import gather_head, split_yolo_heads
from .parts import check_gains, combine, focal_terms
from .result import LossResult
from .targets import Targets, as_padded, batch_size


@dataclass
class YoloTerms:
    """The per-criterion sums of YOLOv3/v4 over all scales at once.

    Attributes:
        obj_logit: ``(B, P)`` objectness logits of all scales, P = Σ_s A·H_s·W_s, in slot order.
        best_iou: ``(B, P)`` best IoU of each decoded prediction with the boxes its scale compares
            with (no gradient), ``fill`` where there are none.
        box, cls: ``(B,)`` per-image sums over the responsible slots.
    """

    obj_logit: Tensor
    best_iou: Tensor
    box: Tensor
    cls: Tensor


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

        box[b] = Σ win · box_scale · (1 − IoU_kind(decode(t) · unit, target))     (sums over image b)
        cls[b] = Σ win · Σ_c BCE(t_c, cls_target)
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
    box = ((1.0 - iou) * (win * box_scale)).flatten(1).sum(1)
    logits = raw[..., 5:]
    cls = F.binary_cross_entropy_with_logits(
        logits, cls_target.expand_as(logits), win[..., None], reduction="none"
    ).flatten(1).sum(1)
    with torch.no_grad():  # the background / ignore masks are constants of the loss
        dense = torch.cat([v[..., :4].flatten(1, 3) for v in views], 1)  # (B, P, 4)
        dense = decode_yolo(dense, tables.dense_offset, tables.dense_anchor, tables.dense_stride)
        keep = held.transpose(1, 2)[:, tables.dense_scale]  # (B, P, M)
        best = best_iou_with(convert(dense, "cxcywh", "xyxy"), held_boxes, keep, fill)
    return YoloTerms(torch.cat(planes, 1), best, box, cls)


@dataclass
class DarknetInputs:
    """One call's checked inputs.

    Attributes:
        views: S head views ``(B, A, H, W, 5 + C)`` in the compute dtype (float32 for half heads).
        targets: padded targets, boxes xyxy input pixels in the compute dtype.
        grids: S grid sizes ``(H, W)``. input_size: ``(H, W)`` pixels. tables: the layout's constants.
    """

    views: list[Tensor]
    targets: PaddedTargets
    grids: list[tuple[int, int]]
    input_size: tuple[int, int]
    tables: YoloTables


class DarknetLoss(nn.Module):
    """The constructor checks, input handling and objectness term of :class:`YOLOv3Loss` and
    :class:`YOLOv4Loss` (their docstrings give the arguments and formulas)."""

    def __init__(
        self,
        num_classes: int,
        strides: tuple[int, ...],
        scale_anchors: Sequence[Sequence[tuple[float, float]]],
        *,
        label_smoothing: float,
        iou_kind: str,
        iou_eps: float,
        iou_modifiers: Mapping[str, object] | None,
        obj_gamma: float,
        obj_alpha: float,
        gains: dict[str, float],
        validate: bool,
        reduce_across_ranks: bool,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        check_unit("label_smoothing", label_smoothing)
        self.iou_modifiers = iou_options(iou_kind, iou_modifiers)
        check_eps(iou_eps, "iou_eps")
        self.obj_gamma = check_number("obj_gamma", obj_gamma, low=0.0)
        self.obj_alpha = check_number("obj_alpha", obj_alpha, high=1.0)
        self.strides, self.scale_anchors = strides, tuple(tuple(a) for a in scale_anchors)
        self.label_smoothing = label_smoothing
        self.iou_kind, self.iou_eps = iou_kind, iou_eps
        self.gains = check_gains(**gains)
        self.validate, self.reduce_across_ranks = bool(validate), bool(reduce_across_ranks)
        self._constants = ConstantCache()

    def _inputs(self, preds: Sequence[Tensor], targets: Targets) -> DarknetInputs:
        """Check the heads, view them ``(B, A, H, W, 5 + C)`` in the compute dtype, pad the targets
        (their centres must lie inside the input) and fetch the layout's tables."""
        batch, c = batch_size(targets), self.num_classes
        num_anchors = [len(a) for a in self.scale_anchors]
        views = split_yolo_heads(preds, num_anchors, c, self.strides, batch)
        dtype = compute_dtype(views[0])
        views = [v.to(dtype) for v in views]  # half precision computed in float32
        dev = views[0].device
        grids = [(v.shape[2], v.shape[3]) for v in views]
        input_size = (grids[0][0] * self.strides[0], grids[0][1] * self.strides[0])
        padded = as_padded(
            targets, c, dtype=dtype, device=dev, validate=self.validate, input_size=input_size
        )
        tables = self._constants.get(
            (batch, tuple(grids), dtype, dev),
            lambda: yolo_tables(batch, self.scale_anchors, self.strides, grids, 5 + c, dtype, dev),
        )
        return DarknetInputs(views, padded, grids, input_size, tables)

    def _class_targets(self, hot: Tensor) -> Tensor:
        """The class targets ``(*, C)`` of one-hot (or multi-hot) vectors: smoothed with
        ``label_smoothing`` ε, ``hot·(1 − ε) + ε/C``."""
        return smoothed(hot, self.label_smoothing) if self.label_smoothing else hot

    def _batch_norm(self, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor | int:
        """The batch size as a normaliser: ``max(B, 1)``, or with ``reduce_across_ranks`` the batch
        size summed over the ranks divided by their number (:func:`detloss.distributed.global_count`)."""
        if self.reduce_across_ranks:
            return global_count(torch.tensor(float(batch), device=device), True, at_least=1.0).to(dtype)
        return max(batch, 1)

    def _result(self, terms: YoloTerms, occupied: Tensor, weight: Tensor, norm: Tensor | int) -> LossResult:
        """The result of the box and class terms and the objectness ``Σ weight · focal(t_obj, occupied)``
        (``(B, P)`` masks), each divided by ``norm`` and multiplied by its gain."""
        t = occupied.to(terms.obj_logit.dtype)
        obj = focal_terms(terms.obj_logit, t, weight.to(t.dtype), self.obj_alpha, self.obj_gamma).sum(1)
        return combine({"box": terms.box, "obj": obj, "cls": terms.cls}, self.gains, norm)
