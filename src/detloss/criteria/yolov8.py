"""YOLOv8 / YOLO11 criterion: reproduces ultralytics' ``v8DetectionLoss`` (8.4.190).

Anchor points are the cell centres of every stride; each predicts four side distances as
distributions over ``reg_max`` bins (decoded by their expectation, :func:`detloss.codecs.decode_distances`)
and C class logits. :func:`detloss.assign.task_aligned_assign` gives each anchor a box and a target
score ŝ (0 for background). With S = max(Σ ŝ, 1) (all in grid units, ŝ summed over the batch)::

    box = gain_box · Σ_a ŝ_a · (1 − CIoU(pred_a, box_a)) / S           (CIoU eps 1e-7, α no-grad)
    dfl = gain_dfl · Σ_a ŝ_a · mean_sides DFL(logits_a, clamp(ltrb_a, 0, reg_max − 1.01)) / S
    cls = gain_cls · Σ_{a,c} BCE(x_ac, ŝ_a·[c = class_a]) / S
    total = (box + cls + dfl) · B

Image b's share, ``per_image[b]``, is the same sums over its own anchors, divided by the same S, times B.

Details and every difference from the original: docs/yolov8.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assign import task_aligned_assign
from ..checks import check_eps, check_num_classes, check_number, positive_ints
from ..codecs import decode_distances
from ..distributed import global_count
from ..iou import IoUKind, compute_dtype
from ..losses import dfl_from_log_probs
from .box_iou import grid_box_iou, iou_options
from .cache import ConstantCache
from .heads import check_heads
from .parts import check_gains, combine
from .result import LossResult
from .targets import Targets, as_padded, batch_size


def anchor_points(
    sizes: Sequence[tuple[int, int]], strides: Sequence[int], *, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Cell centres of every scale, scale after scale, row-major: ``(A, 2)`` (x, y) in grid units
    of their own scale, and each one's stride ``(A, 1)`` (ultralytics' ``make_anchors(…, 0.5)``)."""
    points, per_anchor = [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        ys = torch.arange(h, dtype=dtype, device=device) + 0.5
        xs = torch.arange(w, dtype=dtype, device=device) + 0.5
        points.append(torch.stack((xs.expand(h, w), ys[:, None].expand(h, w)), -1).reshape(-1, 2))
        per_anchor.append(torch.full((h * w, 1), float(s), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(per_anchor)


def _anchor_tables(
    sizes: Sequence[tuple[int, int]], strides: Sequence[int], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The per-layout constants: anchor points and strides (:func:`anchor_points`), the points in
    input pixels ``(A, 2)`` and the anchor indices ``(A,)``."""
    points, stride = anchor_points(sizes, strides, dtype=dtype, device=device)
    return points, stride, points * stride, torch.arange(points.shape[0], device=device)


class _HeadTerms(torch.autograd.Function):
    """The two reads of the heads that carry gradient, each level ``(B, 4·r + C, A_l)`` (box rows, then
    class rows) read in place: per image b, Σ_{c,a} BCE(x, ŝ_a·[c = c_a]) over the class rows, computed
    as Σ softplus(x) − Σ_a ŝ_a·x[c_a, a] (BCE(x, t) = softplus(x) − t·x; no ``(B, C, A)`` target), and
    the box rows of the anchors ``idx`` ``(B, P)`` (indices over all levels). The backward writes
    each level's whole gradient into one new buffer: σ(x) − t on the class rows (the target's one
    entry per anchor scattered in place) and the positives' box gradients scattered into zeros,
    instead of a concatenated copy of the heads and a gradient per read.
    ``F.softplus`` returns x above x = 20, where BCE adds log1p(e^−x) < 2.1e-9."""

    @staticmethod
    def forward(ctx, num_box: int, labels: Tensor, scores: Tensor, idx: Tensor, *levels: Tensor):
        sizes = [lv.shape[-1] for lv in levels]
        starts = accumulate(sizes[:-1], initial=0)
        cls_sum, box, local = None, None, []
        per_level = zip(levels, starts, sizes, labels.split(sizes, 1), scores.split(sizes, 1), strict=True)
        for lv, start, n, lab, sc in per_level:
            cls = lv[:, num_box:]
            hit = cls.gather(1, lab.unsqueeze(1)).squeeze(1)  # (B, A_l)
            term = F.softplus(cls).sum((1, 2)) - (hit * sc).sum(1)  # (B,)
            cls_sum = term if cls_sum is None else cls_sum + term
            inside = (idx >= start) & (idx < start + n)  # (B, P): the positives on this level
            index = (idx - start).clamp_(0, n - 1).unsqueeze(1).expand(-1, num_box, -1)
            rows = lv[:, :num_box].gather(2, index)  # a slot of another level reads a stand-in row
            box = rows if box is None else torch.where(inside.unsqueeze(1), rows, box)
            local.append((index, inside))
        ctx.save_for_backward(labels, scores, *levels)
        ctx.local, ctx.num_box = local, num_box
        return cls_sum, box  # (B,), (B, 4·r, P)

    @staticmethod
    def backward(ctx, grad_cls: Tensor, grad_box: Tensor):
        labels, scores, *levels = ctx.saved_tensors
        n = ctx.num_box
        sizes = [lv.shape[-1] for lv in levels]
        grads = []
        per_level = zip(levels, labels.split(sizes, 1), scores.split(sizes, 1), ctx.local, strict=True)
        for lv, lab, sc, (index, inside) in per_level:
            grad = lv.sigmoid()  # the box rows are overwritten below
            grad[:, n:].scatter_add_(1, lab.unsqueeze(1), -sc.unsqueeze(1)).mul_(grad_cls.view(-1, 1, 1))
            grad[:, :n].zero_().scatter_add_(2, index, grad_box * inside.unsqueeze(1))
            grads.append(grad)
        return (None, None, None, None, *grads)


class YOLOv8Loss(nn.Module):
    """The YOLOv8 / YOLO11 detection loss (ultralytics ``v8DetectionLoss``, 8.4.190).

    Args:
        num_classes: C.
        strides: input pixels per cell, one per scale (the first scale's grid × stride is the input size).
        reg_max: bins per box side (≥ 2; the distances cover 0 … reg_max − 1 cells).
        box, cls, dfl: loss gains (ultralytics' hyp ``box``, ``cls``, ``dfl``).
        topk, alpha, beta: task-aligned assigner (top-k anchors per box, metric s^α · CIoU^β).
        min_side: box sides below it are widened to it for the candidate test only; ``None`` = the
            second stride (the first if there is one scale), as 8.4.190; 0 = the older behaviour.
        iou_kind, iou_modifiers: the box loss's IoU (option; default the original's CIoU): any kind of
            :func:`detloss.bbox_iou` and its keyword modifiers as a dict, e.g. ``{"alpha": 3.0}``;
            ``"mpdiou"`` takes the input size as its image size. The assigner keeps CIoU.
        iou_eps: the box loss's IoU eps (the original's 1e-7).
        validate: check targets (finite, positive size, class range) in :func:`detloss.assign.pad_targets`.
        reduce_across_ranks: under DistributedDataParallel, S becomes max(Σ_ranks Σ ŝ, 1) / world size
            (:func:`detloss.distributed.global_count`), so DDP's gradient average equals the
            single-process gradient of the whole batch divided by the world size (the ``· B`` stays per
            rank). No effect without a process group.

    Call:
        preds: one raw head output per stride, ``(B, 4·reg_max + C, H, W)``: the box distributions
            (left, top, right, bottom, reg_max bins each) first, then the class logits.
        targets: B dicts ``{"boxes": (n, 4) xyxy input pixels, "labels": (n,) int64}``, or a
            :class:`detloss.assign.PaddedTargets` (boxes ``(B, M, 4)`` xyxy input pixels) already on
            the device (skips the padding and its checks).

    Returns:
        :class:`LossResult` with components ``{"box", "cls", "dfl"}`` (gains applied),
        ``total = (box + cls + dfl) · B`` and ``per_image`` ``(B,)``.
    """

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32),
        reg_max: int = 16,
        *,
        box: float = 7.5,
        cls: float = 0.5,
        dfl: float = 1.5,
        iou_kind: IoUKind = "ciou",
        iou_eps: float = 1e-7,
        iou_modifiers: Mapping[str, object] | None = None,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        min_side: float | None = None,
        validate: bool = True,
        reduce_across_ranks: bool = False,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        self.strides = positive_ints("strides", strides)
        (self.reg_max,) = positive_ints("reg_max", (reg_max,))
        if self.reg_max < 2:
            raise ValueError(
                f"reg_max must be >= 2 (ultralytics' reg_max = 1 L1 variant is not supported), got {reg_max}"
            )
        (self.topk,) = positive_ints("topk", (topk,))
        self.gains = check_gains(box=box, cls=cls, dfl=dfl)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)
        if min_side is None:
            min_side = self.strides[1] if len(self.strides) > 1 else self.strides[0]
        self.min_side = check_number("min_side", min_side, low=0.0)
        check_eps(iou_eps, "iou_eps")
        self.iou_kind, self.iou_eps = iou_kind, float(iou_eps)
        self.iou_modifiers = iou_options(iou_kind, iou_modifiers)
        self.num_classes = num_classes
        self.validate, self.reduce_across_ranks = bool(validate), bool(reduce_across_ranks)
        self._constants = ConstantCache()

    def forward(self, preds: Sequence[Tensor], targets: Targets) -> LossResult:
        channels, layout = 4 * self.reg_max + self.num_classes, f"4*{self.reg_max}+{self.num_classes}"
        batch = batch_size(targets)
        n = len(self.strides)
        sizes = check_heads(preds, [channels] * n, [layout] * n, self.strides, batch)
        image_size = (sizes[0][1] * self.strides[0], sizes[0][0] * self.strides[0])  # (w, h) pixels
        dtype = compute_dtype(preds[0])  # fp16/bf16 heads: the loss is computed in float32
        device = preds[0].device
        padded = as_padded(targets, self.num_classes, dtype=dtype, device=device, validate=self.validate)
        bsz, r = preds[0].shape[0], self.reg_max
        points, stride, points_px, anchor_ids = self._constants.get(
            (tuple(sizes), dtype, device), lambda: _anchor_tables(sizes, self.strides, dtype, device)
        )

        # each level (B, 4·r + C, H·W) read in place: no concatenated copy of the heads
        levels = [p.to(dtype).flatten(2) for p in preds]
        num_anchors, num_box = points.shape[0], 4 * r
        per_level = [h * w for h, w in sizes]

        with torch.no_grad():  # the assigner sees detached predictions, in input pixels
            pred_px = torch.cat(
                [
                    decode_distances(lv[:, :num_box].unflatten(1, (4, r)), pts, channels_first=True)
                    for lv, pts in zip(levels, points.split(per_level), strict=True)
                ],
                1,
            ) * stride  # (B, A, 4)
            a = task_aligned_assign(
                [lv[:, num_box:] for lv in levels],
                pred_px,
                points_px,
                padded.boxes,
                padded.labels,
                padded.mask,
                topk=self.topk,
                alpha=self.alpha,
                beta=self.beta,
                min_side=self.min_side,
                logits=True,
                grid_sizes=sizes,
            )
            # Box terms only at the positives, gathered into a fixed number of slots per image: every
            # positive was selected by a box, so there are at most M·topk (a shape, not a value).
            cap = min(num_anchors, padded.boxes.shape[1] * self.topk)
            fg = a.foreground
            slot = torch.where(fg, fg.cumsum(1) - 1, cap)  # (B, A): rank among the positives, or a dump slot
            idx = torch.zeros(bsz, cap + 1, dtype=torch.int64, device=device)
            idx = idx.scatter_(1, slot, anchor_ids.expand(bsz, -1))
            idx = idx[:, :cap]  # (B, P) anchor of each slot
            used = torch.arange(cap, device=device) < fg.sum(1, keepdim=True)  # (B, P)
        weight = a.scores  # (B, A): ŝ, the target score summed over the classes; 0 on background
        norm = global_count(weight.sum(), self.reduce_across_ranks, at_least=1.0)

        w = weight.gather(1, idx) * used  # (B, P)
        pts, st = points[idx], stride[idx]  # (B, P, 2), (B, P, 1)
        target = a.boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)) / st  # grid units
        cls, logits = _HeadTerms.apply(num_box, a.labels, weight, idx, *levels)  # (B,) Σ BCE, (B, 4·r, P)
        logits = logits.view(bsz, 4, r, cap).permute(0, 3, 1, 2)  # (B, P, 4, r)
        pred_boxes = decode_distances(logits, pts)  # (B, P, 4) xyxy, grid units
        iou = grid_box_iou(
            pred_boxes, target, self.iou_kind, self.iou_eps, self.iou_modifiers, st, image_size
        )
        box = ((1.0 - iou) * w).sum(1)  # (B,)
        ltrb = torch.cat((pts - target[..., :2], target[..., 2:] - pts), -1)
        ltrb = ltrb.clamp(0.0, r - 1 - 0.01)  # keeps i + 1 a valid bin: the original's clamp
        dfl = (dfl_from_log_probs(F.log_softmax(logits, dim=-1), ltrb).mean(-1) * w).sum(1)  # (B,)
        return combine({"box": box, "cls": cls, "dfl": dfl}, self.gains, norm, scale=bsz)
