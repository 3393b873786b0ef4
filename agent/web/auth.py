"""How a DICOMweb request proves who we are: ``requests.auth.AuthBase`` classes for HTTP
basic, a bearer token kept in a file, and OAuth2 client credentials (RFC 6749 4.4).

Secrets are read from their files when a request needs them and again whenever a file
changes (its mtime, size or inode), so a rotated password or token is used at once,
without a reload. No secret is ever logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from agent.errors import PeerError
from agent.web.settings import WebSettings

log = logging.getLogger(__name__)

REFRESH_BEFORE = 60.0  # seconds: a token this close to expiry is renewed first...
REFRESH_FRACTION = 0.2  # ...or this share of its life, for short-lived tokens
TOKEN_TIMEOUT = 30.0  # seconds for the token endpoint


class SecretFile:
    """A secret kept in a file: its stripped text, read again when the file changes."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # for errors: "password_file", "token_file"...
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._value = ""

    def read(self) -> str:
        """The secret now; PeerError (naming the file, never its content) if unreadable."""
        try:
            stat = self.path.stat()
            key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            with self._lock:
                if key != self._seen:
                    self._value = self.path.read_text().strip()
                    self._seen = key
                    log.debug("read %s %s", self.what, self.path)
                value = self._value
        except OSError as exc:
            raise PeerError(f"cannot read {self.what} {self.path}: {exc.strerror}") from None
        if not value:
            raise PeerError(f"{self.what} {self.path} is empty")
        return value


class FileBasicAuth(AuthBase):
    """HTTP basic authentication with the password in a file."""

    def __init__(self, user: str, password: SecretFile) -> None:
        self.user = user
        self.password = password

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        prepared: requests.PreparedRequest = HTTPBasicAuth(self.user, self.password.read())(r)
        return prepared


class RetryOn401(AuthBase):
    """A bearer token from ``token()``; on a 401 the token is renewed with
    ``token(renew=True)`` and the request sent once more (its body is re-iterable)."""

    def token(self, renew: bool = False) -> str:
        """The token to send (a fresh one when ``renew``)."""
        raise NotImplementedError

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token()}"
        r.register_hook("response", self._retry_once)  # type: ignore[no-untyped-call]
        return r

    def _retry_once(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """Renew the token after a 401 and send the same request again, once: the hook
        is not run for the answer to the retry (the adapter sends it, not the session)."""
        if response.status_code != 401 or response.connection is None:
            return response
        token = self.token(renew=True)
        log.info("%s answered 401: token renewed, request sent again", _host(response))
        response.content  # noqa: B018 - read the body so the connection can be reused
        response.close()
        again = response.request.copy()
        again.headers["Authorization"] = f"Bearer {token}"
        retried: requests.Response = response.connection.send(again, **kwargs)
        retried.history.append(response)
        retried.request = again
        return retried


class FileBearerAuth(RetryOn401):
    """A bearer token kept in a file by someone else (re-read when it changes; on a 401
    the file is read again before the one retry)."""

    def __init__(self, token_file: SecretFile) -> None:
        self.file = token_file

    def token(self, renew: bool = False) -> str:
        if renew:
            self.file._seen = None  # read it again even if it looks unchanged
        return self.file.read()


@dataclass(frozen=True)
class Token:
    """An access token and when it should be renewed (monotonic)."""

    value: str
    renew_at: float


class ClientCredentials(RetryOn401):
    """OAuth2 client credentials grant: a token from ``token_url`` for our client id and
    secret (sent as HTTP basic, RFC 6749 2.3.1), cached until shortly before it expires,
    renewed at once after a 401. One per destination, shared by its lanes."""

    def __init__(self, settings: WebSettings, secret: SecretFile) -> None:
        self.settings = settings
        self.secret = secret
        self._session = requests.Session()  # the token endpoint: the same TLS trust
        self._verify: bool | str = str(settings.ca) if settings.ca is not None else True
        self._lock = threading.Lock()
        self._token: Token | None = None

    def token(self, renew: bool = False) -> str:
        with self._lock:
            current = self._token
            if renew or current is None or time.monotonic() >= current.renew_at:
                current = self._token = self._fetch()
            return current.value

    def _fetch(self) -> Token:
        """A new token from the endpoint; PeerError saying why there is none."""
        s = self.settings
        form = {"grant_type": "client_credentials"}
        if s.scope:
            form["scope"] = s.scope
        try:
            answer = self._session.post(
                s.token_url, data=form, auth=HTTPBasicAuth(s.client_id, self.secret.read()),
                headers={"Accept": "application/json"}, verify=self._verify,
                timeout=TOKEN_TIMEOUT)
        except requests.RequestException as exc:
            raise PeerError(f"token endpoint {s.token_url}: {type(exc).__name__}") from None
        if answer.status_code != 200:
            raise PeerError(f"token endpoint {s.token_url} answered HTTP {answer.status_code}"
                            f" {answer.reason}")
        try:
            body = answer.json()
            value = str(body["access_token"])
            lifetime = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise PeerError(f"token endpoint {s.token_url}: no access_token in its answer"
                            ) from None
        early = max(min(REFRESH_BEFORE, lifetime * REFRESH_FRACTION), 0.0)
        log.debug("token from %s, valid %.0f s", s.token_url, lifetime)
        return Token(value, time.monotonic() + lifetime - early)


_shared: dict[WebSettings, ClientCredentials] = {}
_shared_lock = threading.Lock()


def auth_for(settings: WebSettings) -> AuthBase | None:
    """The authentication the settings name (None for ``auth = "none"``); the OAuth2
    token of a destination is shared by every client of it in this process."""
    if settings.auth == "basic" and settings.password_file is not None:
        return FileBasicAuth(settings.user, SecretFile(settings.password_file, "password_file"))
    if settings.auth == "bearer" and settings.token_file is not None:
        return FileBearerAuth(SecretFile(settings.token_file, "token_file"))
    if settings.auth == "oauth2" and settings.client_secret_file is not None:
        with _shared_lock:
            found = _shared.get(settings)
            if found is None:
                secret = SecretFile(settings.client_secret_file, "client_secret_file")
                found = _shared[settings] = ClientCredentials(settings, secret)
            return found
    return None


def _host(response: requests.Response) -> str:
    url = response.url or ""
    return url.split("/")[2] if url.count("/") >= 2 else url
