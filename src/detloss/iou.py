"""The IoU family: one geometric core for IoU, GIoU, DIoU, CIoU, EIoU, SIoU, Wise-IoU and MPDIoU,
with the Alpha-IoU, Inner-IoU and Focaler-IoU modifiers.

Every variant is an IoU term minus penalties built from the same quantities — intersection, union,
enclosing box, centre offset, corners — which :func:`iou_xyxy` computes once and then branches on
``kind`` (:mod:`detloss.kernels.iou`, run by :mod:`detloss.kernels.iou_function`). :func:`bbox_iou`
applies it elementwise (broadcasting), :func:`box_iou` pairwise.

Numerics: every denominator carries ``eps`` so that zero-area, identical, concentric and far-apart
boxes give finite values and finite gradients; widths and heights are clamped at 0, so an inverted
xyxy box (x2 < x1) behaves as an empty box, and the enclosing box spans all corners.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .boxes import BOX_FORMATS, BoxFormat, convert
from .checks import check_box_pair, check_boxes, check_eps, check_modifiers, check_one_of
from .kernels import IOU_KINDS as IOU_KINDS  # the kinds, public beside IoUKind
from .kernels import Modifiers, fused_iou

IoUKind = Literal["iou", "giou", "diou", "ciou", "eiou", "siou", "wiou", "mpdiou"]


def iou_xyxy(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: str = "iou",
    eps: float = 1e-7,
    *,
    alpha: float = 1.0,
    inner_ratio: float | None = None,
    focaler: tuple[float, float] | None = None,
    image_size: float | tuple[float, float] | None = None,
) -> Tensor:
    """Unchecked core: the ``kind`` IoU of broadcastable xyxy boxes ``(..., 4)`` → ``(...)``.

    The library's criteria call this after validating their inputs once (and the modifiers with
    :func:`detloss.checks.check_modifiers` at construction); users call :func:`bbox_iou`. It runs
    the kernel of :mod:`detloss.kernels.iou_function`; the formulas are in
    :func:`detloss.kernels.iou_forward`.
    The keyword modifiers are :func:`bbox_iou`'s; ``image_size`` is used by ``kind="mpdiou"`` only
    and ignored by the other kinds (so a criterion may always pass its input size).
    """
    mods = Modifiers(
        float(alpha), inner_ratio, focaler, _image_wh(image_size) if kind == "mpdiou" else None
    )
    return fused_iou(boxes1, boxes2, kind, eps, mods=mods)


def _image_wh(image_size: float | tuple[float, float] | None) -> tuple[float, float] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, float)):
        return float(image_size), float(image_size)
    w, h = image_size
    return float(w), float(h)


def compute_dtype(t: Tensor) -> torch.dtype:
    """float16/bfloat16 are computed in float32: their range and precision lose small areas."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def iou_options(
    kind: str,
    fmt: str,
    eps: float,
    alpha: float = 1.0,
    inner_ratio: float | None = None,
    focaler: tuple[float, float] | None = None,
    image_size: float | tuple[float, float] | None = None,
) -> Modifiers:
    """Validate the non-tensor arguments of an IoU-family call (``kind``, ``fmt``, ``eps``, modifiers)
    and return the kernel's :class:`~detloss.kernels.Modifiers`; the Module twins call it at
    construction so a bad option fails there, not at the first forward."""
    check_modifiers(kind, alpha, inner_ratio, focaler, image_size)
    check_eps(eps)
    check_one_of("fmt", fmt, BOX_FORMATS)
    return Modifiers(float(alpha), inner_ratio, focaler, _image_wh(image_size))


def prepare_iou(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: str,
    fmt: str,
    eps: float,
    validate: bool,
    alpha: float = 1.0,
    inner_ratio: float | None = None,
    focaler: tuple[float, float] | None = None,
    image_size: float | tuple[float, float] | None = None,
    names: tuple[str, str] = ("boxes1", "boxes2"),
) -> tuple[Tensor, Tensor, tuple[int, ...], Modifiers]:
    """Validate and prepare one checked IoU-family call (:func:`bbox_iou`, :func:`box_iou`,
    :func:`detloss.iou_loss`, the Module twins): :func:`iou_options`, then the two ``(..., 4)`` box
    tensors (errors use ``names``), upcast to :func:`compute_dtype`, converted to xyxy.

    The finiteness check of both inputs (``validate``) is :func:`detloss.checks.check_box_pair`'s
    single host sync.

    Returns:
        ``(b1, b2, shape, mods)``: the xyxy boxes, their broadcast shape ``(..., 4)`` and the
        modifiers for :func:`detloss.kernels.fused_iou`.
    """
    mods = iou_options(kind, fmt, eps, alpha, inner_ratio, focaler, image_size)
    shape = check_box_pair(names, boxes1, boxes2, validate)
    dtype = torch.promote_types(compute_dtype(boxes1), compute_dtype(boxes2))
    return convert(boxes1.to(dtype), fmt, "xyxy"), convert(boxes2.to(dtype), fmt, "xyxy"), shape, mods


def bbox_iou(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: IoUKind = "iou",
    fmt: BoxFormat = "xyxy",
    eps: float = 1e-7,
    *,
    validate: bool = True,
    alpha: float = 1.0,
    inner_ratio: float | None = None,
    focaler: tuple[float, float] | None = None,
    image_size: float | tuple[float, float] | None = None,
) -> Tensor:
    """Elementwise IoU-family similarity of two broadcastable box tensors.

    Args:
        boxes1: ``(..., 4)`` boxes, e.g. predictions.
        boxes2: ``(..., 4)`` boxes broadcastable against ``boxes1``, e.g. targets.
        kind: ``"iou" | "giou" | "diou" | "ciou" | "eiou" | "siou" | "wiou" | "mpdiou"`` (formulas
            in :func:`detloss.kernels.iou_forward`, papers in docs/iou-family.md).
        fmt: box format of both inputs, ``"xyxy" | "xywh" | "cxcywh"``.
        eps: added to every denominator (keeps degenerate boxes finite).
        validate: check shapes, dtypes and finiteness (one reduction and one sync for both inputs);
            ``False`` skips the value check for pipelines that validated their data already.
        alpha: Alpha-IoU power (He et al. 2021): iou^α minus each penalty term^α; 1 = the plain kind.
        inner_ratio: Inner-IoU (Zhang et al. 2023): the IoU term on boxes with the same centres and
            sides scaled by this ratio; the penalties stay on the original boxes.
        focaler: Focaler-IoU (d, u): the IoU term clamp((iou − d)/(u − d), 0, 1).
        image_size: MPDIoU's (width, height) (or one number for a square), in the boxes' units;
            required by and only allowed with ``kind="mpdiou"``.
        At most one of ``alpha != 1``, ``inner_ratio``, ``focaler``; none with ``kind="wiou"``.

    Returns:
        ``(...)`` tensor of the broadcast shape, in the input dtype. Ranges: iou [0, 1],
        giou and diou [−1, 1], ciou [−1.5, 1], siou (−2, 1], eiou (−3, 1], wiou (1 − e, 1],
        mpdiou [−2, 1] for boxes inside the image.

    Example:
        >>> b1 = torch.tensor([0.0, 0.0, 2.0, 2.0]); b2 = torch.tensor([1.0, 1.0, 3.0, 3.0])
        >>> bbox_iou(b1, b2)  # 1 / 7
        tensor(0.1429)
    """
    b1, b2, _, mods = prepare_iou(
        boxes1, boxes2, kind, fmt, eps, validate, alpha, inner_ratio, focaler, image_size
    )
    return fused_iou(b1, b2, kind, eps, mods=mods).to(torch.promote_types(boxes1.dtype, boxes2.dtype))


def box_iou(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: IoUKind = "iou",
    fmt: BoxFormat = "xyxy",
    eps: float = 1e-7,
    *,
    validate: bool = True,
    alpha: float = 1.0,
    inner_ratio: float | None = None,
    focaler: tuple[float, float] | None = None,
    image_size: float | tuple[float, float] | None = None,
) -> Tensor:
    """Pairwise IoU-family similarity: ``(N, 4) × (M, 4)`` → ``(N, M)``.

    The elementwise core over broadcast shapes ``(N, 1, 4)`` and ``(1, M, 4)``; the keyword modifiers
    are :func:`bbox_iou`'s.

    Example:
        >>> box_iou(torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]])).shape
        torch.Size([0, 1])
    """
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if check_boxes(name, b, finite=False).dim() != 2:
            raise ValueError(f"{name} must have shape (N, 4), got {tuple(b.shape)}")
        if validate:  # here, so a bad value's index is reported in the caller's (N, 4) layout
            check_boxes(name, b)
    return bbox_iou(
        boxes1[:, None, :], boxes2[None, :, :], kind, fmt, eps, validate=False,
        alpha=alpha, inner_ratio=inner_ratio, focaler=focaler, image_size=image_size,
    )
