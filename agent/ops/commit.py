"""Ask a peer by hand for storage commitment of a study the archive holds, and wait for
its report (on the request's association, or on a new one the peer opens to the running
agent, or, when none runs, to a temporary receiver in this process).

What cannot work is said at once, before anything is asked: a peer without
``commit = true`` (the agent refuses its reports), a study the archive does not hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.archive import Layout
from agent.archive.pacs_commits import COMMITTED, REQUESTED, PacsCommits
from agent.config import Config
from agent.errors import AgentError, ConfigError
from agent.net import commit_scu as commitment
from agent.ops.arguments import COMMIT_TIMEOUT
from agent.ops.retrieve import Lands

RUNNING = ("the running agent", "this agent")  # Landing.where of a receiver that stays
POLL = 0.1  # seconds between looks at the table the running agent writes reports into


@dataclass(frozen=True)
class CommitResult:
    """What a peer's report said about one request (or that none came in time)."""

    peer: str
    requested: int
    committed: int
    failed: dict[str, int]
    unreported: int
    seconds: float = field(compare=False)
    receiver: str = field(default="the running agent", compare=False)  # who took reports

    @property
    def ok(self) -> bool:
        """Every instance was committed."""
        return self.committed == self.requested

    @property
    def summary(self) -> str:
        """One line: who committed how many of how many, and how fast."""
        return (
            f"{self.peer}: {self.committed} committed, {len(self.failed)} failed"
            f" of {self.requested} instances in {self.seconds:.2f} s"
        )

    def lines(self) -> list[str]:
        """The report as the CLI prints it."""
        lines = [f"{'OK' if self.ok else 'FAILED'} {self.summary}"]
        lines += [
            f"  not committed (reason 0x{reason:04X})  {uid}"
            for uid, reason in sorted(self.failed.items())
        ]
        if self.unreported:
            later = (
                "the agent records it if it comes later" if self.receiver in RUNNING
                else "the agent is not running: a later report is taken once it runs, if the"
                " peer sends it again"
            )
            lines.append(f"  {self.unreported} without a report yet ({later})")
        return lines


def commit_study(
    config: Config,
    peer_name: str,
    study_uid: str,
    timeout: float = COMMIT_TIMEOUT,
    *,
    lands: Lands,
) -> CommitResult:
    """Request commitment of a study's archived instances from a configured peer and wait
    up to ``timeout`` s for the report, taken where ``lands`` says (the running agent, or
    a temporary receiver); PeerError if the request fails."""
    peer = config.peers.get(peer_name)
    if peer is None:
        raise ConfigError("", f"{peer_name!r} is not a configured peer")
    if not peer.commit:
        raise ConfigError(
            f"peers.{peer.name}.commit",
            "is not true: the agent refuses this peer's storage commitment reports, so no"
            " report could arrive; set commit = true (and reload the agent) first",
        )
    if not Layout(config.agent.data_dir).index_path.exists():
        raise AgentError("there is no archive yet")
    started = time.monotonic()
    with lands(True) as land:  # True: the peer's report may come on a new association
        commits = land.archive.pacs_commits
        refs = commits.study_references(study_uid)
        if not refs:
            raise AgentError(f"the archive holds no instance of study {study_uid}")
        transaction = commitment.new_transaction_uid()
        commits.asked_by_hand(refs, peer.name, transaction, time.time())
        try:
            commitment.request(config, peer, transaction, refs, commits, wait=timeout)
        except AgentError:
            commits.withdraw(transaction)
            raise
        counts = _wait_for_report(commits, transaction, started + timeout)
        failed = commits.transaction_failures(transaction)
    return CommitResult(
        peer.name,
        len(refs),
        counts.get(COMMITTED, 0),
        failed,
        counts.get(REQUESTED, 0),
        time.monotonic() - started,
        land.where,
    )


def _wait_for_report(commits: PacsCommits, transaction: str, deadline: float) -> dict[str, int]:
    """The transaction's rows per state once none waits for a report, or at the deadline."""
    while True:
        counts = commits.states_of(transaction)
        if not counts.get(REQUESTED) or time.monotonic() >= deadline:
            return counts
        time.sleep(POLL)



