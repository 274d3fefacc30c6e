"""The rotated task-aligned assigner's grid: probiou_grid equals the matrix form of ProbIoU and
probiou, is finite on slivers, and the assignment does not depend on the block size (the blocks are
an execution detail)."""

from __future__ import annotations

import math

import pytest
import torch

import detloss.assign.tal as tal
from detloss.assign import task_aligned_assign
from detloss.kernels.rotated import gaussians, probiou, probiou_grid
from tests.reference.yolov8_obb import naive_probiou


def _boxes(g, b, n, dtype, scale=500.0):
    out = torch.rand(b, n, 5, generator=g, dtype=torch.float64) * torch.tensor(
        [scale, scale, scale / 5, scale / 5, 2 * math.pi], dtype=torch.float64
    )
    out[..., 4] -= math.pi
    return out.to(dtype)


@pytest.mark.parametrize("floor", [0.0, 0.01])
def test_probiou_grid_is_the_matrix_form_and_probiou(floor):
    g = torch.Generator().manual_seed(0)
    gt, pred = _boxes(g, 2, 9, torch.float64), _boxes(g, 2, 700, torch.float64)
    gt[0, 0, 3] = 0.0  # a zero side
    pred[0, 3, 2:4] = 0.0  # a point
    gt[1, 1] = pred[1, 5]  # identical boxes
    gt[1, 2, :2] = 1e5  # far from every prediction: B clamped
    got = probiou_grid(gaussians(gt.unsqueeze(2), floor), gaussians(pred.unsqueeze(1), floor), 1e-7)
    assert not got.requires_grad
    # the matrix form of Llerena et al., written independently in the tests
    want = naive_probiou(gt.unsqueeze(2), pred.unsqueeze(1), floor)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    frame_relative = probiou(gt.unsqueeze(2), pred.unsqueeze(1), 1e-7, floor)
    torch.testing.assert_close(got, frame_relative, rtol=1e-12, atol=1e-13)
    assert got[1, 1, 5] > 0.999


def test_probiou_grid_float32_is_finite_on_slivers():
    """Two nearly parallel zero-height slivers: D = A·B − C² is rounding noise, some of it below 0;
    the grid clamps it (no NaN) where the unclamped matrix form takes the log of a negative number."""
    t = torch.linspace(0.0, math.pi, 181, dtype=torch.float64)
    gt = torch.tensor([[300.0, 200.0, 250.0, 0.0, 0.3]], dtype=torch.float64).expand(181, 5).clone()
    pred = torch.stack((torch.full_like(t, 300.2), torch.full_like(t, 200.1), torch.full_like(t, 240.0),
                        torch.zeros_like(t), 0.3 + 1e-6 * t), -1)
    got = probiou_grid(gaussians(gt.float()), gaussians(pred.float()))
    assert naive_probiou(gt.float(), pred.float()).isnan().any()
    assert torch.isfinite(got).all()
    assert ((got >= -1e-6) & (got <= 1.0)).all()


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
    # one box per block, five, all of them; the contests settled in the blocks or after them
    for budget, ratio in ((1, 0), (1, 10**9), (5 * b * a, 0), (5 * b * a, 10**9), (1 << 21, 0)):
        monkeypatch.setattr(tal, "ROTATED_CPU_BLOCK", budget)
        monkeypatch.setattr(tal, "LATER_RATIO", ratio)
        runs.append(task_aligned_assign(scores, pred, points, gt, labels, mask, rotated=True, logits=True,
                                        min_side=16.0))
    for other in runs[1:]:
        for key in ("foreground", "gt_index", "labels", "boxes", "scores"):
            assert torch.equal(getattr(runs[0], key), getattr(other, key)), key
    assert bool(runs[0].foreground.any())
