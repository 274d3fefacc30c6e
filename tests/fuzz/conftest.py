"""The fuzz harness's per-function tally of generated inputs, printed at the end of the run.

Bounded by default (CI): ``DETLOSS_FUZZ_EXAMPLES`` examples per test (default 60). A long run:
``DETLOSS_FUZZ_EXAMPLES=20000 PYTHONPATH=src python -m pytest tests/fuzz -q`` (see docs/reliability.md).
"""

from __future__ import annotations

from collections import Counter

import pytest

# function name -> Counter of outcomes ("ok", "ValueError", "TypeError")
TALLY: dict[str, Counter] = {}


@pytest.fixture(scope="session")
def tally() -> dict[str, Counter]:
    return TALLY


def pytest_terminal_summary(terminalreporter) -> None:
    if not TALLY:
        return
    tr = terminalreporter
    tr.section("detloss fuzz: generated inputs per function")
    tr.write_line(f"{'function':<22}{'tried':>8}{'ok':>8}{'ValueError':>12}{'TypeError':>11}")
    for name in sorted(n for n in TALLY if not n.endswith(" why")):
        c = TALLY[name]
        tr.write_line(f"{name:<22}{sum(c.values()):>8}{c['ok']:>8}{c['ValueError']:>12}{c['TypeError']:>11}")
    for name in sorted(n for n in TALLY if n.endswith(" why")):
        tr.write_line(f"{name}: {TALLY[name].most_common(6)}")
