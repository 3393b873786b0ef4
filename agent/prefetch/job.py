"""One prefetch job: ask the PACS for the patient's studies, choose the priors, pull
them one study at a time through ``agent.pull`` (the path ``edge-agent retrieve`` takes).

Each pull is a C-MOVE to this agent's own Storage SCP; when the PACS answers 0xA801 (it
does not know this agent as a move destination) the job goes on by C-GET, as it does
when the PACS is not allowed to store here at all. Orthanc 1.10 says 0xC000 instead of
0xA801 for a destination it does not know, so any failure status of a C-MOVE that moved
nothing is taken the same way: one C-GET of that study, then C-GET for the rest.

Before the query and before each study, ``yield_first`` waits while forwarding has work
due (``agent.prefetch.worker``): the job holds at most one association, and only between
the forwards.

The megabyte limit is counted on the bytes that actually landed: a study is pulled while
the job has landed less than ``max_megabytes``, so the study that crosses the limit is
the last one. ``max_studies`` and ``max_megabytes`` count over every attempt of the job.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.tag import Tag

from agent.archive.prefetch_jobs import Job, PrefetchQueue
from agent.config import Config
from agent.dicom.models import Level
from agent.errors import ConfigError, PeerError
from agent.net.scu import Target, resolve_target
from agent.prefetch.choose import Candidate, candidates, choose, reference_day
from agent.prefetch.settings import PrefetchRule
from agent.prefetch.triggers import rule_for
from agent.pull import Landing, check_pull, pull
from agent.qr.find import find
from agent.qr.identifiers import FindRequest, Key, RetrieveRequest
from agent.qr.retrieve import Method, Progress

log = logging.getLogger(__name__)

MEGABYTE = 1048576
RETURN_KEYS = ("StudyDate", "StudyTime", "ModalitiesInStudy",
               "NumberOfStudyRelatedInstances", "StudyInstanceUID")


class JobFailed(Exception):
    """The job cannot succeed as configured (no rule, an unknown peer, a refusal)."""


class Transient(Exception):
    """The job may succeed later (the PACS is down, busy, or failed to answer)."""


@dataclass(frozen=True)
class Context:
    """What a job runs with, besides its configuration and its row."""

    land: Landing
    queue: PrefetchQueue
    yield_first: Callable[[], None]  # waits while forwarding has work due
    today: Callable[[], dt.date]
    clock_trusted: Callable[[], bool]
    clock: Callable[[], float]
    on_progress: Callable[[Progress], None]  # may raise to stop a pull (the agent stops)
    timeout: float = 60.0


def run_job(config: Config, job: Job, ctx: Context) -> str | None:
    """Fetch the job's priors; None when every chosen study landed whole, else what did
    not. Raises Transient (retry later) or JobFailed (give up)."""
    rule = rule_for(config, job)
    if rule is None:
        raise JobFailed(f"no [[prefetch]] rule pulls from {job.priors_from} for its sender")
    try:
        target = resolve_target(config, job.priors_from)
    except ConfigError as exc:
        raise JobFailed(str(exc)) from None
    ctx.yield_first()
    ctx.queue.started(job.pk, ctx.clock())
    chosen = _choose(config, target, job, rule, ctx)
    log.info("prefetch #%d: %d studies chosen from %s", job.pk, len(chosen), target)
    return _pull_all(config, target, job, rule, chosen, ctx)


def _choose(
    config: Config, target: Target, job: Job, rule: PrefetchRule, ctx: Context
) -> list[Candidate]:
    """C-FIND at STUDY level for the patient; the priors the rule keeps."""
    keys = (Key(Tag("PatientID"), job.patient_id),
            *(Key(Tag(keyword), "") for keyword in RETURN_KEYS))
    request = FindRequest(level=Level.STUDY, keys=keys, only=True)
    try:
        found = find(config, target, request, timeout=ctx.timeout)
    except PeerError as exc:
        raise Transient(str(exc)) from None
    if not found.outcome.succeeded:
        raise Transient(f"C-FIND: {found.outcome}")
    answered = candidates(found.matches)
    modalities = set(job.modalities)
    if job.trigger_study:
        modalities |= ctx.queue.study_modalities(job.trigger_study)
    day = reference_day(ctx.clock_trusted(), ctx.today(), job.study_date, answered)
    return choose(
        answered, rule, trigger_study=job.trigger_study, trigger_modalities=modalities,
        held=ctx.queue.held_studies([c.study_uid for c in answered]), today=day,
        limit=rule.max_studies - job.studies,
    )


def _pull_all(
    config: Config, target: Target, job: Job, rule: PrefetchRule,
    chosen: list[Candidate], ctx: Context,
) -> str | None:
    """Pull the chosen studies newest first, until the megabytes are spent."""
    method = _method(config, target)
    budget = rule.max_megabytes * MEGABYTE - job.bytes
    incomplete: list[str] = []
    for candidate in chosen:
        if budget <= 0:
            log.info("prefetch #%d: %d MB landed, the limit: no more studies",
                     job.pk, rule.max_megabytes)
            break
        ctx.yield_first()
        method, problem = _pull_study(config, target, candidate.study_uid, method, ctx)
        size = ctx.queue.study_bytes(candidate.study_uid)
        ctx.queue.landed(job.pk, 1 if size else 0, size)
        budget -= size
        if problem:
            incomplete.append(f"{candidate.study_uid}: {problem}")
    if incomplete:
        return f"{len(incomplete)} of {len(chosen)} studies incomplete; " + "; ".join(incomplete)
    return None


def _method(config: Config, target: Target) -> Method:
    """C-MOVE if the PACS may store here (its sub-operations need that), else C-GET."""
    try:
        check_pull(config, target, "move", None)
    except ConfigError:
        return "get"
    return "move"


def _pull_study(
    config: Config, target: Target, study_uid: str, method: Method, ctx: Context
) -> tuple[Method, str | None]:
    """Pull one study; the method that worked (C-GET after a 0xA801) and what went wrong."""
    request = RetrieveRequest(keys=(Key(Tag("StudyInstanceUID"), study_uid),))
    try:
        result = pull(config, target, request, method=method, land=ctx.land,
                      on_progress=ctx.on_progress, timeout=ctx.timeout)
        if method == "move" and result.retrieved.moved_nothing:
            log.warning("prefetch: %s refused the C-MOVE to %s (%s): fetching by C-GET",
                        target, config.agent.ae_title, result.retrieved.outcome)
            method = "get"
            result = pull(config, target, request, method=method, land=ctx.land,
                          on_progress=ctx.on_progress, timeout=ctx.timeout)
    except PeerError as exc:
        raise Transient(str(exc)) from None
    if result.retrieved.complete:
        return method, None
    return method, str(result.retrieved.outcome)

