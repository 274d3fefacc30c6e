"""DEIMv2's dense one-to-one matching: the union of several one-to-one matchings, one target per query.

A DETR-family decoder is matched once per entry (each layer, the encoder proposals). DEIMv2 trains
its box terms on the union of those matchings: per image, every (query, target) pair any entry
matched, counted over the entries; each query keeps the target it was paired with most often. So a
query matched by several layers counts once, and a target may keep several queries.

transformers 5.24 walks the pairs on the host, most frequent first, through an unstable sort (ties
of equal counts broken arbitrarily); here the rule is one deterministic device computation: among
equal counts the lowest target row wins (what a stable sort gives).
"""

from __future__ import annotations

import torch
from torch import Tensor


def dense_one_to_one(matches: Tensor, num_queries: int) -> tuple[Tensor, Tensor]:
    """The union of E one-to-one matchings, one target per query.

    Args:
        matches: ``(E, B, M)`` int64, each entry's query of each target row, −1 for none (padding,
            unmatched) — :func:`detloss.assign.hungarian_match_all`'s output.
        num_queries: Q, the queries every entry indexes (``matches < Q``).

    Returns:
        ``(member, target)``, both ``(B, Q)``: ``member`` whether any entry matched the query, and
        ``target`` the row it was matched to most often (the lowest row among equal counts; 0 where
        ``member`` is False). ``member.sum()`` is the union's size, its box normaliser.
    """
    if matches.dim() != 3:
        raise ValueError(f"matches must be (E, B, M), got shape {tuple(matches.shape)}")
    entries, batch, width = matches.shape
    # counts[b, q, m]: how many entries matched query q to row m; unmatched rows go to a spare query Q
    slot = torch.where(matches >= 0, matches, num_queries).transpose(0, 1)  # (B, E, M)
    counts = matches.new_zeros(batch, num_queries + 1, width)
    counts = counts.scatter_add(1, slot, torch.ones_like(slot))[:, :num_queries]
    member = counts.amax(2) > 0 if width else counts.new_zeros(batch, num_queries, dtype=torch.bool)
    target = counts.argmax(2) if width else counts.new_zeros(batch, num_queries)  # first maximum
    return member, target
