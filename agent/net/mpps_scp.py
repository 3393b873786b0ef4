"""Modality Performed Procedure Step SCP (PS3.4 F.7): the modality's N-CREATE when a
procedure starts and its N-SETs until it is COMPLETED or DISCONTINUED.

Each request is judged by the rules of agent/dicom/mpps.py, recorded in the index
(synced) before it is answered, and a refused one records nothing. When a step becomes
final, ``on_final`` hears of it with the studies and instances it names (study
completeness listens there). Each request taken is queued, in the same transaction, for
the ``forward.mpps_to`` peers (agent/forward/mpps.py passes it on). The handlers never
raise: any failure is a status.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from agent.archive import Archive, mpps, prefetch_jobs
from agent.dicom import mpps as rules
from agent.dicom.contexts import MPPS
from agent.dicom.status import (
    DUPLICATE_SOP_INSTANCE,
    NO_SUCH_OBJECT_INSTANCE,
    NO_SUCH_SOP_CLASS,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    SUCCESS,
)
from agent.net.access import Caller

log = logging.getLogger(__name__)

# on_final(step_uid, study_uids, sop_instance_uids, discontinued): a step became final
FinalCallback = Callable[[str, tuple[str, ...], frozenset[str], bool], None]
Answer = tuple[int | Dataset, Dataset | None]
CHARSET_TAG = "00080005"  # Specific Character Set: JSON holds Unicode, so ISO_IR 192
UNICODE = {"vr": "CS", "Value": ["ISO_IR 192"]}


def _nobody(uid: str, studies: tuple[str, ...], instances: frozenset[str], stop: bool) -> None:
    """The default ``on_final``: nobody listens."""


class MppsHandler:
    """EVT_N_CREATE and EVT_N_SET of the MPPS SOP Class, for callers allowed "mpps".

    ``mpps_to`` names the peers each request taken is queued for (read per request: a
    reload takes effect at once); ``wake`` tells their sender that one was queued.
    """

    def __init__(
        self,
        archive: Archive,
        caller_now: Callable[[Any], Caller | None],
        on_final: FinalCallback | None = None,
        clock: Callable[[], float] = time.time,
        *,
        mpps_to: Callable[[], tuple[str, ...]] = tuple,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.archive = archive
        self.caller_now = caller_now
        self.on_final = on_final or _nobody
        self.clock = clock
        self.mpps_to = mpps_to
        self.wake = wake

    def on_n_create(self, event: Any) -> Answer:
        """N-CREATE: a new step, IN PROGRESS; the SCP names it if the SCU did not."""
        try:
            return self._create(event)
        except Exception:
            log.exception("an MPPS N-CREATE could not be recorded; answered 0x0110")
            return _failure(rules.Refusal(PROCESSING_FAILURE, "could not be recorded")), None

    def on_n_set(self, event: Any) -> Answer:
        """N-SET: merge the changes into a step IN PROGRESS; final once COMPLETED or
        DISCONTINUED."""
        try:
            return self._set(event)
        except Exception:
            log.exception("an MPPS N-SET could not be recorded; answered 0x0110")
            return _failure(rules.Refusal(PROCESSING_FAILURE, "could not be recorded")), None

    def _allowed(self, event: Any, sop_class: Any, what: str) -> int | None:
        """The refusal status for a caller without "mpps" or another SOP class."""
        caller = self.caller_now(event.assoc)
        if caller is None or not caller.may("mpps"):
            log.warning("refused MPPS %s from %s: not allowed", what, caller)
            return NOT_AUTHORIZED
        if str(sop_class) != MPPS:
            return NO_SUCH_SOP_CLASS
        return None

    def _create(self, event: Any) -> Answer:
        request = event.request
        refused = self._allowed(event, request.AffectedSOPClassUID, "N-CREATE")
        if refused is not None:
            return refused, None
        caller = self.caller_now(event.assoc)
        assert caller is not None
        ds = event.attribute_list
        refusal = rules.check_create(ds)
        if refusal is not None:
            return _refused("N-CREATE", caller, refusal), None
        given = request.AffectedSOPInstanceUID
        uid = str(given) if given else generate_uid()
        now = self.clock()
        received = _dump(_as_json(ds))
        step = mpps.Step(
            uid=uid,
            status=rules.IN_PROGRESS,
            calling_ae=caller.ae_title,
            study_uids=rules.study_uids(ds),
            instance_uids=rules.instance_uids(ds),
            created_at=now,
            updated_at=now,
            final_at=None,
            attributes=received,
        )
        forward = mpps.Forward(self.mpps_to(), received)
        prefetch = self._prefetch(ds, uid, caller.ae_title)
        if not mpps.create(self.archive.index, step, forward, prefetch):
            duplicate = rules.Refusal(DUPLICATE_SOP_INSTANCE, "step exists already")
            return _refused("N-CREATE", caller, duplicate), None
        log.info("MPPS step %s IN PROGRESS, from %s", uid, caller)
        self._queued(forward)
        if prefetch:
            self.archive.prefetching.queued()
        if given:
            return SUCCESS, None
        named = Dataset()  # pynetdicom moves it into the response's command set
        named.AffectedSOPInstanceUID = uid
        return SUCCESS, named

    def _set(self, event: Any) -> Answer:
        request = event.request
        refused = self._allowed(event, request.RequestedSOPClassUID, "N-SET")
        if refused is not None:
            return refused, None
        caller = self.caller_now(event.assoc)
        assert caller is not None
        uid = str(request.RequestedSOPInstanceUID)
        changes = event.modification_list
        refusal = rules.check_set(changes)
        now = self.clock()
        received = _as_json(changes)
        forward = mpps.Forward(self.mpps_to(), _dump(received))

        def change(step: mpps.Step) -> mpps.Step | rules.Refusal:
            return refusal or _merged(step, received, now)

        outcome = mpps.update(self.archive.index, uid, change, forward)
        if outcome is None:
            unknown = rules.Refusal(NO_SUCH_OBJECT_INSTANCE, "no such step")
            return _refused("N-SET", caller, unknown), None
        if isinstance(outcome, rules.Refusal):
            return _refused("N-SET", caller, outcome), None
        log.info("MPPS step %s %s, from %s", uid, outcome.status, caller)
        self._queued(forward)
        if outcome.status in rules.FINAL:
            self._tell_final(outcome)
        return SUCCESS, None

    def _prefetch(
        self, ds: Dataset, step_uid: str, calling_ae: str
    ) -> list[prefetch_jobs.Trigger]:
        """The prefetch jobs an N-CREATE announces (``[[prefetch]]`` rules naming its
        sender): one per PACS and per study it schedules (the step itself when it names
        none), for the patient it names, with the modality it performs."""
        sources = self.archive.prefetching.priors_from(calling_ae)
        if not sources:
            return []
        modality = str(ds.get("Modality", "") or "").strip().upper()
        return [
            prefetch_jobs.Trigger(
                patient_id=str(ds.get("PatientID", "") or ""),
                trigger_study=study,
                trigger=prefetch_jobs.MPPS,
                source=calling_ae,
                priors_from=source,
                modalities=(modality,) if modality else (),
                study_date=str(ds.get("PerformedProcedureStepStartDate", "") or "").strip(),
            )
            for source in sources
            for study in rules.study_uids(ds) or (step_uid,)
        ]

    def _queued(self, forward: mpps.Forward) -> None:
        if forward.destinations:
            self.wake()

    def _tell_final(self, step: mpps.Step) -> None:
        """Call ``on_final``; its failure is logged, the step stays recorded and answered."""
        try:
            self.on_final(
                step.uid, step.study_uids, step.instance_uids, step.status == rules.DISCONTINUED
            )
        except Exception:
            log.exception("MPPS step %s is final, but telling it failed", step.uid)


def _merged(step: mpps.Step, changes: dict[str, Any], now: float) -> mpps.Step | rules.Refusal:
    """The step with an N-SET's changes, or why it may not have them: it is final already,
    or it would become final without the attributes that requires."""
    if step.status != rules.IN_PROGRESS:
        return rules.FINAL_ALREADY
    attributes = json.loads(step.attributes)
    attributes.update(changes)  # a sequence is replaced whole, as the SCU sends it whole
    ds = Dataset.from_json(attributes)
    status = rules.status_of(ds)
    final = status in rules.FINAL
    if final:
        refusal = rules.check_final(ds)
        if refusal is not None:
            return refusal
    return replace(
        step,
        status=status,
        study_uids=rules.study_uids(ds),
        instance_uids=rules.instance_uids(ds),
        updated_at=now,
        final_at=now if final else None,
        attributes=_dump(attributes),
    )


def _as_json(ds: Dataset) -> dict[str, Any]:
    """A received data set as DICOM JSON: its text decoded by its own character set."""
    found: dict[str, Any] = ds.to_json_dict()
    found.pop(CHARSET_TAG, None)
    return found


def _dump(attributes: dict[str, Any]) -> str:
    return json.dumps({**attributes, CHARSET_TAG: UNICODE}, sort_keys=True)


def _refused(what: str, caller: Caller, refusal: rules.Refusal) -> Dataset:
    log.warning("refused MPPS %s from %s: 0x%04X %s", what, caller, refusal.status, refusal.comment)
    return _failure(refusal)


def _failure(refusal: rules.Refusal) -> Dataset:
    """The response's status with its Error Comment (and Error ID where one is named)."""
    status = Dataset()
    status.Status = refusal.status
    status.ErrorComment = refusal.comment
    if refusal.error_id is not None:
        status.ErrorID = refusal.error_id
    return status
