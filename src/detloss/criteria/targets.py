"""A criterion's targets: a list of per-image dicts, padded here, or :class:`PaddedTargets` as they are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..assign import PaddedTargets, pad_targets
from ..assign.targets import TargetFormat

#: B dicts ``{"boxes": (n, 4) xyxy input pixels, "labels": (n,) int64}`` (``(n, 5)`` xywhr for the
#: oriented criteria), or the padded batch.
Targets = Sequence[Mapping[str, Tensor]] | PaddedTargets


def batch_size(targets: Targets) -> int:
    """B, the number of images."""
    return targets.mask.shape[0] if isinstance(targets, PaddedTargets) else len(targets)


def as_padded(
    targets: Targets,
    num_classes: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    validate: bool,
    input_size: tuple[int, int] | None = None,
    fmt: TargetFormat = "xyxy",
) -> PaddedTargets:
    """The targets as :class:`PaddedTargets` with boxes in ``dtype``: a list of dicts goes through
    :func:`detloss.assign.pad_targets` (and its checks, with ``validate``); padded targets are taken
    as they are, their checks skipped (they must already be on ``device``)."""
    if isinstance(targets, PaddedTargets):
        return PaddedTargets(targets.boxes.to(dtype), targets.labels, targets.mask)
    return pad_targets(
        targets, num_classes, fmt=fmt, dtype=dtype, device=device, validate=validate, input_size=input_size
    )
