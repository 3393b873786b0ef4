"""Answers from the archive and from the fall-through peers, as one C-FIND or one
C-MOVE/C-GET (``agent.net.qr`` calls these only when a ``FallThrough`` took part).

C-FIND: the local answers go out first (the peers are asked after), each marked ONLINE
with our AE title as the Retrieve AE Title (a retrieve through the box works for both
kinds); then the remote ones, NEARLINE, those whose unique key at the query level was
already answered dropped.
The remote part ends at ``until``; if it is incomplete, the final status is 0xB001
(Warning, PS3.4 C.4.1.1.4: a later request may return more matches) with the reason as
Error Comment.

C-MOVE/C-GET: what the archive holds is sent at once; each pulled instance is sent as it
lands, ahead of the local ones still waiting; what never lands is one failed
sub-operation each (``NotRetrieved``), so the final status is 0xB000 with exactly
those UIDs in the Failed SOP Instance UID List.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from agent.archive.keys import UNIQUE_KEYS
from agent.archive.query import StoredInstance
from agent.archive.retrieval import Reader
from agent.dicom.models import Level
from agent.dicom.status import CANCELLED, MATCHES_MAY_BE_MISSING, PENDING
from agent.net.access import Caller
from agent.net.fallthrough_port import RemoteFind, RemotePull
from agent.net.stored import NotRetrieved, StoredFile

log = logging.getLogger(__name__)

ONLINE, NEARLINE = "ONLINE", "NEARLINE"
RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY = 0x00080054, 0x00080056
WAIT_STEP = 0.1  # how often a wait for the peers looks whether the requester cancelled

Response = tuple[int | Dataset, Dataset | None]


def keyed(identifier: Dataset) -> tuple[Dataset, str]:
    """A copy of ``identifier`` that asks for its level's unique key (answers from two
    sources are told apart by it), and that key's keyword."""
    copy = Dataset()
    copy.update(identifier)
    try:
        level = Level(str(identifier.get("QueryRetrieveLevel", "")).strip())
    except ValueError:  # the archive's query says what is wrong with it, in its status
        return copy, "QueryRetrieveLevel"
    keyword = UNIQUE_KEYS[level]
    if keyword not in copy:
        setattr(copy, keyword, "")
    return copy, keyword


def latched(check: Callable[[], bool]) -> Callable[[], bool]:
    """``check`` that stays true once it was: pynetdicom's ``is_cancelled`` answers True
    once per C-CANCEL, and a merged answer asks it in more than one place."""
    seen = False

    def cancelled() -> bool:
        nonlocal seen
        seen = seen or bool(check())
        return seen

    return cancelled


def mark(answer: Dataset, ae_title: str, availability: str) -> Dataset:
    """Where the answer's entity can be retrieved (through us) and how soon (by tag:
    a keyword lookup per element would cost a tenth of a local answer)."""
    answer[RETRIEVE_AE_TITLE] = DataElement(RETRIEVE_AE_TITLE, "AE", ae_title)
    answer[INSTANCE_AVAILABILITY] = DataElement(INSTANCE_AVAILABILITY, "CS", availability)
    return answer


def merged_answers(
    local: Iterator[Dataset],
    remote: RemoteFind,
    *,
    key: str,
    ae_title: str,
    until: float,
    cancelled: Callable[[], bool],
    caller: Caller | None,
) -> Iterator[Response]:
    """The C-FIND responses after the request was judged: pending answers, then a Cancel
    or a 0xB001 status when the remote part is incomplete (else nothing: Success)."""
    seen: set[str] = set()
    for answer in local:
        if cancelled():
            yield CANCELLED, None
            return
        seen.add(str(answer.get(key, "")))
        yield PENDING, mark(answer, ae_title, ONLINE)
    remote.start()
    added = 0
    for answer in remote.answers(until, cancelled):
        value = str(answer.get(key, ""))
        if value in seen:
            continue
        seen.add(value)
        added += 1
        yield PENDING, mark(answer, ae_title, NEARLINE)
    if cancelled():
        yield CANCELLED, None
        return
    why = remote.incomplete()
    log.debug("C-FIND from %s: %d answers from the fall-through peers", caller, added)
    if why:
        log.warning("C-FIND from %s answered without all of the fall-through part: %s",
                    caller, why)
        status = Dataset()
        status.Status = MATCHES_MAY_BE_MISSING
        status.ErrorComment = why[:64]
        yield status, None


def merged_sending(
    local: list[StoredInstance],
    pull: RemotePull,
    reader: Reader,
    *,
    cancelled: Callable[[], bool],
    what: str,
    caller: Caller | None,
) -> Iterator[Any]:
    """Pending (status, StoredFile) pairs for ``len(local) + len(pull.uids)``
    sub-operations: each pulled instance as it is archived, else the next local one;
    then a ``NotRetrieved`` for each that did not come."""
    waiting_local = deque(local)
    waiting_remote = set(pull.uids)
    while waiting_local or waiting_remote:
        if cancelled():
            log.info("%s from %s cancelled", what, caller)
            yield CANCELLED, None
            return
        landed = pull.next(0 if waiting_local else WAIT_STEP) if waiting_remote else None
        if landed is not None and landed in waiting_remote:
            waiting_remote.discard(landed)
            yield from _held(reader, landed)
        elif landed is None and waiting_local:
            yield PENDING, _stored(reader, waiting_local.popleft())
        elif landed is None and pull.finished() is not None:
            yield from _drained(reader, pull, waiting_remote)


def _held(reader: Reader, uid: str) -> Iterator[Response]:
    """A landed instance, as the archive holds it (gone again already: a failure)."""
    found = reader.held([uid])
    if found:
        yield PENDING, _stored(reader, found[0])
    else:
        yield PENDING, NotRetrieved(uid, "it left the archive before it could be sent")


def _drained(reader: Reader, pull: RemotePull, waiting: set[str]) -> Iterator[Response]:
    """The pull has ended: what still landed, then a failure for each that did not."""
    while (landed := pull.next(0)) is not None:
        if landed in waiting:
            waiting.discard(landed)
            yield from _held(reader, landed)
    why = pull.finished() or "the peer did not send it"
    for uid in sorted(waiting):
        yield PENDING, NotRetrieved(uid, why)
    waiting.clear()


def _stored(reader: Reader, instance: StoredInstance) -> StoredFile:
    return StoredFile(
        reader.path_of(instance),
        instance.sop_class_uid,
        instance.sop_instance_uid,
        instance.transfer_syntax,
    )
