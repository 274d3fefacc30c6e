"""Every criterion at its boundary: clear errors, finite on every legal input, mixed precision.

- Validation: the error names the argument and, for targets, the image and the box.
- Empty batches, mixed empty/non-empty images, saturated head outputs (±1e4), tiny and
  whole-image boxes, duplicated boxes: finite values and finite gradients.
- float16 / bfloat16 head outputs and bf16 autocast: computed in float32, finite, and within the
  stated tolerance of the float32 loss. Relative error of ``total`` (measured worst case over 5
  seeds and the four criteria in brackets): float16 heads 1e-3 (2.3e-5), bfloat16 heads 1e-2
  (2.1e-4), a conv/linear head under bf16 autocast 1e-2 (4.6e-4). The same rounded head outputs in
  float32 agree to 1e-5: the computation itself is float32.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from detloss.criteria import SSDLoss, YOLOv3Loss, YOLOv4Loss, YOLOv5Loss, YOLOv8Loss

C, SIZE = 3, 64
GRIDS = {"YOLOv3": (8, 4, 2), "YOLOv4": (2, 4), "YOLOv5": (8, 4, 2), "YOLOv8": (8, 4, 2)}
NAMES = ("YOLOv3", "YOLOv4", "YOLOv5", "YOLOv8", "SSD")
V8_REG_MAX = 4
CHANNELS = {"YOLOv8": 4 * V8_REG_MAX + C}  # the anchor-based heads: 3 · (5 + C)
HALF_RTOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2}


def priors() -> Tensor:
    c = (torch.arange(4.0) + 0.5) * 16
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack((cx.flatten(), cy.flatten()), -1)
    return torch.cat([torch.cat((centres, torch.full_like(centres, s)), -1) for s in (16.0, 32.0)])


def criterion(name: str, **kw):
    if name == "SSD":
        return SSDLoss(C, priors(), **kw)
    if name == "YOLOv8":
        return YOLOv8Loss(C, reg_max=V8_REG_MAX, **kw)
    return {"YOLOv3": YOLOv3Loss, "YOLOv4": YOLOv4Loss, "YOLOv5": YOLOv5Loss}[name](C, **kw)


def preds(name: str, batch: int = 4, dtype=torch.float32, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    if name == "SSD":
        shapes = [(batch, 32, 4), (batch, 32, C + 1)]
    else:
        shapes = [(batch, CHANNELS.get(name, 3 * (5 + C)), s, s) for s in GRIDS[name]]
    out = [(torch.randn(s, generator=g) * scale).to(dtype).requires_grad_() for s in shapes]
    return tuple(out) if name == "SSD" else out


def targets(counts=(2, 0, 3, 1), seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * 36
        wh = torch.rand(n, 2, generator=g) * 20 + 6
        out.append({"boxes": torch.cat((xy, xy + wh), -1), "labels": torch.randint(0, C, (n,), generator=g)})
    return out


def assert_finite_with_gradients(name: str, p, tg, **kw):
    out = criterion(name, **kw)(p, tg)
    assert out.total.dim() == 0 and torch.isfinite(out.total), out.total
    assert all(torch.isfinite(v) for v in out.components.values()), out.components
    out.total.backward()
    for x in p:
        assert x.grad is not None and torch.isfinite(x.grad).all()
    return out


# ----------------------------------------------------------------------------- validation
def _bad(case: str):
    tg = targets()
    if case == "class id out of range":
        tg[2]["labels"] = torch.tensor([0, 1, 3])
        return tg, ValueError, r"targets\[2\]\['labels'\].*class id 3 at index \(2,\)"
    if case == "NaN box":
        tg[3]["boxes"][0, 1] = float("nan")
        return tg, ValueError, r"targets\[3\]\['boxes'\].*nan.*index \(0, 1\)"
    if case == "Inf box":
        tg[0]["boxes"][1, 2] = float("inf")
        return tg, ValueError, r"targets\[0\]\['boxes'\].*inf.*index \(1, 2\)"
    if case == "x2 < x1":
        tg[2]["boxes"][1] = torch.tensor([30.0, 5.0, 10.0, 20.0])
        return tg, ValueError, r"targets\[2\]\['boxes'\]\[1\].*x2 > x1"
    if case == "float labels":
        tg[0]["labels"] = tg[0]["labels"].float()
        return tg, TypeError, r"targets\[0\]\['labels'\].*integer"
    if case == "boxes not (n, 4)":
        tg[1]["boxes"] = torch.zeros(0, 5)
        return tg, ValueError, r"targets\[1\]\['boxes'\].*\(\.\.\., 4\)"
    if case == "labels not (n,)":
        tg[0]["labels"] = tg[0]["labels"][:1]
        return tg, ValueError, r"targets\[0\].*\(2, 4\) and \(1,\)"
    raise AssertionError(case)


TARGET_CASES = (
    "class id out of range",
    "NaN box",
    "Inf box",
    "x2 < x1",
    "float labels",
    "boxes not (n, 4)",
    "labels not (n,)",
)


@pytest.mark.parametrize("case", TARGET_CASES)
@pytest.mark.parametrize("name", NAMES)
def test_bad_targets_name_the_image_and_box(name, case):
    tg, exc, pattern = _bad(case)
    with pytest.raises(exc, match=pattern):
        criterion(name)(preds(name), tg)


@pytest.mark.parametrize("name", NAMES)
def test_bad_preds_name_the_argument_and_shapes(name):
    crit, p, tg = criterion(name), preds(name), targets()
    with pytest.raises(ValueError, match=r"(batch size 3 but targets has 4|got \(3, 32, 4\))"):
        crit(preds(name, batch=3), tg)
    with pytest.raises(TypeError, match="floating"):
        crit(type(p)(x.detach().long() for x in p), tg)
    with pytest.raises(TypeError, match="preds"):
        crit(p[0], tg)
    if name == "SSD":
        with pytest.raises(ValueError, match=r"conf must have shape \(B=4, P=32, 4\), got \(4, 32, 5\)"):
            crit((p[0], torch.zeros(4, 32, 5)), tg)
        return
    shape = r"4\*4\+3=19" if name == "YOLOv8" else r"3\*\(5\+3\)=24"
    with pytest.raises(ValueError, match=rf"preds\[0\] must have shape \(B, {shape}, H, W\), got \(4, 7"):
        crit([torch.zeros(4, 7, *x.shape[2:]) for x in p], tg)
    # a grid that does not match its stride: the scales imply different input sizes
    wrong = [torch.zeros(4, x.shape[1], x.shape[2] + 1, x.shape[3]) if i == 1 else x for i, x in enumerate(p)]
    with pytest.raises(ValueError, match=r"preds\[1\].*strides and grids disagree"):
        crit(wrong, tg)
    with pytest.raises(ValueError, match="scales"):
        crit(p[:-1], tg)


@pytest.mark.parametrize("name", NAMES)
def test_validate_false_gives_the_same_loss_on_valid_input(name):
    p, tg = preds(name), targets()
    torch.testing.assert_close(
        criterion(name, validate=False)(p, tg).total, criterion(name)(p, tg).total, rtol=0, atol=0
    )


@pytest.mark.parametrize("name", NAMES)
def test_reduce_across_ranks_without_a_process_group_changes_nothing(name):
    p, tg = preds(name, dtype=torch.float64), targets()
    torch.testing.assert_close(
        criterion(name, reduce_across_ranks=True)(p, tg).total,
        criterion(name)(p, tg).total,
        rtol=1e-12,
        atol=0,
    )


# ----------------------------------------------------------------------------- finite everywhere
@pytest.mark.parametrize("counts", [(0, 0, 0, 0), (0, 3, 0, 1), (1, 0, 0, 0), ()], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_empty_and_mixed_batches_are_finite(name, counts):
    assert_finite_with_gradients(name, preds(name, batch=len(counts)), targets(counts))


@pytest.mark.parametrize("scale", [1e4, -1e4, 30.0], ids=["+1e4", "-1e4", "30"])
@pytest.mark.parametrize("name", NAMES)
def test_saturated_head_outputs_are_finite(name, scale):
    for counts in ((2, 0, 3, 1), (0, 0, 0, 0)):
        assert_finite_with_gradients(name, preds(name, scale=scale), targets(counts))


@pytest.mark.parametrize("name", NAMES)
def test_tiny_huge_and_duplicate_boxes_are_finite(name):
    tg = [
        {"boxes": torch.tensor([[10.0, 10.0, 10.001, 10.001]]), "labels": torch.tensor([0])},  # 1e-3 px
        {"boxes": torch.tensor([[0.0, 0.0, 64.0, 64.0]]), "labels": torch.tensor([2])},  # the whole input
        {
            "boxes": torch.tensor([[5.0, 5.0, 25.0, 30.0]] * 3),
            "labels": torch.tensor([1, 1, 2]),
        },  # duplicates
        {
            "boxes": torch.tensor([[31.9, 31.9, 32.1, 32.1], [0.0, 30.0, 64.0, 34.0]]),
            "labels": torch.tensor([0, 1]),
        },
    ]
    assert_finite_with_gradients(name, preds(name), tg)
    assert_finite_with_gradients(name, preds(name, dtype=torch.float64), tg)


# ----------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_heads(name, dtype):
    tg = targets()
    ref = criterion(name)(preds(name), tg).total
    p = preds(name, dtype=dtype)
    out = assert_finite_with_gradients(name, p, tg)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total, ref, rtol=HALF_RTOL[dtype], atol=0)
    upcast = type(p)(x.detach().float() for x in p)  # same rounded values, in float32
    torch.testing.assert_close(out.total, criterion(name)(upcast, tg).total, rtol=1e-5, atol=0)
    for x in p:
        assert x.grad.dtype == dtype


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_model(name):
    """A conv/linear head under autocast(bf16) feeding the criterion: finite, float32 loss, finite
    parameter gradients, within the bfloat16 tolerance of the float32 run."""
    torch.manual_seed(0)
    if name == "SSD":
        head = torch.nn.Linear(6, 4 + C + 1)
        feats = torch.randn(4, 32, 6)

        def run():
            out = head(feats)
            return criterion(name)((out[..., :4], out[..., 4:]), targets()).total
    else:
        channels = CHANNELS.get(name, 3 * (5 + C))
        head = torch.nn.ModuleList(torch.nn.Conv2d(6, channels, 1) for _ in GRIDS[name])
        feats = [torch.randn(4, 6, s, s) for s in GRIDS[name]]

        def run():
            return criterion(name)([conv(f) for conv, f in zip(head, feats, strict=True)], targets()).total

    ref = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = run()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=HALF_RTOL[torch.bfloat16], atol=0)
    loss.backward()
    assert all(torch.isfinite(q.grad).all() for q in head.parameters())


# ----------------------------------------------------------------------------- DETRLoss
# Set prediction has its own input layout: (L, B, Q, C′) logits, (L, B, Q, 4) cxcywh boxes in [0, 1],
# targets cxcywh normalised. The same boundaries as above, in that layout.
DETR_PRESETS = ("detr", "deformable", "rtdetr")


def detr_inputs(preset: str, batch: int = 4, dtype=torch.float32, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    width = C + 1 if preset == "detr" else C
    logits = (torch.randn(2, batch, 8, width, generator=g) * scale).to(dtype).requires_grad_()
    boxes = torch.sigmoid(torch.randn(2, batch, 8, 4, generator=g)).to(dtype).requires_grad_()
    return logits, boxes


def detr_targets(counts=(2, 0, 3, 1), seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        ctr, wh = torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05
        out.append({"boxes": torch.cat((ctr, wh), -1), "labels": torch.randint(0, C, (n,), generator=g)})
    return out


def detr_finite(preset, logits, boxes, tg, **kw):
    from detloss.criteria import DETRLoss

    out = DETRLoss(C, preset, **kw)(logits, boxes, tg)
    assert out.total.dim() == 0 and torch.isfinite(out.total), out.total
    assert all(torch.isfinite(v) for layer in out.layers for v in layer.values())
    out.total.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(boxes.grad).all()
    return out


@pytest.mark.parametrize(
    "case, exc, pattern",
    [
        ("class id out of range", ValueError, r"targets\[2\]\['labels'\].*class id 3 at index \(2,\)"),
        ("NaN box", ValueError, r"targets\[3\]\['boxes'\].*nan.*index \(0, 1\)"),
        ("negative width", ValueError, r"targets\[2\]\['boxes'\]\[1\].*w > 0 and h > 0"),
        ("float labels", TypeError, r"targets\[0\]\['labels'\].*integer"),
        ("boxes not (n, 4)", ValueError, r"targets\[1\]\['boxes'\].*\(\.\.\., 4\)"),
    ],
)
@pytest.mark.parametrize("preset", DETR_PRESETS)
def test_detr_bad_targets_name_the_image_and_box(preset, case, exc, pattern):
    from detloss.criteria import DETRLoss

    tg = detr_targets()
    if case == "class id out of range":
        tg[2]["labels"] = torch.tensor([0, 1, 3])
    elif case == "NaN box":
        tg[3]["boxes"][0, 1] = float("nan")
    elif case == "negative width":
        tg[2]["boxes"][1, 2] = -0.1
    elif case == "float labels":
        tg[0]["labels"] = tg[0]["labels"].float()
    else:
        tg[1]["boxes"] = torch.zeros(0, 5)
    with pytest.raises(exc, match=pattern):
        DETRLoss(C, preset)(*detr_inputs(preset), tg)


@pytest.mark.parametrize("counts", [(0, 0, 0, 0), (0, 3, 0, 1), (1, 0, 0, 0), ()], ids=str)
@pytest.mark.parametrize("preset", DETR_PRESETS)
def test_detr_empty_and_mixed_batches_are_finite(preset, counts):
    detr_finite(preset, *detr_inputs(preset, batch=len(counts)), detr_targets(counts))


@pytest.mark.parametrize("scale", [1e4, -1e4, 30.0], ids=["+1e4", "-1e4", "30"])
@pytest.mark.parametrize("preset", DETR_PRESETS)
def test_detr_saturated_logits_are_finite(preset, scale):
    for counts in ((2, 0, 3, 1), (0, 0, 0, 0)):
        detr_finite(preset, *detr_inputs(preset, scale=scale), detr_targets(counts))


@pytest.mark.parametrize("preset", DETR_PRESETS)
def test_detr_degenerate_boxes_are_finite(preset):
    tg = [
        {"boxes": torch.tensor([[0.5, 0.5, 1e-5, 1e-5]]), "labels": torch.tensor([0])},  # tiny
        {"boxes": torch.tensor([[0.5, 0.5, 1.0, 1.0]]), "labels": torch.tensor([2])},  # the whole image
        {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]] * 3), "labels": torch.tensor([1, 1, 2])},  # duplicates
        {"boxes": torch.tensor([[0.5, 0.5, 0.01, 0.6]]), "labels": torch.tensor([0])},
    ]
    for dtype in (torch.float32, torch.float64):
        logits, boxes = detr_inputs(preset, dtype=dtype)
        with torch.no_grad():  # zero-area and point predictions, some exactly on a target
            boxes[0, :, :4, 2:] = 0.0
            boxes[1, 1, 0] = torch.tensor([0.5, 0.5, 1.0, 1.0])
        detr_finite(
            preset, logits, boxes, [{k: v.to(dtype) if k == "boxes" else v for k, v in t.items()} for t in tg]
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("preset", DETR_PRESETS)
def test_detr_half_precision_logits(preset, dtype):
    from detloss.criteria import DETRLoss

    tg = detr_targets()
    ref = DETRLoss(C, preset)(*detr_inputs(preset), tg).total
    logits, boxes = detr_inputs(preset, dtype=dtype)
    out = detr_finite(preset, logits, boxes, tg)
    assert out.total.dtype == torch.float32 and logits.grad.dtype == dtype
    torch.testing.assert_close(out.total, ref, rtol=HALF_RTOL[dtype], atol=0)
    upcast = DETRLoss(C, preset)(logits.detach().float(), boxes.detach().float(), tg).total
    torch.testing.assert_close(out.total, upcast, rtol=1e-5, atol=0)


@pytest.mark.parametrize("preset", DETR_PRESETS)
def test_detr_bf16_autocast_model(preset):
    from detloss.criteria import DETRLoss

    torch.manual_seed(0)
    head = torch.nn.Linear(6, (C + (preset == "detr")) + 4)
    feats = torch.randn(2, 4, 8, 6)
    width = C + (preset == "detr")

    def run():
        out = head(feats)
        return DETRLoss(C, preset)(out[..., :width], out[..., width:].sigmoid(), detr_targets()).total

    ref = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = run()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=HALF_RTOL[torch.bfloat16], atol=0)
    loss.backward()
    assert all(torch.isfinite(q.grad).all() for q in head.parameters())


@pytest.mark.parametrize("preset", DETR_PRESETS)
def test_detr_non_finite_predictions(preset):
    from detloss.criteria import DETRLoss

    logits, boxes = detr_inputs(preset)
    logits = logits.detach().clone()
    logits[1, 2, 5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"logits has a non-finite value \(inf\) at index \(1, 2, 5, 0\)"):
        DETRLoss(C, preset)(logits, boxes, detr_targets())
    # validate=False: no error; the non-finite query is matched last, the loss is the caller's to check
    out = DETRLoss(C, preset, validate=False)(logits, boxes, detr_targets())
    assert torch.isfinite(out.layers[0]["bbox"])
