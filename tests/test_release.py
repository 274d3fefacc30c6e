"""The package as released: one version everywhere, honest dependencies, and the files a release needs.

The built wheel itself is checked by CI (``.ci/check_dist.py`` and ``.ci/smoke.py`` in a clean venv);
these tests check the sources it is built from.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import detloss
from detloss import _extras, _version
from detloss.cli import main
from detloss.lab import _util, evaluate

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
# PEP 440's public version scheme, the forms a release uses (N.N.N, pre, post, dev)
PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# one version
# ------------------------------------------------------------------------------------------------


def test_version_is_written_once():
    assert detloss.__version__ == _version.__version__
    assert PEP440.match(detloss.__version__), detloss.__version__
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = _pyproject()["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "detloss._version.__version__"}
    # no other file of the package spells the version out
    literal = re.compile(rf"""["']{re.escape(detloss.__version__)}["']""")
    for path in (ROOT / "src" / "detloss").rglob("*.py"):
        if path.name != "_version.py":
            assert not literal.search(path.read_text(encoding="utf-8")), path


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"detloss {detloss.__version__}"


def test_cli_version_of_the_console_script():
    out = subprocess.run(
        [sys.executable, "-m", "detloss.cli", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"detloss {detloss.__version__}"


def test_installed_metadata_agrees():
    """The installed distribution's version, when it was installed from these sources."""
    try:
        dist = importlib.metadata.distribution("detloss")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("detloss is not installed (run from the source tree only)")
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable"):
        source = Path(unquote(urlparse(direct_url["url"]).path)).resolve()
        if source != ROOT:
            pytest.skip(f"the installed detloss is an editable install of another checkout ({source})")
    elif not Path(detloss.__file__).resolve().is_relative_to(Path(dist.locate_file("")).resolve()):
        pytest.skip("the imported detloss is not the installed one")
    assert dist.version == detloss.__version__


def test_changelog_starts_at_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[([^\]]+)\]", text, flags=re.MULTILINE)
    assert releases[0] == "Unreleased"
    assert releases[1] == detloss.__version__, "the newest release in CHANGELOG.md is not __version__"
    for entry in re.findall(r"^## \[(\d[^\]]*)\] - (.*)$", text, flags=re.MULTILINE):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry[1]), entry


# ------------------------------------------------------------------------------------------------
# dependencies stated honestly
# ------------------------------------------------------------------------------------------------


def test_torch_and_numpy_are_the_only_requirements():
    """numpy beside torch: without it torch warns "Failed to initialize NumPy" on every import."""
    project = _pyproject()["project"]
    assert [re.split(r"[<>=!~ ;\[]", d)[0] for d in project["dependencies"]] == ["torch", "numpy"]
    extras = project["optional-dependencies"]
    for extra in ("lab", "bench", "docs", "test", "release"):
        assert extra in extras, extra


def test_importing_detloss_pulls_in_no_optional_dependency():
    """Every module imports without its extra: optional packages are imported where they are used."""
    code = (
        "import json, sys, torch; before = set(sys.modules)\n"
        "import detloss, detloss.nn, detloss.criteria, detloss.assign, detloss.codecs, detloss.cli\n"
        "import detloss.profiling, detloss.lab.demo, detloss.lab.simulate, detloss.lab.landscape\n"
        "print(json.dumps(sorted({m.partition('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    new = set(json.loads(out))
    optional = {"matplotlib", "tqdm", "pycocotools", "scipy", "numpy", "torchvision", "mkdocs"}
    assert not new & optional, new & optional


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail as it does where the package is not installed."""
    for name in list(sys.modules):
        if name.partition(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: ImportError on import


def _assert_names_extra(err: pytest.ExceptionInfo, package: str, extra: str) -> None:
    assert isinstance(err.value, ImportError)
    message = str(err.value)
    assert package in message and f'pip install "detloss[{extra}]"' in message, message


def test_require_names_the_extra(monkeypatch):
    _hide(monkeypatch, "matplotlib")
    with pytest.raises(_extras.MissingExtraError) as err:
        _extras.require("matplotlib.pyplot", "lab")
    _assert_names_extra(err, "matplotlib", "lab")
    assert err.value.name == "matplotlib"
    assert isinstance(err.value.__cause__, ImportError)  # the original error stays attached


def test_require_returns_the_module():
    assert _extras.require("json", "lab") is json


@pytest.mark.parametrize(
    ("package", "call"),
    [
        ("matplotlib", lambda tmp: _util.pyplot()),
        ("tqdm", lambda tmp: _util.progress(total=1)),
        ("pycocotools", lambda tmp: evaluate.coco_map([], [], num_classes=1)),
    ],
)
def test_lab_without_its_extra(monkeypatch, tmp_path, package, call):
    _hide(monkeypatch, package)
    with pytest.raises(ImportError) as err:
        call(tmp_path)
    _assert_names_extra(err, package, "lab")


def test_lab_command_without_its_extra_says_what_to_install(monkeypatch, tmp_path, capsys):
    _hide(monkeypatch, "matplotlib")
    argv = ["plot", "--losses", "iou", "--grid", "5", "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("detloss plot: ") and 'pip install "detloss[lab]"' in err, err


# ------------------------------------------------------------------------------------------------
# what the release ships
# ------------------------------------------------------------------------------------------------


def test_typed_package():
    assert (ROOT / "src" / "detloss" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["detloss"]


def test_docs_reference_every_public_module():
    """Each public module has a reference page rendering the module (hence its ``__all__``)."""
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "api").glob("*.md"))
    for module in ("detloss", "detloss.nn", "detloss.criteria", "detloss.assign", "detloss.codecs",
                   "detloss.profiling"):
        assert re.search(rf"^::: {re.escape(module)}$", pages, flags=re.MULTILINE), module


def test_the_project_speaks_of_itself():
    """Sources, tests, benchmarks and docs point at the project's own files, never at documents outside
    the repository, and say why rather than which issue asked for something."""
    outside = re.compile(
        r"shared/|ORIGINALS\.md|API\.md|CONVENTIONS\.md|\bseed 0\d\d\b|/work/|\b[Ii]ssue \d+\b"
    )
    files = [
        ROOT / "README.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "src").rglob("*.py"),
        *(p for p in (ROOT / "tests").rglob("*.py") if p != Path(__file__).resolve()),
        *(ROOT / "benchmarks").rglob("*.py"),
        *(ROOT / "benchmarks").rglob("*.md"),
        *(ROOT / "benchmarks").rglob("*.sh"),
    ]
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, hits
