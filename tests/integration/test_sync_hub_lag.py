"""The hub alone, in this process (gevent sockets, no monkey-patching), with real clients
on its Unix socket: what it ships, to a slow reader and a stuck one.

* a client that reads slowly under a flood lags, is never dropped, and ends
  with the replica the fast readers have (its backlog coalesced per peer);
* a client that reads nothing for ``dead_after`` is dropped, and the others
  get everything meanwhile;
* a refresh of a known peer (same endpoint and seeder flag, no event) is held
  and shipped once, within the refresh window, while a visible change goes out
  at once and a refused one not at all;
* a burst of deltas is applied in slices: other greenlets (UDP) run in between.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import gevent
import pytest
from gevent import socket as gsocket
from gevent.lock import Semaphore

from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.swarm import SwarmStore
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STARTED,
    EVENT_STOPPED,
    PeerChange,
)
from wsgi_tracker.sync import frames
from wsgi_tracker.sync.hub import SLICE_RECORDS, SyncHub, is_refresh
from wsgi_tracker.sync.replica import apply_remote

WITHIN = 60.0  # seconds; a bound on each wait for a loaded machine, not a figure under test


def endpoint(n: int) -> bytes:
    """A distinct loopback address and port per peer, so no per-address cap refuses them."""
    return bytes([127, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF]) + (6881 + n % 1000).to_bytes(
        2, "big"
    )


def change(
    t: int, p: int, event: int = EVENT_NONE, seeder: bool = False, **kw: object
) -> PeerChange:
    return PeerChange(
        t.to_bytes(20, "big"),
        b"-PEER-" + p.to_bytes(14, "big"),
        kw.get("ep", endpoint(p)),  # type: ignore[arg-type]
        seeder,
        event,
        float(kw.get("ts", time.time())),  # type: ignore[arg-type]
    )


class Reader:
    """A client on the hub's socket that applies what it reads to its own replica."""

    def __init__(self, path: str, pid: int, chunk: int = 1 << 16, pause: float = 0.0) -> None:
        self.sock = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if pause:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(path)
        hello = frames.encode(frames.Hello(frames.ROLE_TOOL, pid))
        self.sock.sendall(hello + frames.encode(frames.SnapshotDone()))
        self.store = SwarmStore(max_peers_per_address=1_000_000_000)
        self.totals: dict[bytes, int] = {}
        self.records = 0
        self.closed = False
        self.chunk, self.pause = chunk, pause
        self._sending = Semaphore()  # the test sends on it too: one sendall at a time
        self.greenlet = gevent.spawn(self._run)

    def send(self, data: bytes) -> None:
        with self._sending:
            self.sock.sendall(data)

    def _run(self) -> None:
        decoder = frames.FrameDecoder()
        last_beat = time.monotonic()
        while True:
            data = self.sock.recv(self.chunk)
            if not data:
                self.closed = True
                return
            for frame in decoder.feed(data):
                if isinstance(frame, frames.Deltas | frames.Snapshot):
                    self.records += len(frame.peers)
                    for c in frame.peers:
                        apply_remote(self.store, c, isinstance(frame, frames.Snapshot))
                elif isinstance(frame, frames.Counts):
                    for ih, n in frame.counts:
                        self.totals[ih] = self.totals.get(ih, 0) + n
            if time.monotonic() - last_beat > 0.5:  # alive: it reads, and says so
                self.send(frames.encode(frames.Heartbeat()))
                last_beat = time.monotonic()
            if self.pause:
                gevent.sleep(self.pause)

    def stop(self) -> None:
        self.greenlet.kill()
        self.sock.close()


def replica(store: SwarmStore) -> set[tuple[bytes, bytes, bytes, bool, float]]:
    return {(c.info_hash, c.peer_id, c.endpoint, c.seeder, c.timestamp) for c in store.peers()}


def wait(predicate, within: float = WITHIN) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(0.02)
    return bool(predicate())


def hub_at(tmp_path: Path, **kw: object) -> tuple[SyncHub, str]:
    path = str(tmp_path / "hub" / "sync.sock")
    core = TrackerCore(TrackerConfig(max_peers_per_address=1_000_000_000))
    hub = SyncHub(core, path, **kw)  # type: ignore[arg-type]
    hub.start()
    return hub, path


def test_a_slow_reader_under_a_flood_lags_is_never_dropped_and_ends_with_the_same_replica(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsgi_tracker.sync.hub")
    hub, path = hub_at(tmp_path, max_queue_bytes=16 << 10, refresh_window=0.2)
    fast = Reader(path, 1001)
    slow = Reader(path, 1002, chunk=4096, pause=0.01)  # ~400 kB/s, against ~2 MB of flood
    sender = Reader(path, 1003)
    try:
        assert wait(lambda: len(hub.clients) == 3)
        peers = 3000
        rounds = 12
        for r in range(rounds):
            batch = []
            for p in range(peers):
                t = p % 50
                if r == 0:
                    batch.append(change(t, p, EVENT_STARTED))
                elif p % 97 == r:
                    batch.append(change(t, p, EVENT_STOPPED))
                elif p % 89 == r:
                    batch.append(change(t, p, EVENT_COMPLETED, seeder=True))
                else:  # a refresh; every 7th peer flips to seeding, every 11th moves port
                    ep = endpoint(p)[:4] + (9000 + r).to_bytes(2, "big") if p % 11 == 0 else None
                    batch.append(change(t, p, seeder=p % 7 == 0, ep=ep or endpoint(p)))
            sender.send(
                frames.encode(frames.Deltas(batch))
                + frames.encode(frames.Counts([(i.to_bytes(20, "big"), 1) for i in range(50)]))
            )
            gevent.sleep(0.01)
        expected = replica(hub.core.store)
        want_totals = {i.to_bytes(20, "big"): rounds for i in range(50)}

        def caught_up(reader: Reader) -> bool:
            return replica(reader.store) == replica(hub.core.store) and reader.totals == want_totals

        assert wait(lambda: caught_up(fast) and caught_up(slow)), (
            len(replica(fast.store)),
            len(replica(slow.store)),
            len(expected),
        )
        assert not slow.closed and any(c.pid == 1002 for c in hub.clients)  # never dropped
        assert "pid 1002 is" in caplog.text and "coalescing per peer" in caplog.text
        assert "dropping tool pid 1002" not in caplog.text
        assert slow.records < fast.records  # it was sent the newest of each, not every one
    finally:
        for reader in (fast, slow):
            reader.stop()
        sender.stop()
        hub.stop()


def test_a_client_that_reads_nothing_is_dropped_and_the_others_get_everything(
    tmp_path: Path,
) -> None:
    hub, path = hub_at(tmp_path, max_queue_bytes=1 << 20, dead_after=2.0)
    stuck = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # never reads, never beats
    stuck.connect(path)
    stuck.sendall(frames.encode(frames.Hello(frames.ROLE_TOOL, 1000)))
    reader = Reader(path, 1001)
    sender = Reader(path, 1002)
    try:
        assert wait(lambda: len(hub.clients) == 3)
        batches = 8
        for b in range(batches):
            n = frames.RECORDS_PER_FRAME
            batch = [change(b, b * n + i, EVENT_STARTED) for i in range(n)]
            sender.send(frames.encode(frames.Deltas(batch)))
            gevent.sleep(0)
        assert wait(lambda: reader.records == batches * frames.RECORDS_PER_FRAME)
        assert wait(lambda: sorted(c.pid for c in hub.clients) == [1001, 1002])
        assert replica(reader.store) == replica(hub.core.store)
    finally:
        stuck.close()
        reader.stop()
        sender.stop()
        hub.stop()
    assert not os.path.exists(path)


def test_refreshes_are_held_and_shipped_once_visible_changes_at_once_refused_never(
    tmp_path: Path,
) -> None:
    hub, path = hub_at(tmp_path, refresh_window=0.5)
    hub.core.store.max_peers_per_torrent = 3
    reader = Reader(path, 1001)
    sender = Reader(path, 1002)
    try:
        assert wait(lambda: len(hub.clients) == 2)
        now = time.time()
        sender.send(
            frames.encode(frames.Deltas([change(1, p, EVENT_STARTED, ts=now) for p in range(4)]))
        )
        assert wait(lambda: reader.records == 3)  # the fourth was refused: a full swarm
        refreshes = [change(1, p, ts=now + 0.1 * k) for k in (1, 2, 3) for p in range(3)]
        sender.send(frames.encode(frames.Deltas(refreshes)))
        sender.send(frames.encode(frames.Deltas([change(1, 0, seeder=True, ts=now + 0.5)])))
        # The seeder flip, then peers 1 and 2 once each, with their newest refresh; peer
        # 0's refreshes went with its flip, which is newer.
        assert wait(lambda: reader.records == 6)
        gevent.sleep(1.0)  # twice the window: nothing more is held
        assert reader.records == 6
        assert replica(reader.store) == replica(hub.core.store)
        assert {c.timestamp for c in reader.store.peers()} == {now + 0.5, now + 0.3}
    finally:
        reader.stop()
        sender.stop()
        hub.stop()


def test_what_a_refresh_is() -> None:
    store = SwarmStore()
    known = change(1, 1, EVENT_STARTED, ts=1000.0)
    store.clock = lambda: 1000.0
    store.apply(known)
    same = known._replace(event=EVENT_NONE, timestamp=1001.0)
    assert is_refresh(store, same, 1.0)
    assert not is_refresh(store, same._replace(seeder=True), 1.0)
    assert not is_refresh(store, same._replace(endpoint=endpoint(2)), 1.0)
    assert not is_refresh(store, same._replace(event=EVENT_COMPLETED), 1.0)
    assert not is_refresh(store, same._replace(event=EVENT_STOPPED), 1.0)
    assert not is_refresh(store, same._replace(key=77), 1.0)  # a key learnt: identity
    assert not is_refresh(store, change(1, 2), 1.0)  # unknown peer
    assert not is_refresh(store, change(2, 1), 1.0)  # unknown torrent
    # A peer about to lapse: a late refresh might let it expire elsewhere meanwhile.
    late = same._replace(timestamp=1000.0 + store.peer_ttl - 2.0)
    assert not is_refresh(store, late, 1.0)


def test_a_burst_is_applied_in_slices_that_let_other_greenlets_run(tmp_path: Path) -> None:
    hub, path = hub_at(tmp_path)
    reader = Reader(path, 1001)
    sender = Reader(path, 1002)
    turns: list[int] = []

    def udp_stand_in() -> None:  # what udp-sidecar's receive loop is to the hub: a greenlet
        while True:
            turns.append(len(hub.core.store.torrents))
            gevent.idle()

    probe = gevent.spawn(udp_stand_in)
    try:
        assert wait(lambda: len(hub.clients) == 2)
        n = frames.RECORDS_PER_FRAME  # one frame: the old hub applied it in one go
        assert n > 4 * SLICE_RECORDS
        burst = [change(p, p, EVENT_STARTED) for p in range(n)]
        turns.clear()
        sender.send(frames.encode(frames.Deltas(burst)))
        assert wait(lambda: reader.records == n)
        # The probe ran while the torrents were still arriving, not only before and after.
        assert any(0 < t < n for t in turns)
    finally:
        probe.kill()
        reader.stop()
        sender.stop()
        hub.stop()
