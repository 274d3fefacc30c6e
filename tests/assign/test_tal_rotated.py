"""The rotated task-aligned assigner's grid: probiou_grid equals probiou bit for bit, and the
assignment does not depend on the block size (the blocks are an execution detail)."""

from __future__ import annotations

import math

import pytest
import torch

import detloss.assign.tal as tal
from detloss.assign import task_aligned_assign
from detloss.kernels.rotated import probiou, probiou_grid, probiou_sides, split_sides


def _boxes(g, b, n, dtype, scale=500.0):
    out = torch.rand(b, n, 5, generator=g, dtype=torch.float64) * torch.tensor(
        [scale, scale, scale / 5, scale / 5, 2 * math.pi], dtype=torch.float64
    )
    out[..., 4] -= math.pi
    return out.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("floor", [0.0, 0.01])
def test_probiou_grid_is_probiou_bit_for_bit(dtype, floor):
    g = torch.Generator().manual_seed(0)
    gt, pred = _boxes(g, 2, 9, dtype), _boxes(g, 2, 700, dtype)
    gt[0, 0, 3] = 0.0  # a zero side
    pred[0, 3, 2:4] = 0.0  # a point
    gt[1, 1] = pred[1, 5]  # identical boxes
    gt[1, 2, :2] = 1e5  # far from every prediction: B clamped, exp(−B) not subnormal
    want = probiou(gt.unsqueeze(2), pred.unsqueeze(1), 1e-7, floor)
    with torch.no_grad():
        second = probiou_sides(pred.unsqueeze(1), floor)
        parts = split_sides(probiou_sides(gt.unsqueeze(2), floor), 4, 1)
        got = torch.cat([probiou_grid(first, second, 1e-7) for first in parts], 1)
    assert torch.equal(got, want)


def test_probiou_grid_under_autograd_is_probiou():
    g = torch.Generator().manual_seed(1)
    gt, pred = _boxes(g, 1, 3, torch.float64), _boxes(g, 1, 5, torch.float64).requires_grad_()
    got = probiou_grid(probiou_sides(gt.unsqueeze(2)), probiou_sides(pred.unsqueeze(1)))
    assert got.requires_grad
    assert torch.equal(got, probiou(gt.unsqueeze(2), pred.unsqueeze(1)))


def test_rotated_assignment_does_not_depend_on_the_block(monkeypatch):
    g = torch.Generator().manual_seed(2)
    b, m, c, side = 2, 40, 4, 16
    pts = torch.stack(torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="xy"), -1)
    points = (pts.reshape(-1, 2) * 8).double()  # (A, 2) pixels
    a = points.shape[0]
    pred = torch.cat((points.expand(b, -1, -1) + torch.randn(b, a, 2, generator=g, dtype=torch.float64),
                      4 + 40 * torch.rand(b, a, 2, generator=g, dtype=torch.float64),
                      torch.rand(b, a, 1, generator=g, dtype=torch.float64) * math.pi), -1)
    gt = _boxes(g, b, m, torch.float64, scale=128.0)
    gt[..., 2:4] += 2.0
    labels = torch.randint(0, c, (b, m), generator=g)
    mask = torch.rand(b, m, generator=g) < 0.8
    scores = torch.randn(b, a, c, generator=g, dtype=torch.float64)
    runs = []
    for budget in (1, 5 * b * a, 1 << 21):  # one box per block, five, all of them
        monkeypatch.setattr(tal, "ROTATED_CPU_BLOCK", budget)
        runs.append(task_aligned_assign(scores, pred, points, gt, labels, mask, rotated=True, logits=True,
                                        min_side=16.0))
    for other in runs[1:]:
        for key in ("foreground", "gt_index", "labels", "boxes", "scores"):
            assert torch.equal(getattr(runs[0], key), getattr(other, key)), key
    assert bool(runs[0].foreground.any())
