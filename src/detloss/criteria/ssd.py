"""SSD criterion: reproduces SSD.TensorFlow (``train_ssd.py``, ``utility/anchor_manipulator.py``).

With the matches of :func:`detloss.assign.match_priors`, the targets encoded by
:func:`detloss.codecs.encode_ssd` and the negatives kept by :func:`detloss.assign.hard_negative_mask`::

    conf = g_conf · (ratio + 1) · Σ_kept CE(conf_p, class_p) / #kept      kept = positives + hard negatives
    loc  = g_loc · Σ_pos Σ_4 smoothL1_σ(loc_p − t_p) / #pos
    total = conf + loc                                                  (the gains g default to 1)

``normalize="positives"`` gives the SSD paper's ``(Σ_kept CE + Σ_pos Σ_4 smoothL1) / max(#pos, 1)``
(as ssd.pytorch). A sum over an empty set divided by its zero count is 0. Details: docs/ssd.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assign import PRIOR_NEGATIVE, PaddedTargets, hard_negative_mask, match_priors, pad_targets
from ..boxes import convert
from ..checks import check_boxes, check_gain, check_num_classes, check_padded_targets, check_tensor
from ..codecs import SSD_VARIANCES, encode_ssd
from ..distributed import global_count
from ..iou import compute_dtype
from ..losses import smooth_l1_loss
from .result import LossResult

Normalize = Literal["mean", "positives"]

_EPS = torch.finfo(torch.float32).eps  # the floor of a count that may be 0 (as weight_reduce's avg_factor)


class SSDLoss(nn.Module):
    """The SSD training loss of SSD.TensorFlow (defaults), with the paper's 1/N as an option.

    Args:
        num_classes: C foreground classes; ``conf`` has C + 1 columns, column 0 = background and
            a box of label l has class target l + 1.
        priors: ``(P, 4)`` cxcywh default boxes, in the targets' coordinates (e.g. pixels of the
            input, or [0, 1] if the targets are normalised).
        variances: prior scaling (cx, cy, w, h).
        match_threshold: a prior is positive when its best IoU ≥ this (or it is a box's best prior).
        neg_pos_ratio: hard negatives kept per positive, and the conf loss factor ratio + 1.
        sigma: of the smooth L1 (``beta = 1/σ²``).
        ignore_threshold: ``None`` (no band) or a value ≤ match_threshold: priors whose best IoU
            lies in ``[ignore_threshold, match_threshold)`` are neither positive nor negative.
        normalize: ``"mean"`` (the original: each term averaged over its own count, conf × (ratio + 1))
            or ``"positives"`` (both summed and divided by max(#positives, 1), no ratio factor).
        count_ignored_as_positive: SSD.TensorFlow's train_ssd.py counts positives with
            ``count_nonzero(cls_targets)``, which includes ignored priors (label −1), when sizing
            the hard negatives; True reproduces that (it only matters with an ignore band).
        loc, conf: gains of the two components (the original has none: both 1).
        validate: check targets (finite, positive size, class range) in :func:`detloss.assign.pad_targets`.
        reduce_across_ranks: under DistributedDataParallel, normalise by the batch counts
            (#kept, #positives) averaged over the ranks (:func:`detloss.distributed.global_count`),
            so DDP's gradient average equals the single-process gradient of the whole batch.
            The hard-negative count k stays per image. No effect without a process group.

    Call:
        preds: ``(loc (B, P, 4), conf (B, P, C + 1))``, loc offsets in (cx, cy, w, h) order.
        targets: B dicts ``{"boxes": (n, 4) xyxy, "labels": (n,) int64 in [0, C)}``, the boxes in the
            priors' units (input pixels, or [0, 1] if the priors are normalised); or a
            :class:`detloss.assign.PaddedTargets` of such boxes already on the device (skips the
            padding and its value checks; its shapes are checked).

    Returns:
        :class:`LossResult` with ``total = conf + loc``, components ``{"loc", "conf"}`` (gains
        applied) and ``per_image`` ``(B,)``: image b's share, its kept priors' CE and its positives'
        smooth L1 over the same batch counts, so ``per_image.sum() == total``.
    """

    def __init__(
        self,
        num_classes: int,
        priors: Tensor,
        *,
        variances: Sequence[float] = SSD_VARIANCES,
        match_threshold: float = 0.5,
        neg_pos_ratio: float = 3,
        sigma: float = 1.0,
        ignore_threshold: float | None = None,
        normalize: Normalize = "mean",
        count_ignored_as_positive: bool = False,
        loc: float = 1.0,
        conf: float = 1.0,
        validate: bool = True,
        reduce_across_ranks: bool = False,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        check_boxes("priors", priors)
        if priors.dim() != 2:
            raise ValueError(f"priors must have shape (P, 4), got {tuple(priors.shape)}")
        bad = (priors[:, 2:] <= 0).any(1)
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise ValueError(f"priors[{j}] = {priors[j].tolist()} must have positive width and height")
        variances = tuple(float(v) for v in variances)
        if len(variances) != 4 or any(v <= 0 for v in variances):
            raise ValueError(f"variances must be 4 positive numbers, got {variances}")
        if not 0 < match_threshold <= 1:
            raise ValueError(f"match_threshold must lie in (0, 1], got {match_threshold}")
        if ignore_threshold is not None and not 0 <= ignore_threshold <= match_threshold:
            raise ValueError(
                f"ignore_threshold must lie in [0, match_threshold={match_threshold}], got {ignore_threshold}"
            )
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if normalize not in ("mean", "positives"):
            raise ValueError(f"normalize must be 'mean' or 'positives', got {normalize!r}")
        self.num_classes = num_classes
        self.register_buffer("priors", priors.detach().clone(), persistent=False)
        self.register_buffer("priors_xyxy", convert(self.priors, "cxcywh", "xyxy"), persistent=False)
        self.variances = variances
        self.match_threshold, self.ignore_threshold = float(match_threshold), ignore_threshold
        self.neg_pos_ratio, self.sigma, self.normalize = neg_pos_ratio, float(sigma), normalize
        self.count_ignored_as_positive = bool(count_ignored_as_positive)
        self.gains = {"loc": check_gain("loc", loc), "conf": check_gain("conf", conf)}
        self.reduce_across_ranks = bool(reduce_across_ranks)
        self.validate = bool(validate)

    def _check_preds(self, preds: Sequence[Tensor], batch: int) -> tuple[Tensor, Tensor]:
        if isinstance(preds, Tensor) or not isinstance(preds, Sequence) or len(preds) != 2:
            raise TypeError("preds must be a pair (loc, conf)")
        loc, conf = preds
        num_priors = self.priors.shape[0]
        for name, t, k in (("loc", loc, 4), ("conf", conf, self.num_classes + 1)):
            check_tensor(name, t)
            if not t.is_floating_point():
                raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
            if tuple(t.shape) != (batch, num_priors, k):
                raise ValueError(
                    f"{name} must have shape (B={batch}, P={num_priors}, {k}), got {tuple(t.shape)}"
                )
        return loc, conf

    def forward(
        self, preds: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | PaddedTargets
    ) -> LossResult:
        padded_in = isinstance(targets, PaddedTargets)
        batch = targets.boxes.shape[0] if padded_in else len(targets)
        loc, conf = self._check_preds(preds, batch)
        dtype, conf_dtype = compute_dtype(loc), compute_dtype(conf)
        dtype = dtype if dtype == conf_dtype else torch.promote_types(dtype, conf_dtype)
        loc, conf = loc.to(dtype), conf.to(dtype)  # fp16/bf16: softmax and log in float32
        priors = self.priors.to(dtype=dtype, device=loc.device)
        if padded_in:
            check_padded_targets(targets, batch)
            padded = PaddedTargets(targets.boxes.to(dtype), targets.labels.long(), targets.mask)
        else:
            padded = pad_targets(
                targets, self.num_classes, dtype=dtype, device=loc.device, validate=self.validate
            )

        # 1. match: (B, P) box index, PRIOR_NEGATIVE or PRIOR_IGNORED
        matched = match_priors(
            padded, self.priors_xyxy.to(priors), self.match_threshold, self.ignore_threshold
        )
        positive, negative = matched >= 0, matched == PRIOR_NEGATIVE

        # 2. targets: class l + 1 on positives, 0 elsewhere; offsets on positives, 0 elsewhere
        bsz, num_priors = matched.shape
        if padded.mask.shape[1]:
            idx = matched.clamp(min=0)
            labels = padded.labels.gather(1, idx) + 1
            boxes = padded.boxes.gather(1, idx[..., None].expand(bsz, num_priors, 4))
            offsets = encode_ssd(convert(boxes, "xyxy", "cxcywh"), priors, self.variances)
        else:
            labels = matched.new_zeros(bsz, num_priors)
            offsets = loc.new_zeros(bsz, num_priors, 4)
        cls_t = labels * positive
        loc_t = torch.where(positive[..., None], offsets, 0.0)  # non-positive rows may hold log(0)

        # 3. hard negatives by the predicted background probability
        bg_prob = conf.detach().softmax(-1)[..., 0]
        counted = matched != PRIOR_NEGATIVE if self.count_ignored_as_positive else positive
        kept = positive | hard_negative_mask(bg_prob, counted, negative, self.neg_pos_ratio)

        # 4. per image: its sums over the batch's counts (each term a sum over its images, so the
        # per-image shares add up to the components and carry no other image's gradient)
        ce = F.cross_entropy(conf.reshape(-1, conf.shape[-1]), cls_t.reshape(-1), reduction="none")
        ce = (ce.view(bsz, num_priors) * kept.to(dtype)).sum(1)  # (B,)
        sl1 = smooth_l1_loss(loc, loc_t, self.sigma, reduction="none", validate=False)  # (B, P, 4)
        sl1 = (sl1.sum(-1) * positive.to(dtype)).sum(1)  # (B,)
        g_conf, g_loc = self.gains["conf"], self.gains["loc"]
        if self.normalize == "mean":
            # both counts are 0 only without positives, where both sums are 0: 0 / eps = 0
            num_pos = global_count(positive.sum(), self.reduce_across_ranks).to(dtype).clamp(min=_EPS)
            num_kept = global_count(kept.sum(), self.reduce_across_ranks).to(dtype).clamp(min=_EPS)
            conf_div, loc_div = num_kept / ((self.neg_pos_ratio + 1.0) * g_conf), num_pos / g_loc
        else:  # max(#pos, 1) of the whole batch, also under DDP (at_least clamps the global sum)
            n = global_count(positive.sum(), self.reduce_across_ranks, at_least=1.0).to(dtype)
            conf_div, loc_div = n / g_conf, n / g_loc
        # the factors go into the divisors, which carry no gradient (a gain of 0: a divisor of inf)
        conf_img, loc_img = ce / conf_div, sl1 / loc_div
        conf_loss, loc_loss = conf_img.sum(), loc_img.sum()
        return LossResult(
            conf_loss + loc_loss, {"loc": loc_loss, "conf": conf_loss}, per_image=conf_img + loc_img
        )


def l2_weight_decay(
    module: nn.Module,
    skip: Sequence[str] = ("_bn",),
    scaled: Mapping[str, float] | None = None,
) -> Tensor:
    """SSD.TensorFlow's L2 regulariser: ``Σ factor · ½‖θ‖²`` over a module's trainable parameters.

    Skips parameters whose name contains a ``skip`` substring and every parameter of a batch-norm
    layer; a parameter whose name contains a key of ``scaled`` gets that factor (default
    ``{"conv4_3_scale": 0.1}``), the others 1. The training loss is then
    ``total + weight_decay · l2_weight_decay(model)``.

    Equivalent optimizer set-up: the gradient of ``wd · ½‖θ‖²`` is ``wd · θ``, exactly what
    ``torch.optim.SGD(weight_decay=wd)`` adds, so instead of this term one can use three parameter
    groups: the ordinary parameters with ``weight_decay=wd``, the scaled ones with
    ``weight_decay=0.1 · wd``, batch-norm ones with ``weight_decay=0`` (not with AdamW, whose
    decoupled decay is a different rule).

    Returns:
        Scalar tensor (0 for a module without such parameters).
    """
    scaled = {"conv4_3_scale": 0.1} if scaled is None else dict(scaled)
    bn_params = {
        id(p)
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters(recurse=False)
    }
    terms = []
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in bn_params or any(s in name for s in skip):
            continue
        factor = next((f for key, f in scaled.items() if key in name), 1.0)
        terms.append(0.5 * factor * p.pow(2).sum())
    return torch.stack(terms).sum() if terms else torch.zeros(())
