"""Target handling shared by the criteria: padding, matching and target building (vectorised).

Everything here works on whole batches: targets are padded to ``(B, M, 4)`` with a validity mask,
so no criterion loops over images or boxes in Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .boxes import check_boxes, check_finite, convert
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
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    boxes, labels = [], []
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
            raise TypeError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
        b = check_boxes(f"targets[{i}]['boxes']", t["boxes"], finite=False)
        lab = t["labels"]
        integer = isinstance(lab, Tensor) and not (
            lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool
        )
        if not integer:
            raise TypeError(f"targets[{i}]['labels'] must be an integer tensor")
        if b.dim() != 2 or lab.shape != b.shape[:1]:
            raise ValueError(
                f"targets[{i}]: boxes must be (n, 4) and labels (n,), got "
                f"{tuple(b.shape)} and {tuple(lab.shape)}"
            )
        boxes.append(b)
        labels.append(lab)
    if validate:
        _check_values(boxes, labels, num_classes, dtype)

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


def _check_values(boxes: list[Tensor], labels: list[Tensor], num_classes: int, dtype: torch.dtype) -> None:
    """Finite boxes (in ``dtype``: 1e30 is finite in float32 but inf in float16), x2 > x1, y2 > y1
    and class ids in range: one pass and one host sync over the whole batch; only on failure are
    the images checked one by one, to name the first bad image and box."""
    if not any(b.shape[0] for b in boxes):
        return
    b, lab = torch.cat([x.to(dtype) for x in boxes]), torch.cat(labels)
    ok = torch.isfinite(b).all(1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    if bool((ok & (lab >= 0) & (lab < num_classes)).all()):
        return
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        b = b.to(dtype)  # a width that rounds to 0 in float16 is a zero width
        check_finite(f"targets[{i}]['boxes'] (as {dtype})", b)
        check_class_ids(f"targets[{i}]['labels']", lab, num_classes)
        bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"targets[{i}]['boxes'][{j}] = {b[j].tolist()} has zero or negative width or "
                "height (xyxy boxes need x2 > x1 and y2 > y1)"
            )


# ---------------------------------------------------------------------------------------------------
# YOLOv3 / YOLOv4 target building (the ignore-threshold family)
#
# A box is a *candidate* for every (scale s, anchor a): shape (B, M, S, A). The builders decide which
# candidates are assigned, the cell each one writes, and which assigned candidate still holds its slot
# (image, scale, anchor, cell) once every box has been written in list order ("later box wins").
# Collisions are resolved with a scatter of the candidate index under ``amax``, which is order-free and
# therefore deterministic, unlike index_put with duplicate indices.
# ---------------------------------------------------------------------------------------------------


@dataclass
class YoloAssignment:
    """Sparse YOLO targets: which anchor of which scale holds which ground-truth box.

    Candidates are ordered box-major, flat index ``(m·S + s)·A + a``, which is also the write order.

    Attributes:
        boxes: ``(B, M, 4)`` xyxy target boxes in input pixels, as written into the targets.
        assigned: ``(B, M, S, A)`` bool, box m is written to anchor a of scale s (before collisions).
        winner: ``(B, M, S, A)`` bool, assigned and still holding its slot after all later boxes.
        owner: ``(B, M, S, A)`` int64, for an assigned candidate the flat index of the candidate that
            holds its slot at the end (itself if it is the winner); -1 for the others.
        cell: ``(B, M, S, 2)`` int64 cell ``(gx, gy)`` written on each scale.
        held: ``(B, M, S)`` bool, the boxes scale s compares predictions with in the ignore test.
        responsible: per scale ``(B, A, H, W)`` bool, the slots holding a box.
    """

    boxes: Tensor
    assigned: Tensor
    winner: Tensor
    owner: Tensor
    cell: Tensor
    held: Tensor
    responsible: list[Tensor]


def resolve_collisions(slot: Tensor, assigned: Tensor, num_slots: int) -> tuple[Tensor, Tensor]:
    """Later write wins: for each assigned candidate, the last assigned candidate with the same slot.

    Args:
        slot: ``(B, N)`` int64 slot of each candidate in ``[0, num_slots)``, candidates in write order.
        assigned: ``(B, N)`` bool.
        num_slots: slots per image.

    Returns:
        owner ``(B, N)`` int64 (-1 where not assigned) and occupied ``(B, num_slots)`` bool.
    """
    b, n = slot.shape
    order = torch.arange(n, device=slot.device).expand(b, n)
    target = slot.masked_fill(~assigned, num_slots)  # unassigned candidates go to a spare slot
    last = torch.full((b, num_slots + 1), -1, dtype=torch.int64, device=slot.device)
    last.scatter_reduce_(1, target, order, reduce="amax")
    return last.gather(1, target).masked_fill(~assigned, -1), last[:, :num_slots] >= 0


class _HeadAtCells(torch.autograd.Function):
    """Objectness plane and per-box rows of one head; the backward pass fills a single gradient buffer
    (two separate indexing ops would each allocate and zero a head-sized gradient, then add them)."""

    @staticmethod
    def forward(ctx, head: Tensor, obj_channel: int, flat_index: Tensor) -> tuple[Tensor, Tensor]:
        ctx.shape, ctx.obj_channel = head.shape, obj_channel
        ctx.save_for_backward(flat_index)
        # a flat take: advanced indexing with a slice between the indices copies the whole head
        return head[:, :, obj_channel], head.reshape(-1)[flat_index]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_obj: Tensor | None, g_rows: Tensor | None) -> tuple[Tensor | None, None, None]:
        (flat_index,) = ctx.saved_tensors
        ref = g_obj if g_obj is not None else g_rows
        grad = ref.new_zeros(ctx.shape)
        if g_obj is not None:
            grad[:, :, ctx.obj_channel] = g_obj
        if g_rows is not None:  # summed where boxes share a cell
            grad.view(-1).index_add_(0, flat_index.flatten(), g_rows.flatten())
        return grad, None, None


def gather_at_cells(head: Tensor, cell: Tensor, obj_channel: int = 4) -> tuple[Tensor, Tensor]:
    """The objectness plane of a head and its values at each box's cell, for every anchor.

    Args:
        head: ``(B, A, K, H, W)``, the memory order of a raw ``(B, A·K, H, W)`` head output.
        cell: ``(B, M, 2)`` int64 ``(gx, gy)``.
        obj_channel: the channel returned as a plane.

    Returns:
        ``(B, A, H, W)`` channel ``obj_channel`` and ``(B, M, A, K)`` rows; gradients flow back to the
        plane and to the gathered cells only (summed where boxes share a cell).
    """
    b, a, k, h, w = head.shape
    dev = head.device
    bi = torch.arange(b, device=dev).view(b, 1, 1)
    ai = torch.arange(a, device=dev).view(1, 1, a)
    base = (bi * a + ai) * (k * h * w) + cell[..., 1:2] * w + cell[..., 0:1]  # (B, M, A)
    flat_index = base[..., None] + torch.arange(k, device=dev) * (h * w)  # (B, M, A, K)
    return _HeadAtCells.apply(head, obj_channel, flat_index)


def best_iou_with(pred: Tensor, boxes: Tensor, keep: Tensor, fill: float, eps: float = 0.0) -> Tensor:
    """Best IoU of every predicted box with the kept boxes of the same image (no gradient).

    Args:
        pred: ``(B, P, 4)`` xyxy. boxes: ``(B, M, 4)`` xyxy with positive area. keep: ``(B, M)`` bool.
        fill: the value for an image without kept boxes.
        eps: added to the union (0 = the originals' plain ``inter / union``; the target boxes have
            positive area, so the union is positive).

    Returns:
        ``(B, P)``.
    """
    with torch.no_grad():
        if boxes.shape[1] == 0:
            return pred.new_full(pred.shape[:2], fill)
        iou = iou_xyxy(pred[:, :, None, :], boxes[:, None, :, :], "iou", eps)  # (B, P, M)
        return iou.masked_fill(~keep[:, None, :], fill).amax(-1)


def _check_centres(boxes: Tensor, mask: Tensor, input_size: tuple[int, int]) -> None:
    """A box centre must lie inside the input, [0, W) × [0, H): its cell is where the box is trained."""
    h, w = input_size
    c = (boxes[..., :2] + boxes[..., 2:]) * 0.5
    bad = mask & ((c < 0).any(-1) | (c[..., 0] >= w) | (c[..., 1] >= h))
    if bad.numel() and bool(bad.any()):
        i, j = bad.nonzero()[0].tolist()
        raise ValueError(
            f"targets[{i}]['boxes'][{j}] = {boxes[i, j].tolist()} has its centre outside the "
            f"{w}x{h} input: YOLO trains a box at the cell of its centre"
        )


def _finish_yolo_assignment(
    boxes: Tensor, assigned: Tensor, cell: Tensor, grids: Sequence[tuple[int, int]], held: Tensor | None
) -> YoloAssignment:
    """Slots, collisions and per-scale responsibility maps shared by the YOLOv3/v4 builders."""
    b, m, s, a = assigned.shape
    dev = boxes.device
    sizes = [a * h * w for h, w in grids]  # slots per scale (Python ints: no device sync)
    hs = torch.tensor([g[0] for g in grids], device=dev)
    ws = torch.tensor([g[1] for g in grids], device=dev)
    offsets = torch.tensor([sum(sizes[:i]) for i in range(s)], device=dev)
    lim = torch.stack((ws, hs), -1) - 1  # (S, 2) largest (gx, gy)
    cell = torch.minimum(cell.clamp(min=0), lim)  # no-op for checked centres; guards validate=False
    anchor = torch.arange(a, device=dev)
    slot = offsets[:, None] + (anchor * hs[:, None] + cell[..., 1:2]) * ws[:, None] + cell[..., 0:1]
    owner, occupied = resolve_collisions(slot.flatten(1), assigned.flatten(1), sum(sizes))
    owner = owner.view(b, m, s, a)
    winner = owner == torch.arange(m * s * a, device=dev).view(m, s, a)
    if held is None:  # the boxes still held by a responsible slot after overwriting
        held = winner.any(-1)
    responsible = [
        r.view(b, a, h, w) for r, (h, w) in zip(occupied.split(sizes, dim=1), grids, strict=True)
    ]
    return YoloAssignment(boxes, assigned, winner, owner, cell, held, responsible)


def build_yolov3_targets(
    boxes: Tensor,
    mask: Tensor,
    anchors: Tensor,
    strides: Sequence[int],
    grids: Sequence[tuple[int, int]],
    *,
    anchor_iou_thresh: float = 0.3,
    max_boxes_per_scale: int = 150,
    fallback_clip_bug: bool = False,
    validate: bool = True,
) -> YoloAssignment:
    """YOLOv3 targets as tensorflow-yolov3's ``Dataset.preprocess_true_boxes`` builds them.

    Per box and scale, in grid units (pixels / stride): the scale's anchors (pixels / stride) are placed
    at the centre of the box's cell, ``floor(c / stride) + 0.5``, and compared to the box by
    ``IoU = inter / (union + 1e-6)``; every anchor with ``IoU > anchor_iou_thresh`` takes the box at that
    cell. A box no anchor of any scale takes goes to the best of all S·A anchors (the first on ties) at
    its own scale. A later box overwrites an earlier one's slot entirely. Scale s's ignore test uses
    every box assigned on s (once, even if overwritten), at most the last ``max_boxes_per_scale``
    (the original's ring buffer of 150).

    Args:
        boxes: ``(B, M, 4)`` xyxy in input pixels; mask: ``(B, M)`` bool real boxes.
        anchors: ``(S, A, 2)`` anchor (w, h) in input pixels; strides: S strides;
        grids: S grid sizes ``(H, W)``.
        fallback_clip_bug: reproduce the repository's last commit, which clips the fallback cell with
            the last scale's grid size (moving small boxes' cells); off = the behaviour before it.
        validate: raise ``ValueError`` for a box whose centre lies outside the input.
    """
    b, m = mask.shape
    s, a = anchors.shape[:2]
    if validate:
        _check_centres(boxes, mask, (grids[0][0] * strides[0], grids[0][1] * strides[0]))
    st = torch.tensor(strides, dtype=boxes.dtype, device=boxes.device)
    centre = ((boxes[..., :2] + boxes[..., 2:]) * 0.5)[:, :, None, :] / st[:, None]  # (B, M, S, 2)
    size = (boxes[..., 2:] - boxes[..., :2])[:, :, None, :] / st[:, None]
    cell = torch.floor(centre)
    anchor_half = (anchors / st[:, None, None] * 0.5)[None, None]  # (1, 1, S, A, 2)
    anchor_ctr = (cell + 0.5)[:, :, :, None, :]
    anchor_boxes = torch.cat((anchor_ctr - anchor_half, anchor_ctr + anchor_half), -1)
    box = torch.cat((centre - 0.5 * size, centre + 0.5 * size), -1)[:, :, :, None, :]
    iou = iou_xyxy(box, anchor_boxes, "iou", 1e-6)  # (B, M, S, A)

    positive = iou > anchor_iou_thresh
    none = ~positive.flatten(2).any(-1)  # (B, M): no anchor of any scale passes
    best = iou.flatten(2).argmax(-1)  # first on ties
    fallback = torch.nn.functional.one_hot(best, s * a).view(b, m, s, a).bool() & none[..., None, None]
    assigned = (positive | fallback) & mask[..., None, None]

    cell = cell.long()
    if fallback_clip_bug:
        h_last, w_last = grids[-1]
        lim = torch.tensor([w_last - 1, h_last - 1], device=boxes.device)
        cell = torch.where(fallback.any(-1, keepdim=True), torch.minimum(cell.clamp(min=0), lim), cell)

    on_scale = assigned.any(-1)  # (B, M, S): the box entered scale s's buffer
    rank = torch.cumsum(on_scale.long(), 1)  # 1-based position in the buffer's write order
    held = on_scale & (rank > on_scale.sum(1, keepdim=True) - max_boxes_per_scale)
    return _finish_yolo_assignment(boxes, assigned, cell, grids, held)


def build_yolov4_targets(
    boxes: Tensor,
    mask: Tensor,
    anchors: Tensor,
    anchor_masks: Sequence[Sequence[int]],
    grids: Sequence[tuple[int, int]],
    input_size: tuple[int, int],
    *,
    floor_centre: bool = False,
    validate: bool = True,
) -> YoloAssignment:
    """YOLOv4 / YOLOv4-tiny targets as yolov4-tiny-tf2's ``preprocess_true_boxes`` builds them.

    Each box takes the best of all K anchors by width-height IoU (box and anchor centred together,
    the first on ties) and is written at its centre's cell ``floor(cx / input_w · W)``,
    ``floor(cy / input_h · H)`` on every scale whose anchor mask holds that anchor (tiny's masks hold
    anchor 3 twice: both scales; an anchor in no mask: no target). A later box overwrites the slot's
    coordinates (the class vector is the criterion's business). The ignore test of scale s uses the
    boxes still held by its responsible slots.

    Args:
        boxes: ``(B, M, 4)`` xyxy in input pixels; mask: ``(B, M)`` bool real boxes.
        anchors: ``(K, 2)`` in input pixels; anchor_masks: per scale the A anchor ids it predicts.
        grids: per scale ``(H, W)``; input_size: ``(H, W)`` in pixels.
        floor_centre: floor the centre to whole pixels, as the original data loader's
            ``(x1 + x2) // 2`` does (off: the exact centre).
        validate: raise ``ValueError`` for a box whose centre lies outside the input.
    """
    if validate:
        _check_centres(boxes, mask, input_size)
    if floor_centre:
        centre = torch.floor((boxes[..., :2] + boxes[..., 2:]) / 2)
        half = (boxes[..., 2:] - boxes[..., :2]) / 2
        boxes = torch.cat((centre - half, centre + half), -1)
    wh_half = (boxes[..., 2:] - boxes[..., :2]) / 2
    anchor_half = anchors / 2
    iou = iou_xyxy(  # (B, M, K); anchors have positive area, so the union is positive without eps
        torch.cat((-wh_half, wh_half), -1)[:, :, None, :],
        torch.cat((-anchor_half, anchor_half), -1),
        "iou",
        0.0,
    )
    best = iou.argmax(-1)  # (B, M), first on ties
    ids = torch.tensor(anchor_masks, device=boxes.device)  # (S, A)
    assigned = (ids == best[..., None, None]) & mask[..., None, None]

    scale = torch.tensor(input_size[::-1], dtype=boxes.dtype, device=boxes.device)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2 / scale  # normalised, as the original stores it
    g = torch.tensor([[w, h] for h, w in grids], dtype=boxes.dtype, device=boxes.device)  # (S, 2)
    cell = torch.floor(centre[:, :, None, :] * g).long()
    return _finish_yolo_assignment(boxes, assigned, cell, grids, None)


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
    cxcywh = convert(targets.boxes.reshape(bsz * m, 4), "xyxy", "cxcywh") / stride  # (N, 4)
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
    every = torch.ones_like(cell, dtype=torch.bool)
    owner, _ = resolve_collisions(cell[None], every[None], bsz * num_anchors * h * w)
    return YOLOv5Matches(
        batch=batch,
        anchor=anchor,
        gj=gj,
        gi=gi,
        box=torch.cat((centre - gij, gwh[t]), 1),
        labels=targets.labels.reshape(-1)[t],
        anchors=anchors[anchor],
        winner=owner[0] == torch.arange(cell.shape[0], device=cell.device),
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
