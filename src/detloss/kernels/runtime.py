"""How the kernels run: eagerly (default), compiled by ``torch.compile`` (opt-in), in cache-sized blocks.

``torch.compile`` (inductor's C++ backend) turns each kernel into one loop over the boxes: one pass
over memory forward and one backward. It is opt-in with :func:`set_compile` or the environment
variable ``DETLOSS_COMPILE=1``, because the first call of each kind compiles for several seconds
(cached on disk by inductor afterwards). If compilation is unavailable or fails, the eager function
is used and a warning is emitted once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

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


def _compiled_fn(name: str, fn: Callable) -> Callable | None:
    """The compiled ``fn`` when compilation is on and has not failed for ``name``, else ``None``."""
    if not _compile_enabled or name in _failed or torch.compiler.is_compiling():
        # inside a user's torch.compile region dynamo traces the eager function itself
        return None
    compiled = _compiled.get(name)
    if compiled is None:
        # inductor's heuristic refuses to vectorise the stride-4 loads of (N, 4) boxes; without it
        # the loops run in AVX2/AVX-512 lanes (measured 7x faster on the IoU forward)
        options = {"cpp.enable_tiling_heuristics": False}
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


# Eager kernels run on blocks of EAGER_BLOCK boxes (FOCAL_BLOCK logits): the forward and backward
# create tens of temporaries per element, and a block's temporaries stay in the CPU's caches instead
# of streaming through memory; the peak memory is the outputs plus one block's temporaries instead of
# tens of full-size tensors. Sizes measured on a 2-core EPYC (1 MB L2): smaller blocks pay more Python
# overhead per op, larger ones leave the cache. Read at call time (tests shrink them).
EAGER_BLOCK = 1 << 16
FOCAL_BLOCK = 1 << 18


def blocks(n: int, size: int) -> list[slice]:
    """Slices of ``size`` rows covering ``range(n)``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
