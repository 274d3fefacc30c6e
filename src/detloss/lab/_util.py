"""Helpers shared by the lab commands: optional imports and figure saving."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import _extras as extras


def require(module: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency of the lab, or raise an ImportError naming ``detloss[lab]``."""
    return extras.require(module, "lab", package)


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (the lab only writes PNGs)."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def progress(**kwargs: Any) -> Any:
    """A tqdm progress bar (stderr, so tables on stdout stay clean)."""
    return require("tqdm").tqdm(**kwargs)


def save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    print(f"wrote {path}")
    return path
