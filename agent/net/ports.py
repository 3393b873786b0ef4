"""Can the agent listen on its ports, and if not, who holds them?

Checked before the agent creates or recovers anything: a port already in use then stops
start-up with one line that names the port and its holder (another edge-agent, found by
its data directory's lock and status file; another process, by its command line),
and nothing is written. Linux's /proc tells the holder; where it cannot (another user's
process), the line says "another process".
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from agent import procfs
from agent.errors import ConfigError
from agent.status_file import read_published

LISTEN = "0A"  # the st column of /proc/net/tcp for a listening socket


def check_listenable(key: str, host: str, port: int) -> None:
    """Bind ``host:port`` as the listener will and let it go; ConfigError naming ``key``
    (and the holder of the port) if the listener could not. Port 0 is always free."""
    if port == 0:
        return
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError("agent.bind", f"cannot listen on {host}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pynetdicom's server
        try:
            probe.bind(address)
            probe.listen(1)
        except OSError as exc:
            raise ConfigError(key, _why(exc, host, port)) from None


def _why(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use by {holder(port)}"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port} (below 1024 needs privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}:{port}: {host} is not an address of this machine"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def holder(port: int, proc: Path = procfs.PROC) -> str:
    """Who listens on TCP ``port``, in words: another edge-agent, a process, or "another
    process" when /proc does not say."""
    inodes = listening_inodes(port, proc)
    pid = _owner(inodes, proc) if inodes else None
    if pid is None:
        return "another process"
    data_dir = procfs.agent_data_dir(pid, proc)
    if data_dir is not None:
        published = read_published(data_dir / "run") or {}
        since = f", {published['state']} since {published['started_at']}" if published else ""
        return f"another edge-agent (pid {pid}, data in {data_dir}{since})"
    return f"process {pid} ({procfs.command_line(pid, proc)})"


def listening_inodes(port: int, proc: Path = procfs.PROC) -> set[str]:
    """The inodes of the sockets listening on TCP ``port`` (IPv4 and IPv6)."""
    found: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN and _port_of(fields[1]) == port:
                found.add(fields[9])
    return found


def _port_of(local_address: str) -> int:
    """The port of a /proc/net/tcp local address (``0100007F:2B67``)."""
    return int(local_address.rsplit(":", 1)[-1], 16)


def _owner(inodes: set[str], proc: Path) -> int | None:
    """The first process with one of these sockets open (None: none we may look into)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in procfs.pids(proc):
        if any(target in wanted for target in procfs.fd_targets(pid, proc)):
            return pid
    return None
