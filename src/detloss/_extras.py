"""Optional dependencies: each optional feature imports its packages through :func:`require`.

torch is detloss's only required dependency. A feature that needs more (the lab, the benchmark's plot,
the docs) names the extra that brings it, so a missing package says how to install it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that brings it."""


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``pip install "detloss[extra]"``.

    Args:
        module: the module to import, e.g. ``"pycocotools.cocoeval"``.
        extra: the detloss extra that installs it, e.g. ``"lab"``.
        package: the distribution to name in the message (default: the top-level module).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        name = package or module.partition(".")[0]
        raise MissingExtraError(
            f"{name!r} is not installed; it comes with detloss's {extra!r} extra: "
            f'pip install "detloss[{extra}]"',
            name=name,
        ) from e
