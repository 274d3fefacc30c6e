"""The IoU family: hand-computed values, a naive reference, identities, gradients, degenerate boxes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detloss import bbox_iou, box_convert, box_iou, iou_loss
from tests.helpers import random_boxes
from tests.reference.naive import KINDS, ciou_frozen_alpha, iou_pair, iou_rows

PI = math.pi


# --------------------------------------------------------------------------- hand-computed values
def _siou_hand(iou, dx, dy, cw, ch, w1, h1, w2, h2):
    """The SIoU paper's formula in plain arithmetic (arcsin form of the angle cost)."""
    sigma = math.hypot(dx, dy)
    lam = 1 - 2 * math.sin(math.asin(abs(dy) / sigma) - PI / 4) ** 2
    delta = (1 - math.exp(-(2 - lam) * (dx / cw) ** 2)) + (1 - math.exp(-(2 - lam) * (dy / ch) ** 2))
    omega_w, omega_h = abs(w1 - w2) / max(w1, w2), abs(h1 - h2) / max(h1, h2)
    omega = (1 - math.exp(-omega_w)) ** 4 + (1 - math.exp(-omega_h)) ** 4
    return iou - (delta + omega) / 2


def _ciou_hand(diou, iou, w1, h1, w2, h2):
    v = 4 / PI**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    return diou - v / ((1 - iou) + v) * v


# A = [0,0,2,2], B = [1,1,3,3]: I = 1, U = 4 + 4 - 1 = 7, C = [0,0,3,3] -> |C| = 9.
# centres (1,1), (2,2): dx = dy = 1, rho^2 = 2; diagonal c^2 = 9 + 9 = 18; equal sizes.
# SIoU: sigma = sqrt 2, arcsin(1/sqrt 2) = pi/4 -> Lambda = 1; Delta = 2 (1 - exp(-(1/3)^2)); Omega = 0.
_A, _B = [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]
_AB = {
    "iou": 1 / 7,
    "giou": 1 / 7 - (9 - 7) / 9,
    "diou": 1 / 7 - 2 / 18,
    "ciou": 1 / 7 - 2 / 18,  # same aspect ratio: v = 0
    "eiou": 1 / 7 - 2 / 18 - 0 / 9 - 0 / 9,
    "siou": 1 / 7 - (2 * (1 - math.exp(-1 / 9)) + 0) / 2,
}
# P = [0,0,4,2] (w 4, h 2), Q = [1,1,3,5] (w 2, h 4): I = 2 * 1 = 2, U = 8 + 8 - 2 = 14,
# C = [0,0,4,5]: C_w = 4, C_h = 5, |C| = 20. Centres (2,1), (2,3): dx = 0, dy = 2, rho^2 = 4, c^2 = 41.
# SIoU: arcsin(2/2) = pi/2 -> Lambda = 1 - 2 sin^2(pi/4) = 0; omega_w = omega_h = 2/4.
_P, _Q = [0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 3.0, 5.0]
_PQ = {
    "iou": 2 / 14,
    "giou": 2 / 14 - (20 - 14) / 20,
    "diou": 2 / 14 - 4 / 41,
    "ciou": _ciou_hand(2 / 14 - 4 / 41, 2 / 14, 4, 2, 2, 4),
    "eiou": 2 / 14 - 4 / 41 - (4 - 2) ** 2 / 16 - (2 - 4) ** 2 / 25,
    "siou": _siou_hand(2 / 14, 0.0, 2.0, 4, 5, 4, 2, 2, 4),
}
# D = [0,0,2,2] (w 2, h 2), E = [3,1,5,4] (w 2, h 3): disjoint, I = 0, U = 4 + 6 = 10.
# C = [0,0,5,4]: C_w = 5, C_h = 4, |C| = 20. Centres (1,1), (4,2.5): dx = 3, dy = 1.5, rho^2 = 11.25,
# c^2 = 41. SIoU at a generic angle.
_D, _E = [0.0, 0.0, 2.0, 2.0], [3.0, 1.0, 5.0, 4.0]
_DE = {
    "iou": 0.0,
    "giou": 0 - (20 - 10) / 20,
    "diou": 0 - 11.25 / 41,
    "ciou": _ciou_hand(-11.25 / 41, 0.0, 2, 2, 2, 3),
    "eiou": 0 - 11.25 / 41 - 0 / 25 - (2 - 3) ** 2 / 16,
    "siou": _siou_hand(0.0, 3.0, 1.5, 5, 4, 2, 2, 2, 3),
}
HAND = [(_A, _B, _AB), (_P, _Q, _PQ), (_D, _E, _DE)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b1,b2,table", HAND, ids=["AB", "PQ", "DE"])
def test_hand_values(kind, b1, b2, table):
    t1, t2 = torch.tensor(b1, dtype=torch.float64), torch.tensor(b2, dtype=torch.float64)
    got = bbox_iou(t1, t2, kind, eps=1e-15).item()
    assert got == pytest.approx(table[kind], rel=1e-12, abs=1e-14)
    # the default eps moves the value by at most ~eps relative for boxes of area >= 1
    assert bbox_iou(t1, t2, kind).item() == pytest.approx(table[kind], abs=1e-6)
    # loss = 1 - similarity
    assert iou_loss(t1, t2, kind, eps=1e-15).item() == pytest.approx(1 - table[kind], rel=1e-12)


def test_hand_values_other_formats():
    # _P in xywh is (0,0,4,2), _Q is (1,1,2,4); in cxcywh (2,1,4,2) and (2,3,2,4).
    p, q = torch.tensor([0.0, 0.0, 4.0, 2.0]), torch.tensor([1.0, 1.0, 2.0, 4.0])
    assert bbox_iou(p, q, "giou", fmt="xywh").item() == pytest.approx(_PQ["giou"], abs=1e-6)
    p, q = torch.tensor([2.0, 1.0, 4.0, 2.0]), torch.tensor([2.0, 3.0, 2.0, 4.0])
    assert bbox_iou(p, q, "eiou", fmt="cxcywh").item() == pytest.approx(_PQ["eiou"], abs=1e-6)


def test_siou_angle_cost_equals_sin_2alpha():
    # The identity our arcsin-free form relies on: 1 - 2 sin^2(arcsin(s) - pi/4) = sin(2 arcsin(s)).
    for s in (0.0, 0.1, 0.5, 2**-0.5, 0.9, 1.0):
        lam = 1 - 2 * math.sin(math.asin(s) - PI / 4) ** 2
        assert lam == pytest.approx(math.sin(2 * math.asin(s)), abs=1e-15)


# --------------------------------------------------------------------------- naive reference
box_rows = st.lists(
    st.tuples(
        st.floats(-20, 20), st.floats(-20, 20), st.floats(0.5, 15), st.floats(0.5, 15),
        st.floats(-20, 20), st.floats(-20, 20), st.floats(0.5, 15), st.floats(0.5, 15),
    ),
    min_size=1,
    max_size=16,
)


def _pairs(rows, dtype=torch.float64):
    t = torch.tensor(rows, dtype=torch.float64)
    b1 = torch.cat((t[:, 0:2], t[:, 0:2] + t[:, 2:4]), 1)
    b2 = torch.cat((t[:, 4:6], t[:, 4:6] + t[:, 6:8]), 1)
    return b1.to(dtype), b2.to(dtype)


@pytest.mark.parametrize("kind", KINDS)
@given(rows=box_rows)
def test_matches_naive_reference_float64(kind, rows):
    b1, b2 = _pairs(rows)
    ref = iou_rows(b1, b2, kind)
    torch.testing.assert_close(bbox_iou(b1, b2, kind, eps=1e-15), ref, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_naive_reference_random_float64_and_float32(kind):
    b1, b2 = random_boxes(300), random_boxes(300)
    ref = iou_rows(b1, b2, kind)
    torch.testing.assert_close(bbox_iou(b1, b2, kind, eps=1e-15), ref, rtol=1e-6, atol=1e-12)
    out32 = bbox_iou(b1.float(), b2.float(), kind)  # default eps
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref, rtol=0, atol=1e-4)
    # the same boxes in the other formats
    for fmt in ("xywh", "cxcywh"):
        c1, c2 = box_convert(b1, "xyxy", fmt), box_convert(b2, "xyxy", fmt)
        torch.testing.assert_close(bbox_iou(c1, c2, kind, fmt, eps=1e-15), ref, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_broadcasting_matches_expanded(kind):
    b1 = random_boxes(5).reshape(5, 1, 4)
    b2 = random_boxes(3).reshape(1, 3, 4)
    out = bbox_iou(b1, b2, kind)
    assert out.shape == (5, 3)
    exp = bbox_iou(b1.expand(5, 3, 4).reshape(-1, 4), b2.expand(5, 3, 4).reshape(-1, 4), kind)
    torch.testing.assert_close(out.reshape(-1), exp, rtol=0, atol=0)
    # a single box against many
    assert bbox_iou(b1[0, 0], b2[0], kind).shape == (3,)


# --------------------------------------------------------------------------- identities
box = st.tuples(st.floats(-50, 50), st.floats(-50, 50), st.floats(1, 30), st.floats(1, 30)).map(
    lambda r: [r[0], r[1], r[0] + r[2], r[1] + r[3]]
)


def _t(b):
    return torch.tensor(b, dtype=torch.float64)


@given(b1=box, b2=box)
def test_symmetry_and_ranges(b1, b2):
    t1, t2 = _t(b1), _t(b2)
    vals = {}
    for kind in KINDS:
        ab, ba = bbox_iou(t1, t2, kind).item(), bbox_iou(t2, t1, kind).item()
        assert ab == pytest.approx(ba, rel=1e-12, abs=1e-12), kind
        vals[kind] = ab
    tol = 1e-12  # nested boxes: |C| - U is 0 up to rounding, which may have either sign
    assert 0 <= vals["iou"] <= 1
    assert -1 <= vals["giou"] <= vals["iou"] + tol
    assert -1 <= vals["diou"] <= vals["iou"] + tol
    assert -1.5 <= vals["ciou"] <= vals["diou"] + tol
    assert -3 < vals["eiou"] <= vals["diou"] + tol
    assert -2 < vals["siou"] <= vals["iou"] + tol
    assert all(v <= 1 for v in vals.values())


@given(b1=box, b2=box, s=st.floats(1e-2, 1e2), dx=st.floats(-1e3, 1e3), dy=st.floats(-1e3, 1e3))
def test_scale_and_translation_invariance(b1, b2, s, dx, dy):
    t1, t2 = _t(b1), _t(b2)
    shift = torch.tensor([dx, dy, dx, dy], dtype=torch.float64)
    for kind in KINDS:
        base = bbox_iou(t1, t2, kind, eps=1e-15)
        # boxes of size >= 1 scaled by >= 1e-2: areas >= 1e-4, so eps = 1e-15 is negligible
        torch.testing.assert_close(bbox_iou(t1 * s, t2 * s, kind, eps=1e-15), base, rtol=1e-9, atol=1e-9)
        # shifts up to 1e3 on coordinates ~50 lose ~5 bits of the float64 mantissa
        moved = bbox_iou(t1 + shift, t2 + shift, kind, eps=1e-15)
        torch.testing.assert_close(moved, base, rtol=1e-9, atol=1e-9)


@given(b=box)
def test_identical_boxes_give_one(b):
    t = _t(b)
    for kind in KINDS:
        assert bbox_iou(t, t, kind).item() == pytest.approx(1.0, abs=1e-7), kind


@given(cx=st.floats(-50, 50), cy=st.floats(-50, 50), w1=st.integers(1, 64), h1=st.integers(1, 64),
       w2=st.integers(1, 64), h2=st.integers(1, 64))
def test_concentric_diou_equals_iou(cx, cy, w1, h1, w2, h2):
    # half-integer half-sizes around a float centre: both centres are exactly (cx, cy) up to rounding
    b1 = torch.tensor([cx, cy, w1, h1], dtype=torch.float64)
    b2 = torch.tensor([cx, cy, w2, h2], dtype=torch.float64)
    iou = bbox_iou(b1, b2, "iou", "cxcywh")
    torch.testing.assert_close(bbox_iou(b1, b2, "diou", "cxcywh"), iou, rtol=0, atol=1e-12)
    # concentric boxes: nested, so I = min(w) min(h) by hand
    exp = min(w1, w2) * min(h1, h2) / (w1 * h1 + w2 * h2 - min(w1, w2) * min(h1, h2))
    assert iou.item() == pytest.approx(exp, abs=1e-6)


@given(b1=box, k=st.floats(0.1, 10), x=st.floats(-50, 50), y=st.floats(-50, 50))
def test_ciou_equals_diou_for_equal_aspect_ratio(b1, k, x, y):
    t1 = _t(b1)
    w, h = b1[2] - b1[0], b1[3] - b1[1]
    t2 = torch.tensor([x, y, x + k * w, y + k * h], dtype=torch.float64)
    torch.testing.assert_close(bbox_iou(t1, t2, "ciou"), bbox_iou(t1, t2, "diou"), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- pairwise
@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_equals_elementwise_grid(kind):
    a, b = random_boxes(7), random_boxes(5)
    out = box_iou(a, b, kind)
    assert out.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            assert out[i, j].item() == pytest.approx(iou_pair(a[i].tolist(), b[j].tolist(), kind), abs=1e-6)
            assert out[i, j].item() == bbox_iou(a[i], b[j], kind).item()


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_empty_shapes(kind):
    m = random_boxes(3)
    assert box_iou(torch.zeros(0, 4), m, kind).shape == (0, 3)
    assert box_iou(m, torch.zeros(0, 4), kind).shape == (3, 0)
    assert box_iou(torch.zeros(0, 4), torch.zeros(0, 4), kind).shape == (0, 0)
    assert bbox_iou(torch.zeros(0, 4), torch.zeros(0, 4), kind).shape == (0,)


def test_pairwise_rejects_batched_input():
    with pytest.raises(ValueError, match="boxes1"):
        box_iou(torch.rand(2, 3, 4), torch.rand(3, 4))
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(torch.rand(3, 4), torch.rand(4))


# --------------------------------------------------------------------------- gradients
def _generic_pairs(n=6):
    """Partially overlapping boxes with no coordinate ties (the min/max/clamp kinks are avoided)."""
    b1 = random_boxes(n, lo=2.0, hi=4.0, span=1.0)
    b2 = random_boxes(n, lo=2.0, hi=4.0, span=1.0) + 0.3
    return b1.requires_grad_(), b2.requires_grad_()


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "ciou"])
def test_gradcheck(kind):
    b1, b2 = _generic_pairs()
    assert torch.autograd.gradcheck(lambda p, q: bbox_iou(p, q, kind), (b1, b2))
    assert torch.autograd.gradcheck(lambda p, q: iou_loss(p, q, kind, reduction="none"), (b1, b2))
    assert torch.autograd.gradcheck(lambda p, q: iou_loss(p, q, kind, fmt="cxcywh"), (b1, b2))
    # disjoint boxes exercise the penalty terms alone
    far = (b2.detach() + 10.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, q: bbox_iou(p, q, kind), (b1, far))


def test_ciou_gradient_holds_alpha_constant():
    # Finite differences would see alpha move, so compare against the frozen-alpha reference instead.
    b1, b2 = _generic_pairs(20)
    ours = torch.autograd.grad(bbox_iou(b1, b2, "ciou", eps=1e-15).sum(), (b1, b2))
    ref = torch.autograd.grad(ciou_frozen_alpha(b1, b2).sum(), (b1, b2))
    for g, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-12)
    # and the value itself matches the full (alpha included) naive reference
    torch.testing.assert_close(
        bbox_iou(b1, b2, "ciou", eps=1e-15), iou_rows(b1.detach(), b2.detach(), "ciou"), rtol=1e-9, atol=1e-12
    )
    # the loss gradient is the negated similarity gradient
    lg = torch.autograd.grad(iou_loss(b1, b2, "ciou", eps=1e-15, reduction="sum"), (b1, b2))
    for g, r in zip(lg, ref, strict=True):
        torch.testing.assert_close(g, -r, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------- degenerate boxes
DEGENERATE = {
    "zero_width": ([1.0, 1.0, 1.0, 3.0], [0.0, 0.0, 2.0, 2.0]),
    "zero_height": ([0.0, 1.0, 2.0, 1.0], [0.0, 0.0, 2.0, 2.0]),
    "point": ([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]),
    "point_outside": ([5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 2.0, 2.0]),
    "both_points": ([1.0, 1.0, 1.0, 1.0], [3.0, 2.0, 3.0, 2.0]),
    "same_point": ([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]),
    "both_zero_width_same_x": ([1.0, 0.0, 1.0, 3.0], [1.0, 1.0, 1.0, 2.0]),
    "identical": ([0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 2.0, 3.0]),
    "concentric": ([0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0]),
    "same_x_centre": ([0.0, 0.0, 2.0, 2.0], [0.0, 5.0, 2.0, 7.0]),
    "far_apart": ([0.0, 0.0, 1.0, 1.0], [1e4, 1e4, 1e4 + 1.0, 1e4 + 1.0]),
    "far_apart_big": ([0.0, 0.0, 1e4, 1e4], [-2e4, 3e4, -1e4, 3.5e4]),
    "tiny_scale": ([0.0, 0.0, 1e-4, 2e-4], [5e-5, 5e-5, 1.5e-4, 1e-4]),
    "tiny_identical": ([1e-4, 1e-4, 2e-4, 2e-4], [1e-4, 1e-4, 2e-4, 2e-4]),
    "huge_scale": ([0.0, 0.0, 1e4, 2e4], [5e3, 5e3, 1.5e4, 1e4]),
    "inverted": ([2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]),
    "inverted_both": ([2.0, 3.0, 0.0, 1.0], [3.0, 3.0, 1.0, 0.0]),
    # regression: the enclosing width max(x2, u2) - min(x1, u1) was negative here, GIoU came out 1.48
    "inverted_enclosure": ([0.0, 0.0, -6e-8, 0.0], [0.0, 0.0, -1.0, 1.0]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_boxes_finite_values_and_gradients(kind, dtype):
    b1 = torch.tensor([p for p, _ in DEGENERATE.values()], dtype=dtype, requires_grad=True)
    b2 = torch.tensor([q for _, q in DEGENERATE.values()], dtype=dtype, requires_grad=True)
    for fn in (lambda p, q: bbox_iou(p, q, kind), lambda p, q: iou_loss(p, q, kind, reduction="none")):
        out = fn(b1, b2)
        assert torch.isfinite(out).all(), dict(zip(DEGENERATE, out.tolist(), strict=True))
        g1, g2 = torch.autograd.grad(out.sum(), (b1, b2))
        bad = ~(torch.isfinite(g1).all(1) & torch.isfinite(g2).all(1))
        assert not bad.any(), [name for name, b in zip(DEGENERATE, bad.tolist(), strict=True) if b]
    # the pairwise form over every combination, both directions
    out = box_iou(b1, b2, kind)
    g1, g2 = torch.autograd.grad(out.sum(), (b1, b2))
    assert torch.isfinite(out).all() and torch.isfinite(g1).all() and torch.isfinite(g2).all()
    vals = bbox_iou(b1, b2, kind).detach()
    assert (vals <= 1 + 1e-6).all()
    names = list(DEGENERATE)
    assert vals[names.index("identical")].item() == pytest.approx(1.0, abs=1e-6)
    # eps is absolute: boxes of area 1e-8 < eps are finite but far from 1 unless eps is lowered
    tiny = names.index("tiny_identical")
    assert bbox_iou(b1[tiny], b2[tiny], kind, eps=1e-20).item() == pytest.approx(1.0, abs=1e-5)
    for name in ("inverted", "point", "both_points", "same_point", "far_apart"):
        assert bbox_iou(b1, b2, "iou").detach()[names.index(name)].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_inputs(kind, dtype):
    b1 = torch.tensor([p for p, _ in DEGENERATE.values()] + [_P], dtype=dtype, requires_grad=True)
    b2 = torch.tensor([q for _, q in DEGENERATE.values()] + [_Q], dtype=dtype, requires_grad=True)
    out = bbox_iou(b1, b2, kind)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    g1, g2 = torch.autograd.grad(out.float().sum(), (b1, b2))
    # The gradient is returned in the input dtype. At zero-area boxes it scales like 1/eps (1e7), which
    # is finite in float32 and bfloat16 but beyond float16's 65504: inf is allowed only there.
    f1, f2 = b1.detach().float().requires_grad_(), b2.detach().float().requires_grad_()
    r1, r2 = torch.autograd.grad(bbox_iou(f1, f2, kind).sum(), (f1, f2))
    fmax = torch.finfo(dtype).max
    for g, r in ((g1, r1), (g2, r2)):
        assert torch.isfinite(r).all()
        assert (torch.isfinite(g) | (r.abs() > fmax)).all()
        if dtype == torch.bfloat16:
            assert torch.isfinite(g).all()
    # computed in float32: the hand value of the ordinary pair survives up to the output rounding
    assert out[-1].item() == pytest.approx(_PQ[kind], abs=1e-2)
    loss = iou_loss(b1, b2, kind)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # equal to the float32 computation of the same (exactly representable) half inputs
    torch.testing.assert_close(
        iou_loss(b1, b2, kind, reduction="none"), iou_loss(b1.float(), b2.float(), kind, reduction="none")
    )


# --------------------------------------------------------------------------- errors
def test_errors():
    a = torch.rand(3, 4)
    with pytest.raises(ValueError, match="kind"):
        bbox_iou(a, a, "wise")
    with pytest.raises(ValueError, match="kind"):
        box_iou(a, a, "IoU")
    with pytest.raises(ValueError, match="kind"):
        iou_loss(a, a, "dio")
    with pytest.raises(ValueError, match="fmt"):
        bbox_iou(a, a, fmt="xyhw")
    with pytest.raises(ValueError, match=r"boxes1.*\(\.\.\., 4\)"):
        bbox_iou(torch.rand(3, 5), a)
    with pytest.raises(ValueError, match=r"boxes2.*\(\.\.\., 4\)"):
        box_iou(a, torch.rand(3, 2))
    with pytest.raises(TypeError, match="boxes1.*floating"):
        bbox_iou(torch.ones(3, 4, dtype=torch.int64), a)
    with pytest.raises(TypeError, match="target.*floating"):
        iou_loss(a, torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="boxes2"):
        bbox_iou(a, [0.0, 0.0, 1.0, 1.0])
    bad = a.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"boxes2.*index \(1, 3\)"):
        bbox_iou(a, bad)
    with pytest.raises(ValueError, match=r"boxes1.*index \(1, 3\)"):
        box_iou(bad, a)
    bad[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"pred.*index \(1, 3\)"):
        iou_loss(bad, a)
    # validate=False skips the finiteness scan (the caller vouches for the data)
    assert bbox_iou(bad, a, validate=False).shape == (3,)
    with pytest.raises(ValueError, match="broadcast"):
        bbox_iou(torch.rand(3, 4), torch.rand(2, 4))
    with pytest.raises(ValueError, match="broadcast"):
        iou_loss(torch.rand(3, 4), torch.rand(2, 4))
    for eps in (0.0, -1e-7, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            bbox_iou(a, a, eps=eps)


@pytest.mark.parametrize("eps", [1e-7, 1e-9, 1e-20])
@pytest.mark.parametrize("kind", KINDS)
def test_identical_boxes_small_eps_float32(kind, eps):
    # regression: CIoU's alpha was v / (v - iou + (1 + eps)); 1 + 1e-9 == 1 in float32 gave 0/0
    b = torch.tensor([[0.0, 0.0, 2.0, 3.0], [10.0, 20.0, 210.0, 320.0]], requires_grad=True)
    out = bbox_iou(b, b.detach(), kind, eps=eps)
    torch.testing.assert_close(out, torch.ones(2), rtol=0, atol=1e-6)
    (g,) = torch.autograd.grad(out.sum(), b)
    assert torch.isfinite(g).all()


any_xyxy = st.lists(
    st.tuples(*[st.one_of(st.floats(-1e4, 1e4), st.sampled_from([0.0, 1.0, 1e-4])) for _ in range(8)]),
    min_size=1,
    max_size=8,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(rows=any_xyxy)
def test_arbitrary_xyxy_finite_values_and_gradients(dtype, rows):
    # any finite corners, inverted and zero-size boxes included, in [-1e4, 1e4]
    t = torch.tensor(rows, dtype=dtype)
    b1, b2 = t[:, :4].clone().requires_grad_(), t[:, 4:].clone().requires_grad_()
    lower = {"iou": 0.0, "giou": -1.0, "diou": -1.0, "ciou": -1.5, "eiou": -3.0, "siou": -2.0}
    for kind in KINDS:
        out = bbox_iou(b1, b2, kind)
        assert torch.isfinite(out).all(), kind
        assert (out <= 1 + 1e-6).all() and (out >= lower[kind] - 1e-6).all(), (kind, out)
        g1, g2 = torch.autograd.grad(out.sum(), (b1, b2))
        assert torch.isfinite(g1).all() and torch.isfinite(g2).all(), kind
