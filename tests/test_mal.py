"""MAL (DEIMv2's matching-aware class loss) against a scalar loop port of its formula."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import mal_loss


def port(x, positive, iou, alpha=1.0, gamma=2.0):
    """Per element, from the formula (math on Python floats): positives BCE(p, IoU^γ), others
    −α·p^γ·log(1 − p)."""
    out = []
    for xi, pi, qi in zip(x, positive, iou, strict=True):
        p = 1.0 / (1.0 + math.exp(-xi))
        if pi:
            t = qi**gamma
            out.append(-t * math.log(p) - (1 - t) * math.log(1 - p))
        else:
            out.append(-alpha * p**gamma * math.log(1 - p))
    return out


@pytest.mark.parametrize(("alpha", "gamma"), [(1.0, 2.0), (0.75, 1.5), (0.25, 0.0)])
def test_values_match_loop_port(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, dtype=torch.float64, generator=g) * 3
    positive = torch.rand(64, generator=g, dtype=torch.float64) < 0.3
    iou = torch.rand(64, generator=g, dtype=torch.float64)
    iou[:4] = 0.0
    out = mal_loss(x, positive, iou, alpha, gamma, reduction="none")
    ref = torch.tensor(port(x.tolist(), positive.tolist(), iou.tolist(), alpha, gamma), dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    total = mal_loss(x, positive, iou, alpha, gamma, reduction="sum")
    assert total.item() == pytest.approx(sum(ref.tolist()), rel=1e-12)


def test_gradient_is_p_minus_target_with_the_weight_detached():
    # positives: d/dx BCE(σ(x), IoU^γ) = p − IoU^γ; negatives: α·p^γ (detached)·p
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    positive = torch.tensor([True, False, False])
    iou = torch.tensor([0.6, 0.9, 0.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(mal_loss(x, positive, iou, 0.5, 2.0, reduction="sum"), x)
    p = torch.sigmoid(x.detach()).tolist()
    want = [p[0] - 0.36] + [0.5 * q * q * q for q in p[1:]]
    torch.testing.assert_close(grad, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_gradcheck_at_positives():
    # at the positives both the target and the weight are constant in x: plain BCE, finite differences
    # agree; the negatives' weight is detached by design (the test above checks their gradient)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    positive = torch.ones(6, 5, dtype=torch.bool)
    iou = torch.rand(6, 1, dtype=torch.float64, generator=g)  # broadcast
    assert torch.autograd.gradcheck(lambda v: mal_loss(v, positive, iou, reduction="none"), (x,))


def test_saturated_logits_and_half_precision_are_finite():
    x = torch.tensor([-80.0, 80.0, -80.0, 80.0], requires_grad=True)
    positive = torch.tensor([True, True, False, False])
    iou = torch.tensor([1.0, 0.0, 0.0, 0.0])
    out = mal_loss(x, positive, iou, reduction="sum")
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    h = torch.randn(4, 3, dtype=torch.float16)
    pos, q = torch.rand(4, 3) < 0.5, torch.rand(4, 3)
    half = mal_loss(h, pos, q)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, mal_loss(h.float(), pos, q))


def test_bad_input_is_named():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="iou"):
        mal_loss(x, torch.ones(3, dtype=torch.bool), torch.tensor([0.5, 1.5, 0.2]))
    with pytest.raises(ValueError, match="logits"):
        mal_loss(torch.tensor([0.0, float("nan"), 1.0]), torch.ones(3, dtype=torch.bool), torch.ones(3))
    with pytest.raises(ValueError, match="alpha"):
        mal_loss(x, torch.ones(3, dtype=torch.bool), torch.ones(3), alpha=2.0)
