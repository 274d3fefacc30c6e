"""DETRLoss against a plain per-layer, per-image, per-query loop port of the three presets.

The port (tests/reference/detr.py) is written from the preset table of docs/detr.md (costs, class
losses, normalisations, defaults of facebookresearch/detr, fundamentalvision/Deformable-DETR and
lyuwenyu/RT-DETR, as transformers' losses compute them) with scalar formulas and scipy's solver on
each image's cost block; it shares no code with detloss. On top: a
hand-computed case, gradcheck in float64, images without targets, the sync and op budget, and the
input checks.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import detloss.assign.hungarian as hungarian
from detloss.assign import PaddedTargets, pad_targets
from detloss.criteria import DETRLoss
from detloss.profiling import DispatchCounter
from tests.reference.detr import TABLE, loop_port

pytest.importorskip("scipy.optimize")  # detloss[detr]: the loop port solves with scipy

PRESETS = ("detr", "deformable", "rtdetr")
# ----------------------------------------------------------------------------- inputs
def make(preset, L=2, B=3, Q=6, C=3, counts=(2, 0, 4), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = C + 1 if preset == "detr" else C
    logits = (torch.randn(L, B, Q, width, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    boxes = (
        torch.sigmoid(torch.randn(L, B, Q, 4, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    )
    targets = []
    for n in counts:
        ctr = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.4 + 0.05
        targets.append({"boxes": torch.cat((ctr, wh), -1), "labels": torch.randint(0, C, (n,), generator=g)})
    return logits, boxes, targets


def rel(a, b):
    return abs(float(a.detach()) - b) / max(abs(b), 1e-300)


# ----------------------------------------------------------------------------- the port, values
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("preset", PRESETS)
def test_matches_the_loop_port(preset, seed):
    logits, boxes, targets = make(preset, seed=seed)
    out = DETRLoss(3, preset)(logits, boxes, targets)
    total, layers, _ = loop_port(preset, logits, boxes, targets, 3)
    assert rel(out.total, total) < 1e-12
    assert len(out.layers) == len(layers)
    for ours, ref in zip(out.layers, layers, strict=True):
        for k, r in zip(("cls", "bbox", "giou"), ref, strict=True):
            assert rel(ours[k], r) < 1e-12, (k, float(ours[k]), r)
    for i, k in enumerate(("cls", "bbox", "giou")):
        assert rel(out.components[k], sum(layer[i] for layer in layers)) < 1e-12


@pytest.mark.parametrize("preset", PRESETS)
def test_options_reach_the_port(preset):
    # non-default costs and weights change the matching and the sums alike
    logits, boxes, targets = make(preset, Q=5, counts=(3, 1, 2), seed=4)
    kw = {"eos_coef": 0.3, "cost_alpha": 0.4, "cost_gamma": 1.5, "focal_gamma": 1.0}
    out = DETRLoss(3, preset, **kw)(logits, boxes, targets)
    total, _, _ = loop_port(preset, logits, boxes, targets, 3, **kw)
    assert rel(out.total, total) < 1e-12
    scaled = DETRLoss(3, preset, cls=0.5, bbox=1.0, giou=3.0, **kw)(
        logits, boxes, targets
    )
    (_, _, _), (cw, bw, gw), _ = TABLE[preset]
    for k, w, w0 in (("cls", 0.5, cw), ("bbox", 1.0, bw), ("giou", 3.0, gw)):
        assert rel(scaled.components[k], float(out.components[k].detach()) * w / w0) < 1e-12


def test_a_hand_computed_case():
    # one image, two queries, one target of class 0 exactly at query 1's box; detr preset, C = 1.
    # query 0 has the higher class probability, but its box is far: cost(q0) = 5·1.6 − 0.9 − 2·giou0,
    # cost(q1) = 0 − p1 − 2 → query 1 is matched; bbox and giou losses are 0.
    tgt = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64), "labels": torch.tensor([0])}]
    boxes = torch.tensor([[[[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2]]]], dtype=torch.float64)
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)  # (L, B, Q, C + 1)
    out = DETRLoss(1, "detr")(logits, boxes, tgt)
    assert float(out.components["bbox"]) == 0.0 and abs(float(out.components["giou"])) < 1e-15
    # CE: query 1 → class 0 with weight 1: log 2; query 0 → no-object (weight 0.1): log(1 + e²) − 0
    ce1, ce0 = math.log(2.0), math.log1p(math.exp(2.0))
    assert float(out.components["cls"]) == pytest.approx((ce1 + 0.1 * ce0) / 1.1, rel=1e-14)


# ----------------------------------------------------------------------------- per-image shares
@pytest.mark.parametrize("preset", PRESETS)
def test_per_image_shares_match_the_loop_port(preset):
    logits, boxes, targets = make(preset, seed=20)  # image 1 has no targets
    out = DETRLoss(3, preset)(logits, boxes, targets)
    _, _, shares = loop_port(preset, logits, boxes, targets, 3)
    assert out.per_image.shape == (3,)
    for got, want in zip(out.per_image, shares, strict=True):
        assert rel(got, want) < 1e-12, (float(got), want)
    # the image without targets: only its queries' no-object (or all-negative) class loss, not 0
    assert len(targets[1]["labels"]) == 0 and shares[1] > 0
    assert rel(out.per_image.sum(), float(out.total.detach())) < 1e-10


def test_per_image_of_a_batch_of_one_is_the_total():
    logits, boxes, targets = make("deformable", B=1, counts=(3,), seed=21)
    out = DETRLoss(3, "deformable")(logits, boxes, targets)
    assert out.per_image.shape == (1,)
    assert rel(out.per_image[0], float(out.total.detach())) < 1e-14


@pytest.mark.parametrize("preset", PRESETS)
def test_per_image_gradient_is_the_image_part_of_the_total_gradient(preset):
    logits, boxes, targets = make(preset, seed=22)
    out = DETRLoss(3, preset)(logits, boxes, targets)
    total_grads = torch.autograd.grad(out.total, (logits, boxes), retain_graph=True)
    summed = [torch.zeros_like(logits), torch.zeros_like(boxes)]
    for b in range(3):
        grads = torch.autograd.grad(out.per_image[b], (logits, boxes), retain_graph=True)
        others = torch.arange(3) != b
        for g, acc in zip(grads, summed, strict=True):
            assert (g[:, others] == 0).all()  # (L, B, …): image b's rows only
            acc += g
        assert grads[0][:, b].abs().sum() > 0  # every image's queries carry a class loss
    assert (summed[1][:, 1] == 0).all()  # image 1 has no targets: no box gradient
    for got, want in zip(summed, total_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- padded targets
def _padded(targets, permute=False):
    """PaddedTargets of the cxcywh targets; with ``permute`` the real rows come last (the mask counts,
    not the row order) and the labels are int32 (any integer dtype)."""
    pt = pad_targets(targets, 3, fmt="cxcywh", dtype=torch.float64)
    if not permute:
        return pt
    order = torch.arange(pt.mask.shape[1]).flip(0)
    return PaddedTargets(pt.boxes[:, order], pt.labels[:, order].int(), pt.mask[:, order])


@pytest.mark.parametrize("permute", [False, True])
@pytest.mark.parametrize("preset", PRESETS)
def test_padded_targets_give_the_list_result(preset, permute):
    logits, boxes, targets = make(preset, seed=23)
    crit = DETRLoss(3, preset)
    want, got = crit(logits, boxes, targets), crit(logits, boxes, _padded(targets, permute))
    torch.testing.assert_close(got.total, want.total, rtol=1e-14, atol=0)
    torch.testing.assert_close(got.per_image, want.per_image, rtol=1e-14, atol=0)
    for a, b in zip(got.layers, want.layers, strict=True):
        for k in ("cls", "bbox", "giou"):
            torch.testing.assert_close(a[k], b[k], rtol=1e-14, atol=0)
    g_got = torch.autograd.grad(got.total, (logits, boxes))
    g_want = torch.autograd.grad(want.total, (logits, boxes))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_padded_targets_mask_travels_with_the_cost(monkeypatch):
    # the host needs each image's real targets: the mask is copied in the cost's one transfer
    calls = []
    original = hungarian.to_host
    monkeypatch.setattr(hungarian, "to_host", lambda *t: calls.append([x.shape for x in t]) or original(*t))
    logits, boxes, targets = make("detr", L=2, B=3, Q=6, counts=(2, 0, 4), dtype=torch.float32, seed=24)
    padded = _padded(targets)
    with DispatchCounter() as c:
        DETRLoss(3, "detr", validate=False)(logits, boxes, padded).total.backward()
    assert c.syncs == 0, c.sync_ops
    assert calls == [[(3, 4), (2, 3, 6, 4)]]


def test_padded_targets_shapes_are_checked():
    logits, boxes, targets = make("detr", seed=25)
    pt = _padded(targets)
    crit = DETRLoss(3, "detr")
    with pytest.raises(ValueError, match=r"targets.boxes must have shape \(B=3, M, 4\), got \(2, 4, 4\)"):
        crit(logits, boxes, PaddedTargets(pt.boxes[:2], pt.labels[:2], pt.mask[:2]))
    with pytest.raises(TypeError, match="targets.labels must be an integer tensor"):
        crit(logits, boxes, PaddedTargets(pt.boxes, pt.labels.double(), pt.mask))


# ----------------------------------------------------------------------------- gains
def test_gain_keywords_are_the_component_keys():
    crit = DETRLoss(3, "rtdetr", cls=0.5, bbox=1.0, giou=3.0)
    assert crit.gains == {"cls": 0.5, "bbox": 1.0, "giou": 3.0}
    assert DETRLoss(3, "rtdetr").gains == {"cls": 1.0, "bbox": 5.0, "giou": 2.0}  # None: the preset's
    for old in ("cls_weight", "bbox_weight", "giou_weight"):
        with pytest.raises(TypeError, match=old):
            DETRLoss(3, **{old: 1.0})
    with pytest.raises(ValueError, match="giou must be a finite number >= 0"):
        DETRLoss(3, giou=-1.0)
    with pytest.raises(ValueError, match="class_cost must be a finite number >= 0"):
        DETRLoss(3, class_cost=float("nan"))


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("preset", ("detr", "deformable"))
def test_gradcheck_float64(preset):
    logits, boxes, targets = make(preset, L=2, B=2, Q=4, C=2, counts=(2, 1), seed=3)
    crit = DETRLoss(2, preset, validate=False)

    def f(lg, bx):
        return crit(lg, bx, targets).total

    assert torch.autograd.gradcheck(f, (logits, boxes), eps=1e-6, atol=1e-7)


def test_gradcheck_float64_rtdetr():
    # RT-DETR's varifocal weight α·p^γ and IoU target are detached (as the reference): gradcheck the
    # class loss w.r.t. the logits with γ = 0 (the weight is then α·(1 − t), constant) and the box
    # losses w.r.t. the boxes
    logits, boxes, targets = make("rtdetr", L=2, B=2, Q=4, C=2, counts=(2, 1), seed=3)
    crit = DETRLoss(2, "rtdetr", focal_gamma=0.0, validate=False)
    assert torch.autograd.gradcheck(
        lambda lg: crit(lg, boxes, targets).components["cls"], (logits,), eps=1e-6
    )

    def box_losses(bx):
        out = crit(logits, bx, targets).components
        return out["bbox"] + out["giou"]

    assert torch.autograd.gradcheck(box_losses, (boxes,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("preset", PRESETS)
def test_images_without_targets(preset):
    for counts in ((0, 0, 0), (0, 2, 0)):
        logits, boxes, targets = make(preset, counts=counts, seed=5)
        out = DETRLoss(3, preset)(logits, boxes, targets)
        out.total.backward()
        assert (
            torch.isfinite(out.total)
            and torch.isfinite(logits.grad).all()
            and torch.isfinite(boxes.grad).all()
        )
        total, _, _ = loop_port(preset, logits, boxes, targets, 3)
        assert rel(out.total, total) < 1e-12
        if not any(counts):
            assert float(out.components["bbox"]) == 0.0 and float(out.components["giou"]) == 0.0
            assert (boxes.grad == 0).all()


def test_more_targets_than_queries():
    # 3 queries, 5 targets: every query matched, two targets left out of the box losses (not of N)
    for preset in PRESETS:
        logits, boxes, targets = make(preset, Q=3, counts=(5, 1, 0), seed=6)
        out = DETRLoss(3, preset)(logits, boxes, targets)
        assert rel(out.total, loop_port(preset, logits, boxes, targets, 3)[0]) < 1e-12


def test_one_layer_three_dim_input():
    logits, boxes, targets = make("deformable", L=1, seed=7)
    crit = DETRLoss(3, "deformable")
    a, b = crit(logits, boxes, targets), crit(logits[0], boxes[0], targets)
    assert len(b.layers) == 1 and torch.equal(a.total, b.total)


@pytest.mark.parametrize("preset", PRESETS)
def test_validate_false_and_reduce_across_ranks_without_a_group_change_nothing(preset):
    logits, boxes, targets = make(preset, seed=8)
    ref = DETRLoss(3, preset)(logits, boxes, targets).total
    assert torch.equal(DETRLoss(3, preset, validate=False)(logits, boxes, targets).total, ref)
    assert torch.equal(DETRLoss(3, preset, reduce_across_ranks=True)(logits, boxes, targets).total, ref)


# ----------------------------------------------------------------------------- one graph, one round trip
@pytest.mark.parametrize("preset", PRESETS)
def test_one_host_round_trip_and_no_other_sync(preset, monkeypatch):
    calls = []
    original = hungarian.to_host
    monkeypatch.setattr(hungarian, "to_host", lambda *ts: calls.append(ts[-1].shape) or original(*ts))
    logits, boxes, targets = make(preset, L=3, B=4, Q=10, counts=(2, 0, 4, 1), dtype=torch.float32, seed=9)
    crit = DETRLoss(3, preset, validate=False)
    with DispatchCounter() as c:
        crit(logits, boxes, targets).total.backward()
    assert c.syncs == 0, c.sync_ops
    assert calls == [(3, 4, 10, 4)]  # every layer's blocks, each image's own targets, in one transfer
    assert c.ops <= 270, c.by_name.most_common(10)  # 217 / 244 / 257 by preset
    l2, b2, t2 = make(preset, L=6, B=8, Q=10, counts=(2, 0, 4, 1) * 2, dtype=torch.float32, seed=9)
    with DispatchCounter() as big:
        crit(l2, b2, t2).total.backward()
    # vectorised over layers and images: twice as many dispatch the same ops (per-layer outputs are views)
    assert big.ops == c.ops, (big.ops, c.ops)
    calls.clear()
    with DispatchCounter() as v:
        DETRLoss(3, preset)(logits, boxes, targets).total.backward()
    assert v.syncs == 1 and len(calls) == 1, v.sync_ops  # validate=True: one combined check


# ----------------------------------------------------------------------------- input checks
def test_bad_arguments():
    logits, boxes, targets = make("detr")
    crit = DETRLoss(3, "detr")
    with pytest.raises(
        ValueError, match=r"logits must have shape \(L, B, Q, C \+ 1 \(no-object last\) = 4\)"
    ):
        crit(logits[..., :3], boxes, targets)
    with pytest.raises(
        ValueError, match=r"boxes must have shape \(L, B, Q, 4\) = \(2, 3, 6, 4\), got \(2, 3, 5, 4\)"
    ):
        crit(logits, boxes[:, :, :5], targets)
    with pytest.raises(ValueError, match="batch size 3 but targets has 2 images"):
        crit(logits, boxes, targets[:2])
    with pytest.raises(TypeError, match="logits must have a floating dtype"):
        crit(logits.long(), boxes, targets)
    with pytest.raises(TypeError, match="targets must be a list"):
        crit(logits, boxes, targets[0])
    with pytest.raises(ValueError, match="preset must be one of"):
        DETRLoss(3, "yolo")
    with pytest.raises(ValueError, match="cannot all be 0"):
        DETRLoss(3, class_cost=0, bbox_cost=0, giou_cost=0)
    with pytest.raises(ValueError, match="focal_alpha"):
        DETRLoss(3, "deformable", focal_alpha=1.5)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("label", r"targets\[2\]\['labels'\] holds class id 3 at index \(1,\)"),
        ("nan", r"targets\[0\]\['boxes'\].*nan.*index \(1, 2\)"),
        ("width", r"targets\[2\]\['boxes'\]\[3\].*zero or negative width or height"),
        ("logits", r"logits has a non-finite value \(nan\) at index \(1, 2, 0, 1\)"),
        ("boxes", r"boxes has a non-finite value \(inf\) at index \(0, 1, 3, 2\)"),
    ],
)
def test_bad_values_name_the_image_box_layer_and_query(case, pattern):
    logits, boxes, targets = make("deformable")
    logits, boxes = logits.detach().clone(), boxes.detach().clone()
    if case == "label":
        targets[2]["labels"][1] = 3
    elif case == "nan":
        targets[0]["boxes"][1, 2] = float("nan")
    elif case == "width":
        targets[2]["boxes"][3, 2] = 0.0
    elif case == "logits":
        logits[1, 2, 0, 1] = float("nan")
    else:
        boxes[0, 1, 3, 2] = float("inf")
    with pytest.raises(ValueError, match=pattern):
        DETRLoss(3, "deformable")(logits, boxes, targets)


def test_non_finite_predictions_without_validate_still_match():
    # as the references: the NaN query's cost is replaced by a large value and matched last
    logits, boxes, targets = make("detr", seed=10)
    boxes = boxes.detach().clone()
    boxes[0, 0, 0] = float("nan")
    out = DETRLoss(3, "detr", validate=False)(logits, boxes, targets)
    assert len(out.layers) == 2
    assert torch.isfinite(out.layers[1]["bbox"])  # the other layer is untouched


# ----------------------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None, database=None, derandomize=True)
@given(preset=st.sampled_from(PRESETS), seed=st.integers(0, 10_000), data=st.data())
def test_invariant_to_the_order_of_queries_and_of_targets(preset, seed, data):
    """A set loss: permuting each layer's queries, or each image's targets, changes nothing."""
    counts = tuple(data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
    logits, boxes, targets = make(preset, L=2, B=len(counts), Q=5, counts=counts, seed=seed)
    crit = DETRLoss(3, preset)
    ref = crit(logits, boxes, targets)
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(5, generator=g) for _ in range(2)])[:, None, :].expand(
        2, len(counts), 5
    )
    lg = logits.gather(2, perm[..., None].expand_as(logits))
    bx = boxes.gather(2, perm[..., None].expand_as(boxes))
    shuffled = []
    for t in targets:
        p = torch.randperm(len(t["labels"]), generator=g)
        shuffled.append({"boxes": t["boxes"][p], "labels": t["labels"][p]})
    for out in (crit(lg, bx, targets), crit(logits, boxes, shuffled)):
        for a, b in zip(out.layers, ref.layers, strict=True):
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14)
