"""YOLOv5Loss against a naive loop port of ultralytics/yolov5 ComputeLoss and hand calculations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detloss.assign import build_yolov5_targets, pad_targets
from detloss.boxes import convert
from detloss.criteria import YOLOV5_ANCHORS, YOLOv5Loss, yolov5_scaled_gains
from detloss.iou import iou_xyxy
from tests.reference.yolov5 import HYP, reference_loss, yolo_bbox_ciou

D = torch.float64


def random_targets(gen, bs, size, nc, max_boxes=7):
    out = []
    for i in range(bs):
        n = 0 if i == 1 else int(torch.randint(1, max_boxes + 1, (1,), generator=gen))
        cxy = torch.rand(n, 2, generator=gen, dtype=D) * size
        wh = torch.exp(torch.rand(n, 2, generator=gen, dtype=D) * math.log(size)) + 1.0
        if n >= 2:  # a near-duplicate box: collides on cells and anchors
            cxy[1], wh[1] = cxy[0] + 0.1, wh[0] * 1.05
        boxes = torch.cat((cxy - wh / 2, cxy + wh / 2), 1)
        out.append({"boxes": boxes, "labels": torch.randint(0, nc, (n,), generator=gen)})
    return out


def random_preds(gen, bs, nc, size, strides=(8, 16, 32), na=3, requires_grad=True):
    return [
        (torch.randn(bs, na * (5 + nc), size // s, size // s, generator=gen, dtype=D)).requires_grad_(
            requires_grad
        )
        for s in strides
    ]


@pytest.mark.parametrize(
    "seed, nc, extra",
    [
        (0, 5, {}),
        (1, 1, {}),
        (2, 3, {"fl_gamma": 1.5}),
        (3, 4, {"label_smoothing": 0.1, "gr": 0.7, "cls_pw": 1.3, "obj_pw": 0.8}),
        (4, 2, {"anchor_t": 2.91}),
    ],
)
def test_matches_loop_port_of_original(seed, nc, extra):
    gen = torch.Generator().manual_seed(seed)
    size, bs = 128, 4
    targets = random_targets(gen, bs, size, nc)
    preds = random_preds(gen, bs, nc, size)
    hyp = {**HYP, **extra}
    crit = YOLOv5Loss(nc, **{k: v for k, v in hyp.items()})
    out = crit(preds, targets)
    grads = torch.autograd.grad(out.total, preds)
    ref_total, ref_parts = reference_loss(preds, targets, nc, YOLOV5_ANCHORS, (8, 16, 32), hyp)
    ref_grads = torch.autograd.grad(ref_total, preds)
    torch.testing.assert_close(out.total, ref_total, rtol=1e-6, atol=0)
    for name, ref in zip(("box", "obj", "cls"), ref_parts, strict=True):
        torch.testing.assert_close(out.components[name], ref, rtol=1e-6, atol=1e-12)
    for gr_, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(gr_, ref, rtol=1e-5, atol=1e-9)  # CIoU eps in atan


def test_hand_computed_one_box():
    """One 1×1 grid, one anchor of 16 px at stride 32 (0.5 cells), C = 2, one box.

    Box logits 0 → pred (0.5, 0.5, 0.5, 0.5) in cell units; target centre (0.7, 0.5), size 0.5:
    I = 0.3·0.5 = 0.15, U = 0.35, IoU = 3/7, ρ² = 0.04, c² = 0.7² + 0.5², v = 0 (same aspect)."""
    crit = YOLOv5Loss(2, anchors=[[(16.0, 16.0)]], strides=(32,))
    pred = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.3, 0.2, -0.1], dtype=D).view(1, 7, 1, 1)
    box = torch.tensor([[22.4 - 8, 8.0, 22.4 + 8, 24.0]], dtype=D)
    out = crit([pred], [{"boxes": box, "labels": torch.tensor([1])}])
    ciou = 3 / 7 - 0.04 / (0.49 + 0.25)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    lbox = 0.05 * (1 - ciou)
    lobj = 1.0 * 4.0 * (sp(0.3) - 0.3 * ciou)  # balance (4.0,) for one scale
    lcls = 0.5 * (sp(0.2) + sp(0.1)) / 2  # BCE(0.2, 0) = sp(0.2); BCE(−0.1, 1) = sp(0.1)
    assert out.components["box"].item() == pytest.approx(lbox, rel=1e-6)
    assert out.components["obj"].item() == pytest.approx(lobj, rel=1e-6)
    assert out.components["cls"].item() == pytest.approx(lcls, rel=1e-6)
    assert out.total.item() == pytest.approx(lbox + lobj + lcls, rel=1e-6)


def _match(boxes, anchors_px, stride=8, grid=(4, 4), anchor_t=4.0, labels=None):
    b = torch.tensor(boxes, dtype=D).view(1, -1, 4)
    lab = torch.zeros(b.shape[:2], dtype=torch.long) if labels is None else torch.tensor([labels])
    pt = pad_targets([{"boxes": b[0], "labels": lab[0]}], 5, dtype=D)
    return build_yolov5_targets(pt, torch.tensor(anchors_px, dtype=D) / stride, stride, grid, anchor_t)


def _box(cx, cy, w, h, s=8):
    """xyxy pixels of a box given in grid units."""
    return [(cx - w / 2) * s, (cy - h / 2) * s, (cx + w / 2) * s, (cy + h / 2) * s]


def test_anchor_ratio_test_is_strict():
    # anchor 1 × 1 cells; width ratio exactly 4 fails (strict <), 3.99 passes; 1/4.01 fails
    assert _match([_box(2.5, 2.5, 4.0, 1.0)], [[8, 8]]).batch.numel() == 0
    assert _match([_box(2.5, 2.5, 3.99, 1.0)], [[8, 8]]).batch.numel() == 1
    assert _match([_box(2.5, 2.5, 1.0, 1 / 4.01)], [[8, 8]]).batch.numel() == 0
    # of two anchors only the one within the ratio matches
    m = _match([_box(2.5, 2.5, 1.0, 1.0)], [[80, 80], [8, 16]])
    assert m.anchor.tolist() == [1]


@pytest.mark.parametrize(
    "cx, cy, cells",
    [
        (2.5, 2.5, [(2, 2)]),  # frac exactly 0.5: no neighbour on either side
        (2.3, 2.5, [(2, 2), (1, 2)]),  # frac 0.3 < 0.5, x > 1: left
        (2.7, 2.5, [(2, 2), (3, 2)]),  # frac(4 − 2.7) = 0.3: right
        (2.5, 2.3, [(2, 2), (2, 1)]),  # up
        (2.5, 2.7, [(2, 2), (2, 3)]),  # down
        (2.3, 2.3, [(2, 2), (1, 2), (2, 1)]),  # left then up (group order)
        (0.3, 0.3, [(0, 0)]),  # x < 1: no left at the left border
        (3.7, 3.7, [(3, 3)]),  # W − x = 0.3 < 1: no right/down at the border
        (1.2, 3.8, [(1, 3), (0, 3)]),  # left allowed (x > 1), down not (H − y = 0.2)
    ],
)
def test_neighbour_cells(cx, cy, cells):
    m = _match([_box(cx, cy, 1.0, 1.0)], [[8, 8]])
    assert list(zip(m.gi.tolist(), m.gj.tolist(), strict=True)) == cells


def test_neighbour_right_of_integer_centre():
    # x = 1.0: frac(4 − 1) = 0 < 0.5 and 3 > 1 → right neighbour is trunc(1.0 + 0.5) = 1 = own cell
    m = _match([_box(1.0, 2.5, 1.0, 1.0)], [[8, 8]])
    assert list(zip(m.gi.tolist(), m.gj.tolist(), strict=True)) == [(1, 2), (1, 2)]
    assert m.winner.tolist() == [False, True]  # the later (right group) write wins


def test_cells_clamped_targets_unclamped():
    # centre exactly on the right/bottom edge (x = W): own cell 4 clamps to 3, target x = 4 − 4 = 0
    m = _match([_box(4.0, 4.0, 1.0, 1.0)], [[8, 8]])
    assert (m.gi.tolist(), m.gj.tolist()) == ([3, 3, 3], [3, 3, 3])
    # groups: own (4, 4) → (3, 3); left: trunc(4 − 0.5) = 3, x > 1 and frac 0 < 0.5; up likewise
    torch.testing.assert_close(m.box[:, :2], torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=D))
    assert m.winner.tolist() == [False, False, True]
    # a centre left of the image, x = −0.3: own cell trunc(−0.3) = 0; right neighbour too
    # (W − x = 4.3 > 1, frac 0.3 < 0.5) at trunc(−0.3 + 0.5) = 0; both targets x − 0 = −0.3
    m = _match([[-0.3 * 8 - 4, 2.5 * 8 - 4, -0.3 * 8 + 4, 2.5 * 8 + 4]], [[8, 8]])
    assert m.gi.tolist() == [0, 0]
    torch.testing.assert_close(m.box[:, 0], torch.tensor([-0.3, -0.3], dtype=D))


def test_last_write_wins_across_groups_and_targets():
    # grid 8 wide. Target 0 (B) at x = 2.3: own cell 2, left cell 1. Target 1 (A) at x = 1.6:
    # own cell 1, right cell 2 (frac(8 − 1.6) = 0.4). Original order: group own: B→2, A→1;
    # group left: B→1; group right: A→2. Cell 1 ends with B's left match, cell 2 with A's right.
    boxes = [_box(2.3, 0.5, 1.0, 1.0), _box(1.6, 0.5, 1.0, 1.0)]
    m = _match(boxes, [[8, 8]], grid=(1, 8))
    got = list(zip(m.gi.tolist(), m.winner.tolist(), strict=True))
    assert got == [(2, False), (1, False), (1, True), (2, True)]
    # the same box twice: the later one in batch order wins
    m = _match([_box(2.5, 2.5, 1.0, 1.0)] * 2, [[8, 8]])
    assert m.winner.tolist() == [False, True]


def test_objectness_target_is_last_write():
    """Two boxes on one cell and anchor: the objectness target is the second box's IoU."""
    crit = YOLOv5Loss(1, anchors=[[(16.0, 16.0)]], strides=(32,), gr=1.0)
    pred = torch.zeros(1, 6, 1, 1, dtype=D)
    pred[0, 4] = 1.0  # box logits 0: pred (0.5, 0.5, 0.5, 0.5)
    boxes = torch.tensor([_box(0.5, 0.5, 0.5, 0.5, 32), _box(0.6, 0.5, 0.5, 0.5, 32)], dtype=D)
    out = crit([pred], [{"boxes": boxes, "labels": torch.tensor([0, 0])}])
    iou2 = 0.2 / 0.3 - 0.01 / (0.6**2 + 0.5**2)  # I = 0.4·0.5, U = 0.3; ρ² = 0.1², c² = 0.6² + 0.5²
    expect = 4.0 * (math.log1p(math.exp(1.0)) - iou2)
    assert out.components["obj"].item() == pytest.approx(expect, rel=1e-6)


def test_ciou_matches_yolov5_bbox_iou_variants():
    """detloss's CIoU (atan(w/(h+eps)), areas w·h) vs YOLOv5 v7.0 (no eps in atan) and v6.x
    (h + eps in the areas and atan): below 1e-5 relative on 1 − CIoU for boxes ≥ 0.25 cells."""
    gen = torch.Generator().manual_seed(0)
    n = 4000
    p = torch.cat(
        (
            torch.rand(n, 2, generator=gen, dtype=D) * 2 - 0.5,
            torch.rand(n, 2, generator=gen, dtype=D) * 8 + 0.25,
        ),
        1,
    )
    t = torch.cat(
        (torch.rand(n, 2, generator=gen, dtype=D), torch.rand(n, 2, generator=gen, dtype=D) * 8 + 0.25), 1
    )
    ours = 1 - iou_xyxy(convert(p, "cxcywh", "xyxy"), convert(t, "cxcywh", "xyxy"), "ciou", 1e-7)
    for v6 in (False, True):
        theirs = 1 - yolo_bbox_ciou(p, t, v6=v6)
        assert ((ours - theirs).abs() / theirs.abs()).max() < 1e-5


def test_gradcheck_obj_and_cls():
    # box gain 0 and gr 0 (objectness target 1): the remaining loss is smooth in the logits
    gen = torch.Generator().manual_seed(1)
    crit = YOLOv5Loss(3, anchors=[[(12.0, 10.0)]], strides=(8,), box=0.0, gr=0.0)
    pred = torch.randn(2, 8, 2, 2, generator=gen, dtype=D, requires_grad=True)
    tg = [
        {
            "boxes": torch.tensor([[2.0, 3.0, 11.0, 12.0], [5.0, 5.0, 14.0, 15.0]], dtype=D),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros(0, 4, dtype=D), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    assert torch.autograd.gradcheck(lambda x: crit([x], tg).total, (pred,), fast_mode=True)
    crit.fl_gamma = 1.5
    assert torch.autograd.gradcheck(lambda x: crit([x], tg).total, (pred,), fast_mode=True)


def test_gradcheck_box():
    # target aspect = anchor aspect and tw = th: v = 0 at the point, so α·v (α held constant) has
    # the same derivative as the true CIoU to first order
    crit = YOLOv5Loss(1, anchors=[[(16.0, 8.0)]], strides=(32,), obj=0.0, gr=0.0)
    pred = torch.tensor([0.3, -0.2, 0.1, 0.1, 0.0, 0.0], dtype=D).view(1, 6, 1, 1).requires_grad_()
    tg = [{"boxes": torch.tensor([[10.0, 12.0, 28.0, 21.0]], dtype=D), "labels": torch.tensor([0])}]
    assert torch.autograd.gradcheck(lambda x: crit([x], tg).total, (pred,))


def test_empty_images_and_empty_batch():
    crit = YOLOv5Loss(4)
    gen = torch.Generator().manual_seed(2)
    preds = random_preds(gen, 2, 4, 64)
    empty = {"boxes": torch.zeros(0, 4, dtype=D), "labels": torch.zeros(0, dtype=torch.long)}
    out = crit(preds, [empty, empty])
    out.total.backward()
    assert out.components["box"].item() == 0 and out.components["cls"].item() == 0
    expect = sum(
        b * F.softplus(p.view(2, 3, 9, *p.shape[2:])[:, :, 4]).mean()
        for b, p in zip((4.0, 1.0, 0.4), preds, strict=True)
    )
    torch.testing.assert_close(out.components["obj"], expect.detach())
    assert all(torch.isfinite(p.grad).all() for p in preds)
    preds0 = random_preds(gen, 0, 4, 64)
    out = crit(preds0, [])
    out.total.backward()
    assert out.total.item() == 0


def test_half_precision_heads():
    gen = torch.Generator().manual_seed(3)
    preds = [p.detach().half().requires_grad_() for p in random_preds(gen, 2, 3, 64)]
    tg = random_targets(gen, 2, 64, 3)
    out = YOLOv5Loss(3)(preds, [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in tg])
    out.total.backward()
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    assert all(torch.isfinite(p.grad).all() for p in preds)


def test_bad_inputs_name_image_and_box():
    crit = YOLOv5Loss(3)
    preds = random_preds(torch.Generator().manual_seed(0), 2, 3, 64, requires_grad=False)
    ok = {"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]], dtype=D), "labels": torch.tensor([0])}
    bad_box = {
        "boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0], [5.0, 5.0, 4.0, 9.0]], dtype=D),
        "labels": torch.tensor([0, 1]),
    }
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[1\]"):
        crit(preds, [ok, bad_box])
    bad_label = {"boxes": ok["boxes"], "labels": torch.tensor([3])}
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        crit(preds, [bad_label, ok])
    with pytest.raises(ValueError, match="batch size"):
        crit(preds, [ok])
    with pytest.raises(ValueError, match="anchors"):
        YOLOv5Loss(3, anchors=[[(10, 13)], [(16, -1)]], strides=(8, 16))


def test_scaled_gains():
    assert yolov5_scaled_gains(80) == pytest.approx({"box": 0.05, "cls": 0.5, "obj": 1.0})
    # 20 classes, 320 px, 4 output layers: box·3/4, cls·20/80·3/4, obj·(1/2)²·3/4
    got = yolov5_scaled_gains(20, num_layers=4, imgsz=320)
    assert got == pytest.approx({"box": 0.0375, "cls": 0.09375, "obj": 0.1875})
