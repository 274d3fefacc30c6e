"""What every detector criterion shares: the result type and the head-output checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from ..boxes import check_tensor


@dataclass
class LossResult:
    """A criterion's output.

    Attributes:
        total: scalar tensor to call ``.backward()`` on.
        components: named scalar parts, e.g. ``{"box", "obj", "cls"}``.
    """

    total: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)


def split_yolo_heads(
    preds: Sequence[Tensor],
    num_anchors: Sequence[int],
    num_classes: int,
    strides: Sequence[int],
    batch_size: int,
) -> list[Tensor]:
    """Check raw YOLO head outputs and view each as ``(B, A, H, W, 5 + C)``.

    Args:
        preds: one tensor per scale, ``(B, A*(5+C), H, W)``, channel ``a*(5+C) + k`` with
            k = (tx, ty, tw, th, objectness, class_0 … class_{C−1}).
        num_anchors: anchors per scale.
        num_classes: C.
        strides: per scale; the input size ``stride × (H, W)`` must agree across scales.
        batch_size: the number of target dicts.

    Returns:
        Views (no copy) of shape ``(B, A, H, W, 5 + C)``, one per scale.
    """
    if isinstance(preds, Tensor) or not isinstance(preds, Sequence):
        raise TypeError("preds must be a list with one tensor per scale")
    if len(preds) != len(strides):
        raise ValueError(f"preds has {len(preds)} scales, the criterion has {len(strides)}")
    k = 5 + num_classes
    views, input_size = [], None
    for i, (p, a, s) in enumerate(zip(preds, num_anchors, strides, strict=True)):
        check_tensor(f"preds[{i}]", p)
        if not p.is_floating_point():
            raise TypeError(f"preds[{i}] must have a floating dtype, got {p.dtype}")
        if p.dim() != 4 or p.shape[1] != a * k:
            raise ValueError(
                f"preds[{i}] must have shape (B, {a}*(5+{num_classes})={a * k}, H, W), "
                f"got {tuple(p.shape)}"
            )
        if p.shape[0] != batch_size:
            raise ValueError(
                f"preds[{i}] has batch size {p.shape[0]} but targets has {batch_size} images"
            )
        size = (p.shape[2] * s, p.shape[3] * s)
        if input_size is None:
            input_size = size
        elif size != input_size:
            raise ValueError(
                f"preds[{i}] grid {tuple(p.shape[2:])} × stride {s} gives input size {size}, "
                f"but preds[0] gives {input_size}: strides and grids disagree"
            )
        b, _, h, w = p.shape
        views.append(p.view(b, a, k, h, w).permute(0, 1, 3, 4, 2))
    return views


def positive_ints(name: str, values: Sequence) -> tuple[int, ...]:
    """Integral positive numbers (int, numpy int, 8.0) → ints; anything else is a ``ValueError``."""
    try:
        out = tuple(int(v) for v in values)
        ok = len(out) > 0 and all(o == v and o >= 1 for o, v in zip(out, values, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    return out


def check_unit(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
