"""YOLOv5 target building (ultralytics/yolov5 ``utils/loss.py`` ``ComputeLoss.build_targets``): every
box matches the anchors of a ratio test in its own cell and up to two neighbour cells, all scales at
once over fixed-size candidates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..boxes import convert
from .collisions import resolve_collisions
from .targets import PaddedTargets

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
        slot: ``(S, G, A, N)`` int64 index of the candidate's cell (valid or not: the cells are
            clamped to the grid) in the objectness logits of the batch laid out ``(B, P)`` and
            flattened, P = Σ_s A·H_s·W_s: image after image, each scale after scale, each ``(A, H, W)``.
        num_slots: ``B·P``.
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
        slot_start, height, width: ``(S, 1, 1, 1)`` int64: scale s's first slot within an image,
            H_s and W_s.
        per_image: P = ``Σ_s A·H_s·W_s``, the slots of one image. num_slots: ``B·P``.
    """

    anchors: Tensor
    stride: Tensor
    size: Tensor
    last_cell: Tensor
    offsets: Tensor
    slot_start: Tensor
    height: Tensor
    width: Tensor
    per_image: int
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
    sizes = [num_anchors * h * w for h, w in grids]  # slots of one image per scale
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
        per_image=sum(sizes),
        num_slots=batch * sum(sizes),
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
       the ``winner`` (:func:`.collisions.resolve_collisions`).

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

    image = torch.arange(n, device=gij.device) // torch.sym_max(m, 1)  # (N,)
    anchor = torch.arange(num_anchors, device=gij.device)[:, None]  # (A, 1)
    plane = image * num_anchors + anchor  # (A, N)
    cell_in_image = layout.slot_start + (anchor * layout.height + gj) * layout.width + gi
    slot = image * layout.per_image + cell_in_image  # (S, G, A, N)
    owner, _ = resolve_collisions(slot.reshape(1, -1), valid.reshape(1, -1), layout.num_slots)
    winner = owner.view(valid.shape) == torch.arange(valid.numel(), device=gij.device).view(valid.shape)
    offset_xy = centre - gij
    half = 0.5 * gwh[:, None, None]
    return YOLOv5Candidates(
        valid=valid,
        winner=winner,
        slot=slot,
        num_slots=layout.num_slots,
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
