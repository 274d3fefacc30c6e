"""SSD prior matching and hard negative mining."""

from __future__ import annotations

import torch
from torch import Tensor

from ..iou import iou_xyxy
from ..kernels.geometry import coordinate_planes
from .targets import PaddedTargets

# ---------------------------------------------------------------------------------------------
# SSD prior matching and hard negative mining (SSD.TensorFlow utility/anchor_manipulator.py
# do_dual_max_match, train_ssd.py ssd_model_fn)
# ---------------------------------------------------------------------------------------------

PRIOR_NEGATIVE = -1
"""The :func:`match_priors` code of a background prior (no box matched)."""
PRIOR_IGNORED = -2
"""The :func:`match_priors` code of an ignored prior (best IoU in ``[ignore_threshold, match_threshold)``)."""


def match_priors(
    targets: PaddedTargets,
    priors: Tensor,
    match_threshold: float = 0.5,
    ignore_threshold: float | None = None,
) -> Tensor:
    """SSD's dual max matching of priors and boxes, vectorised over the batch.

    Steps (``do_dual_max_match`` with ``gt_max_first=True``):

    1. IoU of every box and prior, 0 where the union is 0 (no eps: a box exactly at the threshold
       matches).
    2. Each prior takes its best box (first on ties) if that IoU ≥ ``match_threshold``; below, it is
       negative, or ignored if the IoU ≥ ``ignore_threshold`` (the band
       ``[ignore_threshold, match_threshold)``).
    3. Each box forces its best prior (first on ties — a box overlapping no prior forces prior 0)
       regardless of the threshold; several boxes forcing one prior: the highest IoU on it wins
       (first on ties).

    Args:
        targets: padded boxes ``(B, M, 4)`` xyxy with their mask.
        priors: ``(P, 4)`` xyxy, in the boxes' coordinates.
        match_threshold: in (0, 1].
        ignore_threshold: ``None`` or in [0, match_threshold].

    Returns:
        ``(B, P)`` int64: the matched box index (≥ 0), ``PRIOR_NEGATIVE`` (−1) or ``PRIOR_IGNORED`` (−2).
    """
    bsz, m = targets.mask.shape
    num_priors = priors.shape[0]
    if m == 0:
        return torch.full((bsz, num_priors), PRIOR_NEGATIVE, dtype=torch.int64, device=priors.device)
    with torch.no_grad():
        # eps = 0: inter/union exactly, with 0/0 (both areas 0) → 0 as in the original
        planes = coordinate_planes(priors)[None, None]  # the priors innermost, along contiguous rows
        iou = iou_xyxy(targets.boxes[:, :, None, :], planes, "iou", 0.0).nan_to_num(0.0)
        iou = iou.masked_fill(~targets.mask[..., None], -1.0)  # (B, M, P); padding never wins

        # torch.max(dim) returns the first index on ties (documented), and over a short middle dim
        # it is several times faster than argmax
        best_iou, best_box = iou.max(1)  # (B, P)
        matched = best_box.masked_fill(best_iou < match_threshold, PRIOR_NEGATIVE)
        if ignore_threshold is not None:
            band = (best_iou >= ignore_threshold) & (best_iou < match_threshold)
            matched = matched.masked_fill(band, PRIOR_IGNORED)

        best_prior = iou.argmax(2, keepdim=True)  # (B, M, 1), first on ties
        forced = torch.zeros_like(iou, dtype=torch.bool).scatter_(2, best_prior, targets.mask[..., None])
        # (B, P) highest IoU·forced, as the original's argmax (a real box that does not force a prior
        # ties at 0 with a forcer of IoU 0, and the first wins); padding rows at −1 never win
        forced_iou = (iou * forced).masked_fill(~targets.mask[..., None], -1.0)
        forced_box = forced_iou.max(1).indices
        return torch.where(forced.any(1), forced_box, matched)


def hard_negative_mask(
    bg_prob: Tensor, positive: Tensor, negative: Tensor, neg_pos_ratio: float = 3.0
) -> Tensor:
    """Hard negative mining per image by the rank trick.

    Negatives are ranked by ``bg_prob`` lowest first (the most confidently wrong first); each image
    keeps ``k = min(floor(neg_pos_ratio · #positives), #negatives)`` of them, so an image without
    positives keeps none. The rank of every prior is the inverse permutation of a stable sort, so
    ties keep the lower prior index (the original keeps every negative tied with the k-th score).

    Args:
        bg_prob: ``(B, P)`` predicted background probability (no gradient needed).
        positive: ``(B, P)`` bool, the priors counted as positives for k.
        negative: ``(B, P)`` bool, the candidates.
        neg_pos_ratio: ≥ 0.

    Returns:
        ``(B, P)`` bool mask of the kept negatives.
    """
    with torch.no_grad():
        num_pos = positive.sum(1, dtype=torch.float64)
        k = torch.minimum((num_pos * neg_pos_ratio).floor().long(), negative.sum(1))
        score = bg_prob.masked_fill(~negative, float("inf"))
        order = score.argsort(dim=1, stable=True)
        ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, ranks)
        return negative & (rank < k[:, None])
