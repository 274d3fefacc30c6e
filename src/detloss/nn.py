"""``torch.nn.Module`` twins of the functional losses: they store hyper-parameters and call them.

As in ``torch.nn``, the functional does the work and the Module stores its hyper-parameters: every twin
derives from one small base, :class:`_LossModule` (the counterpart of ``torch.nn.modules.loss._Loss``),
which validates and stores ``reduction`` and ``validate``, hands them with the call's ``weight`` and
``avg_factor`` to the functional, and prints the stored hyper-parameters in ``repr``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from . import losses
from .boxes import BoxFormat
from .checks import check_number, check_one_of, check_sigma, check_unit
from .iou import IoUKind, iou_options, iou_xyxy, prepare_iou
from .losses import REDUCTIONS, Reduction


class _LossModule(nn.Module):
    """Base of the twins: validates and stores ``reduction`` (one of ``"none" | "mean" | "sum"``) and
    ``validate``; each twin stores its own hyper-parameters under their constructor names."""

    def __init__(self, reduction: Reduction = "mean", validate: bool = True) -> None:
        super().__init__()
        check_one_of("reduction", reduction, REDUCTIONS)
        self.reduction, self.validate = reduction, validate

    def _keywords(self, weight: Tensor | None, avg_factor: float | Tensor | None) -> dict[str, Any]:
        """The keyword arguments every functional takes: the stored ``reduction`` and ``validate``
        with the call's ``weight`` and ``avg_factor``."""
        return dict(reduction=self.reduction, weight=weight, avg_factor=avg_factor, validate=self.validate)

    def extra_repr(self) -> str:
        """``name=value`` for each constructor parameter in order: positional ones always, keyword-only
        ones (switches and modifiers) when set away from their default; ``None`` and tensors (buffers,
        listed by ``state_dict``) are left out."""
        shown = []
        for p in inspect.signature(type(self)).parameters.values():
            v = getattr(self, p.name, None)
            if v is None or isinstance(v, Tensor) or (p.kind is p.KEYWORD_ONLY and v == p.default):
                continue
            shown.append(f"{p.name}={v!r}")
        return ", ".join(shown)


class IoULoss(_LossModule):
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
        super().__init__(reduction, validate)
        iou_options(kind, fmt, eps, alpha, inner_ratio, focaler, image_size)
        self.kind, self.fmt, self.eps = kind, fmt, eps
        self.alpha, self.inner_ratio, self.focaler, self.image_size = alpha, inner_ratio, focaler, image_size

    def forward(
        self, pred: Tensor, target: Tensor,
        weight: Tensor | None = None, avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.iou_loss(
            pred, target, self.kind, self.fmt, self.eps, **self._keywords(weight, avg_factor),
            alpha=self.alpha, inner_ratio=self.inner_ratio, focaler=self.focaler, image_size=self.image_size,
        )


class WIoULoss(_LossModule):
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
        super().__init__(reduction, validate)
        check_number("alpha", alpha, low=0, open_low=True)
        check_number("delta", delta, low=0, open_low=True)
        check_unit("momentum", momentum)
        iou_options("wiou", fmt, eps)
        self.alpha, self.delta, self.momentum, self.fmt, self.eps = alpha, delta, momentum, fmt, eps
        self.register_buffer("iou_mean", torch.tensor(1.0))

    def forward(
        self, pred: Tensor, target: Tensor,
        weight: Tensor | None = None, avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        p, t, _, _ = prepare_iou(pred, target, "wiou", self.fmt, self.eps, self.validate,
                                 names=("pred", "target"))
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


class SigmoidFocalLoss(_LossModule):
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
        super().__init__(reduction, validate)
        self.alpha, self.gamma = alpha, gamma
        self.register_buffer("pos_weight", pos_weight)

    def forward(
        self, logits: Tensor, targets: Tensor,
        weight: Tensor | None = None, avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.sigmoid_focal_loss(
            logits, targets, self.alpha, self.gamma, pos_weight=self.pos_weight,
            **self._keywords(weight, avg_factor),
        )


class SmoothL1Loss(_LossModule):
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
        super().__init__(reduction, validate)
        check_sigma(sigma)
        self.sigma, self.inside_weight, self.outside_weight = sigma, inside_weight, outside_weight

    def forward(
        self, pred: Tensor, target: Tensor,
        weight: Tensor | None = None, avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.smooth_l1_loss(
            pred, target, self.sigma, self.inside_weight, self.outside_weight,
            **self._keywords(weight, avg_factor),
        )


class QualityFocalLoss(_LossModule):
    """Module form of :func:`detloss.quality_focal_loss` (GFL's QFL, elementwise)."""

    def __init__(self, beta: float = 2.0, reduction: Reduction = "mean", *, validate: bool = True) -> None:
        super().__init__(reduction, validate)
        check_number("beta", beta, low=0)
        self.beta = beta

    def forward(
        self, logits: Tensor, targets: Tensor,
        weight: Tensor | None = None, avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.quality_focal_loss(logits, targets, self.beta, **self._keywords(weight, avg_factor))


class VarifocalLoss(_LossModule):
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
        super().__init__(reduction, validate)
        check_number("alpha", alpha, low=0)
        check_number("gamma", gamma, low=0)
        self.alpha, self.gamma, self.iou_weighted = alpha, gamma, iou_weighted

    def forward(
        self, logits: Tensor, targets: Tensor,
        weight: Tensor | None = None, avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.varifocal_loss(
            logits, targets, self.alpha, self.gamma, self.iou_weighted, **self._keywords(weight, avg_factor)
        )


class DistributionFocalLoss(_LossModule):
    """Module form of :func:`detloss.distribution_focal_loss` (GFL's DFL over the last dimension's bins)."""

    def __init__(self, reduction: Reduction = "mean", *, validate: bool = True) -> None:
        super().__init__(reduction, validate)

    def forward(
        self, logits: Tensor, targets: Tensor,
        weight: Tensor | None = None, avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        return losses.distribution_focal_loss(logits, targets, **self._keywords(weight, avg_factor))
