"""A client stashes the hub's Deltas and a read of a torrent applies them in order.

A real ``SyncClient`` against this test playing the hub over a real Unix socket:
an empty snapshot, then Deltas frames of several record shapes (keyed and not,
IPv4 and IPv6), several frames per torrent, so the reader joins consecutive
frames of one shape and stashes them; the replica must read as if each had been
applied at once.
"""

from __future__ import annotations

import socket
import time

from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import EVENT_STOPPED, PeerChange
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.client import SyncClient

V4 = bytes([10, 0, 0, 1, 0x1A, 0xE1])
V6 = bytes([0xFD] + [0] * 15 + [0x1A, 0xE1])


def change(t: int, p: int, endpoint: bytes = V4, key: int = 0, event: int = 0) -> PeerChange:
    return PeerChange(b"%020d" % t, b"-PEER-%014d" % p, endpoint, False, event, time.time(), key)


def test_stashed_deltas_read_as_applied_in_order(
    hub_listener: tuple[str, socket.socket],
) -> None:
    path, listener = hub_listener
    core = TrackerCore(TrackerConfig(lazy_apply=True))
    client = SyncClient(core, path)
    client.start()
    try:
        conn, _ = listener.accept()
        conn.sendall(f.encode(f.Hello(f.ROLE_HUB, 1)) + f.encode(f.SnapshotDone()))
        assert client.wait_ready(10)
        batches = [
            [change(t, p) for t in range(5) for p in range(3)],  # one shape, joined
            [change(t, 3) for t in range(5)],
            [change(t, 4, key=7) for t in range(5)],  # keyed: another shape
            [change(t, 5, V6) for t in range(5)],
            [change(0, 1, event=EVENT_STOPPED), change(1, 9), change(1, 9, V6, key=3)],
            [change(2, 0, event=EVENT_STOPPED)],
        ]
        marker = f.Stats([f.StatsEntry(1, f.ROLE_HUB, b"after the deltas")])
        conn.sendall(b"".join(f.encode(f.Deltas(b)) for b in batches) + f.encode(marker))
        store = core.store
        deadline = time.monotonic() + 10
        while not client.cluster_stats and time.monotonic() < deadline:
            client.drain()  # frames are applied in order: the marker comes last
            time.sleep(0.01)
        assert client.cluster_stats == marker.entries
        assert store.pending.records  # stashed, not applied
        assert not store._held
        expected = {
            0: {0, 2, 3, 4, 5},
            1: {0, 1, 2, 3, 4, 5, 9},
            2: {1, 2, 3, 4, 5},
            3: {0, 1, 2, 3, 4, 5},
            4: {0, 1, 2, 3, 4, 5},
        }
        for t, peers in expected.items():
            swarm = store.peek(b"%020d" % t)
            assert swarm is not None
            held = {int(pid[6:]) for pl in swarm.lists() for pid in pl.ids}
            assert held == peers, t
        assert store.pending.records == 0
    finally:
        client.stop(timeout=2)
