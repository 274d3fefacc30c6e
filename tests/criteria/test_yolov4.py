"""YOLOv4Loss: hand-built cases, the label builder, a loop port of yolov4-tiny-tf2, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.assign import build_yolov4_targets, pad_targets
from detloss.criteria import YOLOv4Loss
from tests.reference.yolov4 import FULL, FULL_MASKS, TINY, TINY_MASKS, ref_loss

LOG2 = math.log(2.0)


def _t(boxes, labels):
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
    }


EMPTY = {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.int64)}


def random_targets(gen, b, size_hw, n_max, num_classes):
    out = []
    h, w = size_hw
    lim = torch.tensor([w, h, w, h], dtype=torch.float64)
    for i in range(b):
        n = int(torch.randint(0, n_max + 1, (1,), generator=gen)) if i else n_max
        wh = torch.exp(
            torch.empty(n, 2, dtype=torch.float64).uniform_(math.log(3), math.log(min(h, w)), generator=gen)
        )
        c = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([w, h])
        boxes = torch.minimum(torch.cat([c - wh / 2, c + wh / 2], -1).clamp(min=0), lim)
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        if n >= 2:  # later near-copies: same slot, another class
            boxes = torch.cat([boxes, boxes[:2] + 0.25])
            labels = torch.cat([labels, (labels[:2] + 1) % num_classes])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out.append({"boxes": boxes[keep], "labels": labels[keep]})
    return out


# --------------------------------------------------------------------------------------------------
# Hand-built cases
# --------------------------------------------------------------------------------------------------


def one_scale(**kw):
    # input 64, stride 32: a 2×2 grid; anchors 32², 64², 16²
    return YOLOv4Loss(
        2, anchors=((32, 32), (64, 64), (16, 16)), anchor_masks=((0, 1, 2),), strides=(32,), **kw
    )


def _zeros(b, c, grids, a=3):
    return [torch.zeros(b, a * (5 + c), g, g, dtype=torch.float64, requires_grad=True) for g in grids]


def test_hand_single_box():
    # Box (4, 0, 36, 32), 32×32 → best anchor 0 (IoU 1), cell floor(20/64·2) = 0, floor(16/64·2) = 0.
    # Logits 0: the prediction there is (0, 0, 32, 32). IoU = 896/1152; centres (16, 16) vs (20, 16):
    # ρ² = 16; enclosing box 36×32: c² = 36² + 32² = 2320; same aspect → v = 0.
    # Box scale 2 − (32/64)·(32/64) = 1.75. Confidence: log 2 for the responsible slot, and the other
    # 11 predictions overlap the box by IoU ≤ 0.25 < 0.5 → not ignored: 11 · log 2.
    # Class: 2 channels × log 2. One responsible slot: N = 1.
    ciou = 896 / 1152 - 16 / 2320
    box = 1.75 * (1 - ciou)
    out = one_scale()(_zeros(1, 2, [2]), [_t([4, 0, 36, 32], [1])])
    assert out.components["box"].item() == pytest.approx(box, rel=1e-9)
    assert out.components["obj"].item() == pytest.approx(12 * LOG2, rel=1e-12)
    assert out.components["cls"].item() == pytest.approx(2 * LOG2, rel=1e-12)
    # a second, empty image: all 12 of its predictions are background (ignore mask all ones);
    # N stays 1 with normalize, the batch size 2 without
    out = one_scale()(_zeros(2, 2, [2]), [_t([4, 0, 36, 32], [1]), EMPTY])
    assert out.total.item() == pytest.approx(box + 24 * LOG2 + 2 * LOG2, rel=1e-9)
    out = one_scale(normalize=False)(_zeros(2, 2, [2]), [_t([4, 0, 36, 32], [1]), EMPTY])
    assert out.total.item() == pytest.approx((box + 26 * LOG2) / 2, rel=1e-9)


def test_hand_label_smoothing_and_ignore():
    # label_smoothing 0.2 with C = 2: target (0.1, 0.9); BCE(0, t) is still log 2 per channel, so use a
    # class logit of 1 on channel 1: BCE(1, 0.9) = log(1 + e) − 0.9.
    preds = _zeros(1, 2, [2])
    with torch.no_grad():
        preds[0][0, 6, 0, 0] = 1.0
        # anchor 1 at cell (0, 0) shrunk and shifted onto the box exactly → IoU 1 ≥ 0.5: ignored
        preds[0][0, 7, 0, 0] = math.log(0.625 / 0.375)
        preds[0][0, 9, 0, 0] = preds[0][0, 10, 0, 0] = math.log(0.5)
    out = one_scale(label_smoothing=0.2)(preds, [_t([4, 0, 36, 32], [1])])
    assert out.components["cls"].item() == pytest.approx(LOG2 + math.log1p(math.e) - 0.9, rel=1e-12)
    assert out.components["obj"].item() == pytest.approx(11 * LOG2, rel=1e-12)


def test_options_gains_focal_iou_kind():
    t = [_t([4, 0, 36, 32], [1])]
    base = one_scale()(_zeros(1, 2, [2]), t)
    gained = one_scale(box=2.0, obj=0.5, cls=3.0)(_zeros(1, 2, [2]), t)
    for k, g in (("box", 2.0), ("obj", 0.5), ("cls", 3.0)):
        assert gained.components[k].item() == pytest.approx(g * base.components[k].item(), rel=1e-12)
    focal = one_scale(obj_gamma=2.0)(_zeros(1, 2, [2]), t)  # |t − 0.5|² = 1/4 everywhere
    assert focal.components["obj"].item() == pytest.approx(12 * LOG2 / 4, rel=1e-12)
    giou = one_scale(iou_kind="giou")(_zeros(1, 2, [2]), t)  # enclose = union: GIoU = IoU
    assert giou.components["box"].item() == pytest.approx(1.75 * (1 - 896 / 1152), rel=1e-9)


# --------------------------------------------------------------------------------------------------
# The label builder on crafted boxes (tiny preset, 416×416: grids 13 and 26)
# --------------------------------------------------------------------------------------------------


def _build(target, **kw):
    pt = pad_targets([target], 3, dtype=torch.float64)
    return build_yolov4_targets(
        pt.boxes, pt.mask, torch.as_tensor(TINY), TINY_MASKS, [(13, 13), (26, 26)], (416, 416), **kw
    )


def test_builder_tiny_anchor3_on_both_scales_anchor0_nowhere():
    # 81×82 at centre (100.5, 200) → anchor 3 on both scales: k = 0 on stride 32 at cell (3, 6),
    # k = 2 on stride 16 at cell (6, 12). A 10×14 box → anchor 0: no scale holds it. 23×27 → anchor 1:
    # scale 1 only, k = 0.
    boxes = [[60.0, 159.0, 141.0, 241.0], [300.0, 300.0, 310.0, 314.0], [10.0, 10.0, 33.0, 37.0]]
    asg = _build(_t(boxes, [0, 1, 2]))
    assert asg.assigned[0, 0, 0].tolist() == [True, False, False]
    assert asg.assigned[0, 0, 1].tolist() == [False, False, True]
    assert asg.cell[0, 0].tolist() == [[3, 6], [6, 12]]
    assert not asg.assigned[0, 1].any()
    assert asg.assigned[0, 2, 1].tolist() == [True, False, False] and not asg.assigned[0, 2, 0].any()
    assert int(sum(r.sum() for r in asg.responsible)) == 3


def test_builder_overwrite_and_held_boxes():
    # two boxes on the same slot: the later one is held; the earlier is gone from the ignore set
    a, b = [60.0, 159.0, 141.0, 241.0], [62.0, 160.0, 143.0, 242.0]
    asg = _build(_t([a, b], [0, 2]))
    assert asg.winner[0, 1].sum() == 2 and not asg.winner[0, 0].any()
    assert asg.held[0].tolist() == [[False, False], [True, True]]


def test_collision_class_vector_keeps_both_classes():
    # Classes 0 and 2 on one slot: the class target is (1, 0, 1) — check through the loss with class
    # logits 0 except channel 1 = 2: BCE(2, 0) = log(1 + e²), plus 2 · log 2.
    crit = YOLOv4Loss(3, anchors=((32, 32), (64, 64), (16, 16)), anchor_masks=((0, 1, 2),), strides=(32,))
    preds = [torch.zeros(1, 3 * 8, 2, 2, dtype=torch.float64)]
    preds[0][0, 6, 0, 0] = 2.0
    out = crit(preds, [_t([[4, 0, 36, 32], [5, 0, 37, 32]], [0, 2])])
    assert out.components["cls"].item() == pytest.approx(2 * LOG2 + math.log1p(math.e**2), rel=1e-12)


def test_floor_centre_option():
    # (x1 + x2) // 2: a box 0..31 has centre 15 instead of 15.5; 63.. 96 → 79 (cell 2 at stride 32
    # either way), and the target box moves by half a pixel
    asg = _build(_t([[63.0, 0.0, 96.0, 31.0]], [0]), floor_centre=True)
    assert asg.boxes[0, 0].tolist() == [62.5, -0.5, 95.5, 30.5]


def test_builder_rejects_centre_outside():
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[0\].*centre outside"):
        _build(_t([[-30.0, 0.0, 10.0, 10.0]], [0]))


# --------------------------------------------------------------------------------------------------
# Equivalence with the loop port
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "num_classes", "preset", "kw"),
    [
        ((416, 416), 80, "tiny", {}),
        ((192, 256), 4, "tiny", {"label_smoothing": 0.1}),
        ((128, 128), 3, "tiny", {"normalize": False, "floor_centre": True}),
        ((256, 256), 5, "yolov4", {}),
        ((128, 192), 3, "yolov4", {"ignore_thresh": 0.3}),
    ],
)
def test_matches_loop_port(size, num_classes, preset, kw):
    gen = torch.Generator().manual_seed(sum(size) + num_classes)
    b = 3
    anchors, masks, strides = (
        (TINY, TINY_MASKS, (32, 16)) if preset == "tiny" else (FULL, FULL_MASKS, (32, 16, 8))
    )
    preds = [
        torch.randn(b, 3 * (5 + num_classes), size[0] // s, size[1] // s, generator=gen, dtype=torch.float64)
        for s in strides
    ]
    targets = random_targets(gen, b, size, 15, num_classes)
    targets[1] = EMPTY
    out = YOLOv4Loss(num_classes, preset, **kw)(preds, targets)
    ref = ref_loss(preds, targets, num_classes, anchors, masks, strides, **kw)
    # CIoU eps placement: iou_xyxy adds eps = 1e-7 (pixels²) where nets/ious.py takes max(·, 1e-7)
    torch.testing.assert_close(out.total, ref, rtol=1e-8, atol=0)


# --------------------------------------------------------------------------------------------------
# Gradients, degenerate and bad input
# --------------------------------------------------------------------------------------------------


def test_gradients_only_into_named_channels():
    gen = torch.Generator().manual_seed(11)
    c = 3
    preds = [
        torch.randn(2, 3 * (5 + c), g, g, generator=gen, dtype=torch.float64).requires_grad_() for g in (4, 8)
    ]
    targets = random_targets(gen, 2, (128, 128), 6, c)
    YOLOv4Loss(c)(preds, targets).total.backward()
    pt = pad_targets(targets, c, dtype=torch.float64)
    asg = build_yolov4_targets(
        pt.boxes, pt.mask, torch.as_tensor(TINY), TINY_MASKS, [(4, 4), (8, 8)], (128, 128)
    )
    for s, p in enumerate(preds):
        g = p.grad.view(2, 3, 5 + c, *p.shape[2:]).permute(0, 1, 3, 4, 2)
        resp = asg.responsible[s]
        assert torch.equal((g[..., 0:4] != 0).any(-1), resp)
        assert torch.equal((g[..., 5:] != 0).any(-1), resp)
        assert (g[..., 4][resp] != 0).all()


def test_gradcheck_tiny():
    # CIoU's α is held constant in the gradient (CIoU paper), so gradcheck uses DIoU; the rest of the
    # graph is the same
    gen = torch.Generator().manual_seed(13)
    preds = [torch.randn(2, 3 * 7, g, g, generator=gen, dtype=torch.float64).requires_grad_() for g in (2, 4)]
    targets = [
        _t([[3.0, 4.0, 40.0, 50.0], [1.0, 1.0, 26.0, 30.0]], [0, 1]),
        _t([[10.0, 2.0, 60.0, 52.0]], [1]),
    ]
    crit = YOLOv4Loss(2, iou_kind="diou", label_smoothing=0.1)
    assert torch.autograd.gradcheck(lambda *p: crit(list(p), targets).total, preds, fast_mode=True)


def test_empty_images_and_half_precision():
    gen = torch.Generator().manual_seed(17)
    preds = [torch.randn(2, 3 * 8, g, g, generator=gen).requires_grad_() for g in (2, 4)]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out = YOLOv4Loss(3)(preds, [empty, empty])
    out.total.backward()
    # only background confidence remains, every prediction counted; N = 2 scales × max(0, 1)
    obj = sum(torch.nn.functional.softplus(p.view(2, 3, 8, *p.shape[2:])[:, :, 4]).sum() for p in preds) / 2
    torch.testing.assert_close(out.total, obj)
    assert all(torch.isfinite(p.grad).all() for p in preds)
    half = [p.detach().half().requires_grad_() for p in preds]
    out = YOLOv4Loss(3)(
        half, [empty, {"boxes": torch.tensor([[2.0, 3.0, 30.0, 40.0]]), "labels": torch.tensor([2])}]
    )
    out.total.backward()
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    assert all(torch.isfinite(p.grad).all() for p in half)


def test_bad_input():
    crit = YOLOv4Loss(2)
    preds = [torch.zeros(1, 21, g, g) for g in (2, 4)]
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[1\].*zero or negative"):
        crit(
            preds,
            [
                {
                    "boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0], [5.0, 5.0, 9.0, 5.0]]),
                    "labels": torch.tensor([0, 1]),
                }
            ],
        )
    with pytest.raises(ValueError, match="strides and grids disagree"):
        crit([torch.zeros(1, 21, 2, 2), torch.zeros(1, 21, 2, 2)], [EMPTY])
    with pytest.raises(ValueError, match="preset"):
        YOLOv4Loss(2, "v9")
    with pytest.raises(ValueError, match="anchor_masks"):
        YOLOv4Loss(2, anchor_masks=((0, 1, 2), (3, 4)))
    with pytest.raises(ValueError, match=r"anchor_masks\[1\]"):
        YOLOv4Loss(2, anchor_masks=((0, 1, 2), (3, 4, 6)))
    with pytest.raises(ValueError, match="ignore_thresh"):
        YOLOv4Loss(2, ignore_thresh=-0.1)


def test_gradients_match_loop_port_except_ciou_alpha():
    # Objectness and class gradients agree with TensorFlow's; the box channels differ only by the
    # derivative of CIoU's α, which detloss holds constant.
    gen = torch.Generator().manual_seed(23)
    c = 4
    preds = [
        torch.randn(2, 3 * (5 + c), g, g, generator=gen, dtype=torch.float64).requires_grad_() for g in (4, 8)
    ]
    targets = random_targets(gen, 2, (128, 128), 10, c)
    ours = torch.autograd.grad(YOLOv4Loss(c)(preds, targets).total, preds)
    ref = torch.autograd.grad(ref_loss(preds, targets, c), preds)
    for g1, g2 in zip(ours, ref, strict=True):
        g1, g2 = (g.view(2, 3, 5 + c, *g.shape[2:]) for g in (g1, g2))
        torch.testing.assert_close(g1[:, :, 4:], g2[:, :, 4:], rtol=1e-9, atol=1e-12)
    # the port with α detached (as the CIoU paper prescribes) agrees on every channel
    ref = torch.autograd.grad(ref_loss(preds, targets, c, alpha_grad=False), preds)
    for g1, g2 in zip(ours, ref, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-12)


def test_builder_best_anchor_tie_takes_the_first():
    # 14×14 box vs anchors 20×10 and 10×20: inter 140, union 196 + 200 − 140 = 256 for both → tie → 0
    pt = pad_targets([_t([[10.0, 10.0, 24.0, 24.0]], [0])], 1, dtype=torch.float64)
    anchors = torch.tensor([[20.0, 10.0], [10.0, 20.0], [50.0, 50.0]], dtype=torch.float64)
    asg = build_yolov4_targets(pt.boxes, pt.mask, anchors, [[0, 1, 2]], [(2, 2)], (64, 64))
    assert asg.assigned[0, 0, 0].tolist() == [True, False, False]
