"""The end-to-end YOLO loss (YOLOv10, YOLO26) and what YOLOv8Loss gained for it (``topk2``,
``reg_max = 1``, ultralytics' head mapping), against the loop port of tests/reference/yolov8.py
(which follows ultralytics 8.4.190's utils/loss.py ``E2ELoss`` and utils/tal.py ``tal_topk2``), the
schedule computed by hand, and the one-graph rules."""

from __future__ import annotations

import pytest
import torch

from detloss.assign import pad_targets, task_aligned_assign
from detloss.criteria import EndToEndLoss, YOLOv8Loss, yolo26_loss, yolov10_loss
from detloss.profiling import DispatchCounter
from tests.helpers import random_image_targets
from tests.reference.yolov8 import naive_loss

D = torch.float64
STRIDES = (8, 16, 32)


def make_case(b=2, size=64, nc=3, n=4, reg_max=1, seed=0, lo=3.0, hi=40.0, empty=(), dtype=D):
    """Per-stride heads and list targets. With reg_max = 1 the box channels are distances of
    0.3 … 3.3 cells (positive: an inverted predicted box has no agreed IoU)."""
    g = torch.Generator().manual_seed(seed)
    preds = []
    for s in STRIDES:
        p = torch.randn(b, 4 * reg_max + nc, size // s, size // s, generator=g, dtype=D)
        if reg_max == 1:
            p[:, :4] = 0.3 + 3 * torch.rand(b, 4, size // s, size // s, generator=g, dtype=D)
        preds.append(p.to(dtype).requires_grad_())
    return preds, random_image_targets(g, b, n, size, nc, lo, hi, empty, dtype)


def as_mapping(preds, reg_max, nc):
    """The same heads as ultralytics' head hands them: boxes and scores over all levels, and feats."""
    flat = torch.cat([p.flatten(2) for p in preds], 2)
    return {"boxes": flat[:, : 4 * reg_max], "scores": flat[:, 4 * reg_max :], "feats": list(preds)}


def _against_naive(preds, targets, reg_max, nc=3, **kw):
    gains = (kw.pop("box", 7.5), kw.pop("cls", 0.5), kw.pop("reg", 1.5))
    reg = "l1" if reg_max == 1 else "dfl"
    crit = YOLOv8Loss(nc, STRIDES, reg_max, box=gains[0], cls=gains[1], **{reg: gains[2]}, **kw)
    out = crit(preds, targets)
    total, parts = naive_loss(preds, targets, nc, STRIDES, reg_max, gains=gains, **kw)
    assert set(out.components) == {"box", "cls", reg}
    for key, value in parts.items():
        torch.testing.assert_close(
            out.components[key], torch.as_tensor(value, dtype=D), rtol=1e-9, atol=1e-12
        )
    for a, b in zip(torch.autograd.grad(out.total, preds), torch.autograd.grad(total, preds), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# YOLOv8Loss: topk2, reg_max = 1, both layouts
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_reg_max_1_matches_naive_port(seed):
    preds, targets = make_case(seed=seed)
    _against_naive(preds, targets, 1)


@pytest.mark.parametrize("reg_max", [1, 8])
@pytest.mark.parametrize("topk2", [1, 2])
def test_topk2_matches_naive_port(reg_max, topk2):
    preds, targets = make_case(reg_max=reg_max, n=12, lo=6, hi=30, seed=3 + topk2)
    _against_naive(preds, targets, reg_max, topk=7, topk2=topk2)


def test_topk2_dense_scene_options_and_empty_image():
    preds, targets = make_case(b=3, n=20, lo=6, hi=30, seed=8, empty=(1,))
    _against_naive(preds, targets, 1, topk=5, topk2=1, alpha=1.0, beta=4.0, box=1.0, cls=2.0, reg=0.25)


def test_topk2_keeps_one_positive_per_box_and_renormalises():
    """With topk2 = 1 every box has at most one positive, the anchor of largest alignment among its
    positives without topk2, and its score is that anchor's IoU-based maximum: the best anchor's score
    u_max·t/(t + 1e-9)."""
    preds, targets = make_case(b=2, n=6, seed=2, reg_max=8)
    crit = YOLOv8Loss(3, reg_max=8, topk=7)
    sizes = [tuple(p.shape[2:]) for p in preds]
    heads = crit.read_heads(preds, 2)
    pts, st, pts_px, _ = crit.anchor_tables(sizes, D, torch.device("cpu"))
    padded = pad_targets(targets, 3, dtype=D)
    with torch.no_grad():
        boxes = torch.cat(
            [crit._decode(r, pts[s : s + r.shape[-1]], channels_first=True) for s, r in heads.box], 1
        )
    args = (heads.cls, boxes * st, pts_px, padded.boxes, padded.labels, padded.mask)
    kw = dict(topk=7, min_side=16.0, logits=True, grid_sizes=sizes)
    many, one = task_aligned_assign(*args, **kw), task_aligned_assign(*args, topk2=1, **kw)
    same = task_aligned_assign(*args, topk2=7, **kw)  # topk2 == topk: no effect, as the original
    assert torch.equal(same.foreground, many.foreground) and torch.equal(same.scores, many.scores)
    for b in range(2):
        for m in range(6):
            mine = many.foreground[b] & (many.gt_index[b] == m)
            kept = one.foreground[b] & (one.gt_index[b] == m)
            assert int(kept.sum()) == min(1, int(mine.sum()))
            if mine.any():  # the kept anchor is the positive of largest unnormalised alignment
                a = int(kept.nonzero()[0, 0])
                # many.scores = t·u_max/(t_max + eps): the order of t among a box's positives
                assert many.scores[b, a] == many.scores[b][mine].max()
    assert (one.foreground <= many.foreground).all()


@pytest.mark.parametrize("reg_max", [1, 8])
def test_head_mapping_equals_per_stride_heads(reg_max):
    preds, targets = make_case(reg_max=reg_max, n=6, seed=4, empty=(1,))
    crit = YOLOv8Loss(3, reg_max=reg_max, topk=7, topk2=1 if reg_max == 1 else None)
    ref = crit(preds, targets)
    g_ref = torch.autograd.grad(ref.total, preds)
    leaves = [p.detach().clone().requires_grad_() for p in preds]
    mapping = as_mapping(leaves, reg_max, 3)
    out = crit(mapping, targets)
    for key in ref.components:
        torch.testing.assert_close(out.components[key], ref.components[key], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.per_image, ref.per_image, rtol=1e-12, atol=1e-14)
    for a, b in zip(torch.autograd.grad(out.total, leaves), g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_head_mapping_errors():
    preds, targets = make_case(n=2)
    crit = YOLOv8Loss(3, reg_max=1)
    good = as_mapping(preds, 1, 3)
    with pytest.raises(ValueError, match="missing \\['feats'\\]"):
        crit({"boxes": good["boxes"], "scores": good["scores"]}, targets)
    with pytest.raises(ValueError, match="preds\\['scores'\\] must have shape \\(B, 3, A=84\\)"):
        crit({**good, "scores": good["scores"][:, :2]}, targets)
    with pytest.raises(ValueError, match="preds\\['boxes'\\] must have shape"):
        crit({**good, "boxes": good["boxes"][..., :-1]}, targets)
    with pytest.raises(ValueError, match="2 levels"):
        crit({**good, "feats": good["feats"][:2]}, targets)
    with pytest.raises(ValueError, match="batch size"):
        crit(good, targets[:1])


def test_reg_max_1_hand_case():
    """One 16×16 image, stride 8, one class, one box = the cell of anchor (4, 4), all logits 0 except
    the distances of that anchor, (1, 1, 1, 1) cells: the predicted box is [−4, −4, 12, 12] px against
    [0, 0, 8, 8]. l1 = 1.5 · ŝ · mean(4 px / 16 px) / max(ŝ, 1) with ŝ = t·u/(t + 1e-9),
    t = σ(0)^0.5·u^6, u = CIoU = 64/256 − 0 − α·0 (concentric squares)."""
    preds = torch.zeros(1, 5, 2, 2, dtype=D)
    preds[0, :4, 0, 0] = 1.0
    preds = [preds.requires_grad_()]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]], dtype=D), "labels": torch.tensor([0])}]
    out = YOLOv8Loss(1, strides=(8,), reg_max=1, min_side=0.0)(preds, targets)
    u = 64 / (256 + 1e-7)
    t = 0.5**0.5 * u**6
    score = t * u / (t + 1e-9)
    torch.testing.assert_close(out.components["l1"], torch.tensor(1.5 * score * 0.25, dtype=D))
    torch.testing.assert_close(out.components["box"], torch.tensor(7.5 * score * (1 - u), dtype=D))


# ----------------------------------------------------------------------------------------------
# EndToEndLoss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epochs", "epoch", "w_m", "w_o"),
    [
        (100, 0, 0.8, 0.2),
        (100, 99, 0.1, 0.9),
        (100, 33, 0.1 + 0.7 * (1 - 33 / 99), 0.9 - 0.7 * (1 - 33 / 99)),
        (100, 49.5, 0.45, 0.55),
        (100, 150, 0.1, 0.9),
        (1, 0, 0.8, 0.2),
        (2, 1, 0.1, 0.9),
    ],
)
def test_schedule_at_hand_computed_epochs(epochs, epoch, w_m, w_o):
    crit = yolo26_loss(3, epochs=epochs)
    assert crit.weights(epoch) == pytest.approx((w_m, w_o), abs=1e-15)
    got = crit.weights(torch.tensor(epoch, dtype=D))
    torch.testing.assert_close(torch.stack(got), torch.tensor([w_m, w_o], dtype=D), rtol=0, atol=1e-15)


@pytest.mark.parametrize("reg_max", [1, 16])
@pytest.mark.parametrize("epoch", [0, 40, 99])
def test_matches_weighted_naive_branches(reg_max, epoch):
    preds_m, targets = make_case(reg_max=reg_max, n=8, lo=5, hi=40, seed=epoch + reg_max)
    preds_o, _ = make_case(reg_max=reg_max, n=8, seed=epoch + reg_max + 100)
    crit = (yolo26_loss if reg_max == 1 else yolov10_loss)(3)
    out = crit({"one2many": preds_m, "one2one": preds_o}, targets, epoch=epoch)
    tot_m, parts_m = naive_loss(preds_m, targets, 3, STRIDES, reg_max, topk=10)
    tot_o, parts_o = naive_loss(preds_o, targets, 3, STRIDES, reg_max, topk=7, topk2=1)
    w_m = 0.1 + 0.7 * max(1 - epoch / 99, 0)
    w_o = 1 - w_m
    for key in parts_m:
        want = torch.as_tensor(w_m * parts_m[key] + w_o * parts_o[key], dtype=D)
        torch.testing.assert_close(out.components[key], want, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(
            out.branches["one2one"].components[key], torch.as_tensor(parts_o[key], dtype=D), rtol=1e-9, atol=0
        )
    total = w_m * tot_m + w_o * tot_o
    torch.testing.assert_close(out.total, total, rtol=1e-9, atol=0)
    torch.testing.assert_close(out.per_image.sum(), out.total, rtol=1e-12, atol=0)
    leaves = preds_m + preds_o
    for a, b in zip(torch.autograd.grad(out.total, leaves), torch.autograd.grad(total, leaves), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_legacy_form_weights_one_and_one():
    preds_m, targets = make_case(reg_max=8, n=5, seed=21)
    preds_o, _ = make_case(reg_max=8, n=5, seed=22)
    one2many, one2one = YOLOv8Loss(3, reg_max=8), YOLOv8Loss(3, reg_max=8, topk=1)
    crit = EndToEndLoss(one2many, one2one, epochs=10, progressive=False)
    out = crit({"one2many": preds_m, "one2one": preds_o}, targets, epoch=3)
    m, o = one2many(preds_m, targets), one2one(preds_o, targets)
    torch.testing.assert_close(out.total, m.total + o.total, rtol=1e-14, atol=0)
    for key in m.components:
        torch.testing.assert_close(
            out.components[key], m.components[key] + o.components[key], rtol=1e-14, atol=0
        )
    torch.testing.assert_close(out.per_image, m.per_image + o.per_image, rtol=1e-14, atol=0)
    legacy = yolov10_loss(3, progressive=False)
    assert (legacy.one2one.topk, legacy.one2one.topk2, legacy.progressive) == (1, None, False)


def test_both_layouts_and_padded_targets_agree():
    preds_m, targets = make_case(n=5, seed=31, empty=(0,))
    preds_o, _ = make_case(n=5, seed=32)
    crit = yolo26_loss(3, epochs=20)
    ref = crit({"one2many": preds_m, "one2one": preds_o}, targets, epoch=4)
    mapping = {"one2many": as_mapping(preds_m, 1, 3), "one2one": as_mapping(preds_o, 1, 3)}
    out = crit(mapping, pad_targets(targets, 3, dtype=D), epoch=torch.tensor(4.0))
    torch.testing.assert_close(out.total, ref.total, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.per_image, ref.per_image, rtol=1e-12, atol=0)
    assert out.total.dtype == D


def _bench(validate):
    preds_m, targets = make_case(b=4, size=128, nc=5, n=6, seed=41, dtype=torch.float32)
    preds_o, _ = make_case(b=4, size=128, nc=5, n=6, seed=42, dtype=torch.float32)
    crit = yolo26_loss(5, epochs=50, validate=validate)
    return crit, {"one2many": preds_m, "one2one": preds_o}, targets, preds_m + preds_o


def test_no_host_sync_without_validation():
    crit, preds, targets, leaves = _bench(False)
    padded = pad_targets(targets, 5, validate=False)
    crit(preds, padded, epoch=0)  # warm-up: the anchor tables
    for epoch in (3, 3.5, torch.tensor(3.0)):
        with DispatchCounter() as c:
            torch.autograd.grad(crit(preds, padded, epoch=epoch).total, leaves)
        assert c.syncs == 0, c.sync_ops


def test_at_most_one_sync_with_validation():
    crit, preds, targets, leaves = _bench(True)
    crit(preds, targets, epoch=0)
    with DispatchCounter() as c:
        torch.autograd.grad(crit(preds, targets, epoch=torch.tensor(7)).total, leaves)
    assert c.syncs <= 1, c.sync_ops


def test_errors():
    preds, targets = make_case(n=2)
    crit = yolo26_loss(3)
    with pytest.raises(ValueError, match="'one2many' and 'one2one'"):
        crit({"one2many": preds}, targets, epoch=0)
    with pytest.raises(ValueError, match="epoch"):
        crit({"one2many": preds, "one2one": preds}, targets, epoch=-1)
    with pytest.raises(ValueError, match="grids"):
        small = [p[..., :1, :1] for p in preds]
        crit({"one2many": preds, "one2one": small}, targets, epoch=0)
    with pytest.raises(ValueError, match="strides"):
        EndToEndLoss(YOLOv8Loss(3), YOLOv8Loss(3, strides=(8, 16)))
    with pytest.raises(TypeError, match="one2one"):
        EndToEndLoss(YOLOv8Loss(3), torch.nn.Identity())
    with pytest.raises(ValueError, match="epochs"):
        yolo26_loss(3, epochs=0)


@pytest.mark.slow  # cold compile of both branches
def test_compile_fullgraph_matches_eager():
    crit, preds, targets, leaves = _bench(False)
    padded = pad_targets(targets, 5, validate=False)
    eager = crit(preds, padded, epoch=torch.tensor(5.0))
    g_eager = torch.autograd.grad(eager.total, leaves)
    out = torch.compile(crit, fullgraph=True)(preds, padded, epoch=torch.tensor(5.0))
    for key in eager.components:
        torch.testing.assert_close(out.components[key], eager.components[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(out.total, leaves), g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_shared_candidate_table_changes_nothing_and_saves_ops():
    """Both branches read one candidate table (it does not depend on the predictions): the same
    values and gradients as each branch making its own, with fewer ops than the two branches alone."""
    crit, preds, targets, leaves = _bench(False)
    padded = pad_targets(targets, 5, validate=False)
    out = crit(preds, padded, epoch=3)
    grads = torch.autograd.grad(out.total, leaves)
    w_m, w_o = crit.weights(3)
    with DispatchCounter() as alone:
        own = [crit.one2many(preds["one2many"], padded), crit.one2one(preds["one2one"], padded)]
    with DispatchCounter() as shared:
        crit(preds, padded, epoch=3)
    for name, res in zip(("one2many", "one2one"), own, strict=True):
        for k, v in res.components.items():
            torch.testing.assert_close(out.branches[name].components[k], v, rtol=0, atol=0)
    total = w_m * own[0].total + w_o * own[1].total
    torch.testing.assert_close(out.total, total, rtol=1e-6, atol=0)
    for a, b in zip(grads, torch.autograd.grad(total, leaves), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert shared.ops < alone.ops - 20, (shared.ops, alone.ops)


def test_task_aligned_assign_with_a_precomputed_candidate_table():
    preds, targets = make_case(b=2, n=6, seed=3, reg_max=8)
    crit = YOLOv8Loss(3, reg_max=8, topk=7)
    sizes = [tuple(p.shape[2:]) for p in preds]
    heads = crit.read_heads(preds, 2)
    tables = crit.anchor_tables(sizes, D, torch.device("cpu"))
    pts, st, pts_px, _ = tables
    padded = pad_targets(targets, 3, dtype=D)
    with torch.no_grad():
        boxes = torch.cat(
            [crit._decode(r, pts[s : s + r.shape[-1]], channels_first=True) for s, r in heads.box], 1
        )
    args = (heads.cls, boxes * st, pts_px, padded.boxes, padded.labels, padded.mask)
    kw = dict(topk=7, min_side=16.0, logits=True, grid_sizes=sizes)
    table = crit.candidate_table(padded, tables, sizes)
    ref = task_aligned_assign(*args, **kw)
    for _ in range(2):  # the table's block is made once and read again
        out = task_aligned_assign(*args, candidates=table, **kw)
        for f in ("foreground", "gt_index", "labels", "boxes", "scores"):
            assert torch.equal(getattr(out, f), getattr(ref, f)), f
    with pytest.raises(ValueError, match="candidates"):
        task_aligned_assign(*args, candidates=table, rotated=True, topk=7)
