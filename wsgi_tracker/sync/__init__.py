"""Keeping every process's replica the same: frames, the hub (in udp-sidecar), the client.

See docs/SYNC.md for the wire format, the guarantees and what happens on failure.
"""

from .client import SyncClient, start_client, warn_if_alone
from .frames import FrameDecoder, FrameError, StatsEntry

__all__ = [
    "FrameDecoder",
    "FrameError",
    "StatsEntry",
    "SyncClient",
    "start_client",
    "warn_if_alone",
]
