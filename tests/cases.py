"""Every criterion at its training size: the inputs that ``tests/test_one_graph.py`` counts and compiles
and that ``benchmarks/bench.py --criteria`` times.

B = 16 images, :data:`BOXES_PER_IMAGE` boxes each by default: YOLOv3Loss and both YOLOv4Loss presets
at 416 px with C = 80, YOLOv5Loss and YOLOv8Loss at 640 px with C = 80, SSDLoss on the 8732 SSD300
priors with C = 20, YOLO26's end-to-end loss at 640 px with C = 80; B = 8 at 1024 px with C = 15 (DOTA)
for the oriented YOLOv8OBBLoss and YOLO26-OBB. A criterion added to the library gets one
:class:`CriterionCase` in :func:`cases` and is counted, compiled and benchmarked (the DETR family's
matching is its one host round trip by design: tests/criteria/test_detr.py counts it).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from detloss.criteria import (
    EndToEndLoss,
    SSDLoss,
    YOLOv3Loss,
    YOLOv4Loss,
    YOLOv5Loss,
    YOLOv8Loss,
    YOLOv8OBBLoss,
    yolo26_loss,
)
from detloss.criteria.yolov4 import PRESETS
from detloss.profiling import DispatchCounter

Targets = list[dict[str, Tensor]]
#: ``(generator, boxes per image, dtype, device) -> (preds, targets)``
Inputs = Callable[
    [torch.Generator, Sequence[int], torch.dtype, torch.device | str], tuple[list[Tensor], Targets]
]

BATCH, BOXES_PER_IMAGE = 16, 12


def yolo_targets(gen: torch.Generator, batch: int, size: int, counts: Sequence[int], c: int) -> Targets:
    """``counts[i % len(counts)]`` boxes in image i: xyxy pixels with the centre inside the image, sides
    log-uniform in [4, size / 2], labels in [0, c)."""
    out = []
    for i in range(batch):
        n = counts[i % len(counts)]
        wh = torch.exp(torch.empty(n, 2).uniform_(math.log(4), math.log(size / 2), generator=gen))
        ctr = torch.rand(n, 2, generator=gen) * (size - 2) + 1
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).clamp(0, size)
        out.append({"boxes": boxes, "labels": torch.randint(0, c, (n,), generator=gen)})
    return out


def obb_targets(gen: torch.Generator, batch: int, size: int, counts: Sequence[int], c: int) -> Targets:
    """:func:`yolo_targets` as xywhr boxes (w, h of the xyxy box, θ uniform in [−π/4, 3π/4))."""
    out = []
    for t in yolo_targets(gen, batch, size, counts, c):
        xy, wh = (t["boxes"][:, :2] + t["boxes"][:, 2:]) / 2, t["boxes"][:, 2:] - t["boxes"][:, :2]
        theta = torch.rand(len(xy), 1, generator=gen) * math.pi - math.pi / 4
        out.append({"boxes": torch.cat([xy, wh, theta], -1), "labels": t["labels"]})
    return out


def ssd_targets(gen: torch.Generator, batch: int, counts: Sequence[int], c: int) -> Targets:
    """``counts[i % len(counts)]`` boxes in image i in [0, 1] coordinates, sides uniform in
    [0.05, 0.5], labels in [0, c)."""
    out = []
    for i in range(batch):
        n = counts[i % len(counts)]
        wh = torch.rand(n, 2, generator=gen) * 0.45 + 0.05
        ctr = torch.rand(n, 2, generator=gen) * 0.9 + 0.05
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).clamp(0, 1)
        out.append({"boxes": boxes, "labels": torch.randint(0, c, (n,), generator=gen)})
    return out


def ssd300_priors(dtype: torch.dtype = torch.float32) -> Tensor:
    """The 8732 SSD300 default boxes, ``(8732, 4)`` cxcywh in [0, 1]: per cell the min size,
    sqrt(min·max) and each aspect ratio r and 1/r of the min size (the ssd.pytorch ``PriorBox`` layout)."""
    maps, steps = (38, 19, 10, 5, 3, 1), (8, 16, 32, 64, 100, 300)
    mins, maxs = (30, 60, 111, 162, 213, 264), (60, 111, 162, 213, 264, 315)
    ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    out = []
    for f, step, lo, hi, ars in zip(maps, steps, mins, maxs, ratios, strict=True):
        fk, s = 300 / step, lo / 300
        sp = math.sqrt(s * hi / 300)
        for i, j in itertools.product(range(f), repeat=2):
            cx, cy = (j + 0.5) / fk, (i + 0.5) / fk
            out += [[cx, cy, s, s], [cx, cy, sp, sp]]
            for ar in ars:
                r = math.sqrt(ar)
                out += [[cx, cy, s * r, s / r], [cx, cy, s / r, s * r]]
    return torch.tensor(out, dtype=dtype)


@dataclass(frozen=True)
class CriterionCase:
    """One criterion at one training size.

    Attributes:
        name: the test id and the table row.
        build: ``validate -> criterion``.
        inputs: ``(generator, boxes per image, dtype, device) -> (preds, targets)``; ``preds`` are
            leaf tensors requiring grad.
        ops_target: the most aten ops (:class:`~detloss.profiling.DispatchCounter`) one forward +
            backward may dispatch with ``validate=False`` at :data:`BOXES_PER_IMAGE` boxes per image.
    """

    name: str
    build: Callable[[bool], nn.Module]
    inputs: Inputs
    ops_target: int


def yolo_inputs(
    size: int,
    strides: Sequence[int],
    channels: int,
    c: int,
    batch: int = BATCH,
    branches: int = 1,
    make_targets: Callable[..., Targets] = yolo_targets,
) -> Inputs:
    """Raw heads ``(batch, channels, size / s, size / s)`` per stride (``branches`` sets of them, one
    after the other) and ``c``-class targets in input pixels from ``make_targets``."""

    def make(gen, counts, dtype=torch.float32, device="cpu"):
        preds = [
            (torch.randn(batch, channels, size // s, size // s, generator=gen) * 0.5)
            .to(dtype=dtype, device=device)
            .requires_grad_()
            for _ in range(branches)
            for s in strides
        ]
        targets = make_targets(gen, batch, size, counts, c)
        return preds, [{k: v.to(device) for k, v in t.items()} for t in targets]

    return make


class EndToEndCall(nn.Module):
    """:class:`EndToEndLoss` called as the other criteria, ``(preds, targets)``: the first half of
    ``preds`` are the one-to-many heads, the second the one-to-one heads, at a fixed ``epoch``."""

    def __init__(self, criterion: EndToEndLoss, epoch: float = 10.0) -> None:
        super().__init__()
        self.criterion, self.epoch = criterion, epoch

    def forward(self, preds: Sequence[Tensor], targets: Targets):
        half = len(preds) // 2
        return self.criterion({"one2many": preds[:half], "one2one": preds[half:]}, targets, self.epoch)


def ssd_inputs(num_priors: int, c: int, batch: int = BATCH) -> Inputs:
    """``loc (batch, num_priors, 4)``, ``conf (batch, num_priors, c + 1)`` and ``c``-class targets in
    [0, 1] coordinates."""

    def make(gen, counts, dtype=torch.float32, device="cpu"):
        loc = (torch.randn(batch, num_priors, 4, generator=gen) * 0.5).to(dtype=dtype, device=device)
        conf = torch.randn(batch, num_priors, c + 1, generator=gen).to(dtype=dtype, device=device)
        targets = ssd_targets(gen, batch, counts, c)
        return [loc.requires_grad_(), conf.requires_grad_()], [
            {k: v.to(device) for k, v in t.items()} for t in targets
        ]

    return make


@functools.cache
def cases() -> tuple[CriterionCase, ...]:
    """YOLOv3Loss, YOLOv4Loss "yolov4" and "tiny", YOLOv5Loss, YOLOv8Loss, SSDLoss, YOLO26's
    end-to-end loss, YOLOv8OBBLoss and YOLO26-OBB at their training sizes.

    ``ops_target`` is a regression bound a few percent above the measured count with ``per_image``
    (339, 367, 359, 312, 497, 115, 883, 1123 and 2162 ops, in this order; the oriented ones on the
    CPU's smaller assigner blocks).
    """
    priors = ssd300_priors()
    v3, v4, tiny = (8, 16, 32), PRESETS["yolov4"][2], PRESETS["tiny"][2]
    return (
        CriterionCase(
            "YOLOv3Loss 416", lambda v: YOLOv3Loss(80, validate=v), yolo_inputs(416, v3, 3 * 85, 80), 350
        ),
        CriterionCase(
            "YOLOv4Loss yolov4 416",
            lambda v: YOLOv4Loss(80, "yolov4", validate=v),
            yolo_inputs(416, v4, 3 * 85, 80),
            380,
        ),
        CriterionCase(
            "YOLOv4Loss tiny 416",
            lambda v: YOLOv4Loss(80, "tiny", validate=v),
            yolo_inputs(416, tiny, 3 * 85, 80),
            370,
        ),
        CriterionCase(
            "YOLOv5Loss 640", lambda v: YOLOv5Loss(80, validate=v), yolo_inputs(640, v3, 3 * 85, 80), 322
        ),
        CriterionCase(
            "YOLOv8Loss 640",
            lambda v: YOLOv8Loss(80, validate=v),
            yolo_inputs(640, v3, 4 * 16 + 80, 80),  # 4·reg_max + C channels
            520,
        ),
        CriterionCase(
            "SSDLoss 8732", lambda v: SSDLoss(20, priors, validate=v), ssd_inputs(priors.shape[0], 20), 119
        ),
        CriterionCase(
            "yolo26_loss 640",
            lambda v: EndToEndCall(yolo26_loss(80, validate=v)),
            yolo_inputs(640, v3, 4 + 80, 80, branches=2),  # reg_max = 1
            920,
        ),
        CriterionCase(
            "YOLOv8OBBLoss 1024",
            lambda v: YOLOv8OBBLoss(15, validate=v),
            yolo_inputs(1024, v3, 4 * 16 + 15 + 1, 15, batch=8, make_targets=obb_targets),
            1170,
        ),
        CriterionCase(
            "yolo26_loss obb 1024",
            lambda v: EndToEndCall(yolo26_loss(15, task="obb", validate=v)),
            yolo_inputs(1024, v3, 4 + 15 + 1, 15, batch=8, branches=2, make_targets=obb_targets),
            2250,
        ),
    )


def fwd_bwd(crit: Callable, preds: list[Tensor], targets: Targets) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One forward + backward: the detached total loss and the gradients of ``preds``."""
    loss = crit(preds, targets).total
    grads = torch.autograd.grad(loss, preds, allow_unused=True)
    return loss.detach(), grads


def count(
    case: CriterionCase, validate: bool = False, counts: Sequence[int] = (BOXES_PER_IMAGE,)
) -> DispatchCounter:
    """Ops and syncs of one forward + backward, after one warm-up call (lazy set-up is not counted)."""
    crit = case.build(validate)
    preds, targets = case.inputs(torch.Generator().manual_seed(0), counts)
    fwd_bwd(crit, preds, targets)
    with DispatchCounter() as c:
        fwd_bwd(crit, preds, targets)
    return c
