"""Ground truth padded to batch tensors ``(B, M, 4)`` with a validity mask, and its checks."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import check_boxes, check_class_ids, check_finite, check_num_classes


@dataclass
class PaddedTargets:
    """A batch of ground truth padded to the largest image.

    Attributes:
        boxes: ``(B, M, 4)`` xyxy boxes in input pixels; padding rows are 0.
        labels: ``(B, M)`` int64 class ids; padding rows are 0.
        mask: ``(B, M)`` bool, True for real boxes.
    """

    boxes: Tensor
    labels: Tensor
    mask: Tensor

    @property
    def counts(self) -> Tensor:
        """``(B,)`` number of real boxes per image."""
        return self.mask.sum(1)


def pad_targets(
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    validate: bool = True,
    input_size: tuple[int, int] | None = None,
) -> PaddedTargets:
    """Validate a list of per-image target dicts and pad them into batch tensors.

    Args:
        targets: B dicts ``{"boxes": (n, 4) float xyxy, "labels": (n,) int64}``; n may be 0.
        num_classes: class ids must lie in ``[0, num_classes)``.
        dtype, device: of the returned boxes.
        validate: check finiteness, positive width and height, and class ranges (the shape and
            type checks always run), in one host sync for the whole batch.
        input_size: ``(H, W)``; with ``validate``, box centres must lie in ``[0, W) × [0, H)`` too
            (YOLO trains a box at its centre's cell), checked in the same single sync.

    Without ``validate`` nothing here reads a tensor value: the padded rows gather the concatenated
    boxes by a cumulative count of the mask, a comparison with the per-image counts that the host
    knows from the shapes.

    Raises:
        TypeError: a wrong container, key or dtype, naming the image.
        ValueError: a wrong shape, a bad box or class id, naming the image and box index.
    """
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise TypeError(f"targets must be a list of dicts, got {type(targets).__name__}")
    check_num_classes(num_classes)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    boxes, labels = [], []
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
            raise TypeError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
        b = check_boxes(f"targets[{i}]['boxes']", t["boxes"], finite=False)
        lab = t["labels"]
        integer = isinstance(lab, Tensor) and not (
            lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool
        )
        if not integer:
            raise TypeError(f"targets[{i}]['labels'] must be an integer tensor")
        if b.dim() != 2 or lab.shape != b.shape[:1]:
            raise ValueError(
                f"targets[{i}]: boxes must be (n, 4) and labels (n,), got "
                f"{tuple(b.shape)} and {tuple(lab.shape)}"
            )
        boxes.append(b)
        labels.append(lab)
    batch = len(boxes)
    if device is None and boxes:
        device = boxes[0].device
    if not batch:
        empty = torch.zeros(0, 0, 4, dtype=dtype, device=device)
        return PaddedTargets(empty, torch.zeros(0, 0, dtype=torch.int64, device=device), empty[..., 0].bool())
    if validate:
        _check_values(boxes, labels, num_classes, dtype, input_size)
    # padded row r takes concatenated row (number of real rows before r): a gather by a cumsum
    # index, no mask indexing and no host sync (the counts come from the shapes)
    counts = torch.tensor([b.shape[0] for b in boxes], dtype=torch.int64, device=device)
    # sym_max: under torch.compile(dynamic=True) a plain max() would guard on which image is largest
    m = functools.reduce(torch.sym_max, [b.shape[0] for b in boxes])
    mask = torch.arange(m, device=device) < counts[:, None]
    source = (mask.view(-1).cumsum(0) - 1).clamp(min=0).view(batch, m)
    keep = mask[..., None]
    flat = torch.cat([b.to(dtype=dtype, device=device) for b in boxes])
    out_boxes = torch.where(keep, flat[source], 0.0)
    out_labels = torch.cat(labels).to(device=device, dtype=torch.int64)[source] * mask
    return PaddedTargets(out_boxes, out_labels, mask)


def _check_values(
    boxes: list[Tensor],
    labels: list[Tensor],
    num_classes: int,
    dtype: torch.dtype,
    input_size: tuple[int, int] | None,
) -> None:
    """Finite boxes (in ``dtype``: 1e30 is finite in float32 but inf in float16), x2 > x1, y2 > y1,
    class ids in range and (with ``input_size``) centres inside the input: one pass and one host sync
    over the whole batch; only on failure are the images checked one by one, to name the first bad
    image and box."""
    if not any(b.shape[0] for b in boxes):
        return
    b, lab = torch.cat([x.to(dtype) for x in boxes]), torch.cat(labels)
    ok = torch.isfinite(b).all(1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    if input_size is not None:
        ok &= ~centre_outside(b, input_size)
    if bool((ok & (lab >= 0) & (lab < num_classes)).all()):
        return
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        b = b.to(dtype)  # a width that rounds to 0 in float16 is a zero width
        check_finite(f"targets[{i}]['boxes'] (as {dtype})", b)
        check_class_ids(f"targets[{i}]['labels']", lab, num_classes)
        bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"targets[{i}]['boxes'][{j}] = {b[j].tolist()} has zero or negative width or "
                "height (xyxy boxes need x2 > x1 and y2 > y1)"
            )
        if input_size is not None and bool((out := centre_outside(b, input_size)).any()):
            j = int(out.nonzero()[0, 0])
            raise centre_error(i, j, b[j], input_size)


def centre_outside(boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
    """``(...)`` bool: the centre of an xyxy box ``(..., 4)`` lies outside ``[0, W) × [0, H)``."""
    h, w = input_size
    c = (boxes[..., :2] + boxes[..., 2:]) * 0.5
    return (c < 0).any(-1) | (c[..., 0] >= w) | (c[..., 1] >= h)


def centre_error(image: int, index: int, box: Tensor, input_size: tuple[int, int]) -> ValueError:
    """The error for box ``index`` of image ``image`` whose centre lies outside the input."""
    h, w = input_size
    return ValueError(
        f"targets[{image}]['boxes'][{index}] = {box.tolist()} has its centre outside the "
        f"{w}x{h} input: YOLO trains a box at the cell of its centre"
    )
