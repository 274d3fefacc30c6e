"""The IoU of a criterion's box loss: its options (kind and keyword modifiers), checked once at
construction, and the IoU in the units each kind needs."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..checks import check_modifiers
from ..iou import iou_xyxy

IOU_MODIFIERS = ("alpha", "inner_ratio", "focaler")


def iou_options(iou_kind: str, iou_modifiers: Mapping[str, object] | None) -> dict[str, object]:
    """Check a criterion's box-loss IoU (``iou_kind`` and the keyword modifiers of
    :func:`detloss.bbox_iou`: ``alpha``, ``inner_ratio``, ``focaler``) and return the modifiers as
    keyword arguments for :func:`detloss.iou.iou_xyxy`. ``kind="mpdiou"``'s image size is the
    criterion's input size, known only in ``forward``."""
    mods = dict(iou_modifiers or {})
    unknown = sorted(set(mods) - set(IOU_MODIFIERS))
    if unknown:
        raise ValueError(f"iou_modifiers: unknown key(s) {unknown}; allowed: {', '.join(IOU_MODIFIERS)}")
    check_modifiers(iou_kind, **mods, image_size=1.0 if iou_kind == "mpdiou" else None)
    return mods


def grid_box_iou(
    pred: Tensor,
    target: Tensor,
    kind: str,
    eps: float,
    modifiers: Mapping[str, object],
    stride: Tensor,
    image_size: tuple[float, float],
) -> Tensor:
    """The ``kind`` IoU of xyxy boxes ``(..., 4)`` given in grid units (pixels / stride) → ``(...)``.

    Every kind but MPDIoU is scale-invariant and is computed in grid units. MPDIoU divides the corner
    distances by the image diagonal, ``d² / (w² + h²)``, so its boxes are taken to input pixels
    (× ``stride``, broadcastable to the boxes) to share the units of ``image_size`` ``(W, H)`` pixels.
    """
    if kind == "mpdiou":
        return iou_xyxy(pred * stride, target * stride, kind, eps, image_size=image_size, **modifiers)
    return iou_xyxy(pred, target, kind, eps, **modifiers)
