"""Oriented boxes: the exact rotated IoU, ProbIoU, KLD and GWD against independent references (a
Sutherland–Hodgman clipper, the papers' Gaussian formulas with full matrices), hand cases, gradients,
properties, degenerate boxes, precision, syncs and input checks."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import detloss
from detloss import box_convert_rotated, rotated_bbox_iou, rotated_box_iou, rotated_iou_loss
from detloss.profiling import DispatchCounter

from .reference import rotated as ref

KINDS = ("iou", "probiou", "kld", "gwd")
F64 = torch.float64


def t(*rows: list[float], dtype: torch.dtype = F64, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype, requires_grad=grad)


def random_rboxes(n: int, rng: random.Random, lo: float = 0.5, hi: float = 6.0, span: float = 6.0) -> list:
    return [[rng.uniform(0, span), rng.uniform(0, span), rng.uniform(lo, hi), rng.uniform(lo, hi),
             rng.uniform(-4.0, 4.0)] for _ in range(n)]


def relerr(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# --- hand cases --------------------------------------------------------------------------------------


def test_unit_squares_offset_by_half():
    a, b = t([0.0, 0.0, 1.0, 1.0, 0.0]), t([0.5, 0.0, 1.0, 1.0, 0.0])
    assert rotated_bbox_iou(a, b, "iou", eps=1e-12).item() == pytest.approx(1 / 3, rel=1e-12)
    # the same overlap, both boxes turned by 0.7 rad about a common point
    c, s = math.cos(0.7), math.sin(0.7)
    a2, b2 = t([0.0, 0.0, 1.0, 1.0, 0.7]), t([0.5 * c, 0.5 * s, 1.0, 1.0, 0.7])
    assert rotated_bbox_iou(a2, b2, "iou", eps=1e-12).item() == pytest.approx(1 / 3, rel=1e-12)


def test_square_and_itself_turned_45_degrees():
    # the intersection is the regular octagon of area 2(√2 − 1); IoU = 2(√2 − 1) / (2 − 2(√2 − 1)) = 1/√2
    a, b = t([3.0, -2.0, 1.0, 1.0, 0.2]), t([3.0, -2.0, 1.0, 1.0, 0.2 + math.pi / 4])
    assert rotated_bbox_iou(a, b, "iou", eps=1e-12).item() == pytest.approx(1 / math.sqrt(2), rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_ninety_degrees_with_swapped_sides_is_the_same_box(kind):
    a = t([1.0, 2.0, 4.0, 1.5, 0.3])
    b = t([1.0, 2.0, 1.5, 4.0, 0.3 + math.pi / 2])
    same = rotated_bbox_iou(a, a, kind).item()
    assert rotated_bbox_iou(a, b, kind).item() == pytest.approx(same, rel=1e-12)


def test_identical_box_limits():
    a = t([1.0, 2.0, 4.0, 1.5, 0.3])
    eps = 1e-7
    assert rotated_bbox_iou(a, a, "iou", eps).item() == pytest.approx(6.0 / (6.0 + eps), rel=1e-12)
    # ultralytics' placements: B = clamp(½·ln(1 + eps), eps, 100) = eps, 1 − √(1 − e^(−eps) + eps)
    assert rotated_bbox_iou(a, a, "probiou", eps).item() == pytest.approx(
        1 - math.sqrt(1 - math.exp(-eps) + eps), rel=1e-9)
    # KL = 0 and W = 0 are clamped at eps before the square root
    assert rotated_bbox_iou(a, a, "kld", eps).item() == pytest.approx(1 / (1 + math.log1p(math.sqrt(eps))))
    scale = 2 * ((4 * 1.5 / 4) ** 2) ** 0.25  # 2·(det Σ₁·det Σ₂)^(1/8), det Σ = (wh/4)²
    assert rotated_bbox_iou(a, a, "gwd", eps).item() == pytest.approx(
        1 / (1 + math.log1p(math.sqrt(eps) / scale)))


def test_nested_touching_and_disjoint():
    big = t([0.0, 0.0, 4.0, 4.0, 0.4])
    small = t([0.3, -0.2, 1.0, 0.5, -1.1])  # well inside the big one
    assert rotated_bbox_iou(big, small, "iou", 0.0 + 1e-12).item() == pytest.approx(0.5 / 16, rel=1e-10)
    left, right = t([0.0, 0.0, 2.0, 1.0, 0.0]), t([2.0, 0.0, 2.0, 1.0, 0.0])  # sharing an edge
    assert rotated_bbox_iou(left, right, "iou").item() == pytest.approx(0.0, abs=1e-12)
    far = t([10.0, 0.0, 2.0, 1.0, 1.0])
    assert rotated_bbox_iou(left, far, "iou").item() == 0.0


# --- against the references ------------------------------------------------------------------------


def _pairs(n: int = 300, seed: int = 1) -> tuple[list, list]:
    rng = random.Random(seed)
    return random_rboxes(n, rng), random_rboxes(n, rng)


def test_exact_iou_equals_the_polygon_clipper():
    b1, b2 = _pairs()
    got = rotated_bbox_iou(torch.tensor(b1, dtype=F64), torch.tensor(b2, dtype=F64), "iou").tolist()
    want = [ref.polygon_iou(p, q, 1e-7) for p, q in zip(b1, b2, strict=True)]
    assert sum(w > 0 for w in want) > 100  # the sample holds many overlaps
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-9, abs=1e-12)


def test_exact_iou_pairwise_equals_the_polygon_clipper():
    b1, b2 = _pairs(12, seed=2)
    got = rotated_box_iou(torch.tensor(b1, dtype=F64), torch.tensor(b2[:7], dtype=F64))
    assert got.shape == (12, 7)
    for i, p in enumerate(b1):
        for j, q in enumerate(b2[:7]):
            assert got[i, j].item() == pytest.approx(ref.polygon_iou(p, q, 1e-7), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("floor", [0.0, 0.01])
def test_probiou_equals_ultralytics_formula(floor):
    b1, b2 = _pairs()
    got = rotated_bbox_iou(torch.tensor(b1, dtype=F64), torch.tensor(b2, dtype=F64), "probiou", floor=floor)
    for g, p, q in zip(got.tolist(), b1, b2, strict=True):
        assert relerr(g, ref.probiou(p, q, 1e-7, floor)) < 1e-10


def test_probiou_equals_the_paper_without_eps():
    b1, b2 = _pairs()
    tiny = torch.finfo(torch.float32).tiny  # the smallest eps allowed: the paper's formula
    got = rotated_bbox_iou(torch.tensor(b1, dtype=F64), torch.tensor(b2, dtype=F64), "probiou", tiny)
    for g, p, q in zip(got.tolist(), b1, b2, strict=True):
        assert g == pytest.approx(ref.probiou(p, q, None), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("kind", ["kld", "gwd"])
def test_gaussian_distances_equal_the_papers(kind):
    b1, b2 = _pairs()
    f = ref.kld_similarity if kind == "kld" else ref.gwd_similarity
    got = rotated_bbox_iou(torch.tensor(b1, dtype=F64), torch.tensor(b2, dtype=F64), kind)
    for g, p, q in zip(got.tolist(), b1, b2, strict=True):
        assert relerr(g, f(p, q)) < 1e-10


@pytest.mark.parametrize("kind", ["kld", "gwd"])
def test_gaussian_distances_of_small_boxes_where_the_clamps_bind(kind):
    # sides ≈ 0.01: √(det Σ₁ det Σ₂) ≈ 1e-9 < √eps, mmrotate's clamp of it decides GWD's value
    rng = random.Random(7)
    b1, b2 = random_rboxes(50, rng, 0.005, 0.02, 0.02), random_rboxes(50, rng, 0.005, 0.02, 0.02)
    f = ref.kld_similarity if kind == "kld" else ref.gwd_similarity
    got = rotated_bbox_iou(torch.tensor(b1, dtype=F64), torch.tensor(b2, dtype=F64), kind)
    for g, p, q in zip(got.tolist(), b1, b2, strict=True):
        assert relerr(g, f(p, q)) < 1e-9


def test_kld_is_the_targets_divergence_from_the_prediction():
    pred, target = [0.0, 0.0, 2.0, 1.0, 0.0], [0.5, 0.2, 4.0, 3.0, 0.6]
    fwd = rotated_bbox_iou(t(pred), t(target), "kld").item()
    assert fwd == pytest.approx(ref.kld_similarity(pred, target), rel=1e-12)
    assert abs(fwd - rotated_bbox_iou(t(target), t(pred), "kld").item()) > 1e-3


# --- gradients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_generic(kind):
    b1 = t([0.0, 0.0, 3.0, 2.0, 0.3], [1.0, 1.0, 2.5, 1.2, -0.4], [0.2, -0.1, 1.0, 4.0, 1.2], grad=True)
    b2 = t([0.7, 0.4, 2.0, 2.2, -0.5], [1.3, 0.6, 1.8, 2.0, 0.9], [0.0, 0.3, 3.0, 1.5, 0.1], grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rotated_bbox_iou(a, b, kind, floor=0.0), (b1, b2))


DEGENERATE = {
    "identical": ([1.0, 2.0, 3.0, 1.0, 0.3], [1.0, 2.0, 3.0, 1.0, 0.3]),
    "nested": ([0.0, 0.0, 4.0, 4.0, 0.0], [0.5, 0.0, 1.0, 1.0, 0.0]),
    "touching": ([0.0, 0.0, 2.0, 1.0, 0.0], [2.0, 0.0, 2.0, 1.0, 0.0]),
    "corner touching": ([0.0, 0.0, 2.0, 2.0, 0.0], [2.0, 2.0, 2.0, 2.0, 0.0]),
    "zero area": ([0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]),
    "zero width": ([0.0, 0.0, 0.0, 2.0, 0.4], [0.1, 0.0, 1.0, 1.0, 0.0]),
    "point in a box": ([0.2, 0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0, 0.5]),
    "90 degrees apart": ([0.0, 0.0, 3.0, 1.0, 0.0], [0.0, 0.0, 3.0, 1.0, math.pi / 2]),
    "swapped sides": ([0.0, 0.0, 3.0, 1.0, 0.0], [0.0, 0.0, 1.0, 3.0, math.pi / 2]),
    "sliver": ([0.0, 0.0, 1e4, 1e-4, 0.7], [1.0, 0.5, 1e4, 1e-4, 0.7 + 1e-6]),
    "parallel slivers": ([0.0, 0.0, 50.0, 0.0, 0.3], [0.0, 1.0, 50.0, 0.0, 0.3]),
    "far apart": ([0.0, 0.0, 1.0, 1.0, 0.0], [1e4, -1e4, 2.0, 1.0, 1.0]),
}


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_boxes_give_finite_values_and_gradients(case, kind, dtype):
    p, q = DEGENERATE[case]
    b1, b2 = t(p, dtype=dtype, grad=True), t(q, dtype=dtype, grad=True)
    v = rotated_bbox_iou(b1, b2, kind)
    v.sum().backward()
    # probiou's floor is 1 − √(1 + eps) < 0, as ultralytics' (B clamped at 100, eps under the root)
    assert torch.isfinite(v).all() and 1 - math.sqrt(1 + 1e-7) - 1e-12 <= v.item() <= 1
    assert torch.isfinite(b1.grad).all() and torch.isfinite(b2.grad).all()


def test_probiou_zero_area_against_huge_box_has_finite_gradients():
    # float32: a zero-area box against a ~1e7 px one. D ≈ 3e27 over y = 4·√(p₁q₁p₂q₂) + eps = eps: the
    # backward of ln(D / y + eps) through D / y formed D / y² ≈ 1e41 = ∞, and the clamp of B at 100
    # multiplied it by 0 (NaN); ln(D + eps·y) − ln y has the same value and finite gradients
    a = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.3]], requires_grad=True)
    b = torch.tensor([[5.0, 5.0, 1e7, 2e7, 0.1]], requires_grad=True)
    value = detloss.rotated_bbox_iou(a, b, kind="probiou")
    grads = torch.autograd.grad(value.sum(), (a, b))
    assert float(value) == 0.0  # B clamped at 100: 1 − √(1 − e⁻¹⁰⁰ + eps) rounds to 0
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(grads[1][0, 2]) <= 0.0  # a larger box only moves further away


def test_degenerate_exact_iou_values():
    cases = {"identical": 1.0, "nested": 1 / 16, "touching": 0.0, "corner touching": 0.0,
             "zero area": 0.0, "zero width": 0.0, "90 degrees apart": 1 / 5, "swapped sides": 1.0,
             "far apart": 0.0, "parallel slivers": 0.0}
    for case, want in cases.items():
        p, q = DEGENERATE[case]
        assert rotated_bbox_iou(t(p), t(q), "iou", 1e-12).item() == pytest.approx(want, abs=1e-9), case


# --- properties ------------------------------------------------------------------------------------

coord = st.floats(-20, 20, allow_nan=False)
side = st.floats(0.2, 10, allow_nan=False)
angle = st.floats(-4, 4, allow_nan=False)
rbox = st.tuples(coord, coord, side, side, angle).map(list)


@given(rbox, rbox)
def test_symmetric_kinds(p, q):
    a, b = t(p), t(q)
    for kind in ("iou", "probiou", "gwd"):
        assert rotated_bbox_iou(a, b, kind).item() == pytest.approx(
            rotated_bbox_iou(b, a, kind).item(), rel=1e-9, abs=1e-12), kind


@given(rbox, rbox, st.integers(-3, 3))
def test_pi_periodic_and_side_swap(p, q, k):
    a, b = t(p), t(q)
    turned = t(p[:4] + [p[4] + k * math.pi])
    swapped = t([p[0], p[1], p[3], p[2], p[4] + math.pi / 2])
    for kind in KINDS:
        want = rotated_bbox_iou(a, b, kind).item()
        for other in (turned, swapped):
            assert rotated_bbox_iou(other, b, kind).item() == pytest.approx(want, rel=1e-9, abs=1e-12), kind


@given(rbox, rbox, coord, coord, angle)
def test_translation_and_rotation_invariant(p, q, dx, dy, phi):
    def move(box: list[float]) -> torch.Tensor:  # turn about the origin by phi, then shift
        c, s = math.cos(phi), math.sin(phi)
        return t([c * box[0] - s * box[1] + dx, s * box[0] + c * box[1] + dy, box[2], box[3], box[4] + phi])

    for kind in KINDS:
        want = rotated_bbox_iou(t(p), t(q), kind).item()
        assert rotated_bbox_iou(move(p), move(q), kind).item() == pytest.approx(want, rel=1e-7, abs=1e-9)


@given(rbox)
def test_a_box_with_itself(p):
    a = t(p)
    area = p[2] * p[3]
    assert rotated_bbox_iou(a, a, "iou", 1e-7).item() == pytest.approx(area / (area + 1e-7), rel=1e-9)


@given(rbox, rbox)
def test_exact_iou_property_against_the_clipper(p, q):
    assert rotated_bbox_iou(t(p), t(q), "iou").item() == pytest.approx(
        ref.polygon_iou(p, q, 1e-7), rel=1e-8, abs=1e-10)


# --- precision, syncs, shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_is_computed_in_float32(kind, dtype):
    b1, b2 = _pairs(50, seed=3)
    h1, h2 = torch.tensor(b1, dtype=dtype), torch.tensor(b2, dtype=dtype)
    want = rotated_bbox_iou(h1.float(), h2.float(), kind)
    got = rotated_bbox_iou(h1, h2, kind)
    assert got.dtype == dtype
    assert torch.equal(got, want.to(dtype))
    loss = rotated_iou_loss(h1, h2, kind, reduction="none")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, 1 - want)


@pytest.mark.parametrize("kind", KINDS)
def test_no_host_sync_without_validation(kind):
    b1, b2 = _pairs(20, seed=4)
    pred = torch.tensor(b1, requires_grad=True)
    target = torch.tensor(b2)
    with DispatchCounter() as c:
        rotated_iou_loss(pred, target, kind, validate=False).backward()
        rotated_box_iou(pred.detach(), target, kind, validate=False)
    assert c.syncs == 0, c.sync_ops


@pytest.mark.parametrize("kind", KINDS)
def test_empty_inputs(kind):
    out = rotated_box_iou(torch.zeros(0, 5), torch.rand(3, 5), kind)
    assert out.shape == (0, 3)
    assert rotated_box_iou(torch.rand(2, 5), torch.zeros(0, 5), kind).shape == (2, 0)
    pred = torch.zeros(0, 5, requires_grad=True)
    loss = rotated_iou_loss(pred, torch.zeros(0, 5), kind)
    loss.backward()
    assert loss.item() == 0.0 and pred.grad.shape == (0, 5)


def test_broadcasting_shapes():
    b1, b2 = torch.rand(2, 1, 3, 5) + 0.5, torch.rand(4, 1, 5) + 0.5
    assert rotated_bbox_iou(b1, b2).shape == (2, 4, 3)


def test_loss_reductions_and_weights():
    b1, b2 = _pairs(6, seed=5)
    p, q = torch.tensor(b1, dtype=F64), torch.tensor(b2, dtype=F64)
    per = 1 - rotated_bbox_iou(p, q, "gwd")
    w = torch.arange(6, dtype=F64)
    torch.testing.assert_close(rotated_iou_loss(p, q, "gwd", reduction="none"), per)
    torch.testing.assert_close(rotated_iou_loss(p, q, "gwd"), per.mean())
    torch.testing.assert_close(rotated_iou_loss(p, q, "gwd", weight=w, reduction="sum"), (per * w).sum())
    torch.testing.assert_close(rotated_iou_loss(p, q, "gwd", weight=w, avg_factor=2.5), (per * w).sum() / 2.5)
    torch.testing.assert_close(rotated_iou_loss(p, q, "probiou", floor=0.01),
                               (1 - rotated_bbox_iou(p, q, "probiou", floor=0.01)).mean())


def test_top_level_exports():
    for name in ("rotated_bbox_iou", "rotated_box_iou", "rotated_iou_loss", "box_convert_rotated"):
        assert name in detloss.__all__ and callable(getattr(detloss, name))


# --- input checks ----------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument_and_index():
    good = torch.rand(3, 5)
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(\.\.\., 5\)"):
        rotated_bbox_iou(torch.rand(3, 4), good)
    with pytest.raises(TypeError, match="boxes2 must have a floating dtype"):
        rotated_bbox_iou(good, torch.ones(3, 5, dtype=torch.int64))
    bad = good.clone()
    bad[2, 4] = float("nan")
    with pytest.raises(ValueError, match=r"target has a non-finite value \(nan\) at index \(2, 4\)"):
        rotated_iou_loss(good, bad)
    with pytest.raises(ValueError, match=r"boxes2 has a non-finite value \(nan\) at index \(2, 4\)"):
        rotated_box_iou(good, bad)
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(N, 5\)"):
        rotated_box_iou(good[None], good)
    with pytest.raises(ValueError, match="kind must be one of"):
        rotated_bbox_iou(good, good, "giou")
    with pytest.raises(ValueError, match="floor is only used by the Gaussian kinds"):
        rotated_bbox_iou(good, good, "iou", floor=0.01)
    with pytest.raises(ValueError, match="floor must be a finite number >= 0"):
        rotated_bbox_iou(good, good, floor=-1.0)
    with pytest.raises(ValueError, match="eps must be"):
        rotated_bbox_iou(good, good, eps=0.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        rotated_bbox_iou(torch.rand(3, 5), torch.rand(2, 5))


# --- xywhr <-> corners -----------------------------------------------------------------------------


def test_corners_hand_case_and_order():
    # width 4 along x, height 2: u = (2, 0), v = (0, 1) → c+u+v, c+u−v, c−u−v, c−u+v
    got = box_convert_rotated(t([1.0, 2.0, 4.0, 2.0, 0.0]), "xywhr", "xyxyxyxy")
    assert got.tolist() == [[3.0, 3.0, 3.0, 1.0, -1.0, 1.0, -1.0, 3.0]]
    turned = box_convert_rotated(t([0.0, 0.0, 4.0, 2.0, math.pi / 2]), "xywhr", "xyxyxyxy")
    torch.testing.assert_close(turned, t([-1.0, 2.0, 1.0, 2.0, 1.0, -2.0, -1.0, -2.0]))
    for p in ([1.0, 2.0, 4.0, 2.0, 0.5], [-3.0, 0.5, 1.0, 7.0, -2.0]):  # the same four points
        got = box_convert_rotated(t(p), "xywhr", "xyxyxyxy").view(4, 2).tolist()
        for corner, want in zip(sorted(got), sorted(ref.corners(p)), strict=True):
            assert corner == pytest.approx(list(want), abs=1e-12)


@given(rbox)
def test_corners_round_trip(p):
    back = box_convert_rotated(box_convert_rotated(t(p), "xywhr", "xyxyxyxy"), "xyxyxyxy", "xywhr")[0]
    assert back[:4].tolist() == pytest.approx(p[:4], rel=1e-9, abs=1e-9)
    d = (back[4].item() - p[4]) / (2 * math.pi)
    assert abs(d - round(d)) < 1e-9


def test_corners_bad_input():
    with pytest.raises(ValueError, match=r"boxes in 'xyxyxyxy' must have shape \(\.\.\., 8\)"):
        box_convert_rotated(torch.rand(2, 5), "xyxyxyxy", "xywhr")
    with pytest.raises(ValueError, match="out_fmt must be one of"):
        box_convert_rotated(torch.rand(2, 5), "xywhr", "xyxy")


wild = st.one_of(st.just(0.0), st.floats(-1e4, 1e4, allow_nan=False), st.floats(-1e-6, 1e-6, allow_nan=False))
wild_box = st.tuples(wild, wild, wild, wild, st.floats(-100, 100, allow_nan=False)).map(list)


@given(wild_box, wild_box, st.sampled_from([torch.float32, F64]))
def test_finite_on_any_finite_boxes(p, q, dtype):
    """Negative, zero, tiny and huge sides, far-apart centres, large angles: finite values and
    gradients for every kind (negative sides are clamped at 0 by the exact IoU and by mmrotate's
    Gaussians, squared by ProbIoU)."""
    for kind in KINDS:
        b1, b2 = t(p, dtype=dtype, grad=True), t(q, dtype=dtype, grad=True)
        v = rotated_bbox_iou(b1, b2, kind)
        v.sum().backward()
        assert torch.isfinite(v).all(), kind
        assert torch.isfinite(b1.grad).all() and torch.isfinite(b2.grad).all(), kind


@pytest.mark.parametrize("kind", ["probiou", "kld", "gwd"])
def test_float32_slivers_agree_with_float64(kind):
    """No cancellation of large variances: a 1e4 × 1e-4 sliver in float32 gives the float64 value
    (the matrix forms of the originals lose it to rounding: NaN or noise)."""
    p = [[0.0, 0.0, 1e4, 1e-4, 0.7], [0.0, 0.0, 2e3, 0.5, 0.2], [3.0, 1.0, 1e-3, 50.0, -1.0]]
    q = [[1.0, 0.5, 1e4, 1e-4, 0.7 + 1e-6], [5.0, 2.0, 2e3, 0.7, 0.2 + 1e-3], [3.0, 1.5, 2e-3, 40.0, -1.0]]
    want = rotated_bbox_iou(t(*p), t(*q), kind)
    got = rotated_bbox_iou(t(*p, dtype=torch.float32), t(*q, dtype=torch.float32), kind)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_box_convert_delegates_the_oriented_formats():
    p = t([1.0, 2.0, 4.0, 2.0, 0.5], [-3.0, 0.5, 1.0, 7.0, -2.0])
    corners = detloss.box_convert(p, "xywhr", "xyxyxyxy")
    assert torch.equal(corners, box_convert_rotated(p, "xywhr", "xyxyxyxy"))
    assert torch.equal(detloss.box_convert(corners, "xyxyxyxy", "xywhr"),
                       box_convert_rotated(corners, "xyxyxyxy", "xywhr"))
    assert detloss.box_convert(p, "xywhr", "xywhr") is p
    with pytest.raises(ValueError, match="out_fmt must be one of .* when the other format is oriented"):
        detloss.box_convert(p, "xywhr", "xyxy")
    with pytest.raises(ValueError, match="in_fmt must be one of"):
        detloss.box_convert(torch.rand(2, 8), "cxcywh", "xyxyxyxy")
    with pytest.raises(ValueError, match=r"boxes in 'xyxyxyxy' must have shape \(\.\.\., 8\)"):
        detloss.box_convert(torch.rand(2, 4), "xyxyxyxy", "xywhr")
    bad = p.clone()
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"boxes has a non-finite value \(inf\) at index \(1, 2\)"):
        detloss.box_convert(bad, "xywhr", "xyxyxyxy")
    with pytest.raises(ValueError, match=r"boxes has a non-finite value"):
        box_convert_rotated(bad, "xywhr", "xyxyxyxy")
