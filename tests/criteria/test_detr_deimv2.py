"""DETRLoss(preset="deimv2") against the loop port of transformers 5.24's DEIMv2 loss
(tests/reference/dfine.py ``loop_port_dfine(preset="deimv2")``: MAL, and the box and local terms on the
union of the matched entries' matchings, counted and walked most frequent first). The port shares no
code with detloss; its union is written from the description of the original's, with a stable sort.
The dictionary's keys and the one round trip are tests/criteria/test_detr_dfine.py's (both presets), half
precision tests/criteria/test_detr_half.py's (every preset)."""

from __future__ import annotations

import pytest
import torch

from detloss.criteria import DETRLoss
from tests.criteria.test_detr_dfine import call, make
from tests.reference.dfine import loop_port_dfine

pytest.importorskip("scipy.optimize")  # detloss[detr]


def port(inp, targets, C=3, **kw):
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
        **kw,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_entry_matches_the_loop_port(seed):
    inp, targets = make(L=4, Q=9, seed=seed)
    out = call(DETRLoss(3, "deimv2"), inp, targets)
    total, entries, per_image = port(inp, targets, preset="deimv2")
    got = {f"layer_{i}": layer for i, layer in enumerate(out.layers)} | out.entries
    assert list(got) == list(entries)
    for name, want in entries.items():
        have = torch.stack(list(got[name].values()))
        torch.testing.assert_close(have, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.total, torch.tensor(total, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        out.per_image, torch.tensor(per_image, dtype=torch.float64), rtol=1e-9, atol=1e-12
    )


def test_the_union_changes_the_box_terms():
    """The union is not the entry's own matching: with it off, every matched entry's box terms are
    D-FINE's own-matching ones (the port with MAL but no union) and differ from the union's."""
    inp, targets = make(L=4, Q=9, seed=5)
    dense = call(DETRLoss(3, "deimv2"), inp, targets)
    own = call(DETRLoss(3, "deimv2", dense_one_to_one=False), inp, targets)
    torch.testing.assert_close(dense.components["cls"], own.components["cls"], rtol=1e-12, atol=0)
    assert abs(float(dense.components["bbox"] - own.components["bbox"])) > 1e-6
    # denoising has fixed matches either way
    torch.testing.assert_close(
        torch.stack(list(dense.entries["dn_0"].values())), torch.stack(list(own.entries["dn_0"].values()))
    )


def test_no_targets_gives_finite_zero_box_terms():
    inp, targets = make(counts=(0, 0, 0), seed=2)
    out = call(DETRLoss(3, "deimv2"), inp, targets)
    assert torch.isfinite(out.total)
    assert float(out.components["bbox"]) == 0.0 and float(out.components["fgl"]) == 0.0
    out.total.backward()
    assert torch.isfinite(inp["logits"].grad).all()


def test_options_and_input_checks():
    inp, targets = make()
    with pytest.raises(ValueError, match="dense_one_to_one"):
        DETRLoss(3, "dfine", dense_one_to_one=True)
    with pytest.raises(ValueError, match="corners"):
        call(DETRLoss(3, "deimv2"), {k: v for k, v in inp.items() if k != "corners"}, targets)
    short = inp | {"enc_logits": inp["enc_logits"][:, :5], "enc_boxes": inp["enc_boxes"][:, :5]}
    with pytest.raises(ValueError, match="enc_logits"):
        call(DETRLoss(3, "deimv2"), short, targets)
    call(DETRLoss(3, "deimv2", dense_one_to_one=False), short, targets)  # no union: any Q_e
