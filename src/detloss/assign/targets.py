"""Ground truth padded to batch tensors ``(B, M, 4)`` with a validity mask, and its checks."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..checks import check_boxes, check_class_ids, check_finite, check_num_classes, check_one_of

TargetFormat = Literal["xyxy", "cxcywh", "xywhr"]


@dataclass
class PaddedTargets:
    """A batch of ground truth padded to the largest image.

    Attributes:
        boxes: ``(B, M, 4)`` boxes in the format and units of the criterion that takes them (xyxy
            input pixels for the YOLO criteria, xyxy in the priors' units for SSD, cxcywh normalised
            to [0, 1] for DETR); padding rows are 0.
        labels: ``(B, M)`` int64 class ids; padding rows are 0.
        mask: ``(B, M)`` bool, True for real boxes (:func:`pad_targets` puts them first; a criterion
            reads the mask, so any position works).
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
    fmt: TargetFormat = "xyxy",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    validate: bool = True,
    input_size: tuple[int, int] | None = None,
) -> PaddedTargets:
    """Validate a list of per-image target dicts and pad them into batch tensors.

    Args:
        targets: B dicts ``{"boxes": (n, 4) float, "labels": (n,) int64}``; n may be 0.
        num_classes: class ids must lie in ``[0, num_classes)``.
        fmt: the boxes' format, for the validation: ``"xyxy"`` (x2 > x1, y2 > y1), ``"cxcywh"``
            (w > 0, h > 0) or ``"xywhr"`` (``(n, 5)`` oriented boxes, w > 0, h > 0). The boxes are
            padded as they are, not converted.
        dtype, device: of the returned boxes.
        validate: check finiteness, positive width and height, and class ranges (the shape and
            type checks always run), in one host sync for the whole batch.
        input_size: ``(H, W)``; with ``validate``, box centres must lie in ``[0, W) × [0, H)`` too
            (YOLO trains a box at its centre's cell), checked in the same single sync. xyxy only.

    Without ``validate`` nothing here reads a tensor value: the padded rows gather the concatenated
    boxes by a cumulative count of the mask, a comparison with the per-image counts that the host
    knows from the shapes. The op count does not depend on B: the boxes are concatenated first and
    converted once.

    Raises:
        TypeError: a wrong container, key or dtype, naming the image.
        ValueError: a wrong shape, a bad box or class id, naming the image and box index.
    """
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise TypeError(f"targets must be a list of dicts, got {type(targets).__name__}")
    check_num_classes(num_classes)
    check_one_of("fmt", fmt, ("xyxy", "cxcywh", "xywhr"))
    size = 5 if fmt == "xywhr" else 4
    if input_size is not None and fmt != "xyxy":
        raise ValueError(f"input_size (the centre check) needs fmt='xyxy', got fmt={fmt!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    boxes, labels = [], []
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
            raise TypeError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
        b = check_boxes(f"targets[{i}]['boxes']", t["boxes"], finite=False, size=size)
        lab = t["labels"]
        integer = isinstance(lab, Tensor) and not (
            lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool
        )
        if not integer:
            raise TypeError(f"targets[{i}]['labels'] must be an integer tensor")
        if b.dim() != 2 or lab.shape != b.shape[:1]:
            raise ValueError(
                f"targets[{i}]: boxes must be (n, {size}) {fmt} and labels (n,), got "
                f"{tuple(b.shape)} and {tuple(lab.shape)}"
            )
        boxes.append(b)
        labels.append(lab)
    batch = len(boxes)
    if device is None and boxes:
        device = boxes[0].device
    if not batch:
        empty = torch.zeros(0, 0, size, dtype=dtype, device=device)
        return PaddedTargets(empty, torch.zeros(0, 0, dtype=torch.int64, device=device), empty[..., 0].bool())
    if validate:
        _check_values(boxes, labels, num_classes, dtype, fmt, input_size)
    # padded row r takes concatenated row (number of real rows before r): a gather by a cumsum
    # index, no mask indexing and no host sync (the counts come from the shapes)
    counts = torch.tensor([b.shape[0] for b in boxes], dtype=torch.int64, device=device)
    # sym_max: under torch.compile(dynamic=True) a plain max() would guard on which image is largest
    m = functools.reduce(torch.sym_max, [b.shape[0] for b in boxes])
    mask = torch.arange(m, device=device) < counts[:, None]
    source = (mask.view(-1).cumsum(0) - 1).clamp(min=0).view(batch, m)
    keep = mask[..., None]
    # concatenated, then converted once (cat promotes exactly, so one rounding as a direct cast);
    # .to(device) is a no-op on boxes already there
    flat = torch.cat([b.to(device=device) for b in boxes]).to(dtype=dtype)
    out_boxes = torch.where(keep, flat[source], 0.0)
    out_labels = torch.cat(labels).to(device=device, dtype=torch.int64)[source] * mask
    return PaddedTargets(out_boxes, out_labels, mask)


def targets_ok(boxes: Tensor, labels: Tensor, num_classes: int, fmt: TargetFormat = "xyxy") -> Tensor:
    """``(...)`` bool, computed on the device (no sync): box ``(..., 4)`` finite with positive width
    and height (xyxy: x2 > x1 and y2 > y1; cxcywh: w > 0 and h > 0) and its class id in
    ``[0, num_classes)``. A batched check reduces it with ``.all()`` and reads one bool."""
    sized = _positive_size(boxes, fmt)
    return torch.isfinite(boxes).all(-1) & sized & (labels >= 0) & (labels < num_classes)


def _positive_size(boxes: Tensor, fmt: TargetFormat) -> Tensor:
    """``(...)`` bool: xyxy x2 > x1 and y2 > y1, or cxcywh / xywhr w > 0 and h > 0 (False for NaN)."""
    if fmt == "xyxy":
        return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    return (boxes[..., 2] > 0) & (boxes[..., 3] > 0)


def raise_bad_target(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    num_classes: int,
    dtype: torch.dtype,
    fmt: TargetFormat = "xyxy",
    input_size: tuple[int, int] | None = None,
) -> None:
    """After a batched check failed: the images one by one (a sync each), raising ``ValueError`` for
    the first non-finite value (in ``dtype``: 1e30 is finite in float32 but inf in float16), class id
    outside ``[0, num_classes)``, box without positive width and height in ``fmt`` or (with
    ``input_size``, xyxy) centre outside the input, naming the image and the box."""
    need = "x2 > x1 and y2 > y1" if fmt == "xyxy" else "w > 0 and h > 0"
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        b = b.to(dtype)  # a width that rounds to 0 in float16 is a zero width
        check_finite(f"targets[{i}]['boxes'] (as {dtype})", b)
        check_class_ids(f"targets[{i}]['labels']", lab, num_classes)
        bad = ~_positive_size(b, fmt)
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"targets[{i}]['boxes'][{j}] = {b[j].tolist()} has zero or negative width or "
                f"height ({fmt} boxes need {need})"
            )
        if input_size is not None and bool((out := centre_outside(b, input_size)).any()):
            j = int(out.nonzero()[0, 0])
            raise centre_error(i, j, b[j], input_size)


def _check_values(
    boxes: list[Tensor],
    labels: list[Tensor],
    num_classes: int,
    dtype: torch.dtype,
    fmt: TargetFormat,
    input_size: tuple[int, int] | None,
) -> None:
    """:func:`targets_ok` (and, with ``input_size``, centres inside the input) over the whole batch in
    one pass and one host sync; only on failure :func:`raise_bad_target` names the first bad box."""
    if not any(b.shape[0] for b in boxes):
        return
    b, lab = torch.cat(boxes).to(dtype), torch.cat(labels)
    ok = targets_ok(b, lab, num_classes, fmt)
    if input_size is not None:
        ok &= ~centre_outside(b, input_size)
    if bool(ok.all()):
        return
    raise_bad_target(boxes, labels, num_classes, dtype, fmt, input_size)


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
