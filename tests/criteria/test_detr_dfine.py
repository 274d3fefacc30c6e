"""DETRLoss(preset="dfine") against the loop port of transformers 5.24's D-FINE loss
(tests/reference/dfine.py ``loop_port_dfine``, written from docs/detr.md's D-FINE section: the pairing of
auxiliary entry k with layer k's corners, no FGL/DDF on the main output, boxes clamped to [0, 1],
denoising with fixed matches and N·G). It shares no code with detloss."""

from __future__ import annotations

import pytest
import torch

import detloss.assign.hungarian as hungarian
from detloss.criteria import DETRLoss
from detloss.profiling import DispatchCounter
from tests.criteria.test_detr_entries import model_layout
from tests.reference.dfine import loop_port_dfine

pytest.importorskip("scipy.optimize")  # detloss[detr]

NB = 32


def make(L=3, B=3, Q=7, C=3, counts=(2, 0, 3), G=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    idx, q_dn = model_layout(counts, G)

    def rand(*shape, scale=1.0, sig=False):
        t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
        # boxes spill outside [0, 1] a little, so the clamp matters
        t = torch.sigmoid(t) * 1.2 - 0.1 if sig else t
        return t.to(dtype).requires_grad_()

    out = {
        "logits": rand(L + 1, B, Q, C, scale=2),
        "boxes": rand(L + 1, B, Q, 4, sig=True),
        "corners": rand(L, B, Q, 4 * (NB + 1), scale=2),
        "reference_points": torch.sigmoid(torch.randn(L, B, Q, 4, generator=g, dtype=torch.float64)).to(
            dtype
        ),
        "enc_logits": rand(B, Q, C, scale=2),
        "enc_boxes": rand(B, Q, 4, sig=True),
        "dn_logits": rand(L + 1, B, q_dn, C, scale=2),
        "dn_boxes": rand(L + 1, B, q_dn, 4, sig=True),
        "dn_corners": rand(L, B, q_dn, 4 * (NB + 1), scale=2),
        "dn_reference_points": torch.sigmoid(torch.randn(L, B, q_dn, 4, generator=g, dtype=torch.float64)),
    }
    targets = []
    for n in counts:
        ctr = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.4 + 0.05
        targets.append({"boxes": torch.cat((ctr, wh), -1), "labels": torch.randint(0, C, (n,), generator=g)})
    out["dn_meta"] = {"dn_positive_idx": idx, "dn_num_group": G, "dn_num_split": [q_dn, Q]}
    return out, targets


def call(crit, inp, targets):
    kw = {k: v for k, v in inp.items() if k not in ("logits", "boxes")}
    return crit(inp["logits"], inp["boxes"], targets, **kw)


def port(inp, targets, C=3):
    return loop_port_dfine(
        inp["logits"].detach(),
        inp["boxes"].detach(),
        inp["corners"].detach(),
        inp["reference_points"],
        targets,
        C,
        enc=(inp["enc_logits"].detach(), inp["enc_boxes"].detach()),
        dn=tuple(inp[k].detach() for k in ("dn_logits", "dn_boxes", "dn_corners", "dn_reference_points")),
        dn_positive_idx=inp["dn_meta"]["dn_positive_idx"],
        dn_groups=inp["dn_meta"]["dn_num_group"],
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_every_entry_matches_the_loop_port(seed):
    inp, targets = make(seed=seed)
    out = call(DETRLoss(3, "dfine"), inp, targets)
    total, entries, per_image = port(inp, targets)
    got = {f"layer_{i}": layer for i, layer in enumerate(out.layers)} | out.entries
    assert list(got) == list(entries)
    for name, want in entries.items():
        have = torch.stack(list(got[name].values()))
        torch.testing.assert_close(have, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.total, torch.tensor(total, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        out.per_image, torch.tensor(per_image, dtype=torch.float64), rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(out.per_image.sum(), out.total, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("preset", "class_key"), [("dfine", "loss_vfl"), ("deimv2", "loss_mal")])
def test_loss_dict_keys_and_weighting(preset, class_key):
    L = 3
    inp, targets = make(L=L)
    out = call(DETRLoss(3, preset), inp, targets)
    d = out.loss_dict()
    five = (class_key, "loss_bbox", "loss_giou", "loss_fgl", "loss_ddf")
    want = list(five[:3])
    want += [f"{k}_aux_{i}" for i in range(L - 1) for k in five]
    want += [f"{k}_aux_{L - 1}" for k in five[:3]]  # the encoder
    want += [f"{k}_dn_{i}" for i in range(L) for k in five]
    assert list(d) == want
    torch.testing.assert_close(sum(d.values()), out.total, rtol=1e-12, atol=1e-12)
    # the last denoising layer is its own teacher: DDF exactly 0
    assert d[f"loss_ddf_dn_{L - 1}"].item() == 0.0
    assert d["loss_fgl_aux_0"].item() > 0 and d["loss_ddf_aux_0"].item() > 0


def test_gradients_finite_differences():
    inp, targets = make(L=2, B=2, Q=4, counts=(2, 1), seed=3)
    crit = DETRLoss(3, "dfine")

    # the matching does not depend on the corners; the last layer's are the teacher (used detached,
    # so only the earlier layers' are checked)
    last, dn_last = inp["corners"][-1:].detach(), inp["dn_corners"][-1:].detach()

    def corners(c, dc):
        kw = {"corners": torch.cat((c, last)), "dn_corners": torch.cat((dc, dn_last))}
        return call(crit, inp | kw, targets).total

    aux, dn_aux = (
        inp["corners"][:-1].detach().requires_grad_(),
        inp["dn_corners"][:-1].detach().requires_grad_(),
    )
    assert torch.autograd.gradcheck(corners, (aux, dn_aux), eps=1e-6, atol=1e-7)

    # the logits' and boxes' gradients pass through detached weights (VFL's p, the IoUs) by design;
    # benchmarks/compare_detr.py checks them against transformers


@pytest.mark.parametrize("preset", ["dfine", "deimv2"])
def test_one_round_trip(monkeypatch, preset):
    calls = []
    original = hungarian.to_host
    monkeypatch.setattr(hungarian, "to_host", lambda *ts: calls.append(len(ts)) or original(*ts))
    inp, targets = make(L=3, B=4, Q=10, counts=(2, 0, 4, 1), dtype=torch.float32, seed=9)
    with DispatchCounter() as c:
        call(DETRLoss(3, preset, validate=False), inp, targets).total.backward()
    assert c.syncs == 0 and len(calls) == 1, c.sync_ops
    calls.clear()
    with DispatchCounter() as v:
        call(DETRLoss(3, preset), inp, targets).total.backward()
    assert v.syncs == 1 and len(calls) == 1, v.sync_ops


def test_half_precision_close_to_float32():
    inp, targets = make(dtype=torch.float32, seed=4)
    ref = call(DETRLoss(3, "dfine"), inp, targets).total
    half = {k: (v.detach().bfloat16() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    out = call(DETRLoss(3, "dfine"), half, targets).total
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.detach(), rtol=0.02, atol=0)


def test_input_checks():
    inp, targets = make()
    crit = DETRLoss(3, "dfine")
    with pytest.raises(ValueError, match="corners"):
        call(crit, {k: v for k, v in inp.items() if k != "corners"}, targets)
    with pytest.raises(ValueError, match="corners"):
        call(crit, inp | {"corners": inp["corners"][:-1]}, targets)
    with pytest.raises(ValueError, match="dn_corners"):
        call(crit, {k: v for k, v in inp.items() if k != "dn_corners"}, targets)
    with pytest.raises(ValueError, match="dfine"):
        DETRLoss(3, "rtdetr")(inp["logits"], inp["boxes"], targets, corners=inp["corners"])
    with pytest.raises(ValueError, match="dfine"):
        DETRLoss(3, "rtdetr", fgl=1.0)
