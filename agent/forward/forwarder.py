"""The forwarder: one sender per destination and lane, woken when an instance is queued,
and one gate per destination that its lanes share (whether it can be reached).

It runs in the forwarding process (``agent.forward.worker``), which feeds it the wake-ups
the agent's process sends and the queue depths it reads itself, and carries its events
back to the status model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from agent import threads
from agent.archive import Archive
from agent.archive.outbox import Lane, waiting
from agent.config import Config
from agent.forward.clock import SYSTEM_CLOCK, Clock
from agent.forward.committer import Committer
from agent.forward.gate import Gate
from agent.forward.pacing import Pacer
from agent.forward.sender import ForwardEvents, Sender
from agent.forward.web_sender import WebSender
from agent.reconfigure import LiveConfig

log = logging.getLogger(__name__)

STOP_WITHIN = 10.0  # seconds for every sender to finish the instance in flight


class Forwarder:
    """Owns the senders: one per configured destination, and one per peer with jobs."""

    def __init__(
        self, config: Config, archive: Archive, events: ForwardEvents, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.live = LiveConfig(config)  # this process's configuration in force
        self.archive = archive
        self.events = events
        self.clock = clock
        self.gates: dict[str, Gate] = {}
        self.pacers: dict[str, Pacer] = {}  # each destination's cap and windows (pacing.py)
        self.clock_trusted = True  # the clock judge's word, from the agent's process
        self._senders_lock = threading.Lock()  # adopt and reconfigure come from one thread,
        # close from another
        self.senders = {name: self._lanes(name) for name in sorted(config.forward.destinations)}
        self.committers: dict[str, Committer] = {}

    def _lanes(self, name: str) -> list[Sender]:
        """Senders for one destination, each over its own association and share of jobs."""
        count = self.live.current().forward.associations
        gate = self._gate(name)
        kind = self._sender_kind(name)
        return [
            kind(name, self.live.current, self.archive, self.events, Lane(number, count), gate,
                 self.clock, self.pacer(name))
            for number in range(count)
        ]

    def _sender_kind(self, name: str) -> type[Sender]:
        """STOW-RS for a DICOMweb peer (``kind = "dicomweb"``), else C-STORE."""
        peer = self.live.current().peers.get(name)
        return WebSender if peer is not None and peer.web is not None else Sender

    def pacer(self, name: str) -> Pacer:
        """The destination's pace (bandwidth cap, send windows), shared by its lanes and by
        whatever else sends to it (a DICOMweb sender takes its tokens from it too)."""
        pacer = self.pacers.get(name)
        if pacer is None:
            pacer = Pacer(name, self.live.current, self.clock, lambda: self.clock_trusted)
            self.pacers[name] = pacer
        return pacer

    def throttling(self) -> dict[str, bool]:
        """Per destination with a pacer: whether its cap held writes back since the last
        call (the forwarding process asks once a beat)."""
        return {name: pacer.throttling() for name, pacer in list(self.pacers.items())}

    def trust_clock(self, trusted: bool) -> None:
        """The agent's clock judge trusts the system clock, or no longer does: the send
        windows count only on a trusted clock, so the senders look again at once."""
        if trusted != self.clock_trusted:
            self.clock_trusted = trusted
            log.info("send windows %s: the system clock is %s", "apply" if trusted
                     else "are ignored", "trusted" if trusted else "not trusted")
            self.wake(list(self.senders))

    def _gate(self, name: str) -> Gate:
        """The destination's gate, made (and announced up) the first time it is needed."""
        gate = self.gates.get(name)
        if gate is None:
            gate = Gate(
                name, lambda: self.live.current().forward, self.events, self.clock,
                lambda: self.wake([name]),
            )
            self.gates[name] = gate
            gate.announce()
        return gate

    def _all(self) -> list[Sender]:
        return [sender for lanes in self.senders.values() for sender in lanes]

    def _commit_for(self, names: Sequence[str]) -> None:
        """A committer beside the senders of each commit-enabled destination (once)."""
        for name in names:
            peer = self.live.current().peers.get(name)
            if peer is not None and peer.commit and name not in self.committers:
                committer = Committer(name, self.live.current, self.archive, self.events)
                self.committers[name] = committer
                committer.start()

    def start(self) -> None:
        """Start every sender (each drains what an earlier run left queued)."""
        for sender in self._all():
            sender.start()
        self._commit_for(sorted(self.senders))
        if self.senders:
            log.info("forwarding to %s", ", ".join(self.senders))

    def names(self) -> tuple[str, ...]:
        """The destinations a sender runs for."""
        with self._senders_lock:
            return tuple(sorted(self.senders))

    def wake(self, destinations: Sequence[str]) -> None:
        """New jobs for these destinations."""
        for name in destinations:
            for sender in self.senders.get(name, ()):
                sender.wake()

    def adopt(self, depth: Mapping[str, Mapping[str, int]]) -> None:
        """A sender for every configured peer with jobs (``retrieve --send-to`` queues some)."""
        with self._senders_lock:
            peers = self.live.current().peers
            for name, counts in depth.items():
                if name in self.senders or name not in peers or not waiting(counts):
                    continue
                self._start(name)
                log.info("forwarding to %s (jobs were queued for it)", name)

    def reconfigure(self, config: Config) -> None:
        """Put a reloaded configuration in force: every sender, gate and committer reads it
        from then on. Start senders for new destinations, and restart a destination's lanes
        when their number changed; a sender whose peer left the configuration stops (its
        jobs stay queued).
        """
        with self._senders_lock:
            previous = self.live.replace(config)
            for name in sorted(self.senders):
                if name not in config.peers:
                    for sender in self.senders.pop(name):
                        sender.close()
                    self.gates.pop(name, None)
                    self.events.destination_state(name, None, None, None)  # no longer down
                    log.warning("stopped forwarding to %s: no longer a configured peer", name)
            for name, lanes in list(self.senders.items()):
                kind = self._sender_kind(name)
                if len(lanes) != config.forward.associations or type(lanes[0]) is not kind:
                    for sender in lanes:
                        sender.close()
                    self._start(name)
            self._regate(previous, config)
            for name in sorted(set(config.forward.destinations) - set(self.senders)):
                self._start(name)
                log.info("forwarding to %s (added by a reload)", name)
            self._commit_for(sorted(self.senders))
        self.wake(list(self.senders))  # a sender asleep until a send window opens looks again

    def _regate(self, previous: Config, config: Config) -> None:
        """Gates follow a reload; a down destination whose peer changed is tried at once."""
        ours = (previous.agent.ae_title, previous.tls) != (config.agent.ae_title, config.tls)
        for name, gate in self.gates.items():
            if ours or previous.peers.get(name) != config.peers.get(name):
                gate.retry_now()

    def _start(self, name: str) -> None:
        self.senders[name] = self._lanes(name)
        for sender in self.senders[name]:
            sender.start()
        self._commit_for([name])

    def close(self, timeout: float = STOP_WITHIN) -> None:
        """Stop every sender at once, then wait for them within one deadline."""
        with self._senders_lock:
            threads.stop_all([*self.committers.values(), *self._all()], timeout)
