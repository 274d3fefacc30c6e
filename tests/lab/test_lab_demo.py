"""detloss demo: criterion registry, head layouts, a tiny training run, and (slow) learning beats chance."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("pycocotools")

from detloss.cli import main  # noqa: E402
from detloss.lab import demo as D  # noqa: E402

CRITERIA = list(D.CRITERIA)


def test_ssd_priors_by_hand():
    priors = D.ssd_priors(64)
    assert priors.shape == ((8 * 8 + 4 * 4 + 2 * 2) * 3, 4)
    # order (scale, y, x, anchor): prior 0 = cell (0, 0) of stride 8, anchor (10, 10); prior 3 = cell x=1
    assert priors[0].tolist() == [4.0, 4.0, 10.0, 10.0]
    assert priors[3].tolist() == [12.0, 4.0, 10.0, 10.0]
    assert priors[8 * 3].tolist() == [4.0, 12.0, 10.0, 10.0]
    assert priors[192].tolist() == [8.0, 8.0, 18.0, 18.0]  # first prior of stride 16


def test_ssd_split_matches_the_prior_order():
    # write each anchor's prior (cx, cy, w, h) into its loc channels; the split must line them up
    outputs = []
    for anchors, stride in zip(D.ANCHORS, D.STRIDES, strict=True):
        n = 64 // stride
        out = torch.zeros(1, len(anchors), 4 + 4, n, n)  # C = 3: 4 loc + 4 conf per anchor
        gy, gx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        for a, (w, h) in enumerate(anchors):
            out[0, a, 0], out[0, a, 1] = (gx + 0.5) * stride, (gy + 0.5) * stride
            out[0, a, 2], out[0, a, 3] = w, h
        outputs.append(out.view(1, -1, n, n))
    loc, conf = D._ssd_split(outputs)
    assert conf.shape == (1, 252, 4)
    assert torch.equal(loc[0], D.ssd_priors(64))


def test_unknown_criterion_is_reported():
    with pytest.raises(ValueError, match="criterion"):
        D.build_criterion("rcnn", 3, 64)
    with pytest.raises(SystemExit) as exc:  # the command line's choices
        main(["demo", "--criterion", "rcnn"])
    assert exc.value.code == 2


def test_yolov5_decode_of_zero_logits_gives_the_anchors():
    # decode_yolov5 at logits 0: centre = cell + 0.5, size = (2 * 0.5)^2 * anchor = anchor: the priors
    outputs = [torch.zeros(1, 3 * 8, 64 // s, 64 // s) for s in D.STRIDES]
    boxes, scores = D.CRITERIA["yolov5"].decode(outputs, 64)
    priors = D.ssd_priors(64)
    expected = torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], -1)
    assert sorted(boxes[0].tolist()) == sorted(expected.tolist())
    assert torch.allclose(scores, torch.full_like(scores, 0.25))  # sigmoid(0) * sigmoid(0)


@pytest.mark.parametrize("name", CRITERIA)
def test_one_epoch_on_a_handful_of_images(name, tmp_path, capsys):
    args = [
        "demo",
        "--criterion",
        name,
        "--epochs",
        "1",
        "--train-images",
        "16",
        "--test-images",
        "4",
        "--batch",
        "8",
        "--width",
        "8",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    assert "mAP@0.5" in capsys.readouterr().out
    for png in (f"demo_losses_{name}.png", f"demo_detections_{name}.png"):
        assert (tmp_path / png).stat().st_size > 1000
    summary = json.loads((tmp_path / f"demo_{name}.json").read_text())
    assert all(math.isfinite(v) for v in summary["final_loss"].values())
    assert 0.0 <= summary["trained"]["map50"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", CRITERIA)
def test_training_beats_the_untrained_model(name):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    # 240 steps (half the default run)
    res = D.run(name, epochs=15, train_images=512, test_images=48, show_progress=False)
    assert res["untrained"]["map50"] < 0.05
    assert res["trained"]["map50"] > res["untrained"]["map50"] + 0.1, res["trained"]


def test_yolov8_head_and_decode_of_zero_logits():
    # zero logits: every side's distance is the mean bin (reg_max − 1)/2 cells around the cell centre
    spec = D.CRITERIA["yolov8"]
    channels = spec.head_channels(3)
    assert channels == 4 * D.V8_REG_MAX + 3
    outputs = D.TinyDetector(3, width=8, head_channels=channels)(torch.rand(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(2, channels, n, n) for n in (8, 4, 2)]
    zeros = [torch.zeros_like(o[:1]) for o in outputs]
    boxes, scores = spec.decode(zeros, 64)
    half = (D.V8_REG_MAX - 1) / 2
    assert boxes.shape == (1, 84, 4) and torch.allclose(scores, torch.full_like(scores, 0.5))
    for index, centre, stride in ((0, 0.5, 8), (9, 1.5, 8), (64, 0.5, 16)):  # cells (0, 0), (1, 1); stride 16
        lo, hi = (centre - half) * stride, (centre + half) * stride
        assert boxes[0, index].tolist() == [lo, lo, hi, hi]


def test_yolo26_has_a_one_to_one_head_on_detached_features():
    spec = D.CRITERIA["yolo26"]
    assert spec.one2one and spec.head_channels(3) == 4 + 3  # reg_max = 1: four raw distances
    model = D.TinyDetector(3, width=8, head_channels=spec.head_channels(3), one2one=True)
    out = model(torch.rand(2, 3, 64, 64))
    assert set(out) == {"one2many", "one2one"}
    for many, one in zip(out["one2many"], out["one2one"], strict=True):
        assert many.shape == one.shape
        assert torch.equal(many, one)  # the copy starts as the one-to-many head
    # the one-to-one branch trains its own heads only: no gradient reaches the shared features
    sum(o.sum() for o in out["one2one"]).backward()
    assert all(p.grad is None for p in model.stem.parameters())
    assert all(p.grad is not None for p in model.heads_o2o.parameters())
    assert all(p.grad is None for p in model.heads.parameters())


def test_yolo26_decodes_the_one_to_one_head_without_nms():
    # one2one: zero logits except two cells whose boxes coincide; one2many: noise that must be ignored
    spec = D.CRITERIA["yolo26"]
    one = [torch.zeros(1, 7, 64 // s, 64 // s) for s in D.STRIDES]
    one[0][0, :4, 0, 0] = 1.0  # cell (0, 0) of stride 8: centre (4, 4) ± 8 px → (-4, -4, 12, 12)
    one[0][0, 4, 0, 0] = 5.0  # class 0, confident
    one[0][0, 4, 0, 1] = 4.0  # cell (1, 0): class 0, slightly less confident
    one[0][0, :4, 0, 1] = torch.tensor([2.0, 1.0, 0.0, 1.0])  # → (-4, -4, 12, 12) too
    many = [torch.randn_like(o) * 10 for o in one]
    boxes, scores = spec.decode({"one2many": many, "one2one": one}, 64)
    assert boxes.shape == (1, 84, 4) and scores.shape == (1, 84, 3)
    assert boxes[0, 0].tolist() == [-4.0, -4.0, 12.0, 12.0] == boxes[0, 1].tolist()
    det = spec.select(boxes, scores)[0]
    assert det["boxes"].shape == (100, 4)  # top-k of the 84 · 3 (anchor, class) pairs
    assert det["labels"][:2].tolist() == [0, 0]
    # both coinciding boxes are kept: NMS would have dropped the second
    assert torch.equal(det["boxes"][0], det["boxes"][1])
    assert det["scores"][:2].tolist() == pytest.approx(torch.sigmoid(torch.tensor([5.0, 4.0])).tolist())
    assert bool((det["scores"][:-1] >= det["scores"][1:]).all())


def test_yolo26_training_steps_its_schedule_and_lowers_the_loss():
    # a few epochs on 16 images: the criterion sees each epoch, the loss falls, mAP comes from one2one
    seen = []
    crit = D.build_criterion("yolo26", 3, 64, epochs=4)
    forward = crit.forward

    def spy(preds, targets, epoch):
        seen.append(epoch)
        return forward(preds, targets, epoch)

    crit.forward = spy
    torch.manual_seed(0)
    spec = D.CRITERIA["yolo26"]
    data = D.make_shapes(16, 64, seed=0)
    model = D.TinyDetector(3, width=8, head_channels=spec.head_channels(3), one2one=True)
    history = D.train(model, crit, spec, data, epochs=4, batch=8, lr=3e-3, seed=0, show_progress=False)
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(math.isfinite(v) for v in history["total"])
    assert sum(history["total"][-2:]) < sum(history["total"][:2])
    dets = D.detect(model, spec, data.images)
    model.eval()
    with torch.no_grad():  # what evaluation must be: the one-to-one head, top-k, no NMS
        boxes, scores = D._yolo26_head_decode(model(data.images)["one2one"], 64)
    expected = D.select_topk(boxes, scores)
    assert len(dets) == 16 and all(d["boxes"].shape[0] == 100 for d in dets)
    for d, e in zip(dets, expected, strict=True):
        assert all(torch.equal(d[k], e[k]) for k in ("boxes", "scores", "labels"))
    assert 0.0 <= D.coco_map(data.targets, dets, 3)["map50"] <= 1.0


def test_rtdetr_queries_start_at_their_reference_boxes():
    # raw box channels 0: σ(0 + σ⁻¹(ref)) = ref, the cell centre with sides of two strides; class
    # channels 0: the 0.01 prior
    outputs = [torch.zeros(1, 4 + 3, 64 // s, 64 // s) for s in D.STRIDES]
    logits, boxes = D._set_preds(outputs, 64)
    assert logits.shape == (1, 84, 3) and boxes.shape == (1, 84, 4)
    torch.testing.assert_close(logits.sigmoid(), torch.full_like(logits, 0.01))
    torch.testing.assert_close(boxes[0, 0], torch.tensor([4.0, 4.0, 16.0, 16.0]) / 64)  # stride 8, (0, 0)
    torch.testing.assert_close(boxes[0, 9], torch.tensor([12.0, 12.0, 16.0, 16.0]) / 64)  # cell (1, 1)
    torch.testing.assert_close(boxes[0, 64], torch.tensor([8.0, 8.0, 32.0, 32.0]) / 64)  # stride 16
    det_boxes, scores = D._set_decode(outputs, 64)
    torch.testing.assert_close(det_boxes[0, 0], torch.tensor([-4.0, -4.0, 12.0, 12.0]))


def test_rtdetr_training_lowers_the_set_loss():
    pytest.importorskip("scipy.optimize")
    torch.manual_seed(0)
    spec = D.CRITERIA["rtdetr"]
    crit = D.build_criterion("rtdetr", 3, 64)
    data = D.make_shapes(16, 64, seed=0)
    model = D.TinyDetector(3, width=8, head_channels=spec.head_channels(3))
    history = D.train(model, crit, spec, data, epochs=4, batch=8, lr=3e-3, seed=0, show_progress=False)
    assert set(history) == {"total", "cls", "bbox", "giou"}
    assert all(math.isfinite(v) for v in history["total"])
    assert sum(history["total"][-2:]) < sum(history["total"][:2])
    dets = D.detect(model, spec, data.images)
    assert len(dets) == 16 and all(d["boxes"].shape[0] == 100 for d in dets)  # top 100 of 84·3
