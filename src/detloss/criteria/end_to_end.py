"""End-to-end YOLO (YOLOv10, YOLO26): reproduces ultralytics' ``E2ELoss`` (8.4.190, utils/loss.py).

The head has two branches on the same anchors: one-to-many (top-10 task-aligned assignment, the
YOLOv8 loss) and one-to-one (top-7, then each box keeps only its best anchor: ``topk2 = 1``), whose
predictions need no NMS. Each branch is a :class:`detloss.criteria.YOLOv8Loss`; the two totals are
mixed by weights that move from the one-to-many branch to the one-to-one branch over training. During
epoch e of E (e = 0 … E − 1)::

    w_o2m(e) = 0.1 + 0.7 · max(1 − e / max(E − 1, 1), 0)          (0.8 at e = 0, 0.1 at e = E − 1)
    w_o2o(e) = max(1 − w_o2m(e), 0)
    total    = w_o2m · total_o2m + w_o2o · total_o2o

``progressive=False`` fixes both weights at 1 (the first YOLOv10 loss, whose one-to-one branch used
top-1 and no ``topk2``). The original holds the weights in the criterion and steps them at each
epoch's end (``update()``); here the epoch is an argument of the call and the criterion is stateless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..checks import check_number, check_one_of, positive_ints
from .result import LossResult
from .targets import Targets, as_padded, batch_size
from .yolov8 import YOLOv8Loss
from .yolov8_obb import YOLOv8OBBLoss

#: the one-to-many weight at the first epoch and at the last (ultralytics' ``o2m`` and ``final_o2m``)
O2M_START, O2M_END = 0.8, 0.1


def e2e_weights(epoch: float | Tensor, epochs: int) -> tuple[float | Tensor, float | Tensor]:
    """``(w_o2m, w_o2o)`` during ``epoch`` of ``epochs`` (module docstring). A 0-dim tensor epoch
    gives 0-dim tensors (no host sync); a number gives floats."""
    span = max(epochs - 1, 1)
    if isinstance(epoch, Tensor):
        decay = (1 - epoch / span).clamp(min=0)
        w_o2m = decay * (O2M_START - O2M_END) + O2M_END
        return w_o2m, (1.0 - w_o2m).clamp(min=0)
    w_o2m = max(1 - epoch / span, 0) * (O2M_START - O2M_END) + O2M_END
    return w_o2m, max(1.0 - w_o2m, 0)


class EndToEndLoss(nn.Module):
    """The end-to-end YOLO loss (YOLOv10, YOLO26): two :class:`YOLOv8Loss` branches, weighted; or two
    :class:`YOLOv8OBBLoss` branches (YOLO26-OBB; xywhr targets, components with ``"angle"``).

    Args:
        one2many: the one-to-many branch's criterion (the original: ``topk=10``).
        one2one: the one-to-one branch's criterion (the original: ``topk=7, topk2=1``; the first
            YOLOv10 loss: ``topk=1``). Both need the same ``num_classes`` and ``strides``.
        epochs: E, the length of the schedule (ultralytics' ``epochs`` hyper-parameter).
        progressive: the schedule of the module docstring; False: weights 1 and 1.

    Call:
        preds: ``{"one2many": heads, "one2one": heads}``, each in either layout of
            :class:`YOLOv8Loss` (per-stride tensors, or ultralytics' ``{"boxes", "scores", "feats"}``),
            on the same grids.
        targets: as the branches take them (xyxy input pixels; xywhr for OBB branches); padded and
            validated once for both branches (validated when either branch has ``validate``).
        epoch: the current epoch e (0-based): an int, a float or a 0-dim tensor (no host sync).

    Returns:
        :class:`E2EResult`: ``branches = {"one2many": LossResult, "one2one": LossResult}`` as each branch
        gives it; ``components[k] = w_o2m · o2m[k] + w_o2o · o2o[k]`` (the keys of both branches),
        ``total`` and ``per_image`` mixed likewise.
    """

    def __init__(
        self, one2many: YOLOv8Loss, one2one: YOLOv8Loss, *, epochs: int = 100, progressive: bool = True
    ) -> None:
        super().__init__()
        for name, branch in (("one2many", one2many), ("one2one", one2one)):
            if not isinstance(branch, YOLOv8Loss):
                raise TypeError(f"{name} must be a YOLOv8Loss, got {type(branch).__name__}")
        if (one2many.box_format, one2many.angled) != (one2one.box_format, one2one.angled):
            # the targets are padded once, and the heads read alike: one box family for both
            raise TypeError(
                f"one2one must take the boxes of one2many ({type(one2many).__name__}), "
                f"got {type(one2one).__name__}"
            )
        if one2many.num_classes != one2one.num_classes or one2many.strides != one2one.strides:
            raise ValueError(
                "one2one must have the num_classes and strides of one2many: got "
                f"{one2one.num_classes}, {one2one.strides} against {one2many.num_classes}, {one2many.strides}"
            )
        self.one2many, self.one2one = one2many, one2one
        (self.epochs,) = positive_ints("epochs", (epochs,))
        self.progressive = bool(progressive)

    def weights(self, epoch: float | Tensor) -> tuple[float | Tensor, float | Tensor]:
        """``(w_o2m, w_o2o)`` during ``epoch``: the schedule, or 1 and 1 without ``progressive``."""
        if not self.progressive:
            return 1.0, 1.0
        if not isinstance(epoch, Tensor):
            check_number("epoch", epoch, low=0.0)
        return e2e_weights(epoch, self.epochs)

    def forward(
        self,
        preds: Mapping[str, Sequence[Tensor] | Mapping[str, object]],
        targets: Targets,
        epoch: float | Tensor,
    ) -> E2EResult:
        if not isinstance(preds, Mapping) or set(preds) != {"one2many", "one2one"}:
            raise ValueError("preds must be a mapping with exactly the keys 'one2many' and 'one2one'")
        batch = batch_size(targets)
        heads_m = self.one2many.read_heads(preds["one2many"], batch)
        heads_o = self.one2one.read_heads(preds["one2one"], batch)
        if heads_m.sizes != heads_o.sizes:
            raise ValueError(
                f"preds['one2one'] grids {heads_o.sizes} differ from preds['one2many'] grids {heads_m.sizes}"
            )
        ref = heads_m.tensors[0]
        dtype, device = ref.dtype, ref.device
        validate = self.one2many.validate or self.one2one.validate
        padded = as_padded(
            targets,
            self.one2many.num_classes,
            dtype=dtype,
            device=device,
            validate=validate,
            fmt=self.one2many.box_format,
        )
        tables = self.one2many.anchor_tables(heads_m.sizes, dtype, device)  # one table for both branches
        # the candidate test (which anchors lie in which box) does not depend on the predictions: made
        # once for both branches (axis-aligned boxes, one min_side)
        shared = {}
        if not self.one2many.angled and self.one2many.min_side == self.one2one.min_side:
            shared["candidates"] = self.one2many.candidate_table(padded, tables, heads_m.sizes)
        out_m = self.one2many.loss(heads_m, padded, tables, **shared)
        if heads_o.tensors[0].dtype != dtype:  # a branch in another precision: its own copies
            dtype = heads_o.tensors[0].dtype
            padded = as_padded(padded, self.one2one.num_classes, dtype=dtype, device=device, validate=False)
            tables = self.one2one.anchor_tables(heads_o.sizes, dtype, device)
            shared = {}
        out_o = self.one2one.loss(heads_o, padded, tables, **shared)
        if isinstance(epoch, Tensor):  # the weights in the loss's precision, whatever the epoch's dtype
            epoch = epoch.to(out_m.total.dtype)
        w_m, w_o = self.weights(epoch)
        zero = out_m.total.new_zeros(())
        components = {
            k: w_m * out_m.components.get(k, zero) + w_o * out_o.components.get(k, zero)
            for k in dict.fromkeys([*out_m.components, *out_o.components])
        }
        return E2EResult(
            w_m * out_m.total + w_o * out_o.total,
            components,
            w_m * out_m.per_image + w_o * out_o.per_image,
            {"one2many": out_m, "one2one": out_o},
        )


@dataclass
class E2EResult(LossResult):
    """:class:`LossResult` plus ``branches``: each branch's own result, unweighted,
    ``{"one2many": LossResult, "one2one": LossResult}``."""

    branches: dict[str, LossResult] = field(default_factory=dict)


def yolo26_loss(
    num_classes: int,
    *,
    task: str = "detect",
    epochs: int = 100,
    strides: Sequence[int] = (8, 16, 32),
    validate: bool = True,
    **options: object,
) -> EndToEndLoss:
    """YOLO26's loss as ultralytics 8.4.190 trains it: ``reg_max = 1`` (raw distances, L1), one-to-many
    ``topk=10``, one-to-one ``topk=7, topk2=1``, the progressive schedule over ``epochs``.

    ``task="detect"``: :class:`YOLOv8Loss` branches (xyxy targets); ``task="obb"`` (YOLO26-OBB, the
    original's ``E2ELoss(model, v8OBBLoss)``): :class:`YOLOv8OBBLoss` branches (xywhr targets, the raw
    angle, the angle gain 1.0 and ``min_size`` 2 px as in v8OBBLoss). ``options`` go to both branches
    (gains, ``alpha``, ``beta``, ``min_side``, ``iou_kind`` for detect, ``angle``/``min_size`` for obb …)."""
    check_one_of("task", task, tuple(_TASKS))
    return _e2e(num_classes, 1, epochs, strides, validate, options, _TASKS[task])


#: the branch criterion of each task of :func:`yolo26_loss`
_TASKS: dict[str, type[YOLOv8Loss]] = {"detect": YOLOv8Loss, "obb": YOLOv8OBBLoss}


def yolov10_loss(
    num_classes: int,
    *,
    epochs: int = 100,
    strides: Sequence[int] = (8, 16, 32),
    progressive: bool = True,
    validate: bool = True,
    **options: object,
) -> EndToEndLoss:
    """YOLOv10's detection loss: ``reg_max = 16`` (DFL). As ultralytics 8.4.190 trains it (its
    ``E2ELoss``, ``progressive=True``): one-to-many ``topk=10``, one-to-one ``topk=7, topk2=1``, the
    schedule over ``epochs``. ``progressive=False`` gives the first YOLOv10 loss (8.4.190's
    ``E2EDetectLoss``): one-to-one ``topk=1``, weights 1 and 1."""
    if progressive:
        return _e2e(num_classes, 16, epochs, strides, validate, options)
    one2many = YOLOv8Loss(num_classes, strides, 16, topk=10, validate=validate, **options)
    one2one = YOLOv8Loss(num_classes, strides, 16, topk=1, validate=validate, **options)
    return EndToEndLoss(one2many, one2one, epochs=epochs, progressive=False)


def _e2e(
    num_classes: int,
    reg_max: int,
    epochs: int,
    strides: Sequence[int],
    validate: bool,
    options: Mapping[str, object],
    cls: type[YOLOv8Loss] = YOLOv8Loss,
) -> EndToEndLoss:
    one2many = cls(num_classes, strides, reg_max, topk=10, validate=validate, **options)
    one2one = cls(num_classes, strides, reg_max, topk=7, topk2=1, validate=validate, **options)
    return EndToEndLoss(one2many, one2one, epochs=epochs)
