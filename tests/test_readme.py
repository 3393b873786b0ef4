"""The README, followed as written: its command blocks run in order, from a fresh copy of
the repository, against real agents, DCMTK's tools and openssl; and scripts/run.sh, the
quick start's first command, installs only when pyproject.toml changed.

What the README test runs and how (``Block`` below):

- every ```sh block, one command at a time, in one bash session (so ``cd``, ``export``
  and ``alias`` carry over, as in the reader's terminal); every command must exit 0;
- every ```console block's ``$ `` lines, each compared with the output the README shows
  under it (``shown_in``): every shown line must appear, in order, once the parts that
  differ from run to run (``VOLATILE``) are masked; a command shown failing with DCMTK's
  ``F:`` lines must fail, every other must exit 0;
- an HTML comment just above a block steers it (``<!-- readme-test: ... -->``):
  ``skip REASON`` (not run; the reason says what covers it instead), ``serve PORT...``
  (a server the reader starts in a terminal of its own: started in the background,
  awaited until it listens on every PORT, stopped with SIGTERM when another server takes
  its port or at the end, as the reader's Ctrl-C would), ``file PATH`` (the block is a
  file the reader saves as PATH), ``append PATH`` (the reader adds it to that file) and
  ``expect TEXT`` (the block's output holds TEXT).

What the test changes, and nothing else (``Readme.substitute``): the ports in
``PORTS`` become free ephemeral ones, ``/tmp/`` becomes the test's temporary
directory, the clone the README's output shows (``CLONE``) becomes the test's copy,
and the built-in default (which the quick start uses, and whose port is fixed) comes
from ``$EDGE_AGENT_CONFIG``: the same settings on the test's port. The "fresh clone" is
a copy of scripts/ and pyproject.toml whose ``.venv`` runs this interpreter, with the
stamp scripts/run.sh leaves after an install (the install itself, pip from the network,
is what ``test_run_sh_*`` check with a stand-in pip).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import REPO, agent_env, dcmtk, free_port, wait_until

README = REPO / "README.md"
RUN_SH = REPO / "scripts" / "run.sh"
STAMP = ".venv/edge-agent-pyproject.sha256"  # where scripts/run.sh records pyproject's hash
CLONE = "/home/pi/edge-agent"  # where the README's output shows the clone
PORTS = {"agent": 11112, "workstation": 11113, "Orthanc": 4243, "agent TLS": 2762,
         "TLS PACS": 2763, "metrics": 9110}
COMMAND_TIMEOUT = 60.0

# Output that differs from run to run, masked on both sides before comparing.
VOLATILE = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?"), "<time>"),
    (re.compile(r"\d{4}-\d\d-\d\d"), "<date>"),
    (re.compile(r"\b\d+(\.\d+)? ?(B|KB|MB|GB|TB)\b"), "<size>"),
    (re.compile(r"\b\d+(\.\d+)? ?(ms|s)\b"), "<duration>"),
    (re.compile(r"\(\d+ days"), "(<n> days"),
    (re.compile(r"\bpid \d+"), "pid <n>"),
    (re.compile(r"^retrieving: \d+/"), "retrieving: <n>/"),  # how far it had got
    (re.compile(r"\b1\.2\.826\.0\.1\.3680043\.8\.498\.\d{20,}"), "<new UID>"),  # dicomgen's
    (re.compile(r"(?<=\S) {2,}"), " "),  # table columns as wide as those UIDs
)
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!-- readme-test: (\w+) ?(.*?) -->$")


@dataclass
class Block:
    """One fenced block of the README and the directives just above it."""

    language: str
    lines: list[str]
    line: int  # where it starts in the README, for messages
    directives: list[tuple[str, str]] = field(default_factory=list)

    def directive(self, name: str) -> list[str]:
        """The arguments of every directive called ``name``."""
        return [argument for key, argument in self.directives if key == name]

    @property
    def runs(self) -> bool:
        """True if the test runs it: shell and console blocks, and files to save."""
        if self.directive("skip"):
            return False
        return self.language in ("sh", "console") or bool(self.directive("file")
                                                          + self.directive("append"))


def blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, with its readme-test directives."""
    found: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        directives = []
        above = index - 1
        while above >= 0 and (marker := MARKER.match(lines[above])):
            directives.insert(0, (marker.group(1), marker.group(2)))
            above -= 1
        end = index + 1
        while not lines[end].startswith("```"):
            end += 1
        found.append(Block(opening.group(1), lines[index + 1:end], index + 1, directives))
        index = end + 1
    return found


def sh_commands(lines: list[str]) -> list[str]:
    """A shell block split into whole commands (continuations and loops kept whole):
    lines are gathered until bash finds them complete."""
    commands: list[str] = []
    pending: list[str] = []
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending.append(line)
        text = "\n".join(pending)
        if text.endswith("\\"):
            continue
        check = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        if check.returncode == 0:
            commands.append(text)
            pending = []
    assert not pending, f"an unfinished shell command: {pending}"
    return commands


def console_commands(lines: list[str]) -> list[tuple[str, list[str]]]:
    """A console block's ``$ `` commands, each with the output lines shown under it."""
    found: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            found.append((line[2:], []))
        elif line.strip():
            assert found, f"output before any command: {line}"
            found[-1][1].append(line)
    return found


def masked(text: str) -> str:
    """``text`` with what varies between runs replaced by placeholders."""
    for pattern, placeholder in VOLATILE:
        text = pattern.sub(placeholder, text)
    return text.rstrip()


def shown_in(shown: list[str], output: str) -> bool:
    """True if every shown line appears in ``output``, in order (masked alike)."""
    actual = iter(masked(line) for line in output.splitlines())
    return all(any(masked(line) == got for got in actual) for line in shown)


class Shell:
    """The reader's terminal: one bash session that commands are typed into."""

    def __init__(self, cwd: Path, env: dict[str, str], logs: Path) -> None:
        self.logs = logs
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.buffer = b""
        self.servers: dict[int, tuple[int, Path]] = {}  # port -> (pid, log)
        self.run("shopt -s expand_aliases")  # the reader's shell is interactive

    def _type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def _until(self, marker: str, timeout: float) -> tuple[str, str]:
        """Read the session's output up to a line starting with ``marker``: the output
        before it and the rest of that line."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while (at := self.buffer.find(marker.encode())) < 0:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise AssertionError(f"no answer in {timeout} s; so far:\n"
                                         f"{self.buffer.decode(errors='replace')}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError("the shell exited:\n" + self.buffer.decode())
                self.buffer += chunk
        end = self.buffer.index(b"\n", at)
        output, line = self.buffer[:at], self.buffer[at + len(marker):end]
        self.buffer = self.buffer[end + 1:]
        return output.decode(errors="replace"), line.decode().strip()

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """Type ``command``; its exit status and output (stdout and stderr)."""
        marker = f"@@{uuid.uuid4().hex}@@"
        self._type(f"{{ {command}\n}} </dev/null 2>&1\necho \"{marker}$?\"\n")
        output, status = self._until(marker, timeout)
        return int(status), output

    def cwd(self) -> Path:
        """The session's working directory."""
        return Path(self.run("pwd")[1].strip())

    def serve(self, command: str, ports: list[int]) -> None:
        """Start a server as in a terminal of its own, once its ports are free; wait
        until it listens on every port."""
        for port in ports:
            self.stop(port)
        log = self.logs / f"serve-{len(list(self.logs.iterdir()))}.log"
        command = re.sub(r"\s+#[^'\"]*$", "", command)  # its comment would swallow the `&`
        marker = f"@@{uuid.uuid4().hex}@@"
        self._type(f"{command} </dev/null >{log} 2>&1 &\necho \"{marker}$!\"\n")
        pid = int(self._until(marker, COMMAND_TIMEOUT)[1])
        for port in ports:
            self.servers[port] = (pid, log)

        def listening() -> bool:
            if not alive(pid):
                raise AssertionError(f"{command!r} exited:\n{log.read_text()}")
            return all(accepts(port) for port in ports)

        wait_until(listening, 60, f"{command!r} to listen on {ports}")

    def stop(self, port: int) -> None:
        """Stop the server on ``port`` as Ctrl-C would (SIGTERM: a background job of a
        non-interactive shell ignores SIGINT), and wait for it to exit."""
        if port not in self.servers:
            return
        pid = self.servers[port][0]
        for other in [p for p, (q, _) in self.servers.items() if q == pid]:
            del self.servers[other]
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            self.run(f"wait {pid}", timeout=30)

    def close(self) -> None:
        """Stop every server, then the session and anything it left running."""
        try:
            for port in list(self.servers):
                self.stop(port)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def accepts(port: int) -> bool:
    """True if something accepts TCP connections on loopback ``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Readme:
    """The README's blocks, run in order in a session, with the test's substitutions."""

    def __init__(self, tmp: Path, clone: Path, shell: Shell, ports: dict[int, int]) -> None:
        self.tmp = tmp
        self.clone = clone
        self.shell = shell
        self.ports = ports

    def substitute(self, text: str) -> str:
        """The README's ports become the test's, its /tmp/ the test's directory, and its
        clone the test's copy."""
        for port, ours in self.ports.items():
            text = re.sub(rf"(?<![\w.]){port}(?!\w)", str(ours), text)
        text = re.sub(r"(?<![\w/.])/tmp/", f"{self.tmp}/", text)
        return text.replace(CLONE, str(self.clone))

    def run(self, block: Block) -> None:
        """Run one block as the reader would."""
        where = f"README.md line {block.line}"
        if files := block.directive("file") + block.directive("append"):
            path = Path(self.substitute(files[0]))
            path = path if path.is_absolute() else self.shell.cwd() / path
            with path.open("a" if block.directive("append") else "w") as file:
                file.write("\n" * bool(block.directive("append")))
                file.write(self.substitute("\n".join(block.lines)) + "\n")
        elif ports := block.directive("serve"):
            (command,) = sh_commands(block.lines)
            self.shell.serve(self.substitute(command),
                             [int(self.substitute(p)) for p in ports[0].split()])
        elif block.language == "sh":
            output = ""
            for command in sh_commands(block.lines):
                status, said = self.shell.run(self.substitute(command))
                assert status == 0, f"{where}: {command!r} exited {status}:\n{said}"
                output += said
            for text in map(self.substitute, block.directive("expect")):
                assert text in output, f"{where}: no {text!r} in:\n{output}"
        else:
            for command, shown in console_commands(block.lines):
                self.run_console(command, [self.substitute(s) for s in shown], where)

    def run_console(self, command: str, shown: list[str], where: str) -> None:
        """One ``$`` command: its output must show what the README shows. ``status``
        reports work still under way (forwarding), so it is asked again until it
        does, as a reader would, for at most 30 s."""
        def matches() -> tuple[int, str] | None:
            status, output = self.shell.run(self.substitute(command))
            return (status, output) if shown_in(shown, output) else None

        if " status" in command:
            try:
                status, output = wait_until(matches, 30, f"{command!r} to show the README's")
            except TimeoutError:
                status, output = self.shell.run(self.substitute(command))
        else:
            status, output = self.shell.run(self.substitute(command))
        assert shown_in(shown, output), (
            f"{where}: {command!r} printed\n{output}\nnot what the README shows:\n"
            + "\n".join(shown))
        should_fail = any(line.startswith("F: ") for line in shown)
        assert (status != 0) == should_fail, f"{where}: {command!r} exited {status}:\n{output}"


def fresh_clone(tmp: Path) -> Path:
    """A copy of what the README's commands use, as a clone after scripts/run.sh installed
    it: ``.venv/bin/python`` and ``.venv/bin/edge-agent`` run this interpreter on this
    checkout, and the stamp says pyproject.toml is installed. The python refuses pip, so a
    run.sh that reinstalls fails here instead of installing into this environment."""
    clone = tmp / "clone"
    shutil.copytree(REPO / "scripts", clone / "scripts",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", clone / "pyproject.toml")
    bin_dir = clone / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {
        "python": f'case "$1 $2" in "-m pip") echo "run.sh reinstalled" >&2; exit 97;; esac\n'
                  f'exec {sys.executable} "$@"\n',
        "edge-agent": f'exec {sys.executable} -m agent "$@"\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    digest = hashlib.sha256((clone / "pyproject.toml").read_bytes()).hexdigest()
    (clone / STAMP).write_text(digest + "\n")
    return clone


def session_env(clone: Path, agent_port: int) -> dict[str, str]:
    """The reader's environment: DCMTK first on PATH (never pynetdicom's namesakes), this
    checkout importable, and the built-in default on the test's port."""
    env = agent_env()
    ours = {str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin")}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                  if d not in ours)
    default = clone / "builtin-default.toml"
    default.write_text(f'[agent]\nport = {agent_port}\ndata_dir = "edge-data"\n'
                       'allow_unknown = ["echo", "store"]\n')
    env["EDGE_AGENT_CONFIG"] = str(default)
    return env


def readme_blocks() -> list[Block]:
    """The blocks the README test runs."""
    return [block for block in blocks(README.read_text()) if block.runs]


def test_the_readme_runs_the_quick_start_query_retrieve_and_tls_example() -> None:
    """A guard on the extraction: the sections the issue names are run, not skipped."""
    text = "\n".join("\n".join(block.lines) for block in readme_blocks())
    for command in ("scripts/run.sh", "dicomgen.py", "storescu -aec EDGE", "findscu",
                    "movescu", "getscu", "Orthanc", "edge-agent find PACS",
                    "edge-agent retrieve PACS", "openssl req", "storescp +tls",
                    "edge-agent check-config", "echoscu +tls", "edge-agent status",
                    "edge-agent metrics", "Authorization: Bearer"):
        assert command in text, command
    skipped = [block for block in blocks(README.read_text()) if block.directive("skip")]
    assert all(block.directive("skip")[0] for block in skipped), "a skip without a reason"


@pytest.mark.slow
def test_the_readme_as_written(tmp_path: Path) -> None:
    for tool in ("echoscu", "storescu", "storescp", "findscu", "movescu", "getscu"):
        dcmtk(tool)
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    clone = fresh_clone(tmp_path)
    ports = {port: free_port() for port in PORTS.values()}
    logs = tmp_path / "logs"
    logs.mkdir()
    shell = Shell(clone, session_env(clone, ports[PORTS["agent"]]), logs)
    try:
        readme = Readme(tmp_path, clone, shell, ports)
        for block in readme_blocks():
            readme.run(block)
    finally:
        shell.close()
    # the quick start's archive is in the clone, where the README says
    assert (clone / "edge-data" / "index.sqlite").is_file()
    # scripts/run.sh did not reinstall (the stand-in python would have refused it)
    assert "run.sh reinstalled" not in "".join(p.read_text() for p in logs.iterdir())


# scripts/run.sh: installs when pyproject.toml changed, passes its arguments on

def run_sh_checkout(tmp: Path) -> Path:
    """A checkout holding scripts/run.sh and pyproject.toml, whose ``.venv`` python logs
    each pip call (and, like pip install -e, makes ``edge-agent``), and whose
    ``edge-agent`` logs its arguments instead of serving."""
    checkout = tmp / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(RUN_SH, checkout / "scripts" / "run.sh")
    shutil.copy(REPO / "pyproject.toml", checkout / "pyproject.toml")
    bin_dir = checkout / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    agent = '#!/bin/sh\necho "edge-agent $*" >> "$(dirname "$0")/../calls"\n'
    python = ('#!/bin/sh\necho "python $*" >> "$(dirname "$0")/../calls"\n'
              f'cat > "$(dirname "$0")/edge-agent" <<\'EOF\'\n{agent}EOF\n'
              'chmod +x "$(dirname "$0")/edge-agent"\n')
    (bin_dir / "python").write_text(python)
    (bin_dir / "python").chmod(0o755)
    return checkout


def run_sh(checkout: Path, *args: str) -> list[str]:
    """Run the checkout's scripts/run.sh from elsewhere; the calls it made."""
    calls = checkout / ".venv" / "calls"
    calls.unlink(missing_ok=True)
    result = subprocess.run(["bash", str(checkout / "scripts" / "run.sh"), *args],
                            cwd=checkout.parent, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return calls.read_text().splitlines()


def test_run_sh_installs_only_when_pyproject_changed(tmp_path: Path) -> None:
    checkout = run_sh_checkout(tmp_path)
    install = "python -m pip install -q -e ."
    assert run_sh(checkout) == [install, "edge-agent run"]
    assert run_sh(checkout) == ["edge-agent run"]  # the second start installs nothing
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# a new dependency\n")
    assert run_sh(checkout) == [install, "edge-agent run"]
    assert run_sh(checkout) == ["edge-agent run"]
    (checkout / ".venv" / "bin" / "edge-agent").unlink()  # an install that went wrong
    assert run_sh(checkout) == [install, "edge-agent run"]


def test_run_sh_passes_its_arguments_to_edge_agent_run(tmp_path: Path) -> None:
    checkout = run_sh_checkout(tmp_path)
    assert run_sh(checkout, "--config", "edge.toml")[-1] == "edge-agent run --config edge.toml"
