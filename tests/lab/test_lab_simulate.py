"""detloss simulate: the DIoU paper's simulation experiment.

Expected numbers come from Zheng et al., "Distance-IoU Loss" (AAAI 2020, arXiv 1911.08287), section
"Simulation Experiment", Fig. 3(b) and Fig. 4, from the authors' MATLAB script (repository
Zzh-tju/DIoU, folder ``simulation experiment``) and its plots, and from hand calculations with the
authors' formulas.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from detloss.cli import main  # noqa: E402
from detloss.iou import iou_xyxy  # noqa: E402
from detloss.kernels import IOU_KINDS  # noqa: E402
from detloss.lab import simulate as S  # noqa: E402


def test_cases_match_the_paper_setup():
    centres, anchors, targets = S.make_cases(50, seed=1, dtype=torch.float64)
    assert anchors.shape == (50, 343, 4) and targets.shape == (343, 4)
    # 7 unit-area targets centred at (10, 10), each used by 49 anchors
    assert torch.allclose(targets[:, 2] * targets[:, 3], torch.ones(343, dtype=torch.float64))
    assert torch.all(targets[:, :2] == 10.0)
    assert targets[:, 2:].unique(dim=0).shape[0] == 7
    ratios = sorted((targets[::49, 2] / targets[::49, 3]).tolist())
    assert ratios == pytest.approx([1 / 4, 1 / 3, 1 / 2, 1, 2, 3, 4])
    # anchor areas: 0.5, 0.67, 0.75, 1, 1.33, 1.5, 2 (literally), 7 of each per target
    areas = (anchors[0, :49, 2] * anchors[0, :49, 3]).reshape(7, 7)
    assert torch.allclose(
        areas, torch.tensor([0.5, 0.67, 0.75, 1, 1.33, 1.5, 2], dtype=torch.float64)[:, None].expand(7, 7)
    )
    # centres inside the disc of radius 3; all anchors of a point share its centre
    assert float(((centres - 10) ** 2).sum(-1).max()) <= 9.0
    assert torch.all(anchors[:, :, :2] == centres[:, None, :])
    # the size part of E(0) is 456.31 per point (Σ over the 343 anchor/target pairs of |Δw| + |Δh|)
    size_part = (anchors[..., 2:] - targets[:, 2:]).abs().sum() / 50
    assert float(size_part) == pytest.approx(456.31, abs=0.01)


def test_step_schedule():
    etas = S.step_sizes(200)
    assert etas[:160] == [0.1] * 160 and etas[160:180] == [0.01] * 20 and etas[180:] == [0.001] * 20


def _overlapping_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.cat([torch.full((n, 2), 10.0), 0.5 + 1.5 * torch.rand(n, 2, generator=g)], 1).double()
    box = target.clone()
    box[:, :2] += 0.3 * (torch.rand(n, 2, generator=g).double() - 0.5)
    box[:, 2:] *= 0.6 + 0.8 * torch.rand(n, 2, generator=g).double()
    return box, target


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_paper_iou_giou_directions_are_twice_the_size_gradient_when_boxes_overlap(kind):
    # Facts page, item 1-2: with overlap the signed intersection equals the clamped one, so the
    # script's direction is the true gradient of the similarity with w, h steps doubled.
    box, target = _overlapping_pairs(64, 0)
    direction, iou = S.paper_direction(kind, box, target)
    b = box.clone().requires_grad_(True)
    sim = iou_xyxy(S.to_xyxy(b), S.to_xyxy(target), kind).sum()
    (grad,) = torch.autograd.grad(sim, b)
    assert torch.allclose(
        direction * torch.tensor([1, 1, 0.5, 0.5], dtype=torch.float64), grad, rtol=1e-5, atol=1e-7
    )  # eps=1e-7 in iou_xyxy
    assert torch.allclose(iou, iou_xyxy(S.to_xyxy(box), S.to_xyxy(target), "iou"), atol=1e-12)


def test_paper_iou_direction_is_zero_without_overlap():
    box = torch.tensor([[13.0, 10.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[10.0, 10.0, 1.0, 1.0]], dtype=torch.float64)
    direction, iou = S.paper_direction("iou", box, target)
    assert torch.all(direction == 0) and float(iou) == 0.0


def test_paper_diou_direction_by_hand():
    # box (12, 10, 1, 1), target (10, 10, 1, 1): no overlap, so only the penalty acts.
    # Edges: box l=11.5 r=12.5 t=9.5 b=10.5; target l=9.5 r=10.5 t=9.5 b=10.5.
    # Enclosing box C_w = 3, C_h = 1, c^2 = 10, rho^2 = 4. Only r > r_gt holds, so the script's shared
    # derivative vector is (dx, dy, dw, dh) = (1, 0, 0.5, 0) for both C_w and C_h:
    # d(c^2) = 2*3*(1, 0, .5, 0) + 2*1*(1, 0, .5, 0) = (8, 0, 4, 0).
    # dx = (2*(10-12)*10 - 8*4)/100 = -0.72 ; dw = 4*4/100 = 0.16 ; dy = dh = 0.
    box = torch.tensor([12.0, 10.0, 1.0, 1.0], dtype=torch.float64)
    target = torch.tensor([10.0, 10.0, 1.0, 1.0], dtype=torch.float64)
    direction, _ = S.paper_direction("diou", box, target)
    assert direction.tolist() == pytest.approx([-0.72, 0.0, 0.16, 0.0], abs=1e-12)


def test_paper_diou_spanning_box_shrinks():
    # a box spanning the target horizontally: the script takes dC_w/dw = -1 (not +1).
    # box (10, 10, 3, 1) vs target (10, 10, 1, 1) shifted up by 2: box (10, 12, 3, 1).
    # l=8.5 < 9.5 and r=11.5 > 10.5 -> dC_w = (0, dy, -1, .); b = 12.5 > 10.5 -> shared vector
    # (0, 1, 1, 0.5) with dw replaced by -1 in C_w only; C_w = 3, C_h = 3, c^2 = 18, rho^2 = 4.
    # d(c^2)_w = 2*3*(-1) + 2*3*1 = 0 -> dw = 0 ; d(c^2)_h = 2*3*0.5 + 2*3*0.5 = 6 -> dh = 6*4/324.
    # d(c^2)_y = 2*3*1 + 2*3*1 = 12 -> dy = (2*(10-12)*18 - 12*4)/324 = -120/324.
    box = torch.tensor([10.0, 12.0, 3.0, 1.0], dtype=torch.float64)
    target = torch.tensor([10.0, 10.0, 1.0, 1.0], dtype=torch.float64)
    direction, _ = S.paper_direction("diou", box, target)
    assert direction.tolist() == pytest.approx([0.0, -120 / 324, 0.0, 24 / 324], abs=1e-12)


def test_paper_ciou_adds_the_aspect_direction():
    box, target = _overlapping_pairs(16, 3)
    d_ciou, iou = S.paper_direction("ciou", box, target)
    d_diou, _ = S.paper_direction("diou", box, target)
    x, y, w, h = box.unbind(-1)
    gap = torch.atan(target[:, 2] / target[:, 3]) - torch.atan(w / h)
    v = 4 / math.pi**2 * gap**2
    alpha = v / (1 - iou + v + 1e-7)
    expected = torch.stack(
        [0 * w, 0 * w, alpha * 8 / math.pi**2 * gap * h, -alpha * 8 / math.pi**2 * gap * w], -1
    )
    assert torch.allclose(d_ciou - d_diou, expected, atol=1e-12)


def test_autograd_step_is_per_case():
    # summing the per-case losses gives each case its own gradient: batch == one by one
    box, target = _overlapping_pairs(5, 4)
    grad, _ = S.autograd_step("diou", box, target)
    for i in range(5):
        g1, _ = S.autograd_step("diou", box[i : i + 1], target[i : i + 1])
        assert torch.allclose(grad[i], g1[0])


@pytest.fixture(scope="module")
def small_run():
    return S.run(points=40, steps=("autograd", "paper"), seed=0, show_progress=False)


def test_paper_steps_reproduce_fig3b_shape(small_run):
    # Fig. 3(b), and re-runs of the authors' script (5000 points): E(T)/E(0) IoU 0.89, GIoU 0.23,
    # DIoU = CIoU ~ 6e-4;
    # E(20): CIoU < DIoU < GIoU. 40 points scatter by a few per cent.
    e0, (_, paper), _ = small_run
    final = {k: c[-1] / e0 for k, c in paper.curves.items()}
    assert set(final) == {"iou", "giou", "diou", "ciou"}
    assert 0.8 < final["iou"] < 0.97
    assert 0.12 < final["giou"] < 0.35
    assert final["diou"] < 0.003 and final["ciou"] < 0.003
    e20 = {k: c[19] for k, c in paper.curves.items()}
    assert e20["ciou"] < e20["diou"] < e20["giou"] < e20["iou"]


def test_autograd_steps_match_the_true_gradient_findings(small_run):
    # the authors' plots: IoU stays ~0.9 E(0); every other loss ends well under 1 % of E(0); GIoU ends below
    # DIoU; EIoU lowest of all six.
    e0, (auto, _), _ = small_run
    assert e0 == pytest.approx(40 * (456.31 + 343 * 8 / math.pi), rel=0.2)
    final = {k: c[-1] / e0 for k, c in auto.curves.items()}
    assert set(final) == set(IOU_KINDS)
    assert 0.8 < final["iou"] < 0.97
    for k in ("giou", "diou", "ciou", "eiou", "siou", "wiou"):
        assert final[k] < 0.02, k  # ~0.4-0.7 % at 200+ points; 40 points scatter more
    assert final["giou"] < final["diou"]
    assert final["eiou"] == min(final[k] for k in ("iou", "giou", "diou", "ciou", "eiou", "siou"))
    # MPDIoU's corner terms are normalised by the image diagonal² (20² + 20², the canvas), ~100x the
    # enclosing box's c² here: a weak pull, between IoU's and the others'
    assert 0.1 < final["mpdiou"] < final["iou"]
    for res in small_run[1]:
        for k in res.curves:
            assert all(math.isfinite(v) for v in res.curves[k])
            assert res.final_per_point[k].shape == (40,)


def test_cli_simulate_writes_outputs(tmp_path, capsys):
    assert (
        main(
            [
                "simulate",
                "--points",
                "3",
                "--iterations",
                "20",
                "--step",
                "both",
                "--out",
                str(tmp_path),
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "E(T)/E(0)" in printed and "step: paper" in printed
    for name in (
        "simulate_curves_autograd.png",
        "simulate_curves_paper.png",
        "simulate_curves_both.png",
        "simulate_maps_autograd.png",
        "simulate_maps_paper.png",
    ):
        assert (tmp_path / name).stat().st_size > 1000
    data = json.loads((tmp_path / "simulate.json").read_text())
    assert len(data["E"]["autograd"]["siou"]) == 20 and len(data["E"]["paper"]["ciou"]) == 20
    assert all(math.isfinite(v) for curves in data["E"].values() for c in curves.values() for v in c)


def test_variants_parse_and_run():
    v = S.parse_variant("ciou+alpha")
    assert v.kind == "ciou" and dict(v.modifiers) == {"alpha": 3.0}
    assert dict(S.parse_variant("siou+focaler=0.1,0.9").modifiers) == {"focaler": (0.1, 0.9)}
    assert dict(S.parse_variant("giou+inner=1.2").modifiers) == {"inner_ratio": 1.2}
    for bad in ("dice", "giou+beta", "wiou+alpha", "giou+focaler=0.9,0.1"):
        with pytest.raises(ValueError):
            S.parse_variant(bad)
    box, target = _overlapping_pairs(8, 3)
    g, _ = S.autograd_step(v, box, target)
    b = box.clone().requires_grad_(True)
    loss = (1 - iou_xyxy(S.to_xyxy(b), S.to_xyxy(target), "ciou", alpha=3.0)).sum()
    assert torch.allclose(g, torch.autograd.grad(loss, b)[0])
    e0, (auto,), _ = S.run(points=4, kinds=("mpdiou", "giou+inner"), iterations=5, show_progress=False)
    assert list(auto.curves) == ["mpdiou", "giou+inner"] and all(c[-1] < e0 for c in auto.curves.values())
