"""A DICOMweb destination's settings: ``[peers.CLOUD] kind = "dicomweb"``, its base URL,
how it authenticates, which CA its certificate is checked against, how large a STOW-RS
request may grow.

Secrets are never in the configuration itself, only the files holding them (read when a
request needs them, so a rotated token or password is taken without a reload). Files
are relative to the configuration file's directory, like every other path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from agent import validation as v
from agent.errors import ConfigError
from agent.reloading import LIVE

KINDS = ("dimse", "dicomweb")
AUTHS = ("none", "basic", "bearer", "oauth2")
# the keys each auth needs (files among them end in _file)
AUTH_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "basic": ("user", "password_file"),
    "bearer": ("token_file",),
    "oauth2": ("token_url", "client_id", "client_secret_file"),
}
AUTH_ONLY = frozenset({
    "user", "password_file", "token_file", "token_url", "client_id", "client_secret_file",
    "scope",
})
WEB_KEYS = frozenset({
    "kind", "url", "auth", "user", "password_file", "token_file", "token_url", "client_id",
    "client_secret_file", "scope", "ca", "max_instances", "max_request_mb", "timeout",
})
# keys of a DICOM (DIMSE) peer that mean nothing for a DICOMweb one
DIMSE_ONLY = frozenset({
    "ae_title", "host", "port", "allow", "verify_host", "tls", "verify_name", "commit",
    "commit_after_instances", "commit_after_seconds", "commit_report_timeout", "commit_when",
    "commit_give_up_hours", "quiet_seconds", "fall_through",
})


@dataclass(frozen=True)
class WebSettings:
    """Where a DICOMweb destination is and how we prove who we are to it."""

    url: Annotated[str, LIVE]  # the service's base URL: STOW-RS posts to {url}/studies
    auth: Annotated[str, LIVE] = "none"  # none, basic, bearer or oauth2
    user: Annotated[str, LIVE] = ""  # basic
    password_file: Annotated[Path | None, LIVE] = None  # basic
    token_file: Annotated[Path | None, LIVE] = None  # bearer: re-read when it changes
    token_url: Annotated[str, LIVE] = ""  # oauth2 client credentials: the token endpoint
    client_id: Annotated[str, LIVE] = ""  # oauth2
    client_secret_file: Annotated[Path | None, LIVE] = None  # oauth2
    scope: Annotated[str, LIVE] = ""  # oauth2, optional
    ca: Annotated[Path | None, LIVE] = None  # else the system's trust store
    max_instances: Annotated[int, LIVE] = 50  # per STOW-RS request...
    max_request_mb: Annotated[int, LIVE] = 64  # ...and its body at most (one larger file alone)
    timeout: Annotated[float, LIVE] = 120.0  # seconds for connecting and for each read


def is_web(table: Mapping[str, Any]) -> bool:
    """Whether a peer table describes a DICOMweb peer (any kind but "dimse" is judged
    here, so an unknown kind is reported by ``parse_web``)."""
    return bool(table.get("kind", "dimse") != "dimse")


def parse_web(table: Mapping[str, Any], where: str, base_dir: Path) -> WebSettings:
    """A DICOMweb peer's table, every error naming its key."""
    v.get(table, f"{where}.kind", str, "dicomweb", v.one_of(KINDS))
    for key in table:
        if key in DIMSE_ONLY:
            v.problem(ConfigError(
                f"{where}.{key}", 'is a DICOM (DIMSE) setting; a kind = "dicomweb" peer has'
                " only url, auth and their keys (its address is url)"))
        elif key not in WEB_KEYS:
            v.problem(ConfigError(f"{where}.{key}",
                                  f"unknown key (known: {', '.join(sorted(WEB_KEYS))})"))
    d = WebSettings("")
    if "url" not in table:
        v.problem(ConfigError(f"{where}.url", "is required for a DICOMweb peer"))
    auth = v.get(table, f"{where}.auth", str, d.auth, v.one_of(AUTHS))
    for needed in AUTH_KEYS.get(auth, ()):
        if needed not in table:
            v.problem(ConfigError(f"{where}.{needed}", f'is required with auth = "{auth}"'))
    allowed = {*AUTH_KEYS.get(auth, ()), *(("scope",) if auth == "oauth2" else ())}
    for key in sorted(AUTH_ONLY - allowed):
        if key in table:
            v.problem(ConfigError(f"{where}.{key}", f'means nothing with auth = "{auth}"'))
    return WebSettings(
        url=v.get(table, f"{where}.url", str, "", _url).rstrip("/"),
        auth=auth,
        user=v.get(table, f"{where}.user", str, "", v.non_empty),
        password_file=_file(table, where, "password_file", base_dir),
        token_file=_file(table, where, "token_file", base_dir),
        token_url=v.get(table, f"{where}.token_url", str, "", _url),
        client_id=v.get(table, f"{where}.client_id", str, "", v.non_empty),
        client_secret_file=_file(table, where, "client_secret_file", base_dir),
        scope=v.get(table, f"{where}.scope", str, "", None),
        ca=_file(table, where, "ca", base_dir),
        max_instances=v.get(table, f"{where}.max_instances", int, d.max_instances,
                            v.at_least(1)),
        max_request_mb=v.get(table, f"{where}.max_request_mb", int, d.max_request_mb,
                             v.at_least(1)),
        timeout=float(v.get(table, f"{where}.timeout", (int, float), d.timeout, v.positive)),
    )


def _url(key: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"{value!r} is not an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(key, "holds no user or password (use auth and its files)")
    if parts.query or parts.fragment:
        raise ConfigError(key, "is a base URL, without ? or #")


def _file(table: Mapping[str, Any], where: str, key: str, base_dir: Path) -> Path | None:
    """A file the peer's requests read (relative to the configuration's directory); it
    must exist now, so a typo is found at load and not at the first request."""
    if key not in table:
        return None
    path = Path(v.get(table, f"{where}.{key}", str, "", v.non_empty))
    path = path if path.is_absolute() else (base_dir / path).resolve()
    if not path.is_file():
        v.problem(ConfigError(f"{where}.{key}", f"{path} is not a readable file"))
    return path


def check_web_uses(
    peers: Mapping[str, Any], fall_through: tuple[str, ...], prefetch: tuple[Any, ...],
    mpps_to: tuple[str, ...],
) -> None:
    """A DICOMweb peer is only a forwarding destination: naming it where a DICOM peer is
    needed (Q/R fall-through, prefetch, MPPS forwarding) is an error naming that key."""
    web = {name for name, peer in peers.items() if getattr(peer, "web", None) is not None}
    for name in mpps_to:
        if name in web:
            v.problem(ConfigError("forward.mpps_to", f"{name!r} is a DICOMweb peer"
                                  " (kind = \"dicomweb\"): MPPS needs N-CREATE/N-SET"))
    for name in fall_through:
        if name in web:
            v.problem(ConfigError("qr.fall_through", f"{name!r} is a DICOMweb peer"
                                  " (kind = \"dicomweb\"): fall-through needs C-FIND/C-MOVE"))
    for i, rule in enumerate(prefetch):
        if rule.priors_from in web:
            v.problem(ConfigError(f"prefetch[{i}].priors_from", f"{rule.priors_from!r} is a"
                                  " DICOMweb peer (kind = \"dicomweb\"): priors need C-FIND"))
        for name in rule.from_peers:
            if name in web:
                v.problem(ConfigError(f"prefetch[{i}].from", f"{name!r} is a DICOMweb peer"
                                      " (kind = \"dicomweb\"): it sends us no studies"))
