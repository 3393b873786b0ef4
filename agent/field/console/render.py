"""The shared operations' result objects as console replies (each reply keeps its result)."""

from __future__ import annotations

from agent.field.console.table import Reply, err, ok
from agent.ops.commit import CommitResult
from agent.ops.echo import EchoResult
from agent.ops.find import FindReport
from agent.ops.queue import QueueChange, QueueListing
from agent.ops.retrieve import RetrieveReport
from agent.ops.status import StatusReport
from agent.ops.studies import StudiesListing


def status_reply(report: StatusReport, state: str) -> Reply:
    """The status report, headed by the live state."""
    return ok(state, report.lines(), result=report)


def queue_reply(result: QueueListing | QueueChange) -> Reply:
    """The listing as body lines, or a retry's or purge's summary as the headline."""
    if isinstance(result, QueueChange) and result.archive:
        return (ok if result.ok else err)(result.summary, result=result)
    return ok(body=result.lines(), result=result)


def studies_reply(listing: StudiesListing) -> Reply:
    """The studies as body lines."""
    return ok(body=listing.lines(), result=listing)


def echo_reply(result: EchoResult) -> Reply:
    """Who answered and how fast."""
    return ok(result.summary, result=result)


def find_reply(report: FindReport, *, as_json: bool) -> Reply:
    """The matches (a table or DICOM JSON); a failure's summary as the ERR line."""
    if as_json:
        body = report.json_lines()
        if report.succeeded:
            return ok(body=body, result=report)
        return err(report.summary, body, result=report)
    lines = report.lines()
    if report.succeeded:
        return ok(body=lines, result=report)
    return err(lines[-1], lines[:-1], result=report)


def retrieve_reply(report: RetrieveReport) -> Reply:
    """Counts and the final status; ERR on the first line when anything failed."""
    lines = report.lines()
    if report.succeeded:
        return ok(body=lines, result=report)
    return err(lines[-1], lines[:-1], result=report)


def commit_reply(result: CommitResult) -> Reply:
    """The report's counts; ERR on the first line unless every instance was committed."""
    details = result.lines()[1:]
    if result.ok:
        return ok(result.summary, details, result=result)
    return err(result.summary, details, result=result)
