"""A synthetic detection data set: coloured shapes on textured backgrounds, deterministic from a seed.

Classes are the shape (0 rectangle, 1 ellipse, 2 triangle); the colour is random, so the detector
must learn the outline, not the hue. Each image holds 1–4 shapes whose boxes do not overlap (no
occlusion); a box is the extent of its shape. Nothing is downloaded; generation is vectorised over
images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import batched_nms

CLASSES = ("rectangle", "ellipse", "triangle")
_CANDIDATES = 8  # shapes drawn per image before the overlap filter keeps 1–4 of them


@dataclass
class ShapesData:
    """Images ``(N, 3, S, S)`` in [0, 1] and per image ``{"boxes": (n, 4) xyxy pixels, "labels": (n,)}``."""

    images: Tensor
    targets: list[dict[str, Tensor]]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx: Tensor) -> tuple[Tensor, list[dict[str, Tensor]]]:
        return self.images[idx], [self.targets[i] for i in idx.tolist()]


def _backgrounds(g: torch.Generator, n: int, size: int) -> tuple[Tensor, Tensor]:
    """Textured backgrounds ``(N, 3, S, S)``: a base colour, three tinted plane waves, pixel noise."""
    c = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    base = 0.25 + 0.5 * torch.rand(n, 3, generator=g)
    freq = 0.05 + 0.4 * torch.rand(n, 3, generator=g)  # three waves per image
    angle = 2 * math.pi * torch.rand(n, 3, generator=g)
    phase = 2 * math.pi * torch.rand(n, 3, generator=g)
    waves = torch.sin(
        freq[..., None, None] * (xx * angle.cos()[..., None, None] + yy * angle.sin()[..., None, None])
        + phase[..., None, None]
    )  # (N, wave, S, S)
    tint = 0.12 * (torch.rand(n, 3, 3, generator=g) - 0.5)  # (N, channel, wave)
    texture = torch.einsum("ncw,nwhx->nchx", tint, waves)
    noise = 0.04 * torch.randn(n, 3, size, size, generator=g)
    return (base[..., None, None] + texture + noise).clamp(0, 1), base


def _masks(kinds: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Boolean masks ``(N, K, S, S)`` of shapes of class ``kinds (N, K)`` filling ``boxes (N, K, 4)``."""
    c = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    x = c[None, None, None, :]
    y = c[None, None, :, None]
    x1, y1, x2, y2 = (v[..., None, None] for v in boxes.unbind(-1))
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    inside = (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
    ellipse = ((x - cx) / (w / 2)) ** 2 + ((y - cy) / (h / 2)) ** 2 <= 1.0
    triangle = inside & ((x - cx).abs() <= (w / 2) * (y - y1) / h)  # apex at the top centre
    k = kinds[..., None, None]
    return torch.where(k == 0, inside, torch.where(k == 1, ellipse, triangle))


def make_shapes(
    num_images: int,
    size: int = 64,
    seed: int = 0,
    min_side: float = 10.0,
    max_side: float = 34.0,
    max_objects: int = 4,
) -> ShapesData:
    """Generate ``num_images`` images deterministically from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    n, k = num_images, _CANDIDATES
    images, base = _backgrounds(g, n, size)
    wh = min_side + (max_side - min_side) * torch.rand(n, k, 2, generator=g)
    xy = torch.rand(n, k, 2, generator=g) * (size - wh)
    boxes = torch.cat([xy, xy + wh], -1)  # (N, K, 4)
    kinds = torch.randint(0, len(CLASSES), (n, k), generator=g)
    colours = torch.rand(n, k, 3, generator=g)
    # keep shapes visible: push a colour too close to the background's base colour to its complement
    colours = torch.where((colours - base[:, None, :]).abs() < 0.25, 1 - colours, colours)
    # accept candidates in order unless they overlap an accepted one (greedy, as NMS at IoU 0)
    order = torch.arange(k, 0, -1, dtype=torch.float32).expand(n, k)
    accepted = batched_nms(boxes, order, torch.zeros(n, k, dtype=torch.int64), 0.0)
    wanted = torch.randint(1, max_objects + 1, (n, 1), generator=g)
    accepted &= accepted.cumsum(1) <= wanted
    masks = _masks(kinds, boxes, size) & accepted[..., None, None]
    for j in range(k):  # paint candidate slots in order (later shapes over earlier ones)
        images = torch.where(masks[:, j, None], colours[:, j, :, None, None], images)
    targets = [{"boxes": boxes[i][accepted[i]], "labels": kinds[i][accepted[i]]} for i in range(n)]
    return ShapesData(images, targets)


# ------------------------------------------------------------------------------------------------
# oriented shapes
# ------------------------------------------------------------------------------------------------

ROTATED_CLASSES = ("rectangle", "ellipse")


def canonical_xywhr(boxes: Tensor) -> Tensor:
    """The docs/obb.md convention for ``(..., 5)`` xywhr boxes: w the longer side, θ in [−π/4, 3π/4).

    A box is the same box after swapping w and h and turning by π/2, and after turning by π, so every
    box has exactly one such form (a square keeps the θ it has, folded into the range).
    """
    x, y, w, h, t = boxes.unbind(-1)
    swap = h > w
    w, h = torch.where(swap, h, w), torch.where(swap, w, h)
    t = torch.where(swap, t + math.pi / 2, t)
    t = torch.remainder(t + math.pi / 4, math.pi) - math.pi / 4
    return torch.stack((x, y, w, h, t), -1)


def _rotated_masks(kinds: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Boolean masks ``(N, K, S, S)`` of rotated rectangles (class 0) or ellipses (1) filling the
    xywhr ``boxes (N, K, 5)``: each pixel centre is taken into the box's frame (u along the width
    axis (cos θ, sin θ), v along the height axis)."""
    c = torch.arange(size, dtype=torch.float32) + 0.5
    x = c[None, None, None, :]
    y = c[None, None, :, None]
    cx, cy, w, h, t = (v[..., None, None] for v in boxes.unbind(-1))
    dx, dy = x - cx, y - cy
    u = (dx * t.cos() + dy * t.sin()) / (w / 2)
    v = (-dx * t.sin() + dy * t.cos()) / (h / 2)
    rectangle = (u.abs() <= 1) & (v.abs() <= 1)
    ellipse = u.square() + v.square() <= 1
    return torch.where(kinds[..., None, None] == 0, rectangle, ellipse)


def make_rotated_shapes(
    num_images: int,
    size: int = 64,
    seed: int = 0,
    min_side: float = 6.0,
    max_side: float = 34.0,
    max_objects: int = 4,
) -> ShapesData:
    """Rotated rectangles and ellipses (:data:`ROTATED_CLASSES`) on the same textured backgrounds,
    deterministic from ``seed``; targets ``{"boxes": (n, 5) xywhr input pixels, "labels": (n,)}``
    in the :func:`canonical_xywhr` form.

    The long side is drawn from [max(min_side, 12), max_side], the short one from [min_side, 0.8 · long]
    (no square: its angle would be ambiguous), θ uniformly; the whole rotated box stays inside the
    image, and shapes whose axis-aligned hulls overlap are dropped, so no shape hides another.
    """
    g = torch.Generator().manual_seed(seed)
    n, k = num_images, _CANDIDATES
    images, base = _backgrounds(g, n, size)
    long = max(min_side, 12.0) + (max_side - max(min_side, 12.0)) * torch.rand(n, k, generator=g)
    short = min_side + (0.8 * long - min_side).clamp(min=0) * torch.rand(n, k, generator=g)
    theta = -math.pi / 4 + math.pi * torch.rand(n, k, generator=g)
    # half extents of the rotated box's axis-aligned hull, so the centre can keep it inside the image
    hx = 0.5 * (long * theta.cos().abs() + short * theta.sin().abs())
    hy = 0.5 * (long * theta.sin().abs() + short * theta.cos().abs())
    cx = hx + torch.rand(n, k, generator=g) * (size - 2 * hx).clamp(min=0)
    cy = hy + torch.rand(n, k, generator=g) * (size - 2 * hy).clamp(min=0)
    boxes = canonical_xywhr(torch.stack((cx, cy, long, short, theta), -1))
    hull = torch.stack((cx - hx, cy - hy, cx + hx, cy + hy), -1)
    kinds = torch.randint(0, len(ROTATED_CLASSES), (n, k), generator=g)
    colours = torch.rand(n, k, 3, generator=g)
    colours = torch.where((colours - base[:, None, :]).abs() < 0.25, 1 - colours, colours)
    order = torch.arange(k, 0, -1, dtype=torch.float32).expand(n, k)
    accepted = batched_nms(hull, order, torch.zeros(n, k, dtype=torch.int64), 0.0)
    wanted = torch.randint(1, max_objects + 1, (n, 1), generator=g)
    accepted &= accepted.cumsum(1) <= wanted
    masks = _rotated_masks(kinds, boxes, size) & accepted[..., None, None]
    for j in range(k):  # paint candidate slots in order
        images = torch.where(masks[:, j, None], colours[:, j, :, None, None], images)
    targets = [{"boxes": boxes[i][accepted[i]], "labels": kinds[i][accepted[i]]} for i in range(n)]
    return ShapesData(images, targets)
