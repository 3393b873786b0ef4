"""The console's commands about the running agent: status, peers, echo, queue, net, logs..."""

from __future__ import annotations

import io
import logging
import platform
import socket
from collections.abc import Callable
from pathlib import Path

from agent import __version__
from agent.archive import Layout
from agent.errors import AgentError
from agent.field import logbuffer
from agent.field.console import netinfo
from agent.field.console.render import echo_reply, queue_reply, status_reply, studies_reply
from agent.field.console.table import Args, CommandTable, Reply, err, ok, syntax
from agent.field.leds import walk_patterns
from agent.ops.clock import clock_report
from agent.ops.echo import echo_peer
from agent.ops.metrics import metrics_report
from agent.ops.prefetch import queue_prefetch
from agent.ops.preview import preview
from agent.ops.queue import list_queue, purge_jobs, retry_jobs, split_targets
from agent.ops.running import RunningAgent
from agent.ops.status import status_report
from agent.ops.studies import studies

log = logging.getLogger(__name__)

LOG_LINES = 20
LED_STEP = 0.5


class AgentCommands:
    """Commands that look at (or restart) the running agent."""

    def __init__(
        self,
        agent: RunningAgent,
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

    @syntax("status", "agent state, archive counts, free disk, forwarding and alerts")
    def status(self, args: Args) -> Reply:
        """What ``edge-agent status`` prints, headed by the live state."""
        snapshot = self.agent.status.snapshot()
        report = status_report(self._layout(), snapshot)
        state = "not answering" if snapshot.silent_for else snapshot.state.value
        return status_reply(report, state)

    def _layout(self) -> Layout:
        return Layout(self.agent.config.agent.data_dir)

    @syntax("clock", "the system clock: synchronised, plausible, trusted, last jump")
    def clock(self, args: Args) -> Reply:
        """What ``edge-agent clock`` prints, headed by trusted or what is wrong."""
        report = clock_report(self._layout(), self.agent.status.snapshot())
        clock = report.clock
        head = (clock.doubt() if clock is not None else None) or "clock trusted"
        return ok(head, report.lines(), result=report)

    @syntax("peers", "the configured peers: AE title, address and what each may do")
    def peers(self, args: Args) -> Reply:
        """One line per configured peer."""
        config = self.agent.config
        lines = [f"us         {config.agent.ae_title} on {config.agent.bind}:{config.agent.port}"]
        for peer in config.peers.values():
            if peer.web is not None:  # a DICOMweb destination (agent/web)
                lines.append(f"{peer.name:<10} DICOMweb {peer.web.url} auth {peer.web.auth}")
                continue
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
        return echo_reply(echo_peer(self.agent.config, args["peer"]))

    @syntax("preview DEST FILE", "what DEST would receive of a DICOM file: attributes changed")
    def preview(self, args: Args) -> Reply:
        """The differences, one attribute a line; ERR if the instance would be held."""
        result = preview(self.agent.config, args["dest"], Path(args["file"]))
        if result.held:
            return err(result.summary)
        return ok(result.summary, result.lines()[1:])

    @syntax("queue", "forward jobs and MPPS messages per destination: waiting, quarantined")
    def queue(self, args: Args) -> Reply:
        """What ``edge-agent queue`` prints."""
        return queue_reply(list_queue(self._layout(), live=self.agent.status.snapshot()))

    @syntax("queue retry ID...", "re-arm retrying or quarantined jobs: ids, a peer's, or 'all'")
    def queue_retry(self, args: Args) -> Reply:
        """Re-arm jobs (a destination's: its MPPS messages too); the senders take them up
        within seconds."""
        words = args["id"].split()
        if words == ["all"]:
            return queue_reply(retry_jobs(self._layout(), None))
        try:
            ids, destinations = split_targets(words, self.agent.config.peers)
        except AgentError as exc:
            return err(f"usage: queue retry ID... (job numbers), DEST... or all: {exc}")
        return queue_reply(retry_jobs(self._layout(), ids, destinations))

    @syntax("queue purge [yes]", "give up on every quarantined job ('queue purge yes')")
    def queue_purge(self, args: Args) -> Reply:
        """Drop quarantined jobs, once confirmed."""
        if args.get("yes", "").lower() != "yes":
            return err("type 'queue purge yes' to drop every quarantined job for good")
        return queue_reply(purge_jobs(self._layout()))

    @syntax("prefetch PATIENT_ID [PEER]",
            "fetch a patient's prior studies from the PACS (queued: 'queue' shows it)")
    def prefetch(self, args: Args) -> Reply:
        """Queue a prefetch by hand, as ``edge-agent prefetch`` does; the worker takes
        it up within seconds, after what waits to be forwarded."""
        try:
            queued = queue_prefetch(self.agent.config, args["patient_id"], args.get("peer"))
        except AgentError as exc:
            return err(str(exc))
        return ok(queued.lines()[0].removeprefix("OK "), queued.lines()[1:], result=queued)

    @syntax("studies [all]", "arriving and recently complete studies, with the patient's name")
    def studies(self, args: Args) -> Reply:
        """What ``edge-agent studies --phi`` prints (every study with 'all')."""
        word = args.get("all", "")
        if word and word.lower() != "all":
            return err("usage: studies [all]")
        return studies_reply(studies(self._layout(), phi=True, every=bool(word)))

    @syntax("net", "network interfaces: link, addresses, default gateway")
    def net(self, args: Args) -> Reply:
        """One line per interface, then the gateway."""
        lines = [item.describe() for item in netinfo.interfaces()]
        lines.append(f"gateway    {netinfo.default_gateway() or 'none'}")
        lines.append(f"hostname   {socket.gethostname()}")
        return ok(body=lines)

    @syntax("metrics", "the metrics endpoint: on or off, where, token, last scrape")
    def metrics(self, args: Args) -> Reply:
        """What ``edge-agent metrics`` prints, from the live model and configuration."""
        report = metrics_report(self.agent.config, self._layout(), self.agent.status.snapshot())
        lines = report.lines()
        return ok(lines[0].removeprefix("metrics").strip(), lines[1:], result=report)

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
        """Walk every configured LED through its patterns, the agent's own use paused."""
        settings = self.agent.config.leds
        if not settings.pins():
            return err("no LEDs configured: set pins in [leds]")
        out = io.StringIO()
        with self.agent.pause_leds():  # the agent's status LEDs hold the pins
            walk_patterns(settings, out, step=LED_STEP)
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
