"""``detloss.integrations.transformers.use_detloss`` on real transformers models: values, gradients, speed.

    HF_HUB_OFFLINE=1 PYTHONPATH=src <side-venv>/bin/python benchmarks/transformers_integration.py

transformers (Apache-2.0) is a peer here, never a dependency: this script runs only where it is
installed (the side venv). Small models with random weights, in training mode: for DETR, Deformable
DETR, RT-DETR, RT-DETR v2, D-FINE and DEIMv2 a tiny ResNet backbone, 3 decoder layers, 10 queries, 5
classes (RT-DETR, D-FINE and DEIMv2 with denoising); for LW-DETR and RF-DETR a tiny ViT / DINOv2
backbone, 3 decoder layers and 3 query groups of 10 queries. A forward with labels and a backward with
the model's built-in loss, then the same (same seed, same inputs) after ``use_detloss(model)``.

Values: float64 (the model cast), max relative error of the total, of every loss-dictionary key (same
key set required) and of every parameter's gradient (max |Δ| over all parameters / max |g| over all
parameters; and per parameter, the worst, over the parameters whose gradient is not zero up to
roundoff: > 1e-10 · the largest, which leaves out the attention key biases, mathematically 0, ~1e-21
from either loss; in float32 > 1e-5 · the largest). transformers' D-FINE loss (and DEIMv2's, which
extends it) fails for float64 inputs (``translate_gt`` writes float64 values into float32 tensors), so
for their float64 rows its ``translate_gt`` gets its inputs rounded to float32 (as
benchmarks/compare_detr.py does; the FGL targets then carry that rounding, ≈ 1e-8), and the rows
``dfine f32`` and ``deimv2 f32`` compare the unpatched losses in float32.

Speed: float32, the loss function alone (forward + backward on the model's own outputs, captured from
a training step), median ms over interleaved rounds, 2 threads; aten ops and host syncs
(:class:`detloss.profiling.DispatchCounter`), and matcher host transfers (detloss: calls of
``detloss.assign.hungarian.to_host``; transformers: calls of its matcher, one ``.cpu()`` of the cost
each).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import detloss.assign.hungarian as hungarian  # noqa: E402
from detloss.integrations.transformers import use_detloss  # noqa: E402
from detloss.profiling import DispatchCounter  # noqa: E402

try:
    import transformers as T
    from transformers.loss import (
        loss_d_fine,
        loss_deformable_detr,
        loss_for_object_detection,
        loss_lw_detr,
        loss_rt_detr,
    )
except ImportError as err:  # a peer that is not installed is reported, not silently dropped
    print(f"transformers not available ({err}): nothing to compare")
    sys.exit(0)

B, SIZE, C = 2, 64, 5
_TRANSLATE_GT = loss_d_fine.translate_gt


def float32_translate_gt(on: bool) -> None:
    """transformers' D-FINE ``translate_gt`` with its distances (and ``up``) rounded to float32, so
    that the float64 model runs (off: the original)."""
    loss_d_fine.translate_gt = (
        (lambda gt, bins, scale, up: _TRANSLATE_GT(gt.float(), bins, scale, up.float()))
        if on
        else _TRANSLATE_GT
    )


def backbone() -> T.ResNetConfig:
    return T.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
        out_features=["stage2", "stage3", "stage4"],
    )  # fmt: skip


def build_lw(name: str):
    """LW-DETR or RF-DETR: a tiny ViT / DINOv2 backbone, 3 decoder layers, 3 query groups of 10."""
    small = dict(
        num_labels=C, d_model=32, decoder_ffn_dim=32, decoder_layers=3, decoder_self_attention_heads=2,
        decoder_cross_attention_heads=2, decoder_n_points=2, num_queries=10, group_detr=3,
    )  # fmt: skip
    vit = dict(image_size=SIZE, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
    if name == "lwdetr":
        backbone = T.LwDetrViTConfig(window_block_indices=[0], out_indices=[1, 2], num_windows=4, **vit)
        config = T.LwDetrConfig(
            backbone_config=backbone, projector_scale_factors=[1.0], c2f_num_blocks=1, **small
        )
        return T.LwDetrForObjectDetection(config)
    backbone = T.RfDetrDinov2Config(out_indices=[1, 2], num_windows=2, **vit)
    return T.RfDetrForObjectDetection(T.RfDetrConfig(backbone_config=backbone, intermediate_size=32, **small))


def build(name: str):
    """A randomly initialised model (seed 0) of family ``name``."""
    torch.manual_seed(0)
    if name in ("lwdetr", "rfdetr"):
        return build_lw(name)
    small = {"num_labels": C, "d_model": 32, "encoder_layers": 1, "decoder_layers": 3, "num_queries": 10}
    small.update(encoder_ffn_dim=32, decoder_ffn_dim=32, backbone_config=backbone())
    if name == "detr":
        heads = {"encoder_attention_heads": 2, "decoder_attention_heads": 2}
        config = T.DetrConfig(auxiliary_loss=True, use_pretrained_backbone=False, **heads, **small)
        return T.DetrForObjectDetection(config)
    if name == "deformable":
        heads = {"encoder_attention_heads": 2, "decoder_attention_heads": 2}
        config = T.DeformableDetrConfig(
            auxiliary_loss=True, encoder_n_points=2, decoder_n_points=2, **heads, **small
        )
        return T.DeformableDetrForObjectDetection(config)
    rt = dict(encoder_hidden_dim=32, decoder_in_channels=[32] * 3, num_denoising=12, **small)
    if name in ("dfine", "deimv2"):
        heads = {"encoder_attention_heads": 2, "decoder_attention_heads": 2}
        config_cls, model_cls = {
            "dfine": (T.DFineConfig, T.DFineForObjectDetection),
            "deimv2": (T.Deimv2Config, T.Deimv2ForObjectDetection),
        }[name]
        local = dict(encoder_in_channels=[16] * 3, max_num_bins=8, lqe_hidden_dim=8, decoder_n_points=2)
        return model_cls(config_cls(**local, **heads, **rt))
    config_cls, model_cls = {
        "rtdetr": (T.RTDetrConfig, T.RTDetrForObjectDetection),
        "rtdetr_v2": (T.RTDetrV2Config, T.RTDetrV2ForObjectDetection),
    }[name]
    return model_cls(config_cls(**rt))


def inputs(dtype: torch.dtype, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(B, 3, SIZE, SIZE, generator=g, dtype=torch.float64).to(dtype)
    labels = []
    for n in (4, 2):
        ctr = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
        labels.append(
            {
                "class_labels": torch.randint(0, C, (n,), generator=g),
                "boxes": torch.cat((ctr, wh), -1).to(dtype),
            }
        )
    return pixels, labels


def step(model, pixels, labels):
    """One training forward + backward: loss, loss_dict (detached), every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # denoising groups and dropout alike for both losses
    out = model(pixel_values=pixels, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), {k: v.detach() for k, v in out.loss_dict.items()}, grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def agreement(name: str, dtype: torch.dtype = torch.float64) -> dict[str, object]:
    model = build(name).train().to(dtype)
    pixels, labels = inputs(dtype)
    torch.set_default_dtype(dtype)  # the built-ins make their class weights in the default dtype
    float32_translate_gt(dtype == torch.float64)
    try:
        total_ref, dict_ref, grads_ref = step(model, pixels, labels)
        use_detloss(model)
        total, d, grads = step(model, pixels, labels)
    finally:
        torch.set_default_dtype(torch.float32)
        float32_translate_gt(False)
    if set(d) != set(dict_ref):
        raise AssertionError(f"{name}: keys differ: {sorted(set(d) ^ set(dict_ref))}")
    if set(grads) != set(grads_ref):
        raise AssertionError(f"{name}: different parameters have gradients")
    top = max(float(g.abs().max()) for g in grads_ref.values())
    zero = 1e-10 if dtype == torch.float64 else 1e-5  # roundoff-zero gradients: below ~100 ulp of the top
    return {
        "keys": len(d),
        "total": rel(total, total_ref),
        "every key": max(rel(d[k], dict_ref[k]) for k in d),
        "gradients": max(float((grads[k] - grads_ref[k]).abs().max()) for k in grads) / top,
        "per param": max(rel(grads[k], grads_ref[k]) for k in grads if grads_ref[k].abs().max() > zero * top),
        "params": len(grads),
    }


def captured_call(name: str):
    """The model's float32 training step's loss-function arguments (outputs detached into leaves)."""
    model = build(name).train()
    pixels, labels = inputs(torch.float32)
    seen = {}

    def capture(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return original(*args, **kwargs)

    original = model.loss_function
    model.loss_function = capture
    torch.manual_seed(2)
    model(pixel_values=pixels, labels=labels)

    def leaf(x):
        return x.detach().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    args = [leaf(a) for a in seen["args"]]
    kwargs = {k: leaf(v) for k, v in seen["kwargs"].items()}
    ours = use_detloss(model).loss_function
    return original, ours, args, kwargs


MATCHERS = (
    loss_for_object_detection.HungarianMatcher,
    loss_deformable_detr.DeformableDetrHungarianMatcher,
    loss_rt_detr.RTDetrHungarianMatcher,  # RT-DETR's, D-FINE's and DEIMv2's
    loss_lw_detr.LwDetrHungarianMatcher,  # LW-DETR's and RF-DETR's
)


def counted(fn, args, kwargs, leaves):
    calls = {"n": 0}

    def count(original):
        def wrapped(*a, **k):
            calls["n"] += 1
            return original(*a, **k)

        return wrapped

    saved = [(m, m.forward) for m in MATCHERS] + [(hungarian, hungarian.to_host)]
    for m, f in saved[:-1]:
        m.forward = count(f)
    hungarian.to_host = count(saved[-1][1])
    try:
        with DispatchCounter() as c:
            torch.autograd.grad(fn(*args, **kwargs)[0], leaves, allow_unused=True)
    finally:
        for m, f in saved[:-1]:
            m.forward = f
        hungarian.to_host = saved[-1][1]
    return c.ops, c.syncs, calls["n"]


def speed(name: str, repeats: int = 15):
    original, ours, args, kwargs = captured_call(name)
    leaves = [
        x for x in list(args) + list(kwargs.values()) if isinstance(x, torch.Tensor) and x.requires_grad
    ]
    fns = {"transformers": original, "detloss": ours}
    run = {
        k: (lambda f=f: torch.autograd.grad(f(*args, **kwargs)[0], leaves, allow_unused=True))
        for k, f in fns.items()
    }
    for f in run.values():
        f()  # warm-up
    times = {k: [] for k in run}
    for _ in range(repeats):
        for k, f in run.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return med, {k: counted(f, args, kwargs, leaves) for k, f in fns.items()}


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {T.__version__}, {torch.get_num_threads()} threads")
    names = ("detr", "deformable", "rtdetr", "rtdetr_v2", "dfine", "deimv2", "lwdetr", "rfdetr")
    print(
        f"\nagreement, float64, B={B}, {SIZE}x{SIZE}, 3 decoder layers, 10 queries (LW-DETR, RF-DETR: "
        f"3 groups of 10), {C} classes (max rel err)"
    )
    print(
        f"{'model':<12}{'keys':>6}{'total':>11}{'every key':>11}{'gradients':>11}{'per param':>11}"
        f"{'params':>8}"
    )
    rows = [(n, torch.float64) for n in names] + [(f"{n} f32", torch.float32) for n in ("dfine", "deimv2")]
    for label, dtype in rows:
        a = agreement(label.split()[0], dtype)
        print(
            f"{label:<12}{a['keys']:>6}{a['total']:>11.1e}{a['every key']:>11.1e}{a['gradients']:>11.1e}"
            f"{a['per param']:>11.1e}"
            f"{a['params']:>8}"
        )
    print(
        "\nthe loss function alone, float32 forward + backward, median ms; aten ops, syncs, matcher transfers"
    )
    print(
        f"{'model':<12}{'detloss':>9}{'transf.':>9}{'ops':>7}{'transf.':>8}{'syncs':>7}{'transf.':>8}{'xfers':>7}{'transf.':>8}"
    )
    for name in names:
        med, c = speed(name)
        o, r = c["detloss"], c["transformers"]
        print(
            f"{name:<12}{med['detloss']:>9.2f}{med['transformers']:>9.2f}{o[0]:>7}{r[0]:>8}{o[1]:>7}{r[1]:>8}"
            f"{o[2]:>7}{r[2]:>8}"
        )


if __name__ == "__main__":
    main()
