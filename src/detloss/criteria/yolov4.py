"""YOLOv4 / YOLOv4-tiny criterion, reproducing yolov4-tiny-tf2 (``nets/loss.py``, ``nets/ious.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from ..assign import build_yolov4_targets
from ..checks import check_unit, positive_ints
from ..distributed import global_count
from ..iou import IoUKind
from .darknet import DarknetLoss, yolo_terms
from .result import LossResult
from .targets import Targets

#: name → (anchors in input pixels, anchor mask per scale, strides); scale order = preds order.
PRESETS: dict[str, tuple[tuple[tuple[int, int], ...], tuple[tuple[int, ...], ...], tuple[int, ...]]] = {
    "tiny": (
        ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)),
        ((3, 4, 5), (1, 2, 3)),
        (32, 16),
    ),
    "yolov4": (
        ((12, 16), (19, 36), (40, 28), (36, 75), (76, 55), (72, 146), (142, 110), (192, 243), (459, 401)),
        ((6, 7, 8), (3, 4, 5), (0, 1, 2)),
        (32, 16, 8),
    ),
}


def _masks_fit(masks: Sequence[Sequence[int]], num_scales: int, num_anchors: int) -> bool:
    return len(masks) == num_scales and all(0 <= k < num_anchors for m in masks for k in m)


def _masks_by_stride(strides: Sequence[int], num_anchors: int) -> tuple[tuple[int, ...], ...]:
    """Default masks for custom anchors: anchors listed small to large, split evenly over the scales,
    the largest anchors on the largest stride (YOLOv4's [[6,7,8],[3,4,5],[0,1,2]] for strides 32,16,8)."""
    if num_anchors % len(strides):
        raise ValueError(
            f"{num_anchors} anchors do not split evenly over {len(strides)} strides; pass anchor_masks"
        )
    per = num_anchors // len(strides)
    rank = {s: r for r, s in enumerate(sorted(range(len(strides)), key=lambda i: strides[i]))}
    return tuple(tuple(range(rank[i] * per, (rank[i] + 1) * per)) for i in range(len(strides)))


class YOLOv4Loss(DarknetLoss):
    """YOLOv4 loss as yolov4-tiny-tf2 computes it; the default preset is YOLOv4-tiny.

    Targets from :func:`detloss.assign.build_yolov4_targets` (best anchor by centred w-h IoU, written
    on every scale whose mask holds it; a later box overwrites the coordinates while the class vector
    keeps a 1 for every class written there). Per scale, with resp the responsible mask::

        box    = resp · (2 − w·h) · (1 − CIoU(pred, target))          w, h normalised by the input
        ignore = [max IoU(pred, boxes held by the scale's responsible slots in the image) < ignore_thresh]
        obj    = resp · BCE(t_obj, 1) + (1 − resp) · BCE(t_obj, 0) · ignore
        cls    = resp · Σ_c BCE(t_c, y·(1 − ε) + ε/C)                 y the class vector, ε = label_smoothing

    ``total = Σ_scales (box + obj + cls) / N`` with ``N = Σ_scales max(#resp on the scale, 1)`` when
    ``normalize`` (default), else the batch size; each component is divided by the same N, and so is
    image b's share, ``per_image[b]``, the same sums over its own cells.

    CIoU is computed in coordinates proportional to the original's normalised ones (x / W_in,
    y / H_in, times max(W_in, H_in)), so non-square inputs get the original's distance and aspect
    terms; the eps placement of ``iou_xyxy`` differs from nets/ious.py only by ~1e-7 / (union in pixels²)
    relative (≤ 1e-9 once the union exceeds 100 px²), and α is held constant in the gradient (the original
    differentiates through α; the values agree).

    Args:
        num_classes: C.
        preset: ``"tiny"`` (anchors 10,14 23,27 37,58 81,82 135,169 344,319, masks [[3,4,5],[1,2,3]],
            strides (32, 16)) or ``"yolov4"`` (nine anchors, masks [[6,7,8],[3,4,5],[0,1,2]],
            strides (32, 16, 8)); ``anchors``, ``anchor_masks``, ``strides`` override it. Without
            ``anchor_masks``, the preset's masks are kept when they fit the anchors and strides,
            otherwise the anchors (listed small to large) are split evenly over the scales, the
            largest on the largest stride.
        ignore_thresh: 0.5. label_smoothing: ε, 0 by default. normalize: see above.
        floor_centre: floor box centres to whole pixels like the original data loader's
            ``(x1 + x2) // 2`` (off: exact centres).
        iou_kind, iou_eps: the box loss's IoU (option; default CIoU, eps 1e-7).
        iou_modifiers: keyword modifiers of :func:`detloss.bbox_iou` for the box loss's IoU, as a
            dict (``alpha``, ``inner_ratio`` or ``focaler``, e.g. ``{"alpha": 3.0}``); ``iou_kind="mpdiou"``
            takes the input size as its image size.
        obj_gamma, obj_alpha: focal weighting of the objectness (option; default off: γ = 0, α < 0).
        box, obj, cls: the gains, multiplying each component (option; default 1).
        validate: check targets (finite, positive size, class range, centre inside the input).
        reduce_across_ranks: under DistributedDataParallel, N is computed from the counts summed over
            the ranks, ``Σ_scales max(Σ_ranks #resp, 1) / K`` on each of K ranks (the batch size
            likewise with ``normalize=False``; :func:`detloss.distributed.global_count`), so DDP's
            gradient average equals the single-process gradient of the whole batch. No effect
            without a process group.

    Call:
        preds: the raw head outputs ``(B, A·(5+C), H, W)`` in the order of ``strides`` (the presets
            list the coarsest scale first, as the original's heads), A = the anchors per mask.
        targets: B dicts ``{"boxes": (n, 4) xyxy input pixels, "labels": (n,) int64}``, or a
            :class:`detloss.assign.PaddedTargets` of boxes ``(B, M, 4)``, xyxy input pixels, on the
            heads' device (taken as they are: no padding, no checks).

    Returns:
        :class:`LossResult`: ``total``, the components ``{"box", "obj", "cls"}`` (each divided by N
        and multiplied by its gain) and ``per_image`` ``(B,)``; half-precision heads give float32.
    """

    def __init__(
        self,
        num_classes: int,
        preset: Literal["tiny", "yolov4"] = "tiny",
        *,
        box: float = 1.0,
        obj: float = 1.0,
        cls: float = 1.0,
        anchors: Sequence | None = None,
        anchor_masks: Sequence[Sequence[int]] | None = None,
        strides: Sequence[int] | None = None,
        ignore_thresh: float = 0.5,
        label_smoothing: float = 0.0,
        normalize: bool = True,
        floor_centre: bool = False,
        iou_kind: IoUKind = "ciou",
        iou_eps: float = 1e-7,
        iou_modifiers: Mapping[str, object] | None = None,
        obj_gamma: float = 0.0,
        obj_alpha: float = -1.0,
        validate: bool = True,
        reduce_across_ranks: bool = False,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        p_anchors, p_masks, p_strides = PRESETS[preset]
        flat = torch.as_tensor(p_anchors if anchors is None else anchors, dtype=torch.float64).reshape(-1, 2)
        if flat.shape[0] == 0 or not bool((flat > 0).all()):
            raise ValueError("anchors must be positive (w, h) pairs")
        strides = positive_ints("strides", p_strides if strides is None else strides)
        if anchor_masks is None:
            anchor_masks = p_masks if _masks_fit(p_masks, len(strides), flat.shape[0]) else _masks_by_stride(
                strides, flat.shape[0]
            )
        masks = tuple(tuple(int(i) for i in m) for m in anchor_masks)
        if len(masks) != len(strides) or len({len(m) for m in masks}) != 1 or not masks[0]:
            raise ValueError("anchor_masks must give the same number of anchors for every scale in strides")
        for i, m in enumerate(masks):
            if any(not 0 <= k < flat.shape[0] for k in m) or len(set(m)) != len(m):
                raise ValueError(f"anchor_masks[{i}] = {m} must hold distinct ids in [0, {flat.shape[0]})")
        self.anchors = tuple((float(w), float(h)) for w, h in flat.tolist())
        super().__init__(
            num_classes, strides, [[self.anchors[i] for i in m] for m in masks],
            label_smoothing=label_smoothing, iou_kind=iou_kind, iou_eps=iou_eps, iou_modifiers=iou_modifiers,
            obj_gamma=obj_gamma, obj_alpha=obj_alpha, gains={"box": box, "obj": obj, "cls": cls},
            validate=validate, reduce_across_ranks=reduce_across_ranks,
        )
        check_unit("ignore_thresh", ignore_thresh)
        self.anchor_masks, self.ignore_thresh = masks, ignore_thresh
        self.normalize, self.floor_centre = normalize, floor_centre

    def forward(self, preds: Sequence[Tensor], targets: Targets) -> LossResult:
        x = self._inputs(preds, targets)
        tg, (in_h, in_w), dtype, dev = x.targets, x.input_size, x.views[0].dtype, x.views[0].device
        c, a_count = self.num_classes, len(self.anchor_masks[0])
        anchors = self._constants.get(  # all K anchors (K, 2): the builder picks the best of them
            ("anchors", dtype, dev), lambda: torch.tensor(self.anchors, dtype=dtype, device=dev)
        )
        asg = build_yolov4_targets(
            tg.boxes, tg.mask, anchors, self.anchor_masks, x.grids, x.input_size,
            floor_centre=self.floor_centre, validate=False,
        )
        b, m, s_count, _ = asg.assigned.shape
        # class vectors: every assigned box sets a 1 at its class in the slot's final holder (the
        # original writes y_true[..., 5 + c] = 1 without clearing the row); the writes all store 1,
        # so duplicate indices cannot make the result order-dependent
        holder = asg.owner.flatten(1)  # (B, N)
        n = holder.shape[1]
        label = tg.labels[:, :, None, None].expand_as(asg.owner).flatten(1)
        flat = holder.masked_fill(holder < 0, n) * c + label  # (holder, class) in a (N + 1, C) row
        multi = torch.zeros(b, (n + 1) * c, dtype=dtype, device=dev).scatter_(1, flat, 1.0)
        cls_target = self._class_targets(multi[:, : n * c].view(b, m, s_count, a_count, c))

        side = max(in_w, in_h)
        unit = torch.tensor([side / in_w, side / in_h] * 2, dtype=dtype, device=dev)
        wh = asg.boxes[..., 2:] - asg.boxes[..., :2]
        box_scale = (2.0 - wh.prod(-1) / (in_w * in_h)).view(b, m, 1, 1)
        terms = yolo_terms(
            x.views, asg.cell, asg.winner.to(dtype), x.tables,
            (asg.boxes * unit)[:, :, None, None], box_scale, cls_target, asg.held, asg.boxes,
            self.iou_kind, self.iou_eps, fill=-1.0, unit=unit,
            iou_kw={**self.iou_modifiers, "image_size": float(side)},  # the units of `unit`
        )
        ignore = terms.best_iou < self.ignore_thresh  # (B, P): all scales' slots; all True without boxes
        if self.normalize:  # N = Σ_s max(#responsible slots of scale s, 1); an occupied slot has one winner
            per_scale = asg.winner.sum((0, 1, 3), dtype=dtype)
            norm = global_count(per_scale, self.reduce_across_ranks, at_least=1.0).sum()
        else:
            norm = self._batch_norm(b, dev, dtype)
        # weight 1 on the responsible slots, the ignore mask elsewhere
        return self._result(terms, asg.occupied, asg.occupied | ignore, norm)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, anchor_masks={self.anchor_masks}, strides={self.strides}, "
            f"iou_kind={self.iou_kind!r}, normalize={self.normalize}"
        )
