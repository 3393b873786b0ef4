"""C-FIND, C-MOVE and C-GET handlers over the archive (three information models).

Handlers are generators, as pynetdicom wants them. They never raise: a bad identifier
becomes 0xA900 or 0xC000 with an Error Comment, anything unexpected 0xC000 and a log line.
Each request is refused 0x0124 unless the caller may use the service by the configuration
as it is now (``caller_of`` judges it again): a reload acts on open associations too.
With a ``FallThrough`` that takes part, the archive's answers and instances are merged
with the fall-through peers' (``agent.net.qr_merge``).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.presentation import build_context

from agent.archive.query import StoredInstance
from agent.archive.retrieval import Reader
from agent.config import Config, Peer
from agent.dicom.contexts import (
    QR_SOP_CLASSES,
    UNCOMPRESSED,
    VERIFICATION,
    sending_contexts,
    service_of,
)
from agent.dicom.models import Model
from agent.dicom.status import (
    CANCELLED,
    CANNOT_COUNT_MATCHES,
    CANNOT_UNDERSTAND,
    NOT_AUTHORIZED,
    PENDING,
    SUB_OPERATIONS_REFUSED,
)
from agent.errors import PeerError, QueryError
from agent.net.access import Caller
from agent.net.bounds import identifier_of
from agent.net.engine.moves import failed_destination
from agent.net.engine.transport import requestor_handlers
from agent.net.fallthrough_port import FallThrough, NoFallThrough, RemotePull
from agent.net.qr_merge import keyed, latched, merged_answers, merged_sending
from agent.net.scu import (
    PROBE_TIMEOUT,
    Target,
    describe_rejection,
    probe,
    probe_tls,
    rejection_of,
    tls_args,
)
from agent.net.stored import StoredFile, on_accepted, send_as_stored

log = logging.getLogger(__name__)

COMBINED_DATETIME_BYTE = 1  # PS3.4 C.5.1: byte 2 of the Q/R extended negotiation

CallerLookup = Callable[[Any], Caller | None]
VERIFICATION_CX = build_context(VERIFICATION)


def failure(status: int, comment: str) -> Dataset:
    """A status data set with an Error Comment (LO: at most 64 characters)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


def refusal(caller: Caller | None, service: str, what: str) -> Dataset | None:
    """A 0x0124 failure if ``caller`` may not use ``service`` now (None: it may), logged."""
    if caller is not None and caller.may(service):
        return None
    log.warning("refused %s from %s: not allowed (0x%04X)", what, caller, NOT_AUTHORIZED)
    return failure(NOT_AUTHORIZED, f"{what} is not allowed for this AE title")


def model_of(event: Any) -> Model:
    """The information model of the request's SOP class."""
    return Model(QR_SOP_CLASSES[str(event.request.AffectedSOPClassUID)][0])


class QueryRetrieveHandlers:
    """C-FIND, C-MOVE and C-GET for admitted callers."""

    def __init__(
        self,
        current: Callable[[], Config],
        reader: Reader,
        caller_of: CallerLookup,
        find_took: Callable[[float], None] = lambda seconds: None,
        fall_through: FallThrough | None = None,
    ) -> None:
        self.current = current  # the configuration in force (move destinations)
        self.reader = reader
        self.caller_of = caller_of
        self.find_took = find_took  # told each C-FIND's time, request to final response
        self.fall_through = fall_through or NoFallThrough()
        self._combined: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()

    def on_sop_extended(self, event: Any) -> dict[str, bytes]:
        """Accept combined date-time matching for C-FIND; decline the other options, and
        every option if the request cannot be read (pynetdicom would only log it)."""
        try:
            return self._extended(event)
        except Exception:
            log.exception("could not read the extended negotiation; every option declined")
            self._combined.pop(event.assoc, None)
            return {}

    def _extended(self, event: Any) -> dict[str, bytes]:
        accepted: dict[str, bytes] = {}
        for sop_class, info in event.app_info.items():
            if service_of(str(sop_class)) != "find" or len(info) < 2:
                continue
            reply = bytearray(len(info))
            reply[COMBINED_DATETIME_BYTE] = info[COMBINED_DATETIME_BYTE] & 1
            accepted[str(sop_class)] = bytes(reply)
            if reply[COMBINED_DATETIME_BYTE]:
                self._combined.setdefault(event.assoc, set()).add(str(sop_class))
        return accepted

    def on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """Stream matches as Pending; stop at C-CANCEL; failures with an Error Comment.
        The time until the final response (the generator's end) is told to ``find_took``."""
        started = time.monotonic()
        try:
            yield from self._find(event)
        finally:
            self.find_took(time.monotonic() - started)

    def _find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        caller = self.caller_of(event.assoc)
        refused = refusal(caller, "find", "C-FIND")
        if refused is not None:
            yield refused, None
            return
        started = time.monotonic()
        remote = None
        try:
            model = model_of(event)
            combined = str(event.request.AffectedSOPClassUID) in self._combined.get(
                event.assoc, set()
            )
            identifier = identifier_of(event)
            remote = self.fall_through.find(caller, model, identifier)  # asked after ours
            if remote is not None:
                identifier, key = keyed(identifier)
                answers = self.reader.find(model, identifier, combined_datetime=combined)
                yield from merged_answers(
                    answers, remote, key=key, ae_title=self.reader.ae_title,
                    until=started + self.current().qr.fall_through_timeout,
                    cancelled=latched(lambda: event.is_cancelled), caller=caller,
                )
                return
            answers = self.reader.find(model, identifier, combined_datetime=combined)
            count = 0
            for answer in answers:
                if event.is_cancelled:
                    log.info("C-FIND from %s cancelled after %d answers", caller, count)
                    yield CANCELLED, None
                    return
                count += 1
                yield PENDING, answer
        except QueryError as exc:
            log.warning("C-FIND from %s refused 0x%04X: %s", caller, exc.status, exc)
            yield failure(exc.status, str(exc)), None
            return
        except Exception:
            log.exception("C-FIND from %s failed", caller)
            yield failure(CANNOT_UNDERSTAND, "unable to process the query"), None
            return
        finally:
            if remote is not None:
                remote.close()
        log.debug("C-FIND from %s: %d answers", caller, count)  # info cost a tenth of a query

    def on_move(self, event: Any) -> Iterator[Any]:
        """Send matches to a configured peer: destination, count, then data sets."""
        caller = self.caller_of(event.assoc)
        destination = self.current().peer_by_ae(str(event.move_destination).strip())
        if destination is None:
            log.warning(
                "C-MOVE from %s to unknown destination %r refused (0xA801)",
                caller,
                str(event.move_destination).strip(),
            )
            yield None, None
            return
        try:
            secure = tls_args(self.current(), destination)  # None unless its tls = true
        except PeerError as exc:
            log.warning("C-MOVE from %s refused (0xA801): %s", caller, exc)
            yield None, None
            return
        options: dict[str, Any] = {
            "evt_handlers": [*requestor_handlers(), (evt.EVT_ACCEPTED, on_accepted)],
            "tls_args": secure,
        }
        found, pull = self._resolve_all(event, caller, "move")
        failed_destination()  # none left over from an earlier C-MOVE on this association
        if isinstance(found, Dataset):
            # pynetdicom takes a status only after the destination and a count
            yield destination.host, destination.port, {**options, "contexts": [VERIFICATION_CX]}
            yield 1
            failed_destination()  # our status goes out whether or not it came up
            yield found, None
            return
        try:
            pairs = [(i.sop_class_uid, i.transfer_syntax) for i in found]
            if pull is not None:  # their syntaxes are known once they land: uncompressed
                pairs += [(c, s) for c in pull.sop_classes for s in UNCOMPRESSED[:1]]
            contexts = sending_contexts(pairs)
            yield destination.host, destination.port, {**options, "contexts": contexts}
            yield len(found) + (len(pull.uids) if pull is not None else 0)
            failed = failed_destination()
            if failed is not None:
                uids = [i.sop_instance_uid for i in found] + list(pull.uids if pull else ())
                yield unreachable(caller, destination, failed, secure, uids)
                return
            yield from self._send(event, found, pull, caller, f"C-MOVE to {destination.name}")
        finally:
            if pull is not None:
                pull.close()

    def on_get(self, event: Any) -> Iterator[Any]:
        """Send matches back over the same association: count, then data sets."""
        caller = self.caller_of(event.assoc)
        found, pull = self._resolve_all(event, caller, "get")
        if isinstance(found, Dataset):
            yield 1
            yield found, None
            return
        try:
            send_as_stored(event.assoc)
            yield len(found) + (len(pull.uids) if pull is not None else 0)
            yield from self._send(event, found, pull, caller, "C-GET")
        finally:
            if pull is not None:
                pull.close()

    def _resolve_all(
        self, event: Any, caller: Caller | None, service: str
    ) -> tuple[list[StoredInstance] | Dataset, RemotePull | None]:
        """What the archive holds (or a failure status), and the pull of what it does not
        from the fall-through peers (None: nothing to pull). With nothing here and peers
        that cannot say what they hold: 0xA701, the matches cannot be counted."""
        found = self._resolve(event, caller, service)
        if isinstance(found, Dataset):
            return found, None
        what = f"C-{service.upper()}"
        held = {i.sop_instance_uid for i in found}
        try:
            pull = self.fall_through.pull(caller, identifier_of(event), held)
        except PeerError as exc:
            if found:
                log.warning("%s from %s: only what the archive holds is sent; the "
                            "fall-through peers cannot say what they hold: %s", what, caller, exc)
                return found, None
            log.warning("%s from %s refused 0x%04X: %s", what, caller, CANNOT_COUNT_MATCHES, exc)
            return failure(CANNOT_COUNT_MATCHES, str(exc)), None
        if pull is not None:
            log.info("%s from %s: %d instances held, %d being pulled", what, caller,
                     len(found), len(pull.uids))
        return found, pull

    def _resolve(
        self, event: Any, caller: Caller | None, service: str
    ) -> list[StoredInstance] | Dataset:
        """The instances to send, or a failure status data set (the caller's rights first)."""
        what = f"C-{service.upper()}"
        refused = refusal(caller, service, what)
        if refused is not None:
            return refused
        try:
            instances = self.reader.resolve(model_of(event), identifier_of(event))
        except QueryError as exc:
            log.warning("%s from %s refused 0x%04X: %s", what, caller, exc.status, exc)
            return failure(exc.status, str(exc))
        except Exception:
            log.exception("%s from %s could not be resolved", what, caller)
            return failure(CANNOT_UNDERSTAND, "unable to process the identifier")
        log.info("%s from %s: %d instances", what, caller, len(instances))
        return instances

    def _send(
        self,
        event: Any,
        instances: list[StoredInstance],
        pull: RemotePull | None,
        caller: Caller | None,
        what: str,
    ) -> Iterator[tuple[int, Dataset | None]]:
        if pull is not None:
            yield from merged_sending(instances, pull, self.reader, caller=caller, what=what,
                                      cancelled=latched(lambda: event.is_cancelled))
            return
        paths = map(self.reader.path_of, instances)
        following = next(paths, None)
        for instance in instances:
            if event.is_cancelled:
                log.info("%s from %s cancelled", what, caller)
                yield CANCELLED, None
                return
            path, following = following, next(paths, None)
            assert path is not None  # one path per instance
            stored = StoredFile(
                path,
                instance.sop_class_uid,
                instance.sop_instance_uid,
                instance.transfer_syntax,
                following=following,  # read while the peer stores this one
            )
            yield PENDING, stored


def unreachable(
    caller: Caller | None,
    destination: Peer,
    failed: Any,
    secure: Any,
    uids: list[str],
) -> tuple[Dataset, Dataset]:
    """The final C-MOVE response when a configured destination cannot be reached:
    0xA702 and every instance as failed (PS3.4 C.4.2.1.4; 0xA801 is for a destination
    we do not know), and one log line naming the destination, its address and why."""
    target = Target(destination.ae_title, destination.host, destination.port, destination.name)
    why = why_unreachable(failed, target, secure)
    log.warning(
        "C-MOVE from %s: cannot reach the destination %s: %s; %d instances not sent (0x%04X)",
        caller, target, why, len(uids), SUB_OPERATIONS_REFUSED,
    )
    status = failure(SUB_OPERATIONS_REFUSED, f"{destination.ae_title}: {why.split(': ')[0]}")
    identifier = Dataset()
    identifier.FailedSOPInstanceUIDList = uids
    return status, identifier


def why_unreachable(failed: Any, target: Target, secure: Any) -> str:
    """Why the association to a move destination did not come up, in words: its
    rejection, else what a plain (or TLS) connection attempt finds."""
    rejection = rejection_of(failed)
    if rejection is not None:
        return describe_rejection(rejection)
    if secure is not None:
        return probe_tls(target, secure, PROBE_TIMEOUT)
    return probe(target, PROBE_TIMEOUT)
