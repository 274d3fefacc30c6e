"""Fuzz the oriented-box functions of detloss with random shapes, dtypes and values (the pattern of
tests/fuzz/test_fuzz.py, whose harness this module shares).

The only allowed outcomes: a correct result, finite with finite gradients whenever the inputs are
finite and inside the numeric domain (below), or a ``ValueError``/``TypeError`` with a non-empty
message; each test predicts from the generated input alone whether the call must fail.

Numeric domain: the Gaussian similarities multiply four sides (``det Σ₁·det Σ₂ ∝ w₁h₁w₂h₂`` squared
under a root), so the domain is ``|v| <= 1e8`` in float32 and ``|v| <= 1e70`` in float64 (zero-area,
degenerate and huge boxes within it included); outside it an overflow is the correct float result
and finiteness is not asserted. This file found ProbIoU's NaN gradient for a zero-area box against
one of ~1e7 px in float32 (the backward of ``ln(D / y + eps)`` formed ``D / y²`` ≈ 1e40, then 0·∞
behind the clamp); ProbIoU now takes ``ln(D + eps·y) − ln y`` and the float32 domain is back to
1e8 (test_probiou_zero_area_against_huge_box_has_finite_gradients). The codecs (:mod:`detloss.codecs`)
are unchecked internals: they are fuzzed for finite values, gradients and round trips only.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import detloss
from detloss.codecs import decode_rotated_distances, encode_rotated_distances
from detloss.criteria import YOLOv8OBBLoss
from tests.fuzz.test_fuzz import (
    BF16,
    DTYPES,
    EPS,
    F16,
    F32,
    F64,
    FLOATS,
    FUZZ,
    NOT_A_TENSOR,
    REDUCTIONS,
    assert_finite,
    compute,
    eps_problems,
    mostly,
    out_tol,
    rare,
    related_shape,
    shapes,
)
from tests.fuzz.test_fuzz import run as run_call

ROTATED_KINDS = ("iou", "probiou", "kld", "gwd")
KIND = mostly(ROTATED_KINDS, ("IOU", "ciou", ""))
FLOOR = mostly((0.0, 0.0, 0.01, 1.0), (-1.0, math.nan, math.inf))
ROTATED_FMTS = {"xywhr": 5, "xyxyxyxy": 8}
RFMT = mostly(tuple(ROTATED_FMTS), ("xyxy", "XYWHR", ""))
SPECIALS = (math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-30, 0.0, 1e7, -1e7)


def _rotated_values(shape: tuple[int, ...], mode: str, seed: int) -> Tensor:
    """float64 values: 'boxes' legal xywhr (centres on a 1/8 grid, sides 0–64 with zero sides
    common, any angle in ±2π), 'huge' legal boxes scaled by up to 1e7 (slivers of 1e7 × 1e-3
    included), 'wide' ±10^U(-30, 30) everywhere, 'special' legal boxes with NaN/±Inf/1e30/tiny
    values sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    if mode in ("boxes", "huge", "special") and shape and shape[-1] == 5:
        xy = torch.randint(-512, 513, shape[:-1] + (2,), generator=g) / 8.0
        wh = torch.randint(0, 513, shape[:-1] + (2,), generator=g) / 8.0
        wh = wh * (torch.rand(wh.shape, generator=g) > 0.2)  # zero sides are legal
        theta = (torch.rand(shape[:-1] + (1,), generator=g) - 0.5) * 4 * math.pi
        v = torch.cat((xy, wh, theta), -1).double()
        if mode == "huge":
            scale = 10.0 ** (torch.rand(shape[:-1] + (1,), generator=g, dtype=F64) * 7)
            v = torch.cat((v[..., :4] * scale, v[..., 4:]), -1)
            sliver = torch.rand(shape[:-1], generator=g) < 0.3
            v[..., 3] = torch.where(sliver, 1e-3, v[..., 3])
        if mode == "special" and v.numel():
            pick = torch.randint(0, len(SPECIALS), shape, generator=g)
            hit = torch.rand(shape, generator=g) < 0.2
            v = torch.where(hit, torch.tensor(SPECIALS, dtype=F64)[pick], v)
        return v
    if mode == "wide":
        mag = 10.0 ** (torch.rand(shape, generator=g, dtype=F64) * 60 - 30)
        return mag * torch.where(torch.rand(shape, generator=g) < 0.3, -1.0, 1.0).double()
    return torch.randint(-512, 513, shape, generator=g).double() / 8.0


def _cast(v: Tensor, dtype: torch.dtype) -> Tensor:
    if dtype == torch.bool:
        return v != 0
    if dtype == torch.int64:
        return torch.nan_to_num(v, nan=0.0, posinf=1e9, neginf=-1e9).clamp(-1e9, 1e9).round().long()
    return v.to(dtype)


@st.composite
def rboxes(draw, shape=None, last: int = 5, dtypes=DTYPES, allow_other=True):
    """A ``(..., last)`` tensor (rarely another last dimension, another dtype or no tensor)."""
    if allow_other and rare(draw, 39):
        return draw(st.sampled_from(NOT_A_TENSOR))
    if shape is None:
        shape = draw(shapes(last))
    elif isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    dtype = draw(st.sampled_from(dtypes if rare(draw, 9) else FLOATS + (F32, F32, F64)))
    mode = draw(st.sampled_from(("boxes",) * 4 + ("huge", "huge", "wide", "special", "special")))
    return _cast(_rotated_values(shape, mode, draw(st.integers(0, 2**31 - 1))), dtype)


@st.composite
def rbox_pairs(draw):
    b1 = draw(rboxes())
    shape = b1.shape if isinstance(b1, Tensor) else (2, 5)
    return b1, draw(rboxes(shape=draw(related_shape(tuple(shape)))))


def rbox_problems(t: object, size: int = 5) -> set[type]:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        return {TypeError}
    if t.dim() == 0 or t.shape[-1] != size:
        return {ValueError}
    if not bool(torch.isfinite(t).all()):
        return {ValueError}
    return set()


def in_rotated_domain(*ts: Tensor) -> bool:
    """Finite, and small enough that products of four sides cannot overflow the compute dtype."""
    bound = 1e70 if compute(*ts) == F64 else 1e8
    return all(t.numel() == 0 or bool(t.double().abs().max() <= bound) for t in ts)


def option_problems(kind, eps, floor) -> set[type]:
    bad_floor = not (isinstance(floor, float) and math.isfinite(floor) and floor >= 0)
    bad_floor = bad_floor or (kind == "iou" and floor != 0)
    return eps_problems(eps) | ({ValueError} if kind not in ROTATED_KINDS or bad_floor else set())


def pair_problems(b1, b2, kind, eps, floor, validate=True) -> set[type]:
    clean = [torch.nan_to_num(b) if isinstance(b, Tensor) and b.is_floating_point() else b for b in (b1, b2)]
    expected = rbox_problems(*((b1,) if validate else clean[:1])) | rbox_problems(
        *((b2,) if validate else clean[1:])
    )
    expected |= option_problems(kind, eps, floor)
    if not expected:
        try:
            torch.broadcast_shapes(b1.shape, b2.shape)
        except RuntimeError:
            expected = {ValueError}
    return expected


def finite_gradients(name: str, fn, *inputs: Tensor) -> None:
    """``fn(*leaves)`` summed, differentiated: every gradient finite (float32 / float64 inputs)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    assert_finite(name, out.detach())
    if out.numel() == 0:
        return
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    for g in grads:
        assert g is None or bool(torch.isfinite(g).all()), f"{name}: non-finite gradient {g}"


def check_similarity(name, out, b1, b2, kind, eps):
    """Finite in the domain and inside the kind's range: [0, 1], for probiou [1 − √(1 + eps), 1]
    (ultralytics' eps placements: 1 − √(1 − exp(−B) + eps) is below 0 for a large eps)."""
    if not in_rotated_domain(b1, b2):
        return
    assert_finite(name, out)
    tol = out_tol(out.dtype)
    lo = 1.0 - math.sqrt(1.0 + eps) if kind == "probiou" else 0.0
    assert bool(((out.double() >= lo - tol) & (out.double() <= 1 + tol)).all()), (name, kind, out)


# ----------------------------------------------------------------------------- similarities
@FUZZ
@given(pair=rbox_pairs(), kind=KIND, eps=EPS, floor=FLOOR, validate=st.booleans())
def test_rotated_bbox_iou(tally, pair, kind, eps, floor, validate):
    b1, b2 = pair
    expected = pair_problems(b1, b2, kind, eps, floor, validate)

    def call():
        return detloss.rotated_bbox_iou(b1, b2, kind, eps, floor=floor, validate=validate)

    out = run_call(tally, "rotated_bbox_iou", expected, call)
    if out is None:
        return
    assert out.shape == torch.broadcast_shapes(b1.shape, b2.shape)[:-1]
    assert out.dtype == torch.promote_types(b1.dtype, b2.dtype)
    if bool(torch.isfinite(b1).all() and torch.isfinite(b2).all()):
        check_similarity("rotated_bbox_iou", out, b1, b2, kind, eps)
        if in_rotated_domain(b1, b2) and b1.dtype in (F32, F64) and b2.dtype in (F32, F64):
            finite_gradients(
                f"rotated_bbox_iou[{kind}]",
                lambda x, y: detloss.rotated_bbox_iou(x, y, kind, eps, floor=floor),
                b1,
                b2,
            )


RMATRIX = rboxes(shape=mostly(((0, 5), (1, 5), (3, 5)), ((5,), (2, 2, 5), (3, 4), ())))


@FUZZ
@given(b1=RMATRIX, b2=RMATRIX, kind=KIND, eps=EPS, floor=FLOOR)
def test_rotated_box_iou(tally, b1, b2, kind, eps, floor):
    expected = rbox_problems(b1) | rbox_problems(b2) | option_problems(kind, eps, floor)
    if not expected and (b1.dim() != 2 or b2.dim() != 2):
        expected = {ValueError}
    out = run_call(
        tally, "rotated_box_iou", expected, lambda: detloss.rotated_box_iou(b1, b2, kind, eps, floor=floor)
    )
    if out is None:
        return
    assert out.shape == (b1.shape[0], b2.shape[0])
    check_similarity("rotated_box_iou", out, b1, b2, kind, eps)


REDUCTION = mostly(REDUCTIONS, ("avg", "", "MEAN"))


@FUZZ
@given(pair=rbox_pairs(), kind=KIND, eps=EPS, floor=FLOOR, reduction=REDUCTION)
def test_rotated_iou_loss(tally, pair, kind, eps, floor, reduction):
    b1, b2 = pair
    expected = pair_problems(b1, b2, kind, eps, floor)
    if reduction not in REDUCTIONS:
        expected.add(ValueError)

    def call():
        return detloss.rotated_iou_loss(b1, b2, kind, eps, floor=floor, reduction=reduction)

    out = run_call(tally, "rotated_iou_loss", expected, call)
    if out is None:
        return
    if reduction == "none":
        assert out.shape == torch.broadcast_shapes(b1.shape, b2.shape)[:-1]
    else:
        assert out.dim() == 0
    if in_rotated_domain(b1, b2) and out.numel():
        if reduction != "mean" or torch.broadcast_shapes(b1.shape, b2.shape)[:-1].numel():
            assert_finite("rotated_iou_loss", out)
        if b1.dtype in (F32, F64) and b2.dtype in (F32, F64):
            finite_gradients(
                f"rotated_iou_loss[{kind}]",
                lambda x, y: detloss.rotated_iou_loss(x, y, kind, eps, floor=floor, reduction="none"),
                b1,
                b2,
            )


# ----------------------------------------------------------------------------- conversions
@st.composite
def convert_inputs(draw):
    in_fmt, out_fmt = draw(RFMT), draw(RFMT)
    last = ROTATED_FMTS.get(in_fmt, 5)
    if rare(draw, 9):
        last = draw(st.sampled_from((4, 5, 6, 8)))
    return draw(rboxes(last=last)), in_fmt, out_fmt


def wrap_angle(a: Tensor) -> Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


@FUZZ
@given(inputs=convert_inputs())
def test_box_convert_rotated(tally, inputs):
    boxes, in_fmt, out_fmt = inputs
    if not isinstance(boxes, Tensor):
        expected = {TypeError}
    elif in_fmt not in ROTATED_FMTS or out_fmt not in ROTATED_FMTS:
        expected = {ValueError}
    else:  # floating dtype (TypeError), then the shape and finiteness (ValueError)
        expected = rbox_problems(boxes, ROTATED_FMTS[in_fmt])
    out = run_call(
        tally, "box_convert_rotated", expected, lambda: detloss.box_convert_rotated(boxes, in_fmt, out_fmt)
    )
    if out is None:
        return
    assert out.shape == boxes.shape[:-1] + (ROTATED_FMTS[out_fmt],) and out.dtype == boxes.dtype
    if not in_rotated_domain(boxes) or boxes.dtype not in (F32, F64):
        return
    assert_finite("box_convert_rotated", out)
    finite_gradients("box_convert_rotated", lambda b: detloss.box_convert_rotated(b, in_fmt, out_fmt), boxes)
    if in_fmt == "xywhr" and out_fmt == "xyxyxyxy" and boxes.numel():
        # back to xywhr: the centre, the sides and (for a box of positive width) the angle modulo 2π
        back = detloss.box_convert_rotated(out, "xyxyxyxy", "xywhr").double()
        b = boxes.double()
        scale = 1e-5 if boxes.dtype == F32 else 1e-12
        tol = scale * (1.0 + b[..., :4].abs().amax(-1))
        assert bool(((back[..., :2] - b[..., :2]).abs().amax(-1) <= tol * 4).all())
        assert bool(((back[..., 2] - b[..., 2].abs()).abs() <= tol * 4).all())
        # h and θ only for a box of positive width (the corners of a zero-width box hold no h, θ)
        wide = (b[..., 2] > 1e-3 * (1 + b[..., :4].abs().amax(-1))) & (b[..., 4].abs() < 1e3)
        assert bool(((back[..., 3] - b[..., 3]).abs()[wide] <= tol[wide] * 4).all())
        dtheta = wrap_angle(back[..., 4] - b[..., 4]).abs()
        assert bool((dtheta[wide] <= (1e-3 if boxes.dtype == F32 else 1e-9)).all())


# ----------------------------------------------------------------------------- codecs
@FUZZ
@given(data=st.data())
def test_rotated_codecs(tally, data):
    """decode_rotated_distances / encode_rotated_distances: finite values and gradients on finite
    inputs of the domain, and encode(decode(d)) = d."""
    shape = data.draw(st.lists(st.integers(0, 3), max_size=2))
    dtype = data.draw(st.sampled_from((F32, F64)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    scale = data.draw(st.sampled_from((1.0, 64.0, 1e4, 1e7 if dtype == F64 else 1e4)))
    dist = (torch.rand((*shape, 4), generator=g, dtype=F64) * scale).to(dtype)
    if data.draw(st.booleans()):
        dist = dist * (torch.rand(dist.shape, generator=g) > 0.3)  # zero distances: zero-area boxes
    angle = ((torch.rand(tuple(shape), generator=g, dtype=F64) - 0.5) * 4 * math.pi).to(dtype)
    points = (torch.rand((*shape, 2), generator=g, dtype=F64) * scale).to(dtype)
    boxes = decode_rotated_distances(dist, angle, points)
    tally.setdefault("rotated codecs", Counter())["ok"] += 1
    assert boxes.shape == (*shape, 5)
    assert_finite("decode_rotated_distances", boxes)
    back = encode_rotated_distances(boxes, points)
    tol = (1e-4 if dtype == F32 else 1e-10) * (1 + scale)
    assert bool(((back - dist).abs() <= tol).all()), (back, dist)
    finite_gradients("decode_rotated_distances", decode_rotated_distances, dist, angle, points)
    finite_gradients("encode_rotated_distances", encode_rotated_distances, boxes, points)


# ----------------------------------------------------------------------------- YOLOv8OBBLoss
OBB_C, OBB_SIZE, OBB_REG_MAX, OBB_GRIDS = 3, 64, 4, (8, 4, 2)


@st.composite
def obb_targets(draw, batch: int):
    """Per image 0-4 xywhr boxes: mostly legal (tiny to whole-image, any angle); rarely a NaN/Inf
    value, a zero or negative side, a bad label."""
    out = []
    for _ in range(batch):
        n = draw(st.sampled_from((0, 1, 2, 4)))
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        size = draw(st.sampled_from((1e-3, 1.0, 8.0, 30.0, 200.0)))
        xy = torch.rand(n, 2, generator=g) * 56 + 4
        wh = torch.rand(n, 2, generator=g) * size + 1e-3
        theta = (torch.rand(n, 1, generator=g) - 0.5) * 4 * math.pi
        boxes = torch.cat((xy, wh, theta), -1)
        labels = torch.randint(0, OBB_C, (n,), generator=g)
        if n and rare(draw, 4):
            flaw = draw(st.sampled_from(("nan", "inf", "zero", "negative", "label", "float label")))
            if flaw in ("nan", "inf"):
                boxes[0, draw(st.integers(0, 4))] = math.nan if flaw == "nan" else math.inf
            elif flaw == "zero":
                boxes[0, 2] = 0.0
            elif flaw == "negative":
                boxes[0, 3] = -1.0
            elif flaw == "label":
                labels[0] = OBB_C
            else:
                labels = labels.float()
        out.append({"boxes": boxes, "labels": labels})
    return out


def obb_target_problems(targets: list[dict]) -> set[type]:
    """xywhr targets: finite, w > 0 and h > 0, integer labels in [0, C)."""
    problems = set()
    for t in targets:
        b, lab = t["boxes"], t["labels"]
        if lab.is_floating_point():
            problems.add(TypeError)
        elif lab.numel() and bool(((lab < 0) | (lab >= OBB_C)).any()):
            problems.add(ValueError)
        if b.numel() and not bool((torch.isfinite(b).all(1) & (b[:, 2] > 0) & (b[:, 3] > 0)).all()):
            problems.add(ValueError)
    return problems


@pytest.mark.parametrize("reg_max", (OBB_REG_MAX, 1))
@FUZZ
@given(data=st.data())
def test_yolov8_obb_loss(tally, reg_max, data):
    """Random xywhr targets and head outputs (dtypes, saturated values, angles as the head hands
    them) through YOLOv8OBBLoss: a finite loss with finite gradients, or a ValueError/TypeError."""
    batch = data.draw(st.integers(0, 3))
    targets = data.draw(obb_targets(batch))
    expected = obb_target_problems(targets)
    pbatch = batch + 1 if rare(data.draw, 19) else batch
    if pbatch != batch:
        expected.add(ValueError)
    dtype = data.draw(mostly((F32, F16, BF16, F64), (torch.int64,)))
    if dtype == torch.int64:
        expected.add(TypeError)
    scale = data.draw(st.sampled_from((1.0, 1.0, 5.0, 1e4)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    channels = 4 * reg_max + OBB_C + 1
    shapes_ = [(pbatch, channels, s, s) for s in OBB_GRIDS]
    if rare(data.draw, 19):  # a head without its angle channel
        shapes_[0] = (pbatch, channels - 1, *shapes_[0][2:])
        expected.add(ValueError)
    preds = [(torch.randn(s, generator=g) * scale).to(dtype) for s in shapes_]
    if reg_max == 1:  # YOLO26-OBB's raw distances
        preds = [p.abs() if p.is_floating_point() else p for p in preds]
    for p in preds:
        p.requires_grad_(p.is_floating_point())
    out = run_call(
        tally, f"criteria.YOLOv8OBBLoss[r={reg_max}]", expected,
        lambda: YOLOv8OBBLoss(OBB_C, reg_max=reg_max)(preds, targets),
    )
    if out is None:
        return
    assert out.total.dtype == (F64 if dtype == F64 else F32)
    assert_finite("YOLOv8OBBLoss", out.total)
    out.total.backward()
    for p in preds:
        assert p.grad is not None and torch.isfinite(p.grad).all(), "YOLOv8OBBLoss"
