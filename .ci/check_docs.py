"""Check that the built API reference documents every public name.

Public: each name in a module's ``__all__``; for a module without one, each class and function it
defines whose name does not start with ``_``. The site's ``objects.inv`` (written by mkdocstrings) must
hold each as ``module.name``, so a criterion or loss added to ``__all__`` without appearing on the
site (or a page that stopped rendering its module) fails CI.

Usage: ``python .ci/check_docs.py SITE_DIR`` (after ``mkdocs build``).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import zlib
from pathlib import Path

MODULES = ("detloss", "detloss.nn", "detloss.criteria", "detloss.assign", "detloss.codecs",
           "detloss.distributed", "detloss.profiling", "detloss.integrations.ultralytics",
           "detloss.integrations.transformers")


def inventory(site: Path) -> set[str]:
    """The object names of a Sphinx-format ``objects.inv``: four header lines, then zlib'd lines."""
    raw = (site / "objects.inv").read_bytes()
    body = raw.split(b"\n", 4)[4]
    return {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines() if line}


def public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return [n for n in module.__all__ if not inspect.ismodule(getattr(module, n))]
    return [
        n for n, obj in vars(module).items()
        if not n.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module_name
    ]


def main(site: str) -> None:
    documented = inventory(Path(site))
    missing = [f"{m}.{n}" for m in MODULES for n in public_names(m) if f"{m}.{n}" not in documented]
    assert not missing, f"public names missing from the API reference: {missing}"
    total = sum(len(public_names(m)) for m in MODULES)
    print(f"API reference: all {total} public names of {len(MODULES)} modules documented")


if __name__ == "__main__":
    main(sys.argv[1])
