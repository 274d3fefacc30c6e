"""What every detector criterion shares: the result type and the head-output checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
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


def anchor_table(anchors: object, num_scales: int) -> tuple[tuple[tuple[float, float], ...], ...]:
    """Anchors ``(S, A, 2)``, flat ``(S·A, 2)`` or YAML-style ``(S, 2·A)`` (YOLOv5's
    ``[[10,13, 16,30, 33,23], ...]``) → nested per scale: ``S`` groups of ``A`` positive (w, h)."""
    try:
        t = torch.as_tensor(anchors, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"anchors must be numbers of shape (S, A, 2), (S*A, 2) or (S, 2*A), got {anchors!r}"
        ) from None
    nested_ok = t.dim() == 3 and t.shape[0] == num_scales and t.shape[2] == 2
    flat_ok = t.dim() == 2 and (t.shape[1] == 2 or (t.shape[0] == num_scales and t.shape[1] % 2 == 0))
    flat = t.reshape(-1, 2) if (nested_ok or flat_ok) and t.numel() else None
    if flat is None or flat.shape[0] % num_scales or not bool((flat > 0).all()):
        raise ValueError(
            f"anchors must be {num_scales} groups (one per stride) of positive (w, h) pairs in input pixels, "
            f"got shape {tuple(t.shape)}"
        )
    per = flat.shape[0] // num_scales
    return tuple(
        tuple((float(w), float(h)) for w, h in flat[i * per : (i + 1) * per].tolist())
        for i in range(num_scales)
    )
