"""Target handling shared by the criteria: padding, matching and target building (vectorised).

Everything here works on whole batches: targets are padded to ``(B, M, 4)`` with a validity mask,
so no criterion loops over images or boxes in Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .boxes import _convert, check_boxes
from .iou import iou_xyxy
from .losses import check_class_ids


@dataclass
class PaddedTargets:
    """A batch of ground truth padded to the largest image.

    Attributes:
        boxes: ``(B, M, 4)`` xyxy boxes in input pixels; padding rows are 0.
        labels: ``(B, M)`` int64 class ids; padding rows are 0.
        mask: ``(B, M)`` bool, True for real boxes.
    """

    boxes: Tensor
    labels: Tensor
    mask: Tensor

    @property
    def counts(self) -> Tensor:
        """``(B,)`` number of real boxes per image."""
        return self.mask.sum(1)


def pad_targets(
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    validate: bool = True,
) -> PaddedTargets:
    """Validate a list of per-image target dicts and pad them into batch tensors.

    Args:
        targets: B dicts ``{"boxes": (n, 4) float xyxy, "labels": (n,) int64}``; n may be 0.
        num_classes: class ids must lie in ``[0, num_classes)``.
        dtype, device: of the returned boxes.
        validate: check finiteness, positive width and height, and class ranges (the shape and
            type checks always run).

    Raises:
        TypeError / ValueError naming the image and box index.
    """
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise TypeError(f"targets must be a list of dicts, got {type(targets).__name__}")
    boxes, labels = [], []
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
            raise TypeError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
        b = check_boxes(f"targets[{i}]['boxes']", t["boxes"], finite=validate)
        lab = t["labels"]
        if not isinstance(lab, Tensor) or lab.is_floating_point() or lab.is_complex():
            raise TypeError(f"targets[{i}]['labels'] must be an integer tensor")
        if b.dim() != 2 or lab.shape != b.shape[:1]:
            raise ValueError(
                f"targets[{i}]: boxes must be (n, 4) and labels (n,), got "
                f"{tuple(b.shape)} and {tuple(lab.shape)}"
            )
        if validate:
            check_class_ids(f"targets[{i}]['labels']", lab, num_classes)
            bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
            if bool(bad.any()):
                j = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"targets[{i}]['boxes'][{j}] = {b[j].tolist()} has zero or negative width or "
                    "height (xyxy boxes need x2 > x1 and y2 > y1)"
                )
        boxes.append(b)
        labels.append(lab)

    batch = len(boxes)
    m = max((b.shape[0] for b in boxes), default=0)
    if device is None and boxes:
        device = boxes[0].device
    out_boxes = torch.zeros(batch, m, 4, dtype=dtype, device=device)
    out_labels = torch.zeros(batch, m, dtype=torch.int64, device=device)
    counts = torch.tensor([b.shape[0] for b in boxes], dtype=torch.int64, device=device)
    mask = torch.arange(m, device=device) < counts[:, None]
    if m:
        out_boxes[mask] = torch.cat(boxes).to(out_boxes)
        out_labels[mask] = torch.cat(labels).to(out_labels)
    return PaddedTargets(out_boxes, out_labels, mask)


# ---------------------------------------------------------------------------------------------
# YOLOv5 target building (ultralytics/yolov5 utils/loss.py ComputeLoss.build_targets)
# ---------------------------------------------------------------------------------------------

# Cell offsets of the five match groups, in the original's order: own cell, left, up, right, down.
# A group's cell is floor-toward-zero(centre − offset·g), so +g picks the cell to the left/above.
_YOLOV5_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


@dataclass
class YOLOv5Matches:
    """The matches of one scale, in the original's order (offset group → anchor → target).

    Attributes (n = number of matches):
        batch, anchor: ``(n,)`` int64 image and anchor index.
        gj, gi: ``(n,)`` int64 cell row and column, clamped to the grid.
        box: ``(n, 4)`` cxcywh target in grid units: centre minus the UNclamped cell, width, height.
        labels: ``(n,)`` int64 class ids.
        anchors: ``(n, 2)`` the matched anchor's (w, h) in grid units.
        winner: ``(n,)`` bool, True for the last match written to its (image, anchor, cell): the
            one whose IoU becomes the objectness target there.
    """

    batch: Tensor
    anchor: Tensor
    gj: Tensor
    gi: Tensor
    box: Tensor
    labels: Tensor
    anchors: Tensor
    winner: Tensor


def build_yolov5_targets(
    targets: PaddedTargets,
    anchors: Tensor,
    stride: float,
    grid_size: tuple[int, int],
    anchor_t: float = 4.0,
    offset: float = 0.5,
) -> YOLOv5Matches:
    """YOLOv5 target assignment for one scale, vectorised over the batch.

    Steps (``build_targets`` of ComputeLoss):

    1. In grid units (pixels / stride) a box matches anchor ``a`` when
       ``max(r, 1/r) < anchor_t`` for both r = w/a_w and r = h/a_h.
    2. Each match goes to its own cell and to up to two neighbours: left if ``frac(x) < g`` and
       ``x > 1``, up likewise in y, right if ``frac(W − x) < g`` and ``W − x > 1``, down likewise
       (g = ``offset``). The cell is ``trunc(centre − offset)`` (``.long()``), clamped to the grid
       for indexing; the box target keeps the unclamped cell.
    3. Matches are listed group by group, anchor by anchor, target by target in batch order —
       the order in which the original writes the objectness target, so the last match on an
       (image, anchor, cell) is marked ``winner`` (scatter-max of the sequence number: PyTorch's
       index_put with duplicate indices promises no order).

    Args:
        targets: padded xyxy boxes in input pixels, ``(B, M, 4)``, with labels and mask.
        anchors: ``(A, 2)`` anchor (w, h) in grid units of this scale.
        stride: input pixels per cell.
        grid_size: ``(H, W)``.
        anchor_t: the anchor ratio threshold (strict ``<``).
        offset: g, the neighbour-cell offset.
    """
    bsz, m = targets.mask.shape
    num_anchors = anchors.shape[0]
    h, w = grid_size
    cxcywh = _convert(targets.boxes.reshape(bsz * m, 4), "xyxy", "cxcywh") / stride  # (N, 4)
    gxy, gwh = cxcywh[:, :2], cxcywh[:, 2:]

    r = gwh[None] / anchors[:, None]  # (A, N, 2)
    fits = torch.maximum(r, 1.0 / r).amax(2) < anchor_t  # (A, N)
    fits &= targets.mask.reshape(1, -1)

    gxi = gxy.new_tensor([w, h]) - gxy  # distance to the right / bottom edge
    near = (gxy % 1 < offset) & (gxy > 1)  # (N, 2): left, up
    far = (gxi % 1 < offset) & (gxi > 1)  # (N, 2): right, down
    groups = torch.stack((torch.ones_like(near[:, 0]), near[:, 0], near[:, 1], far[:, 0], far[:, 1]))
    group, anchor, t = (groups[:, None, :] & fits[None]).nonzero(as_tuple=True)  # row-major order

    off = gxy.new_tensor(_YOLOV5_OFFSETS) * offset
    centre = gxy[t]
    gij = (centre - off[group]).long()  # truncation toward zero, as the original
    gi, gj = gij[:, 0].clamp(0, w - 1), gij[:, 1].clamp(0, h - 1)
    batch = t // m

    cell = ((batch * num_anchors + anchor) * h + gj) * w + gi
    seq = torch.arange(cell.shape[0], device=cell.device)
    last = torch.full((bsz * num_anchors * h * w,), -1, dtype=seq.dtype, device=seq.device)
    last = last.scatter_reduce(0, cell, seq, "amax")
    return YOLOv5Matches(
        batch=batch,
        anchor=anchor,
        gj=gj,
        gi=gi,
        box=torch.cat((centre - gij, gwh[t]), 1),
        labels=targets.labels.reshape(-1)[t],
        anchors=anchors[anchor],
        winner=last[cell] == seq,
    )


# ---------------------------------------------------------------------------------------------
# SSD prior matching and hard negative mining (SSD.TensorFlow utility/anchor_manipulator.py
# do_dual_max_match, train_ssd.py ssd_model_fn)
# ---------------------------------------------------------------------------------------------

#: ``match_priors`` codes for priors without a box.
PRIOR_NEGATIVE, PRIOR_IGNORED = -1, -2


def match_priors(
    targets: PaddedTargets,
    priors: Tensor,
    match_threshold: float = 0.5,
    ignore_threshold: float | None = None,
) -> Tensor:
    """SSD's dual max matching of priors and boxes, vectorised over the batch.

    Steps (``do_dual_max_match`` with ``gt_max_first=True``):

    1. IoU of every box and prior, 0 where the union is 0 (no eps: a box exactly at the threshold
       matches).
    2. Each prior takes its best box (first on ties) if that IoU ≥ ``match_threshold``; below, it is
       negative, or ignored if the IoU ≥ ``ignore_threshold`` (the band
       ``[ignore_threshold, match_threshold)``).
    3. Each box forces its best prior (first on ties — a box overlapping no prior forces prior 0)
       regardless of the threshold; several boxes forcing one prior: the highest IoU on it wins
       (first on ties).

    Args:
        targets: padded boxes ``(B, M, 4)`` xyxy with their mask.
        priors: ``(P, 4)`` xyxy, in the boxes' coordinates.
        match_threshold: in (0, 1].
        ignore_threshold: ``None`` or in [0, match_threshold].

    Returns:
        ``(B, P)`` int64: the matched box index (≥ 0), ``PRIOR_NEGATIVE`` (−1) or ``PRIOR_IGNORED`` (−2).
    """
    bsz, m = targets.mask.shape
    num_priors = priors.shape[0]
    if m == 0:
        return torch.full((bsz, num_priors), PRIOR_NEGATIVE, dtype=torch.int64, device=priors.device)
    with torch.no_grad():
        # eps = 0: inter/union exactly, with 0/0 (both areas 0) → 0 as in the original
        iou = iou_xyxy(targets.boxes[:, :, None, :], priors[None, None], "iou", 0.0).nan_to_num(0.0)
        iou = iou.masked_fill(~targets.mask[..., None], -1.0)  # (B, M, P); padding never wins

        # torch.max(dim) returns the first index on ties (documented), and over a short middle dim
        # it is several times faster than argmax
        best_iou, best_box = iou.max(1)  # (B, P)
        low = match_threshold if ignore_threshold is None else ignore_threshold
        unmatched = torch.where(best_iou >= low, PRIOR_IGNORED, PRIOR_NEGATIVE)
        matched = torch.where(best_iou >= match_threshold, best_box, unmatched)

        best_prior = iou.argmax(2, keepdim=True)  # (B, M, 1), first on ties
        forced = torch.zeros_like(iou, dtype=torch.bool).scatter_(2, best_prior, targets.mask[..., None])
        forced_box = torch.where(forced, iou, 0.0).max(1).indices  # (B, P) highest IoU of the forcers
        return torch.where(forced.any(1), forced_box, matched)


def hard_negative_mask(
    bg_prob: Tensor, positive: Tensor, negative: Tensor, neg_pos_ratio: float = 3.0
) -> Tensor:
    """Hard negative mining per image by the rank trick.

    Negatives are ranked by ``bg_prob`` lowest first (the most confidently wrong first); each image
    keeps ``k = min(floor(neg_pos_ratio · #positives), #negatives)`` of them, so an image without
    positives keeps none. The rank of every prior is the inverse permutation of a stable sort, so
    ties keep the lower prior index (the original keeps every negative tied with the k-th score).

    Args:
        bg_prob: ``(B, P)`` predicted background probability (no gradient needed).
        positive: ``(B, P)`` bool, the priors counted as positives for k.
        negative: ``(B, P)`` bool, the candidates.
        neg_pos_ratio: ≥ 0.

    Returns:
        ``(B, P)`` bool mask of the kept negatives.
    """
    with torch.no_grad():
        num_pos = positive.sum(1, dtype=torch.float64)
        k = torch.minimum((num_pos * neg_pos_ratio).floor().long(), negative.sum(1))
        score = bg_prob.masked_fill(~negative, float("inf"))
        order = score.argsort(dim=1, stable=True)
        ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, ranks)
        return negative & (rank < k[:, None])
