"""The console's commands about the running agent: status, peers, echo, queue, net, logs..."""

from __future__ import annotations

import importlib
import io
import logging
import platform
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.field import logbuffer
from agent.field.console import netinfo
from agent.field.console.clitools import run_cli
from agent.field.console.table import Args, CommandTable, Reply, err, ok, syntax
from agent.net.scu import echo, resolve_target

if TYPE_CHECKING:
    from agent.app import Agent

log = logging.getLogger(__name__)

LOG_LINES = 20
LED_STEP = 0.5


class AgentCommands:
    """Commands that look at (or restart) the running agent."""

    def __init__(
        self,
        agent: Agent,
        table: CommandTable,
        *,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.agent = agent
        self.table = table
        self.on_restart = on_restart

    @syntax("help [COMMAND...]", "list the commands, or show one command's syntax")
    def help(self, args: Args) -> Reply:
        """Every command's syntax line, or those starting with the given words."""
        return self.table.help(args.get("command", "").split())

    @syntax("status", "agent state, archive counts, free disk and forwarding")
    def status(self, args: Args) -> Reply:
        """What ``edge-agent status`` prints, headed by the live state."""
        from agent.cli import status as status_cli

        snapshot = self.agent.status.snapshot()
        _, lines = run_cli(status_cli, self.agent.config, json=False, extra={"live": snapshot})
        return ok("not answering" if snapshot.silent_for else snapshot.state.value, lines)

    @syntax("peers", "the configured peers: AE title, address and what each may do")
    def peers(self, args: Args) -> Reply:
        """One line per configured peer."""
        config = self.agent.config
        lines = [f"us         {config.agent.ae_title} on {config.agent.bind}:{config.agent.port}"]
        for peer in config.peers.values():
            allowed = ",".join(sorted(peer.allow)) or "nothing"
            check = "" if peer.verify_host else " (any host)"
            lines.append(
                f"{peer.name:<10} {peer.ae_title}@{peer.host}:{peer.port} allow {allowed}{check}"
            )
        if config.agent.allow_unknown:
            lines.append(f"unknown AEs may {','.join(sorted(config.agent.allow_unknown))}")
        return ok(f"{len(config.peers)} peers", lines)

    @syntax("echo PEER", "C-ECHO a configured peer (by name) or AET@HOST:PORT")
    def echo(self, args: Args) -> Reply:
        """Round trip in milliseconds, or why it failed."""
        config = self.agent.config
        target = resolve_target(config, args["peer"])
        seconds = echo(config, target)
        return ok(f"{target} answered C-ECHO in {seconds * 1000:.0f} ms")

    @syntax("queue", "forward jobs per destination: pending, retrying, quarantined")
    def queue(self, args: Args) -> Reply:
        """What ``edge-agent queue`` prints."""
        return self._queue(action="list", ids=[], all=False)

    @syntax("queue retry ID...", "re-arm retrying or quarantined jobs: job ids, or 'all'")
    def queue_retry(self, args: Args) -> Reply:
        """Re-arm jobs; the senders take them up within seconds."""
        words = args["id"].split()
        if words == ["all"]:
            return self._queue(action="retry", ids=[], all=True)
        if not all(word.isdigit() for word in words):
            return err("usage: queue retry ID... (job numbers) or queue retry all")
        return self._queue(action="retry", ids=[int(word) for word in words], all=False)

    @syntax("queue purge [yes]", "give up on every quarantined job ('queue purge yes')")
    def queue_purge(self, args: Args) -> Reply:
        """Drop quarantined jobs, once confirmed."""
        if args.get("yes", "").lower() != "yes":
            return err("type 'queue purge yes' to drop every quarantined job for good")
        return self._queue(action="purge", ids=[], all=False, yes=True)

    def _queue(self, **options: Any) -> Reply:
        from agent.cli import queue as queue_cli

        options.setdefault("yes", False)
        status, lines = run_cli(queue_cli, self.agent.config, **options)
        if lines and lines[0].startswith("OK "):
            return ok(lines[0][3:], lines[1:]) if status == 0 else err(lines[0][3:], lines[1:])
        return ok(body=lines) if status == 0 else err(f"queue failed (status {status})", lines)

    @syntax("net", "network interfaces: link, addresses, default gateway")
    def net(self, args: Args) -> Reply:
        """One line per interface, then the gateway."""
        lines = [item.describe() for item in netinfo.interfaces()]
        lines.append(f"gateway    {netinfo.default_gateway() or 'none'}")
        lines.append(f"hostname   {socket.gethostname()}")
        return ok(body=lines)

    @syntax("logs [N]", f"the last N log lines (default {LOG_LINES}; info and above)")
    def logs(self, args: Args) -> Reply:
        """Lines from the in-memory log buffer."""
        count = args.get("n", str(LOG_LINES))
        if not count.isdigit() or int(count) < 1:
            return err("usage: logs [N] (N a number of lines)")
        buffer = logbuffer.installed()
        if buffer is None:
            return err("no log buffer in this process")
        return ok(body=buffer.lines(int(count)))

    @syntax("leds test", "walk every LED through its patterns, one after the other")
    def leds_test(self, args: Args) -> Reply:
        """The LED helper's test walk, if the LEDs module is present."""
        try:
            leds = importlib.import_module("agent.field.leds")
        except ImportError:
            return err("not available (no LED support in this build)")
        walk = getattr(leds, "walk_patterns", None)
        if walk is None:
            return err("not available (no LED test in this build)")
        settings = self.agent.config.leds
        if not settings.pins():
            return err("no LEDs configured: set pins in [leds]")
        out = io.StringIO()
        running = getattr(self.agent, "leds", None)
        if running is not None:
            running.close()  # the agent's status LEDs hold the pins: free them for the walk
        try:
            walk(settings, out, step=LED_STEP)
        finally:
            if running is not None:
                self.agent.leds = type(running)(self.agent.status, settings)
        return ok(body=out.getvalue().splitlines())

    @syntax("version", "agent, Python and DICOM library versions")
    def version(self, args: Args) -> Reply:
        """The versions that matter to a bug report."""
        import pydicom
        import pynetdicom

        snapshot = self.agent.status.snapshot()
        return ok(
            f"edge-agent {__version__}",
            [
                f"python {platform.python_version()}, pynetdicom {pynetdicom.__version__}, "
                f"pydicom {pydicom.__version__}",
                f"host {socket.gethostname()}, pid {snapshot.pid}, since {snapshot.started_at}",
            ],
        )

    @syntax("restart [yes]", "restart the agent ('restart yes'): it exits and systemd restarts it")
    def restart(self, args: Args) -> Reply:
        """After confirmation, ask the run command to exit non-zero so systemd restarts us."""
        if self.on_restart is None:
            return err("not available: this agent was not started by 'edge-agent run'")
        if args.get("yes", "").lower() != "yes":
            return err("type 'restart yes' to confirm (associations in progress are cut)")
        log.warning("restart asked for on the serial console")
        return Reply(
            True, "restarting: the agent exits, systemd starts it again", then=self.on_restart
        )
