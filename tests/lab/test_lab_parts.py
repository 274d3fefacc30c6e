"""The lab's building blocks: landscapes, synthetic data, tiny detector, batched NMS, COCO evaluation."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from detloss.cli import main  # noqa: E402
from detloss.lab import landscape as L  # noqa: E402
from detloss.lab.data import CLASSES, make_shapes  # noqa: E402
from detloss.lab.model import TinyDetector, batched_nms, select_detections  # noqa: E402

# ---------------------------------------------------------------- landscapes


def test_iou_loss_has_no_gradient_without_overlap_but_giou_does():
    target = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    far = torch.tensor([[3.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    value, grad = L.evaluate("iou", far, target)
    assert float(value) == 1.0 and float(grad) == 0.0
    # GIoU, hand: C = 4 x 1 = 4, U = 2, loss = 1 - 0 + (4 - 2)/4 = 1.5
    value, grad = L.evaluate("giou", far, target)
    assert float(value) == pytest.approx(1.5, abs=1e-6) and float(grad) > 0.1


def test_cli_plot_writes_two_figures(tmp_path, capsys):
    assert main(["plot", "--grid", "9", "--losses", "iou", "giou", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "flat %" in out and "giou" in out
    for name in ("landscape_shift.png", "landscape_scale.png"):
        assert (tmp_path / name).stat().st_size > 1000


# ---------------------------------------------------------------- data


def test_shapes_are_deterministic_valid_and_disjoint():
    a = make_shapes(24, size=64, seed=5)
    b = make_shapes(24, size=64, seed=5)
    c = make_shapes(24, size=64, seed=6)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.images.shape == (24, 3, 64, 64) and 0 <= float(a.images.min()) and float(a.images.max()) <= 1
    for t in a.targets:
        boxes, labels = t["boxes"], t["labels"]
        assert 1 <= len(labels) <= 4 and labels.dtype == torch.int64
        assert bool(((labels >= 0) & (labels < len(CLASSES))).all())
        assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all())
        side = boxes[:, 2:] - boxes[:, :2]
        assert bool(((side >= 10) & (side <= 34)).all())
        for i in range(len(boxes)):  # naive pairwise check: no two boxes overlap
            for j in range(i):
                iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                assert iw <= 0 or ih <= 0


# ---------------------------------------------------------------- model and NMS


def test_tiny_detector_head_shapes():
    out = TinyDetector(num_classes=3, num_anchors=3, width=8)(torch.rand(2, 3, 64, 64))
    assert [tuple(o.shape) for o in out] == [(2, 24, 8, 8), (2, 24, 4, 4), (2, 24, 2, 2)]


def _naive_nms(boxes, scores, labels, thr):
    """Greedy NMS written plainly: highest score first, drop same-class boxes overlapping a kept one."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if not math.isfinite(scores[i]):
            continue
        ok = True
        for j in kept:
            if labels[i] != labels[j]:
                continue
            b1, b2 = boxes[i], boxes[j]
            iw = max(0.0, min(b1[2], b2[2]) - max(b1[0], b2[0]))
            ih = max(0.0, min(b1[3], b2[3]) - max(b1[1], b2[1]))
            inter = iw * ih
            union = (b1[2] - b1[0]) * (b1[3] - b1[1]) + (b2[2] - b2[0]) * (b2[3] - b2[1]) - inter
            if inter / union > thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return sorted(kept)


@pytest.mark.parametrize("seed", range(4))
def test_batched_nms_equals_naive_greedy_nms(seed):
    g = torch.Generator().manual_seed(seed)
    b, k = 3, 60
    xy = torch.rand(b, k, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 5 + 20 * torch.rand(b, k, 2, generator=g)], -1).double()
    scores = torch.rand(b, k, generator=g).double().sort(1, descending=True).values
    scores[:, -5:] = -math.inf  # invalid tail slots
    labels = torch.randint(0, 3, (b, k), generator=g)
    keep = batched_nms(boxes, scores, labels, 0.45)
    for i in range(b):
        expected = _naive_nms(boxes[i].tolist(), scores[i].tolist(), labels[i].tolist(), 0.45)
        assert keep[i].nonzero().flatten().tolist() == expected


def test_select_detections_picks_best_class_and_caps():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40]]])
    scores = torch.tensor([[[0.1, 0.9], [0.2, 0.8], [0.7, 0.05]]])
    (det,) = select_detections(boxes, scores, conf_threshold=0.01, iou_threshold=0.5)
    # box 1 (class 1, 0.8) overlaps box 0 (class 1, 0.9) by 81/119 > 0.5: suppressed
    assert det["labels"].tolist() == [1, 0] and det["scores"].tolist() == pytest.approx([0.9, 0.7])
    (det,) = select_detections(boxes, scores, conf_threshold=0.01, max_det=1)
    assert len(det["scores"]) == 1


# ---------------------------------------------------------------- COCO evaluation


def test_coco_map_perfect_shifted_and_empty():
    pytest.importorskip("pycocotools")
    from detloss.lab.evaluate import coco_map

    targets = [
        {"boxes": torch.tensor([[10.0, 10, 30, 30]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[5.0, 5, 25, 45]]), "labels": torch.tensor([1])},
    ]
    perfect = [dict(t, scores=torch.tensor([0.9])) for t in targets]
    assert coco_map(targets, perfect, 2) == {"map50": pytest.approx(1.0), "map": pytest.approx(1.0)}
    # shift by 4 px in x: 20x20 box, IoU = 16*20 / (2*400 - 320) = 2/3 -> counts at 0.5..0.65 (4 of 10)
    shifted = [
        {
            "boxes": t["boxes"] + torch.tensor([4.0, 0, 4, 0]),
            "labels": t["labels"],
            "scores": torch.tensor([0.9]),
        }
        for t in targets[:1]
    ]
    res = coco_map(targets[:1], shifted, 1)
    assert res["map50"] == pytest.approx(1.0) and res["map"] == pytest.approx(0.4)
    empty = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    ]
    assert coco_map(targets[:1], empty, 1) == {"map50": 0.0, "map": 0.0}
