"""The options of ``find`` and ``retrieve``, spelt as DCMTK's findscu/movescu spell them.

The CLI and the console parse the same options into the same requests.
"""

from __future__ import annotations

import argparse

from agent.dicom.models import Level, Model
from agent.qr import FindRequest, RetrieveRequest
from agent.qr.identifiers import parse_keys

FIND_HELP = "C-FIND on a peer (the PACS): patients, studies, series or images matching keys"
RETRIEVE_HELP = (
    "pull a study (or some series) from a peer into the local archive, by C-MOVE or C-GET"
)


COMMIT_HELP = "ask a peer for storage commitment of a study the archive holds, and show its report"
COMMIT_TIMEOUT = 60.0


def add_commit_arguments(parser: argparse.ArgumentParser) -> None:
    """The peer, the study, and how long to wait for the report."""
    parser.add_argument("peer", metavar="PEER", help="a peer name from the config")
    parser.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    parser.add_argument(
        "--timeout", type=_seconds, default=COMMIT_TIMEOUT, metavar="SECONDS",
        help="how long to wait for the report (default %(default)g)",
    )


def add_common(parser: argparse.ArgumentParser) -> None:
    """PEER, the information model (-P/-S/-O), -k keys and --timeout."""
    parser.add_argument(
        "peer", metavar="PEER", help="a peer name from the config, or AET@HOST:PORT"
    )
    models = parser.add_mutually_exclusive_group()
    for flag, model, words in (
        ("-P", Model.PATIENT_ROOT, "Patient Root"),
        ("-S", Model.STUDY_ROOT, "Study Root (the default)"),
        ("-O", Model.PATIENT_STUDY_ONLY, "Patient/Study Only"),
    ):
        models.add_argument(flag, dest="model", action="store_const", const=model, help=words)
    parser.add_argument(
        "-k",
        "--key",
        dest="keys",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="a key as DCMTK writes it: PatientName=DOE*, StudyDate=20260101-, "
        "(0010,0020)=123; no value asks for the key back",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="give up on a peer that does not answer within this long (default %(default)g)",
    )


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def add_find_arguments(parser: argparse.ArgumentParser) -> None:
    """PEER, model, level, keys, output."""
    add_common(parser)
    parser.add_argument(
        "-L",
        "--level",
        type=str.upper,
        choices=[level.value for level in Level],
        help="query level (default PATIENT with -P, else STUDY)",
    )
    parser.add_argument("--json", action="store_true", help="print the DICOM JSON model")
    parser.add_argument(
        "--only", action="store_true", help="ask only for the -k keys, not the level's defaults"
    )


def find_request(args: argparse.Namespace) -> FindRequest:
    """The FindRequest the find options describe."""
    model = args.model or Model.STUDY_ROOT
    default = Level.PATIENT if model is Model.PATIENT_ROOT else Level.STUDY
    level = Level(args.level) if args.level else default
    return FindRequest(model, level, parse_keys(args.keys), only=args.only)


def add_retrieve_arguments(parser: argparse.ArgumentParser) -> None:
    """PEER, keys, series, method, where to push afterwards."""
    add_common(parser)
    parser.set_defaults(timeout=60.0)
    parser.add_argument(
        "--series", nargs="+", default=[], metavar="UID", help="only these series of the study"
    )
    methods = parser.add_mutually_exclusive_group()
    methods.add_argument(
        "--move",
        dest="method",
        action="store_const",
        const="move",
        help="C-MOVE to this agent's own Storage SCP (the default; the peer must know us)",
    )
    methods.add_argument(
        "--get",
        dest="method",
        action="store_const",
        const="get",
        help="C-GET: the images come back on the same association",
    )
    parser.add_argument(
        "--send-to",
        metavar="PEER",
        help="then queue what arrived for this peer (the modality, say)",
    )


def retrieve_request(args: argparse.Namespace) -> RetrieveRequest:
    """The RetrieveRequest the retrieve options describe."""
    return RetrieveRequest(
        args.model or Model.STUDY_ROOT, parse_keys(args.keys), tuple(args.series)
    )
