"""What every YOLO criterion shares as a contract: ``out.per_image`` (each image's share of the total,
under the batch's normalisers), padded targets giving the list's result, and gain keywords named
as the components they multiply."""

from __future__ import annotations

import math

import pytest
import torch

import detloss.criteria.yolov8 as yolov8_module
from detloss.assign import pad_targets
from detloss.criteria import YOLOv3Loss, YOLOv4Loss, YOLOv5Loss, YOLOv8Loss
from detloss.profiling import DispatchCounter

D = torch.float64
W, H, C = 96, 64, 3  # not square
LOG2 = math.log(2.0)

#: name → (constructor taking keyword options, head channels of a built criterion)
CRITERIA = {
    "YOLOv3": (lambda **kw: YOLOv3Loss(C, **kw), lambda crit: 3 * (5 + C)),
    "YOLOv4": (lambda **kw: YOLOv4Loss(C, **kw), lambda crit: 3 * (5 + C)),
    "YOLOv5": (lambda **kw: YOLOv5Loss(C, **kw), lambda crit: 3 * (5 + C)),
    "YOLOv8": (lambda **kw: YOLOv8Loss(C, reg_max=4, **kw), lambda crit: 4 * crit.reg_max + C),
    # YOLO26's one-to-one branch: raw distances and L1, top-1 after the contests
    "YOLO26": (lambda **kw: YOLOv8Loss(C, reg_max=1, topk=7, topk2=1, **kw), lambda crit: 4 + C),
}


def _targets(g: torch.Generator, counts: tuple[int, ...]) -> list[dict]:
    out = []
    for n in counts:
        wh = 6 + 30 * torch.rand(n, 2, generator=g, dtype=D)
        xy = torch.rand(n, 2, generator=g, dtype=D) * (torch.tensor([W, H], dtype=D) - wh)
        out.append({"boxes": torch.cat((xy, xy + wh), 1), "labels": torch.randint(0, C, (n,), generator=g)})
    return out


def _case(name: str, counts=(4, 0, 2), seed: int = 0, **options):
    build, channels = CRITERIA[name]
    crit = build(**options)
    g = torch.Generator().manual_seed(seed)
    shapes = [(len(counts), channels(crit), H // s, W // s) for s in crit.strides]
    preds = [torch.randn(shape, generator=g, dtype=D).mul_(0.5).requires_grad_() for shape in shapes]
    return crit, preds, _targets(g, counts)


@pytest.mark.parametrize("name", CRITERIA)
@pytest.mark.parametrize("options", [{}, {"validate": False}])
def test_per_image_sums_to_total(name, options):
    crit, preds, targets = _case(name, **options)
    out = crit(preds, targets)
    assert out.per_image.shape == (3,)
    torch.testing.assert_close(out.per_image.sum(), out.total, rtol=1e-10, atol=0)
    assert (out.per_image > 0).all()  # every image has background terms at least


@pytest.mark.parametrize("name", CRITERIA)
def test_per_image_of_a_batch_of_one_is_the_total(name):
    crit, preds, targets = _case(name, counts=(3,), seed=1)
    out = crit(preds, targets)
    assert out.per_image.shape == (1,)
    torch.testing.assert_close(out.per_image[0], out.total, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", CRITERIA)
def test_gradient_of_a_share_stays_in_its_image(name):
    """∂ per_image[b] / ∂ preds is zero on every other image's rows, and the shares' gradients add up
    to the gradient of the total."""
    crit, preds, targets = _case(name, seed=2)
    out = crit(preds, targets)
    per_image = [torch.autograd.grad(out.per_image[b], preds, retain_graph=True) for b in range(3)]
    for b, grads in enumerate(per_image):
        for g in grads:
            others = torch.cat([g[:b], g[b + 1 :]])
            assert torch.count_nonzero(others) == 0
            assert torch.count_nonzero(g[b]) > 0
    total = torch.autograd.grad(out.total, preds)
    for s, want in enumerate(total):
        got = sum(grads[s] for grads in per_image)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def _zero_image(preds: list[torch.Tensor], b: int) -> list[torch.Tensor]:
    out = []
    for p in preds:
        p = p.detach().clone()
        p[b] = 0
        out.append(p.requires_grad_())
    return out


def test_empty_image_share_yolov3():
    """All logits 0 on the empty image: every one of its P = Σ_s 3·H_s·W_s slots is background, with
    the focal weight |0 − σ(0)|² = 1/4 on BCE(0, 0) = log 2; the batch mean divides by B = 3."""
    crit, preds, targets = _case("YOLOv3")
    out = crit(_zero_image(preds, 1), targets)
    slots = sum(3 * (H // s) * (W // s) for s in crit.strides)
    torch.testing.assert_close(out.per_image[1], torch.tensor(slots * 0.25 * LOG2 / 3, dtype=D))


def test_empty_image_share_yolov4():
    """Without boxes every slot is ignored-background: BCE(0, 0) = log 2 each (γ = 0), over B = 3
    with ``normalize=False``; the object gain multiplies it."""
    crit, preds, targets = _case("YOLOv4", normalize=False, obj=2.0)
    out = crit(_zero_image(preds, 1), targets)
    slots = sum(3 * (H // s) * (W // s) for s in crit.strides)
    torch.testing.assert_close(out.per_image[1], torch.tensor(2.0 * slots * LOG2 / 3, dtype=D))


def test_empty_image_share_yolov5():
    """Objectness only: scale s averages BCE(0, 0) = log 2 over all B·A·H_s·W_s cells, weighted by
    balance_s (4, 1, 0.4), times the gain (1) and B: the image's share is log 2 · Σ balance."""
    crit, preds, targets = _case("YOLOv5")
    out = crit(_zero_image(preds, 1), targets)
    torch.testing.assert_close(out.per_image[1], torch.tensor(5.4 * LOG2, dtype=D))


def test_empty_image_share_yolov8(monkeypatch):
    """Classes only: softplus(0) = log 2 on each of its C·A logits, over the batch's S (the sum of the
    target scores, recorded from the criterion), times the gain 0.5 and B = 3."""
    norms = []
    original = yolov8_module.global_count

    def spy(*args, **kwargs):
        norms.append(original(*args, **kwargs))
        return norms[-1]

    monkeypatch.setattr(yolov8_module, "global_count", spy)
    crit, preds, targets = _case("YOLOv8")
    out = crit(_zero_image(preds, 1), targets)
    anchors = sum((H // s) * (W // s) for s in crit.strides)
    (norm,) = norms
    assert norm > 1  # the other images' boxes set it
    torch.testing.assert_close(out.per_image[1], 0.5 * C * anchors * LOG2 / norm * 3)


@pytest.mark.parametrize("name", CRITERIA)
def test_padded_targets_give_the_list_result(name):
    crit, preds, targets = _case(name, seed=3)
    listed = crit(preds, targets)
    padded = crit(preds, pad_targets(targets, C, dtype=D))
    for got, want in ((padded.total, listed.total), (padded.per_image, listed.per_image)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert padded.components.keys() == listed.components.keys()
    for key, want in listed.components.items():
        torch.testing.assert_close(padded.components[key], want, rtol=0, atol=0)
    for got, want in zip(
        torch.autograd.grad(padded.total, preds), torch.autograd.grad(listed.total, preds), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", CRITERIA)
def test_no_host_sync_with_padded_targets_and_validate_false(name):
    crit, preds, targets = _case(name, validate=False)
    padded = pad_targets(targets, C, dtype=D, validate=False)
    crit(preds, padded)  # warm-up: the per-layout constants are built once
    with DispatchCounter() as c:
        out = crit(preds, padded)
        torch.autograd.grad(out.per_image.sum() + out.total, preds)
    assert c.syncs == 0, c.sync_ops


@pytest.mark.parametrize("name", CRITERIA)
def test_a_gain_keyword_scales_its_own_component(name):
    crit, preds, targets = _case(name, seed=4)
    base = crit(preds, targets).components
    for key in base:
        default = crit.gains[key]
        out = CRITERIA[name][0](**{key: 3 * default})(preds, targets).components
        assert out.keys() == base.keys()
        for k, v in base.items():
            torch.testing.assert_close(out[k], v * (3 if k == key else 1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", CRITERIA)
def test_bad_gain_names_its_keyword(name):
    key = next(iter(CRITERIA[name][0]().gains))
    with pytest.raises(ValueError, match=f"^{key} must be a finite number >= 0"):
        CRITERIA[name][0](**{key: -1.0})


@pytest.mark.parametrize("name", CRITERIA)
def test_iou_eps_is_used_and_checked(name):
    crit, preds, targets = _case(name, seed=5)
    default = crit(preds, targets).components["box"]
    wide = CRITERIA[name][0](iou_eps=10.0)(preds, targets).components["box"]
    assert not torch.allclose(wide, default, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="iou_eps"):
        CRITERIA[name][0](iou_eps=0.0)


def test_yolov5_ranges_name_the_argument():
    for options, match in (
        ({"anchor_t": 1.0}, "anchor_t"),
        ({"fl_gamma": -0.5}, "fl_gamma"),
        ({"cls_pw": 0.0}, "cls_pw"),
        ({"gr": 1.5}, "gr"),
        ({"balance": (1.0, float("nan"), 1.0)}, r"balance\[1\]"),
    ):
        with pytest.raises(ValueError, match=match):
            YOLOv5Loss(C, **options)
