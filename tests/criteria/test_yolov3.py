"""YOLOv3Loss: hand-built cases, the label builder, a loop port of tensorflow-yolov3, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.assign import build_yolov3_targets, pad_targets
from detloss.criteria import YOLOv3Loss
from tests.reference.yolov3 import COCO, ref_loss

LOG2 = math.log(2.0)


def _t(boxes, labels):
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
    }


def _zeros(b, c, grids, a=3):
    return [torch.zeros(b, a * (5 + c), g, g, dtype=torch.float64, requires_grad=True) for g in grids]


def random_targets(gen, b, size, n_max, num_classes, dup=True):
    out = []
    for i in range(b):
        n = int(torch.randint(0, n_max + 1, (1,), generator=gen)) if i else n_max
        wh = torch.exp(
            torch.empty(n, 2, dtype=torch.float64).uniform_(math.log(2), math.log(size), generator=gen)
        )
        c = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size
        boxes = torch.cat([c - wh / 2, c + wh / 2], -1).clamp(0, size)
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        if dup and n >= 2:  # a later near-copy of an earlier box: same cell and anchor, new class
            boxes = torch.cat([boxes, boxes[:2] + 0.25])
            labels = torch.cat([labels, (labels[:2] + 1) % num_classes])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out.append({"boxes": boxes[keep], "labels": labels[keep]})
    return out


# --------------------------------------------------------------------------------------------------
# Hand-built cases
# --------------------------------------------------------------------------------------------------


def one_scale(**kw):
    # input 64, stride 32 → a 2×2 grid with anchors 32², 64², 16² (in pixels)
    return YOLOv3Loss(2, anchors=((32, 32), (64, 64), (16, 16)), strides=(32,), **kw)


def test_hand_single_box():
    # box (4, 0, 36, 32): centre (20, 16) → cell (0, 0); in grid units the box is 1×1 at (0.625, 0.5).
    # Anchor 0 (1×1 at 0.5, 0.5): IoU = 0.875 / 1.125 > 0.3; anchors 1 (2×2) and 2 (0.5²): 0.25 each.
    # All logits 0: the responsible prediction is (0, 0, 32, 32); inter 28·32 = 896, union = enclose
    # = 1152, so GIoU = 896 / (1152 + 1e-6); scale = 2 − 32·32 / 64² = 1.75.
    # Class target (0.005, 0.995); BCE(0, t) = log 2 per channel. Every other prediction overlaps the
    # box by IoU ≤ 0.25, so it is background:
    # 12 slots × |t − 0.5|² · log 2. (Largest other IoU: the 64² anchor at cell (0, 0), 1024/4096;
    # at cell (1, 0) the 32² anchor overlaps 4·32 = 128 of a 1920 union, the 64² one 640 of 4480.)
    out = one_scale()(_zeros(1, 2, [2]), [_t([4, 0, 36, 32], [1])])
    box = 1.75 * (1 - 896 / (1152 + 1e-6))
    assert out.components["box"].item() == pytest.approx(box, rel=1e-12)
    assert out.components["cls"].item() == pytest.approx(2 * LOG2, rel=1e-12)
    assert out.components["obj"].item() == pytest.approx(12 * 0.25 * LOG2, rel=1e-12)
    assert out.total.item() == pytest.approx(box + 2 * LOG2 + 3 * LOG2, rel=1e-12)


def test_hand_ignored_prediction_and_batch_mean():
    # Same box; the prediction of anchor 1 at cell (0, 0) is shrunk to exactly the box's size and
    # shifted onto it (tw = th = log(1/2), tx: σ = 0.625) → IoU 1 ≥ 0.5: neither responsible nor
    # background, so its confidence term vanishes. A second, empty image adds 12 background slots.
    preds = _zeros(2, 2, [2])
    with torch.no_grad():
        k = 1 * 7  # anchor 1's channels
        preds[0][0, k + 0, 0, 0] = math.log(0.625 / 0.375)
        preds[0][0, k + 2, 0, 0] = math.log(0.5)
        preds[0][0, k + 3, 0, 0] = math.log(0.5)
    empty = {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.int64)}
    out = one_scale()(preds, [_t([4, 0, 36, 32], [1]), empty])
    obj = (12 - 1) * 0.25 * LOG2 + 12 * 0.25 * LOG2
    assert out.components["obj"].item() == pytest.approx(obj / 2, rel=1e-12)
    assert out.components["cls"].item() == pytest.approx(LOG2, rel=1e-12)


def test_gains_and_focal_option():
    t = [_t([4, 0, 36, 32], [1])]
    base = one_scale()(_zeros(1, 2, [2]), t)
    gained = one_scale(box=2.0, obj=0.5, cls=3.0)(_zeros(1, 2, [2]), t)
    for k, g in (("box", 2.0), ("obj", 0.5), ("cls", 3.0)):
        assert gained.components[k].item() == pytest.approx(g * base.components[k].item(), rel=1e-12)
    plain = one_scale(obj_gamma=0.0)(_zeros(1, 2, [2]), t)  # no focal factor: 12 · log 2
    assert plain.components["obj"].item() == pytest.approx(12 * LOG2, rel=1e-12)
    iou = one_scale(iou_kind="iou", iou_eps=1e-9)(_zeros(1, 2, [2]), t)
    assert iou.components["box"].item() == pytest.approx(1.75 * (1 - 896 / 1152), rel=1e-8)


# --------------------------------------------------------------------------------------------------
# The label builder on crafted boxes
# --------------------------------------------------------------------------------------------------


def _build(boxes, size=416, **kw):
    pt = pad_targets([_t(boxes, [0] * len(boxes))], 1, dtype=torch.float64)
    grids = [(size // s, size // s) for s in (8, 16, 32)]
    return build_yolov3_targets(pt.boxes, pt.mask, torch.as_tensor(COCO), (8, 16, 32), grids, **kw)


def test_builder_anchor_cell_and_threshold():
    # A 116×90 box centred at (200, 100). Stride 32, grid units: box x [4.4375, 8.0625],
    # y [1.71875, 4.53125], cell (6, 3), anchors centred at (6.5, 3.5). 116×90 (3.625×2.8125): inter
    # 3.375·2.4375 = 8.227, union 2·10.195 − 8.227 → IoU 0.676 > 0.3; 156×198 covers the box: IoU =
    # 10.195 / 30.164 = 0.338 > 0.3; 373×326: 10.195 / 118.75 < 0.3.
    asg = _build([[142.0, 55.0, 258.0, 145.0]])
    assert asg.assigned[0, 0, 2].tolist() == [True, True, False]
    assert asg.cell[0, 0, 2].tolist() == [6, 3]
    # stride 16, cell (12, 6): 30×61 and 62×45 lie inside the box: 1830/10440 = 0.175 and 2790/10440
    # = 0.267 < 0.3; 59×119 spans the box's height: 59·90 / (10440 + 7021 − 5310) = 0.437 > 0.3
    assert asg.assigned[0, 0, 1].tolist() == [False, False, True]
    assert asg.cell[0, 0, 1].tolist() == [12, 6]
    assert not asg.assigned[0, 0, 0].any()
    assert asg.responsible[2][0, 0, 3, 6] and asg.responsible[2][0, 1, 3, 6]
    assert int(sum(r.sum() for r in asg.responsible)) == 3


def test_builder_fallback_and_clip_bug():
    # A 3×40 sliver: no anchor reaches 0.3 on any scale. By hand (grid units, anchor centred at the cell
    # centre, the sliver centred at (c mod 1)): the best of the nine is anchor 0 (10×13) on stride 8:
    # inter 3·13 = 39, union 120 + 130 − 39 = 211 → 0.185 (16×30: 3·30 / (120+480−90) = 0.176).
    box = [400.0, 300.0, 403.0, 340.0]  # centre (401.5, 320) → stride-8 cell (50, 40)
    asg = _build([box])
    assert asg.assigned[0, 0].flatten().tolist() == [True] + [False] * 8
    assert asg.cell[0, 0, 0].tolist() == [50, 40]
    bug = _build([box], fallback_clip_bug=True)
    assert bug.cell[0, 0, 0].tolist() == [12, 12]  # clipped with the 13×13 grid of the last scale
    assert bug.responsible[0][0, 0, 12, 12] and not bug.responsible[0][0, 0, 40, 50]


def test_builder_overwrite_later_box_wins_and_buffer():
    a = [142.0, 55.0, 258.0, 145.0]
    b = [143.0, 56.0, 259.0, 146.0]  # same cells and anchors
    asg = _build([a, b])
    assert not asg.winner[0, 0].any() and asg.winner[0, 1].sum() == 3
    assert asg.owner[0, 0, 2, 0] == (1 * 3 + 2) * 3 + 0
    assert asg.held[0, :, 2].tolist() == [True, True]  # both stay in the ignore buffer
    capped = _build([a, b], max_boxes_per_scale=1)
    assert capped.held[0, :, 2].tolist() == [False, True]  # ring buffer of one: the last


def test_builder_rejects_centre_outside():
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[1\].*centre outside"):
        _build([[0.0, 0.0, 10.0, 10.0], [410.0, 0.0, 430.0, 10.0]])


# --------------------------------------------------------------------------------------------------
# Equivalence with the loop port
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "num_classes", "n_max", "kw"),
    [
        (416, 80, 12, {}),
        (128, 5, 25, {}),
        (128, 5, 25, {"clip_bug": True}),
        (96, 3, 20, {"max_bbox": 4}),
    ],
)
def test_matches_loop_port(size, num_classes, n_max, kw):
    gen = torch.Generator().manual_seed(size + n_max + len(kw))
    b = 2 if size > 200 else 3
    grids = [size // 8, size // 16, size // 32]
    preds = [torch.randn(b, 3 * (5 + num_classes), g, g, generator=gen, dtype=torch.float64) for g in grids]
    targets = random_targets(gen, b, size, n_max, num_classes)
    crit = YOLOv3Loss(
        num_classes, fallback_clip_bug=kw.get("clip_bug", False), max_boxes_per_scale=kw.get("max_bbox", 150)
    )
    out = crit(preds, targets)
    ref = ref_loss(preds, targets, num_classes, **kw)
    for name, r in zip(("box", "obj", "cls"), ref, strict=True):
        torch.testing.assert_close(out.components[name], r, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.total, sum(ref), rtol=1e-10, atol=0)


# --------------------------------------------------------------------------------------------------
# Gradients, degenerate and bad input
# --------------------------------------------------------------------------------------------------


def test_gradients_only_into_named_channels():
    gen = torch.Generator().manual_seed(3)
    size, c = 128, 3
    preds = [
        torch.randn(2, 3 * (5 + c), g, g, generator=gen, dtype=torch.float64).requires_grad_()
        for g in (16, 8, 4)
    ]
    targets = random_targets(gen, 2, size, 6, c)
    crit = YOLOv3Loss(c)
    crit(preds, targets).total.backward()
    pt = pad_targets(targets, c, dtype=torch.float64)
    asg = build_yolov3_targets(
        pt.boxes, pt.mask, torch.as_tensor(COCO), (8, 16, 32), [(16, 16), (8, 8), (4, 4)]
    )
    for s, p in enumerate(preds):
        g = p.grad.view(2, 3, 5 + c, *p.shape[2:]).permute(0, 1, 3, 4, 2)
        resp = asg.responsible[s]
        nz_box = (g[..., 0:4] != 0).any(-1)
        nz_cls = (g[..., 5:] != 0).any(-1)
        assert torch.equal(nz_box, resp) and torch.equal(nz_cls, resp)
        assert (g[..., 4][resp] != 0).all()


def test_ignored_cell_gets_no_objectness_gradient():
    preds = _zeros(1, 2, [2])
    with torch.no_grad():  # anchor 1 at cell (0, 0) predicts the box exactly (see the hand case)
        preds[0][0, 7, 0, 0] = math.log(0.625 / 0.375)
        preds[0][0, 9, 0, 0] = preds[0][0, 10, 0, 0] = math.log(0.5)
    one_scale()(preds, [_t([4, 0, 36, 32], [1])]).total.backward()
    g = preds[0].grad
    assert g[0, 7 + 4, 0, 0] == 0  # ignored: no confidence term
    assert g[0, 7 + 0 : 7 + 4, 0, 0].abs().sum() == 0 and g[0, 7 + 5 : 14, 0, 0].abs().sum() == 0
    assert g[0, 4, 0, 0] != 0 and g[0, 14 + 4, 1, 1] != 0


def test_gradcheck_tiny():
    gen = torch.Generator().manual_seed(5)
    preds = [
        torch.randn(2, 3 * 7, g, g, generator=gen, dtype=torch.float64).requires_grad_() for g in (4, 2, 1)
    ]
    targets = [_t([[3.0, 4.0, 20.0, 30.0], [1.0, 1.0, 6.0, 4.0]], [0, 1]), _t([[10.0, 2.0, 31.0, 12.0]], [1])]
    crit = YOLOv3Loss(2)
    assert torch.autograd.gradcheck(lambda *p: crit(list(p), targets).total, preds, fast_mode=True)


def test_empty_images_and_half_precision():
    gen = torch.Generator().manual_seed(7)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    preds = [torch.randn(2, 3 * 8, g, g, generator=gen).requires_grad_() for g in (8, 4, 2)]
    out = YOLOv3Loss(3)(preds, [empty, empty])
    out.total.backward()
    assert out.components["box"] == 0 and out.components["cls"] == 0 and torch.isfinite(out.total)
    assert all(torch.isfinite(p.grad).all() for p in preds)
    mixed = [empty, {"boxes": torch.tensor([[2.0, 3.0, 30.0, 40.0]]), "labels": torch.tensor([2])}]
    half = [p.detach().half().requires_grad_() for p in preds]
    out = YOLOv3Loss(3)(half, mixed)
    out.total.backward()
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    assert all(torch.isfinite(p.grad).all() for p in half)


def test_bad_input():
    crit = YOLOv3Loss(2)
    preds = [torch.zeros(1, 21, g, g) for g in (8, 4, 2)]
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[0\].*zero or negative width"):
        crit(preds, [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="class id 2"):
        crit(preds, [{"boxes": torch.tensor([[5.0, 5.0, 8.0, 9.0]]), "labels": torch.tensor([2])}])
    with pytest.raises(ValueError, match="scales"):
        crit(preds[:2], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    with pytest.raises(ValueError, match="preds"):
        crit([torch.zeros(1, 20, 8, 8), *preds[1:]], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="anchors"):
        YOLOv3Loss(2, anchors=((10, 13), (16, 30)))
    with pytest.raises(ValueError, match="num_classes"):
        YOLOv3Loss(0)
    with pytest.raises(ValueError, match="iou_loss_thresh"):
        YOLOv3Loss(2, iou_loss_thresh=1.5)


def test_gradients_match_loop_port():
    # TensorFlow differentiates the same graph: the gradients agree as well as the values
    gen = torch.Generator().manual_seed(21)
    c = 4
    preds = [
        torch.randn(2, 3 * (5 + c), g, g, generator=gen, dtype=torch.float64).requires_grad_()
        for g in (16, 8, 4)
    ]
    targets = random_targets(gen, 2, 128, 10, c)
    ours = torch.autograd.grad(YOLOv3Loss(c)(preds, targets).total, preds)
    ref = torch.autograd.grad(sum(ref_loss(preds, targets, c)), preds)
    for g1, g2 in zip(ours, ref, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


def test_gather_at_cells_gradcheck_with_shared_cells():
    from detloss.criteria.heads import gather_at_cells

    gen = torch.Generator().manual_seed(2)
    head = torch.randn(2, 3, 6, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor([[[1, 2], [1, 2], [4, 3]], [[0, 0], [2, 1], [0, 0]]])  # repeated cells
    obj, rows = gather_at_cells(head, cell)
    torch.testing.assert_close(obj, head[:, :, 4])
    for b in range(2):
        for m in range(3):
            for a in range(3):
                gx, gy = cell[b, m].tolist()
                assert torch.equal(rows[b, m, a], head[b, a, :, gy, gx])
    w1, w2 = torch.randn(obj.shape, dtype=torch.float64), torch.randn(rows.shape, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h: tuple(t * w for t, w in zip(gather_at_cells(h, cell), (w1, w2), strict=True)),
        (head,),
        fast_mode=True,
    )


def test_builder_fallback_tie_takes_the_first():
    # One scale, stride 8, anchors 20×10 and 10×20 (and a huge one). A 6×6 box centred on a cell centre
    # overlaps both by 6·6 = 36 of a union 200 + 36 − 36 = 200 → IoU 0.18 each (< 0.3): a tie, which the
    # original's argmax resolves to the first anchor.
    pt = pad_targets([_t([[81.0, 41.0, 87.0, 47.0]], [0])], 1, dtype=torch.float64)  # centre (84, 44)
    anchors = torch.tensor([[[20.0, 10.0], [10.0, 20.0], [400.0, 400.0]]], dtype=torch.float64)
    asg = build_yolov3_targets(pt.boxes, pt.mask, anchors, (8,), [(52, 52)])
    assert asg.assigned[0, 0, 0].tolist() == [True, False, False]
    assert asg.cell[0, 0, 0].tolist() == [10, 5]
