"""How the kernels run, and the measured constants that choose among their execution paths.

Eagerly (the default) or compiled by ``torch.compile`` (opt-in: :func:`set_compile` or the
environment variable ``DETLOSS_COMPILE=1``, because the first call of each kind compiles for seconds,
cached on disk by inductor afterwards). Compiled, inductor's C++ backend turns each kernel into one
loop over the boxes: one pass over memory forward and one backward. If compilation is unavailable or
fails, the eager function is used and a warning is emitted once.

Every size threshold of the kernels' paths lives here with the measurement behind it (2-core AMD EPYC
Zen 4, 1 MB L2 per core, float32, fwd+bwd medians). They are read at call time, so tests can shrink
them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

# ------------------------------------------------------------------------------------ eager sizes

# Eager IoU kernels run on blocks of EAGER_BLOCK boxes, the focal loss on blocks of FOCAL_BLOCK
# logits: the forward and backward create tens of temporaries per element, and a block's temporaries
# stay in the CPU's caches instead of streaming through memory; the peak memory is the outputs plus
# one block's temporaries instead of tens of full-size tensors. Smaller blocks pay more Python
# overhead per op, larger ones leave the cache.
EAGER_BLOCK = 1 << 16
FOCAL_BLOCK = 1 << 18

# Which eager path the plain IoU kinds take (detloss.kernels.iou_function.fused_iou): up to
# KEPT_PARTS_MAX_BOXES the Function keeping the forward's parts (no autograd graph of ~40 nodes: 1.3x
# faster than autograd at 1e3 boxes); up to PLAIN_AUTOGRAD_MAX_BOXES autograd of the formula itself
# (its backward reuses the forward's temporaries and relu's backward is one op: giou at 1e6 boxes,
# 1 thread, 215 ms against the recomputing Function's 364 ms and the naive formula's 260 ms); above
# it the Function recomputing the parts in blocks, which keeps only the boxes (4-7x less memory)
# where the graph's temporaries pass 200 MB.
KEPT_PARTS_MAX_BOXES = 1 << 12
PLAIN_AUTOGRAD_MAX_BOXES = 1 << 21

# Up to this many elements a min/max under autograd is ``torch.clamp`` with a tensor bound
# (detloss.kernels.geometry.low/high): one op forward and two backward, where launches dominate; above
# it the relu form, whose kernels are faster (1 thread: equal at 2-8k elements, relu 4x faster at 64k).
CLAMP_MAX_NUMEL = 8192

# ---------------------------------------------------------------------------------------- compile

# Inductor options of every compiled kernel:
# - its tiling heuristic refuses to vectorise the stride-4 loads of (N, 4) boxes; without it the loops
#   run in AVX2/AVX-512 lanes (measured 7x faster on the IoU forward);
# - its default store-or-recompute thresholds (4 reads, 50 ops) store the hand-derived backward's
#   axis-plane intermediates as (2, N) buffers, each a loop of two inner lanes (giou at 1e6 boxes:
#   67 ms backward); recomputed instead, the whole backward is one vectorised loop over the boxes
#   (16 ms; the graphs are fixed and small, so recomputation cannot blow up).
COMPILE_OPTIONS: dict[str, object] = {
    "cpp.enable_tiling_heuristics": False,
    "realize_reads_threshold": 64,
    "realize_cpu_opcount_threshold": 100_000,
    "realize_cpu_acc_reads_threshold": 10_000,
}

_compile_enabled = os.environ.get("DETLOSS_COMPILE", "0").strip().lower() in ("1", "true", "yes", "on")
_compiled: dict[str, Callable] = {}  # name -> compiled function
_failed: set[str] = set()  # names whose compilation failed: eager from then on


def set_compile(enabled: bool = True) -> None:
    """Run the fused kernels through ``torch.compile`` (``True``) or eagerly (``False``, default).

    The environment variable ``DETLOSS_COMPILE=1`` sets the initial value. The first call of each
    (kernel, kind, dtype) compiles for seconds; later calls, and later processes (inductor's disk
    cache), reuse it. A failed compilation falls back to eager with one warning.
    """
    global _compile_enabled
    _compile_enabled = bool(enabled)


def compile_enabled() -> bool:
    """Whether :func:`set_compile` (or ``DETLOSS_COMPILE``) turned the compiled path on."""
    return _compile_enabled


def _compile_options() -> dict[str, object]:
    """:data:`COMPILE_OPTIONS` known to this torch's inductor (older releases lack some; an unknown
    option would fail the compilation)."""
    from torch._inductor import config

    def known(key: str) -> bool:
        obj = config
        for part in key.split("."):
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True

    return {k: v for k, v in COMPILE_OPTIONS.items() if known(k)}


def _compiled_fn(name: str, fn: Callable) -> Callable | None:
    """The compiled ``fn`` when compilation is on and has not failed for ``name``, else ``None``."""
    if not _compile_enabled or name in _failed or torch.compiler.is_compiling():
        # inside a user's torch.compile region dynamo traces the eager function itself
        return None
    compiled = _compiled.get(name)
    if compiled is None:
        options = _compile_options()
        compiled = _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True, options=options)
    return compiled


def run(name: str, fn: Callable, eager: Callable, *args):
    """``fn(*args)`` compiled when enabled and working, else ``eager(*args)`` (``fn`` in blocks)."""
    compiled = _compiled_fn(name, fn)
    if compiled is not None:
        try:
            return compiled(*args)
        except Exception as err:  # no compiler, unsupported platform, inductor bug: stay correct
            _failed.add(name)
            warnings.warn(
                f"detloss: torch.compile of {name} failed ({type(err).__name__}: {err}); using eager",
                RuntimeWarning,
                stacklevel=3,
            )
    return eager(*args)


def blocks(n: int, size: int) -> list[slice]:
    """Slices of ``size`` rows covering ``range(n)``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
