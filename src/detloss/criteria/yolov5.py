"""YOLOv5 criterion: reproduces ultralytics/yolov5 ``utils/loss.py`` ``ComputeLoss``.

Per scale i, with the matches of :func:`detloss.assign.yolov5_candidates`::

    box_i = mean over matches of (1 − CIoU(decode(t), target))         (CIoU eps 1e-7, α no-grad)
    obj_i = balance_i · mean over all B·A·H·W cells of BCE(t_obj, tobj)
            tobj = (1 − gr) + gr · clamp(CIoU.detach(), 0) on matched cells (last write wins), else 0
    cls_i = mean over matches × classes of BCE(t_cls, cp/cn one-hot)     (only when C > 1)

    box = gain_box · Σ box_i,  obj = gain_obj · Σ obj_i,  cls = gain_cls · Σ cls_i
    total = (box + obj + cls) · B

Image b's share, ``per_image[b]``, is the same sums over its own matches and cells with the same
means' denominators (the batch's match and cell counts), times B.

The gains are the scratch hyper-parameters (hyp.scratch-low.yaml); :func:`yolov5_scaled_gains`
gives the per-model scaling that YOLOv5's train.py applies. Details and differences: docs/yolov5.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..assign import YOLOv5Layout, yolov5_candidates, yolov5_layout
from ..checks import check_eps, check_num_classes, check_number, check_unit, positive_ints
from ..codecs import decode_yolov5
from ..distributed import global_count
from ..iou import IoUKind, compute_dtype
from .anchors import COCO_ANCHORS, anchor_table
from .box_iou import grid_box_iou, iou_options
from .cache import ConstantCache
from .heads import gather_head, split_yolo_heads
from .parts import check_gains, combine, focal_terms
from .result import LossResult
from .targets import Targets, as_padded, batch_size

#: yolov5s.yaml's P3–P5 anchors: YOLOv3's COCO anchors.
YOLOV5_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = COCO_ANCHORS
YOLOV5_STRIDES: tuple[int, ...] = (8, 16, 32)
# ComputeLoss.balance: {3: [4.0, 1.0, 0.4]}.get(nl, [4.0, 1.0, 0.25, 0.06, 0.02])
_BALANCE_3 = (4.0, 1.0, 0.4)
_BALANCE_OTHER = (4.0, 1.0, 0.25, 0.06, 0.02)
_FOCAL_ALPHA = 0.25


def yolov5_scaled_gains(
    num_classes: int,
    num_layers: int = 3,
    imgsz: int = 640,
    box: float = 0.05,
    obj: float = 1.0,
    cls: float = 0.5,
) -> dict[str, float]:
    """The loss gains after YOLOv5 train.py's per-model scaling (not applied by :class:`YOLOv5Loss`)::

        box · 3/nl,   cls · C/80 · 3/nl,   obj · (imgsz/640)² · 3/nl

    Example: ``YOLOv5Loss(C, **yolov5_scaled_gains(C, imgsz=320))`` trains like ``train.py --img 320``.
    """
    if num_classes < 1 or num_layers < 1 or imgsz <= 0:
        raise ValueError(
            f"num_classes, num_layers and imgsz must be positive, got {num_classes}, {num_layers}, {imgsz}"
        )
    layers = 3.0 / num_layers
    return {
        "box": box * layers,
        "cls": cls * num_classes / 80.0 * layers,
        "obj": obj * (imgsz / 640.0) ** 2 * layers,
    }


@dataclass
class _HeadTables:
    """Per-layout constants of :class:`YOLOv5Loss`: the candidates' layout, the flat head offsets of
    plane and channel, and the objectness weight ``balance_s / (B·A·H_s·W_s)`` of every cell of an
    image, scale after scale."""

    layout: YOLOv5Layout
    plane_stride: Tensor  # (S, 1, 1, 1) K·H_s·W_s
    channel: Tensor  # (S, 1, 1, 1, K) k·H_s·W_s
    per_cell: Tensor  # (Σ_s A·H_s·W_s,)


class YOLOv5Loss(nn.Module):
    """The YOLOv5 training loss (``ComputeLoss``, v6/v7 releases, ``autobalance=False``).

    Args:
        num_classes: C.
        anchors: per scale a sequence of (w, h) in input pixels (default: the P3–P5 anchors of
            yolov5s.yaml) or a tensor ``(nl, A, 2)``.
        strides: input pixels per cell, one per scale.
        box, obj, cls: loss gains (hyp ``box``, ``obj``, ``cls``).
        cls_pw, obj_pw: BCE ``pos_weight`` (hyp ``cls_pw``, ``obj_pw``).
        anchor_t: anchor ratio threshold (hyp ``anchor_t``).
        fl_gamma: > 0 wraps both BCEs in the focal loss (α = 0.25) of :func:`detloss.sigmoid_focal_loss`.
        label_smoothing: ε; class targets cp = 1 − ε/2, cn = ε/2.
        gr: objectness IoU ratio (``model.gr``).
        balance: per-scale objectness weights; default (4.0, 1.0, 0.4) for 3 scales, else
            (4.0, 1.0, 0.25, 0.06, 0.02)[:nl] as the original.
        iou_kind: the IoU of the box loss and the objectness target (option; default the original's
            CIoU): any kind of :func:`detloss.bbox_iou`.
        iou_eps: that IoU's eps (the original's 1e-7).
        iou_modifiers: keyword modifiers of :func:`detloss.bbox_iou` for the box loss's IoU, as a
            dict (``alpha``, ``inner_ratio`` or ``focaler``, e.g. ``{"alpha": 3.0}``); ``iou_kind="mpdiou"``
            takes the input size as its image size.
        validate: check targets (finite, positive size, class range) in :func:`detloss.assign.pad_targets`.
        reduce_across_ranks: under DistributedDataParallel, the box and class means over matches
            become sums over the rank's matches divided by the match count averaged over the ranks
            (:func:`detloss.distributed.global_count`); the objectness mean over cells and the ``· B``
            stay per rank. With equal per-rank batches, K ranks then give exactly 1/K of the
            single-process gradient of the whole batch, which YOLOv5's train.py undoes by scaling
            the loss by the world size. No effect without a process group.

    Call:
        preds: one ``(B, A*(5+C), H, W)`` raw head output per scale.
        targets: B dicts ``{"boxes": (n, 4) xyxy input pixels, "labels": (n,) int64}``, or a
            :class:`detloss.assign.PaddedTargets` (boxes ``(B, M, 4)`` xyxy input pixels) already on
            the device (skips the padding and its checks).

    Returns:
        :class:`LossResult` with ``total = (box + obj + cls) · B``, components ``{"box", "obj", "cls"}``
        (gains applied, not multiplied by B) and ``per_image`` ``(B,)``.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: Sequence[Sequence[Sequence[float]]] | Tensor = YOLOV5_ANCHORS,
        strides: Sequence[int] = YOLOV5_STRIDES,
        *,
        box: float = 0.05,
        obj: float = 1.0,
        cls: float = 0.5,
        iou_kind: IoUKind = "ciou",
        iou_eps: float = 1e-7,
        iou_modifiers: Mapping[str, object] | None = None,
        cls_pw: float = 1.0,
        obj_pw: float = 1.0,
        anchor_t: float = 4.0,
        fl_gamma: float = 0.0,
        label_smoothing: float = 0.0,
        gr: float = 1.0,
        balance: Sequence[float] | None = None,
        validate: bool = True,
        reduce_across_ranks: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        strides = positive_ints("strides", strides)
        anchors_t = torch.tensor(anchor_table(anchors, len(strides)), dtype=torch.float64)  # (S, A, 2)
        if balance is None:
            balance = _BALANCE_3 if len(strides) == 3 else _BALANCE_OTHER[: len(strides)]
        if len(balance) != len(strides):
            raise ValueError(f"balance needs {len(strides)} values, got {len(balance)}")
        self.balance = tuple(check_number(f"balance[{i}]", b, low=0.0) for i, b in enumerate(balance))
        self.anchor_t = check_number("anchor_t", anchor_t, low=1.0, open_low=True)
        self.fl_gamma = check_number("fl_gamma", fl_gamma, low=0.0)
        check_unit("label_smoothing", label_smoothing)
        check_unit("gr", gr)
        self.cls_pw = check_number("cls_pw", cls_pw, low=0.0, open_low=True)
        self.obj_pw = check_number("obj_pw", obj_pw, low=0.0, open_low=True)
        check_eps(iou_eps, "iou_eps")
        self.iou_kind, self.iou_eps = iou_kind, float(iou_eps)
        self.iou_modifiers = iou_options(iou_kind, iou_modifiers)
        self.strides = strides
        # anchors in grid units per scale, like Detect.anchors after check_anchor_order
        self.register_buffer(
            "anchors", anchors_t / torch.tensor(strides, dtype=torch.float64)[:, None, None], persistent=False
        )
        self.gains = check_gains(box=box, obj=obj, cls=cls)
        self.gr = float(gr)
        self.cp, self.cn = 1.0 - 0.5 * label_smoothing, 0.5 * label_smoothing
        self.validate, self.reduce_across_ranks = bool(validate), bool(reduce_across_ranks)
        self._constants = ConstantCache()

    def _tables(
        self, grids: list[tuple[int, int]], dtype: torch.dtype, dev: torch.device, batch: int
    ) -> _HeadTables:
        layout = yolov5_layout(batch, self.anchors.to(dtype=dtype, device=dev), self.strides, grids)
        num_anchors, k = self.anchors.shape[1], 5 + self.num_classes
        hw = torch.tensor([h * w for h, w in grids], device=dev).view(-1, 1, 1, 1)
        sizes = [num_anchors * h * w for h, w in grids]  # cells of one image per scale
        per_cell = [bal / max(batch * n, 1) for bal, n in zip(self.balance, sizes, strict=True)]
        per_cell = torch.tensor(per_cell, dtype=dtype, device=dev)
        return _HeadTables(
            layout=layout,
            plane_stride=hw * k,
            channel=hw[..., None] * torch.arange(k, device=dev),
            per_cell=per_cell.repeat_interleave(torch.tensor(sizes, device=dev), output_size=sum(sizes)),
        )

    def _bce(self, logits: Tensor, target: Tensor, pos_weight: float, weight: Tensor) -> Tensor:
        """Elementwise ``weight · BCE-with-logits``, or YOLOv5's FocalLoss wrapper around it when
        fl_gamma > 0."""
        pw = None if pos_weight == 1 else logits.new_tensor([pos_weight])  # 1: the same numbers
        alpha = _FOCAL_ALPHA if self.fl_gamma > 0 else -1.0  # α < 0 with γ = 0: plain BCE
        return focal_terms(logits, target, weight, alpha, self.fl_gamma, pw)

    def forward(self, preds: Sequence[Tensor], targets: Targets) -> LossResult:
        num_scales, num_anchors, batch = len(self.strides), self.anchors.shape[1], batch_size(targets)
        split_yolo_heads(preds, [num_anchors] * num_scales, self.num_classes, self.strides, batch)
        dtype, dev = compute_dtype(preds[0]), preds[0].device  # fp16/bf16 heads: computed in float32
        padded = as_padded(targets, self.num_classes, dtype=dtype, device=dev, validate=self.validate)
        m = padded.mask.shape[1]
        grids = [(p.shape[2], p.shape[3]) for p in preds]
        tables = self._constants.get(
            (batch, tuple(grids), dtype, dev), lambda: self._tables(grids, dtype, dev, batch)
        )
        cand = yolov5_candidates(padded, tables.layout, self.anchor_t)
        # one gather per head (indexed for all scales at once); everything after runs once over the
        # candidates of all scales
        index = cand.plane * tables.plane_stride + cand.gj * tables.layout.width + cand.gi  # (S, G, A, N)
        index = index[..., None] + tables.channel  # (S, G, A, N, 5 + C)
        obj_logits, rows = [], []
        for s, p in enumerate(preds):
            b, _, h, w = p.shape
            obj, r = gather_head(p.to(dtype).view(b, num_anchors, 5 + self.num_classes, h, w), index[s])
            obj_logits.append(obj.flatten(1))
            rows.append(r)
        obj_logits, rows = torch.cat(obj_logits, 1), torch.stack(rows)  # (B, P), (S, G, A, N, 5 + C)

        # box: per scale the mean of 1 − IoU over its matches (0 without matches)
        pbox = decode_yolov5(rows[..., :4], cand.anchors, fmt="xyxy")  # grid units, own cell
        stride = torch.tensor(self.strides, dtype=dtype, device=dev).view(-1, 1, 1, 1, 1)
        in_size = (grids[0][1] * self.strides[0], grids[0][0] * self.strides[0])
        iou = grid_box_iou(
            pbox, cand.box_xyxy, self.iou_kind, self.iou_eps, self.iou_modifiers, stride, in_size
        )
        valid = cand.valid.to(dtype)
        n = global_count(valid.sum((1, 2, 3)), self.reduce_across_ranks)  # (S,) matches per scale
        # n is 0 (then every weight is 0) or at least 1 / world size: the clamp only avoids 0/0
        per_match = valid / n.clamp(min=1e-6).view(-1, 1, 1, 1)
        lbox = ((1.0 - iou) * per_match).sum((0, 1, 2)).view(batch, m).sum(1)  # (B,)

        # objectness: the winner's clamped IoU on its cell (later write wins), mean per scale × balance
        score = iou.detach().clamp(min=0)
        if self.gr < 1:
            score = (1.0 - self.gr) + self.gr * score
        # a sum where only the winner adds a non-zero value: exact and order-free
        tobj = torch.zeros(cand.num_slots, dtype=dtype, device=dev)
        tobj = tobj.scatter_add_(0, cand.slot.reshape(-1), (score * cand.winner).reshape(-1))
        tobj = tobj.view(batch, tables.layout.per_image)
        lobj = self._bce(obj_logits, tobj, self.obj_pw, tables.per_cell).sum(1)

        # classes: per scale the mean over matches × classes of BCE(t_cls, cp/cn one-hot)
        lcls = lobj.new_zeros(batch)
        if self.num_classes > 1:
            logits = rows[..., 5:]
            onehot = cand.labels[:, None] == torch.arange(self.num_classes, device=dev)
            t = onehot.to(dtype) if self.cn == 0 else torch.where(onehot, self.cp, self.cn).to(dtype)
            t = t.expand_as(logits)
            terms = self._bce(logits, t, self.cls_pw, (per_match / self.num_classes)[..., None])
            lcls = terms.sum((0, 1, 2, 4)).view(batch, m).sum(1)
        return combine({"box": lbox, "obj": lobj, "cls": lcls}, self.gains, 1.0, scale=batch)
