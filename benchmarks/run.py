"""Run the detloss benchmark: ``python benchmarks/run.py [detloss bench options]``.

The same as ``detloss bench``; see ``benchmarks/README.md`` for the recorded table.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from detloss.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
