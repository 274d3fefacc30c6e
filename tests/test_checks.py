"""detloss.checks: every check names the argument, refuses what it must and returns what it accepts."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import checks
from detloss.criteria import DETRLoss, SSDLoss, YOLOv3Loss, YOLOv4Loss, YOLOv5Loss, YOLOv8Loss


@pytest.mark.parametrize("bad", [True, False, 80.0, "80", None])
def test_num_classes_must_be_an_int(bad):
    with pytest.raises(TypeError, match="num_classes must be an int"):
        checks.check_num_classes(bad)


@pytest.mark.parametrize("bad", [0, -3])
def test_num_classes_must_be_positive(bad):
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        checks.check_num_classes(bad)


def test_num_classes_is_returned():
    assert checks.check_num_classes(80) == 80


def _priors() -> torch.Tensor:
    return torch.tensor([[0.5, 0.5, 0.2, 0.2]])


CRITERIA = {
    "YOLOv3Loss": lambda c: YOLOv3Loss(c),
    "YOLOv4Loss": lambda c: YOLOv4Loss(c),
    "YOLOv5Loss": lambda c: YOLOv5Loss(c),
    "YOLOv8Loss": lambda c: YOLOv8Loss(c),
    "SSDLoss": lambda c: SSDLoss(c, _priors()),
    "DETRLoss": lambda c: DETRLoss(c),
}


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_refuses_true_as_a_class_count(name):
    """``True == 1`` in Python: without the bool test a criterion would quietly train one class."""
    with pytest.raises(TypeError, match="num_classes must be an int"):
        CRITERIA[name](True)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        CRITERIA[name](0)


def test_one_of_names_the_argument_and_the_options():
    checks.check_one_of("fmt", "xyxy", ("xyxy", "cxcywh"))
    with pytest.raises(ValueError, match=r"fmt must be one of \('xyxy', 'cxcywh'\), got 'xywhr'"):
        checks.check_one_of("fmt", "xywhr", ("xyxy", "cxcywh"))


def test_finite_reports_the_first_bad_index():
    t = torch.zeros(3, 4)
    checks.check_finite("boxes", t)
    t[1, 2], t[2, 0] = math.nan, math.inf
    with pytest.raises(ValueError, match=r"boxes has a non-finite value \(nan\) at index \(1, 2\)"):
        checks.check_finite("boxes", t)


def test_finite_survives_an_overflowing_sum_of_finite_values():
    """The happy path is one sum; finite values whose float32 sum overflows are still finite."""
    checks.check_finite("x", torch.full((4,), 3e38))


@pytest.mark.parametrize(
    ("boxes", "error", "message"),
    [
        ([0.0, 0.0, 1.0, 1.0], TypeError, "must be a torch.Tensor"),
        (torch.zeros(2, 4, dtype=torch.int64), TypeError, "floating dtype"),
        (torch.zeros(2, 5), ValueError, r"shape \(\.\.\., 4\)"),
        (torch.zeros(()), ValueError, r"shape \(\.\.\., 4\)"),
    ],
)
def test_boxes(boxes, error, message):
    with pytest.raises(error, match=f"pred {message}|pred must .*{message}"):
        checks.check_boxes("pred", boxes)


def test_broadcast_must_not_enlarge():
    checks.check_broadcasts_to("weight", torch.ones(1), torch.Size([5]), "the loss shape")
    # (N, 1) against (N,) would silently give (N, N)
    with pytest.raises(ValueError, match=r"weight of shape \(5, 1\) must broadcast to the loss shape \(5,\)"):
        checks.check_broadcasts_to("weight", torch.ones(5, 1), torch.Size([5]), "the loss shape")


def test_class_ids_report_the_first_bad_index():
    checks.check_class_ids("labels", torch.tensor([0, 2]), 3)
    with pytest.raises(ValueError, match=r"labels holds class id 3 at index \(1,\), outside \[0, 3\)"):
        checks.check_class_ids("labels", torch.tensor([0, 3, -1]), 3)


def test_positive_ints():
    assert checks.positive_ints("strides", [8, 16.0, 32]) == (8, 16, 32)
    for bad in ([8, 0], [8.5], [], [True], ["8"]):
        with pytest.raises(ValueError, match="strides must be positive integers"):
            checks.positive_ints("strides", bad)


def test_number_bounds_and_bools():
    assert checks.check_number("gamma", 2, low=0.0) == 2.0
    assert checks.check_number("beta", 0.0, low=0.0) == 0.0
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        checks.check_number("beta", 0.0, low=0.0, open_low=True)
    with pytest.raises(ValueError, match=r"t must be a finite number >= 0\.0 and <= 1\.0, got 1\.5"):
        checks.check_number("t", 1.5, low=0.0, high=1.0)
    for bad in (True, math.nan, math.inf, "1"):
        with pytest.raises(ValueError, match="gamma must be a finite number"):
            checks.check_number("gamma", bad)


def test_gain():
    assert checks.check_gain("box", 7.5) == 7.5
    for bad in (-1.0, math.inf, False):
        with pytest.raises(ValueError, match="box must be a finite number >= 0"):
            checks.check_gain("box", bad)


def test_unit():
    checks.check_unit("ignore_thresh", 0.0)
    checks.check_unit("ignore_thresh", 1.0)
    for bad in (-0.1, 1.1, math.nan, True):
        with pytest.raises(ValueError, match="ignore_thresh must lie in"):
            checks.check_unit("ignore_thresh", bad)


def test_eps_is_at_least_float32_tiny():
    """A smaller eps is 0 in float32: 0/0 on zero-area boxes."""
    checks.check_eps(torch.finfo(torch.float32).tiny)
    with pytest.raises(ValueError, match="iou_eps must be a finite number >= 1.18e-38"):
        checks.check_eps(1e-40, "iou_eps")
    with pytest.raises(ValueError, match="eps must be a finite number"):
        checks.check_eps(math.nan)


def test_modifiers_conflicts_and_mpdiou_size():
    checks.check_modifiers("ciou", alpha=3.0)
    checks.check_modifiers("mpdiou", image_size=(640, 480))
    with pytest.raises(ValueError, match="kind must be one of"):
        checks.check_modifiers("xiou")
    with pytest.raises(ValueError, match="at most one IoU modifier per call, got alpha and focaler"):
        checks.check_modifiers("giou", alpha=2.0, focaler=(0.0, 0.9))
    with pytest.raises(ValueError, match="kind='wiou' takes no modifier"):
        checks.check_modifiers("wiou", inner_ratio=1.2)
    with pytest.raises(ValueError, match="needs image_size"):
        checks.check_modifiers("mpdiou")
    with pytest.raises(ValueError, match="image_size is only used by kind='mpdiou'"):
        checks.check_modifiers("iou", image_size=640)
