"""The task-aligned assigner's pairwise CIoU: the kernel's formula, finite at every eps."""

from __future__ import annotations

import torch

import detloss
from detloss.assign import tal
from detloss.kernels.geometry import corners


def random_boxes(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    xy = torch.rand(*shape, 2, generator=gen, dtype=dtype) * 50
    wh = torch.rand(*shape, 2, generator=gen, dtype=dtype) * 20 + 0.5
    return torch.cat((xy, xy + wh), -1)


def test_pairwise_ciou_is_box_iou_ciou():
    gen = torch.Generator().manual_seed(0)
    pred = random_boxes((3, 50), gen, torch.float64)  # (B, A, 4)
    gt = random_boxes((3, 7), gen, torch.float64)  # (B, M, 4)
    gt[0, 0] = pred[0, 3]  # one exact match, one nested box: CIoU 1 and a positive value
    gt[1, 0] = pred[1, 3] + torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    got = tal._pairwise_ciou(corners(pred.unsqueeze(1), 4), corners(gt.unsqueeze(2), 4), 1e-7)  # (B, M, A)
    assert got.shape == (3, 7, 50)
    for b in range(3):
        expected = detloss.box_iou(pred[b], gt[b], "ciou", eps=1e-7).clamp(min=0).T  # (M, A)
        torch.testing.assert_close(got[b], expected, rtol=1e-12, atol=1e-14)
    assert abs(got[0, 0, 3] - 1.0) < 1e-8 and got[1, 0, 3] > 0.0  # I / (I + eps)


def test_pairwise_ciou_of_identical_boxes_is_one_with_a_tiny_eps():
    """1 + eps rounds to 1 in float32 for eps < 6e-8: α_v = v / (v − iou + (1 + eps)) was 0/0."""
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [10.0, 20.0, 50.0, 30.0], [3.0, 3.0, 3.5, 9.0]]])
    got = tal._pairwise_ciou(corners(boxes.unsqueeze(1), 4), corners(boxes.unsqueeze(2), 4), 1e-9)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.diagonal(dim1=1, dim2=2), torch.ones(1, 3), rtol=0, atol=0)


def test_assigner_with_a_tiny_eps_scores_a_perfect_prediction_one():
    """Through the whole assigner (float32, iou_eps = 1e-9): the anchor whose prediction equals its
    box gets u = 1 and the score t·1/(t + eps) of the best anchor, ~1; nothing is NaN."""
    gt = torch.tensor([[[2.0, 2.0, 6.0, 6.0]]])  # (1, 1, 4)
    points = torch.tensor([[3.0, 3.0], [4.0, 4.0], [5.0, 5.0], [9.0, 9.0]])  # the last one outside
    pred = torch.tensor([[[1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 6.0, 6.0], [3.0, 2.0, 7.0, 6.0], [0, 0, 1, 1]]])
    scores = torch.full((1, 4, 2), 0.5)
    out = tal.task_aligned_assign(
        scores, pred, points, gt, torch.tensor([[1]]), torch.tensor([[True]]), topk=4, iou_eps=1e-9
    )
    assert torch.isfinite(out.scores).all()
    assert out.foreground.tolist() == [[True, True, True, False]]
    torch.testing.assert_close(out.scores[0, 1], torch.tensor(1.0), rtol=0, atol=1e-6)
