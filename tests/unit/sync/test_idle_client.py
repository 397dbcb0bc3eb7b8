"""An idle process (nothing read its replica for ``IDLE_AFTER``) pauses its reader longer,
but no longer than the hub's last rate takes to send one drain's worth; a serving one's
reader applies what comes at once.

A real ``SyncClient`` against this test playing the hub over a real Unix socket. The
test never drains (that is a read): it learns the reader has handled the Deltas from
the Stats frame sent behind them, which only the reader applies, in order.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import pytest

from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import PeerChange
from wsgi_tracker.sync import client as client_module
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.client import SyncClient

V4 = bytes([10, 0, 0, 1, 0x1A, 0xE1])
IH = b"%020d" % 3
_markers = itertools.count()


def change(p: int) -> PeerChange:
    return PeerChange(IH, b"-PEER-%014d" % p, V4, False, 0, time.time(), 0)


@pytest.fixture
def joined(hub_listener: tuple[str, socket.socket]) -> Iterator[tuple[SyncClient, socket.socket]]:
    """A client whose snapshot held IH with two peers; stopped after the test. This hub
    sends no heartbeats, so the client is told not to give up on it."""
    path, listener = hub_listener
    client = SyncClient(TrackerCore(), path, dead_after=600.0)
    client.start()
    try:
        conn, _ = listener.accept()
        snapshot = f.Snapshot([change(0), change(1)])
        conn.sendall(
            f.encode(f.Hello(f.ROLE_HUB, 1)) + f.encode(snapshot) + f.encode(f.SnapshotDone())
        )
        assert client.wait_ready(10)
        yield client, conn
    finally:
        client.stop(timeout=2)


def send_and_wait(client: SyncClient, conn: socket.socket, frame: f.Frame) -> None:
    """Send ``frame`` and a Stats marker behind it; return once the reader took both."""
    marker = f.Stats([f.StatsEntry(1, f.ROLE_HUB, b"marker %d" % next(_markers))])
    conn.sendall(f.encode(frame) + f.encode(marker))
    deadline = time.monotonic() + 10
    while client.cluster_stats != marker.entries:
        assert time.monotonic() < deadline, "the reader never took the frames"
        time.sleep(0.01)


def test_a_serving_process_reader_applies_what_comes_at_once(
    joined: tuple[SyncClient, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, conn = joined
    monkeypatch.setattr(client_module, "IDLE_AFTER", 600.0)
    with client.core.lock:  # a request read the replica: the process serves
        pass
    send_and_wait(client, conn, f.Deltas([change(2)]))
    store = client.core.store
    assert not store.pending
    swarm = store.peek(IH)  # takes no lock, so no drain: only the reader applied it
    assert swarm is not None and swarm.incomplete == 3


def test_an_idle_readers_long_pause_is_cut_to_what_the_hubs_rate_fills_a_drain_in(
    joined: tuple[SyncClient, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, conn = joined
    monkeypatch.setattr(client_module, "IDLE_AFTER", 0.0)
    monkeypatch.setattr(client_module, "READ_PAUSE", 0.01)
    monkeypatch.setattr(client_module, "IDLE_PAUSE", 600.0)  # only the bytes can cut it
    monkeypatch.setattr(client, "_pause_bytes", 1)
    client._unpause.set()  # the pause under way started before the patch
    time.sleep(0.2)  # the client's re-send of its replica after the join (a read) is done
    for p in (2, 3):  # a pause follows each; the second's, nothing read since the first
        send_and_wait(client, conn, f.Deltas([change(p)]))
    send_and_wait(client, conn, f.Deltas([change(4)]))  # so only the bytes cut it short
    with client.core.lock:
        (entry,) = client.core.scrape([IH])
    assert entry.incomplete == 5
