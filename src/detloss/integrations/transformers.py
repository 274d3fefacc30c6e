"""Train transformers' DETR-family detection models with detloss's :class:`~detloss.criteria.DETRLoss`.

One call::

    from transformers import RTDetrForObjectDetection
    from detloss.integrations.transformers import use_detloss

    model = use_detloss(RTDetrForObjectDetection(config))
    out = model(pixel_values=images, labels=labels)  # out.loss, out.loss_dict: from detloss

``use_detloss`` sets ``model.loss_function`` (what the model's ``forward`` calls when it is given
``labels``) to a :class:`DetrLossFunction`: the same signature and return value as transformers 5.24's
own loss functions, ``(loss, loss_dict, auxiliary_outputs)``, with the same values: the weighted total,
the per-term dictionary under the same keys (unweighted, with ``cardinality_error``, for DETR and
Deformable DETR; weighted for the RT-DETR family) and the same auxiliary outputs. The matching costs,
gains and focal parameters are read from the config the model passes at each call.

Models (by class name): ``DetrForObjectDetection`` (preset ``"detr"``),
``DeformableDetrForObjectDetection`` (``"deformable"``), ``RTDetrForObjectDetection`` and
``RTDetrV2ForObjectDetection`` (``"rtdetr"``: decoder layers, encoder proposals and, in training, the
contrastive denoising groups).

transformers (Apache-2.0) is never a dependency of detloss: this module does not import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..criteria.detr import DETRLoss, Preset

__all__ = ["DetrLossFunction", "criterion_from_config", "preset_for", "use_detloss"]

#: transformers' ``ForObjectDetection`` classes with a detloss preset.
_PRESETS: dict[str, Preset] = {
    "DetrForObjectDetection": "detr",
    "DeformableDetrForObjectDetection": "deformable",
    "RTDetrForObjectDetection": "rtdetr",
    "RTDetrV2ForObjectDetection": "rtdetr",
}

#: DETR-family models whose loss has no detloss preset yet.
_NOT_YET = (
    "DFineForObjectDetection",
    "Deimv2ForObjectDetection",
    "LwDetrForObjectDetection",
    "RfDetrForObjectDetection",
)


def preset_for(model: Any) -> Preset:
    """The :class:`~detloss.criteria.DETRLoss` preset of a transformers detection model, from its class
    name (or a base class's, so subclasses keep their family).

    Raises:
        NotImplementedError: a DETR-family model (D-FINE, DEIMv2, LW-DETR, RF-DETR) whose preset does
            not exist yet.
        TypeError: any other model.
    """
    for cls in type(model).__mro__:
        if cls.__name__ in _PRESETS:
            return _PRESETS[cls.__name__]
        if cls.__name__ in _NOT_YET:
            raise NotImplementedError(
                f"use_detloss: {cls.__name__} is not supported yet (no detloss preset for its loss); "
                f"supported: {', '.join(_PRESETS)}"
            )
    raise TypeError(
        f"use_detloss: model must be one of transformers' {', '.join(_PRESETS)}, got {type(model).__name__}"
    )


def criterion_from_config(
    config: Any, preset: Preset, *, validate: bool = True, reduce_across_ranks: bool = False
) -> DETRLoss:
    """The :class:`~detloss.criteria.DETRLoss` that computes transformers' loss of ``preset`` for a
    model with this config.

    - ``"detr"``, ``"deformable"``: matching costs ``class_cost``, ``bbox_cost``, ``giou_cost``; gains
      1 (transformers' fixed ``loss_ce`` weight), ``bbox_loss_coefficient``, ``giou_loss_coefficient``;
      ``eos_coefficient`` (DETR), ``focal_alpha`` (Deformable; the matcher's α = 0.25, γ = 2 are fixed).
    - ``"rtdetr"``: ``matcher_class_cost``, ``matcher_bbox_cost``, ``matcher_giou_cost``,
      ``matcher_alpha``, ``matcher_gamma``; gains ``weight_loss_vfl``, ``weight_loss_bbox``,
      ``weight_loss_giou``; ``focal_loss_alpha``, ``focal_loss_gamma``. Needs ``use_focal_loss``.

    ``validate`` and ``reduce_across_ranks`` are :class:`~detloss.criteria.DETRLoss`'s.
    """
    if preset == "rtdetr":
        if not getattr(config, "use_focal_loss", True):
            raise ValueError("config.use_focal_loss=False (a softmax matching cost) has no detloss preset")
        return DETRLoss(
            config.num_labels,
            "rtdetr",
            class_cost=config.matcher_class_cost,
            bbox_cost=config.matcher_bbox_cost,
            giou_cost=config.matcher_giou_cost,
            cost_alpha=config.matcher_alpha,
            cost_gamma=config.matcher_gamma,
            cls=config.weight_loss_vfl,
            bbox=config.weight_loss_bbox,
            giou=config.weight_loss_giou,
            focal_alpha=config.focal_loss_alpha,
            focal_gamma=config.focal_loss_gamma,
            validate=validate,
            reduce_across_ranks=reduce_across_ranks,
        )
    if preset not in ("detr", "deformable"):
        raise ValueError(f"preset must be 'detr', 'deformable' or 'rtdetr', got {preset!r}")
    extra = {"eos_coef": config.eos_coefficient} if preset == "detr" else {"focal_alpha": config.focal_alpha}
    return DETRLoss(
        config.num_labels,
        preset,
        class_cost=config.class_cost,
        bbox_cost=config.bbox_cost,
        giou_cost=config.giou_cost,
        cls=1.0,
        bbox=config.bbox_loss_coefficient,
        giou=config.giou_loss_coefficient,
        validate=validate,
        reduce_across_ranks=reduce_across_ranks,
        **extra,
    )


def _aux(outputs_class: Tensor, outputs_coord: Tensor) -> list[dict[str, Tensor]]:
    """transformers' ``auxiliary_outputs``: one ``{"logits", "pred_boxes"}`` per entry of dim 0."""
    return [{"logits": a, "pred_boxes": b} for a, b in zip(outputs_class, outputs_coord, strict=True)]


class DetrLossFunction:
    """A transformers DETR-family loss function backed by :class:`~detloss.criteria.DETRLoss`.

    Called as the model's ``forward`` calls ``self.loss_function``; returns ``(loss, loss_dict,
    auxiliary_outputs)`` as transformers 5.24's ``ForObjectDetectionLoss`` (``"detr"``),
    ``DeformableDetrForObjectDetectionLoss`` (``"deformable"``) or ``RTDetrForObjectDetectionLoss``
    (``"rtdetr"``) does. Not an ``nn.Module``, so assigning it to a model registers no submodule.

    Args:
        preset: ``"detr" | "deformable" | "rtdetr"``.
        validate: :class:`~detloss.criteria.DETRLoss`'s input checks (one host synchronisation).
    """

    def __init__(self, preset: Preset, *, validate: bool = True) -> None:
        if preset not in ("detr", "deformable", "rtdetr"):
            raise ValueError(f"preset must be 'detr', 'deformable' or 'rtdetr', got {preset!r}")
        self.preset, self.validate = preset, bool(validate)

    def __repr__(self) -> str:
        return f"DetrLossFunction(preset={self.preset!r}, validate={self.validate})"

    def __call__(
        self,
        logits: Tensor,
        labels: Sequence[Mapping[str, Tensor]],
        device: torch.device | str | None,
        pred_boxes: Tensor,
        config: Any,
        outputs_class: Tensor | None = None,
        outputs_coord: Tensor | None = None,
        enc_topk_logits: Tensor | None = None,
        enc_topk_bboxes: Tensor | None = None,
        denoising_meta_values: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, dict[str, Tensor], list[dict[str, Tensor]] | None]:
        """transformers' loss-function call (``device`` is unused: the inputs say where to compute;
        other keyword arguments, e.g. RT-DETR's ``predicted_corners``, are not used by these losses).

        Args:
            logits, pred_boxes: the final layer, ``(B, Q, C′)`` and ``(B, Q, 4)`` (RT-DETR in training:
                denoising queries first, split by ``denoising_meta_values["dn_num_split"]``).
            labels: B dicts ``{"class_labels": (n,), "boxes": (n, 4) cxcywh normalised}``.
            config: the model's config (costs, gains, ``num_labels``, ``auxiliary_loss``).
            outputs_class, outputs_coord: every decoder layer, ``(L, B, Q, ·)`` (DETR, Deformable) or
                ``(B, L, Q, ·)`` (RT-DETR), used with ``config.auxiliary_loss``.
            enc_topk_logits, enc_topk_bboxes: RT-DETR's encoder proposals ``(B, Q, ·)``.
            denoising_meta_values: RT-DETR's denoising groups (training only).
        """
        if not isinstance(labels, Sequence) or isinstance(labels, Mapping):
            raise TypeError(f"labels must be a list of dicts, got {type(labels).__name__}")
        for i, t in enumerate(labels):
            if "class_labels" not in t or "boxes" not in t:
                raise KeyError(f"labels[{i}] must have the keys 'class_labels' and 'boxes', got {list(t)}")
        targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
        if self.preset == "rtdetr":
            criterion = criterion_from_config(config, "rtdetr", validate=self.validate)
            return self._rtdetr(
                criterion, logits, pred_boxes, config, targets, outputs_class, outputs_coord,
                enc_topk_logits, enc_topk_bboxes, denoising_meta_values,
            )  # fmt: skip
        aux = bool(config.auxiliary_loss)
        if aux and (outputs_class is None or outputs_coord is None):
            raise ValueError("config.auxiliary_loss is set but outputs_class or outputs_coord is None")
        # the final layer from logits / pred_boxes (what transformers' final term differentiates)
        layers_c = torch.cat((outputs_class[:-1], logits[None])) if aux else logits[None]
        layers_b = torch.cat((outputs_coord[:-1], pred_boxes[None])) if aux else pred_boxes[None]
        # transformers averages DETR's and Deformable's box count over accelerate's processes (not
        # RT-DETR's): the same over torch.distributed's
        dist = torch.distributed
        reduce = dist.is_available() and dist.is_initialized()
        criterion = criterion_from_config(
            config, self.preset, validate=self.validate, reduce_across_ranks=reduce
        )
        result = criterion(layers_c, layers_b, targets)
        loss_dict = self._with_cardinality(result.loss_dict(), layers_c, targets)
        auxiliary_outputs = _aux(outputs_class[:-1], outputs_coord[:-1]) if aux else None
        return result.total, loss_dict, auxiliary_outputs

    def _with_cardinality(
        self, terms: dict[str, Tensor], layers: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """transformers' DETR / Deformable dictionary: per layer its three terms, then
        ``cardinality_error`` (the mean |predicted − true| count of non-empty queries; a log value
        without gradient): a query counts when its argmax is not no-object (DETR) or its highest
        sigmoid exceeds 0.5 (Deformable)."""
        with torch.no_grad():
            if self.preset == "detr":
                found = layers.argmax(-1) != layers.shape[-1] - 1
            else:
                found = layers.max(-1).values > 0  # sigmoid > 0.5
            lengths = torch.tensor([len(t["labels"]) for t in targets], device=layers.device)
            errors = (found.sum(2).float() - lengths.float()).abs().mean(1).unbind()  # (L,)
        num_layers = layers.shape[0]
        out: dict[str, Tensor] = {}
        for layer, suffix in [(num_layers - 1, "")] + [(i, f"_{i}") for i in range(num_layers - 1)]:
            for key in ("loss_ce", "loss_bbox", "loss_giou"):
                out[key + suffix] = terms[key + suffix]
            out["cardinality_error" + suffix] = errors[layer]
        return out

    @staticmethod
    def _rtdetr(
        criterion: DETRLoss,
        logits: Tensor,
        pred_boxes: Tensor,
        config: Any,
        targets: list[dict[str, Tensor]],
        outputs_class: Tensor | None,
        outputs_coord: Tensor | None,
        enc_logits: Tensor | None,
        enc_boxes: Tensor | None,
        dn_meta: Mapping[str, Any] | None,
    ) -> tuple[Tensor, dict[str, Tensor], list[dict[str, Tensor]] | None]:
        """``RTDetrForObjectDetectionLoss``: the denoising queries dropped from the matched ones; with
        ``auxiliary_loss`` the decoder's other layers, the encoder proposals and the denoising groups."""
        if dn_meta is not None:
            num_dn = dn_meta["dn_num_split"][0]
            logits, pred_boxes = logits[:, num_dn:], pred_boxes[:, num_dn:]
        if not config.auxiliary_loss:
            result = criterion(logits, pred_boxes, targets)
            return result.total, result.loss_dict(), None
        if outputs_class is None or outputs_coord is None or enc_logits is None or enc_boxes is None:
            raise ValueError(
                "config.auxiliary_loss is set but outputs_class, outputs_coord, enc_topk_logits or "
                "enc_topk_bboxes is None"
            )
        dn: dict[str, Any] = {}
        if dn_meta is not None:
            dn_c, outputs_class = outputs_class[:, :, :num_dn], outputs_class[:, :, num_dn:]
            dn_b, outputs_coord = outputs_coord[:, :, :num_dn], outputs_coord[:, :, num_dn:]
            dn = {"dn_logits": dn_c.transpose(0, 1), "dn_boxes": dn_b.transpose(0, 1), "dn_meta": dn_meta}
        aux_c, aux_b = outputs_class[:, :-1].transpose(0, 1), outputs_coord[:, :-1].transpose(0, 1)
        layers_c, layers_b = torch.cat((aux_c, logits[None])), torch.cat((aux_b, pred_boxes[None]))
        result = criterion(layers_c, layers_b, targets, enc_logits=enc_logits, enc_boxes=enc_boxes, **dn)
        # transformers' auxiliary outputs: the decoder's other layers, then the encoder proposals
        auxiliary_outputs = _aux(aux_c, aux_b) + [{"logits": enc_logits, "pred_boxes": enc_boxes}]
        return result.total, result.loss_dict(), auxiliary_outputs


def use_detloss(model: Any, *, validate: bool = True) -> Any:
    """Make a transformers DETR-family detection model compute its training loss with detloss.

    Sets ``model.loss_function`` to a :class:`DetrLossFunction` of the model's preset
    (:func:`preset_for`); its configuration is read from the config the model passes at each call, so
    later changes to ``model.config`` apply. Returns the model.

    Args:
        model: a transformers ``DetrForObjectDetection``, ``DeformableDetrForObjectDetection``,
            ``RTDetrForObjectDetection`` or ``RTDetrV2ForObjectDetection``.
        validate: :class:`~detloss.criteria.DETRLoss`'s input checks (one host synchronisation per call).

    Raises:
        NotImplementedError: D-FINE, DEIMv2, LW-DETR, RF-DETR (no preset yet).
        TypeError: any other model.
    """
    preset = preset_for(model)
    criterion_from_config(model.config, preset, validate=validate)  # a config it cannot use fails here
    model.loss_function = DetrLossFunction(preset, validate=validate)
    return model
