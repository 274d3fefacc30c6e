"""The folders are the architecture: every import inside the package points down (or stays on its
own floor), so a floor can be read, tested and changed without the floors above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "detloss"

# bottom to top; a module may import its own floor and the floors below
FLOORS = [
    {"_version", "_extras", "kernels", "labels", "profiling", "distributed"},
    {"checks"},
    {"boxes"},
    {"iou", "rotated"},
    {"losses"},
    {"nn", "codecs"},
    {"assign"},
    {"criteria"},
    {"integrations"},
    {"cli", "lab", "__init__"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def _top(module: Path) -> str:
    """The first name under ``detloss`` of a source file: ``criteria`` for criteria/yolov8.py."""
    return module.relative_to(SRC).with_suffix("").parts[0]


def _imported_tops(module: Path) -> set[str]:
    """The first names under ``detloss`` of every package-relative or absolute detloss import."""
    tops = set()
    package = module.relative_to(SRC).parent.parts  # the importing module's package under detloss
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: go up level − 1 packages from the module's own
                base = package[: len(package) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])]
                if parts:
                    tops.add(parts[0])
                else:  # `from . import nn` at the top level
                    tops.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "detloss":
                tops.add(node.module.split(".")[1] if "." in node.module else "__init__")
        elif isinstance(node, ast.Import):
            tops.update(a.name.split(".")[1] for a in node.names if a.name.startswith("detloss."))
    return tops


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_floor():
    missing = sorted({_top(m) for m in MODULES} - set(FLOOR))
    assert not missing, missing


@pytest.mark.parametrize("module", MODULES, ids=lambda m: str(m.relative_to(SRC)))
def test_imports_point_down(module):
    own = FLOOR[_top(module)]
    upward = sorted(t for t in _imported_tops(module) if t in FLOOR and FLOOR[t] > own)
    assert not upward, f"{module.relative_to(SRC)} imports from above its floor: {upward}"
