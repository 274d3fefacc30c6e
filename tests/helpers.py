"""Input generators shared by the tests (not references: they compute nothing the library does)."""

from __future__ import annotations

import torch


def random_boxes(n: int, dtype: torch.dtype = torch.float64, lo: float = 0.5, hi: float = 10.0,
                 span: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 4)`` xyxy boxes: corners in [0, span), width and height in [lo, hi)."""
    xy = torch.rand(n, 2, dtype=torch.float64, generator=generator) * span
    wh = lo + torch.rand(n, 2, dtype=torch.float64, generator=generator) * (hi - lo)
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


def random_image_targets(
    g: torch.Generator, batch: int, n: int, size: int, num_classes: int, lo: float, hi: float,
    empty: tuple[int, ...] = (), dtype: torch.dtype = torch.float64,
) -> list[dict[str, torch.Tensor]]:
    """``batch`` target dicts of ``n`` xyxy boxes each (sides in [lo, hi), inside ``size`` × ``size``
    pixels, random labels), none for the images listed in ``empty``."""
    targets = []
    for i in range(batch):
        k = 0 if i in empty else n
        wh = lo + (hi - lo) * torch.rand(k, 2, generator=g, dtype=torch.float64)
        xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * (size - wh)
        boxes = torch.cat((xy, xy + wh), 1).to(dtype)
        targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (k,), generator=g)})
    return targets


def pad_by_hand(*images: list, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image box lists → ``(boxes (B, M, 4), mask (B, M))``, real boxes first, padding zeros."""
    m = max((len(b) for b in images), default=0)
    boxes = torch.zeros(len(images), m, 4, dtype=dtype)
    mask = torch.zeros(len(images), m, dtype=torch.bool)
    for i, b in enumerate(images):
        if b:
            boxes[i, : len(b)] = torch.tensor(b, dtype=dtype)
            mask[i, : len(b)] = True
    return boxes, mask
