"""COCO-style mAP with the reference evaluator (pycocotools' ``COCOeval``), on in-memory data."""

from __future__ import annotations

import contextlib
import io

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
