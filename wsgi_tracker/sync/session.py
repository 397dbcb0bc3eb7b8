"""The sync conversation as a table (h11's ``_state.py``): every legal (phase, frame) -> phase.

Both ends of a connection keep a ``Conversation`` and pass it each frame they
receive; a frame the table does not list for the current phase is a
``SyncStateError`` that names the frame and the phase, and the connection is
dropped, never a frame silently ignored. What each phase means:

* a client (worker) receiving from the hub: ``HELLO`` until the hub's hello;
  ``JOINING`` while the hub's snapshot arrives (with everyone's deltas and
  counts since the connect, queued behind it); ``LIVE`` after SnapshotDone;
* the hub receiving from a client: ``HELLO``; ``JOINING`` while the client
  applies the hub's snapshot (it sends only heartbeats); ``RESENDING`` while it
  re-sends the totals it knew and its replica (Totals, Snapshot), ended by its
  own SnapshotDone; then ``LIVE``.
"""

from __future__ import annotations

from enum import Enum

from wsgi_tracker.sync import frames as f


class SyncStateError(f.FrameError):
    """A frame arrived in a phase of the conversation where it has no place."""


class Phase(Enum):
    HELLO = "waiting for hello"
    JOINING = "joining"
    RESENDING = "re-sending its replica"
    LIVE = "live"


H, J, R, L = Phase.HELLO, Phase.JOINING, Phase.RESENDING, Phase.LIVE

Table = dict[Phase, dict[type, Phase]]

# What a client accepts from the hub. WebSocket peers come in the snapshot and live;
# a relay may be routed to a client as soon as the hub knows what it holds.
FROM_HUB: Table = {
    H: {f.Hello: J},
    J: {
        f.Snapshot: J,
        f.Totals: J,
        f.Deltas: J,
        f.Counts: J,
        f.Stats: J,
        f.Heartbeat: J,
        f.WsPeers: J,
        f.WsRelay: J,
        f.SnapshotDone: L,
    },
    # Snapshot: another client's re-sent replica, passed on as state.
    L: {
        f.Snapshot: L,
        f.Ack: L,
        f.Deltas: L,
        f.Counts: L,
        f.Stats: L,
        f.Heartbeat: L,
        f.WsPeers: L,
        f.WsRelay: L,
    },
}

# What the hub accepts from a client. A client's WebSocket changes and relays are
# sent at once, not batched, so they may overtake its re-sent replica. Reports
# (accounting) go with its deltas, so only once it is live.
FROM_CLIENT: Table = {
    H: {f.Hello: J},
    J: {f.Heartbeat: J, f.Totals: R, f.Snapshot: R, f.SnapshotDone: L, f.WsPeers: J, f.WsRelay: J},
    R: {f.Heartbeat: R, f.Totals: R, f.Snapshot: R, f.SnapshotDone: L, f.WsPeers: R, f.WsRelay: R},
    L: {
        f.Deltas: L,
        f.Counts: L,
        f.Stats: L,
        f.Heartbeat: L,
        f.WsPeers: L,
        f.WsRelay: L,
        f.Reports: L,
        f.Mark: L,
    },
}


class Conversation:
    """One end's view of one connection: the phase, moved on by each frame received."""

    def __init__(self, table: Table, peer: str) -> None:
        self.table = table
        self.peer = peer
        self.phase = Phase.HELLO

    def receive(self, frame: f.Frame) -> Phase:
        """The phase after ``frame``; SyncStateError if it has no place in this one."""
        after = self.table[self.phase].get(type(frame))
        if after is None:
            raise SyncStateError(
                f"{type(frame).__name__} frame from {self.peer} while {self.phase.value}"
            )
        self.phase = after
        return after
