"""``torch.nn.Module`` twins of the functional losses: they store hyper-parameters and call them."""

from __future__ import annotations

from torch import Tensor, nn

from . import losses
from .boxes import BoxFormat
from .iou import IoUKind, check_eps, check_kind
from .losses import REDUCTIONS, Reduction


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


class IoULoss(nn.Module):
    """Module form of :func:`detloss.iou_loss`: ``1 − bbox_iou(pred, target, kind)``."""

    def __init__(
        self,
        kind: IoUKind = "giou",
        fmt: BoxFormat = "xyxy",
        eps: float = 1e-7,
        reduction: Reduction = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__()
        check_kind(kind)
        check_eps(eps)
        _check_reduction(reduction)
        self.kind, self.fmt, self.eps, self.reduction = kind, fmt, eps, reduction
        self.validate = validate

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
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, fmt={self.fmt!r}, eps={self.eps}, reduction={self.reduction!r}"


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
