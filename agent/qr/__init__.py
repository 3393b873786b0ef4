"""The agent as a Query/Retrieve SCU: ask a peer what it holds and pull it to the edge.

``find`` and ``retrieve`` return plain results; the CLI and the serial console print
them. Identifiers are built from DCMTK-style ``Key=Value`` strings.
"""

from agent.qr.find import FindResult, find
from agent.qr.identifiers import FindRequest, RetrieveRequest
from agent.qr.retrieve import Progress, RetrieveResult, retrieve

__all__ = [
    "FindRequest",
    "FindResult",
    "Progress",
    "RetrieveRequest",
    "RetrieveResult",
    "find",
    "retrieve",
]
