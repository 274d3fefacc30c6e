"""DDP on 2 processes gives the single-process gradient of the whole batch (reduce_across_ranks).

Two processes (gloo, CPU, file:// rendezvous under tmp_path) each run every criterion on half of a
batch, through a tiny float64 model wrapped in DistributedDataParallel; DDP averages the gradients.
The parent runs the same model on the whole batch in one process and compares:

- YOLOv3, YOLOv4, SSD (batch means, normalised by global counts): DDP gradient == single gradient.
- DETRLoss (the box count N averaged over the ranks): the "deformable", "rtdetr" and "lwdetr" (two
  query groups) presets, the box losses of "detr" (its class loss is a weighted mean over each rank's
  queries, as the references, so it is run with ``cls=0``), and "dfine" and "deimv2" (DEIMv2's union
  normaliser averaged alike) without DDF (a mean over each rank's queries, ``ddf=0``): DDP gradient
  == single gradient.
- YOLOv5, YOLOv8 and YOLO26's end-to-end loss (``total = (...) · B`` with the per-rank B; both
  branches of ``yolo26_loss`` with the option, weighted at a fixed epoch): K · DDP gradient == single
  gradient, the factor YOLOv5's and ultralytics' trainers apply (``loss * WORLD_SIZE``).

The halves are deliberately unbalanced (2 + 0 boxes on rank 0, 3 + 1 on rank 1), so the negative
control — the same run without ``reduce_across_ranks`` — differs for the criteria whose normaliser
counts positives (YOLOv4, YOLOv5, SSD): the test can fail.
"""

from __future__ import annotations

import inspect
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detloss.criteria import DETRLoss, SSDLoss, YOLOv3Loss, YOLOv4Loss, YOLOv5Loss, YOLOv8Loss, yolo26_loss

WORLD, BATCH, C, FEAT, SIZE = 2, 4, 3, 5, 64
BOXES_PER_IMAGE = (2, 0, 3, 1)  # rank 0: images 0-1 (2 boxes), rank 1: images 2-3 (4 boxes)
YOLO_GRIDS = {
    "YOLOv3": (8, 4, 2),
    "YOLOv4": (2, 4),
    "YOLOv5": (8, 4, 2),
    "YOLOv8": (8, 4, 2),
    "YOLO26": (8, 4, 2),
}  # 64 px
DETR_CASES = {
    "DETR-deformable": {"preset": "deformable"},
    "DETR-rtdetr": {"preset": "rtdetr"},
    "DETR-boxes": {"preset": "detr", "cls": 0.0},
    "DETR-lwdetr": {"preset": "lwdetr", "group_detr": 2},
    "DETR-dfine": {"preset": "dfine", "ddf": 0.0},
    "DETR-deimv2": {"preset": "deimv2", "ddf": 0.0},
}
LOCAL_BINS = 4  # D-FINE's corners: 4·(N + 1) logits per query
QUERIES, LAYERS = 6, 2
DDP_FACTOR = {
    "YOLOv3": 1.0,
    "YOLOv4": 1.0,
    "YOLOv5": float(WORLD),
    "YOLOv8": float(WORLD),
    "YOLO26": float(WORLD),
    "SSD": 1.0,
} | dict.fromkeys(DETR_CASES, 1.0)
COUNTS_POSITIVES = ("YOLOv4", "YOLOv5", "YOLOv8", "YOLO26", "SSD", *DETR_CASES)
V8_REG_MAX = 4
# unequal halves (3 images on rank 0, 1 on rank 1): exact for the criteria whose every normaliser is
# global (YOLOv5 keeps its per-rank objectness mean and · B, docs/reliability.md)
UNEQUAL_ROWS = (slice(0, 3), slice(3, 4))
EXACT_FOR_UNEQUAL = ("YOLOv3", "YOLOv4", "SSD", *DETR_CASES)


class YoloHeads(nn.Module):
    """One 1×1 conv per scale: features (B, F, H, W) -> raw head (B, 3·(5+C), H, W)."""

    def __init__(self, num_scales: int, channels: int = 3 * (5 + C)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(FEAT, channels, 1) for _ in range(num_scales))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats, strict=True)]


class SSDHead(nn.Module):
    """Per-prior features (B, P, F) -> (loc (B, P, 4), conf (B, P, C + 1))."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(FEAT, 4 + C + 1)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fc(feats)
        return out[..., :4], out[..., 4:]


class DETRHeads(nn.Module):
    """Per-query features (B, Q, F) -> (logits (L, B, Q, C′), boxes (L, B, Q, 4) cxcywh in (0, 1)) and,
    with ``local``, D-FINE's inputs: L + 1 outputs, ``corners`` (L, B, Q, 4·(N + 1)) and fixed
    ``reference_points``."""

    def __init__(self, width: int, local: bool = False) -> None:
        super().__init__()
        outputs = LAYERS + local
        self.cls = nn.ModuleList(nn.Linear(FEAT, width) for _ in range(outputs))
        self.box = nn.ModuleList(nn.Linear(FEAT, 4) for _ in range(outputs))
        self.corners = nn.ModuleList(nn.Linear(FEAT, 4 * (LOCAL_BINS + 1)) for _ in range(LAYERS * local))

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        logits = torch.stack([f(feats) for f in self.cls])
        boxes = torch.stack([f(feats).sigmoid() for f in self.box])
        if not self.corners:
            return logits, boxes, {}
        corners = torch.stack([f(feats) for f in self.corners])
        refs = boxes[:LAYERS].detach() * 0.5 + 0.25
        return logits, boxes, {"corners": corners, "reference_points": refs}


class EndToEndHeads(nn.Module):
    """Two sets of 1×1 heads on the same features, YOLO26's raw distances (reg_max = 1) and C classes:
    ``{"one2many": …, "one2one": …}``."""

    def __init__(self) -> None:
        super().__init__()
        self.one2many, self.one2one = YoloHeads(3, 4 + C), YoloHeads(3, 4 + C)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        return {"one2many": self.one2many(feats), "one2one": self.one2one(feats)}


class EndToEndCriterion(nn.Module):
    """``yolo26_loss`` at a fixed epoch of its schedule (both weights non-zero)."""

    def __init__(self, reduce: bool) -> None:
        super().__init__()
        self.crit = yolo26_loss(C, epochs=10, reduce_across_ranks=reduce)

    def forward(self, preds, targets):
        return self.crit(preds, targets, epoch=4)


class DETRCriterion(nn.Module):
    """DETRLoss on the targets of the other criteria: xyxy pixels -> cxcywh normalised."""

    def __init__(self, **kw) -> None:
        super().__init__()
        self.crit = DETRLoss(C, **kw)

    def forward(self, preds, targets):
        norm = [
            {
                "boxes": torch.cat(
                    ((t["boxes"][:, :2] + t["boxes"][:, 2:]) / 2, t["boxes"][:, 2:] - t["boxes"][:, :2]), 1
                )
                / SIZE,
                "labels": t["labels"],
            }
            for t in targets
        ]
        logits, boxes, local = preds
        return self.crit(logits, boxes, norm, **local)


def priors() -> torch.Tensor:
    """(P, 4) cxcywh: a 4×4 grid of 16 px cells, two sizes per cell."""
    c = (torch.arange(4, dtype=torch.float64) + 0.5) * 16
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack((cx.flatten(), cy.flatten()), -1)
    return torch.cat([torch.cat((centres, torch.full_like(centres, s)), -1) for s in (16.0, 32.0)])


def batch() -> tuple[dict, list[dict]]:
    """Features for every case and the targets of the whole batch (deterministic)."""
    g = torch.Generator().manual_seed(0)
    targets = []
    for n in BOXES_PER_IMAGE:
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 36
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 20 + 6
        targets.append(
            {"boxes": torch.cat((xy, xy + wh), -1), "labels": torch.randint(0, C, (n,), generator=g)}
        )
    feats = {
        name: [torch.randn(BATCH, FEAT, s, s, generator=g, dtype=torch.float64) for s in grids]
        for name, grids in YOLO_GRIDS.items()
    }
    feats["SSD"] = torch.randn(BATCH, len(priors()), FEAT, generator=g, dtype=torch.float64)
    detr_feats = torch.randn(BATCH, QUERIES, FEAT, generator=g, dtype=torch.float64)
    feats.update(dict.fromkeys(DETR_CASES, detr_feats))
    return feats, targets


def make(name: str, reduce: bool) -> tuple[nn.Module, nn.Module]:
    """The model (same initial weights in every process) and the criterion."""
    torch.manual_seed(1)
    if name in DETR_CASES:
        kw = DETR_CASES[name]
        heads = DETRHeads(C + (kw["preset"] == "detr"), local=kw["preset"] in ("dfine", "deimv2"))
        return heads.double(), DETRCriterion(**kw, reduce_across_ranks=reduce)
    if name == "SSD":
        return SSDHead().double(), SSDLoss(C, priors(), reduce_across_ranks=reduce)
    if name == "YOLO26":
        return EndToEndHeads().double(), EndToEndCriterion(reduce)
    if name == "YOLOv8":  # anchor-free heads: 4 side distributions of V8_REG_MAX bins, then C classes
        model = YoloHeads(3, 4 * V8_REG_MAX + C).double()
        return model, YOLOv8Loss(C, reg_max=V8_REG_MAX, reduce_across_ranks=reduce)
    model = YoloHeads(len(YOLO_GRIDS[name])).double()
    crit = {"YOLOv3": YOLOv3Loss, "YOLOv4": YOLOv4Loss, "YOLOv5": YOLOv5Loss}[name]
    return model, crit(C, reduce_across_ranks=reduce)


def take(x, rows: slice):
    return [f[rows] for f in x] if isinstance(x, list) else x[rows]


def gradients(name: str, model: nn.Module, crit: nn.Module, feats, targets, rows: slice):
    loss = crit(model(take(feats[name], rows)), targets[rows]).total
    loss.backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return [p.grad.detach().clone() for p in module.parameters()], loss.detach()


def _worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        feats, targets = batch()
        half = BATCH // WORLD
        rows = slice(rank * half, (rank + 1) * half)
        out = {}
        for name in DDP_FACTOR:
            for reduce in (True, False):
                model, crit = make(name, reduce)
                out[name, reduce] = gradients(
                    name, DistributedDataParallel(model), crit, feats, targets, rows
                )
        for name in EXACT_FOR_UNEQUAL:
            for reduce in (True, False):
                model, crit = make(name, reduce)
                out[name, reduce, "unequal"] = gradients(
                    name, DistributedDataParallel(model), crit, feats, targets, UNEQUAL_ROWS[rank]
                )
        if rank == 0:
            torch.save(out, out_file)
        dist.barrier()  # no rank tears the group down while another is still in a collective
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_gradients(tmp_path_factory) -> dict:
    # spawned children get this process's sys.path, so detloss and this module import there too.
    # A child killed by a signal (once in ~35 runs on the shared dev machine: SIGABRT from gloo
    # during set-up) gets one retry; an exception raised in a child is never retried.
    for attempt in range(2):
        tmp = tmp_path_factory.mktemp("ddp")
        out_file = str(tmp / "grads.pt")
        try:
            mp.spawn(_worker, args=(str(tmp / "rendezvous"), out_file), nprocs=WORLD, join=True)
            break
        except mp.ProcessExitedException:
            if attempt:
                raise
    return torch.load(out_file)


@pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed + gloo"
)
@pytest.mark.parametrize("name", list(DDP_FACTOR))
def test_ddp_matches_single_process_on_the_whole_batch(ddp_gradients, name):
    feats, targets = batch()
    model, crit = make(name, reduce=True)  # no process group here: the option has no effect
    single, _ = gradients(name, model, crit, feats, targets, slice(None))
    averaged, _ = ddp_gradients[name, True]
    # parameters (weights, biases) without gradient by design: DETR-boxes' (cls=0) two class heads;
    # D-FINE's output L − 1 (its pairing skips it: class and box head) and last corners (the teacher,
    # read by DDF only)
    unused = {"DETR-boxes": 4, "DETR-dfine": 6, "DETR-deimv2": 6}.get(name, 0)
    assert sum(bool(g.abs().max() == 0) for g in single) == unused
    for g_single, g_ddp in zip(single, averaged, strict=True):
        torch.testing.assert_close(DDP_FACTOR[name] * g_ddp, g_single, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed + gloo"
)
@pytest.mark.parametrize("name", COUNTS_POSITIVES)
def test_without_the_option_ddp_differs(ddp_gradients, name):
    """Negative control: per-rank normalisers are not the single-process average."""
    feats, targets = batch()
    model, crit = make(name, reduce=False)
    single, _ = gradients(name, model, crit, feats, targets, slice(None))
    local, _ = ddp_gradients[name, False]
    assert not all(
        torch.allclose(DDP_FACTOR[name] * g_ddp, g_single, rtol=1e-6)
        for g_single, g_ddp in zip(single, local, strict=True)
    )


@pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed + gloo"
)
@pytest.mark.parametrize("name", EXACT_FOR_UNEQUAL)
def test_unequal_batches_are_exact_too(ddp_gradients, name):
    """3 images on one rank, 1 on the other: still the single-process gradient with the option,
    and not without it (for YOLOv3 the per-rank batch mean is then wrong as well)."""
    feats, targets = batch()
    model, crit = make(name, reduce=True)
    single, _ = gradients(name, model, crit, feats, targets, slice(None))
    for g_single, g_ddp in zip(single, ddp_gradients[name, True, "unequal"][0], strict=True):
        torch.testing.assert_close(g_ddp, g_single, rtol=1e-10, atol=1e-12)
    assert not all(
        torch.allclose(g_ddp, g_single, rtol=1e-6)
        for g_single, g_ddp in zip(single, ddp_gradients[name, False, "unequal"][0], strict=True)
    )


def test_default_is_reduce_across_ranks_false():
    for cls in (YOLOv3Loss, YOLOv4Loss, YOLOv5Loss, YOLOv8Loss, SSDLoss, DETRLoss):
        assert inspect.signature(cls).parameters["reduce_across_ranks"].default is False
