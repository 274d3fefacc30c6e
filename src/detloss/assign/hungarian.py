"""Hungarian matching of set predictions to targets, one host round trip for every block.

DETR-family criteria match each decoder layer's queries to each image's targets one-to-one. The
references build the cost between every query of the batch and every target of the batch
(``B·Q × ΣM``), copy it to the host once per layer and split it per image there. Here the caller
builds only each image's own block, padded to ``(…, Q, M_max)``; all blocks reach the host in one
transfer, :func:`scipy.optimize.linear_sum_assignment` solves each, and the matches return to the
device in one transfer. The loop over blocks runs on the host over numpy arrays: it is the solver.

scipy is an optional dependency (``pip install "detloss[detr]"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._extras import require

if TYPE_CHECKING:
    import numpy as np


def require_scipy():
    """``scipy.optimize.linear_sum_assignment``, or an ``ImportError`` naming ``detloss[detr]``."""
    return require("scipy.optimize", "detr", "scipy").linear_sum_assignment


def to_host(*tensors: Tensor) -> list[np.ndarray]:
    """The one device → host transfer of a matching (a function of its own so tests can count it):
    the cost last, after the counts or column mask when they are tensors. One synchronisation: every
    copy but the last is queued without blocking (into pinned memory) and the last one blocks, which
    on one stream completes the earlier copies too."""
    out = []
    for i, t in enumerate(tensors):
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()  # numpy has no bfloat16; the solver works in float64 anyway
        out.append(t.detach().to("cpu", non_blocking=i < len(tensors) - 1))
    return [t.numpy() for t in out]


def to_device(matches: np.ndarray, device: torch.device) -> Tensor:
    """The one host → device transfer of a matching's result."""
    return torch.from_numpy(matches).to(device)


def _dim_names(lead: int) -> tuple[str, ...]:
    return ("layer", "image")[-lead:] if 0 < lead <= 2 else tuple(f"dim {i}" for i in range(lead))


def _finite_block(block: np.ndarray, pairs: int) -> np.ndarray:
    """Non-finite entries replaced by a finite value larger than any assignment can gain by avoiding
    it, so they are matched last (the references put ``finfo.max`` there; a moderate value keeps the
    solver's potentials exact for the other entries)."""
    import numpy as np  # present wherever scipy is

    bad = ~np.isfinite(block)
    if not bad.any():
        return block
    good = block[~bad]
    if good.size == 0:
        return np.zeros_like(block)
    lo, hi = float(good.min()), float(good.max())
    big = hi + (hi - lo + 1.0) * (pairs + 1)
    if not np.isfinite(big):
        big = np.finfo(block.dtype).max
    return np.where(bad, big, block)


def _check_finite(
    host: np.ndarray, real: np.ndarray, names: tuple[str, ...], prefix: tuple[str, ...] = ()
) -> None:
    """ValueError at the first non-finite cost of a real column (``real`` ``(…, M)``); one pass."""
    import numpy as np

    bad = ~np.isfinite(host) & real[..., None, :]
    if bad.any():
        *idx, q, t = (int(i) for i in np.argwhere(bad)[0])
        where = "".join(f"{p}, " for p in prefix) + "".join(
            f"{k} {i}, " for k, i in zip(names, idx, strict=True)
        )
        raise ValueError(
            f"cost has a non-finite value ({host[(*idx, q, t)]}) at {where}query {q}, target {t}: "
            "a NaN or Inf prediction or target"
        )


_executors: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _executor(threads: int) -> ThreadPoolExecutor:
    """A pool per (process, size): a pool inherited through fork has no live threads."""
    key = (os.getpid(), threads)
    if key not in _executors:
        _executors[key] = ThreadPoolExecutor(threads, thread_name_prefix="detloss-hungarian")
    return _executors[key]


def hungarian_match(
    cost: Tensor,
    counts: int | Sequence[int] | Tensor,
    *,
    validate: bool = True,
    num_threads: int | None = None,
) -> Tensor:
    """Minimum-cost one-to-one matching of queries to targets, per block.

    Args:
        cost: ``(…, Q, M_max)`` matching cost of each block (for a DETR criterion ``(L, B, Q, M_max)``:
            layer, image, query, target); the padding columns are never read.
        counts: the real targets of each block: the number ``(…)`` of leading real columns, or
            broadcastable to the leading dims (e.g. ``(B,)`` against ``(L, B, Q, M_max)``; an int for
            one block), as host ints (criteria know them from the shapes); or a tensor, integer
            counts or a bool mask ``(…, M_max)`` of the real columns (any positions, broadcastable),
            read on the host in the same synchronisation as the cost.
        validate: raise ``ValueError`` naming the layer, image, query and target of the first
            non-finite cost. With ``False``, non-finite costs are matched only where nothing else
            can be (as the references: they replace them by a large finite value).
        num_threads: host threads solving blocks in parallel (the solver releases the GIL);
            ``None``: ``torch.get_num_threads()``, the intra-op pool's size, idle during the matching.

    Returns:
        ``(…, M_max)`` int64 on ``cost``'s device: the query matched to each target, −1 for padding
        and for targets left unmatched (more targets than queries). Each block's pairs are
        ``scipy.optimize.linear_sum_assignment``'s on the block's real columns ``cost[…, :, real]``.

    Raises:
        ImportError: scipy is not installed.
    """
    return hungarian_match_all([cost], counts, validate=validate, num_threads=num_threads)[0]


def hungarian_match_all(
    costs: Sequence[Tensor],
    counts: int | Sequence[int] | Tensor,
    *,
    validate: bool = True,
    num_threads: int | None = None,
) -> list[Tensor]:
    """:func:`hungarian_match` of several cost tensors in one round trip: one device → host transfer
    of every block (and of ``counts`` when it is a tensor), one host → device transfer of every match.

    A DETR criterion's entries differ in their query count (decoder layers ``(L, B, Q, M)``, encoder
    proposals ``(1, B, Q_e, M)``): they cannot be stacked, yet they need not cost a transfer each.

    Args:
        costs: ``(…_k, Q_k, M_k)`` each, on one device; the leading dims and Q may differ.
        counts: as :func:`hungarian_match`'s, broadcast to each cost's leading dims (a bool mask to
            ``(…_k, M_k)``).
        validate, num_threads: as :func:`hungarian_match`'s; a non-finite cost names its cost tensor
            too when there are several.

    Returns:
        One ``(…_k, M_k)`` int64 tensor of matched query indices per cost (views of one transfer).
    """
    solve = require_scipy()
    import numpy as np  # present wherever scipy is

    if isinstance(costs, Tensor) or not isinstance(costs, Sequence) or not costs:
        raise TypeError("costs must be a non-empty list of torch.Tensor")
    for k, cost in enumerate(costs):
        name = "cost" if len(costs) == 1 else f"costs[{k}]"
        if not isinstance(cost, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(cost).__name__}")
        if cost.dim() < 2 or not cost.is_floating_point():
            raise ValueError(
                f"{name} must be a floating tensor (..., Q, M), got {cost.dtype} {tuple(cost.shape)}"
            )
    is_mask = isinstance(counts, Tensor) and counts.dtype == torch.bool
    if isinstance(counts, Tensor):
        if counts.is_floating_point() or counts.is_complex():
            raise TypeError(f"counts must be an integer or bool tensor, got {counts.dtype}")
        counts, *hosts = to_host(counts, *costs)  # the one transfer there
    else:
        hosts = to_host(*costs)  # the one transfer there

    jobs, reals = [], []
    for k, (cost, host) in enumerate(zip(costs, hosts, strict=True)):
        lead, (num_queries, width) = cost.shape[:-2], cost.shape[-2:]
        real = _real_columns(counts, is_mask, tuple(lead), width)
        if validate:
            prefix = () if len(costs) == 1 else (f"costs[{k}]",)
            _check_finite(host, real, _dim_names(len(lead)), prefix)
        reals.append(real)
        jobs += [(k, idx) for idx in np.ndindex(*lead) if num_queries and real[idx].any()]

    Solved = tuple[int, tuple[int, ...], np.ndarray, np.ndarray]  # cost, block, rows, columns

    def solve_chunk(chunk: list[tuple[int, tuple[int, ...]]]) -> list[Solved]:
        out = []
        for k, idx in chunk:
            cols = np.flatnonzero(reals[k][idx])
            block = hosts[k][idx][:, cols]
            if not validate:
                block = _finite_block(block, min(block.shape[0], len(cols)))
            rows, picked = solve(block)
            out.append((k, idx, rows, cols[picked]))
        return out

    threads = min(torch.get_num_threads() if num_threads is None else int(num_threads), len(jobs))
    if threads > 1:  # the solver releases the GIL: blocks in parallel, one chunk per thread
        chunks = [jobs[i::threads] for i in range(threads)]
        solved = [r for part in _executor(threads).map(solve_chunk, chunks) for r in part]
    else:
        solved = solve_chunk(jobs)
    # every cost's matches in one flat array: one transfer back, split into views on the device
    shapes = [(*c.shape[:-2], c.shape[-1]) for c in costs]
    sizes = [int(np.prod(s)) for s in shapes]
    flat = np.full(sum(sizes), -1, dtype=np.int64)
    matches = [m.reshape(s) for m, s in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes, strict=True)]
    for k, idx, rows, cols in solved:
        matches[k][idx][cols] = rows
    device = to_device(flat, costs[0].device)  # the one transfer back
    return [part.view(s) for part, s in zip(device.split(sizes), shapes, strict=True)]


def _real_columns(counts: object, is_mask: bool, lead: tuple[int, ...], width: int) -> np.ndarray:
    """``(…, M)`` bool: the real columns of each block, from a column mask or per-block counts."""
    import numpy as np

    if is_mask:
        try:
            return np.broadcast_to(counts, (*lead, width))
        except ValueError:
            raise ValueError(
                f"the column mask of shape {np.shape(counts)} does not broadcast to {(*lead, width)}"
            ) from None
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 1 and counts.ndim > len(lead):  # [n] for a single (Q, M) block
        counts = counts.reshape(())
    try:
        n = np.broadcast_to(counts, lead)
    except ValueError:
        raise ValueError(
            f"counts of shape {np.shape(counts)} does not broadcast to cost's leading dims {lead}"
        ) from None
    if n.size and (n.min() < 0 or n.max() > width):
        raise ValueError(f"counts must lie in [0, {width}] (cost's last dim), got {n.min()}…{n.max()}")
    return np.arange(width) < n[..., None]
