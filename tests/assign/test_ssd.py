"""SSD prior matching and hard negative mining on hand cases, against the behaviour of SSD.TensorFlow
(``utility/anchor_manipulator.py`` ``do_dual_max_match`` with ``gt_max_first=True``, and the hard
negative mining of ``train_ssd.py`` ``ssd_model_fn``). Every expected value is derived in the comments."""

from __future__ import annotations

import pytest
import torch

from detloss.assign import PRIOR_IGNORED, PRIOR_NEGATIVE, PaddedTargets, hard_negative_mask, match_priors
from detloss.profiling import DispatchCounter
from tests.helpers import pad_by_hand

NEG, IGN = PRIOR_NEGATIVE, PRIOR_IGNORED


def _targets(*images, dtype=torch.float32):
    """Pad per-image xyxy box lists by hand (real boxes first), labels all 0."""
    boxes, mask = pad_by_hand(*images, dtype=dtype)
    return PaddedTargets(boxes, torch.zeros(mask.shape, dtype=torch.int64), mask)


# p0 and p1 overlap by half; p2 is apart; p3 is far from every box below
PRIORS = torch.tensor([[0, 0, 2, 2], [1, 0, 3, 2], [4, 4, 6, 6], [10, 10, 11, 11]], dtype=torch.float32)


def test_codes():
    # the criteria and the reference port both rely on these two sentinel values
    assert (PRIOR_NEGATIVE, PRIOR_IGNORED) == (-1, -2)


def test_threshold_and_ignore_band():
    # box 0 = p0: IoU 1 with p0, with p1 inter 1·2 = 2, union 4 + 4 − 2 = 6 → 1/3, 0 with p2, p3.
    # box 1 = [4, 4, 6, 7] (area 6): with p2 inter 4, union 6 → 2/3; 0 elsewhere.
    t = _targets([[0, 0, 2, 2], [4, 4, 6, 7]])
    # p0 → box 0 (1 ≥ 0.5); p1's best is box 0 at 1/3 < 0.5 → negative; p2 → box 1 (2/3);
    # p3 overlaps nothing (IoU 0 with both) → negative. Each box's best prior (p0, p2) agrees.
    assert match_priors(t, PRIORS, 0.5).tolist() == [[0, NEG, 1, NEG]]
    # with the band [0.3, 0.5): p1 (1/3) is ignored, p3 (0 < 0.3) stays negative
    assert match_priors(t, PRIORS, 0.5, ignore_threshold=0.3).tolist() == [[0, IGN, 1, NEG]]
    # a band starting above 1/3 ignores nothing
    assert match_priors(t, PRIORS, 0.5, ignore_threshold=0.4).tolist() == [[0, NEG, 1, NEG]]
    # a lower match threshold takes p1 too (1/3 ≥ 0.3)
    assert match_priors(t, PRIORS, 0.3).tolist() == [[0, 0, 1, NEG]]


def test_iou_exactly_at_the_threshold_matches():
    # box [0, 0, 4, 2] (area 8) holds p0 and p1 (area 4 each): IoU 4 / 8 = 0.5 exactly with both (no
    # eps in the union, so exactly 0.5 in float32). p0 is the box's forced best prior (first on the
    # tie); p1 matches by the threshold test ≥ 0.5, which an eps or a strict > would turn negative.
    t = _targets([[0, 0, 4, 2]])
    assert match_priors(t, PRIORS, 0.5).tolist() == [[0, 0, NEG, NEG]]
    # just above 0.5, p1 is negative: only the forced p0 remains
    assert match_priors(t, PRIORS, 0.5001).tolist() == [[0, NEG, NEG, NEG]]
    # the ignore band is closed below too: ignore_threshold = 0.5 ignores the IoU-0.5 prior
    assert match_priors(t, PRIORS, 0.6, ignore_threshold=0.5).tolist() == [[0, IGN, NEG, NEG]]


def test_each_prior_takes_its_best_box_first_on_ties():
    # boxes 0 and 1 are the same box [0, 0, 4, 2]: every IoU ties, so p0 and p1 take box 0 (the
    # first); box 1's forced best prior is p0 as well, and on that tie of forcers the first (0) wins.
    t = _targets([[0, 0, 4, 2], [0, 0, 4, 2]])
    assert match_priors(t, PRIORS, 0.5).tolist() == [[0, 0, NEG, NEG]]
    # box 0 = [0, 0, 1, 2]: IoU 2/4 = 0.5 with p0, 0 with p1 (touching edge at x = 1);
    # box 1 = [1, 0, 2, 2]: IoU 2/4 = 0.5 with p0 and 2/4 = 0.5 with p1.
    # p0: tie 0.5 / 0.5 → box 0; p1: box 1. Box 1's best prior is p0 (first on its tie) but box 0
    # forces p0 too with the same IoU → the first forcer (box 0) keeps p0.
    t = _targets([[0, 0, 1, 2], [1, 0, 2, 2]])
    assert match_priors(t, PRIORS, 0.5).tolist() == [[0, 1, NEG, NEG]]


def test_each_box_forces_its_best_prior_below_the_threshold():
    # box [0, 0, 1, 1]: IoU 1/4 with p0, 0 with p1 (zero-width overlap) → p0 is forced although
    # 0.25 < 0.5, and p1..p3 stay negative
    t = _targets([[0, 0, 1, 1]])
    assert match_priors(t, PRIORS, 0.5).tolist() == [[0, NEG, NEG, NEG]]


def test_forcing_overrides_a_better_non_forcing_box():
    # priors q0 = [0, 0, 2, 2], q1 = [0, 0, 4, 2].
    # box 0 = [0, 0, 4, 2]: IoU 4/8 = 0.5 with q0, 1 with q1 → its best prior is q1.
    # box 1 = [0, 0, 1, 1]: IoU 1/4 with q0, 1/8 with q1 → its best prior is q0.
    # Step 2 gives q0 → box 0 (0.5 ≥ 0.5 beats 0.25), but box 1 forces q0: only forcers compete there.
    priors = torch.tensor([[0, 0, 2, 2], [0, 0, 4, 2]], dtype=torch.float32)
    t = _targets([[0, 0, 4, 2], [0, 0, 1, 1]])
    assert match_priors(t, priors, 0.5).tolist() == [[1, 0]]


def test_several_forcers_highest_iou_wins():
    # both boxes' best prior is q0 = [0, 0, 2, 2]: box 0 = [0, 0, 2, 3] has IoU 4/6 with q0 (1/8 with
    # q1), box 1 = [0, 0, 2, 2] has IoU 1 → box 1 wins q0 although box 0 comes first
    priors = torch.tensor([[0, 0, 2, 2], [4, 0, 8, 2]], dtype=torch.float32)
    t = _targets([[0, 0, 2, 3], [0, 0, 2, 2]])
    assert match_priors(t, priors, 0.5).tolist() == [[1, NEG]]
    # listed the other way round the same box wins: the IoU decides, not the order
    t = _targets([[0, 0, 2, 2], [0, 0, 2, 3]])
    assert match_priors(t, priors, 0.5).tolist() == [[0, NEG]]


def test_box_overlapping_no_prior_forces_prior_zero():
    # box [20, 20, 21, 21] overlaps no prior: its IoU row is all 0 and the first on ties is p0, which
    # it takes regardless of the threshold (SSD.TensorFlow's tf.argmax over the box's row)
    t = _targets([[20, 20, 21, 21]])
    assert match_priors(t, PRIORS, 0.5).tolist() == [[0, NEG, NEG, NEG]]
    # after a real match to p2 ([4, 4, 6, 6] = p2, IoU 1): box 1 still forces p0. The original picks
    # p0's box by tf.argmax over IoU · forced, which is 0 for both boxes (box 0 does not touch p0,
    # box 1 forces it with IoU 0), so the first box (0) gets p0 — a quirk of the original kept here.
    t = _targets([[4, 4, 6, 6], [20, 20, 21, 21]])
    assert match_priors(t, PRIORS, 0.5).tolist() == [[0, NEG, 0, NEG]]


def test_padding_row_never_matched_by_forced_zero_iou():
    # PaddedTargets lets the real boxes sit anywhere under the mask; here row 0 is padding and row 1 a
    # real box overlapping no prior, which forces p0 with IoU 0. Prior 0 must go to box 1, never to the
    # padding row (an IoU·mask product once tied the two at 0 and −0.0, and the first row won).
    boxes = torch.tensor([[[0, 0, 0, 0], [20, 20, 21, 21]]], dtype=torch.float32)
    t = PaddedTargets(boxes, torch.zeros(1, 2, dtype=torch.int64), torch.tensor([[False, True]]))
    assert match_priors(t, PRIORS, 0.5).tolist() == [[1, NEG, NEG, NEG]]


def test_padding_rows_never_win():
    # image 0 has one box = p2; image 1 has the same box and a padding row [0, 0, 2, 2] that would be
    # IoU 1 with p0 if it were read. Row positions under the mask do not matter when the real box
    # overlaps a prior: the padding row is first in image 1.
    boxes = torch.tensor([[[4, 4, 6, 6], [0, 0, 2, 2]], [[0, 0, 2, 2], [4, 4, 6, 6]]], dtype=torch.float32)
    mask = torch.tensor([[True, False], [False, True]])
    t = PaddedTargets(boxes, torch.zeros(2, 2, dtype=torch.int64), mask)
    assert match_priors(t, PRIORS, 0.5).tolist() == [[NEG, NEG, 0, NEG], [NEG, NEG, 1, NEG]]


def test_batch_and_empty_images():
    # image 0 as in test_threshold_and_ignore_band; image 1 has no box (a padding row only): every
    # prior negative, ignored or not
    t = _targets([[0, 0, 2, 2], [4, 4, 6, 7]], [])
    assert match_priors(t, PRIORS, 0.5, 0.3).tolist() == [[0, IGN, 1, NEG], [NEG] * 4]
    # no image has a box: M = 0
    t = _targets([], [])
    assert t.boxes.shape == (2, 0, 4)
    out = match_priors(t, PRIORS, 0.5, 0.3)
    assert out.dtype == torch.int64 and out.tolist() == [[NEG] * 4, [NEG] * 4]


def test_degenerate_prior_and_box_iou_is_zero():
    # a zero-area prior at the zero-area box [1, 1, 1, 1]: inter 0, union 0 → IoU 0 (not NaN), so the
    # point prior is negative while the box still forces its first-on-ties prior p0 (all IoUs 0)
    priors = torch.tensor([[0, 0, 2, 2], [1, 1, 1, 1]], dtype=torch.float32)
    t = _targets([[1, 1, 1, 1]])
    assert match_priors(t, priors, 0.5).tolist() == [[0, NEG]]
    # with an ignore band from 0 every IoU-0 prior not forced is ignored: NaN would fall out of it
    assert match_priors(t, priors, 0.5, ignore_threshold=0.0).tolist() == [[0, IGN]]


# --- hard negative mining ---------------------------------------------------------------------


def _mine(bg, pos, neg, ratio):
    return hard_negative_mask(
        torch.tensor(bg), torch.tensor(pos, dtype=torch.bool), torch.tensor(neg, dtype=torch.bool), ratio
    ).tolist()


# one image: prior 0 positive, prior 4 neither (ignored: its low background probability must not
# count), priors 1, 2, 3, 5 the negatives with background probabilities 0.2, 0.5, 0.2, 0.8
BG = [[0.9, 0.2, 0.5, 0.2, 0.1, 0.8]]
POS = [[1, 0, 0, 0, 0, 0]]
NEGS = [[0, 1, 1, 1, 0, 1]]


@pytest.mark.parametrize(
    "ratio,kept",
    [
        # k = min(floor(3 · 1), 4) = 3: the three lowest background probabilities 0.2 (p1), 0.2 (p3), 0.5
        (3.0, [0, 1, 1, 1, 0, 0]),
        # k = 2: p1 and p3
        (2.0, [0, 1, 0, 1, 0, 0]),
        # k = 1: p1 and p3 tie at 0.2; the stable sort keeps the lower index p1 only
        (1.0, [0, 1, 0, 0, 0, 0]),
        # k = floor(1.9) = 1: floored, not rounded
        (1.9, [0, 1, 0, 0, 0, 0]),
        # k = min(10, 4) = 4: every negative, never the ignored p4
        (10.0, [0, 1, 1, 1, 0, 1]),
        # ratio 0 keeps none
        (0.0, [0, 0, 0, 0, 0, 0]),
    ],
)
def test_hard_negatives_ranked_lowest_background_first(ratio, kept):
    assert _mine(BG, POS, NEGS, ratio) == [[bool(v) for v in kept]]


def test_hard_negatives_per_image():
    # image 0: two positives, ratio 1.5 → k = floor(3.0) = 3 of its 4 negatives (bg 0.4, 0.1, 0.3, 0.2
    # at p2..p5): p3 (0.1), p5 (0.2), p4 (0.3).
    # image 1: no positive → k = 0 although it has the lowest probabilities of the batch.
    # image 2: one positive, ratio 1.5 → k = 1: p1 (0.7) over p2 (0.9); its ranking ignores image 0.
    bg = [[0.9, 0.9, 0.4, 0.1, 0.3, 0.2], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.6, 0.7, 0.9, 0.5, 0.5, 0.5]]
    pos = [[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    neg = [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    assert _mine(bg, pos, neg, 1.5) == [
        [False, False, False, True, True, True],
        [False] * 6,
        [False, True, False, False, False, False],
    ]


def test_hard_negatives_empty():
    # no priors at all and a batch of zero images: empty masks, no error
    assert hard_negative_mask(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool),
                              torch.zeros(2, 0, dtype=torch.bool)).shape == (2, 0)
    assert hard_negative_mask(torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool),
                              torch.zeros(0, 5, dtype=torch.bool)).shape == (0, 5)


def test_no_host_sync():
    # both run inside the loss on the device: no value may be read back to the host
    t = _targets([[0, 0, 2, 2], [4, 4, 6, 7]], [])
    bg = torch.tensor([[0.9, 0.2, 0.5, 0.2], [0.9, 0.2, 0.5, 0.2]])
    with DispatchCounter() as c:
        matched = match_priors(t, PRIORS, 0.5, 0.3)
        kept = hard_negative_mask(bg, matched >= 0, matched == NEG, 3.0)
    assert c.syncs == 0, c.sync_ops
    assert c.ops > 0  # the counter saw the work
    # image 0 is [0, IGN, 1, NEG]: 2 positives → k = min(6, 1), its only negative p3; image 1: all
    # negative but no positive → none kept
    assert kept.tolist() == [[False, False, False, True], [False] * 4]
