"""A criterion's parts: the binary terms they sum, their gains, and the sum into a :class:`LossResult`
with each image's share."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor

from ..checks import check_gain
from ..kernels import fused_focal
from .result import LossResult


def check_gains(**gains: float) -> dict[str, float]:
    """The gain of each part, keyed by the part's name (the keyword is the component's key):
    finite numbers >= 0, as floats."""
    return {name: check_gain(name, g) for name, g in gains.items()}


def focal_terms(
    logits: Tensor,
    target: Tensor,
    weight: Tensor,
    alpha: float,
    gamma: float,
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Elementwise ``weight · BCE(logits, target; pos_weight) · α_t · (1 − p_t)^γ``, the shape of
    ``logits`` (``weight`` broadcasts to it): :func:`detloss.sigmoid_focal_loss` without its argument
    checks, which the criteria ran at construction (the checks branch on the float hyper-parameters,
    which ``torch.compile(dynamic=True)`` traces as symbols). γ = 0 with α < 0 is plain BCE, PyTorch's
    fused op (the kernel computes the same)."""
    if gamma == 0 and alpha < 0:
        return F.binary_cross_entropy_with_logits(
            logits, target, weight, pos_weight=pos_weight, reduction="none"
        )
    return fused_focal(logits, target, pos_weight, alpha, gamma) * weight


def combine(
    sums: Mapping[str, Tensor], gains: Mapping[str, float], norm: Tensor | float, scale: float = 1.0
) -> LossResult:
    """The result of per-image sums ``sums[k]`` ``(B,)`` of each part k::

        components[k] = gain_k · Σ_b sums[k][b] / norm
        total         = scale · Σ_k components[k]
        per_image[b]  = scale · Σ_k gain_k · sums[k][b] / norm

    ``norm`` is the batch's normaliser for every image (so ``per_image.sum() == total`` up to
    rounding) and ``scale`` a factor of the whole loss (YOLOv5/v8 multiply by the batch size).
    """
    components = {k: gains[k] * s.sum() / norm for k, s in sums.items()}
    total = sum(components.values()) * scale
    per_image = sum(gains[k] * s for k, s in sums.items()) * (scale / norm)
    return LossResult(total, components, per_image)
