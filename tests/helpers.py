"""Input generators shared by the tests (not references: they compute nothing the library does)."""

from __future__ import annotations

import torch


def random_boxes(n: int, dtype: torch.dtype = torch.float64, lo: float = 0.5, hi: float = 10.0,
                 span: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 4)`` xyxy boxes: corners in [0, span), width and height in [lo, hi)."""
    xy = torch.rand(n, 2, dtype=torch.float64, generator=generator) * span
    wh = lo + torch.rand(n, 2, dtype=torch.float64, generator=generator) * (hi - lo)
    return torch.cat((xy, xy + wh), dim=1).to(dtype)
