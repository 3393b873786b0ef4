"""scripts/dicomgen.py as the README's first steps run it: in the virtual environment
scripts/run.sh makes, which holds the agent's own dependencies and none of the test
extras. The script runs here with every other import refused, so a new import of numpy
(or anything else only the tests install) fails this test instead of a new user."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pydicom import dcmread

from tests.support import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli is one of the agent's dependencies there
    import tomli as tomllib

DICOMGEN = REPO / "scripts" / "dicomgen.py"

# argv: allowed top-level modules (comma-separated), the script, its arguments
ONLY_THESE = """
import importlib.abc, runpy, sys
allowed = set(sys.argv[1].split(","))
class OnlyThese(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in allowed:
            return None
        raise ModuleNotFoundError(f"No module named {name!r} (not a runtime dependency)",
                                  name=name)
sys.meta_path.insert(0, OnlyThese())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _name(requirement: str) -> str:
    """The normalised distribution name at the start of a requirement string."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def runtime_distributions() -> set[str]:
    """pyproject's dependencies and, as installed, everything they need (no extras)."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        pending = [_name(r) for r in tomllib.load(handle)["project"]["dependencies"]]
    found: set[str] = set()
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # a dependency for another Python only
            continue
        pending += [_name(r) for r in requires if "extra ==" not in r.replace("'", '"')]
    return found


def top_level_modules(dist: metadata.Distribution) -> set[str]:
    """The top-level modules a distribution installs, from its list of files: Python
    3.10's packages_distributions() reads only top_level.txt, which pydicom lacks."""
    modules = set()
    for file in dist.files or []:
        top = file.parts[0]
        if top == ".." or top.endswith((".dist-info", ".egg-info", ".pth")):
            continue
        modules.add(top if len(file.parts) > 1 else inspect.getmodulename(top) or "")
    return modules - {"", "__pycache__"}


def runtime_modules() -> set[str]:
    """The top-level modules a plain ``pip install .`` makes importable."""
    allowed = runtime_distributions()
    return {module for dist in metadata.distributions() if _name(dist.metadata["Name"]) in allowed
            for module in top_level_modules(dist)}


def run_with_only(allowed: set[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a Python script with imports outside the stdlib and ``allowed`` refused."""
    return subprocess.run([sys.executable, "-c", ONLY_THESE, ",".join(sorted(allowed)), *args],
                          capture_output=True, text=True, timeout=60)


def test_dicomgen_runs_with_only_the_agents_dependencies(tmp_path: Path) -> None:
    allowed = runtime_modules()
    assert "pydicom" in allowed
    result = run_with_only(allowed, str(DICOMGEN), str(tmp_path / "study"), "--count", "3",
                           "--size", "16")
    assert result.returncode == 0, result.stderr
    assert "wrote 3 CT instances" in result.stdout
    files = sorted((tmp_path / "study").iterdir())
    assert len(files) == 3
    for path in files:
        ds = dcmread(path)
        assert (ds.Rows, ds.Columns, len(ds.PixelData)) == (16, 16, 16 * 16 * 2)
        assert max(memoryview(ds.PixelData).cast("H")) < 4096  # 12 bits stored


def test_the_guard_refuses_what_only_the_tests_install(tmp_path: Path) -> None:
    script = tmp_path / "uses_pytest.py"
    script.write_text("import pytest\n")
    result = run_with_only(runtime_modules(), str(script))
    assert result.returncode != 0
    assert "No module named 'pytest' (not a runtime dependency)" in result.stderr
