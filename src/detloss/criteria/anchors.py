"""Anchor tables as users write them, read into one nested form."""

from __future__ import annotations

import torch

#: The standard COCO anchors (input pixels), three per scale for strides 8, 16, 32 (YOLOv3's, and
#: YOLOv5's default P3–P5 anchors).
COCO_ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)


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
