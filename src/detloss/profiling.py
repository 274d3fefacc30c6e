"""Count what one step asks of the device: aten ops dispatched and the ones the host must wait for.

:class:`DispatchCounter` is a ``TorchDispatchMode`` (like ``torch.utils.flop_counter.FlopCounterMode``)::

    from detloss.profiling import DispatchCounter

    with DispatchCounter() as c:
        crit(preds, targets).total.backward()
    c.ops        # aten ops dispatched (≈ kernel launches on a GPU), metadata-only ops excluded
    c.syncs      # ops whose result the host must read (.item(), nonzero, boolean-mask indexing, …)
    c.sync_ops   # which ones: Counter of op name -> count

It counts on any device, the CPU included, so a test can bound the launches and forbid the host
syncs of a training step without a GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._ops import OpOverload
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["DispatchCounter", "is_metadata_only", "is_sync"]

aten = torch.ops.aten

# Not views by their schema (the output carries no alias annotation), yet they launch no kernel:
# _unsafe_view reinterprets a tensor that nothing else refers to (reshape after a copy, matmul
# outputs); the sym_* ops only read sizes.
_METADATA_PACKETS = {
    aten._unsafe_view,
    aten.sym_size,
    aten.sym_stride,
    aten.sym_numel,
    aten.sym_storage_offset,
}
# The result's value or shape depends on data the host must read first.
_SYNC_PACKETS = {
    aten._local_scalar_dense,  # .item(), float(t), bool(t), `if t:`
    aten.nonzero,
    aten.masked_select,
    aten.is_nonzero,
    aten.equal,
    aten.unique_consecutive,
    aten.unique_dim,
    aten._unique,
    aten._unique2,
    aten.bincount,  # its length is max(input) + 1
    aten.masked_scatter,  # checks the source is long enough for the mask's count
}
_INDEX_PACKETS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


def is_metadata_only(func: OpOverload) -> bool:
    """Whether ``func`` only makes new tensor metadata and launches no kernel.

    True for the ops whose schema says the output aliases an input without writing it
    (``func.is_view``: ``view``, ``t``, ``expand``, ``permute``, ``select``, ``slice``, ``unbind``,
    ``detach``, ``alias``, ``as_strided`` …) and for ``_unsafe_view`` and the ``sym_*`` size queries.
    In-place metadata ops (``t_``, ``squeeze_`` …) write their input and are counted.
    """
    return func.is_view or func.overloadpacket in _METADATA_PACKETS


def is_sync(func: OpOverload, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether the host must wait for the device to dispatch ``func(*args, **kwargs)``.

    True when the result's value or shape depends on tensor data: ``_local_scalar_dense`` (``.item()``,
    ``bool(t)``), ``nonzero``, ``masked_select``, ``unique``, ``bincount``, ``equal``, indexing with a
    boolean mask, ``repeat_interleave`` with tensor repeats and no ``output_size``.
    """
    packet = func.overloadpacket
    if packet in _SYNC_PACKETS:
        return True
    if packet in _INDEX_PACKETS:
        indices = args[1] if len(args) > 1 else ()
        return isinstance(indices, (list, tuple)) and any(
            isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
        )
    if packet is aten.repeat_interleave:
        # the int-repeats overload knows its length; the tensor ones need sum(repeats) unless given it
        return func is not aten.repeat_interleave.self_int and kwargs.get("output_size") is None
    return False


class DispatchCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active, and the host syncs among them.

    Attributes:
        ops: aten ops dispatched, :func:`is_metadata_only` ops excluded (each one a kernel launch on
            a GPU, give or take the ops that launch two or none).
        by_name: ``Counter`` of the counted ops by overload name (``"aten.add.Tensor"``).
        sync_ops: ``Counter`` of the :func:`is_sync` ops by overload name (metadata-only or not).

    Only ops that reach the dispatcher are seen: ``Tensor.tolist()`` and ``Tensor.numpy()`` read a CPU
    tensor's memory directly, and a device-to-host copy (``.cpu()``) is counted as an op, not a sync.
    Nested counters each see every op run inside them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter[str] = Counter()
        self.sync_ops: Counter[str] = Counter()

    @property
    def ops(self) -> int:
        """Aten ops dispatched, metadata-only ops excluded."""
        return self.by_name.total()

    @property
    def syncs(self) -> int:
        """Ops whose result the host must read: ``sum(sync_ops.values())``."""
        return self.sync_ops.total()

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if not is_metadata_only(func):
            self.by_name[str(func)] += 1
        if is_sync(func, args, kwargs):
            self.sync_ops[str(func)] += 1
        return func(*args, **kwargs)
