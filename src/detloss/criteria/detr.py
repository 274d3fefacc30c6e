"""DETR-family set criterion: Hungarian matching per decoder layer, then class and box losses.

Reproduces transformers 5.x's ``ForObjectDetectionLoss`` (DETR), ``DeformableDetrForObjectDetectionLoss``
(Deformable DETR, DINO) and ``RTDetrLoss`` (RT-DETR, without denoising groups and encoder-proposal
losses) on the same inputs. Unlike the references, which build the cost between every query and every
target of the batch and copy it to the host once per layer, the cost here is built for each image's own
targets only, ``(L, B, Q, M_max)``, and all layers reach the host in one transfer
(:func:`detloss.assign.hungarian_match`); everything else is one graph over layers and images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assign.hungarian import hungarian_match, require_scipy
from ..assign.targets import PaddedTargets, pad_targets, raise_bad_target, targets_ok
from ..boxes import convert
from ..checks import check_finite, check_gain, check_num_classes, check_padded_targets, check_tensor
from ..distributed import global_count
from ..iou import compute_dtype, iou_xyxy
from ..kernels import iou_forward
from ..losses import sigmoid_focal_loss
from .result import LossResult

Preset = Literal["detr", "deformable", "rtdetr"]

# preset → (class, bbox, giou) match costs, (cls, bbox, giou) loss gains, focal_alpha: the defaults
# of the original repositories (facebookresearch/detr, fundamentalvision/Deformable-DETR, lyuwenyu/RT-DETR)
PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float | None]] = {
    "detr": ((1.0, 5.0, 2.0), (1.0, 5.0, 2.0), None),
    "deformable": ((2.0, 5.0, 2.0), (2.0, 5.0, 2.0), 0.25),
    "rtdetr": ((2.0, 5.0, 2.0), (1.0, 5.0, 2.0), 0.75),
}

# The references' GIoU and IoU have no eps; float32's smallest normal keeps degenerate boxes finite
# (0/tiny = 0) and changes no other value: it is below any union or enclosing area that rounds to > 0.
_TINY = torch.finfo(torch.float32).tiny


@dataclass
class SetLossResult(LossResult):
    """:class:`LossResult` plus ``layers``: per decoder layer, ``{"cls", "bbox", "giou"}`` (gains
    applied), in input layer order; ``components`` are their sums over the layers."""

    layers: list[dict[str, Tensor]] = field(default_factory=list)


class DETRLoss(nn.Module):
    """Set-prediction loss of the DETR family, every decoder layer matched and weighted alike.

    Per layer l, with the Hungarian matching σ_l of queries to each image's targets::

        cost(q, j) = class_cost·C_cls(q, j) + bbox_cost·‖b_q − b_j‖₁ − giou_cost·GIoU(b_q, b_j)
        L_l = cls·L_cls + bbox·Σ_j ‖b_σ(j) − b_j‖₁ / N + giou·Σ_j (1 − GIoU) / N

    with N = max(number of target boxes in the batch, 1) (averaged over the ranks with
    ``reduce_across_ranks``). Presets (``None`` arguments take the preset's value):

    - ``"detr"`` (C′ = C + 1, no-object last): C_cls = −softmax(x)[class]; L_cls = cross-entropy over
      all B·Q queries (unmatched ones → no-object, weighted ``eos_coef``), PyTorch's weighted mean.
      Costs 1/5/2, gains 1/5/2.
    - ``"deformable"`` (C′ = C): C_cls = α_c(1−p)^γ_c·(−log(p + 1e-8)) − (1−α_c)p^γ_c·(−log(1 − p + 1e-8)),
      p = σ(x) of the target's class; L_cls = sigmoid focal loss (``focal_alpha`` 0.25, ``focal_gamma``)
      on the one-hot of the matched classes, summed over B·Q·C, / N. Costs 2/5/2, gains 2/5/2.
    - ``"rtdetr"`` (C′ = C): the focal cost; L_cls = varifocal: BCE-with-logits(x, t·IoU) weighted by
      α·p^γ·(1 − t) + t·IoU, t the one-hot, IoU of the matched pair and p detached (``focal_alpha``
      0.75), summed over B·Q·C, / N. Costs 2/5/2, gains 1/5/2.

    Args:
        num_classes: C, the object classes (without no-object).
        preset: ``"detr" | "deformable" | "rtdetr"``.
        class_cost, bbox_cost, giou_cost: matching cost weights (transformers' names).
        cls, bbox, giou: loss gains, the keys of ``components`` (transformers' ``weight_dict`` of
            ``loss_ce``, ``loss_bbox``, ``loss_giou``).
        eos_coef: the no-object class weight of ``"detr"``'s cross-entropy.
        cost_alpha, cost_gamma: α_c, γ_c of the focal matching cost.
        focal_alpha, focal_gamma: α, γ of the focal / varifocal class loss.
        validate: check shapes always; with True also finite predictions, targets (finite, positive
            width and height, class ids in [0, C)) in one host synchronisation, and finite costs.
        reduce_across_ranks: N summed over the ranks of a process group and divided by the world
            size (:func:`detloss.distributed.global_count`, at least 1 before dividing).

    Call:
        logits: ``(L, B, Q, C′)`` (or ``(B, Q, C′)`` for one layer), the last layer the final one.
        boxes: ``(L, B, Q, 4)`` predicted boxes, cxcywh normalised to [0, 1].
        targets: B dicts ``{"boxes": (n, 4) cxcywh normalised to [0, 1], "labels": (n,) int64}``; n may
            be 0. Or a :class:`detloss.assign.PaddedTargets` of such boxes already on the device (skips
            the padding and the targets' value checks; its shapes are checked, and its mask travels to
            the host with the matching cost).

    Returns:
        :class:`SetLossResult`: ``total``, ``components`` ``{"cls", "bbox", "giou"}`` summed over the
        layers, ``layers`` the per-layer dicts, ``per_image`` ``(B,)`` each image's share summed over
        the layers: its queries' class loss and its targets' box losses over the batch's
        normalisers (N; ``"detr"``: Σ w of the layer's queries), so ``per_image.sum() == total``.
        float32 for half-precision inputs.

    A call is one graph with one host round trip (the matching) with ``validate=False``; ``validate=True``
    adds one synchronisation for the input checks.
    """

    def __init__(
        self,
        num_classes: int,
        preset: Preset = "detr",
        *,
        class_cost: float | None = None,
        bbox_cost: float | None = None,
        giou_cost: float | None = None,
        cls: float | None = None,
        bbox: float | None = None,
        giou: float | None = None,
        eos_coef: float = 0.1,
        cost_alpha: float = 0.25,
        cost_gamma: float = 2.0,
        focal_alpha: float | None = None,
        focal_gamma: float = 2.0,
        validate: bool = True,
        reduce_across_ranks: bool = False,
    ) -> None:
        super().__init__()
        require_scipy()
        check_num_classes(num_classes)
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        costs, gains, alpha = PRESETS[preset]
        self.num_classes, self.preset = num_classes, preset
        given = (class_cost, bbox_cost, giou_cost, cls, bbox, giou)
        names = ("class_cost", "bbox_cost", "giou_cost", "cls", "bbox", "giou")
        value = [  # None takes the preset's value
            check_gain(n, d if v is None else v) for n, v, d in zip(names, given, costs + gains, strict=True)
        ]
        self.class_cost, self.bbox_cost, self.giou_cost = value[:3]
        self.gains = dict(zip(names[3:], value[3:], strict=True))
        if self.class_cost == self.bbox_cost == self.giou_cost == 0:
            raise ValueError("class_cost, bbox_cost and giou_cost cannot all be 0")
        if not 0 <= eos_coef:
            raise ValueError(f"eos_coef must be >= 0, got {eos_coef}")
        if not (0 <= cost_alpha <= 1 and cost_gamma >= 0 and focal_gamma >= 0):
            raise ValueError("cost_alpha must lie in [0, 1]; cost_gamma and focal_gamma must be >= 0")
        self.eos_coef, self.cost_alpha, self.cost_gamma = (
            float(eos_coef),
            float(cost_alpha),
            float(cost_gamma),
        )
        if focal_alpha is None:
            focal_alpha = 0.25 if alpha is None else alpha
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        if not 0 <= self.focal_alpha <= 1:
            raise ValueError(f"focal_alpha must lie in [0, 1], got {self.focal_alpha}")
        self.validate, self.reduce_across_ranks = bool(validate), bool(reduce_across_ranks)
        # float64, cast per call: eos_coef stays exact for float64 logits
        class_weight = torch.ones(num_classes + 1, dtype=torch.float64)
        class_weight[-1] = self.eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    # ------------------------------------------------------------------------------------------ call
    def forward(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[Mapping[str, Tensor]] | PaddedTargets
    ) -> SetLossResult:
        logits, boxes = self._check_preds(logits, boxes, targets)
        dtype = compute_dtype(logits)  # fp16/bf16 heads: computed in float32
        x, pred = logits.to(dtype), boxes.to(dtype)
        num_layers, batch, num_queries, _ = x.shape
        if isinstance(targets, PaddedTargets):
            padded = PaddedTargets(targets.boxes.to(dtype), targets.labels.long(), targets.mask)
            counts: Tensor | list[int] = padded.mask  # read with the matching cost, in its transfer
        else:
            padded = pad_targets(
                targets, self.num_classes, fmt="cxcywh", dtype=dtype, device=x.device, validate=False
            )
            counts = [int(t["boxes"].shape[0]) for t in targets]  # known from the shapes: no sync
        tgt_boxes, labels, valid_tgt = padded.boxes, padded.labels, padded.mask  # (B, M, 4), (B, M)
        if self.validate:
            self._check_values(x, pred, targets, padded)

        # 1. matching on each image's own cost block, all layers in one round trip
        with torch.no_grad():
            cost = self._cost(x, pred, tgt_boxes, labels)  # (L, B, Q, M)
        match = hungarian_match(cost, counts, validate=self.validate)  # (L, B, M) query per target, −1

        # 2. the matched pairs, gathered by the match index (masks instead of ragged lists)
        matched = match >= 0  # (L, B, M)
        query = match.clamp(min=0)
        pred_m = pred.gather(2, query[..., None].expand(-1, -1, -1, 4))  # (L, B, M, 4)
        pred_xyxy, tgt_xyxy = convert(pred_m, "cxcywh", "xyxy"), convert(tgt_boxes, "cxcywh", "xyxy")
        num_boxes = global_count(valid_tgt.sum().to(dtype), self.reduce_across_ranks, 1.0)
        zero = x.new_zeros(())
        l1 = torch.where(matched, (pred_m - tgt_boxes).abs().sum(-1), zero).sum(2) / num_boxes  # (L, B)
        giou = iou_xyxy(pred_xyxy, tgt_xyxy, "giou", _TINY)
        giou = torch.where(matched, 1.0 - giou, zero).sum(2) / num_boxes

        # 3. the class target of every query: the matched target's class, else C (no-object);
        # unmatched targets scatter into a spare slot Q that is dropped (order-free, no collisions)
        slot = torch.where(matched, query, num_queries)  # (L, B, M)
        cls_target = x.new_full((num_layers, batch, num_queries + 1), self.num_classes, dtype=torch.long)
        cls_target = cls_target.scatter(2, slot, labels.expand_as(slot))[..., :num_queries]  # (L, B, Q)
        if self.preset == "detr":
            cls = self._cross_entropy(x, cls_target)
        else:
            # (L, B, Q, C); no-object (C) is all zeros. A comparison, not F.one_hot: that reads the
            # class range back from the device
            onehot = (cls_target[..., None] == torch.arange(self.num_classes, device=x.device)).to(dtype)
            if self.preset == "deformable":
                cls = sigmoid_focal_loss(
                    x, onehot, self.focal_alpha, self.focal_gamma, reduction="none", validate=False
                ).sum((2, 3))
            else:
                with torch.no_grad():
                    iou = iou_xyxy(pred_xyxy, tgt_xyxy, "iou", _TINY)  # (L, B, M)
                    score = x.new_zeros(slot.shape[:2] + (num_queries + 1,)).scatter(2, slot, iou)
                score = score[..., :num_queries, None] * onehot  # (L, B, Q, C): IoU at the matched class
                cls = _rtdetr_varifocal(x, onehot, score, self.focal_alpha, self.focal_gamma).sum((2, 3))
            cls = cls / num_boxes

        # 4. gains; each image's share over the batch's normalisers, summed per layer and over layers
        g = self.gains
        shares = torch.stack((g["cls"] * cls, g["bbox"] * l1, g["giou"] * giou), 2)  # (L, B, 3)
        per_layer = shares.sum(1)  # (L, 3)
        names = ("cls", "bbox", "giou")
        sums = per_layer.sum(0)
        components = dict(zip(names, sums.unbind(), strict=True))
        layers = [dict(zip(names, row.unbind(), strict=True)) for row in per_layer.unbind()]
        return SetLossResult(sums.sum(), components, per_image=shares.sum((0, 2)), layers=layers)

    def _cost(self, x: Tensor, pred: Tensor, tgt_boxes: Tensor, labels: Tensor) -> Tensor:
        """``(L, B, Q, M)`` matching cost of every query with its own image's targets (no gradient)."""
        num_layers, batch, num_queries, num_logits = x.shape
        m = labels.shape[1]
        index = labels[None, :, None, :].expand(num_layers, batch, num_queries, m)
        if self.preset == "detr":
            class_cost = -x.softmax(-1).gather(3, index)
        else:
            # gather the logits first when there are fewer targets than classes (the same elementwise cost)
            p = (x.gather(3, index) if m < num_logits else x).sigmoid()
            a, g = self.cost_alpha, self.cost_gamma
            neg = (1 - a) * p**g * -(1 - p + 1e-8).log()
            pos = a * (1 - p) ** g * -(p + 1e-8).log()
            class_cost = pos - neg if m < num_logits else (pos - neg).gather(3, index)
        tgt = tgt_boxes.expand(num_layers, -1, -1, -1)
        cost = torch.cdist(pred, tgt, p=1).mul_(self.bbox_cost)  # (L, B, Q, M): L1 over the 4 coordinates
        cost.add_(class_cost, alpha=self.class_cost)
        # the plain GIoU formula (no autograd needed here; broadcasting avoids materialising box pairs)
        giou = iou_forward(
            convert(pred, "cxcywh", "xyxy")[:, :, :, None],
            convert(tgt_boxes, "cxcywh", "xyxy")[None, :, None],
            "giou",
            _TINY,
            False,
            False,
        )
        return cost.sub_(giou, alpha=self.giou_cost)

    def _cross_entropy(self, x: Tensor, cls_target: Tensor) -> Tensor:
        """``(L, B)``: per layer and image, Σ_q w_t·CE over the image's queries / Σ w_t over the layer's
        B·Q queries; summed over the images, ``F.cross_entropy``'s weighted mean of the layer."""
        weight = self.class_weight.to(device=x.device, dtype=x.dtype)  # a criterion left on the CPU works too
        ce = F.cross_entropy(x.flatten(0, 2), cls_target.flatten(), weight=weight, reduction="none")
        # the floor only matters without queries (B = 0) or with eos_coef = 0 and nothing matched:
        # 0 there, where F.cross_entropy gives 0/0
        norm = weight[cls_target].sum((1, 2)).clamp(min=_TINY)  # (L,)
        return ce.view(cls_target.shape).sum(2) / norm[:, None]

    # ------------------------------------------------------------------------------------------ checks
    def _check_preds(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[Mapping[str, Tensor]] | PaddedTargets
    ) -> tuple[Tensor, Tensor]:
        check_tensor("logits", logits)
        check_tensor("boxes", boxes)
        listed = isinstance(targets, Sequence) and not isinstance(targets, Mapping)
        if not (listed or isinstance(targets, PaddedTargets)):
            raise TypeError(f"targets must be a list of dicts or PaddedTargets, got {type(targets).__name__}")
        for name, t in (("logits", logits), ("boxes", boxes)):
            if not t.is_floating_point():
                raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
        if logits.dim() == 3 and boxes.dim() == 3:  # one layer
            logits, boxes = logits[None], boxes[None]
        width = self.num_classes + (self.preset == "detr")
        what = "C + 1 (no-object last)" if self.preset == "detr" else "C"
        if logits.dim() != 4 or logits.shape[-1] != width:
            raise ValueError(
                f"logits must have shape (L, B, Q, {what} = {width}) for preset {self.preset!r}, "
                f"got {tuple(logits.shape)}"
            )
        if boxes.shape != logits.shape[:3] + (4,):
            raise ValueError(
                f"boxes must have shape (L, B, Q, 4) = {tuple(logits.shape[:3]) + (4,)}, "
                f"got {tuple(boxes.shape)}"
            )
        if isinstance(targets, PaddedTargets):
            check_padded_targets(targets, logits.shape[1])
        elif logits.shape[1] != len(targets):
            raise ValueError(f"logits has batch size {logits.shape[1]} but targets has {len(targets)} images")
        return logits, boxes

    def _check_values(
        self,
        x: Tensor,
        pred: Tensor,
        targets: Sequence[Mapping[str, Tensor]] | PaddedTargets,
        padded: PaddedTargets,
    ) -> None:
        """One combined check and one sync: finite predictions and (targets given as a list) the padded
        targets' values (:func:`detloss.assign.targets.targets_ok`: finite, w > 0, h > 0, class ids
        in [0, C)); the offending index is searched only on failure."""
        ok = torch.isfinite(x).all() & torch.isfinite(pred).all()
        if not isinstance(targets, PaddedTargets):
            tgt_ok = targets_ok(padded.boxes, padded.labels, self.num_classes, "cxcywh") | ~padded.mask
            ok = ok & tgt_ok.all()
        if bool(ok):
            return
        check_finite("logits", x)
        check_finite("boxes", pred)
        boxes, labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
        raise_bad_target(boxes, labels, self.num_classes, padded.boxes.dtype, "cxcywh")


def _rtdetr_varifocal(x: Tensor, onehot: Tensor, score: Tensor, alpha: float, gamma: float) -> Tensor:
    """RT-DETR's varifocal loss, elementwise: BCE-with-logits(x, score) · (α·p^γ·(1 − t) + score),
    t the one-hot of the matched class, score = t·IoU, p = σ(x) detached.

    Not :func:`detloss.varifocal_loss` (VarifocalNet's form): here a matched class with IoU 0 has
    weight 0 (VFL gives it the negative term −α·p^γ·log(1 − p)), and p is detached in the weight.
    """
    p = x.detach().sigmoid()
    weight = alpha * p**gamma * (1 - onehot) + score
    return F.binary_cross_entropy_with_logits(x, score, weight=weight, reduction="none")
