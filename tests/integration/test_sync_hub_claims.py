"""A restarted hub takes back a count only a worker's claim knows of (issue 13).

A worker's claim is the total it believed the hub had when it connected; it
counts a batch once written, so a batch the dead hub never read is in the
claim and nowhere else. The hub here is real (``SyncHub`` under gevent, a real
Unix socket); the test plays two workers of the hub that died, speaking the
wire protocol.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import gevent
import pytest
from gevent import socket as gsocket

from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.hub import SyncHub

pytestmark = pytest.mark.integration

TORRENT = b"claimed".ljust(20, b".")
RESTORED = 10  # what the restarted hub replayed from its journal


class Worker:
    """One worker's end of the sync socket."""

    def __init__(self, path: str, pid: int) -> None:
        self.sock = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.decoder = f.FrameDecoder()
        self.sock.sendall(f.encode(f.Hello(f.ROLE_WORKER, pid)))
        self.until(f.SnapshotDone)

    def frames(self) -> Iterator[f.Frame]:
        while True:
            data = self.sock.recv(1 << 16)
            assert data, "the hub closed the connection"
            yield from self.decoder.feed(data)

    def until(self, kind: type) -> f.Frame:
        return next(frame for frame in self.frames() if isinstance(frame, kind))

    def send(self, *frames: f.Frame) -> None:
        self.sock.sendall(b"".join(f.encode(frame) for frame in frames))

    def claim(self, total: int) -> None:
        """What a worker sends once joined: its claims, its (empty) replica."""
        self.send(f.Totals([(TORRENT, total)]), f.SnapshotDone())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hub() -> Iterator[SyncHub]:
    directory = tempfile.mkdtemp(prefix="claims-", dir="/tmp")  # a short socket path
    core = TrackerCore()
    core.store.add_downloaded(TORRENT, RESTORED)
    hub = SyncHub(core, os.path.join(directory, "sync.sock"))
    hub.start()
    try:
        yield hub
    finally:
        hub.stop(drain=0.5)
        shutil.rmtree(directory, ignore_errors=True)


def total(hub: SyncHub, want: int) -> int:
    """The hub's total once it has reached ``want`` (bounded), else what it is."""
    for _ in range(200):
        got = hub.core.store.scrape(TORRENT)[1]
        if got == want:
            break
        gevent.sleep(0.01)
    return hub.core.store.scrape(TORRENT)[1]


def test_a_claim_is_held_against_what_the_hub_restored_not_against_counts_made_since(
    hub: SyncHub,
) -> None:
    # Worker A wrote one count to the hub that died, which never read it: A claims 11.
    # Worker B rejoins first and sends 3 completions it answered during the outage.
    a, b = Worker(hub.path, 1001), Worker(hub.path, 1002)
    try:
        b.claim(RESTORED)
        b.send(f.Counts([(TORRENT, 3)]))
        assert total(hub, RESTORED + 3) == RESTORED + 3
        a.claim(RESTORED + 1)
        # 11 against the 10 restored: one was lost, and comes back (13 would hide it).
        assert total(hub, RESTORED + 4) == RESTORED + 4
        raised = b.until(f.Counts)  # B holds it too
        assert isinstance(raised, f.Counts) and raised.counts == [(TORRENT, 1)]
    finally:
        a.close()
        b.close()


def test_a_worker_met_before_claims_against_the_total(hub: SyncHub) -> None:
    # Once a worker has joined this hub, its belief holds this hub's counts: a claim
    # after a reconnect is compared with the total, so nothing is counted twice.
    first = Worker(hub.path, 2001)
    first.claim(RESTORED)
    first.send(f.Counts([(TORRENT, 5)]))
    assert total(hub, RESTORED + 5) == RESTORED + 5
    first.close()
    again = Worker(hub.path, 2001)
    try:
        again.claim(RESTORED + 5)
        gevent.sleep(0.2)
        assert total(hub, RESTORED + 5) == RESTORED + 5
    finally:
        again.close()


def clients(hub: SyncHub, want: int) -> int:
    """The hub's connected clients once they are ``want`` (bounded), else how many."""
    for _ in range(200):
        if hub.status()["clients"] == want:
            break
        gevent.sleep(0.01)
    return hub.status()["clients"]


def test_a_reconnecting_worker_gets_back_a_batch_the_hub_never_read(hub: SyncHub) -> None:
    # Worker A's connection ends with one count written and never read (a drop, a reset):
    # A's claim when it is back is 11. Worker B's fresh count reached the hub meanwhile,
    # so the total (11) would hide A's loss; held against what the hub had when A's
    # connection ended (10), it does not.
    a = Worker(hub.path, 3001)
    a.claim(RESTORED)
    a.close()
    b = Worker(hub.path, 3002)
    try:
        assert clients(hub, 1) == 1
        b.claim(RESTORED)
        b.send(f.Counts([(TORRENT, 1)]))
        assert total(hub, RESTORED + 1) == RESTORED + 1
        a = Worker(hub.path, 3001)
        a.claim(RESTORED + 1)
        assert total(hub, RESTORED + 2) == RESTORED + 2
        raised = b.until(f.Counts)
        assert isinstance(raised, f.Counts) and raised.counts == [(TORRENT, 1)]
    finally:
        a.close()
        b.close()


def test_a_reconnecting_worker_counts_nothing_twice_when_others_counted_since(
    hub: SyncHub,
) -> None:
    # A's count reached the hub before its connection ended; B counts one after. A's claim
    # (11: the hub's 10 and its own) meets what the hub had when A left (11): nothing
    # comes back twice, and B's count is not mistaken for A's.
    a = Worker(hub.path, 4001)
    a.claim(RESTORED)
    a.send(f.Counts([(TORRENT, 1)]))
    assert total(hub, RESTORED + 1) == RESTORED + 1
    a.close()
    b = Worker(hub.path, 4002)
    try:
        assert clients(hub, 1) == 1
        b.claim(RESTORED)
        b.send(f.Counts([(TORRENT, 1)]))
        assert total(hub, RESTORED + 2) == RESTORED + 2
        a = Worker(hub.path, 4001)
        a.claim(RESTORED + 1)
        gevent.sleep(0.2)
        assert total(hub, RESTORED + 2) == RESTORED + 2
    finally:
        a.close()
        b.close()
