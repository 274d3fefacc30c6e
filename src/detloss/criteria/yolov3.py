"""YOLOv3 criterion, reproducing tensorflow-yolov3 (``core/yolov3.py`` loss, ``core/dataset.py`` labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from ..assign import build_yolov3_targets
from ..checks import check_unit, positive_ints
from ..iou import IoUKind
from ..labels import one_hot
from .anchors import COCO_ANCHORS, anchor_table
from .darknet import DarknetLoss, yolo_terms
from .result import LossResult
from .targets import Targets


class YOLOv3Loss(DarknetLoss):
    """YOLOv3 loss as tensorflow-yolov3 computes it, its label builder included.

    Per scale, with resp the responsible mask of :func:`detloss.assign.build_yolov3_targets`::

        box = resp · (2 − w·h / (W_in·H_in)) · (1 − GIoU(pred, target))          w, h target pixels
        bgd = (1 − resp) · [max IoU(pred, boxes assigned on the scale) < iou_loss_thresh]
        obj = |resp − σ(t_obj)|² · (resp + bgd) · BCE(t_obj, resp)
        cls = resp · Σ_c BCE(t_c, onehot·(1 − 0.01) + 0.01/C)

    GIoU has eps 1e-6 in both denominators. Each term is summed over cells, anchors and channels,
    averaged over the batch and summed over the scales; ``total = box + obj + cls``. Image b's share,
    ``per_image[b]``, is the same sums over its own cells divided by the same batch size.

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
        box, obj, cls: the gains, multiplying each component (option; default 1).
        validate: check targets (finite, positive size, class range, centre inside the input).
        reduce_across_ranks: under DistributedDataParallel, average over the batch size summed over
            the ranks (:func:`detloss.distributed.global_count`), so DDP's gradient average equals
            the single-process gradient of the whole batch even when ranks hold unequal batches
            (with equal batches the per-rank mean is already exact). No effect without a process group.

    Call:
        preds: one ``(B, A·(5+C), H, W)`` raw head output per stride.
        targets: B dicts ``{"boxes": (n, 4) xyxy input pixels, "labels": (n,) int64}``, or a
            :class:`detloss.assign.PaddedTargets` (boxes ``(B, M, 4)`` xyxy input pixels) already on
            the device (skips the padding and its checks).

    Returns:
        :class:`LossResult` with components ``{"box", "obj", "cls"}`` (gains applied) and
        ``per_image`` ``(B,)``. float16/bfloat16 heads are computed in float32.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: Sequence = COCO_ANCHORS,
        strides: Sequence[int] = (8, 16, 32),
        *,
        box: float = 1.0,
        obj: float = 1.0,
        cls: float = 1.0,
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
        validate: bool = True,
        reduce_across_ranks: bool = False,
    ) -> None:
        strides = positive_ints("strides", strides)
        super().__init__(
            num_classes, strides, anchor_table(anchors, len(strides)), label_smoothing=label_smoothing,
            iou_kind=iou_kind, iou_eps=iou_eps, iou_modifiers=iou_modifiers, obj_gamma=obj_gamma,
            obj_alpha=obj_alpha, gains={"box": box, "obj": obj, "cls": cls}, validate=validate,
            reduce_across_ranks=reduce_across_ranks,
        )
        check_unit("anchor_iou_thresh", anchor_iou_thresh)
        check_unit("iou_loss_thresh", iou_loss_thresh)
        (self.max_boxes_per_scale,) = positive_ints("max_boxes_per_scale", (max_boxes_per_scale,))
        self.anchor_iou_thresh, self.iou_loss_thresh = anchor_iou_thresh, iou_loss_thresh
        self.fallback_clip_bug = fallback_clip_bug

    def forward(self, preds: Sequence[Tensor], targets: Targets) -> LossResult:
        x = self._inputs(preds, targets)
        tg, (in_h, in_w), dtype = x.targets, x.input_size, x.views[0].dtype
        asg = build_yolov3_targets(
            tg.boxes, tg.mask, x.tables.anchors, self.strides, x.grids,
            anchor_iou_thresh=self.anchor_iou_thresh, max_boxes_per_scale=self.max_boxes_per_scale,
            fallback_clip_bug=self.fallback_clip_bug, validate=False,
        )
        wh = tg.boxes[..., 2:] - tg.boxes[..., :2]
        box_scale = (2.0 - wh[..., 0] * wh[..., 1] / (in_w * in_h))[..., None, None]  # (B, M, 1, 1)
        cls_target = self._class_targets(one_hot(tg.labels, self.num_classes, dtype))[:, :, None, None]
        terms = yolo_terms(
            x.views, asg.cell, asg.winner.to(dtype), x.tables, tg.boxes[:, :, None, None],
            box_scale, cls_target, asg.held, tg.boxes, self.iou_kind, self.iou_eps, fill=0.0,
            iou_kw={**self.iou_modifiers, "image_size": (in_w, in_h)},
        )
        background = ~asg.occupied & (terms.best_iou < self.iou_loss_thresh)  # (B, P): all scales' slots
        norm = self._batch_norm(tg.mask.shape[0], tg.boxes.device, dtype)
        return self._result(terms, asg.occupied, asg.occupied | background, norm)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, strides={self.strides}, iou_kind={self.iou_kind!r}"
