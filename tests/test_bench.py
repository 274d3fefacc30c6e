"""``benchmarks/bench.py`` at a tiny size: each table runs and prints, the JSON and the memory worker work.

The benchmark is tooling beside the package, not library code; these tests only keep it runnable.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import bench

TINY = ["--sizes", "300", "--repeats", "2", "--min-time", "0", "--no-compile", "--threads", "1"]


def test_loss_table_and_json(capsys, tmp_path):
    path = tmp_path / "bench.json"
    kinds = ["--kinds", "giou,ciou+inner,focal"]
    assert bench.main([*TINY, *kinds, "--memory", "none", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| case"))
    for col in ("ours", "naive", "torchvision", "floor", "naive/ours", "tv/ours", "ours/floor"):
        assert col in header
    rows = [line for line in out.splitlines() if line.startswith(("| iou_loss", "| sigmoid"))]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["iou_loss[giou]", "iou_loss[ciou+inner]", "sigmoid_focal_loss"]
    data = json.loads(path.read_text())
    assert data["environment"]["threads"] == 1
    assert [r["n"] for r in data["rows"]] == [300, 300, 300]
    for r in data["rows"]:
        assert r["times_ms"]["ours"] > 0 and r["times_ms"]["naive"] > 0 and r["times_ms"]["floor"] > 0
        if bench.torchvision_ops() is None:
            assert r["times_ms"]["torchvision"] is None  # listed as skipped, not dropped


@pytest.mark.parametrize("argv", [["--kinds", "dice"], ["--ports", "rcnn"], ["--criteria", "rcnn"]])
def test_unknown_names_are_refused(argv, capsys):
    assert bench.main([*TINY, *argv]) == 2
    out = capsys.readouterr().out
    assert "unknown" in out or "no criterion" in out


def test_criteria_table(capsys):
    argv = ["--criteria", "tiny", "--no-compile", "--repeats", "1", "--min-time", "0", "--threads", "1"]
    assert bench.main(argv) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| YOLOv4Loss tiny"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert int(cells[1]) > 0 and cells[2:4] == ["0", "1"]  # no sync, one with validation
    assert float(cells[4]) > 0 and cells[5] == "–"  # eager timed, compiled not


def test_memory_is_measured_in_a_subprocess():
    mb = bench.measure_memory("iou_loss[giou]", 200_000, "naive")
    # the naive formula keeps ~20 float32 (N,) intermediates: 200k boxes -> ~16 MB; allow wide noise
    assert mb is not None and 2 < mb < 200


def test_size_labels():
    assert [bench.size_label(n) for n in (300, 10**4, 250_000, 10**6)] == ["300", "1e4", "2.5e5", "1e6"]
