"""Task-aligned assignment (TOOD, Feng et al. 2021) on padded targets, as YOLOv8 / YOLO11 train it.

For every image b, box m (padded to M with a mask) and anchor point a::

    candidate(m, a) = the anchor's centre lies strictly inside box m (margin eps_in = 1e-9); a side
                      shorter than ``min_side`` is first widened to it about the box centre
    u(m, a)         = max(CIoU(pred_a, box_m), 0)                      on candidates, else 0
    t(m, a)         = s(a, class_m)^α · u(m, a)^β                       the alignment metric
    selected(m, a)  = a is among the top-k anchors of t(m, ·) (over all anchors) and a candidate
    owner(a)        = the single box selecting a; when several do, the box of highest u(·, a) over
                      ALL boxes (first on ties; box 0 when every u is 0)
    kept(a)         = with ``topk2`` (≠ topk): a is among the topk2 positives of largest t(owner, ·)
                      of its owner (lower anchor index first on ties); the others become background
    score(a)        = t(owner, a) · max_a' u(owner, a') / (max_a' t(owner, a') + eps)
                      (both maxima over the owner's positive anchors, after ``topk2``)

Nothing of shape ``(B, M, A, ·)`` is built: the pairwise quantities are ``(B, m_block, A)`` blocks of
boxes, each reduced (top-k over anchors, the running best box per anchor, the selecting boxes' count,
index sum and u sum per anchor) before the next block, so the peak memory does not grow with the
number of boxes. No host synchronisation, no data-dependent shape: the blocks depend on M only, the
selections are order-free scatters.

With ``rotated=True`` (oriented boxes, xywhr; ultralytics' ``RotatedTaskAlignedAssigner``) the same
steps run with u = max(ProbIoU(box_m, pred_a), 0) (floor 0; in the image frame,
:func:`detloss.kernels.rotated.probiou_grid`, the per-box and per-anchor parts made once per call)
and candidate(m, a) = the anchor lies in the rotated rectangle, inclusive of its edges and without a
margin: with a, b, d three consecutive corners, 0 ≤ (p − a)·(b − a) ≤ |b − a|² and
0 ≤ (p − a)·(d − a) ≤ |d − a|² (sides below ``min_side`` widened first, as above).

Details and differences from ultralytics' ``TaskAlignedAssigner`` (8.4.190): docs/yolov8.md, and for
the rotated one docs/obb.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..kernels.geometry import Corners, corners
from ..kernels.iou import ciou_grid
from ..kernels.rotated import Gaussians, gaussians, probiou_grid, rotated_corners

PAIR_BLOCK = 1 << 21  # (B, m_block, A) elements per block: 8 MB per float32 temporary
# The rotated grid on the CPU: ~50 elementwise ops per pair, each streaming its block through memory;
# blocks of 512K pairs (2 MB per float32 temporary) stay in the caches. On a GPU (launches dominate,
# memory is plentiful) the blocks stay PAIR_BLOCK: fewer blocks, fewer launches.
ROTATED_CPU_BLOCK = 1 << 19
INSIDE_EPS = 1e-9  # an anchor centre must lie more than this inside the box
# The contests' best box is found after the blocks, at the selected anchors, when
# LATER_RATIO · k · m_block ≤ A (task_aligned_assign)
LATER_RATIO = 32


@dataclass
class TaskAlignedAssignment:
    """The assignment of every anchor point.

    Attributes:
        foreground: ``(B, A)`` bool, True for positive anchors.
        gt_index: ``(B, A)`` int64 index into the padded boxes (0 for background anchors).
        labels: ``(B, A)`` int64 class of the assigned box (that of box 0 for background anchors).
        boxes: ``(B, A, 4)`` xyxy assigned box (``(B, A, 5)`` xywhr when rotated; box 0 for background
            anchors).
        scores: ``(B, A)`` target score of the assigned class (0 for background anchors); the
            classification target is ``scores`` on the one-hot of ``labels``.
    """

    foreground: Tensor
    gt_index: Tensor
    labels: Tensor
    boxes: Tensor
    scores: Tensor


def _pairwise_ciou(pred: Corners, gt: Corners, eps: float) -> Tensor:
    """CIoU of every broadcast pair of boxes given by their axis planes, clamped at 0, without
    gradient: the kernel's formula (:func:`detloss.kernels.iou_forward`, ``kind="ciou"``) on its
    parts, overwritten as they are spent (:func:`detloss.kernels.iou.ciou_grid`). Every per-box
    quantity (sides, areas, centres, the aspect angles of CIoU's v) is computed on the unbroadcast
    planes, once per box and per anchor; only the pairwise terms are ``(B, m, A)``."""
    return ciou_grid(pred, gt, eps).clamp_(min=0)


def _mul_power(s: Tensor, x: Tensor, p: float) -> Tensor:
    """``s · x^p`` in place in ``s`` (returned), without gradient; ``x`` is read only. An integral
    p by repeated squaring into one temporary (torch's pow is specialised for p ∈ {0.5, 2, 3, −1,
    …} only: x^6, the default β, took 20× the time of its products); s·x² and then ·x⁴ for p = 6."""
    if p != int(p) or not 0 <= p <= 64:
        return s.mul_(x.pow(p))
    n, base = int(p), x
    while n:
        if n & 1:
            s.mul_(base)
        n >>= 1
        if n:
            base = base.square() if base is x else base.square_()
    return s


class CandidateTable:
    """Which anchor centres lie strictly inside each valid box (widened to ``min_side``), per block
    of boxes: ``blocks(size)`` yields ``(B, m, A)`` bool. It depends on the targets and the anchors
    only, not on the predictions: criteria that assign the same targets on the same anchors (the two
    branches of :class:`detloss.criteria.EndToEndLoss`) build it once (:func:`candidate_table`) and
    pass it to :func:`task_aligned_assign` as ``candidates``.

    On grids the test factors: inside = (row inside) ∧ (column inside). The row and column tests
    of every box against the rows and columns of all grids at once, ``(B, M, ΣH)`` and ``(B, M, ΣW)``,
    are made once; a block is one outer ``and`` per grid. A single block (all the boxes) is kept once
    made, so that a second assignment reads it instead of making it again."""

    def __init__(
        self,
        anchor_points: Tensor,
        boxes: Tensor,
        valid: Tensor,
        min_side: float,
        grid_sizes: Sequence[tuple[int, int]] | None,
    ) -> None:
        c = (boxes[..., :2] + boxes[..., 2:]) / 2
        wh = boxes[..., 2:] - boxes[..., :2]
        if min_side > 0:  # YOLOv8 8.4.190: a side below the second stride is widened, for this test only
            wh = wh.clamp(min=min_side)
        half = wh / 2
        self.lt, self.rb = (c - half).unsqueeze(-2), (c + half).unsqueeze(-2)  # (B, M, 1, 2)
        self.valid = valid.unsqueeze(-1)
        self.points = anchor_points
        self.num_boxes = boxes.shape[1]
        self.tables = []  # per grid: rows (B, M, H), columns (B, M, W) of the valid boxes
        self._single: Tensor | None = None
        if grid_sizes:
            xs, ys = _grid_axes(anchor_points, grid_sizes)
            cols = _between(xs, self.lt[..., 0], self.rb[..., 0])
            rows = _between(ys, self.lt[..., 1], self.rb[..., 1])
            cols.logical_and_(self.valid)
            cols = cols.split([w for _, w in grid_sizes], -1)
            rows = rows.split([h for h, _ in grid_sizes], -1)
            self.tables = list(zip(rows, cols, strict=True))

    def at(self, rows: Tensor, points: Tensor) -> Tensor:
        """``(B, S, n)`` bool: the test of the boxes ``rows`` ``(B, S, n)`` at the points ``(B, S, 2)``
        (the operations of the blocks', so their answers)."""
        lt, rb, valid = (_take_rows(t, rows) for t in (self.lt, self.rb, self.valid))
        x, y = points.unsqueeze(2).unbind(-1)  # (B, S, 1)
        inside = _between(x, lt[..., 0], rb[..., 0])
        return inside.logical_and_(_between(y, lt[..., 1], rb[..., 1])).logical_and_(valid)

    def blocks(self, size: int) -> Iterator[Tensor]:
        """``(B, m, A)`` bool per block of ``size`` boxes, in order (the tables split once); read-only."""
        if size >= self.num_boxes:
            if self._single is None:
                self._single = next(self._blocks(size))
            yield self._single
            return
        yield from self._blocks(size)

    def _blocks(self, size: int) -> Iterator[Tensor]:
        if not self.tables:  # no grid: the full test per block
            lt, rb, valid = self.lt.split(size, 1), self.rb.split(size, 1), self.valid.split(size, 1)
            x, y = self.points.unbind(-1)
            for lt_b, rb_b, valid_b in zip(lt, rb, valid, strict=True):
                inside = _between(x, lt_b[..., 0], rb_b[..., 0])
                yield inside.logical_and_(_between(y, lt_b[..., 1], rb_b[..., 1])).logical_and_(valid_b)
            return
        split = [(r.unsqueeze(-1).split(size, 1), c.unsqueeze(-2).split(size, 1)) for r, c in self.tables]
        for i in range(len(split[0][0])):
            out = [(rows[i] & cols[i]).flatten(-2) for rows, cols in split]  # (B, m, H·W)
            yield out[0] if len(out) == 1 else torch.cat(out, -1)


def candidate_table(
    anchor_points: Tensor,
    gt_boxes: Tensor,
    gt_mask: Tensor,
    *,
    min_side: float = 0.0,
    grid_sizes: Sequence[tuple[int, int]] | None = None,
) -> CandidateTable:
    """The candidate test of :func:`task_aligned_assign` (axis-aligned boxes) for these anchors and
    targets, made once to be shared by several assignments of the same targets (``candidates=``);
    the arguments are those of :func:`task_aligned_assign`."""
    return CandidateTable(anchor_points, gt_boxes, gt_mask, min_side, grid_sizes)


def _grid_axes(anchor_points: Tensor, grid_sizes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """The column x and row y coordinates of row-major anchor grids ``(H, W)`` laid one after the
    other in ``anchor_points`` ``(A, 2)``: ``(ΣW,)`` and ``(ΣH,)``, grid after grid."""
    xs, ys, start = [], [], 0
    for h, w in grid_sizes:
        xs.append(anchor_points[start : start + w, 0])
        ys.append(anchor_points[start : start + h * w : w, 1])
        start += h * w
    return (torch.cat(xs), torch.cat(ys)) if len(xs) > 1 else (xs[0], ys[0])


def _between(xy: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``(B, m, n)``: the anchor coordinates ``xy`` ``(n,)`` more than ``INSIDE_EPS`` inside the
    boxes' extents ``(lo, hi)`` ``(B, m, 1)`` along one axis."""
    return ((xy - lo) > INSIDE_EPS).logical_and_((hi - xy) > INSIDE_EPS)


class _InsideRotated:
    """Which anchor points lie in each valid rotated box (xywhr, sides widened to ``min_side``),
    edges included: ``blocks(size)`` yields ``(B, m, A)`` per block of boxes, 1 inside and 0 outside in
    the points' dtype. The test is the projections of ``p − a`` on the edges ``ab`` and ``ad`` (a, b, d:
    consecutive corners of :func:`detloss.kernels.rotated.rotated_corners`), in ultralytics' order of
    operations, ``(p_x − a_x)·e_x + (p_y − a_y)·e_y``: on grids of anchors (``grid_sizes``) its two
    terms are made per column and per row, once, and a block's projections are their outer sums
    (the same values, one grid-sized operation instead of five)."""

    def __init__(
        self,
        anchor_points: Tensor,
        boxes: Tensor,
        valid: Tensor,
        min_side: float,
        grid_sizes: Sequence[tuple[int, int]] | None,
    ) -> None:
        if min_side > 0:  # widened for this test only, as the axis-aligned one
            boxes = torch.cat((boxes[..., :2], boxes[..., 2:4].clamp(min=min_side), boxes[..., 4:]), -1)
        a, b, _, d = rotated_corners(boxes).unsqueeze(-2).unbind(-3)  # (B, M, 1, 2) each
        # the squared edge lengths bound the projections; −1 on padding rows (no p satisfies
        # 0 ≤ dot ≤ −1), which folds the validity into the test
        lengths = [torch.where(valid.unsqueeze(-1), edge.square().sum(-1), -1.0) for edge in (b - a, d - a)]
        self.parts = (a, b - a, d - a, *lengths)
        self.points = anchor_points
        self.grid_sizes = grid_sizes
        if grid_sizes:  # per edge: (x − a_x)·e_x per column (B, M, ΣW), (y − a_y)·e_y per row (B, M, ΣH)
            xs, ys = _grid_axes(anchor_points, grid_sizes)
            self.axes = [((xs - a[..., 0]) * e[..., 0], (ys - a[..., 1]) * e[..., 1]) for e in (b - a, d - a)]

    def at(self, rows: Tensor, points: Tensor) -> Tensor:
        """``(B, S, n)``: the test of the boxes ``rows`` ``(B, S, n)`` at the points ``(B, S, 2)``."""
        return _inside_rotated(*points.unsqueeze(2).unbind(-1), *(_take_rows(t, rows) for t in self.parts))

    def blocks(self, size: int) -> Iterator[Tensor]:
        """``(B, m, A)`` per block of ``size`` boxes, in order."""
        if not self.grid_sizes:
            x, y = self.points.unbind(-1)
            for part in zip(*(t.split(size, 1) for t in self.parts), strict=True):
                yield _inside_rotated(x, y, *part)
            return
        lengths = [t.split(size, 1) for t in self.parts[3:]]
        axes = [(cols.split(size, 1), rows.split(size, 1)) for cols, rows in self.axes]
        for i, len_ab, len_ad in zip(range(len(lengths[0])), *lengths, strict=True):
            dots = [_outer_sums(cols[i], rows[i], self.grid_sizes) for cols, rows in axes]
            yield _within(*dots, len_ab, len_ad)


def _outer_sums(cols: Tensor, rows: Tensor, grid_sizes: Sequence[tuple[int, int]]) -> Tensor:
    """``(B, m, Σ H·W)``: ``cols[..., x] + rows[..., y]`` over each grid's cells, row-major, grid
    after grid, from ``cols`` ``(B, m, ΣW)`` and ``rows`` ``(B, m, ΣH)``."""
    parts = zip(
        cols.split([w for _, w in grid_sizes], -1), rows.split([h for h, _ in grid_sizes], -1), strict=True
    )
    if torch.compiler.is_compiling():  # dynamo takes no strided out=
        return torch.cat([(c.unsqueeze(-2) + r.unsqueeze(-1)).flatten(-2) for c, r in parts], -1)
    out = cols.new_empty(*cols.shape[:-1], sum(h * w for h, w in grid_sizes))
    start = 0
    for (c, r), (h, w) in zip(parts, grid_sizes, strict=True):  # each grid into its slice: no cat
        torch.add(c.unsqueeze(-2), r.unsqueeze(-1), out=out[..., start : start + h * w].unflatten(-1, (h, w)))
        start += h * w
    return out


def _inside_rotated(
    x: Tensor, y: Tensor, a: Tensor, ab: Tensor, ad: Tensor, len_ab: Tensor, len_ad: Tensor
) -> Tensor:
    """1 where the points ``(x, y)`` lie in the rotated rectangles of corner ``a``, edges ``ab``,
    ``ad`` (``(..., 2)``) and squared edge lengths, else 0 (broadcast, in the points' dtype):
    :func:`_within` of the projections ``(p − a)·ab`` and ``(p − a)·ad``."""
    px, py = x - a[..., 0], y - a[..., 1]
    dot_ab = px * ab[..., 0]
    dot_ab += py * ab[..., 1]
    dot_ad = px.mul_(ad[..., 0])
    dot_ad += py.mul_(ad[..., 1])
    return _within(dot_ab, dot_ad, len_ab, len_ad)


def _within(dot_ab: Tensor, dot_ad: Tensor, len_ab: Tensor, len_ad: Tensor) -> Tensor:
    """1 where ``0 ≤ dot_ab ≤ len_ab`` and ``0 ≤ dot_ad ≤ len_ad``, else 0 (``dot_ab`` is overwritten),
    tested as ``min(dot_ab, len_ab − dot_ab, dot_ad, len_ad − dot_ad) ≥ 0`` (the same answer: a
    difference of two floats has the sign of the exact one) and read off by its sign, in place:
    four comparisons to bool, their ``and`` and a product with a bool mask each cost the CPU
    several float operations."""
    margin = torch.sub(len_ab, dot_ab).clamp_(max=dot_ab)
    margin.clamp_(max=dot_ad)
    margin.clamp_(max=torch.sub(len_ad, dot_ad, out=dot_ab))
    return margin.sign_().add_(1.0).clamp_(max=1.0)  # sign −1 outside, 0 or 1 inside (−0 too)


def _take_rows(table: Tensor, rows: Tensor) -> Tensor:
    """A per-box table ``(B, M, 1, ...)`` (shaped for the grids) at the boxes ``rows`` ``(B, S, n)``
    → ``(B, S, n, ...)``."""
    table = table.squeeze(2)
    rest = table.shape[2:]
    index = rows.flatten(1).view(rows.shape[0], -1, *(1,) * len(rest)).expand(-1, -1, *rest)
    return table.gather(1, index).view(*rows.shape, *rest)


def _class_scores(levels: Sequence[Tensor], labels: Tensor) -> Tensor:
    """``(B, m, n)``: every anchor's score of the classes ``labels`` ``(B, m)``, read from the
    channels-first class rows ``(B, C, A_l)`` of every level (``n = Σ A_l``); a single contiguous
    table by copying its rows (``(B·C, A)``), else by one gather per level."""
    if len(levels) == 1 and levels[0].is_contiguous():
        table = levels[0]
        bsz, num_classes, n = table.shape
        rows = labels + torch.arange(bsz, device=labels.device).unsqueeze(1) * num_classes
        return table.view(-1, n).index_select(0, rows.flatten()).view(bsz, -1, n)
    out = [lv.gather(1, labels.unsqueeze(-1).expand(-1, -1, lv.shape[-1])) for lv in levels]
    return out[0] if len(out) == 1 else torch.cat(out, -1)


def _anchor_scores(levels: Sequence[Tensor], labels: Tensor) -> Tensor:
    """``(B, A)``: every anchor's score of its own class ``labels`` ``(B, A)``, read from the
    channels-first class rows ``(B, C, A_l)`` of every level."""
    parts = labels.split([lv.shape[-1] for lv in levels], -1)
    out = [lv.gather(1, lab.unsqueeze(1)).squeeze(1) for lv, lab in zip(levels, parts, strict=True)]
    return out[0] if len(out) == 1 else torch.cat(out, -1)


def _top_per_box(metric: Tensor, gt_index: Tensor, foreground: Tensor, m_max: int, k: int) -> Tensor:
    """``(B, A)`` bool: the positives among the ``k`` of largest ``metric`` of their box (lower anchor
    index first on ties). Every anchor is ranked within its box by two stable sorts (by metric, then
    by box): no per-box table of anchors, no data-dependent shape."""
    bsz, num_anchors = metric.shape
    group = torch.where(foreground, gt_index, m_max)  # background anchors form a last group
    order = metric.argsort(dim=1, descending=True, stable=True)
    order = order.gather(1, group.gather(1, order).argsort(dim=1, stable=True))  # by (box, −t, index)
    counts = torch.zeros(bsz, m_max + 1, dtype=torch.int64, device=metric.device)
    counts.scatter_add_(1, group, torch.ones_like(group))
    first = counts.cumsum(1) - counts  # position of each group's first anchor in the sorted order
    rank_sorted = torch.arange(num_anchors, device=metric.device) - first.gather(1, group.gather(1, order))
    rank = torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)
    return foreground & (rank < k)


@torch.no_grad()
def task_aligned_assign(
    scores: Tensor | Sequence[Tensor],
    pred_boxes: Tensor,
    anchor_points: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    *,
    topk: int = 10,
    topk2: int | None = None,
    alpha: float = 0.5,
    beta: float = 6.0,
    min_side: float = 0.0,
    eps: float = 1e-9,
    iou_eps: float = 1e-7,
    logits: bool = False,
    grid_sizes: Sequence[tuple[int, int]] | None = None,
    rotated: bool = False,
    candidates: CandidateTable | None = None,
) -> TaskAlignedAssignment:
    """Assign anchor points to padded ground-truth boxes by the task-aligned metric (module docstring).

    Args:
        scores: ``(B, A, C)`` predicted class probabilities (a ``(B, C, A)`` tensor transposed is
            used without a copy), or the channels-first pieces ``(B, C, A_l)`` of a multi-level
            head, anchor blocks in the order of ``anchor_points`` (read in place: no
            concatenated copy of the class rows).
        pred_boxes: ``(B, A, 4)`` predicted xyxy boxes (``(B, A, 5)`` xywhr with ``rotated``), in the
            units of ``gt_boxes``.
        anchor_points: ``(A, 2)`` anchor centres (x, y), same units.
        gt_boxes: ``(B, M, 4)`` xyxy boxes (``(B, M, 5)`` xywhr with ``rotated``; padding rows arbitrary).
        gt_labels: ``(B, M)`` int64 classes in ``[0, C)``.
        gt_mask: ``(B, M)`` bool, True for real boxes.
        topk: anchors per box (at most A are taken).
        topk2: after the contests, each box keeps only its ``topk2`` positives of largest alignment
            t (ultralytics' ``tal_topk2``; the one-to-one branch of YOLOv10 / YOLO26 uses 1); the
            target scores are normalised over the positives kept. ``None``, or equal to ``topk``
            (as in the original), keeps them all.
        alpha, beta: exponents of the score and of the CIoU in the metric.
        min_side: box sides shorter than this are widened to it for the candidate test
            (ultralytics 8.4.190: its second stride; 0 disables).
        eps: in the score normalisation (ultralytics' 1e-9).
        iou_eps: the CIoU's eps (that of :func:`detloss.iou.iou_xyxy`), or ProbIoU's with ``rotated``.
        logits: ``scores`` are logits. The sigmoid (and the power α) is applied to the entries the
            metric reads (the boxes' classes, ``B·M·A`` values) when M ≤ C, else once to all ``B·A·C``.
        grid_sizes: when ``anchor_points`` are the row-major cell centres of these (H, W) grids one
            after the other (as YOLOv8's), the candidate test is computed per row and column.
        rotated: oriented boxes (module docstring): ProbIoU and the inclusive rotated candidate test.
        candidates: the candidate test of these ``anchor_points``, ``gt_boxes``, ``gt_mask``,
            ``min_side`` and ``grid_sizes``, made beforehand by :func:`candidate_table` (axis-aligned
            boxes only): assignments of the same targets on the same anchors share it.

    Returns:
        :class:`TaskAlignedAssignment`. Images without boxes (or M = 0) get only background.
    """
    levels = [scores.transpose(1, 2)] if isinstance(scores, Tensor) else list(scores)  # (B, C, A_l)
    bsz, num_anchors = pred_boxes.shape[:2]
    if sum(level.shape[-1] for level in levels) != num_anchors:
        raise ValueError(
            f"scores cover {sum(lv.shape[-1] for lv in levels)} anchors, pred_boxes {num_anchors}"
        )
    m_max, size = gt_boxes.shape[1], gt_boxes.shape[-1]
    dev, dtype = pred_boxes.device, pred_boxes.dtype
    k = min(topk, num_anchors)
    if m_max == 0:  # no box in the whole batch (a shape, not a value: no sync)
        zero = torch.zeros(bsz, num_anchors, dtype=torch.int64, device=dev)
        return TaskAlignedAssignment(
            zero.bool(),
            zero,
            zero.clone(),
            pred_boxes.new_zeros(bsz, num_anchors, size),
            pred_boxes.new_zeros(bsz, num_anchors),
        )
    # the two parametrised steps, the candidate test and the pairwise similarity u: pair(gt, pred)
    # of broadcast boxes and predictions in the form form(boxes) makes of (..., 4 | 5) boxes
    if rotated:
        if candidates is not None:
            raise ValueError("candidates: the shared candidate table is the axis-aligned test's")
        inside = _InsideRotated(anchor_points, gt_boxes, gt_mask, min_side, grid_sizes)

        def pair(gt: Gaussians, pr: Gaussians) -> Tensor:
            return probiou_grid(gt, pr, iou_eps).clamp_(min=0)

        def form(boxes: Tensor) -> Gaussians:
            return gaussians(boxes)

        def split(parts: Gaussians, size: int) -> list[Gaussians]:
            return [Gaussians(*p) for p in zip(*(t.split(size, 1) for t in parts), strict=True)]
    else:
        if candidates is None:
            candidates = CandidateTable(anchor_points, gt_boxes, gt_mask, min_side, grid_sizes)
        inside = candidates

        def pair(gt: Corners, pr: Corners) -> Tensor:
            return _pairwise_ciou(pr, gt, iou_eps)

        def form(boxes: Tensor) -> Corners:
            return corners(boxes, 4)  # (2, ...) planes

        def split(planes: Corners, size: int) -> list[Corners]:
            return list(zip(*(plane.split(size, 2) for plane in planes), strict=True))

    # s^α = σ(x)^α: once per logit when there are more boxes than classes, else per gathered entry
    per_logit = m_max > levels[0].shape[1]
    if per_logit and rotated and len(levels) > 1:  # one table: a row copy per block of boxes
        table = torch.cat(levels, -1)  # instead of a gather per level, transformed in place
        levels = [(table.sigmoid_() if logits else table).pow_(alpha)]
    elif per_logit:
        levels = [lv.sigmoid().pow_(alpha) if logits else lv.pow(alpha) for lv in levels]

    def score_pow(s: Tensor) -> Tensor:  # s: gathered scores, a new tensor
        return s if per_logit else (s.sigmoid_() if logits else s).pow_(alpha)

    # blocks of boxes (a function of M only): bounded memory
    budget = ROTATED_CPU_BLOCK if rotated and dev.type == "cpu" else PAIR_BLOCK
    block = max(1, budget // max(1, bsz * num_anchors))
    n_blocks = -(-m_max // block)
    # The best box of each anchor over all boxes (for the contests): a max with indices over a
    # block's boxes costs the CPU ~20 elementwise ops per pair for a few boxes, ~7 for a hundred;
    # where the selected anchors are few against a block (M·k·m_block ≪ M·A) the blocks keep only
    # the best u and the first block reaching it, and the box inside that block is found afterwards
    # at the selected anchors (a function of the shapes, not of the values)
    later = n_blocks > 1 and LATER_RATIO * k * block <= num_anchors
    pred = form(pred_boxes.unsqueeze(1))  # (B, 1, A)
    count = torch.zeros(bsz, num_anchors, dtype=torch.int64, device=dev)  # boxes selecting each anchor
    owner = torch.zeros_like(count)  # Σ of their indices: the owner where count == 1
    owner_u = torch.zeros(bsz, num_anchors, dtype=dtype, device=dev)  # Σ of their u: the owner's u
    best_u = torch.zeros_like(owner_u)  # max over all boxes of u(·, a)
    best = torch.zeros_like(count)  # its first box, or with ``later`` the first block reaching it
    box_ids = torch.arange(m_max, device=dev).view(-1, 1).split(block)
    tops = []
    for i, (cand, gt, labels, ids) in enumerate(zip(
        inside.blocks(block), split(form(gt_boxes.unsqueeze(2)), block), gt_labels.split(block, 1), box_ids,
        strict=True,
    )):
        u = pair(gt, pred).mul_(cand)  # (B, m, A); 0 off the candidates
        metric = _mul_power(score_pow(_class_scores(levels, labels)), u, beta)
        top = metric.topk(k, dim=-1).indices  # (B, m, k), over all anchors as ultralytics does
        keep = cand.gather(-1, top).long()  # a selected non-candidate (t = 0) is dropped
        flat_top = top.flatten(1)
        count.scatter_add_(1, flat_top, keep.flatten(1))
        owner.scatter_add_(1, flat_top, (keep * ids).flatten(1))
        owner_u.scatter_add_(1, flat_top, u.gather(-1, top).mul_(keep).flatten(1))
        tops.append(flat_top)
        if n_blocks == 1:  # u stays at hand
            break
        # where the block beats the earlier ones (strict: earlier blocks win ties)
        if later:
            u_max = u.amax(1)  # (B, A)
            best.masked_fill_(u_max > best_u, i)
        else:
            u_max, u_arg = u.max(dim=1)  # the first box on ties
            best = torch.where(u_max > best_u, u_arg + i * block, best)
        best_u = torch.maximum(best_u, u_max)

    # an anchor selected by several boxes goes to the box of highest u over all boxes (the first on
    # ties; box 0 when every u is 0)
    slots = torch.cat(tops, 1)  # (B, S), S = M·k: the selected anchors
    if n_blocks == 1 or later:  # the first best box at the slots, (B, S, m) → (B, S)
        if n_blocks == 1:  # u of every box at hand
            rows = torch.arange(m_max, device=dev).expand(bsz, slots.shape[1], -1)
            u_rows = u.gather(2, slots.unsqueeze(1).expand(-1, m_max, -1)).transpose(1, 2)
            best_u = u.amax(1)
        else:  # u of the boxes of the first block reaching best_u, recomputed
            first_row = best.gather(1, slots).mul_(block).unsqueeze(-1)
            # (a last, short block repeats its last box: a tie, after it)
            rows = (first_row + torch.arange(block, device=dev)).clamp_(max=m_max - 1)
            points = anchor_points.index_select(0, slots.flatten()).view(*slots.shape, 2)
            pred_at = pred_boxes.gather(1, slots.unsqueeze(-1).expand(-1, -1, size)).unsqueeze(2)
            gt_rows = _take_rows(gt_boxes.unsqueeze(2), rows)  # (B, S, block, 4 | 5)
            u_rows = pair(form(gt_rows), form(pred_at)).mul_(inside.at(rows, points))
        best_at = rows.gather(-1, u_rows.argmax(-1, keepdim=True)).squeeze(-1)  # (B, S)
        # a slot per selecting box: the same answer (the amin settles rounding-level disagreements)
        best = torch.full_like(count, m_max).scatter_reduce_(1, slots, best_at, "amin")
    foreground = count > 0
    contested = count > 1
    gt_index = torch.where(contested, best, owner)
    u = torch.where(contested, best_u, owner_u).mul_(foreground)
    boxes = gt_boxes.gather(1, gt_index.unsqueeze(-1).expand(-1, -1, size))  # (B, A, 4 | 5)
    labels = gt_labels.gather(1, gt_index)
    metric = _mul_power(score_pow(_anchor_scores(levels, labels)), u, beta)
    if topk2 is not None and topk2 != topk:
        foreground = _top_per_box(metric, gt_index, foreground, m_max, topk2)
        gt_index = gt_index * foreground  # background anchors point at box 0, as above
        boxes = gt_boxes.gather(1, gt_index.unsqueeze(-1).expand(-1, -1, size))
        labels = gt_labels.gather(1, gt_index)
        u, metric = u * foreground, metric * foreground
    # per box: max over its positive anchors (order-free scatter of maxima; 0 for boxes without any)
    zeros = gt_boxes.new_zeros(bsz, m_max, dtype=dtype)
    max_metric = zeros.scatter_reduce(1, gt_index, metric, "amax", include_self=True)
    max_u = zeros.scatter_reduce(1, gt_index, u, "amax", include_self=True)
    norm = max_u.gather(1, gt_index) / (max_metric.gather(1, gt_index) + eps)
    return TaskAlignedAssignment(foreground, gt_index, labels, boxes, metric * norm)
