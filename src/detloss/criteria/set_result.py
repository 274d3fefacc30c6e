"""The result of a DETR-family criterion: the per-entry terms and transformers' loss dictionary."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .result import LossResult

# the class term's key in transformers' loss dictionary, per preset
CLASS_KEY = {
    "detr": "loss_ce",
    "deformable": "loss_ce",
    "rtdetr": "loss_vfl",
    "lwdetr": "loss_ce",
    "dfine": "loss_vfl",
    "deimv2": "loss_mal",
}
# the presets whose dictionary transformers weights (the RT-DETR family)
WEIGHTED = ("rtdetr", "dfine", "deimv2")


@dataclass
class SetLossResult(LossResult):
    """:class:`LossResult` plus the per-entry terms.

    Attributes:
        layers: per decoder layer, ``{"cls", "bbox", "giou"}`` (gains applied), in input layer order.
        entries: the other entries, by name, in the same form: ``"enc"`` (encoder proposals) and
            ``"dn_0"`` … ``"dn_{L_dn−1}"`` (denoising groups of each decoder layer), those given.
        preset: the criterion's preset (names the keys of :meth:`loss_dict`).
        unweighted: ``(E, 3)`` the same terms without the gains, rows in the order layers, ``entries``.
        cardinality: ``(E_m,)`` float32, ``"detr"``, ``"deformable"``, ``"lwdetr"`` only: per matched
            entry (the layers, then the encoder) transformers' ``cardinality_error``, the batch mean of
            |non-empty queries − targets| per image, a query non-empty when its argmax is not no-object
            (``"detr"``) or its highest σ exceeds 0.5; a log value without gradient.

    ``components`` are the sums over every layer and entry; ``total`` their sum.
    """

    layers: list[dict[str, Tensor]] = field(default_factory=list)
    entries: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    preset: str = "detr"
    unweighted: Tensor | None = field(default=None, repr=False)
    cardinality: Tensor | None = field(default=None, repr=False)

    def loss_dict(self) -> dict[str, Tensor]:
        """The terms under transformers 5.24's loss-dictionary keys, in its order.

        The last layer is unsuffixed (``loss_vfl``/``loss_ce``, ``loss_bbox``, ``loss_giou``), then:

        - ``"rtdetr"``, ``"dfine"``, ``"deimv2"`` (``RTDetrLoss`` and its D-FINE and DEIMv2 subclasses:
          weighted by ``weight_dict``, as ``components``; with ``loss_fgl``, ``loss_ddf`` on the
          auxiliary and denoising entries): layer i < L − 1
          ``…_aux_{i}``, the encoder ``…_aux_{L−1}`` (transformers appends it to the auxiliary
          outputs), denoising layer i ``…_dn_{i}``; ``sum(d.values()) == total``.
        - ``"detr"``, ``"deformable"``, ``"lwdetr"`` (``ForObjectDetectionLoss``,
          ``DeformableDetrForObjectDetectionLoss``, ``LwDetrForObjectDetectionLoss``: unweighted,
          transformers applies ``weight_dict`` outside the dictionary): layer i < L − 1 ``…_{i}``, the
          encoder ``…_enc`` (LW-DETR's key; DETR and Deformable have none), ``…_dn_{i}``; after each
          layer's and the encoder's three terms its ``cardinality_error`` (:attr:`cardinality`).
        """
        weighted = self.preset in WEIGHTED
        keys = (CLASS_KEY[self.preset], "loss_bbox", "loss_giou", "loss_fgl", "loss_ddf")
        num_layers = len(self.layers)
        names = [f"layer_{i}" for i in range(num_layers)] + list(self.entries)
        rows = self.layers + list(self.entries.values())
        raw = self.unweighted.unbind() if self.unweighted is not None and not weighted else None
        suffix = {f"layer_{num_layers - 1}": ""}
        aux = "_aux_" if weighted else "_"
        suffix.update({f"layer_{i}": f"{aux}{i}" for i in range(num_layers - 1)})
        suffix["enc"] = f"_aux_{num_layers - 1}" if weighted else "_enc"
        out: dict[str, Tensor] = {}
        order = [names[num_layers - 1]] + names[: num_layers - 1] + names[num_layers:]  # main first
        # D-FINE: the main output and the encoder have no corners, so no FGL/DDF keys
        plain = {names[num_layers - 1], "enc"}
        for name in order:
            e = names.index(name)
            values = list(rows[e].values() if raw is None else raw[e].unbind())
            values = values[:3] if name in plain else values
            for key, value in zip(keys, values, strict=False):
                out[key + suffix.get(name, f"_{name}")] = value
            if self.cardinality is not None and e < self.cardinality.shape[0]:
                out["cardinality_error" + suffix.get(name, f"_{name}")] = self.cardinality[e]
        return out
