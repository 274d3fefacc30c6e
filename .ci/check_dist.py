"""Check what `python -m build` made: the wheel holds the detloss package and nothing else, exactly the
source files of it and ``py.typed`` (no benchmark or test tooling, no stale build leftovers); the
metadata's version and requirements are the project's; the sdist carries no recorded benchmark results
or built artefacts.

Usage: ``python .ci/check_dist.py DIST_DIR`` (run from the repository root).
"""

from __future__ import annotations

import email
import re
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDIST_MAX_BYTES = 2_000_000


def version() -> str:
    text = (ROOT / "src" / "detloss" / "_version.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', text, flags=re.MULTILINE).group(1)


def check_wheel(path: Path, ver: str) -> None:
    names = set(zipfile.ZipFile(path).namelist())
    info = f"detloss-{ver}.dist-info/"
    stray = sorted(n for n in names if not (n.startswith("detloss/") or n.startswith(info)))
    assert not stray, f"the wheel holds files outside the detloss package: {stray}"
    sources = {f"detloss/{p.relative_to(ROOT / 'src' / 'detloss').as_posix()}"
               for p in (ROOT / "src" / "detloss").rglob("*.py")}
    missing = sorted(sources - names)
    assert not missing, f"source files missing from the wheel: {missing}"
    # a stale build/ directory can carry modules the sources no longer have (the benchmark once lived here)
    extra = sorted(n for n in names if n.startswith("detloss/") and n not in sources | {"detloss/py.typed"})
    assert not extra, f"files in the wheel that are not in src/detloss: {extra}"
    tooling = sorted(n for n in names if re.search(r"(^|/)(bench\w*|tests?)(/|\.py$)", n))
    assert not tooling, f"benchmark or test tooling in the wheel: {tooling}"
    assert "detloss/py.typed" in names, "the wheel lacks detloss/py.typed"
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names), "compiled files in the wheel"
    meta = email.message_from_bytes(zipfile.ZipFile(path).read(info + "METADATA"))
    assert meta["Version"] == ver, (meta["Version"], ver)
    required = [r for r in meta.get_all("Requires-Dist", []) if "extra ==" not in r]
    assert [re.split(r"[<>=!~ ;\[]", r)[0] for r in required] == ["torch", "numpy"], required
    assert f"{info}licenses/LICENSE" in names, "the wheel lacks the license file"
    print(f"{path.name}: {len(names)} files, the detloss sources only (no bench*.py, no tests), py.typed, "
          f"requires {required}")


def check_sdist(path: Path, ver: str) -> None:
    size = path.stat().st_size
    assert size < SDIST_MAX_BYTES, f"{path.name} is {size:,} bytes"
    prefix = f"detloss-{ver}/"
    names = [n.removeprefix(prefix) for n in tarfile.open(path).getnames()]
    for needed in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "mkdocs.yml",
                   "src/detloss/py.typed", "src/detloss/_version.py", "tests/test_release.py"):
        assert needed in names, f"{path.name} lacks {needed}"
    unwanted = [n for n in names if re.match(r"(benchmarks/.*\.(json|png)|\.ci/|site/|dist/|build/)", n)
                or "__pycache__" in n]
    assert not unwanted, f"{path.name} carries {unwanted}"
    print(f"{path.name}: {len(names)} entries, {size / 1e3:.0f} kB, no benchmark results or build output")


def main(dist: str) -> None:
    ver = version()
    wheels = list(Path(dist).glob(f"detloss-{ver}-py3-none-any.whl"))
    sdists = list(Path(dist).glob(f"detloss-{ver}.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist of {ver} in {dist}"
    check_wheel(wheels[0], ver)
    check_sdist(sdists[0], ver)


if __name__ == "__main__":
    main(sys.argv[1])
