"""DispatchCounter on single ops whose dispatch is known: what counts as an op, what as a host sync."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

import detloss
from detloss.profiling import DispatchCounter, is_metadata_only


def test_importable_as_submodule():
    assert detloss.profiling.DispatchCounter is DispatchCounter


def test_item_is_one_op_pair_and_exactly_one_sync():
    x = torch.randn(6)
    with DispatchCounter() as c:
        x.sum().item()
    assert c.syncs == 1
    assert c.sync_ops == {"aten._local_scalar_dense.default": 1}
    assert c.ops == 2  # sum, then the read of its value


def test_elementwise_op_is_one_op_and_no_sync():
    x = torch.randn(6)
    with DispatchCounter() as c:
        x + 1
    assert (c.ops, c.syncs) == (1, 0)
    assert c.by_name == {"aten.add.Tensor": 1}


@pytest.mark.parametrize(
    "view",
    [
        lambda x: x.view(-1),
        lambda x: x.t(),
        lambda x: x.unsqueeze(0).squeeze(0),
        lambda x: x.permute(1, 0)[1:, 0],
        lambda x: x.expand(2, 3, 4),
        lambda x: x.detach(),
        lambda x: x.unbind(0),
        lambda x: torch.ops.aten._unsafe_view(x, (12,)),
    ],
    ids=["view", "t", "unsqueeze-squeeze", "permute-slice-select", "expand", "detach", "unbind", "unsafe"],
)
def test_views_are_not_ops(view):
    x = torch.randn(3, 4)
    with DispatchCounter() as c:
        view(x)
    assert (c.ops, c.syncs) == (0, 0), c.by_name


def test_metadata_rule_reads_the_schema():
    aten = torch.ops.aten
    assert is_metadata_only(aten.view.default) and is_metadata_only(aten.as_strided.default)
    # a copy, an in-place write and an in-place metadata change all count
    for op in (aten.clone.default, aten.add_.Tensor, aten.t_.default, aten._to_copy.default):
        assert not is_metadata_only(op), op


def test_boolean_mask_indexing_is_a_sync():
    x = torch.randn(8)
    with DispatchCounter() as c:
        x[x > 0]
    assert c.syncs == 1 and c.sync_ops == {"aten.index.Tensor": 1}


def test_integer_indexing_is_no_sync():
    x = torch.randn(8)
    with DispatchCounter() as c:
        x[torch.tensor([0, 3])]
    assert c.syncs == 0


@pytest.mark.parametrize(
    "call",
    [torch.nonzero, torch.unique, lambda x: torch.masked_select(x, x > 0), lambda x: torch.equal(x, x)],
    ids=["nonzero", "unique", "masked_select", "equal"],
)
def test_data_dependent_ops_are_syncs(call):
    x = torch.randn(8)
    with DispatchCounter() as c:
        call(x)
    assert c.syncs == 1, c.sync_ops


def test_bool_of_a_tensor_is_a_sync():
    x = torch.randn(8)
    with DispatchCounter() as c:
        if x.sum() > 100:
            pass
    assert c.syncs == 1


def test_repeat_interleave_syncs_only_without_output_size():
    x, repeats = torch.randn(4), torch.tensor([1, 0, 2, 1])
    with DispatchCounter() as without:
        torch.repeat_interleave(x, repeats)
    with DispatchCounter() as given:
        torch.repeat_interleave(x, repeats, output_size=4)
    with DispatchCounter() as scalar:
        torch.repeat_interleave(x, 2)
    assert without.syncs == 1 and without.sync_ops == {"aten.repeat_interleave.Tensor": 1}
    assert given.syncs == 0 and scalar.syncs == 0
    assert given.ops == without.ops  # the same ops, one of them without the wait


def test_backward_ops_are_counted():
    x = torch.randn(5, requires_grad=True)
    with DispatchCounter() as fwd:
        (x * x).sum()
    with DispatchCounter() as both:
        (x * x).sum().backward()
    assert both.ops > fwd.ops == 2
    assert both.syncs == 0


def test_nested_counters_both_count_and_unwind():
    x = torch.randn(4)
    with DispatchCounter() as outer:
        x + 1
        with DispatchCounter() as inner:
            x * 2
        x - 1
    assert (outer.ops, inner.ops) == (3, 1)
    assert _get_current_dispatch_mode() is None


def test_an_exception_leaves_no_mode_behind():
    x = torch.randn(4)
    with pytest.raises(RuntimeError, match="boom"), DispatchCounter() as c:
        x + 1
        raise RuntimeError("boom")
    assert _get_current_dispatch_mode() is None
    x + 1  # outside: not counted
    assert c.ops == 1
