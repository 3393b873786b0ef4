"""scripts/install.sh into a staging root: what lands where, what a second run and an
uninstall keep. The staged virtual environment is real: its edge-agent runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agent import config as config_module
from tests.support import REPO

INSTALL = REPO / "scripts" / "install.sh"
pytestmark = pytest.mark.timeout(600)  # builds a virtual environment with pip


def install(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installer; its output and exit status."""
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                          timeout=540)


def staged_install(root: Path) -> subprocess.CompletedProcess[str]:
    result = install("--prefix", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_a_staged_install_lays_out_the_box(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = staged_install(root)
    assert "not creating the user edge-agent" in result.stdout
    assert "not starting it" in result.stdout

    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == (REPO / "systemd/edge-agent.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) run --config (\S+)$", unit.read_text(), re.M)
    assert exec_start is not None
    entry, config_path = exec_start.groups()
    staged_entry = root / entry.lstrip("/")
    staged_config = root / config_path.lstrip("/")
    assert staged_entry.is_file(), "the unit starts what the installer put in place"

    config = config_module.load_file(staged_config)
    assert config.agent.data_dir == Path("/var/lib/edge-agent")
    assert config.peers == {} and not config.agent.allow_unknown  # secure by default
    assert (root / "var/lib/edge-agent").is_dir()
    assert (root / "opt/edge-agent/README.md").read_text().startswith("# edge-agent")

    checked = subprocess.run([str(staged_entry), "check-config", "--config", str(staged_config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"OK {staged_config}")
    assert "unknown AEs are rejected" in checked.stdout


@pytest.mark.slow
def test_reinstall_keeps_the_config_and_uninstall_keeps_data_and_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    staged_install(root)
    config = root / "etc/edge-agent/agent.toml"
    edited = config.read_text().replace('ae_title = "EDGE"', 'ae_title = "CT_EDGE"')
    config.write_text(edited)
    archived = root / "var/lib/edge-agent/archive/1.2.3/image.dcm"
    archived.parent.mkdir(parents=True)
    archived.write_bytes(b"DICM")

    again = staged_install(root)
    assert f"kept the existing {config}" in again.stdout
    assert config.read_text() == edited
    assert (root / "etc/edge-agent/agent.toml.dist").read_text() == (
        REPO / "systemd/agent.toml").read_text()

    removed = install("--prefix", str(root), "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / "opt/edge-agent").exists()
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert config.read_text() == edited
    assert archived.read_bytes() == b"DICM"


@pytest.mark.parametrize(("args", "message"), [
    (["--bogus"], "unknown option --bogus"),
    (["--prefix"], "--prefix needs a directory"),
])
def test_bad_options_are_refused_with_a_reason(args: list[str], message: str) -> None:
    result = install(*args)
    assert result.returncode == 1
    assert message in result.stderr
