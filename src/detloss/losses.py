"""Elementwise losses: IoU-family box loss, sigmoid focal loss, GFL's quality focal loss, varifocal
loss, LW-DETR's IoU-aware BCE, smooth L1 with sigma, label smoothing.

Every loss takes the same keyword-only ``reduction``, ``weight`` and ``avg_factor`` and hands them to
one helper, :func:`weight_reduce` (unweighted sums and means of the fused losses are summed inside
their kernels, :func:`_fused_reduce`). Binary and softmax cross-entropy are PyTorch's own
(``F.binary_cross_entropy_with_logits``, ``F.cross_entropy``): detloss builds on them; only the
focal loss evaluates the same BCE formula inside its fused kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import BoxFormat
from .checks import (
    check_broadcasts_to,
    check_class_ids,
    check_finite,
    check_num_classes,
    check_number,
    check_one_of,
    check_sigma,
    check_tensor,
    finite_number,
)
from .iou import IoUKind, compute_dtype, prepare_iou
from .kernels import fused_focal, fused_ia_bce, fused_iou
from .labels import smoothed
from .rotated import RotatedKind, prepare_rotated, rotated_similarity

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


def weight_reduce(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Apply an elementwise ``weight``, then reduce (mmdet's ``weight_reduce_loss`` semantics).

    - ``"none"``: the weighted loss, same shape as ``loss``; ``avg_factor`` is ignored.
    - ``"sum"``: its sum; ``avg_factor`` raises ``ValueError`` (a sum has no average).
    - ``"mean"``: its mean, or its sum divided by ``avg_factor`` when given (e.g. the number of
      positives); ``avg_factor`` (a finite number >= 0, or a one-element tensor) is clamped at
      float32's machine epsilon so 0 positives give 0.
      The mean of an empty loss is ``0 * loss.sum()`` (0, still attached to the graph).

    ``weight`` must broadcast to ``loss``'s shape without enlarging it (a ``(N, 1)`` weight against a
    ``(N,)`` loss would silently produce ``(N, N)``).
    """
    check_one_of("reduction", reduction, REDUCTIONS)
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcasts_to("weight", weight, loss.shape, "the loss shape")
        loss = loss * weight
    if avg_factor is not None:
        if reduction == "sum":
            raise ValueError("avg_factor is not valid with reduction='sum' (use 'mean' or 'none')")
        # a tensor's value is not inspected (that would sync with the device); its shape is
        if isinstance(avg_factor, Tensor):
            if avg_factor.numel() != 1:
                raise ValueError(f"avg_factor must be a scalar, got shape {tuple(avg_factor.shape)}")
        elif not (finite_number(avg_factor) and avg_factor >= 0):
            raise ValueError(f"avg_factor must be a finite number >= 0, got {avg_factor!r}")
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if avg_factor is not None:
        tiny = torch.finfo(torch.float32).eps
        if isinstance(avg_factor, Tensor):
            return loss.sum() / avg_factor.reshape(()).clamp(min=tiny)
        return loss.sum() / max(float(avg_factor), tiny)
    return loss.mean() if loss.numel() else 0.0 * loss.sum()


def _fused_reduce(
    kernel: Callable[[bool], Tensor],
    count: int,
    weight: Tensor | None,
    reduction: Reduction,
    avg_factor: float | Tensor | None,
) -> Tensor:
    """Reduce a fused loss of ``count`` elements; ``kernel(reduce)`` returns it elementwise or summed.

    Unweighted sums and means use the kernel's own sum (one pass less over memory forward and
    backward; the mean is that sum over ``count``, or over ``avg_factor``); everything else goes
    through :func:`weight_reduce` on the elementwise loss.
    """
    fusable = weight is None and (reduction == "mean" or (reduction == "sum" and avg_factor is None))
    if not fusable or count == 0:  # weight_reduce validates and handles the rest (and empty input)
        return weight_reduce(kernel(False), weight, reduction, avg_factor)
    total = kernel(True)
    if reduction == "sum":
        return total
    if avg_factor is None:
        return total / count
    return weight_reduce(total, None, "mean", avg_factor)


def iou_loss(
    pred: Tensor,
    target: Tensor,
    kind: IoUKind = "giou",
    fmt: BoxFormat = "xyxy",
    eps: float = 1e-7,
    *,
    reduction: Reduction = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    validate: bool = True,
    alpha: float = 1.0,
    inner_ratio: float | None = None,
    focaler: tuple[float, float] | None = None,
    image_size: float | tuple[float, float] | None = None,
) -> Tensor:
    """IoU-family box regression loss: ``1 − bbox_iou(pred, target, kind, ...)``.

    Args:
        pred: ``(..., 4)`` predicted boxes.
        target: ``(..., 4)`` target boxes, broadcastable against ``pred``.
        kind: ``"iou" | "giou" | "diou" | "ciou" | "eiou" | "siou" | "wiou" | "mpdiou"``; formulas
            in :func:`detloss.kernels.iou_forward` (``"wiou"`` is Wise-IoU v1; v3 is
            :class:`detloss.nn.WIoULoss`).
        fmt: ``"xyxy" | "xywh" | "cxcywh"``.
        eps: added to every denominator.
        reduction, weight, avg_factor: see :func:`weight_reduce`.
        validate: check the inputs (shape, dtype, finiteness).
        alpha, inner_ratio, focaler, image_size: the IoU-family modifiers of
            :func:`detloss.bbox_iou` (Alpha-, Inner-, Focaler-IoU; MPDIoU's image size).

    Returns:
        Scalar, or ``(...)`` with ``reduction="none"``; float32 for half-precision inputs.
    """
    p, t, shape, mods = prepare_iou(
        pred, target, kind, fmt, eps, validate, alpha, inner_ratio, focaler, image_size, ("pred", "target")
    )
    count = math.prod(shape[:-1])
    return _fused_reduce(
        lambda reduce: fused_iou(p, t, kind, eps, True, reduce, mods), count, weight, reduction, avg_factor
    )


def rotated_iou_loss(
    pred: Tensor,
    target: Tensor,
    kind: RotatedKind = "probiou",
    eps: float = 1e-7,
    *,
    floor: float = 0.0,
    reduction: Reduction = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Oriented box regression loss: ``1 − rotated_bbox_iou(pred, target, kind, eps, floor=floor)``.

    Args:
        pred: ``(..., 5)`` predicted xywhr boxes.
        target: ``(..., 5)`` target xywhr boxes, broadcastable against ``pred``.
        kind, eps, floor, validate: as :func:`rotated_bbox_iou`.
        reduction, weight, avg_factor: see :func:`detloss.losses.weight_reduce`.

    Returns:
        Scalar, or ``(...)`` with ``reduction="none"``; float32 for half-precision inputs.

    Example:
        >>> p = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.3]]); t = torch.tensor([[0.5, 0.0, 4.0, 2.0, 0.0]])
        >>> float(rotated_iou_loss(p, t, kind="kld")) > 0
        True
    """
    p, t, _ = prepare_rotated(pred, target, kind, eps, floor, validate, ("pred", "target"))
    return weight_reduce(1.0 - rotated_similarity(p, t, kind, eps, floor), weight, reduction, avg_factor)



def _logits_and_targets(
    logits: Tensor, targets: Tensor, validate: bool, name: str = "targets"
) -> tuple[Tensor, Tensor]:
    """Check logits and soft targets (the argument ``name``) of one shape; half precision computed in
    float32.

    ``validate``: logits finite and targets in [0, 1] with one sum, one min/max pass and one host
    sync, on the probe sum(logits) + √min(t) + √(1 − max(t)): non-finite iff a logit is NaN/±Inf or
    a target lies outside [0, 1] (NaN propagates; √ of a negative is NaN). The offending index is
    only searched on failure; a sum of finite float32 logits that overflows also fails the probe,
    the search then finds nothing and the call goes on.
    """
    check_tensor("logits", logits)
    check_tensor("targets", targets)
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    t = targets.to(x.dtype)
    if validate and x.numel():
        with torch.no_grad():  # one number, non-finite iff a check fails (√ of a negative is NaN)
            lo, hi = torch.aminmax(t.flatten())
            probe = x.sum() + lo.sqrt() + (1.0 - hi).sqrt()
        if not math.isfinite(float(probe)):  # the one host sync
            check_finite("logits", x)
            bad = (~((t >= 0) & (t <= 1))).nonzero()
            if bad.numel():
                idx = tuple(bad[0].tolist())
                raise ValueError(f"{name} must lie in [0, 1], got {t[idx].item()} at index {idx}")
    return x, t


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    *,
    pos_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017) in the form of YOLOv5's ``FocalLoss`` wrapper.

    With p = sigmoid(x), t the (possibly soft) target::

        loss = BCEWithLogits(x, t) · α_t · (1 − p_t)^γ
        p_t  = t·p + (1 − t)·(1 − p)
        α_t  = t·α + (1 − t)·(1 − α)      (α < 0 disables it: α_t = 1)

    The cross-entropy is PyTorch's stable ``binary_cross_entropy_with_logits`` formula,
    ``(1 − t)·x − (1 + (pw − 1)·t)·log σ(x)``, evaluated inside the fused kernel
    (:mod:`detloss.kernels`: loss and derivative in one pass, the backward a multiply) and tested
    against ``F.binary_cross_entropy_with_logits``. γ = 0 and α < 0 give plain BCE.

    Args:
        logits: ``(*)`` raw scores.
        targets: ``(*)`` same shape, values in [0, 1] (soft targets allowed).
        alpha: positive-class weight in [0, 1], or < 0 to disable.
        gamma: focusing exponent ≥ 0.
        pos_weight: broadcastable ``(C,)`` weight of the positive term of the BCE.
        reduction, weight, avg_factor: see :func:`weight_reduce`.
        validate: check ``targets`` lie in [0, 1] (which also rejects NaN).

    Returns:
        Scalar, or ``(*)`` with ``reduction="none"``. float16/bfloat16 logits are computed in
        float32: ``1 − p_t`` underflows in half precision and ``exp`` overflows.
    """
    check_number("gamma", gamma, low=0)
    if not (finite_number(alpha) and alpha <= 1):
        raise ValueError(f"alpha must be <= 1 (or < 0 to disable), got {alpha}")
    if pos_weight is not None:
        check_tensor("pos_weight", pos_weight)
        check_broadcasts_to("pos_weight", pos_weight, logits.shape, "logits")
    x, t = _logits_and_targets(logits, targets, validate)

    # One fused pass forward and one backward (detloss.kernels); the BCE inside is written exactly as
    # F.binary_cross_entropy_with_logits computes it, and the tests hold it to that function.
    pw = None if pos_weight is None else pos_weight.to(x.dtype)
    return _fused_reduce(
        lambda reduce: fused_focal(x, t, pw, float(alpha), float(gamma), reduce),
        x.numel(),
        weight,
        reduction,
        avg_factor,
    )


def quality_focal_loss(
    logits: Tensor,
    targets: Tensor,
    beta: float = 2.0,
    *,
    reduction: Reduction = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Quality focal loss (GFL, Li et al. 2020), elementwise, for soft targets y ∈ [0, 1]::

        loss = |y − σ|^β · BCEWithLogits(x, y) = −|y − σ|^β·((1 − y)·log(1 − σ) + y·log σ)

    with σ = sigmoid(x); the gradient flows through |y − σ|^β (as mmdet's). Elementwise: mmdet's
    ``quality_focal_loss`` sums over the classes afterwards (do ``.sum(-1)`` with
    ``reduction="none"``, or use ``avg_factor``). y = 0 gives the negatives' σ^β·BCE(x, 0).
    Plain autograd (three ops forward): no fused kernel needed.

    Args:
        logits: ``(*)`` raw scores; float16/bfloat16 are computed in float32.
        targets: ``(*)`` the IoU-quality targets, values in [0, 1].
        beta: focusing exponent >= 0 (|y − σ| is clamped at float tiny so β < 1 keeps finite
            gradients where σ = y).
        reduction, weight, avg_factor: see :func:`weight_reduce`.
        validate: check logits are finite and targets lie in [0, 1] (one host sync).
    """
    check_number("beta", beta, low=0)
    x, t = _logits_and_targets(logits, targets, validate)
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    if beta != 0:
        loss = loss * (t - torch.sigmoid(x)).abs().clamp(min=torch.finfo(x.dtype).tiny) ** beta
    return weight_reduce(loss, weight, reduction, avg_factor)


def varifocal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    *,
    reduction: Reduction = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Varifocal loss (VarifocalNet, Zhang et al. 2021), elementwise, q = targets ∈ [0, 1]::

        q > 0:  q · BCEWithLogits(x, q) = −q·(q·log p + (1 − q)·log(1 − p))   (weight 1, not q,
                with iou_weighted=False)
        q = 0:  α·p^γ · BCEWithLogits(x, 0) = −α·p^γ·log(1 − p)

    with p = sigmoid(x); the gradient flows through p^γ (as mmdet's ``varifocal_loss``; RT-DETR's
    criterion detaches it, see :class:`detloss.criteria.DETRLoss`). Plain autograd.

    Args:
        logits: ``(*)`` raw scores; float16/bfloat16 are computed in float32.
        targets: ``(*)`` IoU-aware classification scores in [0, 1] (0 for negatives).
        alpha: weight of the negatives; gamma: their focusing exponent >= 0 (p is clamped at float
            tiny so γ < 1 keeps finite gradients at p → 0).
        iou_weighted: weight the positives by q (True) or by 1.
        reduction, weight, avg_factor: see :func:`weight_reduce`.
        validate: check logits are finite and targets lie in [0, 1] (one host sync).
    """
    check_number("alpha", alpha, low=0)
    check_number("gamma", gamma, low=0)
    x, t = _logits_and_targets(logits, targets, validate)
    p = torch.sigmoid(x)
    negative = alpha * p.clamp(min=torch.finfo(x.dtype).tiny) ** gamma
    focal_weight = torch.where(t > 0, t if iou_weighted else 1.0, negative)
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none") * focal_weight
    return weight_reduce(loss, weight, reduction, avg_factor)


def _matched_quality_inputs(
    logits: Tensor, positive: Tensor, iou: Tensor, alpha: float, gamma: float, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The checked inputs of the losses whose positives are matched (query, class) pairs with an IoU
    (:func:`ia_bce_loss`, :func:`mal_loss`): logits (float32 for half), the positives as bool and the
    IoUs expanded to the logits' shape (``validate``: finite logits, IoUs in [0, 1], one sync)."""
    check_number("alpha", alpha, low=0, high=1)
    check_number("gamma", gamma, low=0)
    check_tensor("logits", logits)
    check_tensor("positive", positive)
    check_tensor("iou", iou)
    check_broadcasts_to("positive", positive, logits.shape, "logits")
    check_broadcasts_to("iou", iou, logits.shape, "logits")
    x, q = _logits_and_targets(logits, iou.expand(logits.shape), validate, "iou")
    return x, positive.to(torch.bool), q


def ia_bce_loss(
    logits: Tensor,
    positive: Tensor,
    iou: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    *,
    reduction: Reduction = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """IoU-aware BCE (IA-BCE, LW-DETR, Chen et al. 2024), elementwise, with p = sigmoid(x)::

        positive (a matched query's target class):
            t    = max(p^α · IoU^(1 − α), 0.01)      (detached: a target, no gradient)
            loss = BCE(p, t) = −t·log p − (1 − t)·log(1 − p)
        every other (query, class):
            loss = −p^γ · log(1 − p)                 (the gradient flows through p^γ)

    transformers 5.24's ``LwDetrImageLoss.loss_labels`` (α = ``focal_alpha``, γ = 2). log(1 − p) is
    ``logsigmoid(−x)`` and log p = log(1 − p) + x: finite where a saturated p (σ(x) rounded to 0 or 1)
    makes the reference's ``log`` ±inf. One fused kernel with a hand-derived derivative
    (:mod:`detloss.kernels.ia_bce`; once differentiable).

    Args:
        logits: ``(*)`` raw scores; float16/bfloat16 are computed in float32.
        positive: ``(*)`` bool (or 0/1), the matched (query, class) pairs.
        iou: broadcastable to ``(*)``, values in [0, 1]: the IoU of each positive's predicted and
            target box (read at the positives only).
        alpha: the quality exponent in [0, 1]; gamma: the negatives' focusing exponent >= 0 (p is
            clamped at float tiny so γ < 1 keeps finite gradients at p → 0).
        reduction, weight, avg_factor: see :func:`weight_reduce`.
        validate: check logits are finite and IoUs lie in [0, 1] (one host sync).
    """
    x, pos, q = _matched_quality_inputs(logits, positive, iou, alpha, gamma, validate)
    return weight_reduce(fused_ia_bce(x, pos, q, alpha, gamma), weight, reduction, avg_factor)


def mal_loss(
    logits: Tensor,
    positive: Tensor,
    iou: Tensor,
    alpha: float = 1.0,
    gamma: float = 2.0,
    *,
    reduction: Reduction = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Matching-aware loss (MAL; DEIM, Huang et al. 2025, as DEIMv2 trains it), elementwise, with
    p = sigmoid(x)::

        positive (a matched query's target class):
            loss = BCE(p, IoU^γ) = −IoU^γ·log p − (1 − IoU^γ)·log(1 − p)
        every other (query, class):
            loss = −α·p̄^γ·log(1 − p)                (p̄ = p detached: a weight, no gradient)

    transformers 5.24's ``Deimv2Loss.loss_labels_mal`` (γ = ``focal_loss_gamma``; α = ``mal_alpha``,
    its ``None`` is α = 1). Unlike RT-DETR's varifocal loss the positive's target is IoU^γ and its
    weight 1, whatever the IoU. Computed as ``F.binary_cross_entropy_with_logits`` (finite for any
    finite logit). For γ = 0 the negatives' target stays 0 (the reference's (IoU·t)^0 sets it to 1).

    Args:
        logits: ``(*)`` raw scores; float16/bfloat16 are computed in float32.
        positive: ``(*)`` bool (or 0/1), the matched (query, class) pairs.
        iou: broadcastable to ``(*)``, values in [0, 1]: the IoU of each positive's predicted and
            target box (read at the positives only; detached).
        alpha: the negatives' weight in [0, 1]; gamma: the exponent >= 0 of the target and weight.
        reduction, weight, avg_factor: see :func:`weight_reduce`.
        validate: check logits are finite and IoUs lie in [0, 1] (one host sync).
    """
    x, pos, q = _matched_quality_inputs(logits, positive, iou, alpha, gamma, validate)
    with torch.no_grad():
        target = torch.where(pos, q.detach() ** gamma, 0.0)
        mal_weight = torch.where(pos, 1.0, alpha * torch.sigmoid(x) ** gamma)
    loss = F.binary_cross_entropy_with_logits(x, target, weight=mal_weight, reduction="none")
    return weight_reduce(loss, weight, reduction, avg_factor)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    sigma: float = 1.0,
    inside_weight: float | Tensor = 1.0,
    outside_weight: float | Tensor = 1.0,
    *,
    reduction: Reduction = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Smooth L1 with ``sigma`` and inside/outside weights (Fast R-CNN; SSD.TensorFlow's form)::

        d    = inside_weight · (pred − target)
        loss = outside_weight · (0.5·(σ·d)²      if |d| < 1/σ²
                                 |d| − 0.5/σ²    otherwise)

    This is ``F.smooth_l1_loss`` with ``beta = 1/σ²`` applied to ``d``; σ = 1 is the usual
    smooth L1, large σ tends to L1.

    Args:
        pred, target: ``(*)`` tensors of the same shape (e.g. encoded box offsets ``(P, 4)``).
        sigma: > 0.
        inside_weight, outside_weight: numbers or tensors broadcastable to ``pred``'s shape.
        reduction, weight, avg_factor: see :func:`weight_reduce`.
        validate: check ``pred`` and ``target`` are finite (one reduction each).

    Returns:
        Scalar, or ``(*)`` with ``reduction="none"``; float32 for half-precision inputs (the
        squared term overflows float16 above |d| ≈ 256).
    """
    for name, t in (("pred", pred), ("target", target)):
        check_tensor(name, t)
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    if pred.shape != target.shape:
        raise ValueError(f"target must have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    check_sigma(sigma)
    for name, w in (("inside_weight", inside_weight), ("outside_weight", outside_weight)):
        if isinstance(w, Tensor):
            check_broadcasts_to(name, w, pred.shape, "the shape of pred")
    # half precision computed in float32, like the other losses; mixed dtypes promoted
    dtype = torch.promote_types(compute_dtype(pred), compute_dtype(target))
    pred, target = pred.to(dtype), target.to(dtype)
    if validate:
        check_finite("pred", pred)
        check_finite("target", target)
    if not (isinstance(inside_weight, (int, float)) and inside_weight == 1):
        pred, target = inside_weight * pred, inside_weight * target
    loss = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0 / sigma**2)
    if not (isinstance(outside_weight, (int, float)) and outside_weight == 1):
        loss = outside_weight * loss
    return weight_reduce(loss, weight, reduction, avg_factor)


def smooth_labels(
    targets: Tensor, eps: float, num_classes: int | None = None, *, validate: bool = True
) -> Tensor:
    """Label smoothing: ``onehot·(1 − eps) + eps/K``.

    Args:
        targets: integer class ids ``(*)`` (``num_classes`` required) or one-hot / soft
            targets ``(*, K)`` of a floating dtype.
        eps: smoothing in [0, 1].
        num_classes: K for class ids; for one-hot input it must equal the last dimension if given.
        validate: check the values (class ids in range, one-hot targets finite) and raise a
            ``ValueError`` naming the first bad index; ``False`` skips these value checks for
            pipelines that validated their data already (shapes, dtypes and ``eps`` are always
            checked; ``F.one_hot`` still refuses out-of-range ids with its own error).

    Returns:
        ``(*, K)`` floating tensor (float32 for class ids).

    Example:
        >>> smooth_labels(torch.tensor([1]), 0.1, num_classes=3)
        tensor([[0.0333, 0.9333, 0.0333]])
    """
    check_tensor("targets", targets)
    if not 0 <= eps <= 1:
        raise ValueError(f"eps must lie in [0, 1], got {eps}")
    if targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"targets must be integer class ids or floating one-hot, got {targets.dtype}")
    if targets.is_floating_point():
        if targets.dim() == 0:
            raise ValueError("one-hot targets must have shape (*, K), got a scalar")
        if targets.shape[-1] == 0:
            raise ValueError(f"one-hot targets need K >= 1 classes, got shape {tuple(targets.shape)}")
        k = targets.shape[-1]
        if num_classes is not None and check_num_classes(num_classes) != k:
            raise ValueError(f"num_classes={num_classes} but targets have {k} classes (last dim)")
        if validate:
            check_finite("targets", targets)
        onehot = targets
    else:
        if num_classes is None:
            raise ValueError("num_classes is required when targets are class ids")
        check_num_classes(num_classes)
        if validate:
            check_class_ids("targets", targets, num_classes)
        onehot = F.one_hot(targets.long(), num_classes).to(torch.get_default_dtype())
    return smoothed(onehot, eps)


# --------------------------------------------------------------------------------------------------
# Distribution focal loss (GFL)
# --------------------------------------------------------------------------------------------------


def dfl_from_log_probs(log_probs: Tensor, targets: Tensor) -> Tensor:
    """Unchecked DFL core on log-probabilities ``(..., n)`` (``n ≥ 2``) and targets ``(...)`` in
    ``[0, n − 1]``; shared by :func:`distribution_focal_loss` and the YOLOv8 criterion (which
    reuses the log-softmax of its box decode).

    The left bin is ``i = min(⌊y⌋, n − 2)``, so ``y = n − 1`` puts weight 1 on the last bin and 0 on
    bin ``n − 2`` (the same value as the paper's ``−log S_{n−1}``) without an index out of range.
    """
    left = targets.detach().floor().clamp(max=log_probs.shape[-1] - 2).long()
    w_right = targets - left.to(targets.dtype)  # y − i
    pair = log_probs.gather(-1, torch.stack((left, left + 1), dim=-1))  # (..., 2): log S_i, log S_{i+1}
    return -(pair[..., 0] * (1.0 - w_right) + pair[..., 1] * w_right)


def distribution_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    reduction: Reduction = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Distribution focal loss (Li et al. 2020, Generalized Focal Loss, eq. 6).

    A continuous target y between two bins is learnt as the two-point distribution on its
    neighbours ``i = ⌊y⌋`` and ``i + 1``::

        loss = −((i + 1 − y)·log S_i + (y − i)·log S_{i+1}),    S = softmax(logits) over the n bins

    (``y = n − 1`` gives ``−log S_{n−1}``). This is the cross-entropy against the soft target that
    puts ``i + 1 − y`` on bin i and ``y − i`` on bin i + 1; its minimum over the logits is reached
    when the distribution's expectation is y. YOLOv8 averages it over the four box sides.

    Args:
        logits: ``(..., n)`` logits over ``n ≥ 2`` bins.
        targets: ``(...)`` real targets in ``[0, n − 1]`` (bin units).
        reduction, weight, avg_factor: see :func:`weight_reduce`.
        validate: check ``targets`` lie in ``[0, n − 1]`` (one reduction and one sync).

    Returns:
        Scalar, or ``(...)`` with ``reduction="none"``. float16/bfloat16 logits are computed in float32
        (the log-softmax of half-precision logits loses the small bins).
    """
    check_tensor("logits", logits)
    check_tensor("targets", targets)
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    if not targets.is_floating_point():
        raise TypeError(f"targets must have a floating dtype, got {targets.dtype}")
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise ValueError(f"logits must have shape (..., n) with n >= 2 bins, got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:-1])} (logits without the bin dimension), "
            f"got {tuple(targets.shape)}"
        )
    dtype = torch.promote_types(compute_dtype(logits), compute_dtype(targets))
    x, y = logits.to(dtype), targets.to(dtype)
    n = logits.shape[-1]
    if validate and y.numel():
        lo, hi = torch.aminmax(y.flatten())  # NaN propagates into both and fails the test
        if not bool((lo >= 0) & (hi <= n - 1)):
            bad = tuple((~((y >= 0) & (y <= n - 1))).nonzero()[0].tolist())
            raise ValueError(f"targets must lie in [0, {n - 1}], got {y[bad].item()} at index {bad}")
    loss = dfl_from_log_probs(F.log_softmax(x, dim=-1), y)
    return weight_reduce(loss, weight, reduction, avg_factor)
