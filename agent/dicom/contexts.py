"""Presentation contexts: what the agent accepts as an SCP and proposes as an SCU.

Instances are stored as they arrive, in whatever of these transfer syntaxes the sender
proposes: no transcoding on receipt. Deflated Explicit VR Little Endian is left out on
purpose: inflating it to read the header could take far more memory than was sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from pydicom import uid
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context

from agent.dicom.models import Model

log = logging.getLogger(__name__)

STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
    uid.MPEG2MPML,
    uid.MPEG2MPHL,
    uid.MPEG4HP41,
    uid.MPEG4HP41BD,
)

UNCOMPRESSED: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
)

STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(
    str(cx.abstract_syntax) for cx in AllStoragePresentationContexts
)
# the storage classes most archives hold, for instances whose class a peer did not say
# (dcmqrscp answers no SOP Class UID at the image level): contexts are proposed for these
COMMON_STORAGE_CLASSES: tuple[str, ...] = tuple(
    f"1.2.840.10008.5.1.4.1.1.{suffix}" for suffix in (
        "1", "1.1", "1.1.1", "1.2", "1.2.1", "2", "2.1", "3.1", "4", "4.1", "6.1", "7",
        "7.4", "12.1", "12.2", "20", "128", "481.1", "88.11", "88.22", "88.33", "88.59",
        "104.1", "11.1",
    )
)
VERIFICATION = "1.2.840.10008.1.1"
# Storage Commitment Push Model (PS3.4 Annex J): the SOP class and its well-known instance
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
# Modality Performed Procedure Step (PS3.4 Annex F): N-CREATE and N-SET
MPPS = "1.2.840.10008.3.1.2.3.3"
COMMITMENT_REQUEST = 1  # N-ACTION Action Type ID: request storage commitment
ALL_COMMITTED, SOME_FAILED = 1, 2  # N-EVENT-REPORT Event Type IDs

_QR_BASE = "1.2.840.10008.5.1.4.1.2"
# (model, service) for each Query/Retrieve SOP class: .1 Patient Root, .2 Study Root,
# .3 Patient/Study Only; then .1 FIND, .2 MOVE, .3 GET
QR_SOP_CLASSES: dict[str, tuple[Model, str]] = {
    f"{_QR_BASE}.{m}.{s}": (model, service)
    for m, model in ((1, Model.PATIENT_ROOT), (2, Model.STUDY_ROOT), (3, Model.PATIENT_STUDY_ONLY))
    for s, service in ((1, "find"), (2, "move"), (3, "get"))
}


def service_of(abstract_syntax: str) -> str:
    """Which permission (echo, store, find, move, get, commit, mpps) a context needs."""
    if abstract_syntax == VERIFICATION:
        return "echo"
    if abstract_syntax == STORAGE_COMMITMENT:
        return "commit"
    if abstract_syntax == MPPS:
        return "mpps"
    if abstract_syntax in QR_SOP_CLASSES:
        return QR_SOP_CLASSES[abstract_syntax][1]
    return "store"


def qr_sop_class(model: Model | str, service: str) -> str:
    """The Query/Retrieve SOP Class UID of a model (``STUDY_ROOT``...) and service (``find``...)."""
    for sop_class, pair in QR_SOP_CLASSES.items():
        if pair == (model, service):
            return sop_class
    raise KeyError(f"no {service} SOP class in {model}")


MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are the odd numbers 1 to 255


def sending_contexts(pairs: Sequence[tuple[str, str]]) -> list[PresentationContext]:
    """Contexts to send stored files on: per (SOP class, stored syntax), the stored syntax
    alone (the file streams as is), then the uncompressed syntaxes other than it: an
    uncompressed file is converted by pynetdicom, any other decompressed by
    agent/dicom/transcode.py for a peer that takes it only so. At most 128 contexts."""
    contexts = []
    for sop_class, syntax in sorted(set(pairs)):
        contexts.append(build_context(sop_class, [syntax]))
        fallbacks = [s for s in UNCOMPRESSED if s != syntax]
        if fallbacks:
            contexts.append(build_context(sop_class, fallbacks))
    if len(contexts) > MAX_CONTEXTS:
        log.warning(
            "%d contexts needed to send %d kinds of instance; only %d can be proposed",
            len(contexts),
            len(set(pairs)),
            MAX_CONTEXTS,
        )
    return contexts[:MAX_CONTEXTS]


def preferring(
    contexts: Sequence[PresentationContext], first: Mapping[str, Sequence[str]]
) -> list[PresentationContext]:
    """Copies of acceptor ``contexts`` whose transfer syntaxes start with ``first[SOP class]``.

    pynetdicom accepts the first of our syntaxes that the peer proposed: this is how a
    C-GET peer offering several syntaxes in one context gets instances as stored.
    """
    preferred = []
    for cx in contexts:
        wanted = [s for s in first.get(str(cx.abstract_syntax), ()) if s in cx.transfer_syntax]
        if not wanted:
            preferred.append(cx)
            continue
        rest = [str(s) for s in cx.transfer_syntax if s not in wanted]
        copy = build_context(str(cx.abstract_syntax), [*wanted, *rest])
        copy.scu_role, copy.scp_role = cx.scu_role, cx.scp_role
        preferred.append(copy)
    return preferred
