"""Detection mAP: COCO-style with the reference evaluator (pycocotools' ``COCOeval``), and rotated boxes
by the DOTA protocol (written here: pycocotools knows no rotated boxes)."""

from __future__ import annotations

import contextlib
import io
import math

import torch
from torch import Tensor

from ._util import require


def coco_map(
    targets: list[dict[str, Tensor]], detections: list[dict[str, Tensor]], num_classes: int
) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 (COCO's 101-point interpolated AP, all areas, 100 detections).

    Args:
        targets: per image ``{"boxes": (n, 4) xyxy, "labels": (n,)}``.
        detections: per image ``{"boxes": (m, 4) xyxy, "scores": (m,), "labels": (m,)}``.
    Returns:
        ``{"map50": …, "map": …}`` in [0, 1] (0 when there is no detection at all).
    """
    coco_mod = require("pycocotools.coco", "pycocotools")
    eval_mod = require("pycocotools.cocoeval", "pycocotools")

    def xywh(b: Tensor) -> list[list[float]]:
        b = b.double()
        return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in b.tolist()]

    images, annotations, results = [], [], []
    for i, (t, d) in enumerate(zip(targets, detections, strict=True)):
        images.append({"id": i})
        for box, label in zip(xywh(t["boxes"]), t["labels"].tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": label,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        for box, score, label in zip(
            xywh(d["boxes"]), d["scores"].tolist(), d["labels"].tolist(), strict=True
        ):
            results.append({"image_id": i, "category_id": label, "bbox": box, "score": score})
    if not results:
        return {"map50": 0.0, "map": 0.0}
    gt = coco_mod.COCO()
    gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = eval_mod.COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50": float(ev.stats[1]), "map": float(ev.stats[0])}


def voc_ap(recall: Tensor, precision: Tensor) -> float:
    """VOC's all-points interpolated AP (VOC 2010+, DOTA's ``use_07_metric=False``): the area under the
    precision envelope, precision at recall r being the best precision at any recall ≥ r.

    Args:
        recall, precision: ``(n,)`` after each ranked detection (recall non-decreasing).
    """
    r = torch.cat([recall.new_zeros(1), recall.double(), recall.new_ones(1).double()])
    p = torch.cat([precision.new_zeros(1), precision.double(), precision.new_zeros(1).double()])
    p = p.flip(0).cummax(0).values.flip(0)  # the envelope: a running max from the right
    return float(((r[1:] - r[:-1]) * p[1:]).sum())


def rotated_map(
    targets: list[dict[str, Tensor]],
    detections: list[dict[str, Tensor]],
    num_classes: int,
    thresholds: tuple[float, ...] = tuple(0.5 + 0.05 * i for i in range(10)),
) -> dict[str, float]:
    """Rotated-box mAP by the DOTA protocol (DOTA_devkit's ``voc_eval``): per class, detections of all
    images ranked by score; each one's best ground truth is the one of its image and class with the
    highest exact rotated IoU (:func:`detloss.rotated_box_iou` ``kind="iou"``); it is a true positive
    when that IoU is above the threshold (strictly, as there) and no higher-ranked detection has
    already taken that box, otherwise a false positive (a duplicate, or a miss). AP is
    :func:`voc_ap`; mAP is the mean over classes that have ground truth.

    Args:
        targets: per image ``{"boxes": (n, 5) xywhr, "labels": (n,)}``.
        detections: per image ``{"boxes": (m, 5) xywhr, "scores": (m,), "labels": (m,)}``.
        thresholds: IoU thresholds; the first must be 0.5.
    Returns:
        ``{"map50": AP at 0.5, "map": the mean over ``thresholds`` (VOC AP, not COCO's 101 points),
        "ap50": [per class AP at 0.5, None for a class without ground truth]}``.
    """
    from ..rotated import rotated_bbox_iou

    def flat(items: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        boxes = torch.cat([d["boxes"].reshape(-1, 5).double() for d in items])
        labels = torch.cat([d["labels"].reshape(-1) for d in items])
        counts = torch.tensor([len(d["labels"]) for d in items], dtype=torch.int64)
        image = torch.repeat_interleave(torch.arange(len(items)), counts)
        return boxes, labels, image

    gt_boxes, gt_labels, gt_image = flat(targets)
    dt_boxes, dt_labels, dt_image = flat(detections)
    dt_scores = torch.cat([d["scores"].reshape(-1).double() for d in detections])
    # every (detection, ground truth) pair of the same image and class, its IoU computed once
    d_idx, g_idx = torch.nonzero(
        (dt_image[:, None] == gt_image[None, :]) & (dt_labels[:, None] == gt_labels[None, :]), as_tuple=True
    )
    iou = torch.zeros(len(dt_scores), len(gt_labels), dtype=torch.float64)
    iou[d_idx, g_idx] = rotated_bbox_iou(dt_boxes[d_idx], gt_boxes[g_idx], kind="iou", validate=False)
    if len(gt_labels):
        best, best_gt = iou.max(1).values, iou.argmax(1)  # argmax: the first of equal IoUs, as numpy's
    else:
        best, best_gt = iou.new_zeros(len(dt_scores)), torch.zeros(len(dt_scores), dtype=torch.int64)
    aps = torch.full((len(thresholds), num_classes), float("nan"), dtype=torch.float64)
    for c in range(num_classes):
        npos = int((gt_labels == c).sum())
        if npos == 0:
            continue
        sel = torch.nonzero(dt_labels == c).flatten()
        order = sel[torch.sort(dt_scores[sel], descending=True, stable=True).indices]
        rank = torch.arange(len(order))
        for t, thr in enumerate(thresholds):
            hit = best[order] > thr
            # a hit is a true positive only as the first (best-ranked) hit on its ground truth
            key = torch.where(hit, best_gt[order], len(gt_labels))
            first = torch.full((len(gt_labels) + 1,), len(order), dtype=torch.int64)
            first = first.scatter_reduce(0, key, rank, "amin")
            tp = hit & (first[key] == rank)
            ctp = tp.double().cumsum(0)
            recall = ctp / npos
            precision = ctp / (rank + 1).double()
            aps[t, c] = voc_ap(recall, precision)
    valid = ~aps[0].isnan()
    per_class = [None if math.isnan(a) else a for a in aps[0].tolist()]  # None: JSON has no NaN
    if not bool(valid.any()):
        return {"map50": 0.0, "map": 0.0, "ap50": per_class}
    return {"map50": float(aps[0, valid].mean()), "map": float(aps[:, valid].mean()), "ap50": per_class}
