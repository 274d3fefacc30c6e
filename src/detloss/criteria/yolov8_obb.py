"""YOLOv8 / YOLO11 oriented-box criterion: reproduces ultralytics' ``v8OBBLoss`` (8.4.190).

The heads of :class:`detloss.criteria.YOLOv8Loss` with one more channel, the angle θ (radians, as
the head hands it). Each anchor's box is decoded in its own rotated frame
(:func:`detloss.codecs.decode_rotated_distances`); the rotated task-aligned assigner
(:func:`detloss.assign.task_aligned_assign` with ``rotated=True``) gives each anchor a box and a
target score ŝ. Targets narrower or shorter than ``min_size`` pixels are masked out first. With
S = max(Σ ŝ, 1), everything in grid units (the target's w, h, centre divided by the anchor's stride)::

    box   = gain_box · Σ_a ŝ_a · (1 − ProbIoU(pred_a, box_a; floor 0.01)) / S
    dfl   = gain_dfl · Σ_a ŝ_a · mean_sides DFL(logits_a, clamp(ltrb_a, 0, reg_max − 1.01)) / S
            (ltrb_a: :func:`detloss.codecs.encode_rotated_distances`, in the target's rotated frame)
    angle = gain_angle · Σ_a ŝ_a · sin²(2Δ_a) · exp(−ln²((w_a + 1e-9)/(h_a + 1e-9)) / 9) / S
            (Δ = θ_pred − θ_box wrapped to Δ − round(Δ/π)·π)
    cls   = gain_cls · Σ_{a,c} BCE(x_ac, ŝ_a·[c = class_a]) / S
    total = (box + cls + dfl + angle) · B

With ``reg_max = 1`` (YOLO26-OBB) ``l1`` replaces ``dfl`` as in :class:`YOLOv8Loss`. Details and the
differences from the original: docs/obb.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..assign import PaddedTargets
from ..checks import check_gain, check_number
from ..codecs import decode_rotated_distances, encode_rotated_distances
from ..distributed import global_count
from ..kernels.rotated import probiou
from .parts import combine
from .result import LossResult
from .yolov8 import YOLOv8Loss, _Heads, _HeadTerms, positive_slots

#: ProbIoU's floor (added to w²/12 and h²/12, grid units) in the box loss, and its eps
BOX_FLOOR, PROBIOU_EPS = 0.01, 1e-7
#: the angle loss's aspect-ratio sensitivity λ (its weight is exp(−ln²(w/h)/λ²)) and eps
ANGLE_LAMBDA, ANGLE_EPS = 3.0, 1e-9


def angle_terms(pred_angle: Tensor, target: Tensor) -> Tensor:
    """Elementwise ``sin²(2Δ)·exp(−ln²((w + 1e-9)/(h + 1e-9))/λ²)`` with λ = 3, Δ = θ_pred − θ the
    angle error wrapped to Δ − round(Δ/π)·π (a box is the same box every π), and w, h, θ the
    target's (``target`` ``(..., 5)`` xywhr, ``pred_angle`` ``(...)``). The weight is 1 for w = h and
    falls as the box elongates (0.95 at w/h = 2, 0.55 at 10); ultralytics' ``calculate_angle_loss``."""
    delta = pred_angle - target[..., 4]
    delta = delta - torch.round(delta / math.pi) * math.pi
    log_ar = torch.log((target[..., 2] + ANGLE_EPS) / (target[..., 3] + ANGLE_EPS))
    return torch.sin(2.0 * delta).square() * torch.exp(-log_ar.square() / ANGLE_LAMBDA**2)


class YOLOv8OBBLoss(YOLOv8Loss):
    """The YOLOv8 / YOLO11 oriented-box loss (ultralytics ``v8OBBLoss``, 8.4.190); with ``reg_max=1``
    a YOLO26-OBB branch (inside :class:`detloss.criteria.EndToEndLoss`).

    Args:
        num_classes, strides, reg_max, box, cls, dfl, l1, topk, topk2, alpha, beta, min_side, validate,
            reduce_across_ranks: as :class:`YOLOv8Loss` (the assigner's similarity is ProbIoU with
            floor 0 in pixels, the box loss's 1 − ProbIoU with floor 0.01 in grid units).
        angle: the angle loss's gain (hyp ``angle``; 1.0).
        min_size: targets with w or h below it (input pixels) are dropped before the assignment
            (by the mask, no host sync); 0 keeps all (ultralytics: 2).

    Call:
        preds: one raw head output per stride, ``(B, 4·reg_max + C + 1, H, W)``: box channels, class
            logits, then the angle in radians (the YOLOv8/11 head's (σ(z) − ¼)·π, YOLO26's raw z); or
            ``{"boxes": (B, 4·reg_max, A), "scores": (B, C, A), "angle": (B, 1, A), "feats": [...]}``.
        targets: B dicts ``{"boxes": (n, 5) xywhr input pixels (θ radians), "labels": (n,) int64}``,
            or a :class:`detloss.assign.PaddedTargets` with ``(B, M, 5)`` boxes.

    Returns:
        :class:`LossResult` with components ``{"box", "cls", "dfl", "angle"}`` (``"l1"`` for ``"dfl"``
        with ``reg_max = 1``; gains applied), ``total`` = their sum · B and ``per_image`` ``(B,)``.
    """

    box_format = "xywhr"
    angled = True

    def __init__(
        self, num_classes: int, strides: Sequence[int] = (8, 16, 32), reg_max: int = 16, *,
        box: float = 7.5,
        cls: float = 0.5,
        dfl: float | None = None,
        l1: float | None = None,
        angle: float = 1.0,
        topk: int = 10,
        topk2: int | None = None,
        alpha: float = 0.5,
        beta: float = 6.0,
        min_side: float | None = None,
        min_size: float = 2.0,
        validate: bool = True,
        reduce_across_ranks: bool = False,
    ) -> None:
        super().__init__(
            num_classes,
            strides,
            reg_max,
            box=box,
            cls=cls,
            dfl=dfl,
            l1=l1,
            topk=topk,
            topk2=topk2,
            alpha=alpha,
            beta=beta,
            min_side=min_side,
            validate=validate,
            reduce_across_ranks=reduce_across_ranks,
        )
        self.gains["angle"] = check_gain("angle", angle)
        self.min_size = check_number("min_size", min_size, low=0.0)

    def loss(
        self, heads: _Heads, padded: PaddedTargets, tables: tuple[Tensor, Tensor, Tensor, Tensor]
    ) -> LossResult:
        """The loss of checked heads (:meth:`read_heads`) on padded xywhr targets in the heads' dtype,
        with the layout's anchor tables (:meth:`anchor_tables`)."""
        points, stride, points_px, anchor_ids = tables
        bsz, r = heads.tensors[0].shape[0], self.reg_max
        h0, w0 = heads.sizes[0]
        image_size = (w0 * self.strides[0], h0 * self.strides[0])  # (w, h) pixels
        gt = padded.boxes
        # tiny boxes are no targets (the original drops them before padding)
        mask = padded.mask & (gt[..., 2] >= self.min_size) & (gt[..., 3] >= self.min_size)

        with torch.no_grad():  # the assigner sees detached predictions, in input pixels
            dist = torch.cat([self.distances(rows, channels_first=True) for _, rows in heads.box], 1)
            theta = torch.cat([rows[:, 0] for _, rows in heads.angle], 1)  # (B, A)
            pred = decode_rotated_distances(dist, theta, points)  # (B, A, 5) grid units
            pred_px = torch.cat((pred[..., :4] * stride, pred[..., 4:]), -1)
            a = self._assign(
                heads.cls, pred_px, points_px, gt, padded.labels, mask, rotated=True, grid_sizes=heads.sizes
            )
            idx, used = positive_slots(a.foreground, gt.shape[1] * self.topk, anchor_ids)
        weight = a.scores  # (B, A): ŝ; 0 on background
        norm = global_count(weight.sum(), self.reduce_across_ranks, at_least=1.0)

        w = weight.gather(1, idx) * used  # (B, P)
        cap = idx.shape[1]
        pts, st = points[idx], stride[idx]  # (B, P, 2), (B, P, 1)
        target = a.boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 5))
        target = torch.cat((target[..., :4] / st, target[..., 4:]), -1)  # grid units, θ as it is
        cls, rows = _HeadTerms.apply(
            heads.parts, heads.num_rows, a.labels, weight, idx, *heads.tensors
        )  # (B,), (B, 4·r + 1, P)
        box_rows = rows[:, : 4 * r].view(bsz, 4, r, cap).permute(0, 3, 1, 2)  # (B, P, 4, r)
        theta = rows[:, 4 * r]  # (B, P)
        pred_boxes = decode_rotated_distances(self.distances(box_rows), theta, pts)  # (B, P, 5)
        iou = probiou(pred_boxes, target, PROBIOU_EPS, BOX_FLOOR)
        box = ((1.0 - iou) * w).sum(1)  # (B,)
        ltrb = encode_rotated_distances(target, pts)  # (B, P, 4) in the target's frame
        reg = self.regression_sums(box_rows, ltrb, w, st, image_size)
        ang = (angle_terms(theta, target) * w).sum(1)
        sums = {"box": box, "cls": cls, self.regression: reg, "angle": ang}
        return combine(sums, self.gains, norm, scale=bsz)
