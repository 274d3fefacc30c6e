"""YOLOv8 / YOLO11 criterion: reproduces ultralytics' ``v8DetectionLoss`` (8.4.190).

Anchor points are the cell centres of every stride; each predicts four side distances as
distributions over ``reg_max`` bins (decoded by their expectation, :func:`detloss.codecs.decode_distances`)
and C class logits. :func:`detloss.assign.task_aligned_assign` gives each anchor a box and a target
score ŝ (0 for background). With S = max(Σ ŝ, 1) (all in grid units, ŝ summed over the batch)::

    box = gain_box · Σ_a ŝ_a · (1 − CIoU(pred_a, box_a)) / S           (CIoU eps 1e-7, α no-grad)
    dfl = gain_dfl · Σ_a ŝ_a · mean_sides DFL(logits_a, clamp(ltrb_a, 0, reg_max − 1.01)) / S
    cls = gain_cls · Σ_{a,c} BCE(x_ac, ŝ_a·[c = class_a]) / S
    total = (box + cls + dfl) · B

Details and every difference from the original: docs/yolov8.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assign import PaddedTargets, pad_targets, task_aligned_assign
from ..checks import check_num_classes, positive_ints
from ..codecs import decode_distances
from ..distributed import global_count
from ..iou import IoUKind, compute_dtype, iou_xyxy
from ..losses import dfl_from_log_probs
from .common import ConstantCache, check_heads, iou_options
from .result import LossResult

_CIOU_EPS = 1e-7


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
    class rows) read in place: Σ_{b,c,a} BCE(x, ŝ_a·[c = c_a]) over the class rows, computed as
    Σ softplus(x) − Σ_a ŝ_a·x[c_a, a] (BCE(x, t) = softplus(x) − t·x; no ``(B, C, A)`` target), and
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
            term = F.softplus(cls).sum() - (hit * sc).sum()
            cls_sum = term if cls_sum is None else cls_sum + term
            inside = (idx >= start) & (idx < start + n)  # (B, P): the positives on this level
            index = (idx - start).clamp_(0, n - 1).unsqueeze(1).expand(-1, num_box, -1)
            rows = lv[:, :num_box].gather(2, index)  # a slot of another level reads a stand-in row
            box = rows if box is None else torch.where(inside.unsqueeze(1), rows, box)
            local.append((index, inside))
        ctx.save_for_backward(labels, scores, *levels)
        ctx.local, ctx.num_box = local, num_box
        return cls_sum, box  # scalar, (B, 4·r, P)

    @staticmethod
    def backward(ctx, grad_cls: Tensor, grad_box: Tensor):
        labels, scores, *levels = ctx.saved_tensors
        n = ctx.num_box
        sizes = [lv.shape[-1] for lv in levels]
        grads = []
        per_level = zip(levels, labels.split(sizes, 1), scores.split(sizes, 1), ctx.local, strict=True)
        for lv, lab, sc, (index, inside) in per_level:
            grad = lv.sigmoid()  # the box rows are overwritten below
            grad[:, n:].scatter_add_(1, lab.unsqueeze(1), -sc.unsqueeze(1)).mul_(grad_cls)
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
        validate: check targets (finite, positive size, class range) in :func:`detloss.assign.pad_targets`.
        reduce_across_ranks: under DistributedDataParallel, S becomes max(Σ_ranks Σ ŝ, 1) / world size
            (:func:`detloss.distributed.global_count`), so DDP's gradient average equals the
            single-process gradient of the whole batch divided by the world size (the ``· B`` stays per
            rank). No effect without a process group.

    Call:
        preds: one raw head output per stride, ``(B, 4·reg_max + C, H, W)``: the box distributions
            (left, top, right, bottom, reg_max bins each) first, then the class logits.
        targets: B dicts ``{"boxes": (n, 4) xyxy input pixels, "labels": (n,) int64}``, or a
            :class:`detloss.assign.PaddedTargets` already on the device (skips the padding and its checks).

    Returns:
        :class:`LossResult` with components ``{"box", "cls", "dfl"}`` (gains applied) and
        ``total = (box + cls + dfl) · B``.
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
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        min_side: float | None = None,
        iou_kind: IoUKind = "ciou",
        iou_modifiers: Mapping[str, object] | None = None,
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
        for name, v in (("box", box), ("cls", cls), ("dfl", dfl), ("alpha", alpha), ("beta", beta)):
            if not (isinstance(v, (int, float)) and v >= 0 and v == v and v != float("inf")):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if min_side is None:
            min_side = self.strides[1] if len(self.strides) > 1 else self.strides[0]
        if not min_side >= 0:
            raise ValueError(f"min_side must be >= 0, got {min_side!r}")
        self.iou_kind, self.iou_modifiers = iou_kind, iou_options(iou_kind, iou_modifiers)
        self.num_classes = num_classes
        self.gains = {"box": float(box), "cls": float(cls), "dfl": float(dfl)}
        self.alpha, self.beta, self.min_side = float(alpha), float(beta), float(min_side)
        self.validate, self.reduce_across_ranks = bool(validate), bool(reduce_across_ranks)
        self._constants = ConstantCache()

    def forward(
        self, preds: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | PaddedTargets
    ) -> LossResult:
        padded_in = isinstance(targets, PaddedTargets)
        channels, layout = 4 * self.reg_max + self.num_classes, f"4*{self.reg_max}+{self.num_classes}"
        batch = targets.boxes.shape[0] if padded_in else len(targets)
        n = len(self.strides)
        sizes = check_heads(preds, [channels] * n, [layout] * n, self.strides, batch)
        image_size = (sizes[0][1] * self.strides[0], sizes[0][0] * self.strides[0])  # (w, h) pixels
        dtype = compute_dtype(preds[0])  # fp16/bf16 heads: the loss is computed in float32
        device = preds[0].device
        padded = (
            targets
            if padded_in
            else pad_targets(targets, self.num_classes, dtype=dtype, device=device, validate=self.validate)
        )
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
                padded.boxes.to(dtype),
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
        cls, logits = _HeadTerms.apply(num_box, a.labels, weight, idx, *levels)  # Σ BCE, (B, 4·r, P)
        logits = logits.view(bsz, 4, r, cap).permute(0, 3, 1, 2)  # (B, P, 4, r)
        pred_boxes = decode_distances(logits, pts)  # (B, P, 4) xyxy, grid units
        if self.iou_kind == "mpdiou":  # its corner distances over the input size: in pixels
            iou = iou_xyxy(pred_boxes * st, target * st, "mpdiou", _CIOU_EPS, image_size=image_size,
                           **self.iou_modifiers)
        else:
            iou = iou_xyxy(pred_boxes, target, self.iou_kind, _CIOU_EPS, **self.iou_modifiers)
        box = ((1.0 - iou) * w).sum()
        ltrb = torch.cat((pts - target[..., :2], target[..., 2:] - pts), -1)
        ltrb = ltrb.clamp(0.0, r - 1 - 0.01)  # keeps i + 1 a valid bin: the original's clamp
        dfl = (dfl_from_log_probs(F.log_softmax(logits, dim=-1), ltrb).mean(-1) * w).sum()
        parts = {
            "box": box / norm * self.gains["box"],
            "cls": cls / norm * self.gains["cls"],
            "dfl": dfl / norm * self.gains["dfl"],
        }
        total = (parts["box"] + parts["cls"] + parts["dfl"]) * bsz
        return LossResult(total, parts)
