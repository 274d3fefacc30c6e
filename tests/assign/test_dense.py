"""DEIMv2's dense one-to-one union (detloss.assign.dense_one_to_one) against the loop port written from
the original's description (tests/reference/dfine.py ``union_of_matchings``: pairs counted, walked
most frequent first with a stable sort, one target per query)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.assign import dense_one_to_one
from tests.reference.dfine import union_of_matchings


@st.composite
def matchings(draw):
    """(E, B, M) one-to-one matchings: per entry and image, distinct queries for a random subset of the
    image's targets, −1 elsewhere (and on padding rows)."""
    entries, batch, width = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(0, 4))
    queries = draw(st.integers(max(width, 1), 6))
    counts = [draw(st.integers(0, width)) for _ in range(batch)]
    out = torch.full((entries, batch, width), -1, dtype=torch.long)
    for e in range(entries):
        for b in range(batch):
            picks = draw(st.permutations(range(queries)))[: counts[b]]
            for r, q in enumerate(picks):
                if draw(st.booleans()) or r == 0:  # some targets left unmatched
                    out[e, b, r] = q
    return out, queries


@settings(max_examples=150, deadline=None)
@given(matchings())
def test_union_matches_the_loop_port(case):
    matches, queries = case
    member, target = dense_one_to_one(matches, queries)
    for b in range(matches.shape[1]):
        per_entry = [
            {int(q): r for r, q in enumerate(matches[e, b].tolist()) if q >= 0}
            for e in range(matches.shape[0])
        ]
        want = union_of_matchings(per_entry)
        got = {q: int(target[b, q]) for q in range(queries) if member[b, q]}
        assert got == want


def test_hand_case_most_frequent_then_lowest_row():
    # image 0: query 2 → row 0 twice, → row 1 once: row 0; query 5 → row 1 once and row 0 once: row 0
    # (equal counts, lowest row); query 4 only → row 1
    matches = torch.tensor([[[2, 5]], [[2, 4]], [[5, 2]]])  # (E=3, B=1, M=2)
    member, target = dense_one_to_one(matches, 6)
    assert member[0].tolist() == [False, False, True, False, True, True]
    assert target[0, 2] == 0 and target[0, 4] == 1 and target[0, 5] == 0
