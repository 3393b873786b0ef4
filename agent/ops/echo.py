"""C-ECHO a peer: is it there, and does it accept us?"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import Config
from agent.net.scu import Target, echo, resolve_target
from agent.web.client import WebClient


@dataclass(frozen=True)
class EchoResult:
    """A peer answered a C-ECHO (failures raise PeerError with the reason)."""

    target: Target
    seconds: float = field(compare=False)

    @property
    def summary(self) -> str:
        """One line: who answered, how fast."""
        return f"{self.target} answered C-ECHO in {self.seconds * 1000:.0f} ms"

    def lines(self) -> list[str]:
        """The answer as the CLI prints it."""
        return [f"OK {self.summary}"]


@dataclass(frozen=True)
class WebEchoResult(EchoResult):
    """A DICOMweb peer answered an authenticated QIDO-RS request."""

    url: str = ""
    status: int = 200

    @property
    def summary(self) -> str:
        """One line: who answered what, how fast."""
        return (f"{self.target.name} ({self.url}) answered an authenticated QIDO-RS request"
                f" with HTTP {self.status} in {self.seconds * 1000:.0f} ms")


def echo_peer(config: Config, peer: str) -> EchoResult:
    """C-ECHO a configured peer (by name) or AET@HOST:PORT; PeerError if it fails.
    A DICOMweb peer gets a cheap authenticated request instead (``WebClient.echo``)."""
    web = config.peers[peer].web if peer in config.peers else None
    if web is not None:
        client = WebClient(web)
        try:
            answer = client.echo()
        finally:
            client.close()
        return WebEchoResult(Target("", "", 0, peer), answer.seconds, answer.url, answer.status)
    target = resolve_target(config, peer)
    return EchoResult(target, echo(config, target))
