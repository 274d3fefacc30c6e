"""Rank-aware normalisers: make a criterion's average exact under DistributedDataParallel.

DDP averages gradients over K processes. A loss normalised by a count of the local batch (positives,
matches) gives ``(1/K)·Σ_k ∇S_k / N_k``, not the single-process ``∇(Σ_k S_k) / Σ_k N_k``. Dividing each
rank's sum by ``(Σ_k N_k) / K`` instead makes DDP's average equal to the single-process gradient on
the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def global_count(count: Tensor, reduce_across_ranks: bool) -> Tensor:
    """The normaliser for a local ``count``: ``(Σ_ranks count) / world_size``, or ``count`` itself.

    Args:
        count: scalar tensor (e.g. the number of positives in this rank's batch). Not modified.
        reduce_across_ranks: all-reduce when a process group is initialised; otherwise (or when
            False) return ``count`` unchanged, so single-process behaviour is untouched.

    Returns:
        A floating scalar tensor, detached (normalisers carry no gradient). Clamp it at the point
        of use, after the reduction, so an empty rank does not change the global count.
    """
    count = count.detach().to(torch.get_default_dtype() if not count.is_floating_point() else count.dtype)
    if not (reduce_across_ranks and is_distributed()):
        return count
    total = count.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()
