"""DICOM TLS (PS3.15 Annex B, BCP 195): the agent's certificate, key and trusted CAs as
ssl contexts, loaded and checked at start-up so that a wrong file stops the agent with
the key at fault named, and loaded again on reload so that renewed files take effect.

The server context requires (by default) a client certificate that chains to ``ca``;
names are not checked on incoming connections, as DCMTK and Orthanc do not. The client
context presents our certificate, verifies the peer against ``ca`` and, with
``verify_name``, that its certificate names the host we connect to (DNS or IP SAN).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from agent.errors import ConfigError
from agent.reloading import LIVE, RESTART

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class TlsSettings:
    """The ``[tls]`` table: our certificate and key, the CAs we trust, the TLS listener."""

    certificate: Annotated[Path, LIVE]
    private_key: Annotated[Path, LIVE]
    ca: Annotated[Path, LIVE]
    port: Annotated[int, RESTART] = 2762
    require_client_certificate: Annotated[bool, LIVE] = True
    min_version: Annotated[str, LIVE] = "1.2"
    handshake_timeout: Annotated[float, RESTART] = 5.0


@dataclass(frozen=True)
class Contexts:
    """The ssl contexts built from one reading of the files, and our certificate's expiry."""

    server: ssl.SSLContext
    client: ssl.SSLContext  # verifies the peer's name
    client_unnamed: ssl.SSLContext  # for peers with verify_name = false: the chain only
    not_after: dt.datetime


def load(settings: TlsSettings, now: dt.datetime | None = None) -> Contexts:
    """Read the files into server and client contexts; ConfigError naming the key if wrong."""
    for key in ("certificate", "private_key", "ca"):
        _readable(f"tls.{key}", getattr(settings, key))
    not_after = certificate_expiry(settings.certificate)
    if not_after <= (now or dt.datetime.now(dt.timezone.utc)):
        raise ConfigError(
            "tls.certificate", f"{settings.certificate} expired on {not_after:%Y-%m-%d %H:%M} UTC"
        )
    server = _context(settings, ssl.Purpose.CLIENT_AUTH)
    server.verify_mode = (
        ssl.CERT_REQUIRED if settings.require_client_certificate else ssl.CERT_OPTIONAL
    )
    client = _context(settings, ssl.Purpose.SERVER_AUTH)
    unnamed = _context(settings, ssl.Purpose.SERVER_AUTH)
    unnamed.check_hostname = False  # the chain is still verified (CERT_REQUIRED)
    return Contexts(server, client, unnamed, not_after)


def _readable(key: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(key, f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def _context(settings: TlsSettings, purpose: ssl.Purpose) -> ssl.SSLContext:
    """A BCP 195 context: the stdlib's secure defaults, our minimum version, our files."""
    try:
        context = ssl.create_default_context(purpose, cafile=str(settings.ca))
    except (ssl.SSLError, ValueError) as exc:
        message = f"{settings.ca} holds no usable PEM certificate ({exc})"
        raise ConfigError("tls.ca", message) from None
    context.minimum_version = VERSIONS[settings.min_version]
    def no_password() -> str:
        raise ConfigError(
            "tls.private_key",
            f"{settings.private_key} is encrypted with a passphrase; the agent needs an"
            " unencrypted key (mode 0600)",
        )

    try:
        context.load_cert_chain(settings.certificate, settings.private_key, password=no_password)
    except ssl.SSLError as exc:
        raise _chain_error(settings, exc) from None
    return context


def check(settings: TlsSettings) -> list[ConfigError]:
    """Every error in the TLS files at once (empty: ``load`` will succeed today)."""
    errors = []
    for key in ("certificate", "private_key", "ca"):
        try:
            _readable(f"tls.{key}", getattr(settings, key))
        except ConfigError as exc:
            errors.append(exc)
    if not errors:
        try:
            load(settings)
        except ConfigError as exc:
            errors.append(exc)
    return errors


def key_exposure(settings: TlsSettings) -> str | None:
    """A warning if other users may read the private key (any group or other bit set)."""
    try:
        mode = settings.private_key.stat().st_mode & 0o777
    except OSError:
        return None  # ``load`` says why it cannot be read
    if not mode & 0o077:
        return None
    return (
        f"tls.private_key: {settings.private_key} can be read by other users (mode "
        f"{mode:04o}); chmod 600 it"
    )


def _chain_error(settings: TlsSettings, exc: ssl.SSLError) -> ConfigError:
    reason = str(exc.reason or exc)
    if "KEY_VALUES_MISMATCH" in reason.upper():
        return ConfigError(
            "tls.private_key",
            f"{settings.private_key} is not the key of tls.certificate {settings.certificate}",
        )
    if b"PRIVATE KEY-----" not in settings.private_key.read_bytes():
        return ConfigError("tls.private_key", f"{settings.private_key} holds no PEM private key")
    return ConfigError(
        "tls.private_key", f"{settings.private_key} cannot be used as a private key ({reason})"
    )


def certificate_expiry(path: Path) -> dt.datetime:
    """When the first certificate in a PEM file expires (notAfter), in UTC."""
    match = _PEM.search(path.read_bytes())
    if match is None:
        raise ConfigError("tls.certificate", f"{path} holds no PEM certificate")
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        return _not_after(der)
    except (binascii.Error, ValueError, IndexError) as exc:
        raise ConfigError("tls.certificate", f"{path} is not a valid certificate ({exc})") from None


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """One DER element at ``at``: its tag, where its content starts, where it ends."""
    tag, length = data[at], data[at + 1]
    start = at + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    if start + length > len(data):
        raise ValueError("truncated DER")
    return tag, start, start + length


def _not_after(der: bytes) -> dt.datetime:
    """Certificate → TBSCertificate → [version] serial signature issuer validity.notAfter."""
    _, start, _ = _tlv(der, 0)
    _, at, _ = _tlv(der, start)  # inside the TBSCertificate
    tag, _, end = _tlv(der, at)
    if tag == 0xA0:  # the explicit version
        at = end
    for _ in range(3):  # serial number, signature algorithm, issuer
        at = _tlv(der, at)[2]
    _, validity, _ = _tlv(der, at)
    after = _tlv(der, _tlv(der, validity)[2])
    text = der[after[1] : after[2]].decode("ascii")
    layout = "%y%m%d%H%M%SZ" if after[0] == 0x17 else "%Y%m%d%H%M%SZ"  # UTCTime, else Generalized
    return dt.datetime.strptime(text, layout).replace(tzinfo=dt.timezone.utc)


def days_left(not_after: dt.datetime, now: dt.datetime | None = None) -> int:
    """Whole days until ``not_after`` (negative once expired)."""
    return (not_after - (now or dt.datetime.now(dt.timezone.utc))).days


class ContextCache:
    """The contexts for the current settings; built again when settings or files change.

    Reading three files' metadata per association is cheap next to a TLS handshake, and it
    lets a process that outlives a certificate renewal (the forwarder) use the new files.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._contexts: Contexts | None = None

    def get(self, settings: TlsSettings) -> Contexts:
        """The contexts for ``settings`` (ConfigError if the files are unusable now)."""
        key = (settings, *(_signature(p) for p in (settings.certificate, settings.private_key,
                                                   settings.ca)))
        with self._lock:
            if self._contexts is None or key != self._key:
                self._contexts = load(settings)
                self._key = key
            return self._contexts


def _signature(path: Path) -> tuple[int, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, 0, 0)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


CACHE = ContextCache()


# -- expiry, as the status, the console and the LEDs tell it ----------------------------

CERTIFICATE_WARN_DAYS = 30  # status, console and LEDs warn this long before expiry


def certificate_days_left(expires: str | None, now: dt.datetime | None = None) -> int | None:
    """Whole days until the TLS certificate expires (None without TLS; negative: expired)."""
    if not expires:
        return None
    moment = dt.datetime.fromisoformat(expires)
    return (moment - (now or dt.datetime.now(dt.timezone.utc))).days


def certificate_warning(expires: str | None, now: dt.datetime | None = None) -> str | None:
    """A warning from CERTIFICATE_WARN_DAYS before the TLS certificate expires, else None."""
    left = certificate_days_left(expires, now)
    if left is None or left >= CERTIFICATE_WARN_DAYS:
        return None
    if left < 0:
        return "TLS certificate EXPIRED"
    return f"TLS certificate expires in {left} days"
