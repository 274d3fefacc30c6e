"""detloss.integrations.transformers without transformers: the module imports no framework, the preset
of each model family, and the loss function's mapping of transformers' arguments (hand-made tensors and
config namespaces) against calling DETRLoss directly."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from detloss.criteria import DETRLoss
from detloss.integrations.transformers import (
    DetrLossFunction,
    criterion_from_config,
    preset_for,
    use_detloss,
)

C, L, B, Q = 4, 3, 2, 12
DETR_CONFIG = dict(
    num_labels=C, class_cost=1.0, bbox_cost=5.0, giou_cost=2.0, bbox_loss_coefficient=5.0,
    giou_loss_coefficient=2.0, eos_coefficient=0.1, focal_alpha=0.25, auxiliary_loss=True,
)  # fmt: skip
RTDETR_CONFIG = dict(
    num_labels=C, matcher_class_cost=2.0, matcher_bbox_cost=5.0, matcher_giou_cost=2.0, matcher_alpha=0.25,
    matcher_gamma=2.0, weight_loss_vfl=1.0, weight_loss_bbox=5.0, weight_loss_giou=2.0,
    focal_loss_alpha=0.75, focal_loss_gamma=2.0, use_focal_loss=True, auxiliary_loss=True,
)  # fmt: skip
NUM_BINS = 8
DFINE_CONFIG = dict(
    RTDETR_CONFIG, weight_loss_fgl=0.15, weight_loss_ddf=1.5, up=0.5, reg_scale=4.0, max_num_bins=NUM_BINS
)
DEIMV2_CONFIG = dict(DFINE_CONFIG, weight_loss_mal=1.0, mal_alpha=None, use_dense_one_to_one=True)
LWDETR_CONFIG = dict(
    num_labels=C, class_cost=2.0, bbox_cost=5.0, giou_cost=2.0, class_loss_coefficient=1.0,
    bbox_loss_coefficient=5.0, giou_loss_coefficient=2.0, focal_alpha=0.25, group_detr=3,
    auxiliary_loss=True, decoder_layers=L,
)  # fmt: skip


def fake_model(name: str, **config: object) -> object:
    """An object of a class named like transformers' model, with a config (what use_detloss reads)."""
    return type(name, (), {"config": SimpleNamespace(**config)})()


def labels(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (3, 0):
        boxes = torch.cat(
            (torch.rand(n, 2, generator=g) * 0.5 + 0.25, torch.rand(n, 2, generator=g) * 0.3 + 0.05), 1
        )
        out.append({"class_labels": torch.randint(0, C, (n,), generator=g), "boxes": boxes.double()})
    return out


def predictions(width: int, queries: int = Q, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(L, B, queries, width, generator=g, dtype=torch.float64)
    boxes = torch.rand(L, B, queries, 4, generator=g, dtype=torch.float64) * 0.4 + 0.1
    return logits, boxes


def targets(lab: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": t["boxes"], "labels": t["class_labels"]} for t in lab]


def test_import_does_not_import_transformers() -> None:
    code = "import sys, detloss.integrations.transformers; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("DetrForObjectDetection", "detr"),
        ("DeformableDetrForObjectDetection", "deformable"),
        ("RTDetrForObjectDetection", "rtdetr"),
        ("RTDetrV2ForObjectDetection", "rtdetr"),
        ("DFineForObjectDetection", "dfine"),
        ("Deimv2ForObjectDetection", "deimv2"),
        ("LwDetrForObjectDetection", "lwdetr"),
        ("RfDetrForObjectDetection", "lwdetr"),
    ],
)
def test_preset_for_each_family(name: str, preset: str) -> None:
    assert preset_for(fake_model(name)) == preset
    subclass = type("MyModel", (type(fake_model(name)),), {})
    assert preset_for(subclass()) == preset


@pytest.mark.parametrize("name", ["RfDetrForInstanceSegmentation"])
def test_other_families_not_implemented(name: str) -> None:
    with pytest.raises(NotImplementedError, match=name):
        use_detloss(fake_model(name, **RTDETR_CONFIG))


def test_unknown_model_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="YolosForObjectDetection"):
        use_detloss(fake_model("YolosForObjectDetection"))


def test_use_detloss_sets_loss_function() -> None:
    model = fake_model("RTDetrForObjectDetection", **RTDETR_CONFIG)
    assert use_detloss(model, validate=False) is model
    assert isinstance(model.loss_function, DetrLossFunction)
    assert (model.loss_function.preset, model.loss_function.validate) == ("rtdetr", False)


def test_use_detloss_rejects_softmax_rtdetr() -> None:
    model = fake_model("RTDetrForObjectDetection", **{**RTDETR_CONFIG, "use_focal_loss": False})
    with pytest.raises(ValueError, match="use_focal_loss"):
        use_detloss(model)


@pytest.mark.parametrize("preset", ["detr", "deformable"])
@pytest.mark.parametrize("aux", [True, False])
def test_detr_and_deformable_mapping(preset: str, aux: bool) -> None:
    config = SimpleNamespace(**{**DETR_CONFIG, "auxiliary_loss": aux, "bbox_loss_coefficient": 3.0})
    width = C + 1 if preset == "detr" else C
    oc, ob = predictions(width)
    lab = labels()
    fn = DetrLossFunction(preset)
    loss, loss_dict, aux_out = fn(
        oc[-1], lab, "cpu", ob[-1], config, oc if aux else None, ob if aux else None
    )

    crit = DETRLoss(C, preset, class_cost=1.0, cls=1.0, bbox=3.0, giou=2.0, eos_coef=0.1, focal_alpha=0.25)
    ref = crit(oc if aux else oc[-1:], ob if aux else ob[-1:], targets(lab))
    torch.testing.assert_close(loss, ref.total)
    terms = ref.loss_dict()
    n = L if aux else 1
    suffixes = [""] + [f"_{i}" for i in range(n - 1)]
    keys = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
    assert list(loss_dict) == [k + s for s in suffixes for k in keys]
    for key, value in terms.items():
        torch.testing.assert_close(loss_dict[key], value)
    # transformers' total: loss_ce·1 + loss_bbox·bbox_loss_coefficient + loss_giou·giou_loss_coefficient
    weights = {"loss_ce": 1.0, "loss_bbox": 3.0, "loss_giou": 2.0, "cardinality_error": 0.0}
    torch.testing.assert_close(loss, sum(v * weights[k.rstrip("_0123456789")] for k, v in loss_dict.items()))
    # cardinality: mean over images of |queries predicted non-empty − targets|
    layers = oc if aux else oc[-1:]
    for i, s in enumerate(suffixes):
        layer = layers[(i - 1) % n]
        found = layer.argmax(-1) != C if preset == "detr" else layer.sigmoid().max(-1).values > 0.5
        want = (found.sum(1).float() - torch.tensor([3.0, 0.0])).abs().mean()
        torch.testing.assert_close(loss_dict["cardinality_error" + s], want)
    if aux:
        assert len(aux_out) == L - 1
        assert all(a["logits"] is not None and a["logits"].shape == (B, Q, width) for a in aux_out)
        torch.testing.assert_close(aux_out[0]["pred_boxes"], ob[0])
    else:
        assert aux_out is None


def dn_meta(groups: int = 2) -> tuple[dict[str, object], int]:
    """Denoising groups as RT-DETR lays them out: G groups of 2·max n queries, positives first."""
    counts, m = (3, 0), 3
    pos = tuple(torch.arange(m * 2 * groups).view(groups, 2 * m)[:, :k].reshape(-1) for k in counts)
    q_dn = 2 * m * groups
    return {"dn_positive_idx": pos, "dn_num_group": groups, "dn_num_split": [q_dn, Q]}, q_dn


def test_rtdetr_mapping_with_denoising_and_encoder() -> None:
    config = SimpleNamespace(**{**RTDETR_CONFIG, "weight_loss_bbox": 4.0})
    meta, q_dn = dn_meta()
    oc, ob = predictions(C, q_dn + Q)  # (L, B, Q_dn + Q, ·)
    g = torch.Generator().manual_seed(3)
    enc_l = torch.randn(B, Q, C, generator=g, dtype=torch.float64)
    enc_b = torch.rand(B, Q, 4, generator=g, dtype=torch.float64) * 0.4 + 0.1
    lab = labels()
    oc_t, ob_t = oc.transpose(0, 1), ob.transpose(0, 1)  # transformers' (B, L, ·, ·)
    loss, loss_dict, aux_out = DetrLossFunction("rtdetr")(
        oc_t[:, -1], lab, "cpu", ob_t[:, -1], config, oc_t, ob_t,
        enc_topk_logits=enc_l, enc_topk_bboxes=enc_b, denoising_meta_values=meta, predicted_corners=None,
    )  # fmt: skip

    crit = DETRLoss(C, "rtdetr", bbox=4.0)
    ref = crit(
        oc[:, :, q_dn:], ob[:, :, q_dn:], targets(lab), enc_logits=enc_l, enc_boxes=enc_b,
        dn_logits=oc[:, :, :q_dn], dn_boxes=ob[:, :, :q_dn], dn_meta=meta,
    )  # fmt: skip
    torch.testing.assert_close(loss, ref.total)
    assert list(loss_dict) == list(ref.loss_dict())
    assert len(loss_dict) == 3 * (L + 1 + L)  # layers, encoder, denoising layers
    for key, value in ref.loss_dict().items():
        torch.testing.assert_close(loss_dict[key], value)
    torch.testing.assert_close(loss, sum(loss_dict.values()))  # weighted, as transformers' RT-DETR
    assert len(aux_out) == L  # L − 1 decoder layers, then the encoder proposals
    torch.testing.assert_close(aux_out[0]["logits"], oc[0, :, q_dn:])
    assert aux_out[-1]["logits"] is enc_l and aux_out[-1]["pred_boxes"] is enc_b


def test_rtdetr_without_auxiliary_loss_drops_denoising_queries() -> None:
    config = SimpleNamespace(**{**RTDETR_CONFIG, "auxiliary_loss": False})
    meta, q_dn = dn_meta()
    oc, ob = predictions(C, q_dn + Q)
    lab = labels()
    loss, loss_dict, aux_out = DetrLossFunction("rtdetr")(
        oc[-1], lab, "cpu", ob[-1], config, denoising_meta_values=meta
    )
    ref = DETRLoss(C, "rtdetr")(oc[-1, :, q_dn:], ob[-1, :, q_dn:], targets(lab))
    torch.testing.assert_close(loss, ref.total)
    assert list(loss_dict) == ["loss_vfl", "loss_bbox", "loss_giou"] and aux_out is None


def test_config_values_reach_the_criterion() -> None:
    crit = criterion_from_config(SimpleNamespace(**{**DETR_CONFIG, "eos_coefficient": 0.3}), "detr")
    assert (crit.class_cost, crit.gains["bbox"], crit.eos_coef, crit.gains["cls"]) == (1.0, 5.0, 0.3, 1.0)
    crit = criterion_from_config(SimpleNamespace(**{**RTDETR_CONFIG, "focal_loss_alpha": 0.6}), "rtdetr")
    assert (crit.focal_alpha, crit.cost_alpha, crit.class_cost) == (0.6, 0.25, 2.0)
    with pytest.raises(ValueError, match="preset"):
        DetrLossFunction("ssd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="preset"):
        criterion_from_config(SimpleNamespace(**DETR_CONFIG), "ssd")  # type: ignore[arg-type]


def test_labels_are_checked() -> None:
    oc, ob = predictions(C + 1)
    config = SimpleNamespace(**DETR_CONFIG)
    with pytest.raises(KeyError, match=r"labels\[0\]"):
        DetrLossFunction("detr")(oc[-1], [{"boxes": ob[0, 0]}], "cpu", ob[-1], config, oc, ob)
    with pytest.raises(TypeError, match="labels"):
        DetrLossFunction("detr")(oc[-1], {"boxes": ob[0, 0]}, "cpu", ob[-1], config, oc, ob)


def test_every_dfine_and_lwdetr_field_reaches_the_criterion() -> None:
    # distinct values, so a field read for another argument shows
    dfine = dict(
        DFINE_CONFIG, matcher_class_cost=2.5, matcher_bbox_cost=4.5, matcher_giou_cost=1.5, matcher_alpha=0.3,
        matcher_gamma=1.5, weight_loss_vfl=1.2, weight_loss_bbox=4.0, weight_loss_giou=2.5,
        weight_loss_fgl=0.2, weight_loss_ddf=1.7, focal_loss_alpha=0.7, focal_loss_gamma=1.8, up=0.6,
        reg_scale=3.0,
    )  # fmt: skip
    crit = criterion_from_config(SimpleNamespace(**dfine), "dfine")
    assert (crit.preset, crit.num_classes) == ("dfine", C)
    assert (crit.class_cost, crit.bbox_cost, crit.giou_cost, crit.cost_alpha, crit.cost_gamma) == (
        2.5, 4.5, 1.5, 0.3, 1.5,
    )  # fmt: skip
    assert crit.gains == {"cls": 1.2, "bbox": 4.0, "giou": 2.5, "fgl": 0.2, "ddf": 1.7}
    assert (crit.focal_alpha, crit.focal_gamma, crit.up, crit.reg_scale) == (0.7, 1.8, 0.6, 3.0)
    lw = dict(
        LWDETR_CONFIG, class_cost=2.5, bbox_cost=4.5, giou_cost=1.5, class_loss_coefficient=1.2,
        bbox_loss_coefficient=4.0, giou_loss_coefficient=2.5, focal_alpha=0.3, group_detr=4,
    )  # fmt: skip
    deim = dict(dfine, weight_loss_mal=1.3, mal_alpha=None, use_dense_one_to_one=False)
    crit = criterion_from_config(SimpleNamespace(**deim), "deimv2")
    assert (crit.preset, crit.class_cost, crit.cost_alpha, crit.cost_gamma) == ("deimv2", 2.5, 0.3, 1.5)
    assert crit.gains == {"cls": 1.3, "bbox": 4.0, "giou": 2.5, "fgl": 0.2, "ddf": 1.7}
    # mal_alpha None: MAL without alpha (1); its gamma is focal_loss_gamma; focal_loss_alpha unused
    assert (crit.focal_alpha, crit.focal_gamma, crit.up, crit.reg_scale) == (1.0, 1.8, 0.6, 3.0)
    assert crit.dense_one_to_one is False
    crit = criterion_from_config(
        SimpleNamespace(**{**deim, "mal_alpha": 0.4, "use_dense_one_to_one": True}), "deimv2"
    )
    assert (crit.focal_alpha, crit.dense_one_to_one) == (0.4, True)
    crit = criterion_from_config(SimpleNamespace(**lw), "lwdetr")
    assert (crit.preset, crit.class_cost, crit.bbox_cost, crit.giou_cost) == ("lwdetr", 2.5, 4.5, 1.5)
    assert crit.gains == {"cls": 1.2, "bbox": 4.0, "giou": 2.5}
    # transformers' constants: the matcher's alpha 0.25, gamma 2; IA-BCE's gamma 2
    assert (crit.focal_alpha, crit.group_detr, crit.cost_alpha, crit.cost_gamma, crit.focal_gamma) == (
        0.3, 4, 0.25, 2.0, 2.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "config", "field"),
    [
        ("DFineForObjectDetection", DFINE_CONFIG, "weight_loss_ddf"),
        ("DFineForObjectDetection", DFINE_CONFIG, "up"),
        ("Deimv2ForObjectDetection", DEIMV2_CONFIG, "mal_alpha"),
        ("Deimv2ForObjectDetection", DEIMV2_CONFIG, "use_dense_one_to_one"),
        ("LwDetrForObjectDetection", LWDETR_CONFIG, "group_detr"),
        ("RfDetrForObjectDetection", LWDETR_CONFIG, "class_loss_coefficient"),
    ],
)
def test_a_missing_config_field_is_named(name: str, config: dict[str, object], field: str) -> None:
    config = {k: v for k, v in config.items() if k != field}
    with pytest.raises(AttributeError, match=f"'{field}'"):
        use_detloss(fake_model(name, **config))


@pytest.mark.parametrize("name", ["DFineForObjectDetection", "Deimv2ForObjectDetection"])
def test_use_detloss_rejects_softmax_dfine_and_deimv2(name: str) -> None:
    with pytest.raises(ValueError, match="use_focal_loss"):
        use_detloss(fake_model(name, **{**DEIMV2_CONFIG, "use_focal_loss": False}))


def lw_inputs(groups: int = 3, per_group: int = 4) -> tuple[torch.Tensor, ...]:
    """LW-DETR's training outputs: ``(L, B, G·S, ·)`` decoder layers, the encoder's ``(B, G·S, ·)``."""
    oc, ob = predictions(C, groups * per_group)
    g = torch.Generator().manual_seed(4)
    enc_l = torch.randn(B, groups * per_group, C, generator=g, dtype=torch.float64)
    enc_b = torch.rand(B, groups * per_group, 4, generator=g, dtype=torch.float64) * 0.4 + 0.1
    return oc, ob, enc_l, enc_b


@pytest.mark.parametrize("aux", [True, False])
def test_lwdetr_mapping(aux: bool) -> None:
    config = SimpleNamespace(**{**LWDETR_CONFIG, "auxiliary_loss": aux, "bbox_loss_coefficient": 3.0})
    oc, ob, enc_l, enc_b = lw_inputs()
    lab = labels()
    fn = DetrLossFunction("lwdetr")
    # the model passes the encoder proposals positionally, in RT-DETR's enc_topk positions
    loss, loss_dict, aux_out = fn(
        oc[-1], lab, "cpu", ob[-1], config, oc if aux else None, ob if aux else None, enc_l, enc_b
    )
    by_keyword = fn(
        oc[-1], lab, "cpu", ob[-1], config, oc if aux else None, ob if aux else None,
        enc_outputs_class=enc_l, enc_outputs_coord=enc_b,
    )  # fmt: skip
    torch.testing.assert_close(by_keyword[0], loss, rtol=0, atol=0)

    crit = DETRLoss(C, "lwdetr", bbox=3.0, group_detr=3)
    layers = oc if aux else oc[-1:]
    ref = crit(layers, ob if aux else ob[-1:], targets(lab), enc_logits=enc_l, enc_boxes=enc_b)
    torch.testing.assert_close(loss, ref.total)
    n = L if aux else 1
    suffixes = [""] + [f"_{i}" for i in range(n - 1)] + ["_enc"]
    keys = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
    assert list(loss_dict) == [k + s for s in suffixes for k in keys]  # transformers' order
    for key, value in ref.loss_dict().items():
        torch.testing.assert_close(loss_dict[key], value)
    # unweighted; transformers' total weights class_loss_coefficient, bbox_…, giou_… (encoder alike)
    weights = {"loss_ce": 1.0, "loss_bbox": 3.0, "loss_giou": 2.0, "cardinality_error": 0.0}
    base = {k: k.removesuffix("_enc").rstrip("_0123456789") for k in loss_dict}
    torch.testing.assert_close(loss, sum(v * weights[base[k]] for k, v in loss_dict.items()))
    # cardinality: over all G·S queries, the encoder's too
    for s, layer in zip(suffixes, [layers[-1]] + list(layers[:-1]) + [enc_l], strict=True):
        found = layer.sigmoid().max(-1).values > 0.5
        want = (found.sum(1).float() - torch.tensor([3.0, 0.0])).abs().mean()
        torch.testing.assert_close(loss_dict["cardinality_error" + s], want)
    if aux:
        assert len(aux_out) == L - 1 and all(list(a) == ["logits", "pred_boxes"] for a in aux_out)
        torch.testing.assert_close(aux_out[0]["logits"], oc[0])
    else:
        assert aux_out is None


def test_lwdetr_errors() -> None:
    oc, ob, enc_l, enc_b = lw_inputs()
    fn, lab = DetrLossFunction("lwdetr"), labels()
    with pytest.raises(ValueError, match="encoder proposals"):
        fn(oc[-1], lab, "cpu", ob[-1], SimpleNamespace(**LWDETR_CONFIG), oc, ob)
    with pytest.raises(ValueError, match="decoder_layers"):
        config = SimpleNamespace(**{**LWDETR_CONFIG, "decoder_layers": L + 1})
        fn(oc[-1], lab, "cpu", ob[-1], config, oc, ob, enc_l, enc_b)
    with pytest.raises(ValueError, match="group_detr"):  # fewer queries than groups
        config = SimpleNamespace(**{**LWDETR_CONFIG, "group_detr": 13})
        fn(oc[-1], lab, "cpu", ob[-1], config, oc, ob, enc_l, enc_b)


def dfine_inputs(q_dn: int) -> tuple[torch.Tensor, ...]:
    """A D-FINE step as the model passes it: ``outputs_class`` / ``outputs_coord`` ``(B, L + 1, Q_dn + Q,
    ·)`` (boxes a little outside [0, 1]: the loss clamps them), ``predicted_corners`` ``(B, L, ·, 4·(N +
    1))``, ``initial_reference_points``, the encoder's top-k."""
    oc, ob = predictions(C, q_dn + Q)
    g = torch.Generator().manual_seed(5)
    oc = torch.cat((oc, torch.randn(1, B, q_dn + Q, C, generator=g, dtype=torch.float64)))
    oc = oc.transpose(0, 1)  # (B, L + 1, ·, C)
    ob = torch.cat((ob, torch.rand(1, B, q_dn + Q, 4, generator=g, dtype=torch.float64) * 0.4 + 0.1))
    ob = (ob * 1.3 - 0.1).transpose(0, 1)
    corners = torch.randn(B, L, q_dn + Q, 4 * (NUM_BINS + 1), generator=g, dtype=torch.float64)
    refs = torch.rand(B, L, q_dn + Q, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2
    enc_l = torch.randn(B, Q, C, generator=g, dtype=torch.float64)
    enc_b = torch.rand(B, Q, 4, generator=g, dtype=torch.float64) * 1.2 - 0.1
    return oc, ob, corners, refs, enc_l, enc_b


@pytest.mark.parametrize("preset", ["dfine", "deimv2"])
@pytest.mark.parametrize("denoising", [True, False])
def test_dfine_and_deimv2_mapping(preset: str, denoising: bool) -> None:
    config = SimpleNamespace(**{**DEIMV2_CONFIG, "weight_loss_fgl": 0.3})
    meta, q_dn = dn_meta() if denoising else (None, 0)
    oc, ob, corners, refs, enc_l, enc_b = dfine_inputs(q_dn)
    lab = labels()
    loss, loss_dict, aux_out = DetrLossFunction(preset)(
        oc[:, -1], lab, "cpu", ob[:, -1], config, oc, ob, enc_topk_logits=enc_l, enc_topk_bboxes=enc_b,
        denoising_meta_values=meta, predicted_corners=corners, initial_reference_points=refs,
    )  # fmt: skip

    def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # → (L·, B, ·, ·) decoder, denoising
        return t[:, :, q_dn:].transpose(0, 1), t[:, :, :q_dn].transpose(0, 1)

    (c, dc), (b, db), (co, dco), (r, dr) = split(oc), split(ob), split(corners), split(refs)
    dn = dict(dn_logits=dc, dn_boxes=db, dn_meta=meta, dn_corners=dco, dn_reference_points=dr)
    crit = DETRLoss(C, preset, fgl=0.3)  # DEIMv2: MAL without alpha, the dense one-to-one union
    ref = crit(
        c, b, targets(lab), enc_logits=enc_l, enc_boxes=enc_b, corners=co, reference_points=r,
        **(dn if denoising else {}),
    )  # fmt: skip
    torch.testing.assert_close(loss, ref.total)
    assert list(loss_dict) == list(ref.loss_dict())
    for key, value in ref.loss_dict().items():
        torch.testing.assert_close(loss_dict[key], value)
    torch.testing.assert_close(loss, sum(loss_dict.values()))  # weighted, as transformers' D-FINE
    assert "loss_fgl_aux_0" in loss_dict and "loss_fgl" not in loss_dict
    assert ("loss_mal" if preset == "deimv2" else "loss_vfl") in loss_dict
    assert ("loss_ddf_dn_0" in loss_dict) == denoising
    # transformers' auxiliary outputs: L − 1 layers with their corners and the teacher, then the encoder
    assert len(aux_out) == L
    local = ["logits", "pred_boxes", "pred_corners", "ref_points", "teacher_corners", "teacher_logits"]
    assert all(list(a) == local for a in aux_out[:-1]) and list(aux_out[-1]) == ["logits", "pred_boxes"]
    torch.testing.assert_close(aux_out[1]["pred_boxes"], ob[:, 1, q_dn:].clamp(0, 1))
    torch.testing.assert_close(aux_out[0]["teacher_corners"], corners[:, -1, q_dn:])
    torch.testing.assert_close(aux_out[0]["teacher_logits"], oc[:, -1, q_dn:])
    torch.testing.assert_close(aux_out[-1]["pred_boxes"], enc_b.clamp(0, 1))


def test_dfine_without_auxiliary_loss_is_the_clamped_main_output() -> None:
    config = SimpleNamespace(**{**DFINE_CONFIG, "auxiliary_loss": False})
    meta, q_dn = dn_meta()
    oc, ob, *_ = dfine_inputs(q_dn)
    lab = labels()
    loss, loss_dict, aux_out = DetrLossFunction("dfine")(
        oc[:, -1], lab, "cpu", ob[:, -1], config, denoising_meta_values=meta
    )
    ref = DETRLoss(C, "rtdetr")(oc[:, -1, q_dn:], ob[:, -1, q_dn:].clamp(0, 1), targets(lab))
    torch.testing.assert_close(loss, ref.total)
    assert list(loss_dict) == ["loss_vfl", "loss_bbox", "loss_giou"] and aux_out is None


def test_dfine_errors() -> None:
    meta, q_dn = dn_meta()
    oc, ob, corners, refs, enc_l, enc_b = dfine_inputs(q_dn)
    fn, lab, config = DetrLossFunction("dfine"), labels(), SimpleNamespace(**DFINE_CONFIG)
    with pytest.raises(ValueError, match="predicted_corners"):
        fn(oc[:, -1], lab, "cpu", ob[:, -1], config, oc, ob, enc_l, enc_b, meta)
    with pytest.raises(ValueError, match="max_num_bins"):
        config = SimpleNamespace(**{**DFINE_CONFIG, "max_num_bins": 16})
        fn(oc[:, -1], lab, "cpu", ob[:, -1], config, oc, ob, enc_l, enc_b, meta, corners, refs)
    with pytest.raises(ValueError, match="L \\+ 1 outputs"):
        config = SimpleNamespace(**DFINE_CONFIG)
        fn(oc[:, -1], lab, "cpu", ob[:, -1], config, oc[:, 1:], ob[:, 1:], enc_l, enc_b, meta, corners, refs)


def test_dfine_eval_mode_has_the_main_output_and_the_encoder() -> None:
    # in eval mode the decoder returns its evaluation layer alone: (B, 1, Q, ·), corners (B, 1, Q, ·)
    oc, ob, corners, refs, enc_l, enc_b = dfine_inputs(0)
    oc, ob, corners, refs = oc[:, -1:], ob[:, -1:], corners[:, -1:], refs[:, -1:]
    lab, config = labels(), SimpleNamespace(**DFINE_CONFIG)
    loss, loss_dict, aux_out = DetrLossFunction("dfine")(
        oc[:, -1], lab, "cpu", ob[:, -1], config, oc, ob, enc_l, enc_b, None, corners, refs
    )
    ref = DETRLoss(C, "rtdetr")(
        oc[:, -1][None],
        ob[:, -1][None].clamp(0, 1),
        targets(lab),
        enc_logits=enc_l,
        enc_boxes=enc_b.clamp(0, 1),
    )
    torch.testing.assert_close(loss, ref.total)
    assert list(loss_dict) == [k + s for s in ("", "_aux_0") for k in ("loss_vfl", "loss_bbox", "loss_giou")]
    assert len(aux_out) == 1 and aux_out[0]["logits"] is enc_l


def test_deimv2_without_auxiliary_loss_keeps_the_denoising_queries() -> None:
    # transformers' DEIMv2 drops the denoising queries only with auxiliary_loss (D-FINE always)
    config = SimpleNamespace(**{**DEIMV2_CONFIG, "auxiliary_loss": False})
    meta, q_dn = dn_meta()
    oc, ob, corners, refs, *_ = dfine_inputs(q_dn)
    lab = labels()
    fn = DetrLossFunction("deimv2")
    loss, loss_dict, aux_out = fn(
        oc[:, -1], lab, "cpu", ob[:, -1], config, denoising_meta_values=meta, predicted_corners=corners,
        initial_reference_points=refs,
    )  # fmt: skip
    assert list(loss_dict) == ["loss_mal", "loss_bbox", "loss_giou"] and aux_out is None
    # the main output alone (all its queries), MAL and the boxes over its matching: it also fills the
    # criterion's non-participating slot L − 1
    main_c, main_b = oc[:, -1], ob[:, -1]
    ref = DETRLoss(C, "deimv2")(
        torch.stack((main_c, main_c)), torch.stack((main_b, main_b)), targets(lab),
        corners=corners[:, -1:].transpose(0, 1), reference_points=refs[:, -1:].transpose(0, 1),
    )  # fmt: skip
    torch.testing.assert_close(loss, ref.total)
    dropped = fn(oc[:, -1, q_dn:], lab, "cpu", ob[:, -1, q_dn:], config, None, None, None, None, None,
                 corners[:, :, q_dn:], refs[:, :, q_dn:])  # fmt: skip
    assert not torch.equal(dropped[0], loss)
    with pytest.raises(ValueError, match="predicted_corners"):
        fn(oc[:, -1], lab, "cpu", ob[:, -1], config, denoising_meta_values=meta)
