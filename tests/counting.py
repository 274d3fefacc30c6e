"""The tests' op and sync counter: :class:`detloss.bench_criteria.OpCounter` (a ``TorchDispatchMode``
counting aten ops and the ops that need the host), imported here as ``from counting import OpCounter``.

Usage::

    with OpCounter() as c:
        crit(preds, targets).total.backward()
    assert c.syncs == 0, c.sync_ops
"""

from detloss.bench_criteria import OpCounter

__all__ = ["OpCounter"]
