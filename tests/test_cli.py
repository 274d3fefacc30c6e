"""The ``detloss`` command: the tour runs and prints the whole IoU family."""

from __future__ import annotations

import pytest

from detloss.cli import main

KINDS = ("iou", "giou", "diou", "ciou", "eiou", "siou")


@pytest.mark.parametrize("argv", [[], ["tour"]])
def test_tour(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for kind in KINDS:
        assert any(line.split()[:1] == [kind] for line in lines), kind
    # the default pair is [0,0,4,2] vs [1,1,3,5]: I = 2, U = 14, IoU = 1/7 = 0.14286
    iou_line = next(line for line in lines if line.split()[:1] == ["iou"])
    assert float(iou_line.split()[1]) == pytest.approx(1 / 7, abs=1e-5)
    assert "focal" in out.lower() and "BCE" in out


def test_tour_custom_boxes(capsys):
    # identical boxes: every kind is 1
    assert main(["tour", "--pred", "0", "0", "2", "2", "--target", "0", "0", "2", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for kind in KINDS:
        line = next(li for li in lines if li.split()[:1] == [kind])
        assert float(line.split()[1]) == pytest.approx(1.0, abs=1e-5)


def test_bad_arguments_exit_with_usage():
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_tour_options_without_the_subcommand(capsys):
    # `detloss --pred ... --target ...` runs the default command with its options
    assert main(["--pred", "0", "0", "1", "1", "--target", "0", "0", "2", "1"]) == 0
    out = capsys.readouterr().out
    iou_line = next(line for line in out.splitlines() if line.startswith("iou "))
    assert float(iou_line.split()[1]) == 0.5  # area 1 inside area 2
