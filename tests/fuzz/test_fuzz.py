"""Fuzz every public function of detloss with random shapes, dtypes and values.

The only allowed outcomes: a correct result, finite whenever the inputs are finite and inside the
numeric domain (below), or a ``ValueError``/``TypeError`` with a non-empty message. Each test also
predicts, from the generated input alone, whether the call must fail: bad input that gets through
silently fails the test as surely as an exception of the wrong type.

Numeric domain: coordinates with ``|v| <= 1e18`` when computed in float32 (areas, squared diagonals
and sums of two of them stay below float32's 3.4e38), ``|v| <= 1e150`` in float64. Outside it, an
overflowed area is the correct float result and finiteness is not asserted.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

import detloss
from detloss import nn as dnn
from detloss.assign import pad_targets
from detloss.criteria import SSDLoss, YOLOv3Loss, YOLOv4Loss, YOLOv5Loss, YOLOv8Loss

# bounded for CI; DETLOSS_FUZZ_EXAMPLES=20000 for a long run (docs/reliability.md). Applied per test so
# that the rest of the suite keeps hypothesis's defaults.
FUZZ = settings(
    max_examples=int(os.environ.get("DETLOSS_FUZZ_EXAMPLES", "60")),
    deadline=None,
    database=None,  # no .hypothesis directory: tests write nothing outside tmp_path
    derandomize=not os.environ.get("DETLOSS_FUZZ_RANDOM"),  # CI sees the same inputs every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
FLOATS = (F16, BF16, F32, F64)
DTYPES = FLOATS + (torch.int64, torch.bool)
SPECIALS = (math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-30, -1e-6, 1e6, 0.0)
FMTS = ("xyxy", "xywh", "cxcywh")
BAD_FMTS = ("XYXY", "yolo", "")
KINDS = ("iou", "giou", "diou", "ciou", "eiou", "siou", "wiou")  # mpdiou needs image_size: its own tests
REDUCTIONS = ("none", "mean", "sum")
KIND_RANGE = {
    "iou": (0.0, 1.0),
    "giou": (-1.0, 1.0),
    "diou": (-1.0, 1.0),
    "ciou": (-1.5, 1.0),
    "eiou": (-3.0, 1.0),
    "siou": (-2.0, 1.0),
    "wiou": (1.0 - math.e, 1.0),
}
NOT_A_TENSOR = (None, [0.0, 0.0, 1.0, 1.0], 3.0, "boxes")


# ----------------------------------------------------------------------------- generators
def rare(draw, odds: int) -> bool:
    """True with probability about 1/(odds+1); shrinks to False (hypothesis favours 0 in integers)."""
    return draw(st.sampled_from((False,) * odds + (True,)))


@st.composite
def shapes(draw, last: int | None = 4) -> tuple[int, ...]:
    """Leading dims in [0, 3] (so empty tensors are common), a last dim mostly ``last``; 0-d sometimes."""
    if rare(draw, 29):
        return ()
    lead = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    if last is None:
        return lead + (draw(st.sampled_from((3, 1, 2, 4, 0))),)
    wrong = rare(draw, 14)
    return lead + ((draw(st.sampled_from((0, 1, 2, 3, 5))) if wrong else last),)


def _values(shape: tuple[int, ...], mode: str, seed: int) -> Tensor:
    """float64 values: 'boxes' legal xyxy (zero-area included), 'grid' multiples of 1/8 in [-64, 64],
    'wide' ±10^U(-30, 30), 'special' grid values with NaN/±Inf/1e30/tiny/negative sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    if mode == "boxes" and shape and shape[-1] == 4:
        lo = torch.randint(-512, 513, shape[:-1] + (2,), generator=g) / 8.0
        wh = torch.randint(0, 513, shape[:-1] + (2,), generator=g) / 8.0
        wh = wh * (torch.rand(wh.shape, generator=g) > 0.2)  # zero-area boxes are legal
        return torch.cat((lo, lo + wh), -1).double()
    if mode == "wide":
        mag = 10.0 ** (torch.rand(shape, generator=g, dtype=F64) * 60 - 30)
        return mag * torch.where(torch.rand(shape, generator=g) < 0.3, -1.0, 1.0).double()
    v = torch.randint(-512, 513, shape, generator=g).double() / 8.0
    if mode == "special" and v.numel():
        pick = torch.randint(0, len(SPECIALS), shape, generator=g)
        hit = torch.rand(shape, generator=g) < 0.2
        v = torch.where(hit, torch.tensor(SPECIALS, dtype=F64)[pick], v)
    return v


def _cast(v: Tensor, dtype: torch.dtype) -> Tensor:
    if dtype == torch.bool:
        return v != 0
    if dtype == torch.int64:
        return torch.nan_to_num(v, nan=0.0, posinf=1e9, neginf=-1e9).clamp(-1e9, 1e9).round().long()
    return v.to(dtype)


@st.composite
def tensors(draw, shape=None, last: int | None = 4, dtypes=DTYPES, modes=None, allow_other=True):
    if allow_other and rare(draw, 39):
        return draw(st.sampled_from(NOT_A_TENSOR))
    if shape is None:
        shape = draw(shapes(last))
    elif isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    # mostly floating dtypes, so that a pair of inputs is often legal
    dtype = draw(st.sampled_from(dtypes if rare(draw, 9) else FLOATS + (F32, F32)))
    mode = draw(st.sampled_from(modes or ("boxes",) * 5 + ("grid", "grid", "wide", "wide", "special")))
    return _cast(_values(shape, mode, draw(st.integers(0, 2**31 - 1))), dtype)


@st.composite
def related_shape(draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that usually broadcasts against ``shape``: equal, leading dims set to 1 or dropped."""
    choice = draw(st.sampled_from((3, 3, 3, 1, 2, 0)))
    if choice == 0 or not shape:
        return draw(shapes())
    if choice == 1:
        return shape[draw(st.integers(0, len(shape) - 1)) :]
    if choice == 2:
        return tuple(1 if draw(st.booleans()) else s for s in shape[:-1]) + shape[-1:]
    return shape


def compute(*ts: Tensor) -> torch.dtype:
    dt = F32
    for t in ts:
        dt = torch.promote_types(dt, F32 if t.dtype in (F16, BF16) else t.dtype)
    return dt


def in_domain(*ts: Tensor) -> bool:
    """Finite, and small enough that areas and squared diagonals cannot overflow the compute dtype."""
    bound = 1e150 if compute(*ts) == F64 else 1e18
    return all(t.numel() == 0 or bool(t.double().abs().max() <= bound) for t in ts)


def is_grid(*ts: Tensor) -> bool:
    """Multiples of 1/8 within ±128: areas are exact in float32, so a float64 reference is tight."""
    return all(
        t.numel() == 0
        or bool((((t.double() * 8).round() == t.double() * 8) & (t.double().abs() <= 128)).all())
        for t in ts
    )


def box_problems(t: object) -> set[type]:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        return {TypeError}
    if t.dim() == 0 or t.shape[-1] != 4:
        return {ValueError}
    if not bool(torch.isfinite(t).all()):
        return {ValueError}
    return set()


def run(tally, name: str, expected: set[type], call):
    """Call; the outcome must match ``expected`` (empty: must succeed). Returns the result or None."""
    try:
        out = call()
    except (ValueError, TypeError) as e:
        tally.setdefault(name, Counter())[type(e).__name__] += 1
        if os.environ.get("DETLOSS_FUZZ_WHY"):  # which rejections dominate the generated inputs
            tally.setdefault(name + " why", Counter())[str(e)[:40]] += 1
        assert str(e), f"{name}: {type(e).__name__} without a message"
        assert expected, f"{name} raised {type(e).__name__}({e}) on legal input"
        assert type(e) in expected, f"{name} raised {type(e).__name__}({e}), expected one of {expected}"
        return None
    tally.setdefault(name, Counter())["ok"] += 1
    assert not expected, f"{name} accepted bad input (expected {expected}), returned {out!r:.200}"
    return out


def assert_finite(name: str, out: Tensor) -> None:
    assert bool(torch.isfinite(out).all()), f"{name} gave a non-finite value on legal input: {out}"


def ref_xyxy(b: Tensor, fmt: str) -> Tensor:
    """Naive float64 conversion to xyxy, written out per format."""
    b = b.double()
    x, y, u, v = b.unbind(-1)
    if fmt == "xyxy":
        return torch.stack((x, y, u, v), -1)
    if fmt == "xywh":
        return torch.stack((x, y, x + u, y + v), -1)
    return torch.stack((x - u / 2, y - v / 2, x + u / 2, y + v / 2), -1)


def ref_iou(b1: Tensor, b2: Tensor, kind: str, eps: float) -> Tensor:
    """Naive float64 IoU / GIoU of xyxy boxes (the two kinds with a short closed form)."""
    b1, b2 = torch.broadcast_tensors(b1, b2)
    iw = (torch.minimum(b1[..., 2], b2[..., 2]) - torch.maximum(b1[..., 0], b2[..., 0])).clamp(min=0)
    ih = (torch.minimum(b1[..., 3], b2[..., 3]) - torch.maximum(b1[..., 1], b2[..., 1])).clamp(min=0)
    a1 = (b1[..., 2] - b1[..., 0]).clamp(min=0) * (b1[..., 3] - b1[..., 1]).clamp(min=0)
    a2 = (b2[..., 2] - b2[..., 0]).clamp(min=0) * (b2[..., 3] - b2[..., 1]).clamp(min=0)
    union = a1 + a2 - iw * ih
    iou = iw * ih / (union + eps)
    if kind == "iou":
        return iou
    # the enclosing box is the hull of all corners (it stays >= 0 for inverted boxes)
    xs = torch.stack((b1[..., 0], b1[..., 2], b2[..., 0], b2[..., 2]), -1)
    ys = torch.stack((b1[..., 1], b1[..., 3], b2[..., 1], b2[..., 3]), -1)
    cw = xs.amax(-1) - xs.amin(-1)
    ch = ys.amax(-1) - ys.amin(-1)
    return iou - (cw * ch - union) / (cw * ch + eps)


def eps_problems(eps: float) -> set[type]:
    """eps below float32's smallest normal would be 0 in float32 (0/0 on zero-area boxes)."""
    return set() if math.isfinite(eps) and eps >= torch.finfo(F32).tiny else {ValueError}


def mostly(good: tuple, bad: tuple, odds: int = 19):
    """One of ``bad`` with probability 1/(odds+1), else one of ``good`` (shrinks to ``good[0]``)."""
    flag = st.sampled_from((False,) * odds + (True,))
    return st.tuples(flag, st.sampled_from(good), st.sampled_from(bad)).map(lambda t: t[2] if t[0] else t[1])


EPS = mostly((1e-7, 1e-9, 1.0, 1e-30), (0.0, -1e-7, math.nan, math.inf, 1e-50))
KIND = mostly(KINDS, ("IOU", "wise"))
FMT = mostly(FMTS, BAD_FMTS)


# ----------------------------------------------------------------------------- boxes
@FUZZ
@given(boxes=tensors(), in_fmt=FMT, out_fmt=FMT)
def test_box_convert(tally, boxes, in_fmt, out_fmt):
    expected = box_problems(boxes) | ({ValueError} if {in_fmt, out_fmt} - set(FMTS) else set())
    out = run(tally, "box_convert", expected, lambda: detloss.box_convert(boxes, in_fmt, out_fmt))
    if out is None:
        return
    assert out.shape == boxes.shape and out.dtype == boxes.dtype
    if in_domain(boxes):
        assert_finite("box_convert", out)
    if is_grid(boxes) and boxes.dtype in (F32, F64):  # exact: halves and sums of multiples of 1/8
        torch.testing.assert_close(ref_xyxy(out, out_fmt), ref_xyxy(boxes, in_fmt), rtol=0, atol=0)


@FUZZ
@given(boxes=tensors(), fmt=FMT)
def test_box_area(tally, boxes, fmt):
    expected = box_problems(boxes) | ({ValueError} if fmt not in FMTS else set())
    out = run(tally, "box_area", expected, lambda: detloss.box_area(boxes, fmt))
    if out is None:
        return
    assert out.shape == boxes.shape[:-1] and out.dtype == boxes.dtype
    assert bool((out >= 0).all())
    if in_domain(boxes):
        assert_finite("box_area", out)
    if is_grid(boxes) and boxes.dtype in (F32, F64):
        x = ref_xyxy(boxes, fmt)
        ref = (x[..., 2] - x[..., 0]).clamp(min=0) * (x[..., 3] - x[..., 1]).clamp(min=0)
        torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- the IoU family
def hyper_problems(kind, fmt, eps) -> set[type]:
    return eps_problems(eps) | ({ValueError} if kind not in KINDS or fmt not in FMTS else set())


def pair_problems(b1, b2, kind, fmt, eps) -> set[type]:
    expected = box_problems(b1) | box_problems(b2) | hyper_problems(kind, fmt, eps)
    if not expected:
        try:
            torch.broadcast_shapes(b1.shape, b2.shape)
        except RuntimeError:
            expected = {ValueError}
    return expected


def without_nonfinite(b: object) -> object:
    return torch.nan_to_num(b) if isinstance(b, Tensor) and b.is_floating_point() else b


def check_iou_values(name, out, b1, b2, kind, fmt, eps, tol):
    """Finite and inside the kind's range in the domain (inverted boxes included: the enclosing box
    is the hull of all corners); IoU and GIoU equal a naive float64 reference on grid inputs."""
    lo, hi = KIND_RANGE[kind]
    if in_domain(b1, b2):
        assert_finite(name, out)
    if in_domain(b1, b2):
        assert bool((out.double() >= lo - tol).all() & (out.double() <= hi + tol).all()), (name, out)
    if kind in ("iou", "giou") and is_grid(b1, b2):
        ref = ref_iou(ref_xyxy(b1, fmt), ref_xyxy(b2, fmt), kind, eps)
        torch.testing.assert_close(out.double(), ref.expand_as(out), rtol=0, atol=tol)


def out_tol(dtype: torch.dtype) -> float:
    return {F16: 2e-3, BF16: 1e-2}.get(dtype, 1e-5)


@st.composite
def box_pairs(draw):
    b1 = draw(tensors())
    shape = b1.shape if isinstance(b1, Tensor) else (2, 4)
    b2 = draw(tensors(shape=draw(related_shape(tuple(shape)))))
    return b1, b2


@FUZZ
@given(pair=box_pairs(), kind=KIND, fmt=FMT, eps=EPS, validate=st.booleans())
def test_bbox_iou(tally, pair, kind, fmt, eps, validate):
    b1, b2 = pair
    if validate:
        expected = pair_problems(b1, b2, kind, fmt, eps)
    else:  # validate=False skips only the NaN/Inf scan (NaN in, NaN out); the rest is still checked
        expected = pair_problems(without_nonfinite(b1), without_nonfinite(b2), kind, fmt, eps)
    out = run(
        tally, "bbox_iou", expected, lambda: detloss.bbox_iou(b1, b2, kind, fmt, eps, validate=validate)
    )
    if out is None:
        return
    assert out.shape == torch.broadcast_shapes(b1.shape, b2.shape)[:-1]
    assert out.dtype == torch.promote_types(b1.dtype, b2.dtype)
    if bool(torch.isfinite(b1).all() and torch.isfinite(b2).all()):
        check_iou_values("bbox_iou", out, b1, b2, kind, fmt, eps, out_tol(out.dtype))


MATRIX = tensors(shape=mostly(((0, 4), (1, 4), (3, 4)), ((4,), (2, 2, 4), (3, 5), ())))


@FUZZ
@given(b1=MATRIX, b2=MATRIX, kind=KIND, fmt=FMT, eps=EPS)
def test_box_iou(tally, b1, b2, kind, fmt, eps):
    expected = hyper_problems(kind, fmt, eps)
    for b in (b1, b2):
        expected |= box_problems(b) or ({ValueError} if b.dim() != 2 else set())
    out = run(tally, "box_iou", expected, lambda: detloss.box_iou(b1, b2, kind, fmt, eps))
    if out is None:
        return
    assert out.shape == (b1.shape[0], b2.shape[0])
    check_iou_values("box_iou", out, b1[:, None], b2[None], kind, fmt, eps, out_tol(out.dtype))


# ----------------------------------------------------------------------------- losses
REDUCTION = mostly(REDUCTIONS, ("avg", "Mean"))


@st.composite
def reduce_args(draw) -> tuple[str, object]:
    """(reduction, avg_factor): avg_factor mostly only with "mean", where it is legal."""
    reduction = draw(REDUCTION)
    if reduction == "mean":
        return reduction, draw(mostly((None, 4.0, 0.0, "tensor"), (-1.0, math.nan, math.inf, "vector"), 5))
    return reduction, draw(mostly((None,), (4.0,)))


def make_avg(avg, dtype=F32):
    if avg == "tensor":
        return torch.tensor(3.0)
    if avg == "vector":
        return torch.ones(2)
    return avg


def broadcasts_to(t: Tensor, shape) -> bool:
    """``t`` broadcasts to ``shape`` without enlarging it."""
    try:
        return torch.broadcast_shapes(t.shape, tuple(shape)) == tuple(shape)
    except RuntimeError:
        return False


def reduce_problems(reduction, avg, weight, loss_shape) -> set[type]:
    if reduction not in REDUCTIONS:
        return {ValueError}
    if avg is not None:
        if reduction == "sum":  # mmdet's weight_reduce_loss: "none" ignores avg_factor, "sum" refuses it
            return {ValueError}
        if isinstance(avg, Tensor):
            if avg.numel() != 1:
                return {ValueError}
        elif not (math.isfinite(avg) and avg >= 0):
            return {ValueError}
    if weight is not None and not broadcasts_to(weight, loss_shape):
        return {ValueError}
    return set()


def manual_reduce(loss, weight, reduction, avg):
    """Reference reduction of an unreduced loss."""
    loss = loss.double() * (1 if weight is None else weight.double())
    if reduction == "none":
        return loss
    if reduction == "sum" or avg is not None:
        s = loss.sum()
        return s if reduction == "sum" else s / max(float(avg), torch.finfo(F32).eps)
    return loss.mean() if loss.numel() else loss.sum() * 0


@st.composite
def weights(draw, shape):
    """None, a weight of the loss shape (or a trailing part of it), or one that does not fit."""
    c = draw(st.sampled_from((0, 0, 2, 2, 3, 4)))
    if c <= 1 or shape is None:
        return None
    ws = tuple(shape)
    if c == 3:
        ws = ws[draw(st.integers(0, len(ws))) :]
    if c == 4:
        ws = ws + (2,)
    return torch.rand(ws, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))


@FUZZ
@given(pair=box_pairs(), kind=KIND, fmt=FMT, eps=EPS, red=reduce_args(), data=st.data())
def test_iou_loss(tally, pair, kind, fmt, eps, red, data):
    pred, target = pair
    reduction, avg = red
    expected = pair_problems(pred, target, kind, fmt, eps)
    shape = None
    if not expected:
        shape = torch.broadcast_shapes(pred.shape, target.shape)[:-1]
    weight = data.draw(weights(shape))
    avg = make_avg(avg)
    if not expected:
        expected = reduce_problems(reduction, avg, weight, shape)
    kw = dict(reduction=reduction, weight=weight, avg_factor=avg)
    out = run(tally, "iou_loss", expected, lambda: detloss.iou_loss(pred, target, kind, fmt, eps, **kw))
    if out is None:
        return
    unreduced = detloss.iou_loss(pred, target, kind, fmt, eps, reduction="none")
    assert unreduced.shape == shape and unreduced.dtype == compute(pred, target)
    if in_domain(pred, target):
        assert_finite("iou_loss", out)
        ref = manual_reduce(unreduced, weight, reduction, avg)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@st.composite
def focal_inputs(draw):
    logits = draw(tensors(last=None, modes=("grid", "wide", "special", "grid")))
    lshape = tuple(logits.shape) if isinstance(logits, Tensor) else (2,)
    tshape = draw(shapes(None)) if rare(draw, 9) else lshape
    kind = draw(st.sampled_from(("hard", "soft", "soft", "bad")))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    t = torch.rand(tshape, generator=g, dtype=F64)
    if kind == "hard":
        t = t.round()
    elif kind == "bad" and t.numel():
        t = t.flatten()
        t[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from((math.nan, -0.5, 1.5, math.inf)))
        t = t.view(tshape)
    tdtype = draw(st.sampled_from((F32, F32, F16, F64, torch.int64, torch.bool))) if kind == "hard" else F32
    return logits, _cast(t, tdtype)


@FUZZ
@given(
    inputs=focal_inputs(),
    alpha=mostly((0.25, -1.0, 0.0, 1.0), (1.5, math.nan)),
    gamma=mostly((2.0, 1.5, 0.0, 0.5), (-1.0, math.nan, math.inf)),
    pos_weight=mostly((None, None, "fit"), ("bad",)),
    red=reduce_args(),
    validate=st.booleans(),
    data=st.data(),
)
def test_sigmoid_focal_loss(tally, inputs, alpha, gamma, pos_weight, red, validate, data):
    logits, targets = inputs
    reduction, avg = red
    expected: set[type] = set()
    if not (math.isfinite(gamma) and gamma >= 0) or not (alpha <= 1):
        expected.add(ValueError)
    legal_logits = isinstance(logits, Tensor) and logits.is_floating_point()
    if not legal_logits:
        expected.add(TypeError)
        pos_weight = None if pos_weight is None else torch.ones(3)
    elif logits.shape != targets.shape:
        expected.add(ValueError)
    elif validate and not (
        bool(torch.isfinite(logits).all()) and bool(((targets >= 0) & (targets <= 1)).all())
    ):
        expected.add(ValueError)  # NaN logits, NaN targets, targets outside [0, 1]
    if legal_logits and pos_weight is not None:
        c = logits.shape[-1] if logits.dim() else 1
        pos_weight = torch.full((c if pos_weight == "fit" else c + 2,), 2.0)
        if not broadcasts_to(pos_weight, logits.shape):
            expected.add(ValueError)
    weight = data.draw(weights(tuple(logits.shape) if legal_logits else None))
    avg = make_avg(avg)
    expected |= reduce_problems(reduction, avg, weight, logits.shape if legal_logits else (3,))
    kw = dict(pos_weight=pos_weight, reduction=reduction, weight=weight, avg_factor=avg, validate=validate)
    out = run(
        tally,
        "sigmoid_focal_loss",
        expected,
        lambda: detloss.sigmoid_focal_loss(logits, targets, alpha, gamma, **kw),
    )
    if out is None or not bool(torch.isfinite(logits).all()) or not validate:
        return
    assert out.dtype == compute(logits, *(() if weight is None else (weight,)))
    assert_finite("sigmoid_focal_loss", out)
    # naive reference: -log of the stable sigmoid terms, written out
    x, t = logits.double(), targets.double()
    pw = 1.0 if pos_weight is None else pos_weight.double()
    ce = -(pw * t * torch.nn.functional.logsigmoid(x) + (1 - t) * torch.nn.functional.logsigmoid(-x))
    p = torch.sigmoid(x)
    mod = (p + t - 2 * p * t).clamp(min=torch.finfo(F32).tiny) ** gamma if gamma else 1.0
    a = t * alpha + (1 - t) * (1 - alpha) if alpha >= 0 else 1.0
    ref = manual_reduce(ce * mod * a, weight, reduction, avg)
    torch.testing.assert_close(
        out.double(), ref, rtol=2e-5, atol=2e-5 * max(1.0, float(ref.abs().max()) if ref.numel() else 1.0)
    )


@FUZZ
@given(
    pred=tensors(last=None, modes=("grid", "wide", "special")),
    data=st.data(),
    sigma=mostly((1.0, 3.0, 0.5, math.inf), (0.0, -1.0, math.nan)),
    inside=mostly((1.0, 2.0, "fit"), ("bad",)),
    outside=mostly((1.0, 0.5, "fit"), ("bad",)),
    red=reduce_args(),
)
def test_smooth_l1_loss(tally, pred, data, sigma, inside, outside, red):
    reduction, avg = red
    shape = tuple(pred.shape) if isinstance(pred, Tensor) else (2,)
    tshape = data.draw(shapes(None)) if data.draw(st.sampled_from((False,) * 9 + (True,))) else shape
    target = data.draw(tensors(shape=tshape, last=None, modes=("grid", "wide", "special")))
    expected: set[type] = set() if sigma > 0 else {ValueError}
    legal = True
    for t in (pred, target):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            expected.add(TypeError)
            legal = False
    if legal:
        if pred.shape != target.shape:
            expected.add(ValueError)
        elif not (bool(torch.isfinite(pred).all()) and bool(torch.isfinite(target).all())):
            expected.add(ValueError)

    def side(w):
        if w == "fit":
            return torch.full(shape[-1:], 2.0)
        if w == "bad":
            return torch.ones(shape[-1] + 2 if shape else 2)
        return w

    inside, outside = side(inside), side(outside)
    if any(isinstance(w, Tensor) and not broadcasts_to(w, shape) for w in (inside, outside)):
        expected.add(ValueError)
    weight = data.draw(weights(shape))
    avg = make_avg(avg)
    expected |= reduce_problems(reduction, avg, weight, shape)
    kw = dict(reduction=reduction, weight=weight, avg_factor=avg)
    out = run(
        tally,
        "smooth_l1_loss",
        expected,
        lambda: detloss.smooth_l1_loss(pred, target, sigma, inside, outside, **kw),
    )
    if out is None:
        return
    assert out.dtype == compute(pred, target, *(() if weight is None else (weight,)))
    if in_domain(pred, target):
        assert_finite("smooth_l1_loss", out)
        d = (pred.double() - target.double()) * (inside.double() if isinstance(inside, Tensor) else inside)
        beta = 1.0 / sigma**2
        elem = torch.where(d.abs() < beta, 0.5 * d * d / beta if beta else 0 * d, d.abs() - 0.5 * beta)
        elem = elem * (outside.double() if isinstance(outside, Tensor) else outside)
        ref = manual_reduce(elem, weight, reduction, avg)
        torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-3)


@st.composite
def label_inputs(draw):
    if draw(st.booleans()):  # class ids
        k = draw(mostly((3, 1, 2, 5), (0, -1)))
        shape = draw(shapes(None))[:-1] if draw(st.booleans()) else ()
        ids = torch.randint(
            -1, max(k, 1) + 1, shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))
        )
        dtype = draw(st.sampled_from((torch.int64, torch.int64, torch.int32, torch.uint8, torch.bool)))
        if dtype != torch.int64:
            ids = ids.clamp(min=0).to(dtype)
        return ids, draw(mostly((k,), (None,)))
    onehot = draw(tensors(last=None, dtypes=FLOATS, modes=("grid", "special")))
    if isinstance(onehot, Tensor):
        onehot = onehot.abs().clamp(max=1)
    k = onehot.shape[-1] if isinstance(onehot, Tensor) and onehot.dim() else 3
    return onehot, draw(mostly((None, k), (k + 1,)))


@FUZZ
@given(inputs=label_inputs(), eps=mostly((0.1, 0.0, 1.0, 0.01), (-0.1, 1.5, math.nan)))
def test_smooth_labels(tally, inputs, eps):
    targets, k = inputs
    expected: set[type] = set() if 0 <= eps <= 1 else {ValueError}
    if not isinstance(targets, Tensor) or targets.dtype == torch.bool:
        expected.add(TypeError)
    elif targets.is_floating_point():
        if targets.dim() == 0 or targets.shape[-1] == 0 or (k is not None and k != targets.shape[-1]):
            expected.add(ValueError)
        elif not bool(torch.isfinite(targets).all()):
            expected.add(ValueError)
    elif k is None or k < 1:
        expected.add(ValueError)
    elif targets.numel() and not bool(((targets >= 0) & (targets < k)).all()):
        expected.add(ValueError)
    out = run(tally, "smooth_labels", expected, lambda: detloss.smooth_labels(targets, eps, k))
    if out is None:
        return
    onehot = targets if targets.is_floating_point() else torch.nn.functional.one_hot(targets.long(), k)
    kk = onehot.shape[-1]
    assert out.shape == onehot.shape
    assert_finite("smooth_labels", out)
    torch.testing.assert_close(
        out.double(), onehot.double() * (1 - eps) + eps / kk, rtol=0, atol=out_tol(out.dtype)
    )


# ----------------------------------------------------------------------------- nn twins
@FUZZ
@given(pair=box_pairs(), kind=KIND, fmt=FMT, eps=EPS, reduction=REDUCTION, v=st.booleans())
def test_nn_iou_loss(tally, pair, kind, fmt, eps, reduction, v):
    """The Module must behave exactly like the functional: same value or same exception type."""
    pred, target = pair
    _twin(
        tally,
        "nn.IoULoss",
        lambda: dnn.IoULoss(kind, fmt, eps, reduction, validate=v)(pred, target),
        lambda: detloss.iou_loss(pred, target, kind, fmt, eps, reduction=reduction, validate=v),
    )


@FUZZ
@given(
    inputs=focal_inputs(),
    alpha=mostly((0.25, -1.0), (1.5,)),
    gamma=mostly((2.0, 0.0), (-1.0,)),
    reduction=REDUCTION,
    v=st.booleans(),
)
def test_nn_sigmoid_focal_loss(tally, inputs, alpha, gamma, reduction, v):
    logits, targets = inputs
    _twin(
        tally,
        "nn.SigmoidFocalLoss",
        lambda: dnn.SigmoidFocalLoss(alpha, gamma, reduction, validate=v)(logits, targets),
        lambda: detloss.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction=reduction, validate=v),
    )


@FUZZ
@given(
    pred=tensors(last=None, modes=("grid", "special")),
    sigma=mostly((1.0, 2.0), (0.0,)),
    reduction=REDUCTION,
    same=mostly((True,), (False,)),
    v=st.booleans(),
)
def test_nn_smooth_l1_loss(tally, pred, sigma, reduction, same, v):
    target = pred * 0.5 if same and isinstance(pred, Tensor) else torch.zeros(3)
    _twin(
        tally,
        "nn.SmoothL1Loss",
        lambda: dnn.SmoothL1Loss(sigma, reduction=reduction, validate=v)(pred, target),
        lambda: detloss.smooth_l1_loss(pred, target, sigma, reduction=reduction, validate=v),
    )


def _twin(tally, name, module_call, functional_call):
    """Where the functional raises, the Module must raise too (the constructor may check first)."""
    try:
        want = functional_call()
    except (ValueError, TypeError):
        run(tally, name, {ValueError, TypeError}, module_call)
        return
    got = run(tally, name, set(), module_call)
    torch.testing.assert_close(got, want, equal_nan=True)


# ----------------------------------------------------------------------------- pad_targets
@st.composite
def target_lists(draw):
    n_img = draw(st.integers(0, 4))
    out = []
    for _ in range(n_img):
        if rare(draw, 24):
            out.append(draw(st.sampled_from(([], None, {"boxes": torch.zeros(0, 4)}))))
            continue
        boxes = draw(
            tensors(
                shape=mostly(((0, 4), (1, 4), (3, 4)), ((2, 5), (4,))),
                modes=("boxes",) * 8 + ("special", "grid"),
                allow_other=False,
            )
        )
        n = boxes.shape[0] if boxes.dim() == 2 else 0
        ldtype = draw(mostly((torch.int64, torch.int32), (F32, torch.bool)))
        lshape = (n + 1,) if rare(draw, 19) else (n,)
        labels = torch.randint(
            -1 if rare(draw, 19) else 0,
            4,
            lshape,
            generator=torch.Generator().manual_seed(draw(st.integers(0, 99))),
        ).to(ldtype)
        out.append({"boxes": boxes, "labels": labels})
    return out


def pad_problems(targets, num_classes, dtype) -> set[type]:
    types, values = set(), set()
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not dtype.is_floating_point:
        types.add(TypeError)
    if isinstance(num_classes, int) and num_classes < 1:
        values.add(ValueError)
    for t in targets:
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            types.add(TypeError)
            continue
        b, lab = t["boxes"], t["labels"]
        bad_shape = b.dim() != 2 or b.shape[-1] != 4 or lab.shape != b.shape[:1]
        if bad_shape:
            values.add(ValueError)
        if box_problems(b) == {TypeError} or lab.is_floating_point() or lab.dtype == torch.bool:
            types.add(TypeError)
        if bad_shape or TypeError in types:
            continue
        bb = b.to(dtype) if dtype.is_floating_point else b
        if not bool(torch.isfinite(bb).all()) or (
            b.numel() and bool(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any())
        ):
            values.add(ValueError)
        if lab.numel() and isinstance(num_classes, int) and bool(((lab < 0) | (lab >= num_classes)).any()):
            values.add(ValueError)
    return types | values


@FUZZ
@given(
    targets=target_lists(),
    num_classes=mostly((4,), (2, 0, -1, 4.0)),
    dtype=mostly((F32, F64, F16), (torch.int64,)),
)
def test_pad_targets(tally, targets, num_classes, dtype):
    expected = pad_problems(targets, num_classes, dtype)
    out = run(tally, "pad_targets", expected, lambda: pad_targets(targets, num_classes, dtype=dtype))
    if out is None:
        return
    b, m = len(targets), max((t["boxes"].shape[0] for t in targets), default=0)
    assert out.boxes.shape == (b, m, 4) and out.labels.shape == (b, m) and out.mask.shape == (b, m)
    assert out.boxes.dtype == dtype and out.labels.dtype == torch.int64
    assert_finite("pad_targets", out.boxes)
    for i, t in enumerate(targets):  # naive reference: image by image
        n = t["boxes"].shape[0]
        assert out.mask[i].tolist() == [True] * n + [False] * (m - n)
        torch.testing.assert_close(out.boxes[i, :n], t["boxes"].to(dtype))
        assert out.labels[i, :n].tolist() == t["labels"].tolist()


# ----------------------------------------------------------------------------- the criteria
CRIT_C, CRIT_SIZE = 3, 64
CRIT_GRIDS = {"YOLOv3": (8, 4, 2), "YOLOv4": (2, 4), "YOLOv5": (8, 4, 2), "YOLOv8": (8, 4, 2)}
V8_REG_MAX = 4
CRIT_CHANNELS = {"YOLOv8": 4 * V8_REG_MAX + CRIT_C}  # anchor-based heads: 3 · (5 + C)


def _ssd_priors() -> Tensor:
    c = (torch.arange(4.0) + 0.5) * 16
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack((cx.flatten(), cy.flatten()), -1)
    return torch.cat([torch.cat((centres, torch.full_like(centres, s)), -1) for s in (16.0, 32.0)])


CRITERIA = {
    "YOLOv3": lambda: YOLOv3Loss(CRIT_C),
    "YOLOv4": lambda: YOLOv4Loss(CRIT_C),
    "YOLOv5": lambda: YOLOv5Loss(CRIT_C),
    "YOLOv8": lambda: YOLOv8Loss(CRIT_C, reg_max=V8_REG_MAX),
    "SSD": lambda: SSDLoss(CRIT_C, _ssd_priors()),
}


@st.composite
def criterion_targets(draw, batch: int):
    """Per image 0-4 boxes: mostly legal (tiny to whole-image, centres well inside the 64 px input);
    rarely a NaN/Inf coordinate, an inverted or zero-width box, a centre far outside, a bad label."""
    out = []
    for _ in range(batch):
        n = draw(st.sampled_from((0, 1, 2, 4)))
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        size = draw(st.sampled_from((1e-3, 1.0, 8.0, 30.0)))
        c = torch.rand(n, 2, generator=g) * 56 + 4  # centres in [4, 60]
        wh = torch.rand(n, 2, generator=g) * size + 1e-3
        boxes = torch.cat((c - wh / 2, c + wh / 2), -1)
        labels = torch.randint(0, CRIT_C, (n,), generator=g)
        if n and rare(draw, 4):
            flaw = draw(
                st.sampled_from(("nan", "inf", "inverted", "zero", "outside", "label", "float label"))
            )
            if flaw in ("nan", "inf"):
                boxes[0, draw(st.integers(0, 3))] = math.nan if flaw == "nan" else math.inf
            elif flaw == "inverted":
                boxes[0] = boxes[0, [2, 1, 0, 3]]
            elif flaw == "zero":
                boxes[0, 3] = boxes[0, 1]
            elif flaw == "outside":
                boxes[0] += 200.0
            elif flaw == "label":
                labels[0] = CRIT_C
            else:
                labels = labels.float()
        out.append({"boxes": boxes, "labels": labels})
    return out


def target_problems(name: str, targets: list[dict]) -> set[type]:
    problems = pad_problems(targets, CRIT_C, F32)
    for t in targets:  # YOLOv3/v4 train a box at the cell of its centre: it must lie in the input
        c = (t["boxes"][:, :2] + t["boxes"][:, 2:]) / 2
        if name in ("YOLOv3", "YOLOv4") and bool(((c < 0) | (c >= CRIT_SIZE)).any()):
            problems.add(ValueError)
    return problems


@pytest.mark.parametrize("name", tuple(CRITERIA))
@FUZZ
@given(data=st.data())
def test_criteria(tally, name, data):
    """Random targets and head outputs (shapes, dtypes, saturated values) through every criterion:
    a finite loss with finite gradients, or a ValueError/TypeError; never NaN from legal input."""
    batch = data.draw(st.integers(0, 3))
    targets = data.draw(criterion_targets(batch))
    expected = target_problems(name, targets)
    pbatch = batch + 1 if data.draw(st.sampled_from((False,) * 19 + (True,))) else batch
    if pbatch != batch:
        expected.add(ValueError)
    dtype = data.draw(mostly((F32, F16, BF16, F64), (torch.int64,)))
    if dtype == torch.int64:
        expected.add(TypeError)
    scale = data.draw(st.sampled_from((1.0, 1.0, 5.0, 1e4)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    if name == "SSD":
        shapes = [(pbatch, 32, 4), (pbatch, 32, CRIT_C + 1)]
    else:
        channels = CRIT_CHANNELS.get(name, 3 * (5 + CRIT_C))
        shapes = [(pbatch, channels, s, s) for s in CRIT_GRIDS[name]]
        if data.draw(st.sampled_from((False,) * 19 + (True,))):  # a head with the wrong channel count
            shapes[0] = (pbatch, 7, *shapes[0][2:])
            expected.add(ValueError)
    preds = [(torch.randn(s, generator=g) * scale).to(dtype) for s in shapes]
    for p in preds:
        p.requires_grad_(p.is_floating_point())
    call = (
        (lambda: CRITERIA[name]()(tuple(preds), targets))
        if name == "SSD"
        else (lambda: CRITERIA[name]()(preds, targets))
    )
    out = run(tally, f"criteria.{name}Loss", expected, call)
    if out is None:
        return
    assert out.total.dtype == (F64 if dtype == F64 else F32)
    assert_finite(name, out.total)
    out.total.backward()
    for p in preds:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ----------------------------------------------------------------------------- DETRLoss
def detr_problems(targets: list[dict]) -> set[type]:
    """DETR targets are cxcywh normalised: finite, w > 0 and h > 0, integer labels in [0, C)."""
    problems = set()
    for t in targets:
        b, lab = t["boxes"], t["labels"]
        if lab.is_floating_point():
            problems.add(TypeError)
        elif lab.numel() and bool(((lab < 0) | (lab >= CRIT_C)).any()):
            problems.add(ValueError)
        if b.numel() and not bool((torch.isfinite(b).all(1) & (b[:, 2] > 0) & (b[:, 3] > 0)).all()):
            problems.add(ValueError)
    return problems


@pytest.mark.parametrize("preset", ("detr", "deformable", "rtdetr"))
@FUZZ
@given(data=st.data())
def test_detr_criterion(tally, preset, data):
    """Random targets (the criteria's flaws, as cxcywh / 64), layers, queries, dtypes and saturated or
    degenerate predictions through DETRLoss: finite with finite gradients, or a clear error."""
    from detloss.criteria import DETRLoss

    batch = data.draw(st.integers(0, 3))
    targets = [
        {
            "boxes": torch.cat(
                ((t["boxes"][:, :2] + t["boxes"][:, 2:]) / 2, t["boxes"][:, 2:] - t["boxes"][:, :2]), 1
            )
            / CRIT_SIZE,
            "labels": t["labels"],
        }
        for t in data.draw(criterion_targets(batch))
    ]
    expected = detr_problems(targets)
    layers, queries = data.draw(st.sampled_from((1, 2, 3))), data.draw(st.sampled_from((1, 3, 6)))
    pbatch = batch + 1 if data.draw(st.sampled_from((False,) * 19 + (True,))) else batch
    if pbatch != batch:
        expected.add(ValueError)
    width = CRIT_C + (preset == "detr")
    if data.draw(st.sampled_from((False,) * 19 + (True,))):  # logits of the other preset's width
        width += 1 if preset != "detr" else -1
        expected.add(ValueError)
    dtype = data.draw(mostly((F32, F16, BF16, F64), (torch.int64,)))
    if dtype == torch.int64:
        expected.add(TypeError)
    scale = data.draw(st.sampled_from((1.0, 1.0, 5.0, 1e4)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    logits = (torch.randn(layers, pbatch, queries, width, generator=g) * scale).to(dtype)
    raw = torch.randn(layers, pbatch, queries, 4, generator=g)
    box_mode = data.draw(st.sampled_from(("sigmoid", "sigmoid", "degenerate", "raw")))
    boxes = {
        "sigmoid": raw.sigmoid(),
        "degenerate": raw.sigmoid() * torch.tensor([1.0, 1.0, 0.0, 0.0]),
        "raw": raw * scale,
    }[box_mode].to(dtype)
    for p in (logits, boxes):
        p.requires_grad_(p.is_floating_point())
    validate = data.draw(st.booleans())
    if not validate:
        expected = {
            e for e in expected if e is TypeError or pbatch != batch or width != CRIT_C + (preset == "detr")
        }
        if not expected and detr_problems(targets):
            return  # bad target values without validation: garbage in, no promise
    out = run(
        tally,
        f"criteria.DETRLoss[{preset}]",
        expected,
        lambda: DETRLoss(CRIT_C, preset, validate=validate)(logits, boxes, targets),
    )
    if out is None:
        return
    assert out.total.dtype == (F64 if dtype == F64 else F32) and len(out.layers) == layers
    assert_finite(preset, out.total)
    out.total.backward()
    for p in (logits, boxes):
        assert p.grad is not None and torch.isfinite(p.grad).all(), preset
