"""A scripted forwarding process (``python -m tests.scripted_worker FD``), started by the
agent's real ``_Child`` in place of ``agent.forward.worker``: after the start it sends a
frame that is no pickle, a message of the old untyped kind, then "alive" and one
"forwarded"; on "stop" it says "stopped" and exits. What the agent makes of the first two
must not end its side of the link."""

from __future__ import annotations

import pickle
import sys
from multiprocessing.connection import Connection

from agent.forward import messages


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[1]))
    if not isinstance(messages.decode_to_worker(conn.recv_bytes()), messages.Start):
        return 2
    conn.send_bytes(b"\x80\x05 this is no pickle")
    conn.send_bytes(pickle.dumps(("alive", ["PACS"])))  # the untyped kind of before
    conn.send_bytes(messages.encode(messages.Alive(("PACS",))))
    conn.send_bytes(messages.encode(messages.Forwarded("PACS")))
    while True:
        try:
            message = messages.decode_to_worker(conn.recv_bytes())
        except EOFError:
            return 1
        if isinstance(message, messages.Stop):
            conn.send_bytes(messages.encode(messages.Stopped()))
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
