"""YOLOv3 / YOLOv4 target building (the darknet family: one responsible anchor slot per box and scale,
an ignore threshold for the rest) and the ignore test's best IoU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..iou import iou_xyxy
from ..kernels.geometry import coordinate_planes
from .collisions import resolve_collisions
from .targets import centre_error, centre_outside

# A box is a *candidate* for every (scale s, anchor a): shape (B, M, S, A). The builders decide which
# candidates are assigned, the cell each one writes, and which assigned candidate still holds its slot
# (image, scale, anchor, cell) once every box has been written in list order ("later box wins",
# :func:`.collisions.resolve_collisions`).


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
