"""Peak memory of one forward + backward, measured the same way by every benchmark script.

The step runs in a fresh Python process (:func:`in_fresh_process`), so that no allocation of another
run counts, with glibc's mmap threshold at 16 KiB: blocks from 16 KiB up are mapped on allocation and
unmapped on free, so the resident set follows the live tensors instead of keeping freed heap pages that
a later allocation would reuse unseen. There, :func:`peak_extra_mb` runs the step once to warm up
(imports, compilation, the first-call allocations of these shapes), resets the peak mark of the
resident set (VmHWM, through ``/proc/self/clear_refs``, Linux >= 4.0) and reports its growth over the
resident set before the step. Without ``/proc`` it falls back to ``ru_maxrss``, a lower bound.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_extra_mb(step: Callable[[], object]) -> float:
    """MB the resident set grows to during one call of ``step``, after a warm-up call."""
    step()
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak mark back to the current resident set
        step()
        peak = _status_kib("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if before is None or peak is None:
        raise OSError("no VmRSS/VmHWM in /proc/self/status")
    return max(0, peak - before) / 1024.0


def in_fresh_process(script: str | Path, payload: object, timeout: float = 900) -> float:
    """Run ``script --memory-worker <payload as JSON>`` in a new interpreter (this one's ``sys.path``
    passed on) and return the number it prints last: the script's worker calls :func:`peak_extra_mb`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    env["MALLOC_MMAP_THRESHOLD_"] = "16384"
    cmd = [sys.executable, str(Path(script).resolve()), "--memory-worker", json.dumps(payload)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])
