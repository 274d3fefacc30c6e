"""Train transformers' DETR-family detection models with detloss's :class:`~detloss.criteria.DETRLoss`.

One call::

    from transformers import RTDetrForObjectDetection
    from detloss.integrations.transformers import use_detloss

    model = use_detloss(RTDetrForObjectDetection(config))
    out = model(pixel_values=images, labels=labels)  # out.loss, out.loss_dict: from detloss

``use_detloss`` sets ``model.loss_function`` (what the model's ``forward`` calls when it is given
``labels``) to a :class:`DetrLossFunction`: the same signature and return value as transformers 5.24's
own loss functions, ``(loss, loss_dict, auxiliary_outputs)``, with the same values: the weighted total,
the per-term dictionary under the same keys (unweighted, with ``cardinality_error``, for DETR,
Deformable DETR, LW-DETR and RF-DETR; weighted for the RT-DETR family, D-FINE and DEIMv2) and the same
auxiliary outputs. The matching costs, gains and focal parameters are read from the config the model
passes at each call.

Models (by class name): ``DetrForObjectDetection`` (preset ``"detr"``),
``DeformableDetrForObjectDetection`` (``"deformable"``), ``RTDetrForObjectDetection`` and
``RTDetrV2ForObjectDetection`` (``"rtdetr"``: decoder layers, encoder proposals and, in training, the
contrastive denoising groups), ``DFineForObjectDetection`` (``"dfine"``: RT-DETR's entries plus the
FGL and DDF terms of the decoder's corner distributions), ``Deimv2ForObjectDetection``
(``"deimv2"``: D-FINE's entries with MAL and the dense one-to-one union), ``LwDetrForObjectDetection`` and
``RfDetrForObjectDetection`` (``"lwdetr"``: transformers computes RF-DETR's detection loss with
LW-DETR's function; the query groups, IA-BCE and the encoder proposals).

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
    "DFineForObjectDetection": "dfine",
    "LwDetrForObjectDetection": "lwdetr",
    "RfDetrForObjectDetection": "lwdetr",  # transformers maps it to LwDetrForObjectDetectionLoss
    "Deimv2ForObjectDetection": "deimv2",
}

#: DETR-family models whose loss has no detloss preset yet (RF-DETR's segmentation model adds
#: mask costs and mask losses).
_NOT_YET = ("RfDetrForInstanceSegmentation",)


def preset_for(model: Any) -> Preset:
    """The :class:`~detloss.criteria.DETRLoss` preset of a transformers detection model, from its class
    name (or a base class's, so subclasses keep their family).

    Raises:
        NotImplementedError: a DETR-family model (RF-DETR's instance segmentation) whose preset does
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


_COSTS = {"class_cost": "class_cost", "bbox_cost": "bbox_cost", "giou_cost": "giou_cost"}
_RTDETR_FIELDS = {
    "class_cost": "matcher_class_cost",
    "bbox_cost": "matcher_bbox_cost",
    "giou_cost": "matcher_giou_cost",
    "cost_alpha": "matcher_alpha",
    "cost_gamma": "matcher_gamma",
    "cls": "weight_loss_vfl",
    "bbox": "weight_loss_bbox",
    "giou": "weight_loss_giou",
    "focal_alpha": "focal_loss_alpha",
    "focal_gamma": "focal_loss_gamma",
}
#: per preset, each :class:`~detloss.criteria.DETRLoss` argument ← the config field transformers' loss
#: reads for it (the arguments not listed are fixed in transformers: ``_FIXED``, or DETRLoss's defaults,
#: which are transformers' constants: the matcher's α = 0.25, γ = 2 and the class loss's γ = 2 of
#: DETR, Deformable DETR and LW-DETR)
_CONFIG_FIELDS: dict[str, dict[str, str]] = {
    "detr": _COSTS
    | {"bbox": "bbox_loss_coefficient", "giou": "giou_loss_coefficient", "eos_coef": "eos_coefficient"},
    "deformable": _COSTS
    | {"bbox": "bbox_loss_coefficient", "giou": "giou_loss_coefficient", "focal_alpha": "focal_alpha"},
    "rtdetr": _RTDETR_FIELDS,
    "dfine": _RTDETR_FIELDS
    | {"fgl": "weight_loss_fgl", "ddf": "weight_loss_ddf", "up": "up", "reg_scale": "reg_scale"},
    "deimv2": {k: v for k, v in _RTDETR_FIELDS.items() if k not in ("cls", "focal_alpha")}
    | {
        "cls": "weight_loss_mal",
        "focal_alpha": "mal_alpha",  # None: MAL without α, α = 1
        "fgl": "weight_loss_fgl",
        "ddf": "weight_loss_ddf",
        "up": "up",
        "reg_scale": "reg_scale",
        "dense_one_to_one": "use_dense_one_to_one",
    },
    "lwdetr": _COSTS
    | {
        "cls": "class_loss_coefficient",
        "bbox": "bbox_loss_coefficient",
        "giou": "giou_loss_coefficient",
        "focal_alpha": "focal_alpha",
        "group_detr": "group_detr",
    },
}
#: transformers' fixed values: DETR's and Deformable DETR's ``loss_ce`` weight 1
_FIXED: dict[str, dict[str, float]] = {"detr": {"cls": 1.0}, "deformable": {"cls": 1.0}}


def _config_value(config: Any, field: str, preset: str) -> Any:
    try:
        return getattr(config, field)
    except AttributeError:
        raise AttributeError(
            f"config ({type(config).__name__}) has no {field!r}, which transformers' loss of preset "
            f"{preset!r} reads"
        ) from None


def criterion_from_config(
    config: Any, preset: Preset, *, validate: bool = True, reduce_across_ranks: bool = False
) -> DETRLoss:
    """The :class:`~detloss.criteria.DETRLoss` that computes transformers' loss of ``preset`` for a
    model with this config (``num_labels`` classes).

    - ``"detr"``, ``"deformable"``: matching costs ``class_cost``, ``bbox_cost``, ``giou_cost``; gains
      1 (transformers' fixed ``loss_ce`` weight), ``bbox_loss_coefficient``, ``giou_loss_coefficient``;
      ``eos_coefficient`` (DETR), ``focal_alpha`` (Deformable; the matcher's α = 0.25, γ = 2 are fixed).
    - ``"rtdetr"``: ``matcher_class_cost``, ``matcher_bbox_cost``, ``matcher_giou_cost``,
      ``matcher_alpha``, ``matcher_gamma``; gains ``weight_loss_vfl``, ``weight_loss_bbox``,
      ``weight_loss_giou``; ``focal_loss_alpha``, ``focal_loss_gamma``. Needs ``use_focal_loss``.
    - ``"dfine"``: ``"rtdetr"``'s fields plus the gains ``weight_loss_fgl``, ``weight_loss_ddf`` and
      the bin parameters ``up`` and ``reg_scale`` (transformers' ``DFineLoss`` reads both from the
      config, not from the decoder's ``up`` parameter); ``max_num_bins`` is checked against the
      corners at each call. Needs ``use_focal_loss``.
    - ``"deimv2"``: ``"dfine"``'s fields with the class gain ``weight_loss_mal`` and MAL's α
      ``mal_alpha`` (None, transformers' default: no α, i.e. 1) instead of ``weight_loss_vfl`` and
      ``focal_loss_alpha`` (MAL's γ is ``focal_loss_gamma``), and ``use_dense_one_to_one``.
    - ``"lwdetr"`` (LW-DETR, RF-DETR): ``class_cost``, ``bbox_cost``, ``giou_cost``; gains
      ``class_loss_coefficient``, ``bbox_loss_coefficient``, ``giou_loss_coefficient``;
      ``focal_alpha`` (IA-BCE's α; its γ = 2 and the matcher's α = 0.25, γ = 2 are fixed);
      ``group_detr`` (always G groups: transformers' criterion is a fresh module in training mode).

    ``validate`` and ``reduce_across_ranks`` are :class:`~detloss.criteria.DETRLoss`'s.

    Raises:
        ValueError: an unknown preset, or ``use_focal_loss=False`` (RT-DETR, D-FINE, DEIMv2).
        AttributeError: the config lacks a field the preset reads (named).
    """
    if preset not in _CONFIG_FIELDS:
        raise ValueError(f"preset must be one of {tuple(_CONFIG_FIELDS)}, got {preset!r}")
    if preset in ("rtdetr", "dfine", "deimv2") and not getattr(config, "use_focal_loss", True):
        raise ValueError("config.use_focal_loss=False (a softmax matching cost) has no detloss preset")
    kwargs = {arg: _config_value(config, field, preset) for arg, field in _CONFIG_FIELDS[preset].items()}
    if preset == "deimv2" and kwargs["focal_alpha"] is None:  # transformers: weight p^γ·(1 − t) + t
        kwargs["focal_alpha"] = 1.0
    return DETRLoss(
        _config_value(config, "num_labels", preset),
        preset,
        validate=validate,
        reduce_across_ranks=reduce_across_ranks,
        **_FIXED.get(preset, {}),
        **kwargs,
    )


def _aux(outputs_class: Tensor, outputs_coord: Tensor) -> list[dict[str, Tensor]]:
    """transformers' ``auxiliary_outputs``: one ``{"logits", "pred_boxes"}`` per entry of dim 0."""
    return [{"logits": a, "pred_boxes": b} for a, b in zip(outputs_class, outputs_coord, strict=True)]


def _distributed() -> bool:
    """Whether a torch.distributed process group is up (transformers then averages DETR's, Deformable
    DETR's and LW-DETR's box count over the ranks; RT-DETR's, D-FINE's and DEIMv2's it does not)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


class DetrLossFunction:
    """A transformers DETR-family loss function backed by :class:`~detloss.criteria.DETRLoss`.

    Called as the model's ``forward`` calls ``self.loss_function``; returns ``(loss, loss_dict,
    auxiliary_outputs)`` as transformers 5.24's ``ForObjectDetectionLoss`` (``"detr"``),
    ``DeformableDetrForObjectDetectionLoss`` (``"deformable"``), ``RTDetrForObjectDetectionLoss``
    (``"rtdetr"``), ``DFineForObjectDetectionLoss`` (``"dfine"``), ``Deimv2ForObjectDetectionLoss``
    (``"deimv2"``) or ``LwDetrForObjectDetectionLoss`` (``"lwdetr"``, LW-DETR and RF-DETR) does. Not an
    ``nn.Module``, so assigning it to a model registers no submodule.

    Args:
        preset: ``"detr" | "deformable" | "rtdetr" | "dfine" | "deimv2" | "lwdetr"``.
        validate: :class:`~detloss.criteria.DETRLoss`'s input checks (one host synchronisation).
    """

    def __init__(self, preset: Preset, *, validate: bool = True) -> None:
        if preset not in _CONFIG_FIELDS:
            raise ValueError(f"preset must be one of {tuple(_CONFIG_FIELDS)}, got {preset!r}")
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
        predicted_corners: Tensor | None = None,
        initial_reference_points: Tensor | None = None,
        *,
        enc_outputs_class: Tensor | None = None,
        enc_outputs_coord: Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, dict[str, Tensor], list[dict[str, Tensor]] | None]:
        """transformers' loss-function call (``device`` is unused: the inputs say where to compute;
        other keyword arguments, e.g. the attention flags D-FINE and DEIMv2 forward, are not used).

        Args:
            logits, pred_boxes: the final layer, ``(B, Q, C′)`` and ``(B, Q, 4)`` (RT-DETR, D-FINE, DEIMv2 in
                training: denoising queries first, split by ``denoising_meta_values["dn_num_split"]``;
                LW-DETR in training: G·Q queries, ``group_detr`` groups).
            labels: B dicts ``{"class_labels": (n,), "boxes": (n, 4) cxcywh normalised}``.
            config: the model's config (costs, gains, ``num_labels``, ``auxiliary_loss``).
            outputs_class, outputs_coord: every decoder layer, ``(L, B, Q, ·)`` (DETR, Deformable,
                LW-DETR) or ``(B, L, Q, ·)`` (RT-DETR; D-FINE, DEIMv2 ``(B, L + 1, Q, ·)``, the pre-head
                prediction first), used with ``config.auxiliary_loss``.
            enc_topk_logits, enc_topk_bboxes: the encoder proposals ``(B, Q_e, ·)``: RT-DETR's and
                D-FINE's top-k; LW-DETR's ``enc_outputs_class`` / ``enc_outputs_coord`` (passed in
                these positions by the model, or by those keywords), always part of its loss.
            denoising_meta_values: RT-DETR's, D-FINE's and DEIMv2's denoising groups (training only).
            predicted_corners, initial_reference_points: D-FINE's and DEIMv2's ``(B, L, Q, 4·(N + 1))`` corner
                distributions and ``(B, L, Q, 4)`` reference points.
        """
        if not isinstance(labels, Sequence) or isinstance(labels, Mapping):
            raise TypeError(f"labels must be a list of dicts, got {type(labels).__name__}")
        for i, t in enumerate(labels):
            if "class_labels" not in t or "boxes" not in t:
                raise KeyError(f"labels[{i}] must have the keys 'class_labels' and 'boxes', got {list(t)}")
        targets = [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in labels]
        enc_logits = enc_topk_logits if enc_topk_logits is not None else enc_outputs_class
        enc_boxes = enc_topk_bboxes if enc_topk_bboxes is not None else enc_outputs_coord
        if self.preset == "rtdetr":
            criterion = criterion_from_config(config, "rtdetr", validate=self.validate)
            return self._rtdetr(
                criterion, logits, pred_boxes, config, targets, outputs_class, outputs_coord,
                enc_logits, enc_boxes, denoising_meta_values,
            )  # fmt: skip
        if self.preset in ("dfine", "deimv2"):
            return self._dfine(
                logits, pred_boxes, config, targets, outputs_class, outputs_coord, enc_logits, enc_boxes,
                denoising_meta_values, predicted_corners, initial_reference_points,
            )  # fmt: skip
        aux = bool(config.auxiliary_loss)
        if aux and (outputs_class is None or outputs_coord is None):
            raise ValueError("config.auxiliary_loss is set but outputs_class or outputs_coord is None")
        # the final layer from logits / pred_boxes (what transformers' final term differentiates)
        layers_c = torch.cat((outputs_class[:-1], logits[None])) if aux else logits[None]
        layers_b = torch.cat((outputs_coord[:-1], pred_boxes[None])) if aux else pred_boxes[None]
        # transformers averages DETR's, Deformable's and LW-DETR's box count over accelerate's or
        # torch.distributed's processes (not RT-DETR's): the same over torch.distributed's
        criterion = criterion_from_config(
            config, self.preset, validate=self.validate, reduce_across_ranks=_distributed()
        )
        auxiliary_outputs = _aux(outputs_class[:-1], outputs_coord[:-1]) if aux else None
        if self.preset == "lwdetr":
            if enc_logits is None or enc_boxes is None:
                raise ValueError(
                    "LW-DETR's loss needs the encoder proposals (enc_outputs_class, enc_outputs_coord), "
                    "got None"
                )
            if aux and layers_c.shape[0] != config.decoder_layers:
                raise ValueError(
                    f"outputs_class has {layers_c.shape[0]} decoder layers but config.decoder_layers is "
                    f"{config.decoder_layers} (transformers weights the auxiliary keys of that many layers)"
                )
            result = criterion(layers_c, layers_b, targets, enc_logits=enc_logits, enc_boxes=enc_boxes)
        else:
            result = criterion(layers_c, layers_b, targets)
        return result.total, result.loss_dict(), auxiliary_outputs

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

    def _dfine(
        self,
        logits: Tensor,
        pred_boxes: Tensor,
        config: Any,
        targets: list[dict[str, Tensor]],
        outputs_class: Tensor | None,
        outputs_coord: Tensor | None,
        enc_logits: Tensor | None,
        enc_boxes: Tensor | None,
        dn_meta: Mapping[str, Any] | None,
        corners: Tensor | None,
        refs: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor], list[dict[str, Tensor]] | None]:
        """``DFineForObjectDetectionLoss`` (``"dfine"``) and ``Deimv2ForObjectDetectionLoss``
        (``"deimv2"``): every box clamped to [0, 1]; with ``auxiliary_loss`` the denoising queries
        dropped from the matched ones, the decoder's L + 1 outputs ``(B, L + 1, Q, ·)`` with its L
        layers' corners, the encoder proposals and the denoising groups (FGL and DDF on the auxiliary
        and denoising entries). In eval mode (one decoder output) the main output and the encoder
        proposals, without FGL and DDF. Without ``auxiliary_loss`` the main output alone: D-FINE's
        without its denoising queries, RT-DETR's three terms; DEIMv2's with them (transformers drops
        them only with ``auxiliary_loss``), MAL and the boxes."""
        num_dn = dn_meta["dn_num_split"][0] if dn_meta is not None else 0
        aux = bool(config.auxiliary_loss)
        if not aux and self.preset == "dfine":  # transformers: RT-DETR's terms of the clamped main output
            criterion = criterion_from_config(config, "rtdetr", validate=self.validate)
            result = criterion(logits[:, num_dn:], pred_boxes[:, num_dn:].clamp(0, 1), targets)
            return result.total, result.loss_dict(), None
        given = (outputs_class, outputs_coord, enc_logits, enc_boxes) if aux else ()
        if any(t is None for t in given + (corners, refs)):
            raise ValueError(
                (
                    "config.auxiliary_loss is set but outputs_class, outputs_coord, enc_topk_logits, "
                    if aux
                    else ""
                )
                + "predicted_corners or initial_reference_points is None"
            )
        if corners.shape[-1] != 4 * (config.max_num_bins + 1):
            raise ValueError(
                f"predicted_corners has {corners.shape[-1]} values per query but config.max_num_bins = "
                f"{config.max_num_bins} needs 4·(max_num_bins + 1) = {4 * (config.max_num_bins + 1)}"
            )
        criterion = criterion_from_config(config, self.preset, validate=self.validate)
        if not aux:
            # DEIMv2 without auxiliary entries: the main output, all its queries; it also fills the
            # slot L − 1 of the criterion's L + 1 outputs (which takes no part), beside the last
            # layer's corners (no FGL / DDF without auxiliary entries)
            co, rf = corners[:, -1:].transpose(0, 1), refs[:, -1:].transpose(0, 1)
            result = criterion(
                torch.stack((logits, logits)), torch.stack((pred_boxes, pred_boxes)), targets,
                corners=co, reference_points=rf,
            )  # fmt: skip
            return result.total, result.loss_dict(), None
        # eval mode: the decoder returns its evaluation layer alone (one output beside one layer's
        # corners), so transformers' auxiliary entries are the encoder's alone; that output fills
        # the slot L − 1 of the criterion's L + 1 outputs, which takes no part
        one_output = outputs_class.shape[1] == corners.shape[1] == 1
        if not one_output and outputs_class.shape[1] != corners.shape[1] + 1:
            raise ValueError(
                f"outputs_class must hold the decoder's L + 1 outputs beside predicted_corners' L layers, "
                f"got {tuple(outputs_class.shape)} and {tuple(corners.shape)}"
            )
        k = num_dn
        oc, ob, co, rf = outputs_class[:, :, k:], outputs_coord[:, :, k:], corners[:, :, k:], refs[:, :, k:]
        head_c, head_b = (oc, ob) if one_output else (oc[:, :-1], ob[:, :-1])
        # the final output from logits / pred_boxes (what transformers' final term differentiates)
        layers_c = torch.cat((head_c.transpose(0, 1), logits[None, :, k:]))
        layers_b = torch.cat((head_b.transpose(0, 1), pred_boxes[None, :, k:]))
        dn: dict[str, Any] = {}
        if dn_meta is not None:
            if one_output:
                raise ValueError("denoising_meta_values with one decoder output (eval mode) is not supported")
            dn = {
                "dn_logits": outputs_class[:, :, :k].transpose(0, 1),
                "dn_boxes": outputs_coord[:, :, :k].transpose(0, 1),
                "dn_corners": corners[:, :, :k].transpose(0, 1),
                "dn_reference_points": refs[:, :, :k].transpose(0, 1),
                "dn_meta": dn_meta,
            }
        result = criterion(
            layers_c, layers_b, targets, enc_logits=enc_logits, enc_boxes=enc_boxes,
            corners=co.transpose(0, 1), reference_points=rf.transpose(0, 1), **dn,
        )  # fmt: skip
        # transformers' auxiliary outputs: layer i < L − 1 with its corners and the teacher (the last
        # layer's corners, the last output's logits), then the encoder proposals; boxes clamped
        boxes = ob.clamp(0, 1)
        teacher = {"teacher_corners": co[:, -1], "teacher_logits": oc[:, -1]}
        auxiliary_outputs: list[dict[str, Tensor]] = [
            {"logits": oc[:, i], "pred_boxes": boxes[:, i], "pred_corners": co[:, i], "ref_points": rf[:, i]}
            | teacher
            for i in range(co.shape[1] - 1)
        ]
        auxiliary_outputs.append({"logits": enc_logits, "pred_boxes": enc_boxes.clamp(0, 1)})
        return result.total, result.loss_dict(), auxiliary_outputs


def use_detloss(model: Any, *, validate: bool = True) -> Any:
    """Make a transformers DETR-family detection model compute its training loss with detloss.

    Sets ``model.loss_function`` to a :class:`DetrLossFunction` of the model's preset
    (:func:`preset_for`); its configuration is read from the config the model passes at each call, so
    later changes to ``model.config`` apply. Returns the model.

    Args:
        model: a transformers ``DetrForObjectDetection``, ``DeformableDetrForObjectDetection``,
            ``RTDetrForObjectDetection``, ``RTDetrV2ForObjectDetection``, ``DFineForObjectDetection``,
            ``Deimv2ForObjectDetection``, ``LwDetrForObjectDetection`` or ``RfDetrForObjectDetection``.
        validate: :class:`~detloss.criteria.DETRLoss`'s input checks (one host synchronisation per call).

    Raises:
        NotImplementedError: RF-DETR's instance segmentation (no preset yet).
        TypeError: any other model.
        ValueError: a config without a preset (RT-DETR, D-FINE or DEIMv2 with ``use_focal_loss=False``).
    """
    preset = preset_for(model)
    criterion_from_config(model.config, preset, validate=validate)  # a config it cannot use fails here
    model.loss_function = DetrLossFunction(preset, validate=validate)
    return model
