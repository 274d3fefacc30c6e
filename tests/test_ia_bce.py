"""IA-BCE (LW-DETR's IoU-aware class loss) against a scalar loop port of its formula."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import ia_bce_loss


def port(x, positive, iou, alpha=0.25, gamma=2.0):
    """Per element, from the formula (math on Python floats): positives BCE(p, t) with
    t = max(p^α·IoU^(1−α), 0.01); others −p^γ·log(1 − p)."""
    out = []
    for xi, pi, qi in zip(x, positive, iou, strict=True):
        p = 1.0 / (1.0 + math.exp(-xi))
        if pi:
            t = max(p**alpha * qi ** (1 - alpha), 0.01)
            out.append(-t * math.log(p) - (1 - t) * math.log(1 - p))
        else:
            out.append(-(p**gamma) * math.log(1 - p))
    return out


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 1.0), (0.0, 0.0)])
def test_values_match_loop_port(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, dtype=torch.float64, generator=g) * 3
    positive = torch.rand(64, generator=g, dtype=torch.float64) < 0.3
    iou = torch.rand(64, generator=g, dtype=torch.float64)
    iou[:4] = 0.0  # IoU 0: t clamps to 0.01
    out = ia_bce_loss(x, positive, iou, alpha, gamma, reduction="none")
    ref = torch.tensor(port(x.tolist(), positive.tolist(), iou.tolist(), alpha, gamma), dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    total = ia_bce_loss(x, positive, iou, alpha, gamma, reduction="sum")
    assert total.item() == pytest.approx(sum(ref.tolist()), rel=1e-12)


def test_gradient_is_bce_at_positives_and_through_p_squared_elsewhere():
    # d/dx BCE(σ(x), t) = p − t (t detached); d/dx [−p²·log(1 − p)] = 2p²(1 − p)·(−log(1 − p)) + p³
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    positive = torch.tensor([True, False, False])
    iou = torch.tensor([0.6, 0.0, 0.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(ia_bce_loss(x, positive, iou, reduction="sum"), x)
    p = torch.sigmoid(x.detach()).tolist()
    t = max(p[0] ** 0.25 * 0.6**0.75, 0.01)
    want = [p[0] - t] + [2 * q * q * (1 - q) * -math.log(1 - q) + q**3 for q in p[1:]]
    torch.testing.assert_close(grad, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gamma", [2.0, 3.0, 1.0, 0.5, 0.0])
def test_gradcheck(gamma):
    # t is a detached target: finite differences see it move with p unless it is constant, so the
    # positives take IoU 0 (t = 0.01 whatever p); the gradient there is the value test's above. The
    # hand-derived derivative has a branch per γ (2, ≥ 1, < 1 with p clamped at float tiny)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    positive = torch.rand(6, 5, generator=g) < 0.4
    iou = torch.zeros(6, 1, dtype=torch.float64)  # broadcast
    loss = lambda v: ia_bce_loss(v, positive, iou, 0.25, gamma, reduction="none")  # noqa: E731
    assert torch.autograd.gradcheck(loss, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_logits_finite(dtype):
    # σ(±60) rounds to 1 / 0 in float32: log(1 − p) and log p of the reference are ±inf there
    x = torch.tensor([60.0, -60.0, 60.0, -60.0, 800.0], dtype=dtype, requires_grad=True)
    positive = torch.tensor([True, True, False, False, False])
    iou = torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0], dtype=dtype)
    out = ia_bce_loss(x, positive, iou, reduction="none")
    assert torch.isfinite(out).all()
    # a confident wrong negative costs p²·x ≈ x; a confident right one 0; a positive at p = 0 costs
    # t·|x| with t = 0.01 (p^0.25 ≈ 0 there)
    assert out[2].item() == pytest.approx(60.0, rel=1e-6)
    assert out[4].item() == pytest.approx(800.0, rel=1e-6)
    assert out[3].item() == pytest.approx(0.0, abs=1e-20)
    assert out[1].item() == pytest.approx(0.01 * 60.0, rel=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all()


def test_half_precision_computed_in_float32():
    x = torch.randn(8, 3).to(torch.bfloat16)
    positive = torch.zeros(8, 3, dtype=torch.bool)
    positive[0, 1] = True
    iou = torch.full((8, 3), 0.7)
    out = ia_bce_loss(x, positive, iou)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ia_bce_loss(x.float(), positive, iou))


def test_errors():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="alpha"):
        ia_bce_loss(x, x > 0, x, alpha=1.5)
    with pytest.raises(ValueError, match="iou"):
        ia_bce_loss(x, x > 0, torch.zeros(5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ia_bce_loss(x, x > 0, x + 2)
    with pytest.raises(TypeError, match="positive"):
        ia_bce_loss(x, [True], x)


@pytest.mark.parametrize("gamma", [2.0, 3.0, 1.0, 0.5])
def test_fused_derivative_matches_autograd_of_the_formula(gamma):
    """The kernel's hand-derived derivative against autograd of the plain formula (t detached), on
    logits up to ±40 and IoUs in [0, 1]: the same gradient to float64 round-off."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(40, 7, dtype=torch.float64, generator=g) * 12).clamp(-40, 40).requires_grad_()
    positive = torch.rand(40, 7, generator=g) < 0.3
    iou = torch.rand(40, 1, dtype=torch.float64, generator=g)
    p = torch.sigmoid(x)
    t = (p**0.25 * iou**0.75).clamp(min=0.01).detach()
    m = p.clamp(min=torch.finfo(x.dtype).tiny) ** gamma
    plain = torch.where(
        positive,
        -(t * torch.nn.functional.logsigmoid(x)) - (1 - t) * torch.nn.functional.logsigmoid(-x),
        -m * torch.nn.functional.logsigmoid(-x),
    )
    weights = torch.rand(40, 7, dtype=torch.float64, generator=g)
    (want,) = torch.autograd.grad((plain * weights).sum(), x)
    out = ia_bce_loss(x, positive, iou, 0.25, gamma, reduction="none")
    (got,) = torch.autograd.grad((out * weights).sum(), x)
    torch.testing.assert_close(out, plain.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
