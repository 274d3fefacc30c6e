"""detloss.integrations.transformers with transformers itself (skipped where it is not installed, as in
CI): on small models with random weights, in training mode, the same loss, loss dictionary and
gradients as the model's built-in loss."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from detloss.integrations.transformers import DetrLossFunction, use_detloss  # noqa: E402

C = 5


def build(name: str):
    torch.manual_seed(0)
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
    config = transformers.RTDetrConfig(
        encoder_hidden_dim=32, decoder_in_channels=[32] * 3, num_denoising=8, **small
    )
    return transformers.RTDetrForObjectDetection(config)


def step(model, pixels, labels):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # the denoising groups and dropout alike for both losses
    out = model(pixel_values=pixels, labels=labels)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return out.loss.detach(), {k: v.detach() for k, v in out.loss_dict.items()}, grads


@pytest.mark.parametrize("name", ["detr", "deformable", "rtdetr"])
def test_same_loss_dict_and_gradients_as_builtin(name: str) -> None:
    model = build(name).train().double()
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    labels = [
        {
            "class_labels": torch.tensor([1, 3]),
            "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]]),
        },
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    labels = [{k: v.double() if v.is_floating_point() else v for k, v in t.items()} for t in labels]
    torch.set_default_dtype(torch.float64)  # the built-ins make their class weights in the default dtype
    try:
        total_ref, dict_ref, grads_ref = step(model, pixels, labels)
        assert isinstance(use_detloss(model).loss_function, DetrLossFunction)
        total, loss_dict, grads = step(model, pixels, labels)
    finally:
        torch.set_default_dtype(torch.float32)
    torch.testing.assert_close(total, total_ref, rtol=1e-10, atol=0)
    assert list(loss_dict) == list(dict_ref)
    for key in dict_ref:
        torch.testing.assert_close(loss_dict[key], dict_ref[key], rtol=1e-10, atol=1e-12, msg=key)
    top = max(float(gr.abs().max()) for gr in grads_ref)
    assert len(grads) == len(grads_ref)
    assert max(float((a - b).abs().max()) for a, b in zip(grads, grads_ref, strict=True)) <= 1e-10 * top
