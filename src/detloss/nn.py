"""``torch.nn.Module`` twins of the functional losses: they store hyper-parameters and call them."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import losses
from .boxes import BOX_FORMATS, BoxFormat
from .checks import check_eps, check_modifiers, check_one_of
from .iou import IoUKind, iou_xyxy, prepare_pair
from .losses import REDUCTIONS, Reduction


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


class IoULoss(nn.Module):
    """Module form of :func:`detloss.iou_loss`: ``1 − bbox_iou(pred, target, kind, ...)``, with the
    IoU-family modifiers ``alpha``, ``inner_ratio``, ``focaler`` and MPDIoU's ``image_size``."""

    def __init__(
        self,
        kind: IoUKind = "giou",
        fmt: BoxFormat = "xyxy",
        eps: float = 1e-7,
        reduction: Reduction = "mean",
        *,
        validate: bool = True,
        alpha: float = 1.0,
        inner_ratio: float | None = None,
        focaler: tuple[float, float] | None = None,
        image_size: float | tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        check_modifiers(kind, alpha, inner_ratio, focaler, image_size)
        check_eps(eps)
        check_one_of("fmt", fmt, BOX_FORMATS)
        _check_reduction(reduction)
        self.kind, self.fmt, self.eps, self.reduction = kind, fmt, eps, reduction
        self.validate = validate
        self.modifiers = dict(alpha=alpha, inner_ratio=inner_ratio, focaler=focaler, image_size=image_size)

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.iou_loss(
            pred, target, self.kind, self.fmt, self.eps,
            reduction=self.reduction, weight=weight, avg_factor=avg_factor, validate=self.validate,
            **self.modifiers,
        )

    def extra_repr(self) -> str:
        mods = "".join(f", {k}={v!r}" for k, v in self.modifiers.items() if v not in (None, 1.0))
        return f"kind={self.kind!r}, fmt={self.fmt!r}, eps={self.eps}, reduction={self.reduction!r}{mods}"


class WIoULoss(nn.Module):
    """Wise-IoU v3 (Tong et al. 2023): Wise-IoU v1 with dynamic non-monotonic focusing.

    With L = 1 − IoU (plain IoU, detached) and a running mean μ of L (buffer ``iou_mean``, starts at
    1.0; in training mode, before use, μ ← (1 − m)·μ + m·mean(L) over all elements of the call, no
    update on an empty call or in eval mode)::

        β = L / μ,   r = β / (δ·α^(β − δ)),   loss = r · (1 − wiou) = r · R·(1 − IoU)

    with R = exp(ρ²/(W_g² + H_g²)*) of :func:`detloss.bbox_iou` ``kind="wiou"``. The paper's
    momentum is 1 − 0.05^(1/(n·t)) for n batches per epoch and t epochs: pass it as ``momentum``.
    The gradient flows through Wise-IoU v1 only (β and r are constants of it, as in the paper).
    """

    iou_mean: Tensor

    def __init__(
        self,
        alpha: float = 1.9,
        delta: float = 3.0,
        momentum: float = 0.01,
        fmt: BoxFormat = "xyxy",
        eps: float = 1e-7,
        reduction: Reduction = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (("alpha", alpha), ("delta", delta)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        check_eps(eps)
        check_one_of("fmt", fmt, BOX_FORMATS)
        _check_reduction(reduction)
        self.alpha, self.delta, self.momentum = alpha, delta, momentum
        self.fmt, self.eps, self.reduction, self.validate = fmt, eps, reduction, validate
        self.register_buffer("iou_mean", torch.tensor(1.0))

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        p, t = prepare_pair(pred, target, self.fmt, self.validate, names=("pred", "target"))
        with torch.no_grad():
            l_iou = 1.0 - iou_xyxy(p, t, "iou", self.eps)
            if self.training and l_iou.numel():
                self.iou_mean.lerp_(l_iou.mean().to(self.iou_mean.dtype), self.momentum)
            beta = l_iou / self.iou_mean
            focus = beta / (self.delta * self.alpha ** (beta - self.delta))
        w = focus if weight is None else focus * weight
        return losses.iou_loss(
            p, t, "wiou", "xyxy", self.eps,
            reduction=self.reduction, weight=w, avg_factor=avg_factor, validate=False,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, delta={self.delta}, momentum={self.momentum}, fmt={self.fmt!r}, "
            f"eps={self.eps}, reduction={self.reduction!r}"
        )


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`detloss.sigmoid_focal_loss`; ``pos_weight`` is kept as a buffer."""

    pos_weight: Tensor | None

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reduction: Reduction = "mean",
        pos_weight: Tensor | None = None,
        *,
        validate: bool = True,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction
        self.validate = validate
        self.register_buffer("pos_weight", pos_weight)

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.sigmoid_focal_loss(
            logits, targets, self.alpha, self.gamma, pos_weight=self.pos_weight,
            reduction=self.reduction, weight=weight, avg_factor=avg_factor, validate=self.validate,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class SmoothL1Loss(nn.Module):
    """Module form of :func:`detloss.smooth_l1_loss` (smooth L1 with ``sigma``)."""

    def __init__(
        self,
        sigma: float = 1.0,
        inside_weight: float = 1.0,
        outside_weight: float = 1.0,
        reduction: Reduction = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma, self.reduction = sigma, reduction
        self.inside_weight, self.outside_weight = inside_weight, outside_weight
        self.validate = validate

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.smooth_l1_loss(
            pred, target, self.sigma, self.inside_weight, self.outside_weight,
            reduction=self.reduction, weight=weight, avg_factor=avg_factor, validate=self.validate,
        )

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, reduction={self.reduction!r}"


class QualityFocalLoss(nn.Module):
    """Module form of :func:`detloss.quality_focal_loss` (GFL's QFL, elementwise)."""

    def __init__(self, beta: float = 2.0, reduction: Reduction = "mean", *, validate: bool = True) -> None:
        super().__init__()
        _check_reduction(reduction)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        self.beta, self.reduction, self.validate = beta, reduction, validate

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.quality_focal_loss(
            logits, targets, self.beta,
            reduction=self.reduction, weight=weight, avg_factor=avg_factor, validate=self.validate,
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}"


class VarifocalLoss(nn.Module):
    """Module form of :func:`detloss.varifocal_loss` (VarifocalNet's VFL, elementwise)."""

    def __init__(
        self,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        reduction: Reduction = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        for name, v in (("alpha", alpha), ("gamma", gamma)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        self.alpha, self.gamma, self.iou_weighted = alpha, gamma, iou_weighted
        self.reduction, self.validate = reduction, validate

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.varifocal_loss(
            logits, targets, self.alpha, self.gamma, self.iou_weighted,
            reduction=self.reduction, weight=weight, avg_factor=avg_factor, validate=self.validate,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, "
            f"reduction={self.reduction!r}"
        )


class DistributionFocalLoss(nn.Module):
    """Module form of :func:`detloss.distribution_focal_loss` (GFL's DFL over the last dimension's bins)."""

    def __init__(self, reduction: Reduction = "mean", *, validate: bool = True) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction, self.validate = reduction, validate

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.distribution_focal_loss(
            logits, targets, reduction=self.reduction, weight=weight, avg_factor=avg_factor,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
