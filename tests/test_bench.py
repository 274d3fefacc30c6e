"""`detloss bench` at a tiny size: it runs, prints one table, writes JSON; the peers compute our loss."""

from __future__ import annotations

import json

import pytest
import torch

import detloss
from detloss import bench
from detloss.cli import main

TINY = ["bench", "--sizes", "300", "--repeats", "2", "--min-time", "0", "--no-compile"]


def test_bench_prints_the_table_and_writes_json(capsys, tmp_path):
    path = tmp_path / "bench.json"
    assert main([*TINY, "--memory", "none", "--kinds", "giou,ciou,focal", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| case"))
    for col in ("ours", "naive", "torchvision", "floor", "naive/ours", "tv/ours", "ours/floor"):
        assert col in header
    rows = [line for line in out.splitlines() if line.startswith(("| iou_loss", "| sigmoid"))]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["iou_loss[giou]", "iou_loss[ciou]", "sigmoid_focal_loss"]
    data = json.loads(path.read_text())
    assert data["environment"]["threads"] == 2
    assert [r["n"] for r in data["rows"]] == [300, 300, 300]
    for r in data["rows"]:
        assert r["times_ms"]["ours"] > 0 and r["times_ms"]["naive"] > 0 and r["times_ms"]["floor"] > 0
        if bench._torchvision_ops() is None:
            assert r["times_ms"]["torchvision"] is None  # listed as skipped, not dropped
            assert "skipped" in out


def test_bench_rejects_unknown_kind(capsys):
    assert main([*TINY, "--kinds", "dice"]) == 2
    assert "unknown" in capsys.readouterr().out


def test_memory_is_measured_in_a_subprocess():
    mb = bench.measure_memory("iou_loss[giou]", 200_000, "naive")
    # the naive formula keeps ~20 float32 (N,) intermediates: 200k boxes -> ~16 MB; allow wide noise
    assert mb is not None and 2 < mb < 200


@pytest.mark.parametrize("name", [*bench.ALL_KINDS, *bench.VARIANTS])
def test_naive_peer_computes_our_loss(name):
    x = bench._box_inputs(500, torch.Generator().manual_seed(0))
    x = {k: v.double() for k, v in x.items()}
    kind, mods = name.partition("+")[0], dict(bench.VARIANTS.get(name, {}))
    image = {"image_size": bench.MPDIOU_IMAGE} if kind == "mpdiou" else {}
    ours = detloss.iou_loss(x["pred"], x["target"], kind, **mods, **image)
    naive = bench.naive_iou_loss(x["pred"], x["target"], kind, **mods)
    torch.testing.assert_close(naive, ours, rtol=1e-10, atol=1e-12)


def test_naive_focal_peer_computes_our_loss():
    x = bench._focal_inputs(50, torch.Generator().manual_seed(0))
    ours = detloss.sigmoid_focal_loss(x["pred"], x["target"])
    torch.testing.assert_close(bench.naive_focal_loss(x["pred"], x["target"]), ours, rtol=1e-5, atol=1e-7)


def test_registry_rejects_duplicates_and_labels():
    bench.default_cases()
    with pytest.raises(ValueError, match="already registered"):
        bench.register_case(bench.CASES["iou_loss[giou]"])
    assert [bench._label(n) for n in (300, 10**4, 250_000, 10**6)] == ["300", "1e4", "2.5e5", "1e6"]
