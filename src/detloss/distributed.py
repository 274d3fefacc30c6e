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


def global_count(count: Tensor, reduce_across_ranks: bool, at_least: float | None = None) -> Tensor:
    """The normaliser for a local ``count``: ``max(Σ_ranks count, at_least) / world_size``.

    Args:
        count: scalar tensor (e.g. the number of positives in this rank's batch). Not modified.
        reduce_across_ranks: all-reduce when a process group is initialised; otherwise (or when
            False) return ``max(count, at_least)``, so single-process behaviour is untouched.
        at_least: clamp the *global* sum before dividing by the world size, so that a criterion's
            ``max(N, 1)`` stays exact: ``max(N, 1) / K`` on each of K ranks (clamping each rank's
            share at 1 would give ``max(N / K, 1)``, different when 0 < N < K). ``None``: no clamp.

    Returns:
        A floating scalar tensor, detached (normalisers carry no gradient).
    """
    count = count.detach() if count.requires_grad else count
    count = count.to(torch.get_default_dtype() if not count.is_floating_point() else count.dtype)
    if reduce_across_ranks and is_distributed():
        count = count.clone()
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        world = dist.get_world_size()
    else:
        world = 1
    if at_least is not None:
        count = count.clamp(min=at_least)
    return count / world if world > 1 else count
