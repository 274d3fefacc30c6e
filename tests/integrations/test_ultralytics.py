"""detloss.integrations.ultralytics with ultralytics itself (skipped where it is not installed, as in
CI): the same loss vector, items and gradients as ultralytics' own criterion on models built from its
yaml files (no weights), and how the criterion is installed on a ``YOLO`` object and a trainer."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no version check, no downloads
ultralytics = pytest.importorskip("ultralytics")

from detloss.integrations.ultralytics import (  # noqa: E402
    DetlossDetectionTrainer,
    DetlossOBBTrainer,
    UltralyticsCriterion,
    use_detloss,
)


def build(name: str):
    model = ultralytics.YOLO(f"{name}.yaml", verbose=False)
    model.model.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, epochs=10)
    return model


def batch(size: int = 64) -> dict:
    return {
        "img": torch.rand(2, 3, size, size),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[3.0], [7.0], [1.0]]),
        "bboxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.6, 0.5, 0.4, 0.4], [0.5, 0.5, 0.8, 0.7]]),
    }


@pytest.mark.parametrize(("name", "epoch"), [("yolov8n", 0), ("yolov10n", 3), ("yolo26n", 0), ("yolo26n", 4)])
def test_same_values_and_gradients_as_ultralytics(name, epoch):
    torch.set_default_dtype(torch.float64)
    try:
        model = build(name).model.double().train()
        b = batch()
        theirs, ours = model.init_criterion(), UltralyticsCriterion(model)
        for _ in range(epoch):
            if hasattr(theirs, "update"):
                theirs.update()
            ours.update()
        preds = model(b["img"])
        loss_t, items_t = theirs(preds, b)
        loss_o, items_o = ours(preds, b)
        torch.testing.assert_close(loss_o, loss_t, rtol=1e-6, atol=1e-9)
        assert list(items_o) == list(items_t)
        for k in items_t:
            torch.testing.assert_close(items_o[k], items_t[k], rtol=1e-6, atol=1e-9)
        params = [p for p in model.parameters() if p.requires_grad]
        g_t = torch.autograd.grad(loss_t.sum(), params, retain_graph=True, allow_unused=True)
        g_o = torch.autograd.grad(loss_o.sum(), params, allow_unused=True)
        scale = max(g.abs().max().item() for g in g_t if g is not None)
        for t, o in zip(g_t, g_o, strict=True):
            assert (t is None) == (o is None)
            if t is not None:
                torch.testing.assert_close(o, t, rtol=1e-5, atol=1e-6 * scale)
    finally:
        torch.set_default_dtype(torch.float32)


def test_use_detloss_on_yolo_object_and_model():
    yolo = build("yolo26n")
    assert use_detloss(yolo) is yolo
    assert isinstance(yolo.model.criterion, UltralyticsCriterion) and yolo.model.criterion.end_to_end
    hooks = yolo.callbacks["on_pretrain_routine_end"]
    use_detloss(yolo)  # twice: one callback
    assert sum(getattr(h, "__name__", "") == "_on_pretrain_routine_end" for h in hooks) == 1
    model = build("yolov8n").model
    assert use_detloss(model) is model and not model.criterion.end_to_end
    loss, items = model.train().loss(batch())
    assert loss.shape == (3,) and list(items) == ["box_loss", "cls_loss", "dfl_loss"]


def test_obb_models_taken_segment_refused():
    crit = use_detloss(ultralytics.YOLO("yolo26n-obb.yaml", verbose=False)).model.criterion
    assert isinstance(crit, UltralyticsCriterion) and crit.obb and crit.end_to_end
    crit = use_detloss(ultralytics.YOLO("yolo11n-obb.yaml", verbose=False).model).criterion
    assert crit.obb and not crit.end_to_end and crit.loss_names[-1] == "angle_loss"
    with pytest.raises(NotImplementedError, match="Segment"):
        use_detloss(ultralytics.YOLO("yolov8n-seg.yaml", verbose=False).model)


def test_trainer_classes_pickle_by_reference():
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.models.yolo.obb import OBBTrainer

    for cls, base in ((DetlossDetectionTrainer, DetectionTrainer), (DetlossOBBTrainer, OBBTrainer)):
        assert issubclass(cls, base) and cls is not base
        assert cls.__module__ == "detloss.integrations.ultralytics"
        assert pickle.loads(pickle.dumps(cls)) is cls
    assert not issubclass(DetlossDetectionTrainer, OBBTrainer)


@pytest.mark.parametrize(
    ("trainer", "cfg", "obb"),
    [
        (DetlossDetectionTrainer, "yolo11n.yaml", False),
        (DetlossOBBTrainer, "yolo11n-obb.yaml", True),
        (DetlossOBBTrainer, "yolo26n-obb.yaml", True),
    ],
)
def test_trainer_get_model_installs_the_criterion(trainer, cfg, obb):
    """The model a trainer class builds (what ultralytics pickles for its DDP workers) carries
    detloss's criterion, of the model's kind; the OBB trainer builds ultralytics' OBBModel."""
    self = trainer.__new__(trainer)  # get_model reads only the dataset's fields and args
    self.data, self.args = {"nc": 5, "channels": 3, "names": {i: str(i) for i in range(5)}}, SimpleNamespace()
    model = self.get_model(cfg=cfg, verbose=False)
    assert isinstance(model.criterion, UltralyticsCriterion) and model.criterion.model is model
    assert model.criterion.obb is obb and type(model).__name__ == ("OBBModel" if obb else "DetectionModel")


def test_installed_on_trainer_model_and_ema_with_resumed_epoch():
    from detloss.integrations.ultralytics import _on_pretrain_routine_end

    model = build("yolo26n").model
    ema = build("yolo26n").model
    trainer = SimpleNamespace(model=model, ema=SimpleNamespace(ema=ema), start_epoch=6)
    _on_pretrain_routine_end(trainer)
    for m in (model, ema):
        assert isinstance(m.criterion, UltralyticsCriterion) and m.criterion.model is m
        assert m.criterion.updates == 6
    w_m, w_o = model.criterion.weights()
    assert w_m == pytest.approx(0.1 + 0.7 * (1 - 6 / 9)) and w_o == pytest.approx(1 - w_m)
