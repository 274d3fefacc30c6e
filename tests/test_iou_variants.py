"""The IoU variants of the YOLO community on the one core: Wise-IoU (v1 kind, v3 module), MPDIoU, and
the Alpha-IoU / Inner-IoU / Focaler-IoU modifiers.

``ref_value`` is written here from the papers' formulas, per coordinate (no code shared with
detloss.kernels); hand values check it, and autograd of it checks detloss's gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

import detloss
from detloss import bbox_iou, box_iou, iou_loss
from detloss.iou import iou_xyxy
from detloss.kernels import IOU_KINDS

IMAGE = (64.0, 48.0)
PENALISED = ("giou", "diou", "ciou", "eiou", "siou", "mpdiou")


def ref_enclosing(b1, b2):
    """Width and height of the box enclosing all corners, squared centre distance."""
    x1, y1, x2, y2 = b1.unbind(-1)
    u1, v1, u2, v2 = b2.unbind(-1)
    cw = torch.maximum(torch.maximum(x1, x2), torch.maximum(u1, u2)) - torch.minimum(
        torch.minimum(x1, x2), torch.minimum(u1, u2))
    ch = torch.maximum(torch.maximum(y1, y2), torch.maximum(v1, v2)) - torch.minimum(
        torch.minimum(y1, y2), torch.minimum(v1, v2))
    return cw, ch, ((u1 + u2 - x1 - x2) / 2) ** 2 + ((v1 + v2 - y1 - y2) / 2) ** 2


def ref_terms(b1, b2, kind, eps=1e-7, inner_ratio=None):
    """(iou, iou_term_box_pair_iou for inner, [penalty terms]) of the paper formulas, per coordinate."""
    x1, y1, x2, y2 = b1.unbind(-1)
    u1, v1, u2, v2 = b2.unbind(-1)

    def iou_of(x1, y1, x2, y2, u1, v1, u2, v2):
        w1, h1 = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
        w2, h2 = (u2 - u1).clamp(min=0), (v2 - v1).clamp(min=0)
        iw = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp(min=0)
        ih = (torch.minimum(y2, v2) - torch.maximum(y1, v1)).clamp(min=0)
        union = w1 * h1 + w2 * h2 - iw * ih
        return iw * ih / (union + eps), union, (w1, h1, w2, h2)

    iou, union, (w1, h1, w2, h2) = iou_of(x1, y1, x2, y2, u1, v1, u2, v2)
    term = iou
    if inner_ratio is not None:
        def shrink(a1, a2):
            c, half = (a1 + a2) / 2, (a2 - a1) * inner_ratio / 2
            return c - half, c + half

        (p1, p2), (q1, q2) = shrink(x1, x2), shrink(y1, y2)
        (r1, r2), (s1, s2) = shrink(u1, u2), shrink(v1, v2)
        term = iou_of(p1, q1, p2, q2, r1, s1, r2, s2)[0]
    cw, ch, rho2 = ref_enclosing(b1, b2)
    dx, dy = (u1 + u2 - x1 - x2) / 2, (v1 + v2 - y1 - y2) / 2
    if kind == "iou":
        return iou, term, []
    if kind == "giou":
        return iou, term, [(cw * ch - union) / (cw * ch + eps)]
    if kind == "mpdiou":
        norm = IMAGE[0] ** 2 + IMAGE[1] ** 2
        return iou, term, [((x1 - u1) ** 2 + (y1 - v1) ** 2) / norm, ((x2 - u2) ** 2 + (y2 - v2) ** 2) / norm]
    if kind == "siou":
        lam = 2 * (dx * dy).abs() / (rho2 + eps)
        dist = sum(1 - torch.exp(-(2 - lam) * (d / (c + eps)) ** 2) for d, c in ((dx, cw), (dy, ch)))
        omegas = [(a - b).abs() / (torch.maximum(a, b) + eps) for a, b in ((w1, w2), (h1, h2))]
        shape = sum((1 - torch.exp(-omega)) ** 4 for omega in omegas)
        return iou, term, [(dist + shape) / 2]
    terms = [rho2 / (cw**2 + ch**2 + eps)]
    if kind == "ciou":
        v = 4 / math.pi**2 * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
        terms.append((v / (1 - iou + v + eps)).detach() * v)
    if kind == "eiou":
        terms += [(w1 - w2) ** 2 / (cw**2 + eps), (h1 - h2) ** 2 / (ch**2 + eps)]
    return iou, term, terms


def ref_value(b1, b2, kind, alpha=1.0, inner_ratio=None, focaler=None, eps=1e-7):
    """The modifiers' formulas (Inner-IoU, Focaler-IoU: value_kind − IoU + IoU_modified; Alpha-IoU:
    iou^α − Σ term^α), written from the papers."""
    if kind == "wiou":  # 1 − exp(ρ²/(W_g² + H_g²)*)·(1 − IoU), the denominator detached
        cw, ch, rho2 = ref_enclosing(b1, b2)
        iou = ref_terms(b1, b2, "iou", eps)[0]
        return 1 - torch.exp(rho2 / (cw**2 + ch**2 + eps).detach()) * (1 - iou)
    iou, term, terms = ref_terms(b1, b2, kind, eps, inner_ratio)
    if focaler is not None:
        d, u = focaler
        term = ((iou - d) / (u - d)).clamp(0, 1)
    # a penalty that rounds below 0 (one box inside the other: C − U = −ulp) is 0
    return term ** alpha - sum((t.clamp(min=0) ** alpha for t in terms), torch.zeros_like(iou))


def boxes(n, gen, dtype=torch.float64):
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * 40
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * 12 + 0.5
    return torch.cat((xy, xy + wh), -1)


def kw(kind, **mods):
    return {"image_size": IMAGE, **mods} if kind == "mpdiou" else mods


MODIFIERS = [
    dict(alpha=3.0), dict(alpha=0.5), dict(inner_ratio=0.7), dict(inner_ratio=1.3),
    dict(focaler=(0.0, 0.95)), dict(focaler=(0.2, 0.6)),
]


def mods_id(mods):
    return ",".join(f"{k}={v}" for k, v in mods.items()) or "plain"


# ------------------------------------------------------------------------------------------ hand values


def test_hand_values():
    b1 = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    b2 = torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)

    def check(kind, expected, **mods):
        value = bbox_iou(b1, b2, kind, **mods)
        torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)

    # IoU 1/7; centres 1,1 and 2,2: ρ² = 2; enclosing 3x3: W² + H² = 18; corners 1,1 apart: d² = 2 each
    check("wiou", 1 - math.exp(2 / 18) * 6 / 7)
    check("mpdiou", 1 / 7 - 4 / 200, image_size=10)
    check("mpdiou", 1 / 7 - 4 / 500, image_size=(10, 20))
    check("giou", (1 / 7) ** 3 - (2 / 9) ** 3, alpha=3)  # Alpha-GIoU
    # Inner-IoU ratio 1.5: 3x3 boxes about (1,1) and (2,2): I = 4, U = 14; DIoU's penalty on the originals
    check("iou", 4 / 14, inner_ratio=1.5)
    check("diou", 4 / 14 - 2 / 18, inner_ratio=1.5)
    # Focaler (0, 0.5): (1/7)/0.5; (0.2, 0.5): clamped to 0, GIoU's penalty stays
    check("iou", 2 / 7, focaler=(0, 0.5))
    check("giou", -2 / 9, focaler=(0.2, 0.5))


def test_identical_boxes_are_one_for_every_kind_and_modifier():
    b = torch.tensor([[3.0, 4.0, 9.0, 7.0]], dtype=torch.float64)
    for kind in IOU_KINDS:
        for mods in [{}, *([] if kind == "wiou" else MODIFIERS)]:
            if "focaler" in mods:
                continue  # IoU 1 > u maps to 1 only when u = 1
            v = bbox_iou(b, b, kind, **kw(kind, **mods))
            torch.testing.assert_close(v, torch.ones(1, dtype=torch.float64), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ against the references


@pytest.mark.parametrize("kind", IOU_KINDS)
@pytest.mark.parametrize("mods", [{}, *MODIFIERS], ids=mods_id)
def test_values_and_gradients_match_the_paper_formulas(kind, mods):
    if kind == "wiou" and mods:
        pytest.skip("wiou takes no modifier")
    gen = torch.Generator().manual_seed(0)
    b1, b2 = boxes(200, gen), boxes(200, gen)
    b2[:50] = b1[:50] + torch.randn(50, 4, generator=gen, dtype=torch.float64) * 0.5  # overlapping
    a, b = b1.clone().requires_grad_(), b2.clone().requires_grad_()
    ra, rb = b1.clone().requires_grad_(), b2.clone().requires_grad_()
    out = bbox_iou(a, b, kind, **kw(kind, **mods))
    ref = ref_value(ra, rb, kind, **mods)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
    g = torch.linspace(-1, 2, 200, dtype=torch.float64)
    out.backward(g)
    ref.backward(g)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # the naive t^α has an infinite derivative at t = 0 for α < 1 (non-overlapping boxes): where the
    # reference is finite, the gradients agree; detloss gives 0 there (documented convention)
    ok = torch.isfinite(ra.grad).all(-1) & torch.isfinite(rb.grad).all(-1)
    assert ok.sum() >= 50
    torch.testing.assert_close(a.grad[ok], ra.grad[ok], rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(b.grad[ok], rb.grad[ok], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("kind", [k for k in IOU_KINDS if k not in ("ciou", "wiou")])
@pytest.mark.parametrize("mods", MODIFIERS[:1] + MODIFIERS[2:5], ids=str)
def test_gradcheck_with_modifiers(kind, mods):
    """float64 finite differences (ciou's α_v and wiou's c² are constants of the gradient: above)."""
    gen = torch.Generator().manual_seed(1)
    b1 = boxes(6, gen).requires_grad_()
    b2 = (b1.detach() + torch.randn(6, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: bbox_iou(a, b, kind, **kw(kind, **mods)), (b1, b2))


def kinks():
    """Nested, identical, touching, zero-area, concentric, far apart, inverted pairs."""
    rows = [
        ([0, 0, 4, 4], [1, 1, 3, 3]),  # nested, concentric
        ([0, 0, 4, 4], [0, 0, 4, 4]),  # identical
        ([0, 0, 2, 2], [2, 0, 4, 2]),  # touching edges
        ([0, 0, 2, 2], [2, 2, 4, 4]),  # touching corners
        ([1, 1, 1, 1], [1, 1, 1, 1]),  # identical points
        ([0, 0, 0, 3], [0, 0, 2, 3]),  # zero width against a box sharing an edge
        ([0, 0, 2, 2], [0, 0, 2, 0]),  # zero height
        ([0, 0, 1, 1], [50, 50, 51, 52]),  # far apart
        ([3, 3, 1, 1], [0, 0, 2, 2]),  # inverted
    ]
    b1 = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    b2 = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    return b1, b2


@pytest.mark.parametrize("kind", IOU_KINDS)
@pytest.mark.parametrize("mods", [{}, *MODIFIERS], ids=str)
def test_kinks_finite_and_equal_to_the_formula(kind, mods):
    if kind == "wiou" and mods:
        pytest.skip("wiou takes no modifier")
    b1, b2 = kinks()
    for dtype in (torch.float64, torch.float32):
        a, b = b1.to(dtype, copy=True).requires_grad_(), b2.to(dtype, copy=True).requires_grad_()
        out = bbox_iou(a, b, kind, **kw(kind, **mods))
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
        ref = ref_value(b1.to(dtype), b2.to(dtype), kind, **mods)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["giou", "diou", "mpdiou"])
def test_kinks_gradcheck(kind):
    """Finite differences next to the kinks, nudged off the exact ties and zero sides by < 3e-3 (at a
    kink there is no derivative; the conventions there are autograd's, checked in
    tests/kernels/test_fused.py)."""
    b1, b2 = kinks()
    b1 = (b1 + 1e-3 * torch.arange(36, dtype=torch.float64).reshape(9, 4) / 36).requires_grad_()
    b2 = (b2 + 5e-4 + 2e-3 * torch.arange(36, dtype=torch.float64).reshape(9, 4) / 36).requires_grad_()
    for mods in ({}, dict(alpha=3.0), dict(inner_ratio=0.7)):
        assert torch.autograd.gradcheck(lambda a, b, m=mods: bbox_iou(a, b, kind, **kw(kind, **m)), (b1, b2))


def test_half_precision_and_loss_module():
    gen = torch.Generator().manual_seed(2)
    b1, b2 = boxes(30, gen), boxes(30, gen)
    for dtype in (torch.float16, torch.bfloat16):
        p = b1.to(dtype).requires_grad_()
        loss = iou_loss(p, b2.to(dtype), "siou", alpha=3.0)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(p.grad).all()
    mod = detloss.nn.IoULoss("ciou", inner_ratio=0.8, reduction="sum")
    torch.testing.assert_close(mod(b1, b2), (1 - ref_value(b1, b2, "ciou", inner_ratio=0.8)).sum())
    assert "inner_ratio=0.8" in repr(mod)
    pair = box_iou(b1[:5], b2[:7], "mpdiou", image_size=IMAGE)
    torch.testing.assert_close(pair, ref_value(b1[:5, None], b2[None, :7], "mpdiou"))
    # the unchecked core the criteria call: modifiers as keywords, image_size ignored by other kinds
    torch.testing.assert_close(iou_xyxy(b1, b2, "giou", 1e-7, image_size=IMAGE, focaler=(0.0, 0.95)),
                               ref_value(b1, b2, "giou", focaler=(0.0, 0.95)))


def test_modifier_errors():
    a = torch.rand(3, 4) + torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="image_size"):
        bbox_iou(a, a, "mpdiou")
    with pytest.raises(ValueError, match="image_size"):
        iou_loss(a, a, "giou", image_size=640)
    with pytest.raises(ValueError, match="image_size"):
        bbox_iou(a, a, "mpdiou", image_size=(0, 10))
    with pytest.raises(ValueError, match="alpha and focaler"):
        bbox_iou(a, a, "giou", alpha=2.0, focaler=(0.0, 0.9))
    with pytest.raises(ValueError, match="inner_ratio and focaler"):
        detloss.nn.IoULoss("ciou", inner_ratio=0.7, focaler=(0.0, 0.9))
    with pytest.raises(ValueError, match="wiou"):
        iou_loss(a, a, "wiou", alpha=3.0)
    for bad in ((0.5, 0.5), (0.6, 0.2), (-0.1, 0.9), (0.0, 1.5), (0.1,)):
        with pytest.raises(ValueError, match="focaler"):
            bbox_iou(a, a, focaler=bad)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            bbox_iou(a, a, alpha=bad)
        with pytest.raises(ValueError, match="inner_ratio"):
            box_iou(a, a, inner_ratio=bad)


# ------------------------------------------------------------------------------------ Wise-IoU v3


def test_wiou_v3_running_mean_and_focusing():
    gen = torch.Generator().manual_seed(3)
    b1, b2 = boxes(20, gen), boxes(20, gen)
    b2[:10] = b1[:10] + 0.3
    crit = detloss.nn.WIoULoss(alpha=1.9, delta=3.0, momentum=0.1, reduction="none")
    assert crit.iou_mean.item() == 1.0 and "iou_mean" in crit.state_dict()
    p = b1.clone().requires_grad_()
    out = crit(p, b2)
    l_iou = 1 - ref_terms(b1, b2, "iou")[0]
    mu = 0.9 * 1.0 + 0.1 * l_iou.mean()  # updated before use
    torch.testing.assert_close(crit.iou_mean, mu.float())
    beta = l_iou / mu.float().double()
    r = beta / (3.0 * 1.9 ** (beta - 3.0))
    torch.testing.assert_close(out, r * (1 - ref_value(b1, b2, "wiou")), rtol=1e-6, atol=1e-9)
    # gradient through Wise-IoU v1 only: β is a constant
    out.sum().backward()
    ra = b1.clone().requires_grad_()
    (r * (1 - ref_value(ra, b2, "wiou"))).sum().backward()
    torch.testing.assert_close(p.grad, ra.grad, rtol=1e-6, atol=1e-9)
    # eval: no update; empty call: no update
    crit.eval()
    crit(b1, b2)
    torch.testing.assert_close(crit.iou_mean, mu.float())
    crit.train()
    crit(b1[:0], b2[:0])
    torch.testing.assert_close(crit.iou_mean, mu.float())
    mean = detloss.nn.WIoULoss(momentum=0.0)(b1, b2, weight=torch.full((20,), 2.0, dtype=torch.float64))
    beta1 = l_iou / 1.0
    focus1 = beta1 / (3.0 * 1.9 ** (beta1 - 3.0))
    torch.testing.assert_close(mean, (2 * focus1 * (1 - ref_value(b1, b2, "wiou"))).mean())
    with pytest.raises(ValueError, match="momentum"):
        detloss.nn.WIoULoss(momentum=1.5)


# --------------------------------------------------------------------------------- compiled path


def _has_compiler():
    import shutil

    return shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _has_compiler(), reason="no C++ compiler for inductor")
@pytest.mark.parametrize("kind,mods", [("wiou", {}), ("mpdiou", {}), ("ciou", dict(alpha=3.0))])
def test_compiled_path_matches_eager(kind, mods, monkeypatch):
    from detloss.kernels import runtime

    gen = torch.Generator().manual_seed(4)
    b1, b2 = boxes(300, gen, torch.float32), boxes(300, gen, torch.float32)
    grads = []
    for on in (False, True):
        monkeypatch.setattr(runtime, "_compile_enabled", on)
        p = b1.clone().requires_grad_()
        loss = iou_loss(p, b2, kind, **kw(kind, **mods))
        loss.backward()
        grads.append((loss.detach(), p.grad))
    assert not runtime._failed
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)
