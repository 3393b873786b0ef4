"""Network interfaces for the ``net`` command: link state from /sys, addresses from ``ip``.

No new dependencies: /sys/class/net for the link, ``ip -brief addr`` for addresses
(iproute2 is on every Debian and Raspberry Pi OS), an ioctl for IPv4 when ``ip`` is not
there, and /proc/net/route for the default gateway.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYS_NET = Path("/sys/class/net")
ROUTES = Path("/proc/net/route")
_SIOCGIFADDR = 0x8915


@dataclass(frozen=True)
class Interface:
    """One network interface as the field engineer needs to see it."""

    name: str
    state: str
    carrier: bool | None
    mac: str
    addresses: tuple[str, ...]

    def describe(self) -> str:
        """One line: name, state, link, MAC, addresses."""
        link = {True: "link yes", False: "link no", None: "link ?"}[self.carrier]
        where = " ".join(self.addresses) or "no address"
        return f"{self.name:<10} {self.state:<8} {link:<8} {self.mac or '-':<17}  {where}"


def interfaces() -> list[Interface]:
    """Every interface the kernel lists, loopback included."""
    addresses = _ip_addresses()
    found = []
    for path in sorted(SYS_NET.iterdir()) if SYS_NET.is_dir() else []:
        name = path.name
        found.append(
            Interface(
                name=name,
                state=_read(path / "operstate") or "unknown",
                carrier=_carrier(path),
                mac=_read(path / "address"),
                addresses=addresses.get(name) or _ipv4_by_ioctl(name),
            )
        )
    return found


def default_gateway() -> str | None:
    """The IPv4 default gateway and its interface, from /proc/net/route."""
    with contextlib.suppress(OSError):
        for line in ROUTES.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000":
                gateway = socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
                return f"{gateway} via {fields[0]}"
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _carrier(path: Path) -> bool | None:
    value = _read(path / "carrier")
    return None if value == "" else value == "1"


def _ip_addresses() -> dict[str, tuple[str, ...]]:
    """Addresses by interface from ``ip -brief addr``; empty if ``ip`` is missing."""
    ip = shutil.which("ip") or ("/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else None)
    if ip is None:
        return {}
    try:
        output = subprocess.run(
            [ip, "-brief", "addr"], capture_output=True, text=True, timeout=3, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in output.splitlines():
        fields = line.split()
        if fields:
            found[fields[0].split("@")[0]] = tuple(fields[2:])
    return found


def _ipv4_by_ioctl(name: str) -> tuple[str, ...]:
    """The interface's IPv4 address, asked of the kernel directly."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            request = struct.pack("256s", name[:15].encode())
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
        except OSError:
            return ()
    return (socket.inet_ntoa(packed[20:24]),)
