"""Elementwise losses: focal, smooth L1, label smoothing, and the shared reduction contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from detloss import iou_loss, sigmoid_focal_loss, smooth_l1_loss, smooth_labels
from detloss.losses import weight_reduce
from tests.helpers import random_boxes

# ------------------------------------- worked example of a TensorFlow 2 classification-loss tutorial
# ("图像分类任务中的损失函数", loss functions in image classification): these logits and labels, its
# label_smoothing(eps=0.1) and its printed sigmoid cross-entropy table.
LOGITS_004 = [[0.7, 1.2, 0.3], [0.4, 0.2, 0.9], [0.6, 0.3, 0.4]]
LABELS_004 = [1, 2, 0]


def test_classification_tutorial_printed_tables():
    x = torch.tensor(LOGITS_004, dtype=torch.float64)
    y = torch.tensor(LABELS_004)
    smoothed = smooth_labels(y, 0.1, num_classes=3)
    # y (1 - 0.1) + 0.1 / 3: 0.9333... on the label, 0.0333... elsewhere
    hi, lo = 0.9 + 0.1 / 3, 0.1 / 3
    expected = torch.tensor([[lo, hi, lo], [lo, lo, hi], [hi, lo, lo]], dtype=torch.float64)
    torch.testing.assert_close(smoothed.double(), expected, rtol=0, atol=1e-7)
    # the tutorial's printed sigmoid cross-entropy table
    printed_bce = torch.tensor(
        [[1.0798527, 0.34328249, 0.84435523], [0.89968193, 0.7914722, 0.40115389],
         [0.47748795, 0.84435523, 0.89968193]], dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits(x, smoothed.double(), reduction="none")
    torch.testing.assert_close(bce, printed_bce, rtol=0, atol=1e-6)
    # the tutorial's hand computation of entry (0, 0), 1.07985271089 (a float32 result: 1e-7 agreement)
    p = 1 / (1 + math.exp(-0.7))
    assert -(lo * math.log(p) + (1 - lo) * math.log(1 - p)) == pytest.approx(1.07985271089, abs=1e-7)
    # the printed softmax cross-entropy, from the ids and from the one-hot labels
    printed_ce = torch.tensor([0.69967604, 0.74342006, 0.93983102], dtype=torch.float64)
    torch.testing.assert_close(F.cross_entropy(x, y, reduction="none"), printed_ce, rtol=0, atol=1e-6)
    onehot = smooth_labels(F.one_hot(y, 3).double(), 0.0)
    torch.testing.assert_close(F.cross_entropy(x, onehot, reduction="none"), printed_ce, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- smooth_labels
def test_smooth_labels_forms():
    ids = torch.tensor([[0, 3], [2, 1]])
    out = smooth_labels(ids, 0.2, num_classes=4)
    assert out.shape == (2, 2, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 2))
    assert out[0, 1].tolist() == pytest.approx([0.05, 0.05, 0.05, 0.85])
    soft = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    # 0.5 * 0.7 + 0.1, 0.0 * 0.7 + 0.1
    assert smooth_labels(soft, 0.3)[0].tolist() == pytest.approx([0.45, 0.45, 0.1])
    assert smooth_labels(soft, 0.3).dtype == torch.float64
    assert smooth_labels(torch.zeros(0, dtype=torch.int64), 0.1, num_classes=5).shape == (0, 5)
    assert smooth_labels(ids, 0.0, num_classes=4).equal(F.one_hot(ids, 4).float())
    torch.testing.assert_close(smooth_labels(ids, 1.0, num_classes=4), torch.full((2, 2, 4), 0.25))


def test_smooth_labels_without_validation():
    """``validate=False``: the same values; the value checks are skipped (a NaN passes through)."""
    ids = torch.tensor([[0, 3], [2, 1]])
    want = smooth_labels(ids, 0.2, num_classes=4)
    assert smooth_labels(ids, 0.2, num_classes=4, validate=False).equal(want)
    soft = torch.tensor([[0.5, float("nan"), 0.0]])
    with pytest.raises(ValueError, match="targets"):
        smooth_labels(soft, 0.3)
    assert smooth_labels(soft, 0.3, validate=False)[0, 1].isnan()


def test_smooth_labels_gradcheck():
    t = torch.rand(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: smooth_labels(u, 0.1), (t,))


def test_smooth_labels_errors():
    with pytest.raises(ValueError, match=r"targets.*class id 3 at index \(1,\)"):
        smooth_labels(torch.tensor([0, 3, 1]), 0.1, num_classes=3)
    with pytest.raises(ValueError, match=r"class id -1 at index \(1, 0\)"):
        smooth_labels(torch.tensor([[0, 1], [-1, 2]]), 0.1, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        smooth_labels(torch.tensor([0, 1]), 0.1)
    with pytest.raises(ValueError, match="num_classes"):
        smooth_labels(torch.tensor([0, 1]), 0.1, num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        smooth_labels(torch.zeros(2, 3), 0.1, num_classes=4)
    with pytest.raises(ValueError, match="scalar"):
        smooth_labels(torch.tensor(1.0), 0.1)
    for eps in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eps"):
            smooth_labels(torch.tensor([0]), eps, num_classes=2)
    with pytest.raises(TypeError, match="targets"):
        smooth_labels([0, 1], 0.1, num_classes=2)


# --------------------------------------------------------------------------- focal loss
def _focal_hard(x: float, t: int, alpha: float, gamma: float) -> float:
    """Lin et al. (2017) Eq. 5 for a hard target, written from p."""
    p = 1 / (1 + math.exp(-x))
    return -alpha * t * (1 - p) ** gamma * math.log(p) - (1 - alpha) * (1 - t) * p**gamma * math.log(1 - p)


def _focal_soft(x: float, t: float, alpha: float, gamma: float, pw: float = 1.0) -> float:
    """The YOLOv5 FocalLoss wrapper (ultralytics/yolov5 utils/loss.py):
    BCE(x, t) * alpha_t * (1 - p_t)^gamma."""
    p = 1 / (1 + math.exp(-x))
    bce = -(pw * t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = t * p + (1 - t) * (1 - p)
    alpha_t = t * alpha + (1 - t) * (1 - alpha) if alpha >= 0 else 1.0
    return bce * alpha_t * (1 - p_t) ** gamma


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.25, 1.5), (0.5, 0.0), (0.9, 3.0)])
def test_focal_hard_targets_match_paper(alpha, gamma):
    x = torch.randn(6, 5, dtype=torch.float64) * 4
    t = (torch.rand(6, 5) > 0.6).double()
    out = sigmoid_focal_loss(x, t, alpha, gamma, reduction="none")
    ref = torch.tensor([[_focal_hard(a, int(b), alpha, gamma) for a, b in zip(r, s, strict=True)]
                        for r, s in zip(x.tolist(), t.tolist(), strict=True)], dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
    assert sigmoid_focal_loss(x, t, alpha, gamma).item() == pytest.approx(ref.mean().item(), rel=1e-9)


@given(
    vals=st.lists(st.tuples(st.floats(-15, 15), st.floats(0, 1)), min_size=1, max_size=12),
    alpha=st.one_of(st.just(-1.0), st.floats(0, 1)),
    gamma=st.floats(0, 4),
    pw=st.floats(0.1, 5),
)
def test_focal_soft_targets_match_yolov5_wrapper(vals, alpha, gamma, pw):
    x = torch.tensor([v[0] for v in vals], dtype=torch.float64)
    t = torch.tensor([v[1] for v in vals], dtype=torch.float64)
    out = sigmoid_focal_loss(x, t, alpha, gamma, pos_weight=torch.tensor(pw, dtype=torch.float64),
                             reduction="none")
    ref = torch.tensor([_focal_soft(a, b, alpha, gamma, pw) for a, b in vals], dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-12)


def test_focal_gamma0_no_alpha_is_bce():
    x = torch.randn(8, 3, dtype=torch.float64) * 3
    t = torch.rand(8, 3, dtype=torch.float64)
    pw = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    for kw in ({}, {"pos_weight": pw}):
        torch.testing.assert_close(
            sigmoid_focal_loss(x, t, alpha=-1, gamma=0, reduction="none", **kw),
            F.binary_cross_entropy_with_logits(x, t, reduction="none", **kw),
        )
    # alpha = 0.5 halves the BCE
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=0.5, gamma=0, reduction="sum"),
                               0.5 * F.binary_cross_entropy_with_logits(x, t, reduction="sum"))


def test_focal_pos_weight_per_class():
    x = torch.randn(4, 3, dtype=torch.float64)
    t = (torch.rand(4, 3) > 0.5).double()
    pw = [1.0, 3.0, 0.2]
    pwt = torch.tensor(pw, dtype=torch.float64)
    out = sigmoid_focal_loss(x, t, 0.25, 1.5, pos_weight=pwt, reduction="none")
    ref = torch.tensor(
        [[_focal_soft(a, b, 0.25, 1.5, pw[j]) for j, (a, b) in enumerate(zip(r, s, strict=True))]
         for r, s in zip(x.tolist(), t.tolist(), strict=True)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.5, 2.0])
def test_focal_extreme_logits_finite(gamma):
    x = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5])
    out = sigmoid_focal_loss(x, t, 0.25, gamma, reduction="none")
    assert torch.isfinite(out).all()
    # confident and right: 0; confident and wrong: BCE = 1e4 times alpha_t (1 - p_t = 1)
    assert out[:2].tolist() == [0.0, 0.0]
    assert out[2].item() == pytest.approx(1e4 * 0.75)
    assert out[3].item() == pytest.approx(1e4 * 0.25)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_focal_half_precision_logits(dtype):
    x = (torch.randn(16, 4) * 8).to(dtype)
    x[0, 0], x[0, 1] = 60000.0 if dtype == torch.float16 else 1e30, -30.0
    x.requires_grad_()
    t = (torch.rand(16, 4) > 0.5).to(dtype)
    out = sigmoid_focal_loss(x, t, reduction="none")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, sigmoid_focal_loss(x.detach().float(), t.float(), reduction="none"))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all()


def test_focal_gradcheck():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)  # soft targets are differentiable too
    pw = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    for alpha, gamma in ((0.25, 2.0), (0.25, 1.5), (-1.0, 0.5), (0.7, 0.0)):
        assert torch.autograd.gradcheck(
            lambda a, b, al=alpha, ga=gamma: sigmoid_focal_loss(a, b, al, ga, pos_weight=pw,
                                                                reduction="none"),
            (x, t),
        )


def test_focal_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"targets.*\(2, 3\)"):
        sigmoid_focal_loss(x, torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\].*index \(1, 2\)"):
        sigmoid_focal_loss(x, torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 1.5]]))
    with pytest.raises(ValueError, match=r"targets.*index \(0, 0\)"):
        sigmoid_focal_loss(x, torch.tensor([[float("nan"), 1.0, 0.5], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"logits.*index \(0, 1\)"):
        sigmoid_focal_loss(torch.tensor([[0.0, float("inf"), 0.0], [0.0] * 3]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(x, x, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        sigmoid_focal_loss(x, x, alpha=1.5)
    with pytest.raises(TypeError, match="logits"):
        sigmoid_focal_loss(torch.zeros(2, 3, dtype=torch.int64), x)
    with pytest.raises(TypeError, match="targets"):
        sigmoid_focal_loss(x, [[0.0] * 3] * 2)


# --------------------------------------------------------------------------- smooth L1
def _smooth_l1_ssd_tf(p: float, t: float, sigma: float, inside: float, outside: float) -> float:
    """SSD.TensorFlow's modified_smooth_l1 (inside/outside weights, sigma):
    0.5 (sigma d)^2 if |d| < 1/sigma^2 else |d| - 0.5/sigma^2."""
    d = inside * (p - t)
    s2 = sigma * sigma
    return outside * (0.5 * s2 * d * d if abs(d) < 1 / s2 else abs(d) - 0.5 / s2)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0, 10.0])
def test_smooth_l1_matches_ssd_tensorflow(sigma):
    p = torch.randn(10, 4, dtype=torch.float64) * 2
    t = torch.randn(10, 4, dtype=torch.float64)
    inside = torch.rand(10, 4, dtype=torch.float64) * 2
    outside = (torch.rand(10, 1, dtype=torch.float64) > 0.3).double() * 1.5
    out = smooth_l1_loss(p, t, sigma, inside, outside, reduction="none")
    flat_o = outside.expand(10, 4)
    ref = torch.tensor(
        [[_smooth_l1_ssd_tf(v, w, sigma, i, o) for v, w, i, o in zip(a, b, c, d, strict=True)]
         for a, b, c, d in zip(p.tolist(), t.tolist(), inside.tolist(), flat_o.tolist(), strict=True)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # scalar weights
    out = smooth_l1_loss(p, t, sigma, 0.5, 2.0, reduction="none")
    ref = torch.tensor([[_smooth_l1_ssd_tf(a, b, sigma, 0.5, 2.0) for a, b in zip(r, s, strict=True)]
                        for r, s in zip(p.tolist(), t.tolist(), strict=True)], dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # sigma = 1 with unit weights is PyTorch's smooth L1 with beta = 1
    if sigma == 1.0:
        torch.testing.assert_close(smooth_l1_loss(p, t), F.smooth_l1_loss(p, t))


def test_smooth_l1_hand_values():
    # sigma = 2: threshold 1/4. d = 0.1 -> 0.5 * (0.2)^2 = 0.02; d = -1 -> 1 - 0.125 = 0.875
    p = torch.tensor([0.1, -1.0, 0.0])
    t = torch.zeros(3)
    assert smooth_l1_loss(p, t, sigma=2.0, reduction="none").tolist() == pytest.approx([0.02, 0.875, 0.0])


def test_smooth_l1_gradcheck_away_from_kink():
    sigma = 2.0
    p = torch.randn(6, 4, dtype=torch.float64)
    t = torch.randn(6, 4, dtype=torch.float64)
    inside = torch.rand(6, 4, dtype=torch.float64) + 0.5
    d = inside * (p - t)
    # move every |d| at least 0.05 away from the kink at 1/sigma^2 = 0.25
    near = ((d.abs() - 0.25).abs() < 0.05)
    p = torch.where(near, p + 0.2 * torch.sign(p - t) / inside, p)
    assert ((inside * (p - t)).abs() - 0.25).abs().min() > 0.01
    p.requires_grad_()
    t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: smooth_l1_loss(a, b, sigma, inside, 1.5, reduction="none"), (p, t)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_smooth_l1_half_precision(dtype):
    p, t = torch.randn(8, 4).to(dtype), torch.randn(8, 4).to(dtype)
    out = smooth_l1_loss(p, t, sigma=3.0, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, smooth_l1_loss(p.float(), t.float(), sigma=3.0, reduction="none"))


def test_smooth_l1_errors():
    p = torch.zeros(4)
    # an (N, 1) weight against an (N,) loss would silently give (N, N)
    for name in ("inside_weight", "outside_weight"):
        for bad in (torch.ones(4, 1), torch.ones(3)):
            with pytest.raises(ValueError, match=name):
                smooth_l1_loss(p, p, **{name: bad})
    with pytest.raises(ValueError, match="target"):
        smooth_l1_loss(torch.zeros(3, 4), torch.zeros(4, 3))
    for sigma in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            smooth_l1_loss(torch.zeros(3), torch.zeros(3), sigma=sigma)
    with pytest.raises(TypeError, match="pred"):
        smooth_l1_loss([0.0], torch.zeros(1))


# --------------------------------------------------------------------------- the contract over every loss
def _iou_inputs(n):
    return random_boxes(n, torch.float64), random_boxes(n, torch.float64)


LOSSES = {
    # name: (call, inputs for n elements, elementwise shape for n)
    "iou_loss": (lambda a, b, **kw: iou_loss(a, b, "ciou", **kw), _iou_inputs, lambda n: (n,)),
    "sigmoid_focal_loss": (
        lambda a, b, **kw: sigmoid_focal_loss(a, b, **kw),
        lambda n: (torch.randn(n, 3, dtype=torch.float64), torch.rand(n, 3, dtype=torch.float64)),
        lambda n: (n, 3),
    ),
    "smooth_l1_loss": (
        lambda a, b, **kw: smooth_l1_loss(a, b, sigma=3.0, **kw),
        lambda n: (torch.randn(n, 4, dtype=torch.float64), torch.randn(n, 4, dtype=torch.float64)),
        lambda n: (n, 4),
    ),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_reduction_contract(name):
    fn, make, shape = LOSSES[name]
    a, b = make(6)
    none = fn(a, b, reduction="none")
    assert none.shape == shape(6) and (none >= 0).all()
    assert fn(a, b, reduction="sum").shape == ()
    torch.testing.assert_close(fn(a, b, reduction="sum"), none.sum())
    torch.testing.assert_close(fn(a, b, reduction="mean"), none.mean())
    torch.testing.assert_close(fn(a, b), none.mean())  # the default is mean

    w = torch.rand(shape(6), dtype=torch.float64)
    torch.testing.assert_close(fn(a, b, reduction="none", weight=w), none * w)
    torch.testing.assert_close(fn(a, b, reduction="sum", weight=w), (none * w).sum())
    torch.testing.assert_close(fn(a, b, reduction="mean", weight=w), (none * w).mean())
    # a weight that broadcasts without enlarging, e.g. per row (n, 1) against (n, k)
    if len(shape(6)) == 2:
        wr = torch.rand(6, 1, dtype=torch.float64)
        torch.testing.assert_close(fn(a, b, reduction="sum", weight=wr), (none * wr).sum())
    assert fn(a, b, weight=torch.zeros(shape(6), dtype=torch.float64)).item() == 0.0
    assert fn(a, b, reduction="sum", weight=torch.zeros(shape(6), dtype=torch.float64)).item() == 0.0
    # a weight that would enlarge the loss: (n, 1) against (n,) would give (n, n); (7,) does not broadcast
    big = (6, 1) if len(shape(6)) == 1 else (6, 1, 1)
    for bad in (torch.ones(big, dtype=torch.float64), torch.ones(7, dtype=torch.float64)):
        with pytest.raises(ValueError, match="weight"):
            fn(a, b, weight=bad)

    torch.testing.assert_close(fn(a, b, avg_factor=4.0), none.sum() / 4.0)
    torch.testing.assert_close(fn(a, b, avg_factor=torch.tensor(4.0, dtype=torch.float64)), none.sum() / 4.0)
    torch.testing.assert_close(fn(a, b, weight=w, avg_factor=2.5), (none * w).sum() / 2.5)
    # no positives: avg_factor 0 is clamped, a zero loss stays 0 instead of 0/0
    assert fn(a, b, weight=torch.zeros_like(w), avg_factor=0).item() == 0.0
    # mmdet's weight_reduce_loss: "none" ignores avg_factor, "sum" refuses it
    torch.testing.assert_close(fn(a, b, reduction="none", avg_factor=2.0), none)
    torch.testing.assert_close(fn(a, b, reduction="none", weight=w, avg_factor=2.0), none * w)
    with pytest.raises(ValueError, match="avg_factor"):
        fn(a, b, reduction="sum", avg_factor=2.0)
    for red in ("avg", "Mean", None):
        with pytest.raises(ValueError, match="reduction"):
            fn(a, b, reduction=red)

    # empty input: mean is 0 and stays attached to the graph
    ea, eb = make(0)
    ea.requires_grad_()
    for red in ("mean", "sum"):
        out = fn(ea, eb, reduction=red)
        assert out.shape == () and out.item() == 0.0 and out.requires_grad
        (g,) = torch.autograd.grad(out, ea)
        assert g.shape == ea.shape
    assert fn(ea, eb, reduction="none").shape == shape(0)


def test_weight_reduce_direct():
    loss = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert weight_reduce(loss).item() == 3.0
    assert weight_reduce(loss, reduction="sum").item() == 12.0
    assert weight_reduce(loss, torch.tensor([1.0, 0.0, 1.0, 0.5]), "sum").item() == 7.0
    assert weight_reduce(loss, torch.tensor(2.0), "mean").item() == 6.0  # scalar weight broadcasts
    assert weight_reduce(loss, avg_factor=2).item() == 6.0
    with pytest.raises(TypeError, match="weight"):
        weight_reduce(loss, [1.0] * 4)


def test_finite_number():
    from detloss.checks import finite_number

    assert finite_number(0) and finite_number(2.5) and finite_number(-1e300)
    assert not finite_number(math.inf) and not finite_number(-math.inf) and not finite_number(math.nan)
    assert not finite_number("1") and not finite_number(None)


@pytest.mark.slow  # a cold compile: ~20 s
def test_focal_with_float_attributes_compiles_whole():
    """Float hyper-parameters read from a module become symbolic under ``dynamic=True``; the
    argument checks must not break the graph (``math.isfinite`` did)."""

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.alpha, self.gamma = 0.25, 2.0

        def forward(self, x, t):
            return sigmoid_focal_loss(x, t, alpha=self.alpha, gamma=self.gamma, validate=False)

    torch._dynamo.reset()
    head = Head()
    x = torch.randn(64, 5, dtype=torch.float64, requires_grad=True)
    t = (torch.rand(64, 5, dtype=torch.float64) > 0.7).double()
    compiled = torch.compile(head, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x, t), head(x, t))
