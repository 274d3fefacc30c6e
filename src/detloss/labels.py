"""Class targets as tensors: the one-hot of class ids and label smoothing, written once.

Pure formulas without checks (the callers validate their inputs once): the public, checked
:func:`detloss.smooth_labels` and the criteria build on them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(*, C)`` one-hot of integer class ids ``(*)`` by comparison with ``0 … C − 1``: no host sync
    (``F.one_hot`` reads the ids to check them); an id outside ``[0, C)`` gives a row of zeros."""
    return (labels[..., None] == torch.arange(num_classes, device=labels.device)).to(dtype)


def smoothed(onehot: Tensor, eps: float) -> Tensor:
    """Label smoothing of one-hot (or multi-hot, or soft) targets ``(*, K)``::

        onehot · (1 − ε) + ε / K

    (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", 2016, §7).
    """
    return onehot * (1.0 - eps) + eps / onehot.shape[-1]
