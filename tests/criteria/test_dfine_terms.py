"""FGL and DDF building blocks against the loop port of tests/reference/dfine.py (float64)."""

from __future__ import annotations

import pytest
import torch

from detloss.criteria.dfine import ddf_loss, dfine_bin_values, fgl_loss
from tests.reference import dfine as ref

N = 32


def test_bin_values_shape_and_symmetry():
    w = dfine_bin_values(N, 0.5, 4.0)
    assert w.dtype == torch.float32 and w.shape == (N + 1,)
    assert w[0] == -4.0 and w[-1] == 4.0 and w[N // 2] == 0
    assert torch.equal(w, -w.flip(0))
    assert (w.diff() > 0).all()
    want = torch.tensor(ref.bin_values(N, 0.5, 4.0), dtype=torch.float64)
    torch.testing.assert_close(w.double(), want, rtol=1e-6, atol=1e-7)


def test_bin_values_float32_for_a_float64_up():
    assert dfine_bin_values(N, torch.tensor([0.5], dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(ValueError):
        dfine_bin_values(7)


def _boxes(g, n, spread=0.3):
    c = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * spread + 0.02
    return torch.cat((c, wh), 1)


@pytest.mark.parametrize("spread", [0.3, 0.9])  # 0.9: many sides beyond W(0) or W(N)
def test_fgl_matches_loop_port(spread):
    g = torch.Generator().manual_seed(1)
    n = 40
    corners = torch.randn(n, 4 * (N + 1), generator=g, dtype=torch.float64) * 2
    refb, tgt = _boxes(g, n, spread), _boxes(g, n, spread)
    iou = torch.rand(n, generator=g, dtype=torch.float64)
    got = fgl_loss(corners, refb, tgt, iou, up=0.5, reg_scale=4.0)
    want = [
        ref.fgl_box(corners[i].tolist(), refb[i].tolist(), tgt[i].tolist(), float(iou[i])) for i in range(n)
    ]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_fgl_weight_rounded_to_float32_and_detached():
    g = torch.Generator().manual_seed(2)
    corners = torch.randn(3, 4 * (N + 1), generator=g, dtype=torch.float64)
    refb, tgt = _boxes(g, 3), _boxes(g, 3)
    iou = torch.tensor([0.1, 1 / 3, 0.7], dtype=torch.float64, requires_grad=True)
    out = fgl_loss(corners, refb, tgt, iou)
    one = fgl_loss(corners, refb, tgt, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(out, one * iou.detach().float().double(), rtol=0, atol=0)
    assert not out.requires_grad


def test_fgl_gradcheck():
    g = torch.Generator().manual_seed(3)
    corners = torch.randn(5, 4 * (N + 1), generator=g, dtype=torch.float64, requires_grad=True)
    refb, tgt = _boxes(g, 5), _boxes(g, 5)
    iou = torch.rand(5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c: fgl_loss(c, refb, tgt, iou), (corners,))


def _ddf_inputs(g, batch=3, q=6):
    corners = torch.randn(batch, q, 4 * (N + 1), generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(batch, q, 4 * (N + 1), generator=g, dtype=torch.float64) * 3
    weight = torch.rand(batch, q, generator=g, dtype=torch.float64)
    matched = torch.rand(batch, q, generator=g) < 0.3
    return corners, teacher, weight, matched


@pytest.mark.parametrize("case", ["mixed", "none_matched", "all_matched"])
def test_ddf_matches_loop_port(case):
    g = torch.Generator().manual_seed(4)
    corners, teacher, weight, matched = _ddf_inputs(g)
    if case != "mixed":
        matched = torch.full_like(matched, case == "all_matched")
    got = ddf_loss(corners, teacher, weight, matched, reduction="none")
    total, shares = ref.ddf(corners.tolist(), teacher.tolist(), weight.tolist(), matched.tolist())
    torch.testing.assert_close(got, torch.tensor(shares, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ddf_loss(corners, teacher, weight, matched), torch.tensor(total).double())


def test_ddf_stacked_entries_are_independent():
    g = torch.Generator().manual_seed(5)
    a, b = _ddf_inputs(g), _ddf_inputs(g)
    both = ddf_loss(*(torch.stack((x, y)) for x, y in zip(a, b, strict=True)))
    torch.testing.assert_close(both, torch.stack((ddf_loss(*a), ddf_loss(*b))), rtol=1e-12, atol=0)


def test_ddf_equal_to_teacher_is_zero():
    g = torch.Generator().manual_seed(6)
    corners, _, weight, matched = _ddf_inputs(g)
    corners.requires_grad_(True)
    out = ddf_loss(corners, corners, weight, matched)
    assert out.item() == 0.0
    (grad,) = torch.autograd.grad(out, corners)
    assert grad.abs().max() < 1e-15  # zero up to log-softmax's rounding


def test_ddf_gradcheck_and_teacher_detached():
    g = torch.Generator().manual_seed(7)
    corners, teacher, weight, matched = _ddf_inputs(g, 2, 3)
    corners.requires_grad_(True)
    teacher.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: ddf_loss(c, teacher, weight, matched), (corners,))
    (gt,) = torch.autograd.grad(ddf_loss(corners, teacher, weight, matched), teacher, allow_unused=True)
    assert gt is None
