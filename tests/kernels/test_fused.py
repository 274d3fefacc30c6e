"""The fused kernels against the plain formulas, written here as the reference.

``plain_iou`` is the IoU family exactly as it stood in ``iou.py`` before the fused kernel (the plain
eager formula, min/max written with relu as the library writes them so that the tie conventions
match; autograd derives its gradient) and ``plain_focal`` is the focal loss on PyTorch's own
``F.binary_cross_entropy_with_logits``. The fused backward is hand-derived, so autograd of these
references is an independent check of every term.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import detloss
from detloss import kernels
from detloss.iou import iou_xyxy
from detloss.kernels import IOU_KINDS, Modifiers, focal_forward, focal_value_and_grad, fused_focal, runtime

IMAGE = (40.0, 30.0)  # MPDIoU's image size in these tests


def fused_iou(a, b, kind="iou", eps=1e-7, loss=False, reduce=False, mods=None):
    """detloss.kernels.fused_iou with MPDIoU's image size filled in."""
    if mods is None:
        mods = Modifiers(image_size=IMAGE if kind == "mpdiou" else None)
    return kernels.fused_iou(a, b, kind, eps, loss, reduce, mods)

K = 4.0 / math.pi**2


@pytest.fixture(autouse=True, params=["kept", "recomputed"])
def always_the_function(request, monkeypatch):
    """These tests check the hand-derived backward: route every size through the autograd.Function
    (eager inputs of 2^12 to 2^21 boxes otherwise take autograd of the same formula), with its parts
    kept from the forward (as small inputs run) or recomputed in the backward (as large ones run)."""
    monkeypatch.setattr(runtime, "PLAIN_AUTOGRAD_MAX_BOXES", -1)
    if request.param == "recomputed":
        monkeypatch.setattr(runtime, "KEPT_PARTS_MAX_BOXES", -1)
    return request.param


def _low(a, b):
    """min(a, b) with the library's tie convention (the gradient to ``a``), as relu writes it."""
    return a - torch.relu(a - b)


def _high(a, b):
    """max(a, b), the gradient to ``b`` on a tie."""
    return b + torch.relu(a - b)


def plain_iou(boxes1, boxes2, kind="iou", eps=1e-7, held=None, with_held=False):
    """The reference value. CIoU's α_v and WIoU's c² are constants of the gradient: computed here and
    detached, or ``held`` (a tensor) in their place; ``with_held``: also return the one computed."""
    x1, y1, x2, y2 = boxes1.unbind(-1)
    u1, v1, u2, v2 = boxes2.unbind(-1)
    w1, h1 = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    w2, h2 = (u2 - u1).clamp(min=0), (v2 - v1).clamp(min=0)
    inter = (_low(x2, u2) - _high(x1, u1)).clamp(min=0) * (
        _low(y2, v2) - _high(y1, v1)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter
    iou = inter / (union + eps)
    if kind == "iou":
        return iou
    if kind == "mpdiou":
        norm = IMAGE[0] ** 2 + IMAGE[1] ** 2
        return iou - ((x1 - u1) ** 2 + (y1 - v1) ** 2) / norm - ((x2 - u2) ** 2 + (y2 - v2) ** 2) / norm
    cw = _high(_high(x1, x2), _high(u1, u2)) - _low(
        _low(x1, x2), _low(u1, u2)
    )
    ch = _high(_high(y1, y2), _high(v1, v2)) - _low(
        _low(y1, y2), _low(v1, v2)
    )
    if kind == "giou":
        enclose = cw * ch
        return iou - (enclose - union) / (enclose + eps)
    dx = 0.5 * ((u1 + u2) - (x1 + x2))
    dy = 0.5 * ((v1 + v2) - (y1 + y2))
    rho2 = dx * dx + dy * dy
    if kind == "wiou":
        c2 = (cw * cw + ch * ch + eps).detach() if held is None else held
        value = 1.0 - torch.exp(rho2 / c2) * (1.0 - iou)
        return (value, c2) if with_held else value
    if kind == "siou":
        angle = 2.0 * (dx * dy).abs() / (rho2 + eps)
        gamma = 2.0 - angle
        distance = 2.0 - torch.exp(-gamma * (dx / (cw + eps)) ** 2)
        distance = distance - torch.exp(-gamma * (dy / (ch + eps)) ** 2)
        omega_w = (w1 - w2).abs() / (_high(w1, w2) + eps)
        omega_h = (h1 - h2).abs() / (_high(h1, h2) + eps)
        shape = (1.0 - torch.exp(-omega_w)) ** 4.0 + (1.0 - torch.exp(-omega_h)) ** 4.0
        return iou - 0.5 * (distance + shape)
    diou = iou - rho2 / (cw * cw + ch * ch + eps)
    if kind == "diou":
        return diou
    if kind == "ciou":
        v = K * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
        with torch.no_grad():
            alpha = v / ((1.0 - iou) + v + eps) if held is None else held
        value = diou - alpha * v
        return (value, alpha) if with_held else value
    return diou - (w1 - w2) ** 2 / (cw * cw + eps) - (h1 - h2) ** 2 / (ch * ch + eps)


def plain_focal(x, t, pos_weight=None, alpha=0.25, gamma=2.0):
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none", pos_weight=pos_weight)
    if gamma != 0:
        p = torch.sigmoid(x)
        loss = loss * (p + t - 2.0 * p * t).clamp(min=torch.finfo(x.dtype).tiny) ** gamma
    if alpha >= 0:
        loss = loss * (t * alpha + (1.0 - t) * (1.0 - alpha))
    return loss


def random_boxes(n, gen, dtype=torch.float64, scale=10.0):
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * scale
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * scale / 2 + 0.1
    return torch.cat([xy, xy + wh], -1)


def degenerate_pairs(dtype=torch.float64):
    """Pairs where kinks sit exactly on the inputs: ties, zero widths, inverted, concentric, far apart."""
    a = [
        [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0],  # identical (every min/max ties)
        [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0],  # two points at the same place
        [1.0, 1.0, 1.0, 3.0], [0.0, 0.0, 2.0, 2.0],  # zero-width prediction
        [0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0],  # concentric
        [0.0, 0.0, 1.0, 1.0], [1e4, 1e4, 1e4 + 1, 1e4 + 2],  # far apart
        [0.0, 0.0, 1e-4, 2e-4], [5e-5, 0.0, 2e-4, 1e-4],  # tiny scale
        [3.0, 3.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0],  # inverted prediction (empty)
        [0.0, 0.0, 2.0, 1.0], [2.0, 0.0, 4.0, 1.0],  # touching edges
        [0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0],  # shifted along x only (dy = 0)
        [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 1.0],  # shared corner, different shapes
    ]
    t = torch.tensor(a, dtype=dtype)
    return t[0::2].clone(), t[1::2].clone()


def grads_of(fn, b1, b2, seed_grad):
    b1 = b1.clone().requires_grad_(True)
    b2 = b2.clone().requires_grad_(True)
    out = fn(b1, b2)
    out.backward(seed_grad)
    return out.detach(), b1.grad, b2.grad


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_fused_iou_matches_plain_random_float64(kind):
    gen = torch.Generator().manual_seed(0)
    b1, b2 = random_boxes(300, gen), random_boxes(300, gen)
    g = torch.randn(300, generator=gen, dtype=torch.float64)
    v0, g10, g20 = grads_of(lambda a, b: plain_iou(a, b, kind), b1, b2, g)
    v1, g11, g21 = grads_of(lambda a, b: fused_iou(a, b, kind), b1, b2, g)
    torch.testing.assert_close(v1, v0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g11, g10, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g21, g20, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_fused_iou_matches_plain_on_degenerate_boxes(kind):
    b1, b2 = degenerate_pairs()
    g = torch.linspace(-1.0, 2.0, b1.shape[0], dtype=torch.float64)
    v0, g10, g20 = grads_of(lambda a, b: plain_iou(a, b, kind), b1, b2, g)
    v1, g11, g21 = grads_of(lambda a, b: fused_iou(a, b, kind), b1, b2, g)
    for t in (v1, g11, g21):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(v1, v0, rtol=1e-12, atol=1e-12)
    # same conventions at the kinks as autograd: clamp passes at 0, min/max split ties
    torch.testing.assert_close(g11, g10, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(g21, g20, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_fused_iou_gradcheck(kind):
    gen = torch.Generator().manual_seed(1)
    b1 = random_boxes(6, gen).requires_grad_(True)
    b2 = random_boxes(6, gen).requires_grad_(True)
    if kind not in ("ciou", "wiou"):
        assert torch.autograd.gradcheck(lambda a, b: fused_iou(a, b, kind), (b1, b2))
        return
    # CIoU's α_v and WIoU's c² are held constant in the gradient, so finite differences of the value
    # see a derivative the fused gradient leaves out. Checked instead: g = fused − plain + plain with
    # the constant frozen at (b1, b2). Its value is the frozen formula (fused = plain in value), whose
    # finite differences are the derivative with the constant held; its analytic gradient is the fused
    # one (autograd of plain, constant detached, equals that of the frozen plain at the point).
    _, frozen = plain_iou(b1.detach(), b2.detach(), kind, with_held=True)

    def held_fixed(a, b):
        return fused_iou(a, b, kind) - plain_iou(a, b, kind) + plain_iou(a, b, kind, held=frozen)

    assert torch.autograd.gradcheck(held_fixed, (b1, b2))
    # the check can fail: without the frozen term (the held quantity free) it does
    assert not torch.autograd.gradcheck(lambda a, b: fused_iou(a, b, kind), (b1, b2), raise_exception=False)


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_fused_iou_broadcasting_and_loss_flag(kind):
    gen = torch.Generator().manual_seed(2)
    b1, b2 = random_boxes(5, gen)[:, None], random_boxes(7, gen)[None]
    ones = torch.ones(5, 7, dtype=b1.dtype)
    v0, g10, g20 = grads_of(lambda a, b: 1.0 - plain_iou(a, b, kind), b1, b2, ones)
    v1, g11, g21 = grads_of(lambda a, b: fused_iou(a, b, kind, loss=True), b1, b2, ones)
    assert v1.shape == (5, 7) and g11.shape == (5, 1, 4) and g21.shape == (1, 7, 4)
    torch.testing.assert_close(v1, v0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g11, g10, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g21, g20, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_iou_xyxy_dispatches_to_fused_float32(kind):
    gen = torch.Generator().manual_seed(3)
    b1, b2 = random_boxes(1000, gen, torch.float32), random_boxes(1000, gen, torch.float32)
    b1.requires_grad_(True)
    out = iou_xyxy(b1, b2, kind, 1e-7, image_size=IMAGE)  # image_size: used by mpdiou only
    assert out.grad_fn is not None and "Fused" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, plain_iou(b1, b2, kind), rtol=0, atol=1e-6)


def test_fused_iou_saves_only_the_inputs_when_recomputing(always_the_function):
    b1 = torch.rand(100, 4, dtype=torch.float64, requires_grad=True)
    b2 = torch.rand(100, 4, dtype=torch.float64)
    out = fused_iou(b1, b2, "siou")
    saved = [t.data_ptr() for t in out.grad_fn.saved_tensors if t is not None]
    if always_the_function == "recomputed":
        assert saved == [b1.data_ptr(), b2.data_ptr()]
    else:  # the parts: corners, overlap, enclosing sides, offset
        assert len(saved) == 11 and b1.data_ptr() not in saved


def test_fused_iou_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        fused_iou(torch.zeros(4), torch.zeros(4), "dice")


def test_iou_loss_float16_and_zero_area_finite():
    pred = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 3.0, 3.0]], dtype=torch.float16, requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0]], dtype=torch.float16)
    for kind in IOU_KINDS:
        loss = detloss.iou_loss(pred, target, kind, image_size=IMAGE if kind == "mpdiou" else None)
        (grad,) = torch.autograd.grad(loss, pred)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), kind


# ---------------------------------------------------------------------------------------------- focal

FOCAL_CASES = [
    dict(alpha=0.25, gamma=2.0),
    dict(alpha=-1.0, gamma=1.5),
    dict(alpha=0.75, gamma=0.0),
    dict(alpha=0.25, gamma=0.5),
]


def focal_inputs(gen, shape=(40, 5), dtype=torch.float64):
    x = torch.randn(*shape, generator=gen, dtype=dtype) * 4
    x[0, :] = torch.tensor([1e4, -1e4, 0.0, 30.0, -30.0], dtype=dtype)  # saturated and exact logits
    t = torch.rand(*shape, generator=gen, dtype=dtype)  # soft targets
    t[1::3] = (t[1::3] > 0.5).to(dtype)  # hard targets too
    return x, t


@pytest.mark.parametrize("case", FOCAL_CASES)
@pytest.mark.parametrize("with_pw", [False, True])
def test_fused_focal_matches_reference(case, with_pw):
    gen = torch.Generator().manual_seed(4)
    x, t = focal_inputs(gen)
    pw = torch.rand(5, generator=gen, dtype=torch.float64) * 3 if with_pw else None
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    leaves0 = [x.clone().requires_grad_(), t.clone().requires_grad_()]
    leaves1 = [x.clone().requires_grad_(), t.clone().requires_grad_()]
    ref = plain_focal(leaves0[0], leaves0[1], pw, **case)
    out = fused_focal(leaves1[0], leaves1[1], pw, case["alpha"], case["gamma"])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    ref.backward(g)
    out.backward(g)
    for a, b in zip(leaves1, leaves0, strict=True):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10)


def test_fused_focal_gradcheck():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.rand(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    pw = torch.rand(3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: fused_focal(a, b, pw, 0.25, 2.0), (x, t))
    with pytest.raises(ValueError, match="pos_weight"):
        fused_focal(x, t, pw.requires_grad_(), 0.25, 2.0)


def test_focal_float32_is_pytorch_bce_when_gamma_zero_alpha_off():
    gen = torch.Generator().manual_seed(6)
    x, t = focal_inputs(gen, (64, 5), torch.float32)
    pw = torch.rand(5, generator=gen) * 2
    out = detloss.sigmoid_focal_loss(x, t, alpha=-1, gamma=0, pos_weight=pw, reduction="none")
    expected = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)  # float32 rounding and cancellation


def test_focal_float16_extreme_logits_finite():
    x = torch.tensor([[1e4, -1e4, 0.0, 10.0]], dtype=torch.float16, requires_grad=True)
    t = torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=torch.float16)
    loss = detloss.sigmoid_focal_loss(x, t, gamma=1.5)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_focal_value_and_grad_by_hand():
    x, t = torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    loss, gx, gt = focal_value_and_grad(x, t, None, 0.25, 2.0, True, True)
    assert gx.shape == gt.shape == (2, 3) and loss.dim() == 0
    torch.testing.assert_close(loss, torch.tensor(6 * 0.25 * math.log(2) * 0.25, dtype=torch.float64))
    # at x = 0, t = 1: ℓ = log 2, q = ½, dℓ/dx = −½, dq/dx = −¼, loss = α·ℓ·q²
    expected = 0.25 * (-0.5 * 0.25 + math.log(2) * 2 * 0.5 * -0.25)
    torch.testing.assert_close(gx, torch.full((2, 3), expected, dtype=torch.float64))
    value = torch.full((2, 3), 0.25 * math.log(2) * 0.25, dtype=torch.float64)
    torch.testing.assert_close(focal_forward(x, t, None, 0.25, 2.0), value)


# ------------------------------------------------------------------------------------------- compile


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """A broken compiler: the result is the eager one, with one warning, and eager from then on."""

    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(runtime, "_compiled", {})
    monkeypatch.setattr(runtime, "_failed", set())
    monkeypatch.setattr(runtime, "_compile_enabled", True)
    b1 = torch.rand(10, 4, dtype=torch.float64, requires_grad=True)
    b2 = b1.detach() + 0.1
    with pytest.warns(RuntimeWarning, match="torch.compile"):
        out = fused_iou(b1, b2, "giou")
    torch.testing.assert_close(out, plain_iou(b1, b2, "giou"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the failure is remembered
        fused_iou(b1, b2, "giou")
    assert "iou_forward_giou" in runtime._failed


def test_set_compile_switch(monkeypatch):
    monkeypatch.setattr(runtime, "_compile_enabled", False)
    assert not detloss.compile_enabled()
    detloss.set_compile(True)
    assert detloss.compile_enabled()
    detloss.set_compile(False)
    assert not detloss.compile_enabled()


def _has_compiler():
    import shutil

    return shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _has_compiler(), reason="no C++ compiler for inductor")
def test_compiled_path_matches_eager(monkeypatch):
    monkeypatch.setattr(runtime, "_compile_enabled", True)
    gen = torch.Generator().manual_seed(7)
    b1, b2 = random_boxes(257, gen, torch.float32), random_boxes(257, gen, torch.float32)
    v0, g10, _ = grads_of(lambda a, b: plain_iou(a, b, "ciou"), b1, b2, torch.ones(257))
    monkeypatch.setattr(runtime, "_failed", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v1, g11, _ = grads_of(lambda a, b: fused_iou(a, b, "ciou"), b1, b2, torch.ones(257))
    assert not [w for w in caught if "detloss" in str(w.message)]
    assert "iou_forward_ciou" in runtime._compiled and not runtime._failed
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g11, g10, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ fused reductions


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("kind", ["giou", "ciou"])
def test_iou_loss_reductions_match_plain(kind, reduction):
    gen = torch.Generator().manual_seed(8)
    b1, b2 = random_boxes(50, gen), random_boxes(50, gen)
    w = torch.rand(50, generator=gen, dtype=torch.float64)
    ref = 1.0 - plain_iou(b1, b2, kind)
    cases = [
        (dict(), {"none": ref, "sum": ref.sum(), "mean": ref.mean()}[reduction]),
        (dict(weight=w), {"none": ref * w, "sum": (ref * w).sum(), "mean": (ref * w).mean()}[reduction]),
    ]
    if reduction == "mean":
        cases.append((dict(avg_factor=7.0), ref.sum() / 7.0))
    for kwargs, expected in cases:
        out = detloss.iou_loss(b1, b2, kind, reduction=reduction, **kwargs)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    empty = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    out = detloss.iou_loss(empty, empty, kind, reduction=reduction)
    assert out.numel() == 0 if reduction == "none" else out.item() == 0.0
    with pytest.raises(ValueError, match="avg_factor"):
        detloss.iou_loss(b1, b2, kind, reduction="sum", avg_factor=2.0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_fused_reduced_gradients_match_plain(reduction):
    gen = torch.Generator().manual_seed(9)
    b1, b2 = random_boxes(40, gen), random_boxes(40, gen)
    red = torch.sum if reduction == "sum" else torch.mean
    _, g0, _ = grads_of(lambda a, b: red(1.0 - plain_iou(a, b, "diou")), b1, b2, None)
    _, g1, _ = grads_of(lambda a, b: detloss.iou_loss(a, b, "diou", reduction=reduction), b1, b2, None)
    torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-12)
    x, t = focal_inputs(gen)
    x0, x1 = x.clone().requires_grad_(), x.clone().requires_grad_()
    red(plain_focal(x0, t)).backward()
    out = detloss.sigmoid_focal_loss(x1, t, reduction=reduction)
    out.backward()
    torch.testing.assert_close(out, red(plain_focal(x, t)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1.grad, x0.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduce", [False, True])
def test_eager_blocks_match_whole(monkeypatch, reduce):
    """Eager kernels run in row blocks above EAGER_BLOCK rows: same values and gradients."""
    monkeypatch.setattr(runtime, "EAGER_BLOCK", 7)
    monkeypatch.setattr(runtime, "FOCAL_BLOCK", 7)
    gen = torch.Generator().manual_seed(10)
    b1, b2 = random_boxes(60, gen).reshape(3, 20, 4), random_boxes(60, gen).reshape(3, 20, 4)
    seed = torch.tensor(1.5, dtype=b1.dtype) if reduce else torch.randn(3, 20, generator=gen, dtype=b1.dtype)
    for kind in ("giou", "siou"):
        def plain(a, b, kind=kind):
            loss = 1.0 - plain_iou(a, b, kind)
            return loss.sum() if reduce else loss

        v0, g10, g20 = grads_of(plain, b1, b2, seed)
        def fused(a, b, kind=kind):
            return fused_iou(a, b, kind, 1e-7, True, reduce)

        v1, g11, g21 = grads_of(fused, b1, b2, seed)
        torch.testing.assert_close(v1, v0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g11, g10, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(g21, g20, rtol=1e-9, atol=1e-10)
    x, t = focal_inputs(gen, (40, 5))
    pw = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    x0, x1 = x.clone().requires_grad_(), x.clone().requires_grad_()
    t0, t1 = t.clone().requires_grad_(), t.clone().requires_grad_()
    ref = plain_focal(x0, t0, pw)
    out = fused_focal(x1, t1, pw, 0.25, 2.0, reduce)
    ref = ref.sum() if reduce else ref
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = seed if reduce else torch.randn(40, 5, generator=gen, dtype=torch.float64)
    ref.backward(g)
    out.backward(g)
    torch.testing.assert_close(x1.grad, x0.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(t1.grad, t0.grad, rtol=1e-9, atol=1e-10)



@pytest.mark.parametrize("kind", IOU_KINDS)
def test_the_three_eager_paths_agree(kind, monkeypatch, always_the_function):
    """The Function keeping its parts (small inputs), recomputing them (large inputs) and autograd of
    the same formula (in between) give the same values and gradients."""
    if always_the_function == "recomputed":
        pytest.skip("the paths are chosen here")
    g = torch.Generator().manual_seed(7)
    xy = torch.rand(64, 2, generator=g, dtype=torch.float64) * 10
    b1 = torch.cat((xy, xy + 0.5 + torch.rand(64, 2, generator=g, dtype=torch.float64) * 5), -1)
    b2 = b1 + torch.randn(64, 4, generator=g, dtype=torch.float64)
    b2 = torch.cat((torch.minimum(b2[:, :2], b2[:, 2:]), torch.maximum(b2[:, :2], b2[:, 2:])), -1)
    results = []
    for kept, autograd in ((1 << 12, -1), (-1, -1), (-1, 1 << 18)):
        monkeypatch.setattr(runtime, "KEPT_PARTS_MAX_BOXES", kept)
        monkeypatch.setattr(runtime, "PLAIN_AUTOGRAD_MAX_BOXES", autograd)
        a, b = b1.clone().requires_grad_(), b2.clone().requires_grad_()
        out = fused_iou(a, b, kind, loss=True)
        fused = "FusedIoU" in out.grad_fn.name()
        saved = len(out.grad_fn.saved_tensors) if fused else None
        out.backward(torch.linspace(0.5, 2.0, 64, dtype=torch.float64))
        results.append((out.detach(), a.grad, b.grad, saved))
    (v1, g11, g21, saved1), (v2, g12, g22, saved2), (v3, g13, g23, saved3) = results
    assert (saved1, saved2, saved3) == (11, 2, None)  # the parts, the boxes, autograd's own graph
    for v, g1, g2 in ((v2, g12, g22), (v3, g13, g23)):
        torch.testing.assert_close(v, v1, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g1, g11, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g2, g21, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n", [64, 3 * 8192])  # below and above runtime.CLAMP_MAX_NUMEL
def test_low_high_forms_agree_with_relu_at_ties(n):
    """Under autograd, small tensors take ``clamp`` with a tensor bound and large ones the relu
    form: both give relu's values and gradients exactly, ties included (half the pairs tie)."""
    from detloss.kernels.geometry import high, low

    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (n,), generator=gen).double().requires_grad_()
    b = torch.randint(0, 4, (n,), generator=gen).double().requires_grad_()
    w = torch.rand(n, generator=gen, dtype=torch.float64)
    for ours, ref in ((low, _low), (high, _high)):
        got, want = ours(a, b), ref(a, b)
        assert torch.equal(got, want)
        g_got = torch.autograd.grad((got * w).sum(), (a, b))
        g_want = torch.autograd.grad((want * w).sum(), (a, b))
        for x, y in zip(g_got, g_want, strict=True):
            assert torch.equal(x, y)  # -0.0 == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_clamp0_is_clamp_min_0_values_and_gradient(dtype):
    """``threshold`` at −(the smallest subnormal) is ``clamp(min=0)`` exactly: values, and the
    gradient passed at x >= 0 (0 and −0 included), blocked below (the smallest subnormal included)."""
    from detloss.kernels.geometry import clamp0

    info = torch.finfo(dtype)
    tiny = info.smallest_normal * info.eps
    x = torch.tensor([-1.0, -tiny, -0.0, 0.0, tiny, 1.0, -info.max, info.max], dtype=dtype)
    x = torch.cat((x, torch.randn(64, dtype=torch.float64).to(dtype))).requires_grad_()
    assert x[1] < 0 and x[4] > 0  # the subnormals exist in this dtype
    w = torch.rand(x.shape, dtype=torch.float64).to(dtype)
    got, want = clamp0(x), x.clamp(min=0)
    assert torch.equal(got, want)
    g_got, = torch.autograd.grad((got * w).sum(), x)
    g_want, = torch.autograd.grad((want * w).sum(), x)
    assert torch.equal(g_got, g_want)
    assert torch.equal(g_got[:6], torch.cat((torch.zeros(2, dtype=dtype), w[2:6])))


def test_area_forms_agree():
    """``area``: ``prod(0)`` without autograd, the two planes multiplied under autograd: equal."""
    from detloss.kernels.geometry import area

    s = torch.rand(2, 100, dtype=torch.float64) * 10
    s[:, :5] = 0.0
    assert torch.equal(area(s), s[0] * s[1])
    leaf = s.clone().requires_grad_()
    out = area(leaf)
    assert torch.equal(out.detach(), s[0] * s[1])
    g, = torch.autograd.grad(out.sum(), leaf)
    assert torch.equal(g, s.flip(0))
