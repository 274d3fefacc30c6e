"""detloss.integrations.ultralytics without ultralytics: the module imports no framework, the batch
conversion, the adapter's values and its epoch schedule (ultralytics 8.4.190's ``E2ELoss.update`` and
its trainer's resume: ``updates = start_epoch − 1``, then ``update()``), on hand-made models."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from detloss.criteria import EndToEndLoss, YOLOv8Loss, YOLOv8OBBLoss
from detloss.integrations.ultralytics import (
    MAX_BOXES_KEY,
    UltralyticsCriterion,
    batch_to_targets,
    use_detloss,
)

STRIDES = (8, 16, 32)


class Detect(nn.Module):
    """Stands for ultralytics' head: what the adapter reads from it (by its class name)."""

    def __init__(self, nc: int = 3, reg_max: int = 16, end_to_end: bool = False) -> None:
        super().__init__()
        self.nc, self.reg_max = nc, reg_max
        self.stride = torch.tensor(STRIDES, dtype=torch.float32)
        self.one2one_cv2 = nn.Identity() if end_to_end else None


class OBB(Detect):
    pass


class OBB26(OBB):
    pass


class Segment(Detect):
    pass


class FakeModel(nn.Module):
    def __init__(self, head: nn.Module, args: object = None) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), head)
        if args is not None:
            self.args = args


def hyp() -> SimpleNamespace:
    """ultralytics' default gains, a 10-epoch schedule."""
    return SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, epochs=10)


def ultralytics_batch() -> dict:
    """Three images of 64 × 96 (H × W): image 0 two boxes, image 1 none, image 2 three; the rows of
    batch_idx not sorted."""
    return {
        "batch_idx": torch.tensor([2.0, 0.0, 2.0, 0.0, 2.0]),
        "cls": torch.tensor([[1.0], [0.0], [2.0], [2.0], [0.0]]),
        "bboxes": torch.tensor(
            [
                [0.5, 0.5, 0.25, 0.5],
                [0.25, 0.25, 0.125, 0.25],
                [0.75, 0.5, 0.5, 0.25],
                [0.5, 0.75, 0.25, 0.125],
                [0.125, 0.125, 0.0625, 0.125],
            ]
        ),
    }


def test_import_does_not_import_ultralytics():
    code = (
        "import sys, detloss.integrations.ultralytics as m; "
        "assert 'ultralytics' not in sys.modules, 'ultralytics imported'; "
        "assert 'DetlossDetectionTrainer' not in m.__all__"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("obj", [nn.Linear(2, 2), object(), "yolov8n.yaml"])
def test_use_detloss_rejects_other_objects(obj):
    with pytest.raises(TypeError, match="model: use_detloss expects an ultralytics YOLO object"):
        use_detloss(obj)


def test_trainer_attribute():
    from detloss.integrations import ultralytics as mod

    with pytest.raises(AttributeError, match="no attribute 'NoSuchTrainer'"):
        mod.NoSuchTrainer  # noqa: B018
    if importlib.util.find_spec("ultralytics") is None:
        with pytest.raises(ImportError, match="pip install ultralytics"):
            mod.DetlossDetectionTrainer  # noqa: B018


def test_batch_to_targets_by_hand():
    out = batch_to_targets(ultralytics_batch(), (64, 96), 3)
    # M = 3 (image 2); each image's boxes in their batch order; xywh · (96, 64, 96, 64), corners centre ∓ half
    expected_boxes = torch.zeros(3, 3, 4)
    expected_boxes[0, 0] = torch.tensor([18.0, 8.0, 30.0, 24.0])
    expected_boxes[0, 1] = torch.tensor([36.0, 44.0, 60.0, 52.0])
    expected_boxes[2, 0] = torch.tensor([36.0, 16.0, 60.0, 48.0])
    expected_boxes[2, 1] = torch.tensor([48.0, 24.0, 96.0, 40.0])
    expected_boxes[2, 2] = torch.tensor([9.0, 4.0, 15.0, 12.0])
    torch.testing.assert_close(out.boxes, expected_boxes, rtol=0, atol=0)
    assert out.labels.tolist() == [[0, 2, 0], [0, 0, 0], [1, 2, 0]]
    assert out.mask.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert out.labels.dtype == torch.int64 and out.boxes.dtype == torch.float32


def test_batch_to_targets_wider_padding_and_empty_batch():
    wide = batch_to_targets(ultralytics_batch(), (64, 96), 4, max_boxes=5, dtype=torch.float64)
    tight = batch_to_targets(ultralytics_batch(), (64, 96), 3)
    assert wide.boxes.shape == (4, 5, 4) and wide.boxes.dtype == torch.float64
    torch.testing.assert_close(wide.boxes[:3, :3], tight.boxes.double(), rtol=0, atol=0)
    assert not wide.mask[:, 3:].any() and not wide.mask[3].any()
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
    out = batch_to_targets(empty, (64, 64), 2)
    assert out.boxes.shape == (2, 0, 4) and out.mask.shape == (2, 0)


def test_batch_to_targets_errors():
    with pytest.raises(KeyError, match="'bboxes'"):
        batch_to_targets({"batch_idx": torch.zeros(1), "cls": torch.zeros(1)}, (64, 64), 1)
    with pytest.raises(ValueError, match="max_boxes must be >= 0"):
        batch_to_targets(ultralytics_batch(), (64, 96), 3, max_boxes=-1)


def test_heads_the_adapter_refuses():
    with pytest.raises(NotImplementedError, match="the head Segment is not supported"):
        UltralyticsCriterion(FakeModel(Segment()))
    with pytest.raises(TypeError, match="expected an ultralytics DetectionModel"):
        UltralyticsCriterion(nn.Linear(2, 2))


def heads_mapping(b, nc, reg_max, size, g):
    """The mapping ultralytics' head hands its loss, ``{"boxes", "scores", "feats"}``."""
    feats = [torch.randn(b, 4 * reg_max + nc, size // s, size // s, generator=g) for s in STRIDES]
    if reg_max == 1:
        for f in feats:
            f[:, :4] = 0.3 + 3 * torch.rand(f[:, :4].shape, generator=g)
    boxes = torch.cat([f[:, : 4 * reg_max].flatten(2) for f in feats], 2).requires_grad_()
    scores = torch.cat([f[:, 4 * reg_max :].flatten(2) for f in feats], 2).requires_grad_()
    return {"boxes": boxes, "scores": scores, "feats": feats}


def test_detect_values_are_yolov8loss():
    g = torch.Generator().manual_seed(0)
    args = SimpleNamespace(box=5.0, cls=0.25, dfl=2.0, epochs=3)
    crit = UltralyticsCriterion(FakeModel(Detect(nc=3, reg_max=16), args))
    preds = heads_mapping(3, 3, 16, 96, g)
    batch = ultralytics_batch()
    loss, items = crit(preds, batch)
    ref = YOLOv8Loss(3, STRIDES, 16, box=5.0, cls=0.25, dfl=2.0)(preds, batch_to_targets(batch, (96, 96), 3))
    c = ref.components
    torch.testing.assert_close(loss, torch.stack((c["box"], c["cls"], c["dfl"])) * 3)
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss"]
    torch.testing.assert_close(torch.stack(list(items.values())), torch.stack((c["box"], c["cls"], c["dfl"])))
    assert not any(v.requires_grad for v in items.values())
    # the evaluating model's (inference, training output) pair, and the host-counted M: same values
    batch[MAX_BOXES_KEY] = 4
    loss2, _ = crit((None, preds), batch)
    torch.testing.assert_close(loss2, loss)


def test_hyperparameters_from_dict_namespace_or_defaults():
    head = Detect(nc=2, reg_max=1, end_to_end=True)
    for args, expected in (
        ({"box": 1.0, "cls": 2.0, "dfl": 3.0, "epochs": 7}, (1.0, 2.0, 3.0, 7)),
        (SimpleNamespace(box=4.0, cls=None, dfl=0.5, epochs=9), (4.0, 0.5, 0.5, 9)),
        (None, (7.5, 0.5, 1.5, 100)),
    ):
        crit = UltralyticsCriterion(FakeModel(head, args)).criterion()
        assert isinstance(crit, EndToEndLoss) and crit.epochs == expected[3]
        gains = crit.one2one.gains
        assert (gains["box"], gains["cls"], gains["l1"]) == expected[:3]
        assert (crit.one2many.topk, crit.one2one.topk, crit.one2one.topk2) == (10, 7, 1)


def test_criterion_rebuilt_when_hyperparameters_change():
    model = FakeModel(Detect(), hyp())
    crit = UltralyticsCriterion(model)
    first = crit.criterion()
    assert crit.criterion() is first
    model.args = SimpleNamespace(box=7.5, cls=1.0, dfl=1.5, epochs=10)  # the trainer replaces args
    assert crit.criterion() is not first and crit.criterion().gains["cls"] == 1.0


def test_epoch_schedule_update_and_resume_by_hand():
    """E = 10: w_o2m(e) = 0.1 + 0.7·max(1 − e/9, 0), w_o2o = 1 − w_o2m."""
    model = FakeModel(Detect(nc=3, reg_max=1, end_to_end=True), hyp())
    crit = UltralyticsCriterion(model)
    assert crit.updates == 0
    w_m, w_o = crit.weights()
    assert w_m == pytest.approx(0.8, abs=1e-15) and w_o == pytest.approx(0.2, abs=1e-15)
    for _ in range(3):  # three epochs' ends
        crit.update()
    assert crit.updates == 3
    assert crit.weights() == pytest.approx((0.1 + 0.7 * 6 / 9, 0.9 - 0.7 * 6 / 9), abs=1e-15)
    resumed = UltralyticsCriterion(model)  # resume at start_epoch 5, as ultralytics' trainer does
    resumed.updates = 5 - 1
    resumed.update()
    assert resumed.updates == 5
    assert resumed.weights() == pytest.approx((0.1 + 0.7 * 4 / 9, 0.9 - 0.7 * 4 / 9), abs=1e-15)
    for _ in range(20):  # past the last epoch the one-to-many weight stays at 0.1
        resumed.update()
    assert resumed.weights() == pytest.approx((0.1, 0.9), abs=1e-15)
    assert UltralyticsCriterion(FakeModel(Detect())).weights() == (1.0, 0.0)


def test_end_to_end_vector_and_items_by_hand():
    g = torch.Generator().manual_seed(1)
    model = FakeModel(Detect(nc=3, reg_max=1, end_to_end=True), hyp())
    crit = UltralyticsCriterion(model)
    crit.updates = 3
    preds = {"one2many": heads_mapping(3, 3, 1, 96, g), "one2one": heads_mapping(3, 3, 1, 96, g)}
    batch = ultralytics_batch()
    loss, items = crit(preds, batch)
    targets = batch_to_targets(batch, (96, 96), 3)
    w_m = 0.1 + 0.7 * (1 - 3 / 9)
    vec = {}
    for name, topk, topk2 in (("one2many", 10, None), ("one2one", 7, 1)):
        c = YOLOv8Loss(3, STRIDES, 1, topk=topk, topk2=topk2)(preds[name], targets).components
        vec[name] = torch.stack((c["box"], c["cls"], c["l1"]))
    torch.testing.assert_close(loss, vec["one2many"] * 3 * w_m + vec["one2one"] * 3 * (1 - w_m))
    assert list(items) == ["box_loss", "cls_loss", "l1_loss"]
    torch.testing.assert_close(torch.stack(list(items.values())), vec["one2one"])  # unweighted, not × B
    loss.sum().backward()
    assert preds["one2one"]["boxes"].grad is not None and preds["one2many"]["scores"].grad is not None


def test_adapter_is_not_a_module_and_copies_with_its_model():
    import copy

    model = FakeModel(Detect(), hyp())
    model.criterion = UltralyticsCriterion(model)
    assert not any("criterion" in k for k in model.state_dict())
    clone = copy.deepcopy(model)  # ultralytics' EMA is a deep copy of the model
    assert clone.criterion is not model.criterion and clone.criterion.model is clone


# ----------------------------------------------------------------------------------------------
# Oriented boxes (ultralytics' OBB / OBB26 heads, v8OBBLoss and E2ELoss(v8OBBLoss))
# ----------------------------------------------------------------------------------------------


def obb_batch() -> dict:
    """ultralytics' OBB batch: normalised xywhr (x, w over W = 96; y, h over H = 64; θ radians) for
    three images, image 1 empty, the rows of batch_idx not sorted; the last box is 1.5 px high."""
    return {
        "batch_idx": torch.tensor([2.0, 0.0, 2.0, 0.0]),
        "cls": torch.tensor([[1.0], [0.0], [2.0], [2.0]]),
        "bboxes": torch.tensor(
            [
                [0.5, 0.5, 0.25, 0.5, 0.3],
                [0.25, 0.25, 0.125, 0.25, -0.5],
                [0.75, 0.5, 0.5, 0.25, 2.0],
                [0.5, 0.75, 0.25, 1.5 / 64, 0.0],
            ]
        ),
    }


def test_batch_to_targets_xywhr_by_hand():
    out = batch_to_targets(obb_batch(), (64, 96), 3)
    expected = torch.zeros(3, 2, 5)
    expected[0, 0] = torch.tensor([24.0, 16.0, 12.0, 16.0, -0.5])
    expected[0, 1] = torch.tensor([48.0, 48.0, 24.0, 1.5, 0.0])  # kept: the criterion masks it
    expected[2, 0] = torch.tensor([48.0, 32.0, 24.0, 32.0, 0.3])
    expected[2, 1] = torch.tensor([72.0, 32.0, 48.0, 16.0, 2.0])
    torch.testing.assert_close(out.boxes, expected, rtol=0, atol=0)
    assert out.labels.tolist() == [[0, 2], [0, 0], [1, 2]]
    assert out.mask.tolist() == [[True, True], [False, False], [True, True]]
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 5)}
    assert batch_to_targets(empty, (64, 64), 2, dtype=torch.float64).boxes.shape == (2, 0, 5)
    with pytest.raises(ValueError, match="last dimension"):
        batch_to_targets({**obb_batch(), "bboxes": torch.zeros(4, 6)}, (64, 96), 3)


def obb_mapping(b, nc, reg_max, size, g, raw=False):
    """The mapping ultralytics' OBB head hands its loss, ``{"boxes", "scores", "angle", "feats"}``."""
    out = heads_mapping(b, nc, reg_max, size, g)
    z = torch.randn(b, 1, out["boxes"].shape[-1], generator=g)
    out["angle"] = (z if raw else (z.sigmoid() - 0.25) * torch.pi).requires_grad_()
    return out


def test_obb_values_are_yolov8obbloss():
    g = torch.Generator().manual_seed(2)
    args = SimpleNamespace(box=5.0, cls=0.25, dfl=2.0, angle=0.5, epochs=3)
    crit = UltralyticsCriterion(FakeModel(OBB(nc=3, reg_max=16), args))
    assert crit.obb and not crit.end_to_end
    built = crit.criterion()
    assert isinstance(built, YOLOv8OBBLoss) and built.gains["angle"] == 0.5 and built.min_size == 2.0
    preds, batch = obb_mapping(3, 3, 16, 96, g), obb_batch()
    loss, items = crit(preds, batch)
    targets = batch_to_targets(batch, (96, 96), 3)
    c = YOLOv8OBBLoss(3, STRIDES, 16, box=5.0, cls=0.25, dfl=2.0, angle=0.5)(preds, targets).components
    vec = torch.stack((c["box"], c["cls"], c["dfl"], c["angle"]))
    assert loss.shape == (4,)
    torch.testing.assert_close(loss, vec * 3)
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss", "angle_loss"]
    torch.testing.assert_close(torch.stack(list(items.values())), vec)


def test_obb26_end_to_end_vector_and_items():
    g = torch.Generator().manual_seed(3)
    crit = UltralyticsCriterion(FakeModel(OBB26(nc=3, reg_max=1, end_to_end=True), hyp()))
    crit.updates = 4
    built = crit.criterion()
    assert isinstance(built, EndToEndLoss) and isinstance(built.one2one, YOLOv8OBBLoss)
    assert built.one2one.gains == {"box": 7.5, "cls": 0.5, "l1": 1.5, "angle": 1.0}  # defaults
    preds = {"one2many": obb_mapping(3, 3, 1, 96, g, True), "one2one": obb_mapping(3, 3, 1, 96, g, True)}
    loss, items = crit(preds, obb_batch())
    targets = batch_to_targets(obb_batch(), (96, 96), 3)
    w_m = 0.1 + 0.7 * (1 - 4 / 9)
    vec = {}
    for name, topk, topk2 in (("one2many", 10, None), ("one2one", 7, 1)):
        c = YOLOv8OBBLoss(3, STRIDES, 1, topk=topk, topk2=topk2)(preds[name], targets).components
        vec[name] = torch.stack((c["box"], c["cls"], c["l1"], c["angle"]))
    torch.testing.assert_close(loss, vec["one2many"] * 3 * w_m + vec["one2one"] * 3 * (1 - w_m))
    assert list(items) == ["box_loss", "cls_loss", "l1_loss", "angle_loss"]
    torch.testing.assert_close(torch.stack(list(items.values())), vec["one2one"])
