"""Every YOLO criterion's box loss takes any IoU kind and modifier in one argument (``iou_kind``,
``iou_modifiers``): identity modifiers leave the numbers alone, every kind is finite, MPDIoU's image
size is the input size in the units of the boxes it compares, and bad options name the argument."""

from __future__ import annotations

import pytest
import torch

import detloss.criteria.box_iou as box_iou
import detloss.criteria.darknet as darknet
from detloss.criteria import YOLOv3Loss, YOLOv4Loss, YOLOv5Loss, YOLOv8Loss
from detloss.kernels import IOU_KINDS

D = torch.float64
W, H, C, B = 96, 64, 3, 2  # not square: the image size has two units to get right


def _targets(g: torch.Generator) -> list[dict]:
    out = []
    for n in (3, 0):  # one image without boxes
        wh = 6 + 30 * torch.rand(n, 2, generator=g, dtype=D)
        xy = torch.rand(n, 2, generator=g, dtype=D) * (torch.tensor([W, H], dtype=D) - wh)
        out.append({"boxes": torch.cat((xy, xy + wh), 1), "labels": torch.randint(0, C, (n,), generator=g)})
    return out


def _yolo_preds(g, crit, per_anchor):
    return [
        torch.randn(B, per_anchor, H // s, W // s, generator=g, dtype=D).mul_(0.5).requires_grad_()
        for s in crit.strides
    ]


CRITERIA = {
    "YOLOv3": (YOLOv3Loss, {}, lambda crit: 3 * (5 + C)),
    "YOLOv4": (YOLOv4Loss, {}, lambda crit: 3 * (5 + C)),
    "YOLOv5": (YOLOv5Loss, {}, lambda crit: 3 * (5 + C)),
    "YOLOv8": (YOLOv8Loss, {"reg_max": 4}, lambda crit: 4 * crit.reg_max + C),
}
DEFAULT_KIND = {"YOLOv3": "giou", "YOLOv4": "ciou", "YOLOv5": "ciou", "YOLOv8": "ciou"}


def run(name: str, seed: int = 0, **options):
    cls, fixed, channels = CRITERIA[name]
    crit = cls(C, **fixed, **options)
    g = torch.Generator().manual_seed(seed)
    preds = _yolo_preds(g, crit, channels(crit))
    targets = _targets(g)
    out = crit(preds, targets)
    grads = torch.autograd.grad(out.total, preds)
    return out, grads, targets


@pytest.mark.parametrize("name", CRITERIA)
def test_default_kind_is_the_original(name):
    assert CRITERIA[name][0](C, **CRITERIA[name][1]).iou_kind == DEFAULT_KIND[name]


@pytest.mark.parametrize("name", CRITERIA)
@pytest.mark.parametrize("identity", [{"alpha": 1.0}, {"inner_ratio": 1.0}, {"focaler": (0.0, 1.0)}])
def test_identity_modifiers_change_nothing(name, identity):
    # alpha = 1 is the plain kind; inner boxes of ratio 1 are the boxes; clamp(IoU, 0, 1) = IoU
    ref, ref_grads, _ = run(name)
    out, grads, _ = run(name, iou_modifiers=identity)
    for key, value in ref.components.items():
        torch.testing.assert_close(out.components[key], value, rtol=1e-12, atol=1e-15)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


VARIANTS = [(k, None) for k in IOU_KINDS] + [
    ("ciou", {"alpha": 3.0}),
    ("giou", {"inner_ratio": 0.8}),
    ("siou", {"focaler": (0.1, 0.9)}),
]


@pytest.mark.parametrize("name", CRITERIA)
@pytest.mark.parametrize(("kind", "mods"), VARIANTS)
def test_every_kind_and_modifier_is_finite_and_is_used(name, kind, mods):
    out, grads, _ = run(name, iou_kind=kind, iou_modifiers=mods)
    assert all(torch.isfinite(v) for v in out.components.values())
    assert all(torch.isfinite(g).all() for g in grads)
    if (kind, mods) != (DEFAULT_KIND[name], None):
        ref, _, _ = run(name)
        assert not torch.allclose(out.components["box"], ref.components["box"], rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", CRITERIA)
def test_mpdiou_image_size_is_the_input_size_in_the_boxes_units(name, monkeypatch):
    """The corner penalty d²/(w² + h²) is right only if the boxes and the image size share units
    (translations do not matter: YOLOv5 compares boxes relative to their cell): the width and height of
    every target box the criterion compares, divided by the image size it passes, must be a ground-truth
    box's divided by the input size (or a zero padding row)."""
    calls = []
    original = darknet.iou_xyxy

    def spy(b1, b2, kind, eps, **kw):
        if kind == "mpdiou":
            calls.append((b2.detach().reshape(-1, 4), kw["image_size"]))
        return original(b1, b2, kind, eps, **kw)

    # YOLOv3/v4 reach it through darknet.yolo_terms, YOLOv5/v8 through box_iou.grid_box_iou
    for module in (darknet, box_iou):
        monkeypatch.setattr(module, "iou_xyxy", spy)
    *_, targets = run(name, iou_kind="mpdiou")
    boxes = torch.cat([t["boxes"] for t in targets])
    truth = (boxes[:, 2:] - boxes[:, :2]) / torch.tensor([W, H], dtype=D)
    assert calls
    for boxes, image_size in calls:
        w, h = image_size if isinstance(image_size, tuple) else (image_size, image_size)
        normed = (boxes[:, 2:] - boxes[:, :2]) / torch.tensor([w, h], dtype=boxes.dtype)
        real = normed[normed.sum(1) > 0]
        assert len(real)
        dist = (real[:, None, :] - truth[None].to(real)).abs().amax(-1).amin(1)  # nearest ground truth
        assert float(dist.max()) < 1e-9


@pytest.mark.parametrize("name", CRITERIA)
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"iou_kind": "l1"}, "kind"),
        ({"iou_modifiers": {"beta": 2.0}}, "iou_modifiers"),
        ({"iou_modifiers": {"alpha": 2.0, "focaler": (0.0, 0.9)}}, "at most one"),
        ({"iou_modifiers": {"focaler": (0.9, 0.1)}}, "focaler"),
        ({"iou_kind": "wiou", "iou_modifiers": {"alpha": 2.0}}, "wiou"),
    ],
)
def test_bad_options_name_the_argument(name, options, match):
    cls, fixed, _ = CRITERIA[name]
    with pytest.raises(ValueError, match=match):
        cls(C, **fixed, **options)
