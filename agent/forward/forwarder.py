"""The forwarder: one sender per destination, woken when an instance is queued."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from agent.archive import Archive
from agent.config import Config
from agent.forward import queue, retention
from agent.forward.rules import router_for
from agent.forward.sender import Sender
from agent.status import StatusModel

log = logging.getLogger(__name__)


class Forwarder:
    """Owns the senders; the archive calls ``wake`` after each queued instance."""

    def __init__(self, config: Config, archive: Archive, status: StatusModel) -> None:
        self.config = config
        self.archive = archive
        self.status = status
        self._senders_lock = threading.Lock()  # housekeeping adopts, a reload reconfigures
        self.senders = {
            name: Sender(config.peers[name], config, archive, status)
            for name in sorted(config.forward.destinations)
        }
        archive.router = router_for(config.forward, config.peers)
        archive.on_queued = self.wake

    def start(self) -> None:
        """Start every sender (each drains what an earlier run left queued)."""
        for sender in self.senders.values():
            sender.start()
        if self.senders:
            log.info("forwarding to %s", ", ".join(self.senders))

    def wake(self, destinations: Sequence[str]) -> None:
        """New jobs for these destinations."""
        for name in destinations:
            sender = self.senders.get(name)
            if sender is not None:
                sender.wake()

    def refresh_status(self) -> None:
        """Publish queue depth per destination; start senders for newly queued peers."""
        with self.archive.index.reading() as conn:
            depth = queue.depth(conn)
        self._adopt(depth)
        if self.senders:
            self.status.queue_depth(depth, tuple(self.senders))

    def _adopt(self, depth: dict[str, dict[str, int]]) -> None:
        """A sender for every configured peer with jobs (``retrieve --send-to`` queues some)."""
        with self._senders_lock:
            for name, counts in depth.items():
                waiting = counts.get("pending", 0) + counts.get("retrying", 0)
                if name in self.senders or name not in self.config.peers or not waiting:
                    continue
                sender = Sender(self.config.peers[name], self.config, self.archive, self.status)
                self.senders[name] = sender
                sender.start()
                log.info("forwarding to %s (jobs were queued for it)", name)

    def reconfigure(self, config: Config) -> None:
        """Route and deliver by a reloaded configuration; start senders for new destinations.

        A sender whose peer left the configuration stops; its jobs stay queued.
        """
        with self._senders_lock:
            self.config = config
            self.archive.router = router_for(config.forward, config.peers)
            for name in sorted(self.senders):
                if name not in config.peers:
                    self.senders.pop(name).close()
                    log.warning("stopped forwarding to %s: no longer a configured peer", name)
            for name, sender in self.senders.items():
                sender.peer, sender.config = config.peers[name], config
            for name in sorted(set(config.forward.destinations) - set(self.senders)):
                self.senders[name] = Sender(config.peers[name], config, self.archive, self.status)
                self.senders[name].start()
                log.info("forwarding to %s (added by a reload)", name)

    def sweep(self) -> int:
        """Apply retention (only where forwarding is configured)."""
        if not self.senders:
            return 0
        return retention.sweep(self.archive, self.config.forward)

    def close(self) -> None:
        """Stop every sender."""
        with self._senders_lock:
            for sender in self.senders.values():
                sender.close()
