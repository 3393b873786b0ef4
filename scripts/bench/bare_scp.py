#!/usr/bin/env python3
"""The least a pynetdicom receiver can do durably: accept every storage SOP class, write
each instance as received (File Meta + the data set's bytes, not decoded) and fsync it.
No index, no checks, no tuning: pynetdicom's defaults. The baseline the agent's ingest
is held against (the agent adds validation, an index and directory fsyncs).

    python scripts/bench/bare_scp.py PORT OUTDIR

Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt


def main() -> int:
    port, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)

    def on_store(event: Any) -> int:
        path = out / f"{event.request.AffectedSOPInstanceUID}.dcm"
        with path.open("wb") as handle:
            handle.write(event.encoded_dataset())
            handle.flush()
            os.fsync(handle.fileno())
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    raise SystemExit(main())
