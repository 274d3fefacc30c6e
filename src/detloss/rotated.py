"""Oriented (rotated) boxes: the exact rotated IoU, ProbIoU, the KLD and GWD similarities, and the
conversion between xywhr and corners (their loss, :func:`detloss.rotated_iou_loss`, is in
:mod:`detloss.losses` beside :func:`detloss.iou_loss`).

Boxes are ``(..., 5)`` **xywhr**: centre x, centre y, width, height and θ in radians, the
counter-clockwise rotation of the width axis from the x axis (OpenCV's and ultralytics' xywhr; in
image coordinates, y pointing down, counter-clockwise in the maths frame is clockwise on screen).
The formulas are in :mod:`detloss.kernels.rotated`; the guide is docs/rotated.md.

Half precision (float16/bfloat16) is computed in float32. ``validate=False`` skips the finiteness
check, the only host sync; the computation itself has none (fixed-size candidate sets and sorts).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .boxes import ROTATED_BOX_FORMATS as ROTATED_BOX_FORMATS
from .boxes import RotatedBoxFormat as RotatedBoxFormat
from .boxes import convert_rotated
from .checks import (
    check_box_pair,
    check_boxes,
    check_eps,
    check_number,
    check_one_of,
)
from .iou import compute_dtype
from .kernels.rotated import ROTATED_KINDS as ROTATED_KINDS
from .kernels.rotated import rotated_similarity

__all__ = [
    "ROTATED_BOX_FORMATS",
    "ROTATED_KINDS",
    "RotatedKind",
    "box_convert_rotated",
    "rotated_bbox_iou",
    "rotated_box_iou",
]

RotatedKind = Literal["iou", "probiou", "kld", "gwd"]


def rotated_options(kind: str, eps: float, floor: float) -> None:
    """Validate the non-tensor arguments of a rotated similarity call: ``kind`` one of
    :data:`ROTATED_KINDS`, ``eps`` (:func:`detloss.checks.check_eps`), ``floor`` a finite number
    ``>= 0``, and 0 with ``kind="iou"`` (the exact IoU has no Gaussian to widen)."""
    check_one_of("kind", kind, ROTATED_KINDS)
    check_eps(eps)
    check_number("floor", floor, low=0.0)
    if kind == "iou" and floor != 0:
        raise ValueError(f"floor is only used by the Gaussian kinds (probiou, kld, gwd), got {floor!r} "
                         "with kind='iou'")


def prepare_rotated(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: str,
    eps: float,
    floor: float,
    validate: bool,
    names: tuple[str, str] = ("boxes1", "boxes2"),
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Validate one checked rotated call and upcast its boxes: :func:`rotated_options`, the two
    ``(..., 5)`` tensors (errors use ``names``), with ``validate`` their finiteness (one sum for
    both and one host sync; the offending index is searched only when it fails).

    Returns:
        ``(b1, b2, shape)``: the boxes in the compute dtype (float32 for half precision) and their
        broadcast shape ``(..., 5)``.
    """
    rotated_options(kind, eps, floor)
    shape = check_box_pair(names, boxes1, boxes2, validate, size=5)
    dtype = torch.promote_types(compute_dtype(boxes1), compute_dtype(boxes2))
    return boxes1.to(dtype), boxes2.to(dtype), shape


def rotated_bbox_iou(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: RotatedKind = "probiou",
    eps: float = 1e-7,
    *,
    floor: float = 0.0,
    validate: bool = True,
) -> Tensor:
    """Elementwise similarity of two broadcastable tensors of oriented boxes.

    Args:
        boxes1: ``(..., 5)`` xywhr boxes, e.g. predictions (KLD's ``pred``: the only asymmetric kind).
        boxes2: ``(..., 5)`` xywhr boxes broadcastable against ``boxes1``, e.g. targets.
        kind: ``"probiou"`` (Llerena et al. 2021, as ultralytics 8.4.190's ``probiou``), ``"iou"``
            (the exact IoU of the two rectangles), ``"kld"`` / ``"gwd"`` (Yang et al. 2021, the
            similarity ``1 − loss`` of mmrotate 1.x's ``GDLoss(loss_type, fun="log1p", tau=1.0)``).
            Formulas in :mod:`detloss.kernels.rotated` and docs/rotated.md.
        eps: ``"iou"``: added to the union, ``I / (U + eps)``; ``"probiou"``: ultralytics' eps
            (its maximum is about ``1 − √(2·eps)``); ``"kld"``/``"gwd"``: mmrotate's clamps (1e-7
            there).
        floor: added to each Gaussian variance (w²/12 for probiou, w²/4 for kld/gwd) in the boxes'
            units; ultralytics' OBB loss uses 0.01 in grid units. Must be 0 for ``"iou"``.
        validate: check dtypes, shapes and finiteness (one reduction and one host sync); ``False``
            skips the value check and runs without any host sync.

    Returns:
        ``(...)`` of the broadcast shape, in the input dtype. Ranges: iou [0, 1], probiou
        [1 − √(1 + eps), 1 − √(1 − e^(−eps) + eps)] ≈ [−eps/2, 1 − √(2·eps)] (as ultralytics'),
        kld and gwd (0, 1).

    Example:
        >>> a = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0]); b = torch.tensor([0.5, 0.0, 1.0, 1.0, 0.0])
        >>> rotated_bbox_iou(a, b, kind="iou")  # 0.5 / 1.5
        tensor(0.3333)
    """
    b1, b2, _ = prepare_rotated(boxes1, boxes2, kind, eps, floor, validate)
    out = rotated_similarity(b1, b2, kind, eps, floor)
    return out.to(torch.promote_types(boxes1.dtype, boxes2.dtype))


def rotated_box_iou(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: RotatedKind = "iou",
    eps: float = 1e-7,
    *,
    floor: float = 0.0,
    validate: bool = True,
) -> Tensor:
    """Pairwise similarity of oriented boxes: ``(N, 5) × (M, 5)`` → ``(N, M)``.

    :func:`rotated_bbox_iou` over broadcast shapes ``(N, 1, 5)`` and ``(1, M, 5)`` (the exact IoU
    holds 24 candidate vertices per pair: about 0.5 KB per pair in float32 while it runs).

    Example:
        >>> rotated_box_iou(torch.zeros(0, 5), torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]])).shape
        torch.Size([0, 1])
    """
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if check_boxes(name, b, finite=False, size=5).dim() != 2:
            raise ValueError(f"{name} must have shape (N, 5), got {tuple(b.shape)}")
        if validate:  # here, so a bad value's index is reported in the caller's (N, 5) layout
            check_boxes(name, b, size=5)
    return rotated_bbox_iou(boxes1[:, None, :], boxes2[None, :, :], kind, eps, floor=floor, validate=False)


def box_convert_rotated(boxes: Tensor, in_fmt: RotatedBoxFormat, out_fmt: RotatedBoxFormat) -> Tensor:
    """Convert oriented boxes between ``"xywhr"`` ``(..., 5)`` and ``"xyxyxyxy"`` ``(..., 8)``.

    ``"xyxyxyxy"`` is the 4 corners ``(x₁, y₁, …, x₄, y₄)`` in ultralytics' ``xywhr2xyxyxyxy`` order:
    with ``u = (w/2)(cos θ, sin θ)`` and ``v = (h/2)(−sin θ, cos θ)``, ``c + u + v, c + u − v,
    c − u − v, c − u + v``. Back to xywhr (exact for the corners of a rectangle in that order)::

        c = mean of the corners,  u = (p₁ − p₄ + p₂ − p₃)/4,  v = (p₁ − p₂ + p₄ − p₃)/4
        w = 2|u|,  θ = atan2(u_y, u_x) ∈ (−π, π],  h = 2·(u × v)/|u|

    so a parallelogram keeps its area and a mirrored corner order gives a negative height. θ is
    returned as atan2 gives it, not canonicalised (ultralytics' ``xyxyxyxy2xywhr`` fits
    ``cv2.minAreaRect``, makes w the longer side and folds θ into [−π/4, 3π/4)): compare angles
    modulo 2π.

    Example:
        >>> box_convert_rotated(torch.tensor([1.0, 2.0, 4.0, 2.0, 0.0]), "xywhr", "xyxyxyxy")
        tensor([ 3.,  3.,  3.,  1., -1.,  1., -1.,  3.])
    """
    return convert_rotated(boxes, in_fmt, out_fmt)
