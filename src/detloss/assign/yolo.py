"""YOLO target building: YOLOv3/v4 (the ignore-threshold family) and YOLOv5's neighbour-cell matches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..boxes import convert
from ..iou import iou_xyxy
from ..kernels.geometry import coordinate_planes
from .targets import PaddedTargets, centre_error, centre_outside

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
        occupied: ``(B, Σ_s A·H_s·W_s)`` bool, the slots holding a box, scale after scale, each
            ``(A, H, W)`` flattened (the order of the heads' objectness planes).
        grids: the S grid sizes ``(H, W)``.
    """

    boxes: Tensor
    assigned: Tensor
    winner: Tensor
    owner: Tensor
    cell: Tensor
    held: Tensor
    occupied: Tensor
    grids: tuple[tuple[int, int], ...]

    @property
    def responsible(self) -> list[Tensor]:
        """Per scale ``(B, A, H, W)`` bool, the slots holding a box (views of ``occupied``)."""
        b, a = self.assigned.shape[0], self.assigned.shape[3]
        sizes = [a * h * w for h, w in self.grids]
        parts = self.occupied.split(sizes, 1)
        return [r.view(b, a, h, w) for r, (h, w) in zip(parts, self.grids, strict=True)]


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
    unassigned = ~assigned
    target = slot.masked_fill(unassigned, num_slots)  # unassigned candidates go to a spare slot
    last = torch.full((b, num_slots + 1), -1, dtype=torch.int64, device=slot.device)
    last.scatter_reduce_(1, target, order, reduce="amax")
    return last.gather(1, target).masked_fill(unassigned, -1), last[:, :num_slots] >= 0


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
    return gather_head(head, base[..., None] + torch.arange(k, device=dev) * (h * w), obj_channel)


def gather_head(head: Tensor, flat_index: Tensor, obj_channel: int = 4) -> tuple[Tensor, Tensor]:
    """The objectness plane ``(B, A, H, W)`` of a head ``(B, A, K, H, W)`` and its values at
    ``flat_index`` (any shape, indices into the head's contiguous memory); one gradient buffer."""
    return _HeadAtCells.apply(head, obj_channel, flat_index)


def best_iou_with(pred: Tensor, boxes: Tensor, keep: Tensor, fill: float, eps: float = 0.0) -> Tensor:
    """Best IoU of every predicted box with the kept boxes of the same image (no gradient).

    Args:
        pred: ``(B, P, 4)`` xyxy. boxes: ``(B, M, 4)`` xyxy with positive area.
        keep: ``(B, M)`` bool, or ``(B, P, M)`` to keep different boxes for different predictions.
        fill: the value for an image without kept boxes.
        eps: added to the union (0 = the originals' plain ``inter / union``; the target boxes have
            positive area, so the union is positive).

    Returns:
        ``(B, P)``.
    """
    with torch.no_grad():
        if boxes.shape[1] == 0:
            return pred.new_full(pred.shape[:2], fill)
        # as (B, M, P): the predictions innermost, along contiguous rows
        iou = iou_xyxy(coordinate_planes(pred)[:, None], boxes[:, :, None], "iou", eps)  # (B, M, P)
        kept = keep[:, :, None] if keep.dim() == 2 else keep.transpose(1, 2)
        return torch.where(kept, iou, fill).amax(1)


def _check_centres(boxes: Tensor, mask: Tensor, input_size: tuple[int, int]) -> None:
    """A box centre must lie inside the input, [0, W) × [0, H): its cell is where the box is trained."""
    bad = mask & centre_outside(boxes, input_size)
    if bad.numel() and bool(bad.any()):
        i, j = bad.nonzero()[0].tolist()
        raise centre_error(i, j, boxes[i, j], input_size)


def _finish_yolo_assignment(
    boxes: Tensor, assigned: Tensor, cell: Tensor, grids: Sequence[tuple[int, int]], held: Tensor | None
) -> YoloAssignment:
    """Slots, collisions and per-scale responsibility maps shared by the YOLOv3/v4 builders."""
    b, m, s, a = assigned.shape
    dev = boxes.device
    sizes = [a * h * w for h, w in grids]  # slots per scale (Python ints: no device sync)
    # per scale: the largest (gx, gy), then H, W and the first slot (one constant table)
    table = torch.tensor([[w - 1, h - 1, h, w, sum(sizes[:i])] for i, (h, w) in enumerate(grids)], device=dev)
    lim, hs, ws, offsets = table[:, :2], table[:, 2:3], table[:, 3:4], table[:, 4:5]  # (S, 2), (S, 1) …
    cell = torch.minimum(cell.clamp(min=0), lim)  # no-op for checked centres; guards validate=False
    anchor = torch.arange(a, device=dev)
    slot = offsets + (anchor * hs + cell[..., 1:2]) * ws + cell[..., 0:1]
    owner, occupied = resolve_collisions(slot.flatten(1), assigned.flatten(1), sum(sizes))
    owner = owner.view(b, m, s, a)
    winner = owner == torch.arange(m * s * a, device=dev).view(m, s, a)
    if held is None:  # the boxes still held by a responsible slot after overwriting
        held = winner.any(-1)
    return YoloAssignment(boxes, assigned, winner, owner, cell, held, occupied, tuple(map(tuple, grids)))


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
    best = iou.flatten(2).argmax(-1, keepdim=True)  # first on ties
    fallback = (torch.arange(s * a, device=boxes.device) == best).view(b, m, s, a) & none[..., None, None]
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


@dataclass
class YOLOv5Candidates:
    """Every possible YOLOv5 match of every scale, fixed-size: ``(S, G, A, N)`` candidates for S scales,
    G = 5 offset groups, A anchors and N = B·M padded targets (image-major), in the original's write
    order (group → anchor → target) within each scale.

    Attributes:
        valid: ``(S, G, A, N)`` bool, the candidate is a match of ``build_targets``.
        winner: ``(S, G, A, N)`` bool, a valid match written last to its (image, anchor, cell).
        slot: ``(S, G, A, N)`` int64 index of the candidate's cell in the objectness planes of all
            scales flattened and concatenated (each ``(B, A, H, W)``); ``num_slots`` where not valid.
        num_slots: ``Σ_s B·A·H_s·W_s``.
        plane: ``(A, N)`` int64 ``image · A + anchor``, the head plane the candidate reads.
        gj, gi: ``(S, G, 1, N)`` int64 cell row and column, clamped to the grid.
        box_xyxy: ``(S, G, 1, N, 4)`` the target in grid units relative to the UNclamped cell, xyxy
            (:attr:`box`: the same as cxcywh, centre minus the cell, w, h).
        anchors: ``(S, 1, A, 1, 2)`` anchor (w, h) in grid units.
        labels: ``(N,)`` int64 class ids.
    """

    valid: Tensor
    winner: Tensor
    slot: Tensor
    num_slots: int
    plane: Tensor
    gj: Tensor
    gi: Tensor
    box_xyxy: Tensor
    anchors: Tensor
    labels: Tensor

    @property
    def box(self) -> Tensor:
        """``(S, G, 1, N, 4)`` cxcywh target: centre minus the unclamped cell, w, h."""
        return convert(self.box_xyxy, "xyxy", "cxcywh")


@dataclass
class YOLOv5Layout:
    """The constants of :func:`yolov5_candidates` for one head layout (S scales, A anchors, G groups).

    Attributes:
        anchors: ``(S, A, 2)`` anchor (w, h) in grid units. stride: ``(S, 1, 1)``.
        size: ``(S, 1, 2)`` grid (W, H) as floats; last_cell: ``(S, 1, 1, 1, 2)`` int64 (W − 1, H − 1).
        offsets: ``(1, G, 1, 1, 2)`` the groups' cell offsets times g.
        slot_start, height, width: ``(S, 1, 1, 1)`` int64: scale s's first slot, H_s and W_s.
        num_slots: ``Σ_s B·A·H_s·W_s``.
    """

    anchors: Tensor
    stride: Tensor
    size: Tensor
    last_cell: Tensor
    offsets: Tensor
    slot_start: Tensor
    height: Tensor
    width: Tensor
    num_slots: int


def yolov5_layout(
    batch: int,
    anchors: Tensor,
    strides: Sequence[float],
    grids: Sequence[tuple[int, int]],
    offset: float = 0.5,
) -> YOLOv5Layout:
    """:class:`YOLOv5Layout` of heads with grids ``(H_s, W_s)``; ``anchors`` ``(S, A, 2)`` in grid units
    give the dtype and device."""
    dt, dev = anchors.dtype, anchors.device
    num_anchors = anchors.shape[1]
    sizes = [batch * num_anchors * h * w for h, w in grids]
    hw_long = torch.tensor([[w, h] for h, w in grids], device=dev)  # (S, 2)
    return YOLOv5Layout(
        anchors=anchors,
        stride=torch.tensor(strides, dtype=dt, device=dev).view(-1, 1, 1),
        size=hw_long.to(dt)[:, None],
        last_cell=(hw_long - 1).view(-1, 1, 1, 1, 2),
        offsets=torch.tensor(_YOLOV5_OFFSETS, dtype=dt, device=dev).view(1, -1, 1, 1, 2) * offset,
        slot_start=torch.tensor([sum(sizes[:i]) for i in range(len(grids))], device=dev).view(-1, 1, 1, 1),
        height=hw_long[:, 1].view(-1, 1, 1, 1),
        width=hw_long[:, 0].view(-1, 1, 1, 1),
        num_slots=sum(sizes),
    )


def yolov5_candidates(targets: PaddedTargets, layout: YOLOv5Layout, anchor_t: float = 4.0, offset: float = 0.5
) -> YOLOv5Candidates:
    """YOLOv5 target assignment of all scales at once over fixed-size candidates (no host sync).

    Steps (``build_targets`` of ComputeLoss), on every scale s in grid units (pixels / stride):

    1. A box matches anchor ``a`` when ``max(r, 1/r) < anchor_t`` for both r = w/a_w and r = h/a_h.
    2. Each match goes to its own cell and to up to two neighbours: left if ``frac(x) < g`` and
       ``x > 1``, up likewise in y, right if ``frac(W − x) < g`` and ``W − x > 1``, down likewise
       (g = ``offset``). The cell is ``trunc(centre − offset)`` (``.long()``), clamped to the grid
       for indexing; the box target keeps the unclamped cell.
    3. The original writes the objectness target match by match, group by group, anchor by anchor,
       target by target in batch order, so the last valid candidate on an (image, anchor, cell) is
       the ``winner``: a scatter-``amax`` of the write-order index (PyTorch's index_put with duplicate
       indices promises no order).

    Args:
        targets: padded xyxy boxes in input pixels, ``(B, M, 4)``, with labels and mask.
        layout: the heads' constants (:func:`yolov5_layout`, built with the same ``offset``).
        anchor_t: the anchor ratio threshold (strict ``<``).
        offset: g, the neighbour-cell offset.
    """
    bsz, m = targets.mask.shape
    num_anchors = layout.anchors.shape[1]
    n = bsz * m
    grid_box = convert(targets.boxes.reshape(1, n, 4), "xyxy", "cxcywh") / layout.stride  # (S, N, 4)
    gxy, gwh = grid_box[..., :2], grid_box[..., 2:]

    r = gwh[:, None] / layout.anchors[:, :, None]  # (S, A, N, 2)
    fits = (torch.maximum(r, 1.0 / r).amax(-1) < anchor_t) & targets.mask.reshape(1, 1, n)

    # the groups' conditions, (S, N, 2) each: left/up from the centre, right/down from the far edge
    near = torch.cat((gxy, layout.size - gxy), -1)  # (S, N, 4)
    groups = (near % 1 < offset) & (near > 1)
    groups = torch.cat((torch.ones_like(groups[..., :1]), groups), -1).transpose(1, 2)  # (S, G, N)
    valid = groups[:, :, None] & fits[:, None]  # (S, G, A, N)

    centre = gxy[:, None, None]  # (S, 1, 1, N, 2)
    gij = (centre - layout.offsets).long()  # (S, G, 1, N, 2), truncation toward zero as the original
    cell = torch.minimum(gij.clamp(min=0), layout.last_cell)
    gi, gj = cell[..., 0], cell[..., 1]

    # image · A + anchor
    plane = torch.arange(n, device=gij.device) // torch.sym_max(m, 1) * num_anchors
    plane = plane + torch.arange(num_anchors, device=gij.device)[:, None]  # (A, N)
    slot = layout.slot_start + (plane * layout.height + gj) * layout.width + gi  # (S, G, A, N)
    write_order = torch.arange(valid.numel(), device=gij.device).view(valid.shape)
    spare = layout.num_slots  # invalid candidates write to a slot past the last
    slot = slot.masked_fill(~valid, spare)
    last = torch.full((spare + 1,), -1, dtype=torch.int64, device=gij.device)
    last = last.scatter_reduce(0, slot.view(-1), write_order.view(-1), reduce="amax")
    winner = valid & (last[slot] == write_order)
    offset_xy = centre - gij
    half = 0.5 * gwh[:, None, None]
    return YOLOv5Candidates(
        valid=valid,
        winner=winner,
        slot=slot,
        num_slots=spare,
        plane=plane,
        gj=gj,
        gi=gi,
        box_xyxy=torch.cat((offset_xy - half, offset_xy + half), -1),
        anchors=layout.anchors[:, None, :, None],
        labels=targets.labels.reshape(-1),
    )


def build_yolov5_targets(
    targets: PaddedTargets,
    anchors: Tensor,
    stride: float,
    grid_size: tuple[int, int],
    anchor_t: float = 4.0,
    offset: float = 0.5,
) -> YOLOv5Matches:
    """The matches of one scale as a list, in the original's order (offset group → anchor → target):
    :func:`yolov5_candidates` compressed to its valid candidates (a host sync: inspection and tests;
    :class:`detloss.YOLOv5Loss` works on the fixed-size candidates).

    Args:
        targets: padded xyxy boxes in input pixels, ``(B, M, 4)``, with labels and mask.
        anchors: ``(A, 2)`` anchor (w, h) in grid units of this scale.
        stride: input pixels per cell.
        grid_size: ``(H, W)``.
        anchor_t: the anchor ratio threshold (strict ``<``).
        offset: g, the neighbour-cell offset.
    """
    layout = yolov5_layout(targets.mask.shape[0], anchors[None], (stride,), (grid_size,), offset)
    c = yolov5_candidates(targets, layout, anchor_t, offset)
    _, g, a, n = c.valid.shape
    group, anchor, t = c.valid[0].nonzero(as_tuple=True)
    m = targets.mask.shape[1]
    box = c.box[0].expand(g, a, n, 4)
    return YOLOv5Matches(
        batch=t // torch.sym_max(m, 1),
        anchor=anchor,
        gj=c.gj[0, group, 0, t],
        gi=c.gi[0, group, 0, t],
        box=box[group, anchor, t],
        labels=c.labels[t],
        anchors=anchors[anchor],
        winner=c.winner[0, group, anchor, t],
    )
