"""TOML configuration: loaded once, validated at the boundary, frozen afterwards.

Every error names the dotted key at fault (``peers.CT1.port``) so an installer can
fix the file without reading code.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from agent import validation as v
from agent.errors import ConfigError, ConfigErrors
from agent.fallthrough.settings import QrSettings, parse_qr
from agent.field.settings import ConsoleSettings, LedSettings, parse_console, parse_leds
from agent.forward.link_settings import LINK_KEYS, parse_link
from agent.forward.pace_settings import PACE_KEYS, Window, parse_pace
from agent.forward.settings import ForwardSettings, parse_forward
from agent.metrics.settings import MetricsSettings, parse_metrics
from agent.outgoing.settings import Outgoing, split_outgoing, with_rule_coercions
from agent.prefetch.settings import PrefetchRule, parse_prefetch
from agent.reloading import LIVE, RESTART
from agent.tls import TlsSettings
from agent.tls_settings import parse_tls
from agent.web.settings import WebSettings, check_web_uses, is_web, parse_web

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

SYSTEM_CONFIG = Path("/etc/edge-agent/agent.toml")
CONFIG_ENV = "EDGE_AGENT_CONFIG"
DEFAULT_ALLOW_UNKNOWN = ("echo", "store")

_PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class AgentSettings:
    """The ``[agent]`` table: who we are and where we keep data."""

    ae_title: Annotated[str, RESTART] = "EDGE"
    port: Annotated[int, RESTART] = 11112
    bind: Annotated[str, RESTART] = "0.0.0.0"
    data_dir: Annotated[Path, RESTART] = Path("edge-data")
    min_free_mb: Annotated[int, LIVE] = 1024
    max_pdu: Annotated[int, RESTART] = 1048576
    network_timeout: Annotated[float, RESTART] = 60.0
    handshake_timeout: Annotated[float, RESTART] = 5.0
    max_associations: Annotated[int, RESTART] = 16
    allow_unknown: Annotated[frozenset[str], LIVE] = frozenset()
    log_level: Annotated[str, LIVE] = "info"
    # false: only the TLS listener ([tls].port) serves
    plain_listener: Annotated[bool, RESTART] = True


COMMIT_WHEN = ("stored", "forwarded", "pacs-committed")


@dataclass(frozen=True)
class Peer:
    """A remote AE we know, by a short name, and what it may ask of us."""

    name: Annotated[str, LIVE]
    ae_title: Annotated[str, LIVE]
    host: Annotated[str, LIVE]
    port: Annotated[int, LIVE]
    allow: Annotated[frozenset[str], LIVE] = frozenset({"echo"})
    verify_host: Annotated[bool, LIVE] = True
    # every association to it uses TLS; it may only come in over TLS
    tls: Annotated[bool, LIVE] = False
    verify_name: Annotated[bool, LIVE] = True  # outgoing TLS: its certificate must name ``host``
    commit: Annotated[bool, LIVE] = False  # after delivering to it, ask it for storage commitment
    # ask once this many delivered instances wait...
    commit_after_instances: Annotated[int, LIVE] = 500
    commit_after_seconds: Annotated[float, LIVE] = 30.0  # ...or this long after the last delivery
    commit_report_timeout: Annotated[float, LIVE] = 600.0  # no report within this: ask again
    # our commitment to it: "stored", "forwarded", "pacs-committed"
    commit_when: Annotated[str, LIVE] = "stored"
    # unsettled this long: reported failed (0x0110)
    commit_give_up_hours: Annotated[float, LIVE] = 24.0
    # its studies' quiet period ([study] when None; 0: off)
    quiet_seconds: Annotated[float | None, LIVE] = None
    # false: its C-FIND, C-MOVE and C-GET are answered from the archive only ([qr])
    fall_through: Annotated[bool, LIVE] = True
    # DICOMweb destinations (issue 24, step 3): "dicomweb" peers have ``web`` and no
    # DICOM address (ae_title, host and port are empty); agent/web/settings.py
    kind: Annotated[str, LIVE] = "dimse"
    web: Annotated[WebSettings | None, LIVE] = None
    # outgoing changes (issue 25): coercion, de-identification; agent/outgoing/settings.py
    outgoing: Annotated[Outgoing | None, LIVE] = None
    # bandwidth (issue 24, step 4; agent/forward/pace_settings.py): a cap on the bytes
    # written to it (all lanes), daily send windows, and what may go outside them
    max_bytes_per_second: Annotated[int | None, LIVE] = None
    send_windows: Annotated[tuple[Window, ...], LIVE] = ()
    priority: Annotated[tuple[tuple[str, str], ...], LIVE] = ()
    # -- issue 24, codecs and link compression (agent/dicom/compression.py) --
    # what forwarding sends it in, in order of preference: "as-stored", "jpeg-ls-lossless",
    # "deflate", "rle", "explicit-little"
    transfer_syntax: Annotated[tuple[str, ...], LIVE] = ("as-stored",)
    # decode each lossless encoding and compare it with the original before sending it
    verify_lossless: Annotated[bool, LIVE] = False


@dataclass(frozen=True)
class StudySettings:
    """The ``[study]`` table: when a study no better evidence covers counts as complete."""

    # this long after its last instance (0: never by quiet)
    quiet_seconds: Annotated[float, LIVE] = 60.0
    # an MPPS still missing instances: complete, missing listed
    give_up_hours: Annotated[float, LIVE] = 24.0


@dataclass(frozen=True)
class ClockSettings:
    """The ``[clock]`` table: how far the system clock is believed (``agent.timekeeping``)."""

    # false: the box has no time source to wait for (an isolated network with an RTC):
    # a plausible clock is trusted without NTP's word
    require_sync: Annotated[bool, LIVE] = True
    # a step of the wall clock against the monotonic one beyond this, between two
    # housekeeping ticks, is a jump
    max_jump_seconds: Annotated[float, LIVE] = 60.0


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; ``source`` is None for the built-in default."""

    agent: Annotated[AgentSettings, LIVE]
    peers: Annotated[Mapping[str, Peer], LIVE] = field(default_factory=dict)
    forward: Annotated[ForwardSettings, LIVE] = field(default_factory=ForwardSettings)
    leds: Annotated[LedSettings, RESTART] = field(default_factory=LedSettings)
    console: Annotated[ConsoleSettings, RESTART] = field(default_factory=ConsoleSettings)
    tls: Annotated[TlsSettings | None, LIVE] = None
    source: Annotated[Path | None, LIVE] = None
    study: Annotated[StudySettings, LIVE] = field(default_factory=StudySettings)
    clock: Annotated[ClockSettings, LIVE] = field(default_factory=ClockSettings)
    metrics: Annotated[MetricsSettings | None, LIVE] = None  # None: no metrics endpoint
    qr: Annotated[QrSettings, LIVE] = field(default_factory=QrSettings)
    prefetch: Annotated[tuple[PrefetchRule, ...], LIVE] = ()

    def quiet_seconds(self, ae_title: str) -> float:
        """The quiet period for studies sent by ``ae_title`` (its peer's, else ``[study]``'s)."""
        peer = self.peer_by_ae(ae_title)
        if peer is not None and peer.quiet_seconds is not None:
            return peer.quiet_seconds
        return self.study.quiet_seconds

    def peer_by_ae(self, ae_title: str) -> Peer | None:
        """Return the peer whose AE title is ``ae_title``, if any."""
        for peer in self.peers.values():
            if peer.ae_title == ae_title:
                return peer
        return None


def builtin_default() -> Config:
    """The configuration used when no file is found: open to echo and store from anyone."""
    settings = AgentSettings(
        data_dir=Path("edge-data").resolve(),
        allow_unknown=frozenset(DEFAULT_ALLOW_UNKNOWN),
    )
    return Config(agent=settings, peers={}, source=None)


def locate(explicit: str | os.PathLike[str] | None) -> Path | None:
    """Find the config file: ``--config``, then ``$EDGE_AGENT_CONFIG``, then /etc; else None."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    if SYSTEM_CONFIG.is_file():
        return SYSTEM_CONFIG
    return None


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Locate and load the configuration, or return the built-in default."""
    path = locate(explicit)
    return builtin_default() if path is None else load_file(path)


def load_file(path: Path) -> Config:
    """Read and validate one TOML file."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    return parse(raw, source=path)


def parse(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    """Validate a decoded TOML document and build the frozen configuration; ConfigErrors
    with every error found (each naming its key), not only the first."""
    with v.collecting() as errors:
        config = _build(raw, source)
    if errors:
        raise ConfigErrors(errors)
    return config


def _build(raw: Mapping[str, Any], source: Path | None) -> Config:
    """The configuration, every error reported through ``validation.problem``."""
    v.reject_unknown(
        raw,
        {"agent", "peers", "forward", "leds", "console", "tls", "study", "clock", "metrics",
         "qr", "prefetch"},
        "",
    )
    base_dir = source.resolve().parent if source else Path.cwd()
    agent = _parse_agent(v.table(raw, "agent", ""), base_dir)
    peers_raw = v.table(raw, "peers", "")
    peers = {name: _parse_peer(name, v.table(peers_raw, name, "peers"), base_dir)
             for name in peers_raw}
    _check_unique_ae_titles(agent, peers)
    forward = parse_forward(v.table(raw, "forward", ""), peers)
    peers = with_rule_coercions(peers, forward.rules)  # issue 25: a rule's coerce table
    leds = parse_leds(v.table(raw, "leds", ""))
    console = parse_console(v.table(raw, "console", ""))
    tls = parse_tls(raw["tls"], base_dir) if "tls" in raw else None
    _check_tls_use(agent, peers, tls)
    _check_commit_policies(peers, forward)
    study = _parse_study(v.table(raw, "study", ""))
    clock = _parse_clock(v.table(raw, "clock", ""))
    metrics = parse_metrics(v.table(raw, "metrics", ""), base_dir)
    if metrics is not None:
        _check_metrics(metrics, agent, tls)
    config = Config(
        agent, peers, forward, leds, console, tls, source, study=study, clock=clock,
        metrics=metrics, qr=parse_qr(v.table(raw, "qr", ""), peers),
        prefetch=parse_prefetch(raw.get("prefetch", []), peers),
    )
    check_web_uses(peers, config.qr.fall_through, config.prefetch, forward.mpps_to)
    return config


def _parse_study(table: Mapping[str, Any]) -> StudySettings:
    """The ``[study]`` table: the quiet period (0 switches it off) and the give-up time."""
    d = StudySettings()
    v.reject_unknown(table, set(StudySettings.__dataclass_fields__), "study")
    return StudySettings(
        quiet_seconds=float(
            v.get(table, "study.quiet_seconds", (int, float), d.quiet_seconds, v.not_negative)
        ),
        give_up_hours=float(
            v.get(table, "study.give_up_hours", (int, float), d.give_up_hours, v.positive)
        ),
    )


def _parse_clock(table: Mapping[str, Any]) -> ClockSettings:
    """The ``[clock]`` table: whether trust waits for a time source, and what a jump is."""
    d = ClockSettings()
    v.reject_unknown(table, set(ClockSettings.__dataclass_fields__), "clock")
    return ClockSettings(
        require_sync=v.get(table, "clock.require_sync", bool, d.require_sync, None),
        max_jump_seconds=float(
            v.get(table, "clock.max_jump_seconds", (int, float), d.max_jump_seconds, v.positive)
        ),
    )


def _parse_agent(table: Mapping[str, Any], base_dir: Path) -> AgentSettings:
    d = AgentSettings()
    v.reject_unknown(table, set(AgentSettings.__dataclass_fields__), "agent")
    data_dir = Path(v.get(table, "agent.data_dir", str, str(d.data_dir), v.non_empty))
    return AgentSettings(
        ae_title=v.get(table, "agent.ae_title", str, d.ae_title, v.ae_title),
        port=v.get(table, "agent.port", int, d.port, v.port(allow_zero=True)),
        bind=v.get(table, "agent.bind", str, d.bind, v.host),
        data_dir=data_dir if data_dir.is_absolute() else (base_dir / data_dir).resolve(),
        min_free_mb=v.get(table, "agent.min_free_mb", int, d.min_free_mb, v.at_least(0)),
        max_pdu=v.get(table, "agent.max_pdu", int, d.max_pdu, v.max_pdu),
        network_timeout=float(
            v.get(table, "agent.network_timeout", (int, float), d.network_timeout, v.positive)
        ),
        handshake_timeout=float(
            v.get(
                table,
                "agent.handshake_timeout",
                (int, float),
                d.handshake_timeout,
                v.between(0.5, 120),
            )
        ),
        max_associations=v.get(
            table, "agent.max_associations", int, d.max_associations, v.at_least(1)
        ),
        allow_unknown=v.services(table, "agent.allow_unknown", frozenset()),
        log_level=v.get(table, "agent.log_level", str, d.log_level, v.one_of(_LOG_LEVELS)),
        plain_listener=v.get(table, "agent.plain_listener", bool, d.plain_listener, None),
    )


def _parse_peer(name: str, table: Mapping[str, Any], base_dir: Path) -> Peer:
    """A peer, with what it receives instead of the stored files (issue 25)."""
    outgoing, table = split_outgoing(table, f"peers.{name}")
    return dataclasses.replace(_parse_address(name, table, base_dir), outgoing=outgoing)


def _parse_address(name: str, table: Mapping[str, Any], base_dir: Path) -> Peer:
    where = f"peers.{name}"
    if not _PEER_NAME.match(name):
        v.problem(ConfigError(where, "a peer name is 1-32 letters, digits, '-' or '_'"))
    if is_web(table):  # a DICOMweb destination: its own keys (agent/web/settings.py)
        shared = (*PACE_KEYS, *LINK_KEYS)  # what a DICOMweb peer shares with others
        web = {key: value for key, value in table.items() if key not in shared}
        return Peer(name, "", "", 0, frozenset(), kind="dicomweb",
                    web=parse_web(web, where, base_dir), **parse_pace(table, where),
                    **parse_link(table, where))
    v.reject_unknown(table, set(Peer.__dataclass_fields__) - {"name", "web", "outgoing"}, where)
    for required in ("ae_title", "host", "port"):
        if required not in table:
            v.problem(ConfigError(f"{where}.{required}", "is required"))
    return Peer(
        name=name,
        ae_title=v.get(table, f"{where}.ae_title", str, "", v.ae_title),
        host=v.get(table, f"{where}.host", str, "", v.host),
        port=v.get(table, f"{where}.port", int, 0, v.port(allow_zero=False)),
        allow=v.services(table, f"{where}.allow", frozenset({"echo"})),
        verify_host=v.get(table, f"{where}.verify_host", bool, True, None),
        tls=v.get(table, f"{where}.tls", bool, False, None),
        verify_name=v.get(table, f"{where}.verify_name", bool, True, None),
        **_commit_settings(table, where),
        commit_when=v.get(
            table, f"{where}.commit_when", str, "stored", v.one_of(COMMIT_WHEN)
        ),
        commit_give_up_hours=float(
            v.get(table, f"{where}.commit_give_up_hours", (int, float), 24.0, v.positive)
        ),
        quiet_seconds=_peer_quiet(table, where),
        fall_through=v.get(table, f"{where}.fall_through", bool, True, None),
        **parse_pace(table, where),
        **parse_link(table, where),
    )


def _peer_quiet(table: Mapping[str, Any], where: str) -> float | None:
    """A peer's own quiet period, if it sets one (0: its studies never complete by quiet)."""
    if "quiet_seconds" not in table:
        return None
    return float(v.get(table, f"{where}.quiet_seconds", (int, float), 0.0, v.not_negative))


def _commit_settings(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A peer's storage commitment keys (we as SCU): whether to ask, when, how long to wait."""
    d = Peer("", "", "", 0)
    return {
        "commit": v.get(table, f"{where}.commit", bool, d.commit, None),
        "commit_after_instances": v.get(
            table, f"{where}.commit_after_instances", int, d.commit_after_instances,
            v.at_least(1),
        ),
        "commit_after_seconds": float(v.get(
            table, f"{where}.commit_after_seconds", (int, float), d.commit_after_seconds,
            v.positive,
        )),
        "commit_report_timeout": float(v.get(
            table, f"{where}.commit_report_timeout", (int, float), d.commit_report_timeout,
            v.positive,
        )),
    }


def _check_tls_use(
    agent: AgentSettings, peers: Mapping[str, Peer], tls: TlsSettings | None
) -> None:
    """What needs a ``[tls]`` table has one, and something listens."""
    if tls is not None:
        if agent.plain_listener and tls.port != 0 and tls.port == agent.port:
            v.problem(ConfigError("tls.port", f"is agent.port ({agent.port}): give each its own"))
        return
    if not agent.plain_listener:
        v.problem(
            ConfigError("agent.plain_listener", "false needs a [tls] table (else none listens)")
        )
    for peer in peers.values():
        if peer.tls:
            v.problem(ConfigError(f"peers.{peer.name}.tls", "true needs a [tls] table"))


def _check_metrics(metrics: MetricsSettings, agent: AgentSettings, tls: TlsSettings | None) -> None:
    """HTTPS needs the [tls] certificate; the endpoint needs a port of its own."""
    if metrics.tls and tls is None:
        v.problem(ConfigError("metrics.tls", "true needs a [tls] table (its certificate and key)"))
    taken = {"agent.port": agent.port if agent.plain_listener else 0,
             "tls.port": tls.port if tls is not None else 0}
    for key, port in taken.items():
        if metrics.port != 0 and metrics.port == port:
            v.problem(ConfigError("metrics.port", f"is {key} ({port}): give each its own"))


def _check_commit_policies(peers: Mapping[str, Peer], forward: ForwardSettings) -> None:
    """A modality promised commitment once the PACS commits needs a PACS that is asked."""
    asked = [name for name in forward.to if name in peers and peers[name].commit]
    for peer in peers.values():
        if peer.commit_when == "pacs-committed" and not asked:
            v.problem(ConfigError(
                f"peers.{peer.name}.commit_when",
                "'pacs-committed' needs a [forward] destination with commit = true",
            ))


def _check_unique_ae_titles(agent: AgentSettings, peers: Mapping[str, Peer]) -> None:
    seen: dict[str, str] = {agent.ae_title: "agent"}
    for peer in peers.values():
        other = seen.get(peer.ae_title)
        if other is not None and peer.ae_title:  # an empty one was reported as such
            v.problem(ConfigError(
                f"peers.{peer.name}.ae_title",
                f"AE title {peer.ae_title!r} is already used by {other}",
            ))
        seen[peer.ae_title] = f"peers.{peer.name}"
