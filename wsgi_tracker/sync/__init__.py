"""Keeping every process's replica the same: frames, the hub (in udp-sidecar), the client.

See docs/SYNC.md for the wire format, the guarantees and what happens on failure.
"""

from wsgi_tracker.sync.client import SyncClient, start_client, warn_if_alone
from wsgi_tracker.sync.frames import FrameDecoder, FrameError, StatsEntry

__all__ = [
    "FrameDecoder",
    "FrameError",
    "StatsEntry",
    "SyncClient",
    "start_client",
    "warn_if_alone",
]
