"""YOLOv3 criterion, reproducing tensorflow-yolov3 (``core/yolov3.py`` loss, ``core/dataset.py`` labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..assign import build_yolov3_targets, pad_targets
from ..checks import check_eps, check_num_classes, check_unit, positive_ints
from ..distributed import global_count
from ..iou import IoUKind, compute_dtype
from .common import (
    ConstantCache,
    anchor_table,
    class_targets,
    focal_sum,
    iou_options,
    split_yolo_heads,
    yolo_tables,
    yolo_terms,
)
from .result import LossResult

#: The standard COCO anchors (input pixels), three per scale for strides 8, 16, 32.
COCO_ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)


class YOLOv3Loss(nn.Module):
    """YOLOv3 loss as tensorflow-yolov3 computes it, its label builder included.

    Per scale, with resp the responsible mask of :func:`detloss.assign.build_yolov3_targets`::

        box = resp · (2 − w·h / (W_in·H_in)) · (1 − GIoU(pred, target))          w, h target pixels
        bgd = (1 − resp) · [max IoU(pred, boxes assigned on the scale) < iou_loss_thresh]
        obj = |resp − σ(t_obj)|² · (resp + bgd) · BCE(t_obj, resp)
        cls = resp · Σ_c BCE(t_c, onehot·(1 − 0.01) + 0.01/C)

    GIoU has eps 1e-6 in both denominators. Each term is summed over cells, anchors and channels,
    averaged over the batch and summed over the scales; ``total = box + obj + cls``.

    Args:
        num_classes: C.
        anchors: ``(S, A, 2)`` or ``(S·A, 2)`` anchor (w, h) in input pixels, scale order = ``strides``.
        strides: input pixels per cell of each scale; ``preds`` come in this order.
        anchor_iou_thresh: label building, an anchor takes a box when IoU > this (0.3).
        iou_loss_thresh: a prediction overlapping a box by at least this is not background (0.5).
        label_smoothing: the class target's delta (0.01).
        max_boxes_per_scale: the ignore test's buffer per scale and image (150).
        fallback_clip_bug: reproduce the last commit's clipping of the fallback cell with the last
            scale's grid size (off by default).
        iou_kind, iou_eps: the box loss's IoU (option; default the original's GIoU with eps 1e-6).
        iou_modifiers: keyword modifiers of :func:`detloss.bbox_iou` for the box loss's IoU, as a
            dict (``alpha``, ``inner_ratio`` or ``focaler``, e.g. ``{"alpha": 3.0}``); ``iou_kind="mpdiou"``
            takes the input size as its image size.
        obj_gamma, obj_alpha: focal weighting of the objectness, ``BCE · α_t · |resp − σ|^γ``
            (:func:`detloss.sigmoid_focal_loss`); the original is γ = 2 without α (α < 0).
        box_gain, obj_gain, cls_gain: multiply each term (option; default 1).
        validate: check targets (finite, positive size, class range, centre inside the input).
        reduce_across_ranks: under DistributedDataParallel, average over the batch size summed over
            the ranks (:func:`detloss.distributed.global_count`), so DDP's gradient average equals
            the single-process gradient of the whole batch even when ranks hold unequal batches
            (with equal batches the per-rank mean is already exact). No effect without a process group.

    Call: ``crit(preds, targets)`` with ``preds`` a list of ``(B, A·(5+C), H, W)`` raw head outputs and
    ``targets`` a list of B dicts ``{"boxes": (n, 4) xyxy pixels, "labels": (n,) int64}``; returns
    :class:`LossResult` with components ``{"box", "obj", "cls"}``. float16/bfloat16 are computed in
    float32.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: Sequence = COCO_ANCHORS,
        strides: Sequence[int] = (8, 16, 32),
        *,
        anchor_iou_thresh: float = 0.3,
        iou_loss_thresh: float = 0.5,
        label_smoothing: float = 0.01,
        max_boxes_per_scale: int = 150,
        fallback_clip_bug: bool = False,
        iou_kind: IoUKind = "giou",
        iou_eps: float = 1e-6,
        iou_modifiers: Mapping[str, object] | None = None,
        obj_gamma: float = 2.0,
        obj_alpha: float = -1.0,
        box_gain: float = 1.0,
        obj_gain: float = 1.0,
        cls_gain: float = 1.0,
        validate: bool = True,
        reduce_across_ranks: bool = False,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        strides = positive_ints("strides", strides)
        for name, v in (
            ("anchor_iou_thresh", anchor_iou_thresh),
            ("iou_loss_thresh", iou_loss_thresh),
            ("label_smoothing", label_smoothing),
        ):
            check_unit(name, v)
        if not isinstance(max_boxes_per_scale, int) or max_boxes_per_scale < 1:
            raise ValueError(f"max_boxes_per_scale must be a positive int, got {max_boxes_per_scale!r}")
        self.iou_modifiers = iou_options(iou_kind, iou_modifiers)
        check_eps(iou_eps)
        if obj_gamma < 0 or obj_alpha > 1:
            raise ValueError(f"need obj_gamma >= 0 and obj_alpha <= 1, got {obj_gamma}, {obj_alpha}")
        self.num_classes = num_classes
        self.strides = strides
        self.anchors = anchor_table(anchors, len(self.strides))
        self.anchor_iou_thresh = anchor_iou_thresh
        self.iou_loss_thresh = iou_loss_thresh
        self.label_smoothing = label_smoothing
        self.max_boxes_per_scale = max_boxes_per_scale
        self.fallback_clip_bug = fallback_clip_bug
        self.iou_kind, self.iou_eps = iou_kind, iou_eps
        self.obj_gamma, self.obj_alpha = obj_gamma, obj_alpha
        self.gains = {"box": box_gain, "obj": obj_gain, "cls": cls_gain}
        self.validate = validate
        self.reduce_across_ranks = reduce_across_ranks
        self._constants = ConstantCache()

    def forward(self, preds: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]) -> LossResult:
        s_count, a_count, c = len(self.strides), len(self.anchors[0]), self.num_classes
        views = split_yolo_heads(preds, [a_count] * s_count, c, self.strides, len(targets))
        dtype = compute_dtype(views[0])
        views = [v.to(dtype) for v in views]  # half precision computed in float32
        dev = views[0].device
        grids = [(v.shape[2], v.shape[3]) for v in views]
        in_h, in_w = grids[0][0] * self.strides[0], grids[0][1] * self.strides[0]
        batch = len(targets)

        tg = pad_targets(targets, c, dtype=dtype, device=dev, validate=self.validate, input_size=(in_h, in_w))
        tables = self._constants.get(
            (batch, tuple(grids), dtype, dev),
            lambda: yolo_tables(batch, self.anchors, self.strides, grids, 5 + c, dtype, dev),
        )
        anchors = tables.anchors  # (S, A, 2)
        asg = build_yolov3_targets(
            tg.boxes, tg.mask, anchors, self.strides, grids,
            anchor_iou_thresh=self.anchor_iou_thresh, max_boxes_per_scale=self.max_boxes_per_scale,
            fallback_clip_bug=self.fallback_clip_bug, validate=False,
        )
        wh = tg.boxes[..., 2:] - tg.boxes[..., :2]
        box_scale = (2.0 - wh[..., 0] * wh[..., 1] / (in_w * in_h))[..., None, None]  # (B, M, 1, 1)
        cls_target = class_targets(tg.labels, c, self.label_smoothing, dtype)[:, :, None, None]

        terms = yolo_terms(
            views, asg.cell, asg.winner.to(dtype), tables, tg.boxes[:, :, None, None],
            box_scale, cls_target, asg.held, tg.boxes, self.iou_kind, self.iou_eps, fill=0.0,
            iou_kw={**self.iou_modifiers, "image_size": (in_w, in_h)},
        )
        resp = asg.occupied  # (B, P): all scales' slots
        background = ~resp & (terms.best_iou < self.iou_loss_thresh)
        t = resp.to(dtype)
        obj = focal_sum(terms.obj_logit, t, t + background.to(dtype), self.obj_alpha, self.obj_gamma)
        box, cls = terms.box, terms.cls

        parts = {"box": box, "obj": obj, "cls": cls}
        norm = max(batch, 1)
        if self.reduce_across_ranks:
            norm = global_count(torch.tensor(float(batch), device=dev), True, at_least=1.0).to(dtype)
        parts = {k: self.gains[k] * p / norm for k, p in parts.items()}
        return LossResult(parts["box"] + parts["obj"] + parts["cls"], parts)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, strides={self.strides}, iou_kind={self.iou_kind!r}"
