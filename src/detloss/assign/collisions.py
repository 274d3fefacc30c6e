"""Later write wins: which of several candidates written to the same target slot holds it at the end.

The originals write their targets box by box into a dense array, so where two candidates share a slot
the later one stays. The vectorised builders resolve this with one scatter of the candidates' write
order under ``amax``: order-free and therefore deterministic, unlike ``index_put`` with duplicate
indices (PyTorch promises no order for those).
"""

from __future__ import annotations

import torch
from torch import Tensor


def resolve_collisions(slot: Tensor, assigned: Tensor, num_slots: int) -> tuple[Tensor, Tensor]:
    """Later write wins: for each assigned candidate, the last assigned candidate with the same slot.

    Args:
        slot: ``(B, N)`` int64 slot of each candidate in ``[0, num_slots)``, candidates in write order.
        assigned: ``(B, N)`` bool.
        num_slots: slots per row.

    Returns:
        owner ``(B, N)`` int64, the index of the candidate holding the slot at the end (-1 where not
        assigned; a candidate is the winner of its slot where ``owner == arange(N)``), and occupied
        ``(B, num_slots)`` bool.
    """
    b, n = slot.shape
    order = torch.arange(n, device=slot.device).expand(b, n)
    unassigned = ~assigned
    target = slot.masked_fill(unassigned, num_slots)  # unassigned candidates go to a spare slot
    last = torch.full((b, num_slots + 1), -1, dtype=torch.int64, device=slot.device)
    last.scatter_reduce_(1, target, order, reduce="amax")
    return last.gather(1, target).masked_fill(unassigned, -1), last[:, :num_slots] >= 0
