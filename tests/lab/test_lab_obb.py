"""detloss demo --criterion obb: rotated shapes, the OBB head's decoding, rotated NMS and the DOTA mAP on
hand-computed cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from detloss.cli import main  # noqa: E402
from detloss.lab import demo as D  # noqa: E402
from detloss.lab.data import canonical_xywhr, make_rotated_shapes  # noqa: E402
from detloss.lab.evaluate import rotated_map, voc_ap  # noqa: E402
from detloss.lab.model import select_rotated  # noqa: E402
from detloss.rotated import box_convert_rotated  # noqa: E402

BOX = [20.0, 20.0, 16.0, 4.0, 0.3]  # a thin box


def gt(*boxes, labels=None):
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 5)
    return {"boxes": b, "labels": torch.tensor(labels or [0] * len(b), dtype=torch.int64)}


def det(boxes, scores, labels=None):
    d = gt(*boxes, labels=labels)
    d["scores"] = torch.tensor(scores, dtype=torch.float64)
    return d


def test_perfect_detection_has_ap_one():
    r = rotated_map([gt(BOX)], [det([BOX], [0.9])], num_classes=1)
    assert r["map50"] == 1.0 and r["map"] == 1.0


def test_a_duplicate_is_a_false_positive():
    # ranks: TP (P 1, R 1), then the duplicate FP (P 1/2): the envelope keeps P 1 up to R 1, AP 1;
    # with a second object missed first, the duplicate's cost shows: see the next case
    r = rotated_map([gt(BOX)], [det([BOX, BOX], [0.9, 0.8])], num_classes=1)
    assert r["map50"] == 1.0
    other = [40.0, 40.0, 10.0, 6.0, 0.0]
    # ranked: dup of BOX (TP, R 1/2 P 1), dup again (FP, P 1/2), the other object (TP, R 1, P 2/3)
    # AP = 1/2 · 1 + 1/2 · 2/3 = 5/6
    r = rotated_map([gt(BOX, other)], [det([BOX, BOX, other], [0.9, 0.8, 0.7])], num_classes=1)
    assert r["map50"] == pytest.approx(5 / 6)


def test_a_thin_box_turned_by_90_degrees_misses():
    turned = [*BOX[:4], BOX[4] + math.pi / 2]  # IoU = 4·4 / (2·64 − 16) = 1/7
    r = rotated_map([gt(BOX)], [det([turned], [0.9])], num_classes=1)
    assert r["map50"] == 0.0
    # the same box written with w, h swapped and θ + π/2 is the same box: a hit
    same = [BOX[0], BOX[1], BOX[3], BOX[2], BOX[4] + math.pi / 2]
    assert rotated_map([gt(BOX)], [det([same], [0.9])], num_classes=1)["map50"] == 1.0


def test_classes_images_and_the_mean():
    # class 0: one object found; class 1: two objects, the higher-scored detection is in the wrong image
    # (FP), then one TP: P = 0, 1/2; R = 0, 1/2 → AP = 1/2 · 1/2 = 1/4; class 2 has no ground truth
    a, b = BOX, [40.0, 40.0, 10.0, 6.0, 0.0]
    targets = [gt(a, b, labels=[0, 1]), gt(b, labels=[1])]
    dets = [det([b, a], [0.5, 0.9], labels=[1, 0]), det([a], [0.95], labels=[1])]
    r = rotated_map(targets, dets, num_classes=3)
    assert r["ap50"] == [1.0, 0.25, None]
    assert r["map50"] == pytest.approx(0.625)


def test_voc_ap_all_points_by_hand():
    # precision 1, 0, 2/3 at recall 1/2, 1/2, 1: envelope 1 on (0, 1/2], 2/3 on (1/2, 1]
    assert voc_ap(torch.tensor([0.5, 0.5, 1.0]), torch.tensor([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)


def test_canonical_form():
    b = canonical_xywhr(torch.tensor([[0.0, 0.0, 2.0, 5.0, 0.3], [0.0, 0.0, 5.0, 2.0, -1.0]]))
    assert b[0].tolist() == pytest.approx([0, 0, 5, 2, 0.3 + math.pi / 2])
    assert b[1].tolist() == pytest.approx([0, 0, 5, 2, math.pi - 1.0])


def test_rotated_shapes_are_canonical_and_inside():
    data = make_rotated_shapes(32, 64, seed=3)
    again = make_rotated_shapes(32, 64, seed=3)
    assert torch.equal(data.images, again.images)
    boxes = torch.cat([t["boxes"] for t in data.targets])
    assert bool((boxes[:, 2] > boxes[:, 3]).all())
    assert bool((boxes[:, 4] >= -math.pi / 4).all() and (boxes[:, 4] < 3 * math.pi / 4).all())
    corners = box_convert_rotated(boxes, "xywhr", "xyxyxyxy")
    assert bool((corners >= -1e-4).all() and (corners <= 64 + 1e-4).all())


def test_rotated_nms_uses_the_exact_iou():
    # a thin box, the same box turned by 90° (IoU 1/7: both kept) and a near copy (suppressed)
    turned = [*BOX[:4], BOX[4] + math.pi / 2]
    near = [BOX[0] + 0.5, *BOX[1:]]
    boxes = torch.tensor([[BOX, turned, near]])
    scores = torch.tensor([[[0.9], [0.8], [0.7]]])
    d = select_rotated(boxes, scores)[0]
    assert d["scores"].tolist() == pytest.approx([0.9, 0.8])


def test_obb_head_decode_of_zero_logits():
    spec = D.CRITERIA["obb"]
    channels = spec.head_channels(2)
    assert channels == 4 * D.V8_REG_MAX + 2 + 1
    zeros = [torch.zeros(1, channels, 64 // s, 64 // s) for s in D.STRIDES]
    boxes, scores = spec.decode(zeros, 64)
    side = (D.V8_REG_MAX - 1) * 8  # l + r at the mean bin, stride 8
    assert boxes.shape == (1, 84, 5) and scores.shape == (1, 84, 2)
    # z = 0: θ = (1/2 − 1/4)·π = π/4; equal distances keep the centre on the cell centre
    assert boxes[0, 9].tolist() == pytest.approx([12.0, 12.0, side, side, math.pi / 4])


def test_one_short_obb_epoch_is_finite(tmp_path, capsys):
    args = ["demo", "--criterion", "obb", "--epochs", "1", "--train-images", "16", "--test-images", "4",
            "--batch", "8", "--width", "8", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "obb" in capsys.readouterr().out
    assert (tmp_path / "demo_detections_obb.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "demo_obb.json").read_text())
    assert all(math.isfinite(v) for v in summary["final_loss"].values())
    assert set(summary["final_loss"]) >= {"box", "cls", "dfl", "angle"}
    assert 0.0 <= summary["trained"]["map50"] <= 1.0


# ---------------------------------------------------------------- detloss plot --rotated


def test_square_target_gives_gaussian_kinds_no_angle_gradient():
    from detloss.lab import landscape as L

    square = torch.tensor([0.0, 0.0, 2.0, 2.0, 0.0], dtype=torch.float64)
    boxes, _, _ = L.rotated_grid(square, 1.0, 7)
    for kind in ("probiou", "kld", "gwd"):
        _, _, dtheta = L.evaluate_rotated(kind, boxes, square)
        assert float(dtheta.max()) < 1e-12, kind
    # the exact IoU sees the turn: two 2×2 squares at 45° overlap in a regular octagon
    turned = torch.tensor([[0.0, 0.0, 2.0, 2.0, math.pi / 4]], dtype=torch.float64)
    loss, _, dtheta = L.evaluate_rotated("iou", turned, square)
    octagon = 8 * (math.sqrt(2) - 1)  # area of the overlap of two 2×2 squares at 45°
    assert float(loss) == pytest.approx(1 - octagon / (8 - octagon), abs=1e-6)  # eps 1e-7 in the union
    _, _, dtheta = L.evaluate_rotated("iou", turned + torch.tensor([0, 0, 0, 0, -0.2]), square)
    assert float(dtheta) > 0.1
    # an elongated target: every kind feels the turn
    thin = torch.tensor([0.0, 0.0, 4.0, 1.0, 0.0], dtype=torch.float64)
    boxes, _, _ = L.rotated_grid(thin, 1.0, 7)
    for kind in L.ROTATED_SWEEP_KINDS:
        assert float(L.evaluate_rotated(kind, boxes, thin)[2].max()) > 0.1, kind


def test_cli_plot_rotated(tmp_path, capsys):
    assert main(["plot", "--rotated", "--grid", "9", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "square" in out and "probiou" in out
    for name in ("landscape_rotated_elongated.png", "landscape_rotated_square.png"):
        assert (tmp_path / name).stat().st_size > 1000


def _dota_voc_eval(targets, detections, c, thr):
    """DOTA_devkit's voc_eval for class c, loop by loop (the reference the vectorised code must match)."""
    from detloss.rotated import rotated_box_iou

    gts = {i: t["boxes"][t["labels"] == c] for i, t in enumerate(targets)}
    taken = {i: [False] * len(b) for i, b in gts.items()}
    npos = sum(len(b) for b in gts.values())
    dets = [(float(s), i, b) for i, d in enumerate(detections)
            for b, s, lab in zip(d["boxes"], d["scores"], d["labels"], strict=True) if int(lab) == c]
    dets.sort(key=lambda x: -x[0])  # stable, as numpy's argsort of −score is not: scores here are distinct
    tp, fp = [], []
    for _, i, b in dets:
        g = gts[i]
        if len(g):
            ious = rotated_box_iou(b[None].double(), g.double())[0]
            ovmax, jmax = float(ious.max()), int(ious.argmax())
        else:
            ovmax, jmax = -1.0, -1
        if ovmax > thr and not taken[i][jmax]:
            taken[i][jmax] = True
            tp.append(1.0), fp.append(0.0)
        else:
            tp.append(0.0), fp.append(1.0)
    tp, fp = torch.tensor(tp, dtype=torch.float64).cumsum(0), torch.tensor(fp, dtype=torch.float64).cumsum(0)
    rec = tp / npos
    prec = tp / (tp + fp)
    mrec = [0.0, *rec.tolist(), 1.0]
    mpre = [0.0, *prec.tolist(), 0.0]
    for k in range(len(mpre) - 1, 0, -1):
        mpre[k - 1] = max(mpre[k - 1], mpre[k])
    return sum((mrec[k + 1] - mrec[k]) * mpre[k + 1] for k in range(len(mrec) - 1) if mrec[k + 1] != mrec[k])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotated_map_matches_the_dota_loop(seed):
    # jittered copies of the ground truth (hits, loose boxes, duplicates) and random boxes, random scores
    g = torch.Generator().manual_seed(seed)
    data = make_rotated_shapes(12, 64, seed=seed)
    targets, detections = data.targets, []
    for t in data.targets:
        n = len(t["labels"])
        copies = t["boxes"].repeat(3, 1)
        copies = copies + torch.randn(copies.shape, generator=g) * torch.tensor([2.0, 2.0, 3.0, 2.0, 0.2])
        copies[:, 2:4] = copies[:, 2:4].abs() + 1
        noise = torch.cat([torch.rand(4, 2, generator=g) * 64, 4 + torch.rand(4, 2, generator=g) * 20,
                           torch.rand(4, 1, generator=g) * 3], 1)
        boxes = torch.cat([copies, noise])
        labels = torch.cat([t["labels"].repeat(3), torch.randint(0, 2, (4,), generator=g)])
        flip = torch.rand(len(labels), generator=g) < 0.15  # some wrong classes
        labels = torch.where(flip, 1 - labels, labels)
        detections.append({"boxes": boxes, "labels": labels, "scores": torch.rand(3 * n + 4, generator=g)})
    r = rotated_map(targets, detections, num_classes=2, thresholds=(0.5, 0.75))
    for c in range(2):
        assert r["ap50"][c] == pytest.approx(_dota_voc_eval(targets, detections, c, 0.5), abs=1e-12)
    both = [[_dota_voc_eval(targets, detections, c, t) for c in range(2)] for t in (0.5, 0.75)]
    assert r["map"] == pytest.approx(sum(map(sum, both)) / 4, abs=1e-12)
    assert 0.0 < r["map50"] < 1.0  # a case with both hits and misses
