"""YOLOv8OBBLoss against a naive per-image, per-box loop port (tests/reference/yolov8_obb.py, written
from the documented behaviour of ultralytics 8.4.190's v8OBBLoss), hand facts, and the one-graph
rules (no host sync, both layouts, per-image shares)."""

from __future__ import annotations

import math

import pytest
import torch

import detloss.assign.tal as tal
from detloss.assign import pad_targets, task_aligned_assign
from detloss.criteria import YOLOv8OBBLoss
from detloss.profiling import DispatchCounter
from tests.reference.yolov8_obb import naive_inside, naive_obb_loss, naive_probiou

D = torch.float64


def make_case(
    b=2, size=64, nc=3, n=4, reg_max=8, strides=(8, 16, 32), seed=0, lo=3.0, hi=40.0, empty=(), tiny=0
):
    g = torch.Generator().manual_seed(seed)
    preds = []
    for s in strides:
        h = size // s
        box = torch.randn(b, 4 * reg_max, h, h, generator=g, dtype=D)
        if reg_max == 1:
            box = 0.2 + 4 * torch.rand(b, 4, h, h, generator=g, dtype=D)
        cls = torch.randn(b, nc, h, h, generator=g, dtype=D)
        angle = (torch.randn(b, 1, h, h, generator=g, dtype=D).sigmoid() - 0.25) * math.pi
        preds.append(torch.cat((box, cls, angle), 1).requires_grad_())
    targets = []
    for i in range(b):
        k = 0 if i in empty else n
        wh = lo + (hi - lo) * torch.rand(k, 2, generator=g, dtype=D)
        if k and tiny:
            wh[:tiny, 1] = 0.3 + torch.rand(tiny, generator=g, dtype=D)  # below 2 px
        xy = torch.rand(k, 2, generator=g, dtype=D) * size
        theta = (torch.rand(k, 1, generator=g, dtype=D) - 0.25) * math.pi
        targets.append(
            {"boxes": torch.cat((xy, wh, theta), 1), "labels": torch.randint(0, nc, (k,), generator=g)}
        )
    return preds, targets


def _check_against_naive(preds, targets, nc, strides, reg_max, **kw):
    crit = YOLOv8OBBLoss(nc, strides, reg_max, **kw)
    out = crit(preds, targets)
    total, parts = naive_obb_loss(preds, targets, nc, strides, reg_max, **kw)
    assert set(out.components) == set(parts)
    for key, value in parts.items():
        torch.testing.assert_close(
            out.components[key], torch.as_tensor(value, dtype=D), rtol=1e-9, atol=1e-12
        )
    g_ours = torch.autograd.grad(out.total, preds)
    g_ref = torch.autograd.grad(total, preds)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_port(seed):
    preds, targets = make_case(seed=seed, n=5, tiny=1)
    out = _check_against_naive(preds, targets, 3, (8, 16, 32), 8)
    assert float(out.components["angle"]) > 0 and float(out.components["box"]) > 0


@pytest.mark.parametrize("blocks", ["one", "box per block", "box per block, settled later"])
def test_matches_naive_port_dense_and_empty_image(blocks, monkeypatch):
    """Dense overlapping boxes (anchors selected by several boxes); with one box per block of the
    assigner, the contests are settled across blocks: in the blocks (a running best box), or after
    them (the first block reaching the best u, its best box found at the selected anchors)."""
    if blocks != "one":
        monkeypatch.setattr(tal, "ROTATED_CPU_BLOCK", 1)
        monkeypatch.setattr(tal, "PAIR_BLOCK", 1)
        monkeypatch.setattr(tal, "LATER_RATIO", 0 if blocks.endswith("later") else 10**9)
    preds, targets = make_case(b=3, n=12, nc=2, lo=2.5, hi=24.0, seed=3, empty=(1,))
    _check_against_naive(preds, targets, 2, (8, 16, 32), 8)


def test_matches_naive_port_reg_max_1_and_options():
    preds, targets = make_case(reg_max=1, n=4, seed=4)
    _check_against_naive(preds, targets, 3, (8, 16, 32), 1, topk=5, min_side=0.0, min_size=5.0)


def test_naive_probiou_agrees_with_the_kernel():
    # the reference's ProbIoU (matrix form) against the kernel's (frame-relative): independent forms
    from detloss.kernels.rotated import probiou

    g = torch.Generator().manual_seed(0)
    b1 = torch.cat(
        (
            torch.rand(50, 2, generator=g, dtype=D) * 20,
            torch.rand(50, 2, generator=g, dtype=D) * 9 + 1,
            torch.rand(50, 1, generator=g, dtype=D) * 3,
        ),
        1,
    )
    b2 = b1 + torch.randn(50, 5, generator=g, dtype=D) * 0.5
    for floor in (0.0, 0.01):
        torch.testing.assert_close(probiou(b1, b2, floor=floor), naive_probiou(b1, b2, floor=floor))


def test_rotated_assigner_candidates_inclusive_and_rotated():
    # a 20×4 box at 90°: a point 9.5 px above the centre is inside, 9.5 px to the right is not
    pts = torch.tensor([[50.0, 59.5], [59.5, 50.0], [50.0, 60.0], [50.0, 60.5]], dtype=D)
    box = torch.tensor([50.0, 50.0, 20.0, 4.0, math.pi / 2], dtype=D)
    expect = naive_inside(pts, box, 0.0)
    assert expect.tolist() == [True, False, True, False]  # the edge point (10 px) counts: inclusive
    scores = torch.full((1, 4, 1), 0.5, dtype=D)
    pred = torch.cat((pts, torch.tensor([[20.0, 4.0, math.pi / 2]], dtype=D).expand(4, 3)), 1)[None]
    a = task_aligned_assign(
        scores,
        pred,
        pts,
        box[None, None],
        torch.zeros(1, 1, dtype=torch.int64),
        torch.ones(1, 1, dtype=torch.bool),
        rotated=True,
    )
    assert a.foreground[0].tolist() == [True, False, True, False]
    assert a.boxes.shape == (1, 4, 5)


def test_tiny_targets_are_dropped():
    preds, targets = make_case(n=3, seed=5)
    tiny = [
        {
            "boxes": torch.cat((t["boxes"], torch.tensor([[30.0, 30.0, 40.0, 1.5, 0.2]], dtype=D))),
            "labels": torch.cat((t["labels"], torch.tensor([1]))),
        }
        for t in targets
    ]
    crit = YOLOv8OBBLoss(3, reg_max=8)
    a, b = crit(preds, targets), crit(preds, tiny)
    torch.testing.assert_close(a.total, b.total, rtol=0, atol=0)
    assert float(YOLOv8OBBLoss(3, reg_max=8, min_size=0.0)(preds, tiny).total) != float(a.total)


def test_both_layouts_and_per_image():
    preds, targets = make_case(n=4, seed=6, empty=(1,))
    crit = YOLOv8OBBLoss(3, reg_max=8)
    out = crit(preds, targets)
    r4, nc = 32, 3
    mapping = {
        "boxes": torch.cat([p[:, :r4].flatten(2) for p in preds], 2),
        "scores": torch.cat([p[:, r4 : r4 + nc].flatten(2) for p in preds], 2),
        "angle": torch.cat([p[:, r4 + nc :].flatten(2) for p in preds], 2),
        "feats": preds,
    }
    out2 = crit(mapping, targets)
    torch.testing.assert_close(out.total, out2.total, rtol=1e-13, atol=0)
    grads = torch.autograd.grad(out.total, preds, retain_graph=True)
    for a, b in zip(grads, torch.autograd.grad(out2.total, preds), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.per_image.sum(), out.total)
    g1 = torch.autograd.grad(out.per_image[1], preds)  # image 1 has no box: only its class terms
    assert all(float(g[0].abs().max()) == 0.0 for g in g1)


def test_batch_without_boxes():
    preds, _ = make_case(n=0)
    targets = [{"boxes": torch.zeros(0, 5, dtype=D), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    out = YOLOv8OBBLoss(3, reg_max=8)(preds, targets)
    assert float(out.components["box"]) == 0 and float(out.components["angle"]) == 0
    assert float(out.components["cls"]) > 0


def test_no_host_sync():
    preds, targets = make_case(n=5, seed=7, tiny=1)
    padded = pad_targets(targets, 3, fmt="xywhr", dtype=D, validate=False)
    crit = YOLOv8OBBLoss(3, reg_max=8, validate=False)
    with DispatchCounter() as c:
        out = crit(preds, padded)
        torch.autograd.grad(out.total, preds)
    assert c.syncs == 0, c.sync_ops


def test_errors():
    preds, targets = make_case()
    crit = YOLOv8OBBLoss(3, reg_max=8)
    with pytest.raises(ValueError, match="4\\*8\\+3\\+1"):
        crit([p[:, :-1] for p in preds], targets)
    bad = [{"boxes": t["boxes"][:, :4], "labels": t["labels"]} for t in targets]
    with pytest.raises(ValueError, match="5"):
        crit(preds, bad)
    with pytest.raises(ValueError, match="angle"):
        crit({"boxes": preds[0], "scores": preds[0], "feats": preds}, targets)
    with pytest.raises(ValueError):
        YOLOv8OBBLoss(3, min_size=-1.0)


@pytest.mark.slow  # cold compile (over a minute on two cores)
def test_compile_fullgraph_matches_eager():
    """One graph: ``torch.compile(fullgraph=True)`` traces the whole criterion (no break, which would
    raise) and gives eager's components and gradients; a tiny box and an empty image included."""
    preds, targets = make_case(b=3, size=64, n=5, reg_max=16, seed=3, tiny=1, empty=(2,))
    preds = [p.detach().float().requires_grad_() for p in preds]
    targets = [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in targets]
    padded = pad_targets(targets, 3, validate=False, fmt="xywhr")
    crit = YOLOv8OBBLoss(3, reg_max=16, validate=False)
    eager = crit(preds, padded)
    g_eager = torch.autograd.grad(eager.total, preds)
    out = torch.compile(crit, fullgraph=True)(preds, padded)
    assert set(out.components) == {"box", "cls", "dfl", "angle"}
    for key in eager.components:
        torch.testing.assert_close(out.components[key], eager.components[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.per_image, eager.per_image, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(out.total, preds), g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
