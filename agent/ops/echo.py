"""C-ECHO a peer: is it there, and does it accept us?"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import Config
from agent.net.scu import Target, echo, resolve_target


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


def echo_peer(config: Config, peer: str) -> EchoResult:
    """C-ECHO a configured peer (by name) or AET@HOST:PORT; PeerError if it fails."""
    target = resolve_target(config, peer)
    return EchoResult(target, echo(config, target))
