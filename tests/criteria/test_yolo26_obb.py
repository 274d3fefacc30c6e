"""YOLO26-OBB: :class:`EndToEndLoss` with :class:`YOLOv8OBBLoss` branches (ultralytics 8.4.190's
``E2ELoss(model, v8OBBLoss)``), against the OBB loop port of tests/reference/yolov8_obb.py run once per
branch (one-to-many top-10; one-to-one top-7 then topk2 = 1) and weighted by the schedule computed by
hand; per-image shares; the one-graph rules."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.assign import pad_targets
from detloss.criteria import EndToEndLoss, YOLOv8Loss, YOLOv8OBBLoss, yolo26_loss
from detloss.profiling import DispatchCounter
from tests.criteria.test_yolov8_obb import make_case
from tests.reference.yolov8_obb import naive_obb_loss

D = torch.float64
STRIDES = (8, 16, 32)


def raw_angle_case(seed, **kw):
    """Heads with YOLO26's raw angle (any real, beyond ±π/2 too) and positive L1 distances."""
    preds, targets = make_case(reg_max=1, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 1000)
    out = []
    for p in preds:
        q = p.detach().clone()
        q[:, -1] = 2.5 * torch.randn(q[:, -1].shape, generator=g, dtype=D)
        out.append(q.requires_grad_())
    return out, targets


def test_yolo26_obb_configuration():
    crit = yolo26_loss(4, task="obb", epochs=30)
    m, o = crit.one2many, crit.one2one
    assert isinstance(m, YOLOv8OBBLoss) and isinstance(o, YOLOv8OBBLoss)
    assert (m.reg_max, m.topk, m.topk2, o.topk, o.topk2) == (1, 10, None, 7, 1)
    assert m.regression == "l1" and m.gains == {"box": 7.5, "cls": 0.5, "l1": 1.5, "angle": 1.0}
    assert (m.min_size, m.min_side, crit.epochs) == (2.0, 16.0, 30)
    with pytest.raises(ValueError, match="task"):
        yolo26_loss(4, task="segment")
    with pytest.raises(TypeError, match="one2one"):
        EndToEndLoss(YOLOv8OBBLoss(4, reg_max=1), YOLOv8Loss(4, reg_max=1))


@pytest.mark.parametrize("epoch", [0, 11, 29])
def test_matches_weighted_naive_obb_branches(epoch):
    """Each branch against the loop port; the mix with w_o2m = 0.1 + 0.7·max(1 − e/29, 0)."""
    preds_m, targets = raw_angle_case(epoch, n=6, lo=3.0, hi=36.0, tiny=1)
    preds_o, _ = raw_angle_case(epoch + 50, n=6)
    crit = yolo26_loss(3, task="obb", epochs=30)
    out = crit({"one2many": preds_m, "one2one": preds_o}, targets, epoch=epoch)
    tot_m, parts_m = naive_obb_loss(preds_m, targets, 3, STRIDES, 1, topk=10)
    tot_o, parts_o = naive_obb_loss(preds_o, targets, 3, STRIDES, 1, topk=7, topk2=1)
    w_m = {0: 0.8, 11: 0.1 + 0.7 * (18 / 29), 29: 0.1}[epoch]
    w_o = 1 - w_m
    assert set(out.components) == {"box", "cls", "l1", "angle"}
    for key in parts_m:
        want = torch.as_tensor(w_m * parts_m[key] + w_o * parts_o[key], dtype=D)
        torch.testing.assert_close(out.components[key], want, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(
            out.branches["one2one"].components[key], torch.as_tensor(parts_o[key], dtype=D), rtol=1e-9, atol=0
        )
    assert float(parts_o["angle"]) > 0 and float(parts_m["l1"]) > 0
    total = w_m * tot_m + w_o * tot_o
    torch.testing.assert_close(out.total, total, rtol=1e-9, atol=0)
    leaves = preds_m + preds_o
    for a, b in zip(torch.autograd.grad(out.total, leaves), torch.autograd.grad(total, leaves), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_one2one_keeps_at_most_one_positive_per_box():
    """topk2 = 1: the one-to-one branch's summed target score is at most one score (< 1) per box."""
    preds, targets = raw_angle_case(7, n=5, lo=8.0, hi=40.0)
    crit = yolo26_loss(3, task="obb")
    out = crit({"one2many": preds, "one2one": preds}, targets, epoch=0)
    _, parts_1 = naive_obb_loss(preds, targets, 3, STRIDES, 1, topk=7, topk2=1)
    _, parts_7 = naive_obb_loss(preds, targets, 3, STRIDES, 1, topk=7)
    assert not math.isclose(float(parts_1["cls"]), float(parts_7["cls"]))  # topk2 changes the assignment
    torch.testing.assert_close(
        out.branches["one2one"].components["cls"], torch.as_tensor(parts_1["cls"], dtype=D), rtol=1e-9, atol=0
    )


def test_per_image_and_padded_targets_and_mapping():
    preds_m, targets = raw_angle_case(21, n=5, empty=(1,))
    preds_o, _ = raw_angle_case(22, n=5)
    crit = yolo26_loss(3, task="obb", epochs=10)
    ref = crit({"one2many": preds_m, "one2one": preds_o}, targets, epoch=3)
    torch.testing.assert_close(ref.per_image.sum(), ref.total, rtol=1e-12, atol=0)
    # each image's share is the loss of that image alone over the whole batch's normaliser: the
    # empty image's share is its class term only, below the others'
    assert ref.per_image.shape == (2,) and 0 < float(ref.per_image[1]) < float(ref.per_image[0])

    def mapping(preds):
        flat = torch.cat([p.flatten(2) for p in preds], 2)
        return {"boxes": flat[:, :4], "scores": flat[:, 4:7], "angle": flat[:, 7:], "feats": list(preds)}

    out = crit(
        {"one2many": mapping(preds_m), "one2one": mapping(preds_o)},
        pad_targets(targets, 3, dtype=D, fmt="xywhr"),
        epoch=torch.tensor(3.0),
    )
    torch.testing.assert_close(out.total, ref.total, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.per_image, ref.per_image, rtol=1e-12, atol=0)


def _bench(validate):
    preds_m, targets = raw_angle_case(41, b=4, size=128, n=6)
    preds_o, _ = raw_angle_case(42, b=4, size=128, n=6)
    preds_m = [p.detach().float().requires_grad_() for p in preds_m]
    preds_o = [p.detach().float().requires_grad_() for p in preds_o]
    targets = [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in targets]
    crit = yolo26_loss(3, task="obb", epochs=50, validate=validate)
    return crit, {"one2many": preds_m, "one2one": preds_o}, targets, preds_m + preds_o


def test_no_host_sync_without_validation():
    crit, preds, targets, leaves = _bench(False)
    padded = pad_targets(targets, 3, validate=False, fmt="xywhr")
    crit(preds, padded, epoch=0)  # warm-up: the anchor tables
    for epoch in (3, torch.tensor(3.0)):
        with DispatchCounter() as c:
            torch.autograd.grad(crit(preds, padded, epoch=epoch).total, leaves)
        assert c.syncs == 0, c.sync_ops


def test_at_most_one_sync_with_validation():
    crit, preds, targets, leaves = _bench(True)
    crit(preds, targets, epoch=0)
    with DispatchCounter() as c:
        torch.autograd.grad(crit(preds, targets, epoch=torch.tensor(7)).total, leaves)
    assert c.syncs <= 1, c.sync_ops
