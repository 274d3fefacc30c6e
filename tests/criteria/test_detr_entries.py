"""DETRLoss's encoder-proposal and denoising entries against the loop port's whole training loss.

The port (tests/reference/detr.py, ``loop_port_entries``) is written from the documented behaviour of
transformers 5.24's ``RTDetrLoss`` (loss/loss_rt_detr.py): the encoder proposals are matched like a
decoder layer; a denoising layer is not matched — element k of ``dn_positive_idx[b]`` is the query of
image b's target k mod n_b (``get_cdn_matched_indices`` pairs it with ``arange(n_b).tile(G)``) — and its
box count is N·G. It shares no code with detloss. On top: finite differences of the port, the one
round trip, padded targets, half precision, the dictionary keys and the input checks.
"""

from __future__ import annotations

import pytest
import torch

import detloss.assign.hungarian as hungarian
from detloss.assign import hungarian_match, hungarian_match_all, pad_targets
from detloss.assign.targets import PaddedTargets
from detloss.criteria import DETRLoss
from detloss.profiling import DispatchCounter
from tests.reference.detr import loop_port_entries

pytest.importorskip("scipy.optimize")  # detloss[detr]

PRESETS = ("detr", "deformable", "rtdetr")


def model_layout(counts, groups):
    """``dn_positive_idx`` as RT-DETR's ``get_contrastive_denoising_training_group`` lays it out: groups
    of 2·M queries (M the batch's largest target count), positives first, so target j of group g is
    query 2·M·g + j; Q_dn = 2·M·G."""
    m = max(counts)
    idx = tuple(
        torch.tensor([2 * m * g + j for g in range(groups) for j in range(n)], dtype=torch.long)
        for n in counts
    )
    return idx, 2 * m * groups


def make(preset, L=2, B=3, Q=6, Q_e=None, C=3, counts=(2, 0, 3), G=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = C + 1 if preset == "detr" else C
    idx, q_dn = model_layout(counts, G)

    def pair(*lead):
        lg = (torch.randn(*lead, width, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
        bx = torch.sigmoid(torch.randn(*lead, 4, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
        return lg, bx

    logits, boxes = pair(L, B, Q)
    enc = pair(B, Q if Q_e is None else Q_e)
    dn = pair(L, B, q_dn)
    targets = []
    for n in counts:
        ctr = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.4 + 0.05
        targets.append({"boxes": torch.cat((ctr, wh), -1), "labels": torch.randint(0, C, (n,), generator=g)})
    meta = {"dn_positive_idx": idx, "dn_num_group": G, "dn_num_split": [q_dn, Q]}
    return logits, boxes, targets, enc, dn, meta


def call(crit, logits, boxes, targets, enc, dn, meta):
    return crit(
        logits,
        boxes,
        targets,
        enc_logits=enc[0],
        enc_boxes=enc[1],
        dn_logits=dn[0],
        dn_boxes=dn[1],
        dn_meta=meta,
    )


def rel(a, b):
    return abs(float(a.detach()) - b) / max(abs(b), 1e-300)


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("q_e", [None, 4])  # the encoder with the decoder's Q (stacked) or its own
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_entry_matches_the_loop_port(preset, seed, q_e):
    logits, boxes, targets, enc, dn, meta = make(preset, Q_e=q_e, seed=seed)
    out = call(DETRLoss(3, preset), logits, boxes, targets, enc, dn, meta)
    total, entries, shares = loop_port_entries(
        preset,
        logits,
        boxes,
        targets,
        3,
        enc=enc,
        dn=dn,
        dn_positive_idx=meta["dn_positive_idx"],
        dn_groups=2,
    )
    assert rel(out.total, total) < 1e-12
    assert list(out.entries) == ["enc", "dn_0", "dn_1"]
    got = {f"layer_{i}": d for i, d in enumerate(out.layers)} | out.entries
    assert list(got) == list(entries)
    for name, ref in entries.items():
        for k, r in zip(("cls", "bbox", "giou"), ref, strict=True):
            assert rel(got[name][k], r) < 1e-12, (name, k, float(got[name][k]), r)
    for i, k in enumerate(("cls", "bbox", "giou")):
        assert rel(out.components[k], sum(e[i] for e in entries.values())) < 1e-12
    for a, b in zip(out.per_image, shares, strict=True):
        assert rel(a, b) < 1e-12
    assert rel(out.per_image.sum(), float(out.total.detach())) < 1e-12


@pytest.mark.parametrize("preset", PRESETS)
def test_any_layout_of_the_positive_queries(preset):
    # the fixed matches follow dn_positive_idx whatever its order (not only the model's layout)
    logits, boxes, targets, enc, dn, meta = make(preset, counts=(3, 1, 2), seed=3)
    g = torch.Generator().manual_seed(0)
    q_dn = dn[0].shape[2]
    meta["dn_positive_idx"] = tuple(
        torch.randperm(q_dn, generator=g)[: 2 * len(t["labels"])] for t in targets
    )
    out = call(DETRLoss(3, preset), logits, boxes, targets, enc, dn, meta)
    total, entries, _ = loop_port_entries(
        preset,
        logits,
        boxes,
        targets,
        3,
        enc=enc,
        dn=dn,
        dn_positive_idx=meta["dn_positive_idx"],
        dn_groups=2,
    )
    assert rel(out.total, total) < 1e-12
    assert rel(out.entries["dn_1"]["bbox"], entries["dn_1"][1]) < 1e-12


def test_denoising_box_terms_by_hand():
    # one image, one target, G = 2 groups; the positives are queries 0 and 2, each at L1 distance
    # 0.1 (one coordinate off) from the target: bbox term per layer = 5·(0.1 + 0.1) / (N·G = 1·2)
    tb = torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64)
    targets = [{"boxes": tb, "labels": torch.tensor([0])}]
    dn_boxes = torch.tensor(
        [[[[0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.5, 0.4, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]]]],
        dtype=torch.float64,
    )
    dn_logits = torch.zeros(1, 1, 4, 1, dtype=torch.float64)
    meta = {"dn_positive_idx": [torch.tensor([0, 2])], "dn_num_group": 2}
    out = DETRLoss(1, "rtdetr")(
        torch.zeros(1, 1, 3, 1, dtype=torch.float64),
        torch.full((1, 1, 3, 4), 0.5, dtype=torch.float64),
        targets,
        dn_logits=dn_logits,
        dn_boxes=dn_boxes,
        dn_meta=meta,
    )
    assert float(out.entries["dn_0"]["bbox"]) == pytest.approx(5 * 0.2 / 2, rel=1e-14)
    # GIoU of two 0.2-squares shifted by 0.1: IoU = 0.02/0.06 = 1/3, enclosing = union: 1 − 1/3 each
    assert float(out.entries["dn_0"]["giou"]) == pytest.approx(2 * (2 * (1 - 1 / 3)) / 2, rel=1e-14)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("preset", ("detr", "deformable"))
def test_gradients_are_the_loop_ports_finite_differences(preset):
    # the port differentiated numerically at a few coordinates of the encoder and denoising inputs
    # (the matching is locally constant): no detached factor in these presets
    logits, boxes, targets, enc, dn, meta = make(preset, seed=5)
    out = call(DETRLoss(3, preset), logits, boxes, targets, enc, dn, meta)
    grads = torch.autograd.grad(out.total, (enc[0], enc[1], dn[0], dn[1]))
    g = torch.Generator().manual_seed(1)
    for which, grad in enumerate(grads):
        for _ in range(3):
            flat = int(torch.randint(grad.numel(), (1,), generator=g))
            values = []
            for h in (1e-6, -1e-6):
                inputs = [t.detach().clone() for t in (enc[0], enc[1], dn[0], dn[1])]
                inputs[which].view(-1)[flat] += h
                values.append(
                    loop_port_entries(
                        preset,
                        logits,
                        boxes,
                        targets,
                        3,
                        enc=inputs[:2],
                        dn=inputs[2:],
                        dn_positive_idx=meta["dn_positive_idx"],
                        dn_groups=2,
                    )[0]
                )
            fd = (values[0] - values[1]) / 2e-6
            assert abs(float(grad.view(-1)[flat]) - fd) < 1e-6 * max(1.0, abs(fd)), (which, flat, fd)


def test_gradcheck_float64_rtdetr_entries():
    # RT-DETR's varifocal weight and IoU target are detached (as transformers): γ = 0 makes the class
    # weight constant; the box terms w.r.t. the boxes
    logits, boxes, targets, enc, dn, meta = make("rtdetr", L=1, B=2, Q=4, C=2, counts=(2, 1), seed=6)
    crit = DETRLoss(2, "rtdetr", focal_gamma=0.0, validate=False)

    def cls(el, dl):
        return call(crit, logits, boxes, targets, (el, enc[1]), (dl, dn[1]), meta).components["cls"]

    assert torch.autograd.gradcheck(cls, (enc[0], dn[0]), eps=1e-6)

    def box(eb, db):
        c = call(crit, logits, boxes, targets, (enc[0], eb), (dn[0], db), meta).components
        return c["bbox"] + c["giou"]

    assert torch.autograd.gradcheck(box, (enc[1], dn[1]), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- one round trip
@pytest.mark.parametrize("q_e", [None, 7])
@pytest.mark.parametrize("preset", PRESETS)
def test_one_round_trip_for_every_entry(preset, q_e, monkeypatch):
    calls = []
    original = hungarian.to_host
    monkeypatch.setattr(
        hungarian, "to_host", lambda *ts: calls.append([t.shape for t in ts]) or original(*ts)
    )
    logits, boxes, targets, enc, dn, meta = make(
        preset, L=3, B=4, Q=10, Q_e=q_e, counts=(2, 0, 4, 1), dtype=torch.float32, seed=9
    )
    with DispatchCounter() as c:
        call(DETRLoss(3, preset, validate=False), logits, boxes, targets, enc, dn, meta).total.backward()
    assert c.syncs == 0, c.sync_ops
    if q_e is None:  # the encoder stacked after the 3 layers
        assert calls == [[(4, 4, 10, 4)]]
    else:
        assert calls == [[(3, 4, 10, 4), (1, 4, 7, 4)]]
    calls.clear()
    with DispatchCounter() as v:
        call(DETRLoss(3, preset), logits, boxes, targets, enc, dn, meta).total.backward()
    assert v.syncs == 1 and len(calls) == 1, v.sync_ops  # validate=True: one combined check


def test_hungarian_match_all_is_each_cost_matched_alone(monkeypatch):
    calls = []
    original = hungarian.to_host
    monkeypatch.setattr(hungarian, "to_host", lambda *ts: calls.append(len(ts)) or original(*ts))
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 6, 4, generator=g), torch.rand(1, 3, 9, 4, generator=g)
    mask = torch.tensor([[True, False, True, True], [False] * 4, [True] * 4])
    both = hungarian_match_all([a, b], mask)
    assert calls == [3]  # the mask and both costs in one transfer
    for cost, got in zip((a, b), both, strict=True):
        torch.testing.assert_close(got, hungarian_match(cost, mask), rtol=0, atol=0)
    assert both[1].shape == (1, 3, 4) and (both[1][0, 1] == -1).all()


# ----------------------------------------------------------------------------- targets, precision
@pytest.mark.parametrize("preset", PRESETS)
def test_padded_targets_in_any_rows_give_the_list_result(preset):
    logits, boxes, targets, enc, dn, meta = make(preset, seed=11)
    pt = pad_targets(targets, 3, fmt="cxcywh", dtype=torch.float64)
    # the real rows moved last, in their order: a target's rank among its image's real rows is its
    # index in the list, which dn_positive_idx refers to
    order = torch.sort(pt.mask.int(), dim=1, stable=True).indices  # (B, M)
    padded = PaddedTargets(
        pt.boxes.gather(1, order[..., None].expand(-1, -1, 4)),
        pt.labels.gather(1, order),
        pt.mask.gather(1, order),
    )
    assert not padded.mask[0, 0] and padded.mask[0, -1]
    crit = DETRLoss(3, preset)
    want, got = (
        call(crit, logits, boxes, targets, enc, dn, meta),
        call(crit, logits, boxes, padded, enc, dn, meta),
    )
    torch.testing.assert_close(got.total, want.total, rtol=1e-14, atol=0)
    torch.testing.assert_close(got.per_image, want.per_image, rtol=1e-14, atol=0)
    for k in want.entries:
        for t in ("cls", "bbox", "giou"):
            torch.testing.assert_close(got.entries[k][t], want.entries[k][t], rtol=1e-14, atol=0)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("preset", PRESETS)
def test_half_precision_within_two_percent(preset, half):
    logits, boxes, targets, enc, dn, meta = make(
        preset, L=2, B=3, Q=20, counts=(5, 0, 8), dtype=torch.float32, seed=12
    )
    crit = DETRLoss(3, preset)
    ref = call(crit, logits, boxes, targets, enc, dn, meta)
    lo = [t.detach().to(half).requires_grad_() for t in (logits, boxes, *enc, *dn)]
    out = call(crit, lo[0], lo[1], targets, lo[2:4], lo[4:6], meta)
    assert out.total.dtype == torch.float32
    out.total.backward()
    assert all(torch.isfinite(t.grad).all() for t in lo)
    assert abs(float(out.total) - float(ref.total)) <= 0.02 * abs(float(ref.total))
    for k in ("enc", "dn_0", "dn_1"):
        assert torch.isfinite(torch.stack(list(out.entries[k].values()))).all()


# ----------------------------------------------------------------------------- loss dictionary
def test_rtdetr_loss_dict_has_transformers_keys_and_weights():
    logits, boxes, targets, enc, dn, meta = make("rtdetr", L=3, seed=13)
    out = call(DETRLoss(3, "rtdetr"), logits, boxes, targets, enc, dn, meta)
    d = out.loss_dict()
    names = ("loss_vfl", "loss_bbox", "loss_giou")
    # RTDetrLoss: the last layer unsuffixed, layers 0, 1 as _aux_0, _aux_1, the encoder appended to the
    # auxiliary outputs as _aux_2, the denoising layers _dn_0 … _dn_2; weighted by its weight_dict
    want = [*names] + [
        n + s for s in ("_aux_0", "_aux_1", "_aux_2", "_dn_0", "_dn_1", "_dn_2") for n in names
    ]
    assert list(d) == want
    assert float(d["loss_bbox"]) == float(out.layers[2]["bbox"])
    assert float(d["loss_giou_aux_2"]) == float(out.entries["enc"]["giou"])
    assert float(d["loss_vfl_dn_1"]) == float(out.entries["dn_1"]["cls"])
    assert rel(sum(d.values()), float(out.total.detach())) < 1e-14


def test_cardinality_error_by_hand():
    # transformers' log value: per entry, the batch mean of |non-empty queries − targets|; "detr": a
    # query whose argmax is not no-object (the last logit), the sigmoid presets: max σ above 0.5
    targets = [
        {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    boxes = torch.full((2, 2, 3, 4), 0.5, dtype=torch.float64)
    boxes[..., 2:] = 0.2
    detr = torch.zeros(2, 2, 3, 4, dtype=torch.float64)  # C = 3 + no-object
    detr[..., 3] = 1.0  # every query no-object ...
    detr[1, 0, :2, 0] = 2.0  # ... except two of image 0 in the last layer
    detr[0, 1, 0, 1] = 2.0  # and one of image 1 in the first
    d = DETRLoss(3, "detr")(detr, boxes, targets).loss_dict()
    assert float(d["cardinality_error"]) == (abs(2 - 1) + abs(0 - 0)) / 2
    assert float(d["cardinality_error_0"]) == (abs(0 - 1) + abs(1 - 0)) / 2
    focal = torch.full((2, 2, 3, 3), -1.0, dtype=torch.float64)
    focal[1, :, :, 2] = 0.5  # the last layer: every query of both images above 0.5
    d = DETRLoss(3, "deformable")(focal, boxes, targets).loss_dict()
    assert float(d["cardinality_error"]) == (abs(3 - 1) + abs(3 - 0)) / 2
    assert float(d["cardinality_error_0"]) == (1 + 0) / 2
    assert "cardinality_error" not in DETRLoss(3, "rtdetr")(focal, boxes, targets).loss_dict()


def test_unweighted_presets_loss_dict():
    logits, boxes, targets, enc, dn, meta = make("deformable", L=2, seed=14)
    out = call(DETRLoss(3, "deformable"), logits, boxes, targets, enc, dn, meta)
    d = out.loss_dict()
    four = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
    assert list(d)[:8] == [*four] + [k + "_0" for k in four]
    assert "loss_giou_enc" in d and "cardinality_error_enc" in d
    assert "loss_bbox_dn_1" in d and "cardinality_error_dn_1" not in d  # no cardinality for denoising
    # transformers' dictionary of these presets holds the terms before its weight_dict (bbox gain 5)
    assert rel(d["loss_bbox_dn_1"] * 5.0, float(out.entries["dn_1"]["bbox"].detach())) < 1e-14


# ----------------------------------------------------------------------------- input checks
def test_bad_entries():
    logits, boxes, targets, enc, dn, meta = make("rtdetr")
    crit = DETRLoss(3, "rtdetr")
    with pytest.raises(ValueError, match="go together"):
        crit(logits, boxes, targets, dn_logits=dn[0], dn_boxes=dn[1])
    with pytest.raises(ValueError, match="enc_logits and enc_boxes go together"):
        crit(logits, boxes, targets, enc_logits=enc[0])
    with pytest.raises(ValueError, match=r"enc_boxes must have shape \(B, Q_e, 4\)"):
        crit(logits, boxes, targets, enc_logits=enc[0], enc_boxes=enc[1][:, :3])
    with pytest.raises(ValueError, match=r"dn_logits must have shape \(L_dn, B, Q_dn, C = 3\)"):
        call(crit, logits, boxes, targets, enc, (dn[0][..., :2], dn[1]), meta)
    bad = dict(meta, dn_positive_idx=meta["dn_positive_idx"][:2])
    with pytest.raises(ValueError, match="has 2 images but targets has 3"):
        call(crit, logits, boxes, targets, enc, dn, bad)
    bad = dict(meta, dn_positive_idx=(meta["dn_positive_idx"][0][:3],) + meta["dn_positive_idx"][1:])
    with pytest.raises(ValueError, match=r"\[0\] has 3 queries, not a multiple of dn_num_group = 2"):
        call(crit, logits, boxes, targets, enc, dn, bad)
    bad = dict(meta, dn_num_split=[5, 6])
    with pytest.raises(ValueError, match="pass the denoising and the matching queries apart"):
        call(crit, logits, boxes, targets, enc, dn, bad)
    bad = dict(meta, dn_positive_idx=(meta["dn_positive_idx"][0] + 100,) + meta["dn_positive_idx"][1:])
    with pytest.raises(
        ValueError, match=r"dn_positive_idx'\]\[0\] holds query 100, outside \[0, Q_dn = 12\)"
    ):
        call(crit, logits, boxes, targets, enc, dn, bad)
    e = enc[0].detach().clone()
    e[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"enc_logits has a non-finite value \(nan\) at index \(1, 2, 0\)"):
        crit(logits, boxes, targets, enc_logits=e, enc_boxes=enc[1])
