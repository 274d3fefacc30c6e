"""Counting aten ops and host synchronisations with a ``TorchDispatchMode`` (CPU, no GPU needed).

An op *syncs* when its result or its output shape depends on tensor values the host must read:
``.item()`` / ``bool(t)`` / ``int(t)`` (``_local_scalar_dense``), ``nonzero``, ``masked_select``,
``unique``, ``repeat_interleave`` without ``output_size``, indexing with a boolean mask (``index`` /
``index_put`` with bool indices call ``nonzero`` below the dispatcher), and the device → host copies
these would need on a GPU. On a CPU none of them stalls, but each one would on CUDA: counting them
here is what proves a criterion is one graph.

Usage::

    with OpCounter() as c:
        crit(preds, targets).total.backward()
    assert c.syncs == 0, c.sync_ops
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_SYNC_PACKETS = {
    aten._local_scalar_dense,
    aten.nonzero,
    aten.masked_select,
    aten.is_nonzero,
    aten.equal,
    aten.unique_consecutive,
    aten.unique_dim,
    aten._unique,
    aten._unique2,
    aten.bincount,  # output length = max value + 1
    aten.masked_scatter,  # number of elements read depends on the mask
}
_INDEX_PACKETS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    if isinstance(indices, (list, tuple)):
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
    return False


def _is_sync(func, args: tuple, kwargs: dict) -> bool:
    packet = func.overloadpacket
    if packet in _SYNC_PACKETS:
        return True
    if packet in _INDEX_PACKETS:
        return _has_bool_index(args)
    if packet is aten.repeat_interleave:
        return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
    return False


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched (``ops``) and those that need the host (``syncs``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.by_name: Counter[str] = Counter()
        self.sync_ops: list[str] = []

    @property
    def syncs(self) -> int:
        return len(self.sync_ops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        self.by_name[str(func.overloadpacket.__name__)] += 1
        if _is_sync(func, args, kwargs):
            self.sync_ops.append(str(func))
        return func(*args, **kwargs)
