"""SSDLoss against a naive per-image loop port of SSD.TensorFlow and hand calculations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from detloss.assign import (
    PRIOR_IGNORED,
    PRIOR_NEGATIVE,
    PaddedTargets,
    hard_negative_mask,
    match_priors,
    pad_targets,
)
from detloss.boxes import convert
from detloss.criteria import SSDLoss, l2_weight_decay
from tests.reference.ssd import ref_loss, ref_match

D = torch.float64


def ssd_priors(feature_maps, steps, min_sizes, max_sizes, aspect_ratios, image_size):
    """Standard SSD prior boxes (cxcywh in [0, 1]): per cell, the min size, sqrt(min·max), and
    each aspect ratio r and 1/r of the min size (the ssd.pytorch PriorBox layout)."""
    out = []
    for k, f in enumerate(feature_maps):
        for i, j in itertools.product(range(f), repeat=2):
            fk = image_size / steps[k]
            cx, cy = (j + 0.5) / fk, (i + 0.5) / fk
            s = min_sizes[k] / image_size
            out.append([cx, cy, s, s])
            sp = math.sqrt(s * (max_sizes[k] / image_size))
            out.append([cx, cy, sp, sp])
            for ar in aspect_ratios[k]:
                out.append([cx, cy, s * math.sqrt(ar), s / math.sqrt(ar)])
                out.append([cx, cy, s / math.sqrt(ar), s * math.sqrt(ar)])
    return torch.tensor(out, dtype=D)


def ssd300_priors():
    return ssd_priors(
        [38, 19, 10, 5, 3, 1],
        [8, 16, 32, 64, 100, 300],
        [30, 60, 111, 162, 213, 264],
        [60, 111, 162, 213, 264, 315],
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        300,
    )


def small_priors():
    return ssd_priors([4, 2], [0.25, 0.5], [0.2, 0.45], [0.45, 0.8], [[2], [2]], 1.0)


def random_targets(gen, bs, nc, max_boxes=6):
    out = []
    for i in range(bs):
        n = 0 if i == 1 else int(torch.randint(1, max_boxes + 1, (1,), generator=gen))
        c = torch.rand(n, 2, generator=gen, dtype=D)
        wh = torch.rand(n, 2, generator=gen, dtype=D) * 0.6 + 0.02
        if n >= 3:  # two boxes with the same best prior: a forced collision
            c[2], wh[2] = c[0] + 0.01, wh[0] * 0.97
        out.append(
            {
                "boxes": torch.cat((c - wh / 2, c + wh / 2), 1),
                "labels": torch.randint(0, nc, (n,), generator=gen),
            }
        )
    return out


@pytest.mark.parametrize(
    "seed, kwargs",
    [
        (0, {}),
        (1, {"ignore_threshold": 0.3}),
        (2, {"match_threshold": 0.4, "neg_pos_ratio": 2.5, "sigma": 2.0}),
        (3, {"normalize": "positives"}),
        (4, {"ignore_threshold": 0.2, "count_ignored_as_positive": True}),
    ],
)
def test_matches_loop_port_of_original(seed, kwargs):
    gen = torch.Generator().manual_seed(seed)
    priors, nc, bs = small_priors(), 4, 4
    targets = random_targets(gen, bs, nc)
    loc = torch.randn(bs, len(priors), 4, generator=gen, dtype=D, requires_grad=True)
    conf = torch.randn(bs, len(priors), nc + 1, generator=gen, dtype=D, requires_grad=True)
    crit = SSDLoss(nc, priors, **kwargs)
    out = crit((loc, conf), targets)
    grads = torch.autograd.grad(out.total, (loc, conf))
    ref_kwargs = {"match_threshold": "thr", "neg_pos_ratio": "ratio", "ignore_threshold": "ignore"}
    ref_conf, ref_loc, _ = ref_loss(
        loc, conf, targets, priors, **{ref_kwargs.get(k, k): v for k, v in kwargs.items()}
    )
    torch.testing.assert_close(out.components["conf"], ref_conf, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.components["loc"], ref_loc, rtol=1e-10, atol=0)
    ref_grads = torch.autograd.grad(ref_conf + ref_loc, (loc, conf))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-14)


def test_matching_equals_loop_port_on_ssd300_priors():
    gen = torch.Generator().manual_seed(5)
    priors = ssd300_priors()
    assert priors.shape == (8732, 4)
    targets = random_targets(gen, 3, 20, max_boxes=4)
    pt = pad_targets(targets, 20, dtype=D)
    got = match_priors(pt, convert(priors, "cxcywh", "xyxy"), 0.5, 0.4)
    pri = convert(priors, "cxcywh", "xyxy").tolist()
    for i, t in enumerate(targets):
        assert got[i].tolist() == ref_match(t["boxes"].tolist(), pri, 0.5, 0.4)


def _targets(*boxes, labels=None):
    b = torch.tensor(boxes, dtype=D).view(-1, 4)
    lab = torch.zeros(len(b), dtype=torch.long) if labels is None else torch.tensor(labels)
    return pad_targets([{"boxes": b, "labels": lab}], 10, dtype=D)


PRI = torch.tensor(
    [[0, 0, 2, 2], [1, 0, 3, 2], [0, 0, 4, 4], [10, 10, 12, 12], [0, 0, 2, 2]], dtype=D
)  # xyxy; prior 4 duplicates prior 0


def test_threshold_and_first_on_ties():
    # box = prior 0 = prior 4: IoU 1 with both (positive by threshold); prior 1: I = 2, U = 6 → 1/3;
    # prior 2: 4/16 = 0.25; prior 3: 0
    m = match_priors(_targets([0, 0, 2, 2]), PRI, 0.5)
    assert m.tolist() == [[0, PRIOR_NEGATIVE, PRIOR_NEGATIVE, PRIOR_NEGATIVE, 0]]
    # threshold inclusive: prior 1 has IoU exactly 1/3 with this box
    m = match_priors(_targets([0, 0, 2, 2]), PRI, 1 / 3)
    assert m[0, 1].item() == 0
    # two identical boxes: every prior takes the first (first on ties); forced: both force prior 0,
    # equal IoU → the first box
    m = match_priors(_targets([0, 0, 2, 2], [0, 0, 2, 2]), PRI, 0.5)
    assert m.tolist() == [[0, PRIOR_NEGATIVE, PRIOR_NEGATIVE, PRIOR_NEGATIVE, 0]]


def test_forced_best_prior_below_threshold():
    # box (1, 1, 3, 3): IoU with prior 0: 1/7, prior 1: I = 2 (x 1..3, y 1..2), U = 6 → 1/3,
    # prior 2: 4/16 = 1/4 → best prior 1, forced although 1/3 < 0.5
    m = match_priors(_targets([1, 1, 3, 3]), PRI, 0.5)
    assert m.tolist() == [[PRIOR_NEGATIVE, 0, PRIOR_NEGATIVE, PRIOR_NEGATIVE, PRIOR_NEGATIVE]]


def test_forced_collision_highest_iou_wins():
    # box 0 (0.9, 0, 3, 2): IoU prior 1 = 2·2/(4.2 + 4 − 4) ≈ 0.95 (best), prior 0: 2.2/(4.2+4−2.2)
    # box 1 (1, 0, 3.5, 2.5): IoU prior 1 = 4/6.25 = 0.64 (best, prior 2: 6.25/16 ≈ 0.39)
    # both force prior 1: box 0 has the higher IoU there and wins; box 1 is matched nowhere else
    m = match_priors(_targets([0.9, 0, 3, 2], [1, 0, 3.5, 2.5]), PRI, 0.7)
    assert m.tolist() == [[PRIOR_NEGATIVE, 0, PRIOR_NEGATIVE, PRIOR_NEGATIVE, PRIOR_NEGATIVE]]
    # reversed box order: still the box with the higher IoU (now index 1)
    m = match_priors(_targets([1, 0, 3.5, 2.5], [0.9, 0, 3, 2]), PRI, 0.7)
    assert m[0, 1].item() == 1


def test_forced_overrides_threshold_match_of_other_box():
    # prior 2 (0, 0, 4, 4): box 0 = (0, 0, 4, 3.9) matches it by threshold (IoU 0.975);
    # box 1 = (0, 0, 4, 4.1) also has its best prior at 2 (IoU 16/16.4 ≈ 0.9756 > 0.975):
    # both force prior 2, box 1 (higher IoU) wins; box 0's threshold match there is replaced
    m = match_priors(_targets([0, 0, 4, 3.9], [0, 0, 4, 4.1]), PRI, 0.5)
    assert m[0, 2].item() == 1


def test_box_overlapping_nothing_forces_prior_zero():
    # all IoUs 0: argmax (first on ties) picks prior 0, as tf.argmax does in the original
    m = match_priors(_targets([50, 50, 60, 60]), PRI, 0.5)
    assert m.tolist() == [[0, PRIOR_NEGATIVE, PRIOR_NEGATIVE, PRIOR_NEGATIVE, PRIOR_NEGATIVE]]


def test_ignore_band():
    # box (0, 0, 2, 2): prior 1 IoU 1/3, prior 2 IoU 1/4, prior 3: 0
    m = match_priors(_targets([0, 0, 2, 2]), PRI, 0.5, ignore_threshold=0.3)
    assert m.tolist() == [[0, PRIOR_IGNORED, PRIOR_NEGATIVE, PRIOR_NEGATIVE, 0]]
    m = match_priors(_targets([0, 0, 2, 2]), PRI, 0.5, ignore_threshold=0.25)  # inclusive lower end
    assert m.tolist() == [[0, PRIOR_IGNORED, PRIOR_IGNORED, PRIOR_NEGATIVE, 0]]
    # an image without boxes has only negatives, even with ignore_threshold 0
    empty = pad_targets(
        [
            {"boxes": torch.zeros(0, 4, dtype=D), "labels": torch.zeros(0, dtype=torch.long)},
            {"boxes": torch.tensor([[0, 0, 2, 2.0]], dtype=D), "labels": torch.tensor([1])},
        ],
        10,
        dtype=D,
    )
    m = match_priors(empty, PRI, 0.5, ignore_threshold=0.0)
    assert m[0].tolist() == [PRIOR_NEGATIVE] * 5
    assert m[1].tolist() == [0, PRIOR_IGNORED, PRIOR_IGNORED, PRIOR_IGNORED, 0]


def test_hard_negative_counts_and_order():
    bg = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.05, 0.7],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        ]
    )
    pos = torch.zeros(3, 8, dtype=torch.bool)
    pos[0, 6] = True  # one positive: keep 3 negatives — 0.1, 0.2, 0.3 (0.05 is the positive)
    pos[2, [0, 1]] = True  # two positives, 6 negatives: keep min(6, 6) = 6; row 1 has none → 0
    neg = ~pos
    neg[0, 3] = False  # ignored prior: neither positive nor negative
    keep = hard_negative_mask(bg, pos, neg, 3)
    assert keep[0].nonzero().flatten().tolist() == [1, 2, 4]  # 0.3 was ignored, so 0.5 next
    assert keep[1].sum() == 0
    assert keep[2].nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7]
    # fractional ratio: floor(1.5 · 1) = 1 negative; ties: the lower prior index first
    keep = hard_negative_mask(bg[2:], pos[:1], ~pos[:1], 1.5)
    assert keep.nonzero()[:, 1].tolist() == [0]


def test_hand_computed_one_box():
    """Three priors, one box matched to prior 0 (IoU 0.81 ≥ 0.5), two negatives.

    prior 0: cxcywh (0.5, 0.5, 0.2, 0.2); box: centre (0.51, 0.5), size (0.2, 0.22)
    target: ((0.51 − 0.5)/0.2/0.1, 0, log(1)/0.2, log(1.1)/0.2) = (0.5, 0, 0, 5·log 1.1)
    k = min(3·1, 2) = 2 negatives: both kept. conf = 4 · mean of the three CEs."""
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]], dtype=D)
    crit = SSDLoss(2, priors)
    box = torch.tensor([[0.41, 0.39, 0.61, 0.61]], dtype=D)
    loc = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]], dtype=D)
    conf = torch.tensor([[[0.1, 0.2, 0.7], [1.0, 0.0, -1.0], [0.0, 0.5, 0.0]]], dtype=D)
    out = crit((loc, conf), [{"boxes": box, "labels": torch.tensor([1])}])

    def ce(x, c):
        return math.log(sum(math.exp(v) for v in x)) - x[c]

    conf_expect = 4 * (ce([0.1, 0.2, 0.7], 2) + ce([1.0, 0.0, -1.0], 0) + ce([0.0, 0.5, 0.0], 0)) / 3
    t = [0.5, 0.0, 0.0, 5 * math.log(1.1)]
    loc_expect = sum(0.5 * d * d if abs(d) < 1 else abs(d) - 0.5 for d in (0 - v for v in t))
    assert out.components["conf"].item() == pytest.approx(conf_expect, rel=1e-9)
    assert out.components["loc"].item() == pytest.approx(loc_expect, rel=1e-9)
    assert out.total.item() == pytest.approx(conf_expect + loc_expect, rel=1e-9)
    # the paper's 1/N with N = 1: the CEs summed, no ratio factor
    crit = SSDLoss(2, priors, normalize="positives")
    out = crit((loc, conf), [{"boxes": box, "labels": torch.tensor([1])}])
    assert out.components["conf"].item() == pytest.approx(conf_expect * 3 / 4, rel=1e-9)


def test_gradcheck():
    gen = torch.Generator().manual_seed(7)
    priors = small_priors()[:12]
    crit = SSDLoss(2, priors, sigma=1.5)
    tg = random_targets(gen, 2, 2, max_boxes=2)
    loc = torch.randn(2, 12, 4, generator=gen, dtype=D, requires_grad=True)
    conf = torch.randn(2, 12, 3, generator=gen, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: crit((a, b), tg).total, (loc, conf), fast_mode=True)


def test_no_positives_and_empty_batch_are_finite():
    priors = small_priors()
    crit = SSDLoss(3, priors)
    empty = {"boxes": torch.zeros(0, 4, dtype=D), "labels": torch.zeros(0, dtype=torch.long)}
    loc = torch.randn(2, len(priors), 4, dtype=D, requires_grad=True)
    conf = torch.randn(2, len(priors), 4, dtype=D, requires_grad=True)
    for normalize in ("mean", "positives"):
        out = SSDLoss(3, priors, normalize=normalize)((loc, conf), [empty, empty])
        out.total.backward()
        assert out.total.item() == 0  # no positives → no kept negatives → both terms 0
        assert torch.isfinite(loc.grad).all() and torch.isfinite(conf.grad).all()
    out = crit((loc[:0], conf[:0]), [])
    assert out.total.item() == 0


def test_half_precision():
    gen = torch.Generator().manual_seed(8)
    priors = small_priors().float()
    tg = [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in random_targets(gen, 2, 3)]
    loc = torch.randn(2, len(priors), 4).half().requires_grad_()
    conf = torch.randn(2, len(priors), 4).half().requires_grad_()
    out = SSDLoss(3, priors)((loc, conf), tg)
    out.total.backward()
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    assert torch.isfinite(loc.grad.float()).all() and torch.isfinite(conf.grad.float()).all()


def test_bad_inputs():
    priors = small_priors()
    crit = SSDLoss(3, priors)
    loc, conf = torch.zeros(2, len(priors), 4, dtype=D), torch.zeros(2, len(priors), 4, dtype=D)
    ok = {"boxes": torch.tensor([[0.1, 0.1, 0.3, 0.3]], dtype=D), "labels": torch.tensor([2])}
    bad = {
        "boxes": torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.5, 0.7]], dtype=D),
        "labels": torch.tensor([0, 1]),
    }
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[1\]"):
        crit((loc, conf), [ok, bad])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        crit((loc, conf), [{"boxes": ok["boxes"], "labels": torch.tensor([3])}, ok])
    with pytest.raises(ValueError, match="conf must have shape"):
        crit((loc, conf[..., :3]), [ok, ok])
    with pytest.raises(ValueError, match=r"priors\[1\]"):
        SSDLoss(3, torch.tensor([[0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.0, 0.1]]))
    with pytest.raises(ValueError, match="ignore_threshold"):
        SSDLoss(3, priors, ignore_threshold=0.6)


# ----------------------------------------------------------------------------------------------
# Gains, per-image shares, padded targets
# ----------------------------------------------------------------------------------------------


def _inputs(seed, bs=4, nc=4):
    gen = torch.Generator().manual_seed(seed)
    priors = small_priors()
    targets = random_targets(gen, bs, nc)  # image 1 has no targets
    loc = torch.randn(bs, len(priors), 4, generator=gen, dtype=D, requires_grad=True)
    conf = torch.randn(bs, len(priors), nc + 1, generator=gen, dtype=D, requires_grad=True)
    return priors, targets, loc, conf


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"normalize": "positives"}, {"ignore_threshold": 0.2, "count_ignored_as_positive": True}],
)
def test_per_image_shares_match_the_loop_port(kwargs):
    priors, targets, loc, conf = _inputs(11)
    out = SSDLoss(4, priors, **kwargs)((loc, conf), targets)
    ref_kwargs = {("ignore" if k == "ignore_threshold" else k): v for k, v in kwargs.items()}
    _, _, shares = ref_loss(loc, conf, targets, priors, **ref_kwargs)
    assert out.per_image.shape == (4,)
    torch.testing.assert_close(out.per_image, torch.stack(shares), rtol=1e-10, atol=0)
    # an image without targets has no positives, so it keeps no negatives: its share is exactly 0
    assert targets[1]["boxes"].shape[0] == 0 and out.per_image[1].item() == 0.0
    assert (out.per_image[[0, 2, 3]] > 0).all()
    torch.testing.assert_close(out.per_image.sum(), out.total, rtol=1e-10, atol=0)


def test_per_image_of_a_batch_of_one_is_the_total():
    priors, targets, loc, conf = _inputs(12, bs=1)
    out = SSDLoss(4, priors)((loc, conf), targets)
    assert out.per_image.shape == (1,) and out.total.item() > 0
    torch.testing.assert_close(out.per_image[0], out.total, rtol=1e-14, atol=0)


@pytest.mark.parametrize("normalize", ["mean", "positives"])
def test_per_image_gradient_is_the_image_part_of_the_total_gradient(normalize):
    priors, targets, loc, conf = _inputs(13)
    out = SSDLoss(4, priors, normalize=normalize)((loc, conf), targets)
    total_grads = torch.autograd.grad(out.total, (loc, conf), retain_graph=True)
    summed = [torch.zeros_like(loc), torch.zeros_like(conf)]
    for b in range(4):
        grads = torch.autograd.grad(out.per_image[b], (loc, conf), retain_graph=True)
        for g, acc in zip(grads, summed, strict=True):
            others = torch.arange(4) != b
            assert (g[others] == 0).all()
            acc += g
        if b != 1:  # image 1 has no targets: no positives, no kept negatives, no gradient
            assert grads[1][b].abs().sum() > 0
    for got, want in zip(summed, total_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_gains_scale_their_components():
    priors, targets, loc, conf = _inputs(14)
    base = SSDLoss(4, priors)((loc, conf), targets)
    out = SSDLoss(4, priors, loc=2.5, conf=0.5)((loc, conf), targets)
    torch.testing.assert_close(out.components["loc"], 2.5 * base.components["loc"], rtol=1e-12, atol=0)
    torch.testing.assert_close(out.components["conf"], 0.5 * base.components["conf"], rtol=1e-12, atol=0)
    torch.testing.assert_close(out.total, out.components["loc"] + out.components["conf"], rtol=1e-14, atol=0)
    torch.testing.assert_close(out.per_image.sum(), out.total, rtol=1e-10, atol=0)
    # a gain of 0 drops its component (0, not NaN), also with nothing to normalise by
    empty = [{"boxes": torch.zeros(0, 4, dtype=D), "labels": torch.zeros(0, dtype=torch.long)}] * 4
    for tg in (targets, empty):
        zero = SSDLoss(4, priors, loc=0.0)((loc, conf), tg)
        assert zero.components["loc"].item() == 0.0 and torch.isfinite(zero.per_image).all()
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="conf must be a finite number >= 0"):
            SSDLoss(4, priors, conf=bad)


def test_arguments_after_priors_are_keyword_only():
    with pytest.raises(TypeError):
        SSDLoss(4, small_priors(), (0.1, 0.1, 0.2, 0.2))


def _padded_like(targets, permute):
    """The targets as PaddedTargets; with ``permute`` the real rows are not first (mask read, not counts)
    and the labels int32 (any integer dtype)."""
    pt = pad_targets(targets, 4, dtype=D)
    if not permute:
        return pt
    order = torch.arange(pt.mask.shape[1]).flip(0)
    return PaddedTargets(pt.boxes[:, order], pt.labels[:, order].int(), pt.mask[:, order])


@pytest.mark.parametrize("permute", [False, True])
def test_padded_targets_give_the_list_result(permute):
    priors, targets, loc, conf = _inputs(15)
    crit = SSDLoss(4, priors, ignore_threshold=0.3)
    want = crit((loc, conf), targets)
    got = crit((loc, conf), _padded_like(targets, permute))
    # the same matching: box indices differ with the permutation, the matched boxes do not
    torch.testing.assert_close(got.total, want.total, rtol=1e-14, atol=0)
    torch.testing.assert_close(got.per_image, want.per_image, rtol=1e-14, atol=0)
    for k in ("loc", "conf"):
        torch.testing.assert_close(got.components[k], want.components[k], rtol=1e-14, atol=0)
    g_want = torch.autograd.grad(want.total, (loc, conf))
    g_got = torch.autograd.grad(got.total, (loc, conf))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_padded_targets_with_wrong_shapes_are_refused():
    priors, targets, loc, conf = _inputs(16)
    pt = pad_targets(targets, 4, dtype=D)
    crit = SSDLoss(4, priors)
    with pytest.raises(ValueError, match=r"loc must have shape \(B=3, P=80, 4\)"):  # B from the targets
        crit((loc, conf), PaddedTargets(pt.boxes[:3], pt.labels[:3], pt.mask[:3]))
    with pytest.raises(ValueError, match=r"targets.boxes must have shape \(B=4, M, 4\)"):
        crit((loc, conf), PaddedTargets(pt.boxes[..., :3], pt.labels, pt.mask))
    with pytest.raises(TypeError, match="targets.mask must be a bool tensor"):
        crit((loc, conf), PaddedTargets(pt.boxes, pt.labels, pt.mask.long()))
    with pytest.raises(ValueError, match="targets.labels and targets.mask"):
        crit((loc, conf), PaddedTargets(pt.boxes, pt.labels[:, :1], pt.mask))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1)
        self.conv1_bn = nn.BatchNorm2d(2)  # skipped by name ("_bn") and type
        self.norm = nn.BatchNorm2d(2)  # skipped by type
        self.conv4_3_scale = nn.Parameter(torch.full((2,), 20.0))


def test_l2_weight_decay():
    net = _Net()
    with torch.no_grad():
        net.conv1.weight.fill_(2.0)  # 2 weights: ½·(4 + 4) = 4
        net.conv1.bias.fill_(1.0)  # ½·2 = 1
    # conv4_3_scale: 0.1 · ½ · (400 + 400) = 40
    assert l2_weight_decay(net).item() == pytest.approx(45.0)
    net.conv1.bias.requires_grad_(False)  # frozen parameters are not regularised
    assert l2_weight_decay(net).item() == pytest.approx(44.0)
    assert l2_weight_decay(nn.ReLU()).item() == 0


def test_reduce_across_ranks_single_process_group(tmp_path):
    """With one rank the global counts equal the local ones: same loss as without the option."""
    import torch.distributed as dist

    gen = torch.Generator().manual_seed(9)
    priors = small_priors()
    tg = random_targets(gen, 3, 3)
    loc = torch.randn(3, len(priors), 4, generator=gen, dtype=D)
    conf = torch.randn(3, len(priors), 4, generator=gen, dtype=D)
    expect = SSDLoss(3, priors)((loc, conf), tg).total
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        for normalize in ("mean", "positives"):
            crit = SSDLoss(3, priors, normalize=normalize, reduce_across_ranks=True)
            ref = SSDLoss(3, priors, normalize=normalize)((loc, conf), tg).total
            torch.testing.assert_close(crit((loc, conf), tg).total, ref)
        torch.testing.assert_close(
            SSDLoss(3, priors, reduce_across_ranks=True)((loc, conf), tg).total, expect
        )
    finally:
        dist.destroy_process_group()
