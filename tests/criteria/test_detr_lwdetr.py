"""DETRLoss(preset="lwdetr") (LW-DETR, RF-DETR) against the loop port of tests/reference/detr.py: query
groups matched separately, N = G·Σn, IA-BCE, the box costs of float32 boxes."""

from __future__ import annotations

import pytest
import torch

import detloss.assign.hungarian as hungarian
from detloss.assign import pad_targets
from detloss.assign.targets import PaddedTargets
from detloss.criteria import DETRLoss
from detloss.profiling import DispatchCounter
from tests.reference.detr import loop_port_entries

pytest.importorskip("scipy.optimize")  # detloss[detr]


def make(L=2, B=3, Q=10, C=3, counts=(2, 0, 3), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def pair(*lead):
        lg = (torch.randn(*lead, C, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
        bx = torch.sigmoid(torch.randn(*lead, 4, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
        return lg, bx

    logits, boxes = pair(L, B, Q)
    enc = pair(B, Q)
    targets = []
    for n in counts:
        ctr = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.4 + 0.05
        targets.append({"boxes": torch.cat((ctr, wh), -1), "labels": torch.randint(0, C, (n,), generator=g)})
    return logits, boxes, targets, enc


def rel(a, b):
    return abs(float(a.detach()) - b) / max(abs(b), 1e-300)


# G = 3 with a remainder query (10 = 3·3 + 1, never matched); G = 13 (the default) with 2 per group
@pytest.mark.parametrize(("groups", "Q"), [(3, 10), (None, 26)])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_entry_matches_the_loop_port(groups, Q, seed):
    logits, boxes, targets, enc = make(Q=Q, seed=seed)
    out = DETRLoss(3, "lwdetr", group_detr=groups)(
        logits, boxes, targets, enc_logits=enc[0], enc_boxes=enc[1]
    )
    total, entries, shares = loop_port_entries(
        "lwdetr", logits, boxes, targets, 3, enc=enc, group_detr=13 if groups is None else groups
    )
    assert rel(out.total, total) < 1e-12
    got = {f"layer_{i}": d for i, d in enumerate(out.layers)} | out.entries
    assert list(got) == list(entries) == ["layer_0", "layer_1", "enc"]
    for name, ref in entries.items():
        for k, r in zip(("cls", "bbox", "giou"), ref, strict=True):
            assert rel(got[name][k], r) < 1e-12, (name, k, float(got[name][k]), r)
    for a, b in zip(out.per_image, shares, strict=True):
        assert rel(a, b) < 1e-12
    assert rel(out.per_image.sum(), float(out.total.detach())) < 1e-12


def test_each_target_is_matched_once_per_group():
    # one image, one target, 3 groups of 2 queries: query 2g + 1 sits on the target, 2g far away, so
    # each group matches its own near query and the L1/GIoU terms vanish; N = 3·1
    tgt = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64), "labels": torch.tensor([0])}]
    boxes = torch.tensor([[0.1, 0.1, 0.05, 0.05], [0.5, 0.5, 0.2, 0.2]] * 3, dtype=torch.float64)[None]
    logits = torch.zeros(1, 6, 1, dtype=torch.float64)
    out = DETRLoss(1, "lwdetr", group_detr=3)(logits, boxes, tgt)
    assert float(out.components["bbox"]) == 0.0 and float(out.components["giou"]) == 0.0
    # p = 1/2: 3 positives with IoU 1, t = (1/2)^0.25, BCE(1/2, t) = ln 2; 3 negatives (1/4)·ln 2; / 3
    ln2 = torch.log(torch.tensor(2.0, dtype=torch.float64))
    want = (3 * ln2 + 3 * 0.25 * ln2) / 3
    torch.testing.assert_close(out.components["cls"], want, rtol=1e-14, atol=0)


def test_no_targets_normaliser_is_one_not_g():
    # transformers clamps G·Σn at 1 as a whole: with no targets the negatives' sum is divided by 1
    logits, boxes, _, _ = make(L=1, B=2, Q=6, seed=3)
    empty = [
        {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.long)}
    ] * 2
    out = DETRLoss(3, "lwdetr", group_detr=3)(logits, boxes, empty)
    p = torch.sigmoid(logits.detach())
    torch.testing.assert_close(out.total, (p**2 * -torch.log1p(-p)).sum(), rtol=1e-12, atol=0)


def test_gradients_are_the_loop_ports_finite_differences():
    # focal_alpha = 0 makes the IA-BCE target t = max(IoU, 0.01) free of p, so the port's class term
    # differentiates like the criterion's w.r.t. the logits; the box terms w.r.t. the boxes
    logits, boxes, targets, enc = make(L=1, B=2, Q=6, counts=(2, 1), seed=5)
    crit = DETRLoss(3, "lwdetr", group_detr=2, focal_alpha=0.0)
    out = crit(logits, boxes, targets, enc_logits=enc[0], enc_boxes=enc[1])
    g_cls = torch.autograd.grad(out.components["cls"], (logits, enc[0]), retain_graph=True)
    g_box = torch.autograd.grad(out.components["bbox"] + out.components["giou"], (boxes, enc[1]))

    def port(lg, bx, el, eb, terms):
        _, entries, _ = loop_port_entries(
            "lwdetr", lg, bx, targets, 3, enc=(el, eb), group_detr=2, focal_alpha=0.0
        )
        return sum(sum(e[i] for i in terms) for e in entries.values())

    base = [t.detach().clone() for t in (logits, boxes, enc[0], enc[1])]
    g = torch.Generator().manual_seed(1)
    for which, grad, terms in (
        (0, g_cls[0], (0,)),
        (2, g_cls[1], (0,)),
        (1, g_box[0], (1, 2)),
        (3, g_box[1], (1, 2)),
    ):
        for _ in range(4):
            flat = int(torch.randint(grad.numel(), (1,), generator=g))
            values = []
            for h in (1e-6, -1e-6):
                inputs = [t.clone() for t in base]
                inputs[which].view(-1)[flat] += h
                values.append(port(*inputs, terms))
            fd = (values[0] - values[1]) / 2e-6
            assert abs(float(grad.view(-1)[flat]) - fd) < 1e-6 * max(1.0, abs(fd)), (which, flat, fd)


def test_one_round_trip_every_group_and_entry(monkeypatch):
    calls = []
    original = hungarian.to_host
    monkeypatch.setattr(
        hungarian, "to_host", lambda *ts: calls.append([t.shape for t in ts]) or original(*ts)
    )
    logits, boxes, targets, enc = make(L=3, B=4, Q=13 * 3, counts=(2, 0, 4, 1), dtype=torch.float32, seed=9)
    with DispatchCounter() as c:
        DETRLoss(3, "lwdetr", validate=False)(
            logits, boxes, targets, enc_logits=enc[0], enc_boxes=enc[1]
        ).total.backward()
    assert c.syncs == 0, c.sync_ops
    assert calls == [[(4, 13, 4, 3, 4)]]  # (layers + encoder, G, B, S, M)


def test_padded_targets_in_any_rows_give_the_list_result():
    logits, boxes, targets, enc = make(seed=11)
    pt = pad_targets(targets, 3, fmt="cxcywh", dtype=torch.float64)
    order = torch.sort(pt.mask.int(), dim=1, stable=True).indices  # real rows last
    padded = PaddedTargets(
        pt.boxes.gather(1, order[..., None].expand(-1, -1, 4)),
        pt.labels.gather(1, order),
        pt.mask.gather(1, order),
    )
    crit = DETRLoss(3, "lwdetr", group_detr=3)
    want = crit(logits, boxes, targets, enc_logits=enc[0], enc_boxes=enc[1])
    got = crit(logits, boxes, padded, enc_logits=enc[0], enc_boxes=enc[1])
    torch.testing.assert_close(got.total, want.total, rtol=1e-14, atol=0)
    torch.testing.assert_close(got.per_image, want.per_image, rtol=1e-14, atol=0)
    for a, b in zip(
        torch.autograd.grad(got.total, logits), torch.autograd.grad(want.total, logits), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_loss_dict_has_transformers_keys_unweighted():
    logits, boxes, targets, enc = make(L=3, Q=9, seed=2)
    out = DETRLoss(3, "lwdetr", group_detr=3)(logits, boxes, targets, enc_logits=enc[0], enc_boxes=enc[1])
    d = out.loss_dict()
    names = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
    want = list(names) + [k + f"_{i}" for i in range(2) for k in names] + [k + "_enc" for k in names]
    assert list(d) == want
    torch.testing.assert_close(d["loss_bbox_enc"] * 5.0, out.entries["enc"]["bbox"], rtol=1e-14, atol=0)
    torch.testing.assert_close(d["loss_ce_0"], out.layers[0]["cls"], rtol=1e-14, atol=0)  # gain 1


def test_errors():
    with pytest.raises(ValueError, match="group_detr"):
        DETRLoss(3, "rtdetr", group_detr=2)
    with pytest.raises(ValueError, match="group_detr"):
        DETRLoss(3, "lwdetr", group_detr=0)
    logits, boxes, targets, _ = make(Q=10)
    with pytest.raises(ValueError, match="fewer than group_detr"):
        DETRLoss(3, "lwdetr")(logits, boxes, targets)  # 10 queries, 13 groups
