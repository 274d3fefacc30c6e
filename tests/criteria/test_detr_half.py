"""DETRLoss with float16 and bfloat16 model outputs, every preset, against the float32 result.

The reference is the float32 loss of the same model outputs before the cast (the half tensors are
those outputs rounded): the half-precision total must lie within 2 % of it, every gradient and
dictionary value must be finite, and the Hungarian matching must never be handed a non-finite cost —
checked on what reaches the host (``detloss.assign.hungarian.to_host``) and on every block the solver
(``scipy.optimize.linear_sum_assignment``) receives, with and without ``validate``. The harder inputs
saturate a seventh of the logits at ±30 (σ rounds to exactly 0 or 1 in every float format, the
references' ``log(p)``/``log(1 − p)`` are −inf there) and give one predicted box per image (and, for
D-FINE and DEIMv2, one reference point) zero width and height.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import detloss.assign.hungarian as hungarian
from detloss.criteria import DETRLoss
from tests.criteria.test_detr_entries import model_layout

pytest.importorskip("scipy.optimize")  # detloss[detr]

PRESETS = ("detr", "deformable", "rtdetr", "lwdetr", "dfine", "deimv2")
HALF = (torch.float16, torch.bfloat16)
NB = 32  # D-FINE's bins
C = 20
COUNTS = (7, 0, 12)
GROUPS = 3  # denoising groups


def make(preset, saturate=False, L=3, seed=0):
    """Model-shaped float32 outputs of ``preset`` (decoder layers, encoder proposals, denoising
    queries as RT-DETR lays them out; D-FINE's L + 1 outputs with L layers of corners and reference
    points; LW-DETR's 13 query groups) and a list of targets."""
    g = torch.Generator().manual_seed(seed)
    B = len(COUNTS)
    Q = 13 * 16 if preset == "lwdetr" else 60
    width = C + 1 if preset == "detr" else C
    idx, q_dn = model_layout(COUNTS, GROUPS)
    local = preset in ("dfine", "deimv2")  # D-FINE's and DEIMv2's corners and reference points
    outs = L + 1 if local else L

    def logits(*lead):
        t = torch.randn(*lead, width, generator=g) * 2.5
        if saturate:
            flat = t.view(-1)
            flat[::7] = 30.0
            flat[3::14] = -30.0
        return t

    def boxes(*lead):
        t = torch.sigmoid(torch.randn(*lead, 4, generator=g))
        if local:  # D-FINE's boxes spill outside [0, 1] (the loss clamps them)
            t = t * 1.2 - 0.1
        if saturate:
            t[..., 0, 2:] = 0.0  # query 0 of every image: zero width and height
        return t

    inp = {"logits": logits(outs, B, Q), "boxes": boxes(outs, B, Q)}
    inp["enc_logits"], inp["enc_boxes"] = logits(B, Q), boxes(B, Q)
    if preset != "lwdetr":  # LW-DETR has no denoising queries
        inp["dn_logits"], inp["dn_boxes"] = logits(outs, B, q_dn), boxes(outs, B, q_dn)
    if local:
        for pre, q in (("", Q), ("dn_", q_dn)):
            inp[pre + "corners"] = torch.randn(L, B, q, 4 * (NB + 1), generator=g) * 3
            refs = torch.rand(L, B, q, 4, generator=g) * 0.5 + 0.2
            if saturate:
                refs[..., 0, 2:] = 0.0
            inp[pre + "reference_points"] = refs
    targets = []
    for n in COUNTS:
        ctr = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.4 + 0.05
        targets.append({"boxes": torch.cat((ctr, wh), -1), "labels": torch.randint(0, C, (n,), generator=g)})
    meta = None
    if preset != "lwdetr":
        meta = {"dn_positive_idx": idx, "dn_num_group": GROUPS, "dn_num_split": [q_dn, Q]}
    return inp, targets, meta


def call(crit, inp, targets, meta):
    kw = {k: v for k, v in inp.items() if k not in ("logits", "boxes")}
    if meta is not None:
        kw["dn_meta"] = meta
    return crit(inp["logits"], inp["boxes"], targets, **kw)


def cast(inp, dtype):
    """The outputs in ``dtype``; D-FINE's reference points carry no gradient (the model detaches them)."""
    return {k: v.detach().to(dtype).requires_grad_("reference_points" not in k) for k, v in inp.items()}


@pytest.fixture
def costs_seen(monkeypatch):
    """Every cost array the matching reads back from the device, and every block the solver gets."""
    seen = {"host": [], "solver": []}
    to_host, require = hungarian.to_host, hungarian.require_scipy

    def spy_to_host(*tensors):
        out = to_host(*tensors)
        seen["host"] += [a for a in out if np.issubdtype(a.dtype, np.floating)]
        return out

    def spy_require():
        solve = require()

        def spy_solve(block, *a, **k):
            seen["solver"].append(np.array(block, copy=True))
            return solve(block, *a, **k)

        return spy_solve

    monkeypatch.setattr(hungarian, "to_host", spy_to_host)
    monkeypatch.setattr(hungarian, "require_scipy", spy_require)
    return seen


def assert_finite_costs(seen, entries):
    assert len(seen["host"]) >= 1 and seen["solver"], "the matching was not reached"
    for a in seen["host"]:
        assert np.isfinite(a).all(), f"a non-finite cost reached the host: {a[~np.isfinite(a)][:5]}"
    # one solved block per (entry, group, image with targets): 2 of the 3 images have targets
    assert len(seen["solver"]) == entries * 2
    for block in seen["solver"]:
        assert block.size and np.isfinite(block).all()


@pytest.mark.parametrize("saturate", [False, True], ids=["random", "saturated"])
@pytest.mark.parametrize("validate", [True, False], ids=["validate", "no-validate"])
@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("preset", PRESETS)
def test_half_outputs_within_two_percent_of_float32(preset, dtype, validate, saturate, costs_seen):
    inp, targets, meta = make(preset, saturate)
    crit = DETRLoss(C, preset, validate=validate)
    ref = call(crit, inp, targets, meta)  # float32, the outputs before rounding
    assert torch.isfinite(ref.total)
    costs_seen["host"].clear(), costs_seen["solver"].clear()

    lo = cast(inp, dtype)
    out = call(crit, lo, targets, meta)
    assert out.total.dtype == torch.float32
    assert torch.isfinite(out.total)
    rel = abs(float(out.total.detach()) - float(ref.total)) / abs(float(ref.total))
    assert rel <= 0.02, f"{preset} {dtype}: {rel:.3e} from float32"
    for key, value in out.loss_dict().items():
        assert torch.isfinite(value), key
    out.total.backward()
    for name, t in lo.items():
        if "reference_points" in name:
            continue
        assert t.grad is not None and t.grad.dtype == dtype, name
        assert torch.isfinite(t.grad).all(), f"non-finite gradient of {name}"
    # matched entries: the decoder outputs and the encoder (D-FINE, DEIMv2: L + 1 outputs less one), each
    # in 13 groups for LW-DETR
    layers = inp["logits"].shape[0] - (1 if preset in ("dfine", "deimv2") else 0)
    entries = (layers + 1) * (13 if preset == "lwdetr" else 1)
    assert_finite_costs(costs_seen, entries)


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("preset", PRESETS)
def test_half_equals_float32_of_the_rounded_outputs(preset, dtype):
    """Half outputs are computed in float32: the result is the float32 loss of the rounded outputs
    (to float32 rounding), so the 2 % above is only the inputs' rounding."""
    inp, targets, meta = make(preset, saturate=True, seed=3)
    crit = DETRLoss(C, preset)
    lo = cast(inp, dtype)
    up = {k: v.detach().float() for k, v in lo.items()}
    got, want = call(crit, lo, targets, meta), call(crit, up, targets, meta)
    torch.testing.assert_close(got.total, want.total, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.per_image, want.per_image, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("preset", PRESETS)
def test_saturated_float32_is_finite_and_costs_are_finite(preset, costs_seen):
    """The float32 reference of the saturated inputs itself: finite loss, gradients and costs."""
    inp, targets, meta = make(preset, saturate=True, seed=5)
    inp = {k: v.requires_grad_("reference_points" not in k) for k, v in inp.items()}
    out = call(DETRLoss(C, preset, validate=False), inp, targets, meta)
    assert torch.isfinite(out.total)
    out.total.backward()
    assert all(torch.isfinite(t.grad).all() for t in inp.values() if t.requires_grad)
    layers = inp["logits"].shape[0] - (1 if preset in ("dfine", "deimv2") else 0)
    assert_finite_costs(costs_seen, (layers + 1) * (13 if preset == "lwdetr" else 1))
