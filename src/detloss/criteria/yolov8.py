"""YOLOv8 / YOLO11 criterion: reproduces ultralytics' ``v8DetectionLoss`` (8.4.190).

Anchor points are the cell centres of every stride; each predicts four side distances as
distributions over ``reg_max`` bins (decoded by their expectation, :func:`detloss.codecs.decode_distances`)
and C class logits. :func:`detloss.assign.task_aligned_assign` gives each anchor a box and a target
score ŝ (0 for background). With S = max(Σ ŝ, 1) (all in grid units, ŝ summed over the batch)::

    box = gain_box · Σ_a ŝ_a · (1 − CIoU(pred_a, box_a)) / S           (CIoU eps 1e-7, α no-grad)
    dfl = gain_dfl · Σ_a ŝ_a · mean_sides DFL(logits_a, clamp(ltrb_a, 0, reg_max − 1.01)) / S
    cls = gain_cls · Σ_{a,c} BCE(x_ac, ŝ_a·[c = class_a]) / S
    total = (box + cls + dfl) · B

With ``reg_max = 1`` (YOLO26) the box channels are the raw distances and ``l1`` replaces ``dfl``
(:class:`YOLOv8Loss`). The heads come per stride or as ultralytics' ``{"boxes", "scores", "feats"}``.

Image b's share, ``per_image[b]``, is the same sums over its own anchors, divided by the same S, times B.

Details and every difference from the original: docs/yolov8.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assign import (
    CandidateTable,
    PaddedTargets,
    TaskAlignedAssignment,
    candidate_table,
    task_aligned_assign,
)
from ..checks import check_eps, check_head_dict, check_heads, check_num_classes, check_number, positive_ints
from ..codecs import distances_to_boxes, expected_distances
from ..distributed import global_count
from ..iou import IoUKind, compute_dtype
from ..losses import dfl_from_log_probs
from .box_iou import grid_box_iou, iou_options
from .cache import ConstantCache
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


def positive_slots(foreground: Tensor, cap: int, anchor_ids: Tensor) -> tuple[Tensor, Tensor]:
    """The positives gathered into a fixed number of slots per image, ``min(A, cap)`` (every
    positive was selected by a box, so there are at most M·topk: a shape, not a value): the anchor
    of each slot ``(B, P)`` (0 for an unused slot) and whether the slot is used ``(B, P)``."""
    bsz, num_anchors = foreground.shape
    cap = min(num_anchors, cap)
    slot = torch.where(foreground, foreground.cumsum(1) - 1, cap)  # rank among the positives, or a dump slot
    idx = torch.zeros(bsz, cap + 1, dtype=torch.int64, device=foreground.device)
    idx = idx.scatter_(1, slot, anchor_ids.expand(bsz, -1))[:, :cap]
    used = torch.arange(cap, device=foreground.device) < foreground.sum(1, keepdim=True)
    return idx, used


class _HeadTerms(torch.autograd.Function):
    """The two reads of the heads that carry gradient, read in place from the head tensors: per
    image b, Σ_{c,a} BCE(x, ŝ_a·[c = c_a]) over the class rows, computed as Σ softplus(x) −
    Σ_a ŝ_a·x[c_a, a] (BCE(x, t) = softplus(x) − t·x; no ``(B, C, A)`` target), and the box rows
    (the angle row too for oriented boxes) of the anchors ``idx`` ``(B, P)`` (indices over all
    anchors). Each head tensor ``(B, rows, A_t)`` covers the anchors ``start … start + A_t − 1``:
    ``parts[t] = (start, segments, classes)`` with ``segments`` a tuple of ``(lo, hi, dst)``, its
    rows ``lo … hi − 1`` read into the output rows ``dst …``, and ``classes`` its class rows
    ``(lo, hi)`` or None. Every row of a tensor is in a segment or its class rows. A per-stride head
    is one tensor per level with both; ultralytics' mapping is ``boxes`` (and ``angle``) and
    ``scores`` over all anchors. The backward writes each tensor's whole gradient into one new
    buffer: σ(x) − t on the class rows (the target's one entry per anchor scattered in place) and
    the positives' row gradients scattered into zeros, instead of a concatenated copy of the heads
    and a gradient per read. ``F.softplus`` returns x above x = 20, where BCE adds
    log1p(e^−x) < 2.1e-9."""

    @staticmethod
    def forward(ctx, parts, num_rows: int, labels: Tensor, scores: Tensor, idx: Tensor, *heads: Tensor):
        cls_sum, local = None, []
        box = heads[0].new_zeros(idx.shape[0], num_rows, idx.shape[1])  # (B, rows, P)
        for t, (start, segments, classes) in zip(heads, parts, strict=True):
            n = t.shape[-1]
            if classes is not None:
                lab, sc = labels[:, start : start + n], scores[:, start : start + n]
                cls = t[:, classes[0] : classes[1]]
                hit = cls.gather(1, lab.unsqueeze(1)).squeeze(1)  # (B, A_t)
                term = F.softplus(cls).sum((1, 2)) - (hit * sc).sum(1)  # (B,)
                cls_sum = term if cls_sum is None else cls_sum + term
            if segments:
                inside = (idx >= start) & (idx < start + n)  # (B, P): the positives in this tensor
                index = (idx - start).clamp_(0, n - 1).unsqueeze(1)  # (B, 1, P)
                for lo, hi, dst in segments:  # a slot of another tensor keeps its row
                    rows = t[:, lo:hi].gather(2, index.expand(-1, hi - lo, -1))
                    out = box[:, dst : dst + hi - lo]
                    out.copy_(torch.where(inside.unsqueeze(1), rows, out))
                local.append((index, inside))
            else:
                local.append(None)
        ctx.save_for_backward(labels, scores, *heads)
        ctx.local, ctx.parts = local, parts
        return cls_sum, box  # (B,), (B, rows, P)

    @staticmethod
    def backward(ctx, grad_cls: Tensor, grad_box: Tensor):
        labels, scores, *heads = ctx.saved_tensors
        grads = []
        for t, (start, segments, classes), loc in zip(heads, ctx.parts, ctx.local, strict=True):
            if classes is not None:
                lab, sc = labels[:, start : start + t.shape[-1]], scores[:, start : start + t.shape[-1]]
                rows = slice(*classes)
                if segments:  # σ of the class rows only: every other row is a segment's, written below
                    grad = torch.empty_like(t)
                    grad[:, rows] = t[:, rows].sigmoid()
                else:
                    grad = t.sigmoid()
                grad[:, rows].scatter_add_(1, lab.unsqueeze(1), -sc.unsqueeze(1))
                grad[:, rows].mul_(grad_cls.view(-1, 1, 1))
            else:
                grad = torch.empty_like(t)  # every row is a segment's
            if loc is not None:
                index, inside = loc
                g = grad_box * inside.unsqueeze(1)
                for lo, hi, dst in segments:
                    grad[:, lo:hi].zero_().scatter_add_(
                        2, index.expand(-1, hi - lo, -1), g[:, dst : dst + hi - lo]
                    )
            grads.append(grad)
        return (None, None, None, None, None, *grads)


@dataclass
class _Heads:
    """A call's heads, read in place: the autograd inputs ``tensors`` with their ``parts`` and the
    number of rows gathered per positive (see :class:`_HeadTerms`), the box rows ``(B, 4·r, A_t)``,
    class rows ``(B, C, A_t)`` and (oriented boxes) angle rows ``(B, 1, A_t)`` pieces with the first
    anchor of each, and the grid sizes."""

    tensors: list[Tensor]
    parts: tuple[tuple[int, tuple[tuple[int, int, int], ...], tuple[int, int] | None], ...]
    num_rows: int
    box: list[tuple[int, Tensor]]
    cls: list[Tensor]
    sizes: list[tuple[int, int]]
    angle: list[tuple[int, Tensor]]


class YOLOv8Loss(nn.Module):
    """The YOLOv8 / YOLO11 detection loss (ultralytics ``v8DetectionLoss``, 8.4.190), and each branch of
    the end-to-end YOLOv10 / YOLO26 loss (:class:`detloss.criteria.EndToEndLoss`).

    Args:
        num_classes: C.
        strides: input pixels per cell, one per scale (the first scale's grid × stride is the input size).
        reg_max: bins per box side (the distances cover 0 … reg_max − 1 cells), or 1 (YOLO26): the
            four box channels are the ltrb distances in grid units, used raw, and the regression term
            is ``l1`` instead of ``dfl``.
        box, cls: loss gains (ultralytics' hyp ``box``, ``cls``).
        dfl: the DFL gain (hyp ``dfl``; default 1.5); ``reg_max >= 2`` only.
        l1: the L1 gain (ultralytics uses hyp ``dfl`` for it; default 1.5); ``reg_max = 1`` only.
        topk, alpha, beta: task-aligned assigner (top-k anchors per box, metric s^α · CIoU^β).
        topk2: after the contests each box keeps only its ``topk2`` positives of largest alignment
            (ultralytics' ``tal_topk2``; the one-to-one branch uses topk 7, topk2 1); applies only
            when it differs from ``topk``, as in the original.
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
        preds: one raw head output per stride, ``(B, 4·reg_max + C, H, W)``: the box channels (left,
            top, right, bottom, reg_max bins each) first, then the class logits; or the mapping an
            ultralytics head hands its loss, ``{"boxes": (B, 4·reg_max, A), "scores": (B, C, A),
            "feats": [per-stride maps (B, ·, H_l, W_l)]}`` (levels concatenated along A in stride
            order, grid sizes read from ``feats``): same values and gradients.
        targets: B dicts ``{"boxes": (n, 4) xyxy input pixels, "labels": (n,) int64}``, or a
            :class:`detloss.assign.PaddedTargets` (boxes ``(B, M, 4)`` xyxy input pixels) already on
            the device (skips the padding and its checks).

    With ``reg_max = 1``, p and t the predicted and target ltrb distances (grid units, t not clamped:
    negative for an anchor outside its box), s the anchor's stride and (W, H) the input size::

        l1 = gain_l1 · Σ_a ŝ_a · mean_sides |p − t|·s / (W, H, W, H) / S

    Returns:
        :class:`LossResult` with components ``{"box", "cls", "dfl"}`` (``{"box", "cls", "l1"}`` with
        ``reg_max = 1``; gains applied), ``total = (box + cls + dfl | l1) · B`` and ``per_image`` ``(B,)``.
    """

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32),
        reg_max: int = 16,
        *,
        box: float = 7.5,
        cls: float = 0.5,
        dfl: float | None = None,
        l1: float | None = None,
        iou_kind: IoUKind = "ciou",
        iou_eps: float = 1e-7,
        iou_modifiers: Mapping[str, object] | None = None,
        topk: int = 10,
        topk2: int | None = None,
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
        (self.topk,) = positive_ints("topk", (topk,))
        self.topk2 = None if topk2 is None else positive_ints("topk2", (topk2,))[0]
        if self.reg_max == 1:
            if dfl is not None:
                raise ValueError("dfl: reg_max = 1 has no DFL; its regression term's gain is l1")
            self.regression = "l1"
            self.gains = check_gains(box=box, cls=cls, l1=1.5 if l1 is None else l1)
        else:
            if l1 is not None:
                raise ValueError(
                    f"l1: the L1 term is reg_max = 1's; with reg_max = {reg_max} the gain is dfl"
                )
            self.regression = "dfl"
            self.gains = check_gains(box=box, cls=cls, dfl=1.5 if dfl is None else dfl)
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

    #: the targets' box format, and whether the heads carry an angle channel after the classes
    box_format = "xyxy"
    angled = False

    def read_heads(self, preds: Sequence[Tensor] | Mapping[str, object], batch: int) -> _Heads:
        """Check the heads (either layout) and view them in place (no copy of the heads)."""
        num_box, num_cls, ang = 4 * self.reg_max, self.num_classes, int(self.angled)
        box_seg = ((0, num_box, 0),)
        if isinstance(preds, Mapping):
            sizes = check_head_dict(preds, num_box, num_cls, self.strides, batch, angle=self.angled)
            dtype = compute_dtype(preds["boxes"])  # fp16/bf16 heads: the loss is computed in float32
            boxes, scores = preds["boxes"].to(dtype), preds["scores"].to(dtype)
            tensors, parts = [boxes, scores], [(0, box_seg, None), (0, (), (0, num_cls))]
            angle = []
            if self.angled:
                angle = [(0, preds["angle"].to(dtype))]
                tensors.append(angle[0][1])
                parts.append((0, ((0, 1, num_box),), None))
            return _Heads(tensors, tuple(parts), num_box + ang, [(0, boxes)], [scores], sizes, angle)
        channels = num_box + num_cls + ang
        layout = f"4*{self.reg_max}+{num_cls}" + ("+1" if ang else "")
        n = len(self.strides)
        sizes = check_heads(preds, [channels] * n, [layout] * n, self.strides, batch)
        dtype = compute_dtype(preds[0])
        levels = [p.to(dtype).flatten(2) for p in preds]  # (B, 4·r + C [+ 1], H·W) views
        starts = list(accumulate([h * w for h, w in sizes[:-1]], initial=0))
        segments = box_seg + (((num_box + num_cls, channels, num_box),) if ang else ())
        return _Heads(
            levels,
            tuple((s, segments, (num_box, num_box + num_cls)) for s in starts),
            num_box + ang,
            [(s, lv[:, :num_box]) for s, lv in zip(starts, levels, strict=True)],
            [lv[:, num_box : num_box + num_cls] for lv in levels],
            sizes,
            [(s, lv[:, channels - 1 :]) for s, lv in zip(starts, levels, strict=True)] if ang else [],
        )

    def anchor_tables(
        self, sizes: Sequence[tuple[int, int]], dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The per-layout constants (:func:`_anchor_tables`), built once per layout."""
        return self._constants.get(
            (tuple(sizes), dtype, device), lambda: _anchor_tables(sizes, self.strides, dtype, device)
        )

    def candidate_table(
        self,
        padded: PaddedTargets,
        tables: tuple[Tensor, Tensor, Tensor, Tensor],
        sizes: Sequence[tuple[int, int]],
    ) -> CandidateTable:
        """The assignment's candidate test of these targets on this layout
        (:func:`detloss.assign.candidate_table` with this criterion's ``min_side``): it does not depend
        on the predictions, so criteria of one ``min_side`` assigning the same targets on the same
        anchors share it (:meth:`loss`'s ``candidates``)."""
        return candidate_table(tables[2], padded.boxes, padded.mask, min_side=self.min_side, grid_sizes=sizes)

    def _assign(self, scores, pred_px, points_px, boxes, labels, mask, **options) -> TaskAlignedAssignment:
        """:func:`detloss.assign.task_aligned_assign` with this criterion's settings (``options``: the
        box family's own keywords)."""
        return task_aligned_assign(
            scores, pred_px, points_px, boxes, labels, mask, topk=self.topk, topk2=self.topk2,
            alpha=self.alpha, beta=self.beta, min_side=self.min_side, logits=True, **options,
        )

    def forward(self, preds: Sequence[Tensor] | Mapping[str, object], targets: Targets) -> LossResult:
        heads = self.read_heads(preds, batch_size(targets))
        ref = heads.tensors[0]
        padded = as_padded(
            targets,
            self.num_classes,
            dtype=ref.dtype,
            device=ref.device,
            validate=self.validate,
            fmt=self.box_format,
        )
        return self.loss(heads, padded, self.anchor_tables(heads.sizes, ref.dtype, ref.device))

    def loss(
        self,
        heads: _Heads,
        padded: PaddedTargets,
        tables: tuple[Tensor, Tensor, Tensor, Tensor],
        candidates: CandidateTable | None = None,
    ) -> LossResult:
        """The loss of checked heads (:meth:`read_heads`) on padded targets in the heads' dtype, with
        the layout's anchor tables (:meth:`anchor_tables`) and, made beforehand for these targets, the
        candidate test (:meth:`candidate_table`; else made here)."""
        points, stride, points_px, anchor_ids = tables
        bsz, r = heads.tensors[0].shape[0], self.reg_max
        h0, w0 = heads.sizes[0]
        image_size = (w0 * self.strides[0], h0 * self.strides[0])  # (w, h) pixels

        with torch.no_grad():  # the assigner sees detached predictions, in input pixels
            decoded = [
                self._decode(rows, points[start : start + rows.shape[-1]], channels_first=True)
                for start, rows in heads.box
            ]
            pred_px = (decoded[0] if len(decoded) == 1 else torch.cat(decoded, 1)) * stride  # (B, A, 4)
            boxes, labels, mask = padded.boxes, padded.labels, padded.mask
            a = self._assign(
                heads.cls,
                pred_px,
                points_px,
                boxes,
                labels,
                mask,
                grid_sizes=heads.sizes,
                candidates=candidates,
            )
            idx, used = positive_slots(a.foreground, padded.boxes.shape[1] * self.topk, anchor_ids)
        weight = a.scores  # (B, A): ŝ, the target score summed over the classes; 0 on background
        norm = global_count(weight.sum(), self.reduce_across_ranks, at_least=1.0)

        w = weight.gather(1, idx) * used  # (B, P)
        cap = idx.shape[1]
        pts, st = points[idx], stride[idx]  # (B, P, 2), (B, P, 1)
        target = a.boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)) / st  # grid units
        cls, rows = _HeadTerms.apply(
            heads.parts, heads.num_rows, a.labels, weight, idx, *heads.tensors
        )  # (B,), (B, 4·r, P)
        rows = rows.view(bsz, 4, r, cap).permute(0, 3, 1, 2)  # (B, P, 4, r)
        pred_boxes = self._decode(rows, pts)  # (B, P, 4) xyxy, grid units
        iou = grid_box_iou(
            pred_boxes, target, self.iou_kind, self.iou_eps, self.iou_modifiers, st, image_size
        )
        box = ((1.0 - iou) * w).sum(1)  # (B,)
        ltrb = torch.cat((pts - target[..., :2], target[..., 2:] - pts), -1)  # (B, P, 4) grid units
        reg = self.regression_sums(rows, ltrb, w, st, image_size)
        return combine({"box": box, "cls": cls, self.regression: reg}, self.gains, norm, scale=bsz)

    def regression_sums(
        self, rows: Tensor, ltrb: Tensor, w: Tensor, st: Tensor, image_size: tuple[int, int]
    ) -> Tensor:
        """Per image ``(B,)``: Σ_p w_p · mean_sides of the DFL of the box rows ``(B, P, 4, r)`` against
        the target distances ``ltrb`` ``(B, P, 4)`` (grid units) clamped to [0, r − 1.01], or with
        r = 1 the L1 of the raw distances in input pixels over the input's (W, H, W, H) = image_size
        (``st``: ``(B, P, 1)`` the slots' strides; ``ltrb`` not clamped)."""
        if self.reg_max == 1:  # YOLO26: L1 of the raw distances, in pixels over the input's width / height
            w_px, h_px = image_size
            scale = st / st.new_tensor((w_px, h_px, w_px, h_px))  # (B, P, 4)
            return (((rows.squeeze(-1) - ltrb) * scale).abs().mean(-1) * w).sum(1)
        ltrb = ltrb.clamp(0.0, self.reg_max - 1 - 0.01)  # keeps i + 1 a valid bin: the original's clamp
        return (dfl_from_log_probs(F.log_softmax(rows, dim=-1), ltrb).mean(-1) * w).sum(1)

    def distances(self, rows: Tensor, *, channels_first: bool = False) -> Tensor:
        """ltrb distances (grid units) from box rows: ``(B, 4·r, A)`` with ``channels_first`` →
        ``(B, A, 4)``, else ``(B, P, 4, r)`` → ``(B, P, 4)``; the DFL expectation for r ≥ 2, the raw
        distances for r = 1."""
        if self.reg_max == 1:
            return rows.transpose(1, 2) if channels_first else rows.squeeze(-1)
        if channels_first:
            rows = rows.unflatten(1, (4, self.reg_max))
        return expected_distances(rows, channels_first=channels_first)

    def _decode(self, rows: Tensor, points: Tensor, *, channels_first: bool = False) -> Tensor:
        """xyxy boxes from box rows (:meth:`distances`) around ``points``."""
        return distances_to_boxes(self.distances(rows, channels_first=channels_first), points)
