"""detloss.integrations.transformers with transformers itself (skipped where it is not installed, as in
CI): on small models with random weights, in training mode (denoising on where the model has it), the
same loss, loss dictionary, auxiliary outputs and gradients as the model's built-in loss.

float64, except D-FINE and DEIMv2: transformers' D-FINE loss (DEIMv2's extends it) fails for float64
inputs (its ``translate_gt`` writes float64 values into float32 tensors), so they run in float32 with
float32 tolerances."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from detloss.integrations.transformers import DetrLossFunction, use_detloss  # noqa: E402

C = 5


def build_lw(name: str):
    """LW-DETR or RF-DETR: a tiny ViT / DINOv2 backbone, 2 decoder layers, 3 query groups of 4."""
    small = dict(
        num_labels=C, d_model=32, decoder_ffn_dim=32, decoder_layers=2, decoder_self_attention_heads=2,
        decoder_cross_attention_heads=2, decoder_n_points=2, num_queries=4, group_detr=3,
    )  # fmt: skip
    vit = dict(image_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
    if name == "lwdetr":
        backbone = transformers.LwDetrViTConfig(
            window_block_indices=[0], out_indices=[1, 2], num_windows=4, **vit
        )
        config = transformers.LwDetrConfig(
            backbone_config=backbone, projector_scale_factors=[1.0], c2f_num_blocks=1, **small
        )
        return transformers.LwDetrForObjectDetection(config)
    backbone = transformers.RfDetrDinov2Config(out_indices=[1, 2], num_windows=2, **vit)
    config = transformers.RfDetrConfig(backbone_config=backbone, intermediate_size=32, **small)
    return transformers.RfDetrForObjectDetection(config)


def build(name: str, **extra: object):
    """A small model of family ``name`` with random weights (seed 0); ``extra`` config fields for
    D-FINE and DEIMv2."""
    torch.manual_seed(0)
    if name in ("lwdetr", "rfdetr"):
        return build_lw(name)
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
        out_features=["stage2", "stage3", "stage4"],
    )  # fmt: skip
    small = {"num_labels": C, "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "num_queries": 8}
    small.update(encoder_ffn_dim=32, decoder_ffn_dim=32, backbone_config=backbone)
    heads = {"encoder_attention_heads": 2, "decoder_attention_heads": 2}
    if name == "detr":
        config = transformers.DetrConfig(auxiliary_loss=True, use_pretrained_backbone=False, **heads, **small)
        return transformers.DetrForObjectDetection(config)
    if name == "deformable":
        config = transformers.DeformableDetrConfig(
            auxiliary_loss=True, encoder_n_points=2, decoder_n_points=2, **heads, **small
        )
        return transformers.DeformableDetrForObjectDetection(config)
    rt = dict(encoder_hidden_dim=32, decoder_in_channels=[32] * 3, num_denoising=8, **small)
    if name in ("dfine", "deimv2"):
        config_cls, model_cls = {
            "dfine": (transformers.DFineConfig, transformers.DFineForObjectDetection),
            "deimv2": (transformers.Deimv2Config, transformers.Deimv2ForObjectDetection),
        }[name]
        local = dict(encoder_in_channels=[16] * 3, max_num_bins=8, lqe_hidden_dim=8, decoder_n_points=2)
        return model_cls(config_cls(**local, **heads, **rt, **extra))
    return transformers.RTDetrForObjectDetection(transformers.RTDetrConfig(**rt))


def step(model, pixels, labels):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # the denoising groups and dropout alike for both losses
    out = model(pixel_values=pixels, labels=labels)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    aux = [{k: v.detach() for k, v in a.items()} for a in out.auxiliary_outputs or []]
    return out.loss.detach(), {k: v.detach() for k, v in out.loss_dict.items()}, grads, aux


# float64: values to roundoff; float32 (D-FINE, DEIMv2): the same matches, sums in another order
TOLERANCES = {torch.float64: (1e-10, 1e-12, 1e-10), torch.float32: (1e-5, 1e-6, 1e-4)}


# eval mode with labels: D-FINE's and DEIMv2's decoder returns one output, LW-DETR's one query group
# (its loss still splits the queries into group_detr groups)
# DEIMv2 without auxiliary_loss keeps its denoising queries in the main output; without the dense
# one-to-one union and with MAL's alpha
@pytest.mark.parametrize(
    ("name", "training", "extra"),
    [(n, True, {}) for n in ("detr", "deformable", "rtdetr", "dfine", "deimv2", "lwdetr", "rfdetr")]
    + [("dfine", False, {}), ("deimv2", False, {}), ("lwdetr", False, {})]
    + [("deimv2", True, {"auxiliary_loss": False})]
    + [("deimv2", True, {"use_dense_one_to_one": False, "mal_alpha": 0.3})],
)
def test_same_loss_dict_and_gradients_as_builtin(name: str, training: bool, extra: dict) -> None:
    dtype = torch.float32 if name in ("dfine", "deimv2") else torch.float64
    rtol, atol, grad_tol = TOLERANCES[dtype]
    model = build(name, **extra).train(training).to(dtype)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64).to(dtype)
    labels = [
        {
            "class_labels": torch.tensor([1, 3]),
            "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]]),
        },
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    labels = [{k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()} for t in labels]
    torch.set_default_dtype(dtype)  # the built-ins make their class weights in the default dtype
    try:
        total_ref, dict_ref, grads_ref, aux_ref = step(model, pixels, labels)
        assert isinstance(use_detloss(model).loss_function, DetrLossFunction)
        total, loss_dict, grads, aux = step(model, pixels, labels)
    finally:
        torch.set_default_dtype(torch.float32)
    torch.testing.assert_close(total, total_ref, rtol=rtol, atol=0)
    assert list(loss_dict) == list(dict_ref)
    for key in dict_ref:
        torch.testing.assert_close(loss_dict[key], dict_ref[key], rtol=rtol, atol=atol, msg=key)
    top = max(float(gr.abs().max()) for gr in grads_ref)
    assert len(grads) == len(grads_ref)
    assert max(float((a - b).abs().max()) for a, b in zip(grads, grads_ref, strict=True)) <= grad_tol * top
    assert [list(a) for a in aux] == [list(a) for a in aux_ref]  # the same auxiliary outputs
    for a, a_ref in zip(aux, aux_ref, strict=True):
        for key in a_ref:
            torch.testing.assert_close(a[key], a_ref[key], rtol=0, atol=0, msg=key)
