"""``detloss demo``: train a tiny detector on synthetic shapes with a detloss criterion, report COCO mAP.

Pipeline: :func:`.data.make_shapes` (train and held-out test split from different seeds) →
:class:`.model.TinyDetector` (strides 8, 16, 32; 3 anchors per scale, or an anchor-free DFL head for
YOLOv8; plus a one-to-one copy of that head for YOLO26) → the chosen criterion →
AdamW with a cosine schedule → decode + :func:`.model.select_detections` (NMS), or for YOLO26 the
one-to-one head + :func:`.model.select_topk` (no NMS) → pycocotools COCOeval.

``rtdetr`` trains :class:`detloss.criteria.DETRLoss` (preset ``"rtdetr"``: Hungarian matching, VFL, L1,
GIoU) with every cell of the three scales as one query (a one-layer, decoder-free set predictor: 84
queries on 64-pixel images), its box refined from the cell's reference box as RT-DETR refines its
reference points, σ(z + σ⁻¹(ref)), and decoded without NMS like YOLO26.

``obb`` trains :class:`detloss.criteria.YOLOv8OBBLoss` on rotated rectangles and ellipses
(:func:`.data.make_rotated_shapes`, xywhr targets) with a head of ``4·reg_max + C + 1`` channels (the
angle as the YOLOv8/11 head gives it), rotated NMS on the exact rotated IoU
(:func:`.model.select_rotated`) and the DOTA protocol's mAP (:func:`.evaluate.rotated_map`); its
mAP@.5:.95 column is then VOC AP averaged over the thresholds, not COCO's.

Criteria are looked up in :data:`CRITERIA`. Each entry says how to build the criterion, how to hand it
the network's raw outputs and how to decode those outputs into scored boxes, so a criterion is wired
in one place.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import codecs
from ..boxes import convert
from ..criteria import (
    DETRLoss,
    SetLossResult,
    SSDLoss,
    YOLOv3Loss,
    YOLOv4Loss,
    YOLOv5Loss,
    YOLOv8Loss,
    YOLOv8OBBLoss,
)
from ..criteria.end_to_end import yolo26_loss
from .data import CLASSES, ROTATED_CLASSES, ShapesData, canonical_xywhr, make_rotated_shapes, make_shapes
from .evaluate import coco_map, rotated_map
from .model import TinyDetector, select_detections, select_rotated, select_topk

STRIDES = (8, 16, 32)
# (w, h) in input pixels per scale, fitted to the shapes' 10–34 px sides
ANCHORS = (((10, 10), (14, 11), (11, 15)), ((18, 18), (24, 17), (17, 25)), ((28, 28), (34, 24), (24, 34)))
# YOLOv8's bins per box side: distances up to 3 cells (24 px at stride 8, 96 px at 32) span the
# 10–34 px shapes of 64×64 images (ultralytics' 16 is sized for 640 px)
V8_REG_MAX = 4


# ------------------------------------------------------------------------------------------------
# the criterion registry
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CriterionSpec:
    """How the demo drives one criterion.

    Attributes:
        build: ``(num_classes, image size, epochs) → criterion``.
        preds: ``(raw outputs, image size) → what the criterion's forward takes as preds``.
        decode: ``(raw outputs, image size) → (boxes (B, N, 4) xyxy pixels, scores (B, N, C))``.
        head_channels: ``num_classes → channels per scale`` of the network's head (None: 3 anchors
            × (5 + C), the layout every anchor-based criterion reads).
        one2one: the network has a second, one-to-one head (its outputs are then
            ``{"one2many": …, "one2one": …}``) and the criterion takes the epoch (``epoch=e``, 0-based)
            for its schedule.
        select: ``(boxes, scores) → per-image detections``; NMS by default, top-k for one-to-one heads.
        rotated: oriented boxes: the data are :func:`.data.make_rotated_shapes` (xywhr targets, the
            classes :data:`.data.ROTATED_CLASSES`), decode gives ``(B, N, 5)`` xywhr and the metric is
            :func:`.evaluate.rotated_map` (DOTA) instead of COCO's.
        box_bias: the initial bias of every head's first four channels (both copies with ``one2one``):
            YOLO26's raw ltrb distances start at this many cells, as ultralytics' ``Detect.bias_init``
            starts them at 2 (without it they start near 0: degenerate boxes whose CIoU, and so whose
            alignment with every target, is ~0). None keeps the default initialisation.
    """

    build: Callable[[int, int, int], Any]
    preds: Callable[[Any, int], Any]
    decode: Callable[[Any, int], tuple[Tensor, Tensor]]
    head_channels: Callable[[int], int] | None = None
    one2one: bool = False
    select: Callable[[Tensor, Tensor], list[dict[str, Tensor]]] = select_detections
    rotated: bool = False
    box_bias: float | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return ROTATED_CLASSES if self.rotated else CLASSES

    def make_data(self, num_images: int, size: int, seed: int) -> ShapesData:
        return (make_rotated_shapes if self.rotated else make_shapes)(num_images, size, seed=seed)

    def metric(self, targets: list[dict[str, Tensor]], detections: list[dict[str, Tensor]]) -> dict[str, Any]:
        return (rotated_map if self.rotated else coco_map)(targets, detections, len(self.classes))


def _grid(h: int, w: int, like: Tensor) -> Tensor:
    """Cell indices ``(H, W, 2)`` as (x, y)."""
    gy, gx = torch.meshgrid(
        torch.arange(h, device=like.device), torch.arange(w, device=like.device), indexing="ij"
    )
    return torch.stack([gx, gy], -1).to(like.dtype)


def _yolo_decoder(
    box_fn: Callable[[Tensor, Tensor, Tensor, int], Tensor],
) -> Callable[[list[Tensor], int], tuple[Tensor, Tensor]]:
    """Decode YOLO heads into xyxy boxes and per-class scores σ(obj)·σ(cls).

    ``box_fn(raw (B, A, H, W, 4), anchors (A, 1, 1, 2) pixels, grid (H, W, 2), stride)`` → cxcywh
    pixels calls the criterion's own codec in ``detloss.codecs``.
    """

    def decode(outputs: list[Tensor], size: int) -> tuple[Tensor, Tensor]:
        boxes, scores = [], []
        for out, anchors, stride in zip(outputs, ANCHORS, STRIDES, strict=True):
            b, _, h, w = out.shape
            a = len(anchors)
            p = out.view(b, a, -1, h, w).permute(0, 1, 3, 4, 2)  # (B, A, H, W, 5 + C)
            anc = out.new_tensor(anchors)[:, None, None, :]
            box = box_fn(p[..., :4], anc, _grid(h, w, out), stride)
            boxes.append(convert(box, "cxcywh", "xyxy").reshape(b, -1, 4))
            scores.append((p[..., 4:5].sigmoid() * p[..., 5:].sigmoid()).reshape(b, a * h * w, -1))
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    return decode


def ssd_priors(size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Priors ``(P, 4)`` cxcywh pixels: the anchors at every cell centre, order (scale, y, x, anchor)."""
    priors = []
    for anchors, stride in zip(ANCHORS, STRIDES, strict=True):
        n = size // stride
        centre = (_grid(n, n, torch.empty(0, dtype=dtype)) + 0.5) * stride  # (H, W, 2)
        wh = torch.tensor(anchors, dtype=dtype)
        priors.append(
            torch.cat(
                [centre[:, :, None, :].expand(n, n, len(anchors), 2), wh.expand(n, n, -1, -1)], -1
            ).reshape(-1, 4)
        )
    return torch.cat(priors)


def _ssd_split(outputs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Raw heads → loc ``(B, P, 4)``, conf ``(B, P, C + 1)`` in the prior order of :func:`ssd_priors`."""
    flat = []
    for out, anchors in zip(outputs, ANCHORS, strict=True):
        b, _, h, w = out.shape
        flat.append(
            out.view(b, len(anchors), -1, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * len(anchors), -1)
        )
    both = torch.cat(flat, 1)
    return both[..., :4], both[..., 4:]


def _ssd_decode(outputs: list[Tensor], size: int) -> tuple[Tensor, Tensor]:
    loc, conf = _ssd_split(outputs)
    box = codecs.decode_ssd(loc, ssd_priors(size, loc.dtype).to(loc.device))
    return convert(box, "cxcywh", "xyxy"), conf.softmax(-1)[..., 1:]  # class 0 = background


def _yolo_preds(outputs: list[Tensor], size: int) -> list[Tensor]:
    return outputs


def _anchor_free_decode(reg_max: int) -> Callable[[list[Tensor], int], tuple[Tensor, Tensor]]:
    """Anchor-free heads ``(B, 4·reg_max + C, H, W)`` → boxes around each cell centre (the DFL
    expectation, :func:`detloss.codecs.decode_distances`, or with ``reg_max = 1`` the raw distances),
    times the stride, and per-class σ(cls)."""

    def decode(outputs: list[Tensor], size: int) -> tuple[Tensor, Tensor]:
        boxes, scores = [], []
        for out, stride in zip(outputs, STRIDES, strict=True):
            b, _, h, w = out.shape
            flat = out.flatten(2).transpose(1, 2)  # (B, H·W, 4·reg_max + C)
            centres = _grid(h, w, out).reshape(-1, 2) + 0.5  # grid units
            if reg_max == 1:
                box = codecs.distances_to_boxes(flat[..., :4], centres)
            else:
                box = codecs.decode_distances(flat[..., : 4 * reg_max].reshape(b, h * w, 4, reg_max), centres)
            boxes.append(box * stride)
            scores.append(flat[..., 4 * reg_max :].sigmoid())
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    return decode


_yolov8_decode = _anchor_free_decode(V8_REG_MAX)
_yolo26_head_decode = _anchor_free_decode(1)


def _yolo26_decode(outputs: dict[str, list[Tensor]], size: int) -> tuple[Tensor, Tensor]:
    """Detections come from the one-to-one head alone (the one-to-many head only helps training)."""
    return _yolo26_head_decode(outputs["one2one"], size)


# RT-DETR's class-bias prior: every class starts at probability 0.01 (its head's bias initialisation)
_SET_PRIOR = math.log(0.01 / 0.99)


def _set_preds(outputs: list[Tensor], size: int) -> tuple[Tensor, Tensor]:
    """Heads ``(B, 4 + C, H, W)`` → one decoder layer of queries, every cell of every scale:
    ``logits (B, N, C)`` (with the 0.01 prior) and ``boxes (B, N, 4)`` cxcywh normalised, each the
    refinement σ(z + σ⁻¹(ref)) of its cell's reference box (the cell centre, 2 strides wide)."""
    logits, boxes = [], []
    for out, stride in zip(outputs, STRIDES, strict=True):
        b, _, h, w = out.shape
        flat = out.flatten(2).transpose(1, 2)  # (B, H·W, 4 + C)
        centres = (_grid(h, w, out).reshape(-1, 2) + 0.5) * stride
        ref = torch.cat((centres, torch.full_like(centres, 2.0 * stride)), -1) / size
        boxes.append(torch.sigmoid(flat[..., :4] + torch.logit(ref)))
        logits.append(flat[..., 4:] + _SET_PRIOR)
    return torch.cat(logits, 1), torch.cat(boxes, 1)


def _set_decode(outputs: list[Tensor], size: int) -> tuple[Tensor, Tensor]:
    logits, boxes = _set_preds(outputs, size)
    return convert(boxes, "cxcywh", "xyxy") * size, logits.sigmoid()


class SetCriterion:
    """:class:`detloss.criteria.DETRLoss` on the lab's inputs: ``preds`` = (logits, boxes) of
    :func:`_set_preds` and targets in xyxy pixels, handed on as cxcywh normalised to [0, 1]."""

    def __init__(self, criterion: DETRLoss, size: int) -> None:
        self.criterion, self.size = criterion, size

    def __call__(self, preds: tuple[Tensor, Tensor], targets: list[dict[str, Tensor]]) -> SetLossResult:
        norm = [
            {"boxes": convert(t["boxes"], "xyxy", "cxcywh") / self.size, "labels": t["labels"]}
            for t in targets
        ]
        return self.criterion(*preds, norm)


def _obb_preds(outputs: list[Tensor], size: int) -> list[Tensor]:
    """The YOLOv8/11 OBB head's angle: the last channel z becomes θ = (σ(z) − ¼)·π ∈ [−π/4, 3π/4), the
    range of the canonical targets (docs/obb.md); the other channels pass raw."""
    return [torch.cat((o[:, :-1], (o[:, -1:].sigmoid() - 0.25) * math.pi), 1) for o in outputs]


def _obb_decode(outputs: list[Tensor], size: int) -> tuple[Tensor, Tensor]:
    """OBB heads ``(B, 4·reg_max + C + 1, H, W)`` → xywhr boxes ``(B, N, 5)`` input pixels (the DFL
    expectation decoded in each anchor's rotated frame, :func:`detloss.codecs.decode_rotated_distances`)
    and per-class σ(cls)."""
    boxes, scores = [], []
    for out, stride in zip(_obb_preds(outputs, size), STRIDES, strict=True):
        b, _, h, w = out.shape
        flat = out.flatten(2).transpose(1, 2)  # (B, H·W, 4·reg_max + C + 1)
        centres = _grid(h, w, out).reshape(-1, 2) + 0.5  # grid units
        dist = codecs.expected_distances(flat[..., : 4 * V8_REG_MAX].reshape(b, h * w, 4, V8_REG_MAX))
        box = codecs.decode_rotated_distances(dist, flat[..., -1], centres)
        boxes.append(torch.cat((box[..., :4] * stride, box[..., 4:]), -1))
        scores.append(flat[..., 4 * V8_REG_MAX : -1].sigmoid())
    return torch.cat(boxes, 1), torch.cat(scores, 1)


CRITERIA: dict[str, CriterionSpec] = {
    "yolov3": CriterionSpec(
        lambda c, size, epochs: YOLOv3Loss(num_classes=c, anchors=ANCHORS, strides=STRIDES),
        _yolo_preds,
        _yolo_decoder(lambda raw, anc, grid, s: codecs.decode_yolo(raw, grid, anc, s)),
    ),
    "yolov4": CriterionSpec(
        lambda c, size, epochs: YOLOv4Loss(
            num_classes=c,
            preset="yolov4",
            anchors=ANCHORS,
            anchor_masks=((0, 1, 2), (3, 4, 5), (6, 7, 8)),
            strides=STRIDES,
        ),
        _yolo_preds,
        _yolo_decoder(lambda raw, anc, grid, s: codecs.decode_yolo(raw, grid, anc, s)),
    ),
    "yolov5": CriterionSpec(
        lambda c, size, epochs: YOLOv5Loss(num_classes=c, anchors=ANCHORS, strides=STRIDES),
        _yolo_preds,
        _yolo_decoder(lambda raw, anc, grid, s: codecs.decode_yolov5(raw, anc / s, grid, s)),
    ),
    "yolov8": CriterionSpec(
        lambda c, size, epochs: YOLOv8Loss(num_classes=c, strides=STRIDES, reg_max=V8_REG_MAX),
        _yolo_preds,
        _yolov8_decode,
        head_channels=lambda c: 4 * V8_REG_MAX + c,
    ),
    "yolo26": CriterionSpec(
        lambda c, size, epochs: yolo26_loss(c, epochs=epochs, strides=STRIDES),
        _yolo_preds,
        _yolo26_decode,
        head_channels=lambda c: 4 + c,  # reg_max = 1: four raw distances
        one2one=True,
        select=select_topk,
        box_bias=2.0,  # ultralytics' Detect.bias_init: raw distances of 2 cells at the start
    ),
    "rtdetr": CriterionSpec(
        lambda c, size, epochs: SetCriterion(DETRLoss(c, "rtdetr"), size),
        _set_preds,
        _set_decode,
        head_channels=lambda c: 4 + c,
        select=select_topk,
    ),
    "ssd": CriterionSpec(
        lambda c, size, epochs: SSDLoss(num_classes=c, priors=ssd_priors(size)),
        lambda outputs, size: _ssd_split(outputs),
        _ssd_decode,
    ),
    "obb": CriterionSpec(
        lambda c, size, epochs: YOLOv8OBBLoss(num_classes=c, strides=STRIDES, reg_max=V8_REG_MAX),
        _obb_preds,
        _obb_decode,
        head_channels=lambda c: 4 * V8_REG_MAX + c + 1,
        select=select_rotated,
        rotated=True,
    ),
}


def build_criterion(name: str, num_classes: int, size: int, epochs: int = 30) -> Any:
    """The :data:`CRITERIA` entry ``name`` for ``num_classes`` classes on ``size``-pixel images, trained
    for ``epochs`` epochs (the length of YOLO26's schedule; the others ignore it)."""
    if name not in CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {name!r}")
    return CRITERIA[name].build(num_classes, size, epochs)


# ------------------------------------------------------------------------------------------------
# training and evaluation
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def detect(
    model: TinyDetector, spec: CriterionSpec, images: Tensor, batch: int = 64
) -> list[dict[str, Tensor]]:
    """Run the model in eval mode and return per-image detections (xyxy pixels, score, label)."""
    model.eval()
    out: list[dict[str, Tensor]] = []
    for i in range(0, images.shape[0], batch):
        boxes, scores = spec.decode(model(images[i : i + batch]), images.shape[-1])
        out.extend(spec.select(boxes, scores))
    return out


def train(
    model: TinyDetector,
    criterion: Any,
    spec: CriterionSpec,
    data: ShapesData,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    show_progress: bool = True,
) -> dict[str, list[float]]:
    """AdamW + cosine decay with a short linear warm-up, horizontal flips; returns per-step loss parts.

    A one-to-one criterion (``spec.one2one``) gets the epoch, so its branch weights move once per epoch.
    """
    from ._util import progress

    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / batch)
    total = epochs * steps_per_epoch
    warmup = max(1, min(total // 10, 3 * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    history: dict[str, list[float]] = {}
    size = data.images.shape[-1]
    with progress(total=total, desc="train", unit="step", disable=not show_progress) as bar:
        for epoch in range(epochs):
            model.train()
            for idx in torch.randperm(len(data), generator=g).split(batch):
                images, targets = data.subset(idx)
                flip = torch.rand(len(idx), generator=g) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
                flipper = _flip_rotated if spec.rotated else _flip
                targets = [flipper(t, size) if f else t for t, f in zip(targets, flip.tolist(), strict=True)]
                preds = spec.preds(model(images), size)
                result = criterion(preds, targets, epoch=epoch) if spec.one2one else criterion(preds, targets)
                opt.zero_grad(set_to_none=True)
                result.total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                sched.step()
                history.setdefault("total", []).append(float(result.total.detach()))
                for k, v in result.components.items():
                    history.setdefault(k, []).append(float(v.detach()))
                bar.set_postfix_str(f"loss {float(result.total.detach()):.3f}")
                bar.update(1)
    return history


def _flip(target: dict[str, Tensor], size: int) -> dict[str, Tensor]:
    b = target["boxes"]
    return {
        "boxes": torch.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], -1),
        "labels": target["labels"],
    }


def _flip_rotated(target: dict[str, Tensor], size: int) -> dict[str, Tensor]:
    """A horizontal mirror of xywhr boxes: x → size − x and θ → −θ, back in the canonical form."""
    b = target["boxes"]
    mirrored = torch.stack((size - b[:, 0], b[:, 1], b[:, 2], b[:, 3], -b[:, 4]), -1)
    return {"boxes": canonical_xywhr(mirrored), "labels": target["labels"]}


# ------------------------------------------------------------------------------------------------
# pictures
# ------------------------------------------------------------------------------------------------


def plot_losses(history: dict[str, list[float]], title: str, path: Path) -> Path:
    """One panel per loss component (raw per step, light; moving average, bold), log y."""
    from ._util import pyplot, save

    plt = pyplot()
    names = list(history)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        y = torch.tensor(history[name], dtype=torch.float64)
        k = max(1, len(y) // 25)
        smooth = torch.nn.functional.avg_pool1d(y[None, None], k, 1, padding=0)[0, 0] if len(y) >= k else y
        ax.plot(y.numpy(), color="tab:blue", alpha=0.3, lw=0.8)
        ax.plot(range(k - 1, k - 1 + len(smooth)), smooth.numpy(), color="tab:blue", lw=1.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if bool((y > 0).all()):
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_detections(
    images: Tensor,
    targets: list[dict[str, Tensor]],
    detections: list[dict[str, Tensor]],
    title: str,
    path: Path,
    score_threshold: float = 0.3,
    classes: tuple[str, ...] = CLASSES,
) -> Path:
    """Test images with ground truth (white, dashed) and detections above ``score_threshold`` (coloured);
    xyxy boxes as rectangles, xywhr boxes (last dimension 5) as their rotated outlines."""
    from ..rotated import box_convert_rotated
    from ._util import pyplot, save

    def outlines(boxes: Tensor) -> list[list[list[float]]]:
        """Corner lists of xyxy or xywhr boxes."""
        if boxes.shape[-1] == 5:
            return box_convert_rotated(boxes.float(), "xywhr", "xyxyxyxy").reshape(-1, 4, 2).tolist()
        x1, y1, x2, y2 = boxes.reshape(-1, 4).unbind(-1)
        return torch.stack([x1, y1, x2, y1, x2, y2, x1, y2], -1).reshape(-1, 4, 2).tolist()

    plt = pyplot()
    n = images.shape[0]
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    colours = ("tab:red", "tab:cyan", "yellow")
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, d in zip(axes.flat, images, targets, detections, strict=False):
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        for corners in outlines(t["boxes"]):
            ax.add_patch(plt.Polygon(corners, closed=True, fill=False, ec="white", lw=1, ls="--"))
        scored = zip(outlines(d["boxes"]), d["scores"].tolist(), d["labels"].tolist(), strict=True)
        for corners, s, c in scored:
            if s < score_threshold:
                continue
            ax.add_patch(plt.Polygon(corners, closed=True, fill=False, ec=colours[c % 3], lw=1.5))
            x1, y1 = min(p[0] for p in corners), min(p[1] for p in corners)
            ax.text(
                x1,
                y1 - 1,
                f"{classes[c][:4]} {s:.2f}",
                color=colours[c % 3],
                fontsize=6,
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "lw": 0},
                clip_on=True,  # a wild box of an untrained net must not stretch the figure
            )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------


def run(
    criterion: str = "yolov5",
    epochs: int = 30,
    train_images: int = 512,
    test_images: int = 128,
    size: int = 64,
    batch: int = 32,
    lr: float = 3e-3,
    width: int = 32,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Generate data, measure the untrained model, train, measure again; return metrics and history."""
    torch.manual_seed(seed)
    spec = CRITERIA[criterion]
    classes = spec.classes
    crit = build_criterion(criterion, len(classes), size, epochs)
    t0 = time.perf_counter()
    train_set = spec.make_data(train_images, size, seed)
    test_set = spec.make_data(test_images, size, seed + 10_000)  # disjoint stream: held out
    channels = None if spec.head_channels is None else spec.head_channels(len(classes))
    model = TinyDetector(
        len(classes), num_anchors=3, width=width, head_channels=channels, one2one=spec.one2one
    )
    if spec.box_bias is not None:
        model.init_box_bias(spec.box_bias)
    before = spec.metric(test_set.targets, detect(model, spec, test_set.images))
    t1 = time.perf_counter()
    history = train(model, crit, spec, train_set, epochs, batch, lr, seed, show_progress)
    t2 = time.perf_counter()
    detections = detect(model, spec, test_set.images)
    after = spec.metric(test_set.targets, detections)
    return {
        "criterion": criterion,
        "epochs": epochs,
        "train_images": train_images,
        "test_images": test_images,
        "size": size,
        "seed": seed,
        "untrained": before,
        "trained": after,
        "seconds": {"data": t1 - t0, "train": t2 - t1, "eval": time.perf_counter() - t2},
        "history": history,
        "test_set": test_set,
        "detections": detections,
    }


def main(args: argparse.Namespace) -> int:
    names = list(CRITERIA) if args.criterion == "all" else [args.criterion]
    out = Path(args.out)
    rows = []
    for name in names:
        print(
            f"criterion {name}: {args.train_images} train / {args.test_images} test images of "
            f"{args.size}×{args.size}, {args.epochs} epochs"
        )
        res = run(
            name,
            args.epochs,
            args.train_images,
            args.test_images,
            args.size,
            args.batch,
            args.lr,
            args.width,
            args.seed,
        )
        rows.append(res)
        plot_losses(res["history"], f"{name}: loss components per step", out / f"demo_losses_{name}.png")
        k = min(8, args.test_images)
        test = res["test_set"]
        plot_detections(
            test.images[:k],
            test.targets[:k],
            res["detections"][:k],
            f"{name}: test images, detections ≥ 0.3 (solid), ground truth (dashed)",
            out / f"demo_detections_{name}.png",
            classes=CRITERIA[name].classes,
        )
        summary = {
            key: res[key]
            for key in (
                "criterion",
                "epochs",
                "train_images",
                "test_images",
                "size",
                "seed",
                "untrained",
                "trained",
                "seconds",
            )
        }
        summary["final_loss"] = {key: v[-1] for key, v in res["history"].items()}
        path = out / f"demo_{name}.json"
        path.write_text(json.dumps(summary, indent=1))
        print(f"wrote {path}")
    head = ("criterion", "mAP@0.5", "mAP@.5:.95", "untrained@0.5", "train s", "total s")
    print("\n{:9} {:>8} {:>11} {:>14} {:>8} {:>8}".format(*head))
    for r in rows:
        s = r["seconds"]
        print(
            f"{r['criterion']:9} {r['trained']['map50']:8.3f} {r['trained']['map']:11.3f} "
            f"{r['untrained']['map50']:14.3f} {s['train']:8.1f} {sum(s.values()):8.1f}"
        )
    return 0
