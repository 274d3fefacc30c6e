"""detloss.assign.hungarian_match: known optima, padding, non-finite costs, one transfer each way."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch

import detloss.assign.hungarian as hungarian
from detloss.assign import hungarian_match

pytest.importorskip("scipy.optimize")  # the matcher's optional dependency (detloss[detr])


def brute_force(block: torch.Tensor) -> float:
    """The minimum total cost of a one-to-one matching of min(Q, M) pairs, by enumeration."""
    block = block.tolist()
    q, m = len(block), len(block[0])
    if m <= q:
        return min(sum(block[r][j] for j, r in enumerate(p)) for p in itertools.permutations(range(q), m))
    return min(sum(block[i][c] for i, c in enumerate(p)) for p in itertools.permutations(range(m), q))


def test_square_block_with_a_known_optimum():
    # rows = queries, columns = targets. The six permutations (query of t0, t1, t2) cost
    # (0,1,2) 6.5, (0,2,1) 11, (1,0,2) 5, (1,2,0) 7, (2,0,1) 9, (2,1,0) 6.5: the optimum is unique,
    # and not the greedy choice (t1's cheapest query q1 belongs to t0)
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.5, 5.0], [3.0, 2.0, 2.0]])
    assert torch.equal(hungarian_match(cost, [3]), torch.tensor([1, 0, 2]))
    assert brute_force(cost) == 5.0


def test_more_queries_than_targets_and_more_targets_than_queries():
    # 4 queries, 2 targets: t0 is cheapest at q3, t1 at q3 too, but q3 can serve one: q3→t1 (0), q2→t0 (1)
    cost = torch.tensor([[9.0, 9.0], [9.0, 8.0], [1.0, 7.0], [0.5, 0.0]])
    assert torch.equal(hungarian_match(cost, [2]), torch.tensor([2, 3]))
    # 2 queries, 3 targets: one target stays unmatched (−1)
    wide = torch.tensor([[0.0, 5.0, 1.0], [5.0, 0.0, 1.0]])
    assert torch.equal(hungarian_match(wide, [3]), torch.tensor([0, 1, -1]))


def test_padding_columns_are_never_read_and_give_minus_one():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64)  # (L, B, Q, M_max)
    counts = [2, 0, 4]
    cost_padded = cost.clone()
    cost_padded[:, 0, :, 2:] = -1e9  # would attract every query if it were read
    cost_padded[:, 1] = float("nan")  # an image without targets: nothing read, not even checked
    out = hungarian_match(cost_padded, counts)
    assert out.shape == (2, 3, 4) and out.dtype == torch.int64
    assert (out[:, 0, 2:] == -1).all() and (out[:, 1] == -1).all()
    for layer, image in itertools.product(range(2), range(3)):
        n = counts[image]
        got = out[layer, image, :n]
        assert len(set(got.tolist())) == n  # one-to-one
        block = cost[layer, image, :, :n]
        total = float(sum(block[got[j], j] for j in range(n))) if n else 0.0
        assert total == pytest.approx(brute_force(block) if n else 0.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(6, 3), (4, 4), (3, 5)])
def test_random_blocks_reach_the_brute_force_optimum(shape):
    g = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        block = torch.rand(shape, generator=g, dtype=torch.float64)
        got = hungarian_match(block, [shape[1]])
        pairs = [(int(q), j) for j, q in enumerate(got.tolist()) if q >= 0]
        assert len(pairs) == min(shape)
        assert float(sum(block[q, j] for q, j in pairs)) == pytest.approx(brute_force(block), abs=1e-12)


def test_counts_broadcast_and_tensor_counts():
    cost = torch.rand(3, 2, 4, 3, dtype=torch.float64)
    a = hungarian_match(cost, [3, 1])
    b = hungarian_match(cost, torch.tensor([3, 1]))
    c = hungarian_match(cost, torch.tensor([[3, 1]] * 3))
    assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ValueError, match="counts"):
        hungarian_match(cost, [3, 1, 2])
    with pytest.raises(ValueError, match=r"counts must lie in \[0, 3\]"):
        hungarian_match(cost, [4, 1])
    with pytest.raises(ValueError, match="floating"):
        hungarian_match(torch.ones(3, 3, dtype=torch.long), [3])


def test_a_column_mask_solves_the_real_columns_wherever_they_are():
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, False], [False, False, False, False], [False, True, True, True]])
    got = hungarian_match(cost, mask)
    assert (got[:, ~mask] == -1).all()  # padding columns: −1 wherever they are
    for layer, image in itertools.product(range(2), range(3)):
        cols = mask[image].nonzero().flatten()
        if len(cols):  # the block of the real columns, compacted, gives the same pairs
            compact = hungarian_match(cost[layer, image][:, cols], [len(cols)])
            assert torch.equal(got[layer, image, cols], compact)
    # a prefix mask is the same as the counts
    prefix = torch.arange(4) < torch.tensor([2, 0, 3])[:, None]
    assert torch.equal(hungarian_match(cost, prefix), hungarian_match(cost, [2, 0, 3]))
    with pytest.raises(ValueError, match="column mask"):
        hungarian_match(cost, mask[:, :3])
    with pytest.raises(TypeError, match="integer or bool"):
        hungarian_match(cost, torch.tensor([2.0, 0.0, 3.0]))
    # validate names the masked-in column only: a NaN in a padding column is never read
    cost[0, 0, 1, 1] = float("nan")
    assert torch.equal(hungarian_match(cost, mask)[0, 0], got[0, 0])
    cost[0, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"layer 0, image 0, query 1, target 2"):
        hungarian_match(cost, mask)


def test_tensor_counts_travel_with_the_cost(monkeypatch):
    # one call of the transfer function for the counts and the cost together, the cost last
    calls = []
    original = hungarian.to_host
    monkeypatch.setattr(hungarian, "to_host", lambda *t: calls.append([x.shape for x in t]) or original(*t))
    hungarian_match(torch.rand(2, 3, 4, 5), torch.tensor([5, 0, 2]))
    assert calls == [[(3,), (2, 3, 4, 5)]]


def test_non_finite_costs_raise_with_validate_naming_layer_image_query():
    cost = torch.rand(2, 3, 4, 2, dtype=torch.float64)
    cost[1, 2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"layer 1, image 2, query 3, target 1"):
        hungarian_match(cost, [2, 2, 2])
    single = torch.rand(4, 2)
    single[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"at query 0, target 0"):
        hungarian_match(single, [2])


def test_non_finite_costs_match_last_without_validate():
    # q0 would be the best for t0, but its cost is NaN: t0 goes to the best finite query
    cost = torch.tensor([[float("nan"), 5.0], [1.0, 0.0], [2.0, 3.0]])
    assert torch.equal(hungarian_match(cost, [2], validate=False), torch.tensor([2, 1]))
    # a target whose whole column is non-finite is still matched (to a query nobody else needs),
    # and the finite part keeps its optimum
    cost = torch.tensor([[0.0, float("inf")], [1.0, float("-inf")], [0.5, float("nan")]])
    got = hungarian_match(cost, [2], validate=False)
    assert got[0] == 0 and got[1] in (1, 2)
    # every entry non-finite: still a valid one-to-one matching
    got = hungarian_match(torch.full((3, 2), float("nan")), [2], validate=False)
    assert (got >= 0).all() and len(set(got.tolist())) == 2


def test_one_transfer_each_way(monkeypatch):
    calls = {"to_host": 0, "to_device": 0}
    for name in calls:
        original = getattr(hungarian, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(hungarian, name, counted)
    hungarian_match(torch.rand(6, 4, 10, 5), [5, 3, 0, 1])
    assert calls == {"to_host": 1, "to_device": 1}


def test_half_precision_costs():
    cost = torch.tensor([[4.0, 1.0], [2.0, 0.5], [3.0, 2.0]])
    ref = hungarian_match(cost, [2])
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(hungarian_match(cost.to(dtype), [2]), ref)


def test_without_scipy_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # makes `from scipy.optimize import ...` fail
    with pytest.raises(ImportError, match=r'pip install "detloss\[detr\]"'):
        hungarian_match(torch.rand(3, 2), [2])
    from detloss.criteria import DETRLoss

    with pytest.raises(ImportError, match=r'pip install "detloss\[detr\]"'):
        DETRLoss(3)


def test_threads_give_the_same_matching():
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(3, 5, 12, 7, generator=g, dtype=torch.float64)
    counts = [7, 0, 3, 5, 1]
    one = hungarian_match(cost, counts, num_threads=1)
    assert torch.equal(hungarian_match(cost, counts, num_threads=3), one)
    assert torch.equal(hungarian_match(cost, counts, num_threads=64), one)  # more threads than blocks
