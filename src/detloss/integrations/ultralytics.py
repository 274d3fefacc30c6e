"""Train ultralytics' YOLO detection models with detloss's criterion.

One call::

    from ultralytics import YOLO
    from detloss.integrations.ultralytics import use_detloss

    model = use_detloss(YOLO("yolo26n.yaml"))
    model.train(data="data.yaml", epochs=100)

or, to also survive ultralytics' DDP re-launch (which rebuilds the trainer from its class in a new
process, where callbacks registered on the ``YOLO`` object are not re-run)::

    from detloss.integrations.ultralytics import DetlossDetectionTrainer, DetlossOBBTrainer
    YOLO("yolo11n.yaml").train(trainer=DetlossDetectionTrainer, data="data.yaml", epochs=100)
    YOLO("yolo11n-obb.yaml").train(trainer=DetlossOBBTrainer, data="dota8.yaml", epochs=100)

The model's criterion (``model.criterion``, what ``DetectionModel.loss`` calls) becomes an
:class:`UltralyticsCriterion`: YOLOv8 / YOLO11 detection heads train with
:class:`detloss.criteria.YOLOv8Loss`, their oriented-box heads (yolov8n-obb, yolo11n-obb) with
:class:`detloss.criteria.YOLOv8OBBLoss`, heads with a one-to-one branch (YOLOv10, YOLO26, YOLO26-OBB)
with :class:`detloss.criteria.EndToEndLoss` of those, in the configuration of ultralytics 8.4.190's
``E2ELoss`` (one-to-many top-10; one-to-one top-7, then top-1 per box; the progressive weights). It
returns what ultralytics' criterion returns, with the same values: the loss vector
``(box, cls, dfl | l1[, angle]) · B`` the trainer sums, and the detached items ``{"box_loss",
"cls_loss", "dfl_loss" | "l1_loss"[, "angle_loss"]}`` (gains applied, not · B; for an end-to-end head
the one-to-one branch's).

ultralytics (AGPL-3.0) is never a dependency of detloss: importing this module does not import it;
:func:`use_detloss` and the trainer classes import it when used. ``DetlossDetectionTrainer`` and
``DetlossOBBTrainer`` subclass ultralytics' ``DetectionTrainer`` and ``OBBTrainer``, so they are
created on first access (module ``__getattr__``) and are not in ``__all__``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..assign import PaddedTargets
from ..checks import check_one_of
from ..criteria import EndToEndLoss, YOLOv8Loss, YOLOv8OBBLoss
from ..criteria.result import LossResult

__all__ = ["MAX_BOXES_KEY", "UltralyticsCriterion", "batch_to_targets", "use_detloss"]

#: The batch key under which the trainer classes hand the criterion the largest number of
#: boxes in one image, counted on the host before the batch moves to the device.
MAX_BOXES_KEY = "detloss_max_boxes"

#: ultralytics' defaults (cfg/default.yaml) for a model without hyper-parameters.
_DEFAULT_HYP = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "angle": 1.0, "epochs": 100}

#: The heads trained with ultralytics' ``v8DetectionLoss`` / ``v8OBBLoss`` / ``E2ELoss`` of those.
_DETECT_HEADS = ("Detect", "v10Detect", "OBB", "OBB26")


def batch_to_targets(
    batch: Mapping[str, Any],
    image_size: tuple[int, int],
    batch_size: int,
    *,
    max_boxes: int | None = None,
    dtype: torch.dtype | None = None,
) -> PaddedTargets:
    """ultralytics' batch dict as :class:`detloss.assign.PaddedTargets` on the batch's device: xyxy
    input pixels, or xywhr (θ in radians, as given) for an oriented-box batch.

    Args:
        batch: ``{"batch_idx": (N,) image of each box, "cls": (N,) or (N, 1) class ids, "bboxes":
            (N, 4) xywh normalised to [0, 1], or (N, 5) xywhr (an OBB data set's: x, w over the width,
            y, h over the height, θ radians)}`` (the tensors of ultralytics' collate; other keys
            ignored).
        image_size: ``(H, W)`` of the input in pixels.
        batch_size: B, the number of images (an image may have no box).
        max_boxes: M, the padded width: at least the largest number of boxes in one image. Given, the
            conversion makes no host synchronisation; ``None`` counts it, one host read of a
            device batch (where ultralytics' own padding reads it too).
        dtype: the boxes' dtype (default: torch's default dtype, as ultralytics' padding).

    Each image's boxes keep their order in the batch, whatever the order of ``batch_idx``. The
    arithmetic is ultralytics': the xywh are scaled to pixels, then the corners are centre ∓ half size;
    xywhr boxes keep that form (x, w × W; y, h × H; θ untouched), as ultralytics' OBB padding.
    Nothing is dropped: the OBB criteria mask boxes below their ``min_size``.
    """
    for key in ("batch_idx", "cls", "bboxes"):
        if key not in batch:
            raise KeyError(f"batch: ultralytics' batch dict needs the key {key!r}")
    idx = batch["batch_idx"].reshape(-1).long()
    labels = batch["cls"].reshape(-1).long()
    bboxes = batch["bboxes"]
    check_one_of("batch['bboxes'] last dimension", bboxes.shape[-1] if bboxes.dim() else None, (4, 5))
    width = bboxes.shape[-1]
    xywh = bboxes.reshape(-1, width)
    n, device = idx.shape[0], xywh.device
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if max_boxes is None:
        max_boxes = int(torch.bincount(idx).max()) if n else 0
    elif max_boxes < 0:
        raise ValueError(f"max_boxes must be >= 0, got {max_boxes}")
    # rank of each box within its image: a stable sort by image keeps each image's order, and the
    # exclusive cumulative count gives each image's first row (fixed shapes: no host read)
    order = torch.sort(idx, stable=True).indices
    counts = torch.zeros(batch_size, dtype=torch.long, device=device)
    counts.scatter_add_(0, idx, torch.ones_like(idx))
    first = counts.cumsum(0) - counts
    rank = torch.empty_like(idx)
    rank[order] = torch.arange(n, device=device) - first[idx[order]]
    h, w = image_size
    pixels = xywh[:, :4].to(dtype) * torch.tensor([w, h, w, h], dtype=dtype, device=device)
    if width == 5:  # xywhr: the angle as it is
        rows = torch.cat((pixels, xywh[:, 4:].to(dtype)), 1)
    else:
        half = pixels[:, 2:] / 2
        rows = torch.cat((pixels[:, :2] - half, pixels[:, :2] + half), 1)
    boxes = torch.zeros(batch_size, max_boxes, width, dtype=dtype, device=device)
    boxes[idx, rank] = rows
    padded_labels = torch.zeros(batch_size, max_boxes, dtype=torch.long, device=device)
    padded_labels[idx, rank] = labels
    mask = torch.zeros(batch_size, max_boxes, dtype=torch.bool, device=device)
    mask[idx, rank] = True
    return PaddedTargets(boxes, padded_labels, mask)


def _detection_head(model: nn.Module) -> nn.Module:
    """The model's head (``model.model[-1]``), checked to be a detection head this module trains."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential | nn.ModuleList) or len(layers) == 0:
        raise TypeError(f"model: expected an ultralytics DetectionModel, got {type(model).__name__}")
    head = layers[-1]
    name = type(head).__name__
    if name not in _DETECT_HEADS:
        raise NotImplementedError(
            f"model: the head {name} is not supported by detloss's ultralytics integration; only "
            f"detection and oriented-box heads ({', '.join(_DETECT_HEADS)}: YOLOv8, YOLO11, YOLOv10, "
            "YOLO26 and their OBB models) are"
        )
    return head


def _is_obb(head: nn.Module) -> bool:
    """An oriented-box head (ultralytics' ``OBB`` and its YOLO26 subclass ``OBB26``)."""
    return any(c.__name__ == "OBB" for c in type(head).__mro__)


def _hyp(args: object, name: str) -> float:
    """Hyper-parameter ``name`` of ``model.args`` (a namespace, or a dict before training), else
    ultralytics' default."""
    value = args.get(name) if isinstance(args, Mapping) else getattr(args, name, None)
    return _DEFAULT_HYP[name] if value is None else value


class UltralyticsCriterion:
    """detloss's criterion behind ultralytics' criterion interface (what ``DetectionModel.loss`` calls).

    It reads the head (classes, ``reg_max``, strides, whether it has a one-to-one branch, whether it
    is an oriented-box head) when built and the gains ``box``, ``cls``, ``dfl`` (the L1 gain when
    ``reg_max = 1``), ``angle`` (OBB) and ``epochs`` from ``model.args`` at each call, as
    ultralytics' criterion reads its hyper-parameters; the detloss criterion is rebuilt only when they
    change. Not an ``nn.Module``, so it stays out of the model's
    ``state_dict`` (ultralytics strips it from checkpoints).

    The end-to-end weights follow ultralytics' schedule: :attr:`updates` counts the finished epochs
    (ultralytics' trainer calls :meth:`update` at each epoch's end; on resume it sets ``updates`` to
    ``start_epoch − 1`` and calls :meth:`update`), and during a call the weights are those of epoch
    ``updates`` (:func:`detloss.criteria.end_to_end.e2e_weights`).

    Args:
        model: an ultralytics ``DetectionModel`` or ``OBBModel`` (``model.model[-1]`` a ``Detect``,
            ``v10Detect``, ``OBB`` or ``OBB26`` head); held, to read its ``args``.

    Call:
        preds: the head's training output (``{"boxes", "scores", "feats"}``, or ``{"one2many": …,
            "one2one": …}``), or the ``(inference, training output)`` pair of an evaluating model.
        batch: ultralytics' batch dict (:func:`batch_to_targets`; xywhr ``bboxes`` for OBB); with
            :data:`MAX_BOXES_KEY` the padding needs no host read.

    Returns:
        ``(loss, items)``: the loss vector (box, cls, dfl | l1) · B, ``(3,)``, or with ``angle``,
        ``(4,)`` for OBB, in torch's default dtype (end-to-end: w_o2m · one2many's + w_o2o ·
        one2one's), and the detached components ``{"box_loss", "cls_loss", "dfl_loss" | "l1_loss"}``
        (and ``"angle_loss"``; gains applied, not · B; end-to-end: the one-to-one branch's).
    """

    def __init__(self, model: nn.Module) -> None:
        head = _detection_head(model)
        self.model = model
        self.num_classes = int(head.nc)
        self.reg_max = int(head.reg_max)
        self.strides = tuple(int(s) for s in torch.as_tensor(head.stride).tolist())
        self.end_to_end = getattr(head, "one2one_cv2", None) is not None
        self.obb = _is_obb(head)
        self.regression = "dfl" if self.reg_max > 1 else "l1"
        #: the components in ultralytics' order (its loss vector's), and the items' names
        self.terms = ("box", "cls", self.regression) + (("angle",) if self.obb else ())
        self.loss_names = tuple(f"{k}_loss" for k in self.terms)
        #: finished epochs: the end-to-end weights are those of epoch ``updates``
        self.updates = 0
        self._built: tuple[tuple[float, ...], YOLOv8Loss | EndToEndLoss] | None = None

    def update(self) -> None:
        """One more epoch finished (ultralytics' trainer calls it at each epoch's end)."""
        self.updates += 1

    def weights(self) -> tuple[float, float]:
        """``(w_o2m, w_o2o)`` of the current epoch (1, 0 without a one-to-one branch)."""
        crit = self.criterion()
        if isinstance(crit, EndToEndLoss):
            return crit.weights(self.updates)  # type: ignore[return-value]
        return 1.0, 0.0

    def criterion(self) -> YOLOv8Loss | EndToEndLoss:
        """The detloss criterion for the model's current hyper-parameters."""
        args = getattr(self.model, "args", None)
        key = tuple(float(_hyp(args, k)) for k in ("box", "cls", "dfl", "angle")) + (
            int(_hyp(args, "epochs")),
        )
        if self._built is None or self._built[0] != key:
            self._built = key, self._build(*key)
        return self._built[1]

    def _build(
        self, box: float, cls: float, dfl: float, angle: float, epochs: int
    ) -> YOLOv8Loss | EndToEndLoss:
        gains = {"box": box, "cls": cls, self.regression: dfl}
        # ultralytics' v8OBBLoss: the angle term, and boxes below 2 px dropped (YOLOv8OBBLoss's min_size)
        kind, extra = (YOLOv8OBBLoss, {"angle": angle}) if self.obb else (YOLOv8Loss, {})

        def branch(**assign: int) -> YOLOv8Loss:
            # the batch is converted here, checked by ultralytics' loader: no target validation
            return kind(
                self.num_classes, self.strides, self.reg_max, validate=False, **gains, **extra, **assign
            )

        if not self.end_to_end:
            return branch(topk=10)
        return EndToEndLoss(branch(topk=10), branch(topk=7, topk2=1), epochs=epochs)

    def __call__(self, preds: Any, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(preds, tuple):  # an evaluating model returns (inference, training output)
            preds = preds[1]
        crit = self.criterion()
        first = preds["one2many"] if self.end_to_end else preds
        boxes, feats = first["boxes"], first["feats"]
        b = boxes.shape[0]
        h, w = feats[0].shape[2:]
        targets = batch_to_targets(
            batch, (h * self.strides[0], w * self.strides[0]), b, max_boxes=batch.get(MAX_BOXES_KEY)
        )
        if isinstance(crit, EndToEndLoss):
            out = crit(preds, targets, epoch=self.updates)
            w_m, w_o = crit.weights(self.updates)
            logged = out.branches["one2one"]
            loss = self._vector(out.branches["one2many"], b) * w_m + self._vector(logged, b) * w_o
        else:
            logged = crit(preds, targets)
            loss = self._vector(logged, b)
        dtype = torch.get_default_dtype()
        items = (logged.components[k].detach().to(dtype) for k in self.terms)
        return loss, dict(zip(self.loss_names, items, strict=True))

    def _vector(self, out: LossResult, batch_size: int) -> Tensor:
        """``(box, cls, dfl | l1[, angle]) · B`` in torch's default dtype, as ultralytics allocates its
        vector."""
        c = out.components
        parts = torch.stack([c[k] for k in self.terms])
        return parts.to(torch.get_default_dtype()) * batch_size


def _install(model: nn.Module) -> UltralyticsCriterion:
    """Set ``model.criterion`` to an :class:`UltralyticsCriterion` (keeping one already there)."""
    current = getattr(model, "criterion", None)
    if isinstance(current, UltralyticsCriterion) and current.model is model:
        return current
    model.criterion = UltralyticsCriterion(model)
    return model.criterion


def _install_on_trainer(trainer: Any) -> None:
    """Give the trainer's model and its EMA (whose criterion gives the validation losses) detloss's
    criterion, its epoch count caught up as ultralytics resumes its own criterion."""
    from ultralytics.utils.torch_utils import unwrap_model

    ema = getattr(trainer, "ema", None)
    models = [unwrap_model(trainer.model)] + ([ema.ema] if ema is not None else [])
    start = int(getattr(trainer, "start_epoch", 0))
    for model in models:
        crit = _install(model)
        if start > 0:
            crit.updates = start - 1
            crit.update()


def _on_pretrain_routine_end(trainer: Any) -> None:
    """ultralytics callback: after the trainer built (or resumed) its model and EMA."""
    _install_on_trainer(trainer)


def _is_ultralytics(obj: object) -> bool:
    return any(c.__module__.partition(".")[0] == "ultralytics" for c in type(obj).__mro__)


def use_detloss(model: Any) -> Any:
    """Make an ultralytics YOLO detection or oriented-box model train with detloss's criterion;
    returns ``model``.

    Args:
        model: a ``YOLO`` object (``ultralytics.YOLO``), or its ``DetectionModel`` / ``OBBModel``. The
            head picks the criterion: ``Detect`` (YOLOv8, YOLO11) → :class:`detloss.criteria.YOLOv8Loss`;
            ``OBB`` (yolov8n-obb, yolo11n-obb) → :class:`detloss.criteria.YOLOv8OBBLoss` (the model's
            ``box``, ``cls``, ``dfl``, ``angle``); a head with a one-to-one branch (YOLOv10, YOLO26,
            YOLO26-OBB) → :class:`detloss.criteria.EndToEndLoss` of those (ultralytics 8.4.190's
            configuration).

    On a ``DetectionModel`` it sets ``model.criterion`` (:class:`UltralyticsCriterion`), so
    ``model.loss(batch)`` is detloss's. On a ``YOLO`` object it does that for ``model.model`` and
    registers an ``on_pretrain_routine_end`` callback, because ``YOLO.train`` trains a model its trainer
    builds: the callback installs the criterion on the trainer's model and on its EMA (the validation
    losses), with the epoch count of a resumed run. Under DDP use ``DetlossDetectionTrainer``
    (``DetlossOBBTrainer`` for oriented boxes).

    Raises:
        TypeError: ``model`` is not an ultralytics ``YOLO`` object or detection model.
        NotImplementedError: a segmentation, pose or other model that is neither detection nor OBB.
    """
    if not _is_ultralytics(model):
        raise TypeError(
            "model: use_detloss expects an ultralytics YOLO object or DetectionModel, "
            f"got {type(model).__module__}.{type(model).__name__}"
        )
    from ultralytics.engine.model import Model

    if isinstance(model, Model):
        inner = model.model
        if not isinstance(inner, nn.Module):
            raise TypeError(f"model.model: expected a loaded DetectionModel, got {type(inner).__name__}")
        _install(inner)
        hooks = model.callbacks.setdefault("on_pretrain_routine_end", [])
        if _on_pretrain_routine_end not in hooks:
            hooks.append(_on_pretrain_routine_end)
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a YOLO object or DetectionModel, got {type(model).__name__}")
    _install(model)
    return model


def _max_boxes(batch_idx: Tensor) -> int:
    """The largest number of boxes in one image (a CPU tensor: no device read)."""
    return int(torch.bincount(batch_idx.reshape(-1).long()).max()) if batch_idx.numel() else 0


#: detloss's trainer classes: name → (ultralytics module, the trainer it subclasses)
_TRAINERS = {
    "DetlossDetectionTrainer": ("ultralytics.models.yolo.detect", "DetectionTrainer"),
    "DetlossOBBTrainer": ("ultralytics.models.yolo.obb", "OBBTrainer"),
}


@functools.cache
def _trainer_class(name: str) -> type:
    """``DetlossDetectionTrainer`` or ``DetlossOBBTrainer``, created once (each subclasses an
    ultralytics trainer)."""
    module, base_name = _TRAINERS[name]
    try:
        base = getattr(importlib.import_module(module), base_name)
    except ImportError as e:
        raise ImportError(f"{name} subclasses ultralytics' {base_name}: pip install ultralytics") from e

    class Trainer(base):
        """ultralytics' trainer (``DetectionTrainer`` or, for oriented boxes, ``OBBTrainer``) training
        with detloss's criterion.

        ``get_model`` installs :class:`UltralyticsCriterion` on the model it builds (so the model
        ultralytics pickles for its DDP workers carries it, and a model rebuilt from a checkpoint gets
        it); ``resume_training`` re-installs it where ultralytics rebuilt its own end-to-end criterion,
        with the resumed epoch count, and on the EMA; ``preprocess_batch`` counts the largest number of
        boxes per image on the host (:data:`MAX_BOXES_KEY`), so the padding needs no device read.
        """

        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
            model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
            _install(model)
            return model

        def preprocess_batch(self, batch: dict) -> dict:
            idx = batch.get("batch_idx")
            if isinstance(idx, Tensor) and idx.device.type == "cpu":  # before the move to the device
                batch[MAX_BOXES_KEY] = _max_boxes(idx)
            return super().preprocess_batch(batch)

        def resume_training(self, ckpt: Any) -> None:
            super().resume_training(ckpt)
            _install_on_trainer(self)

    # found by module path and name: ultralytics' DDP launch and pickling import it back from here
    Trainer.__module__ = __name__
    Trainer.__name__ = Trainer.__qualname__ = name
    return Trainer


def __getattr__(name: str) -> Any:
    if name in _TRAINERS:
        return _trainer_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
