"""Every reader of the replica drains the sync socket first (``ReadGate``), so the
reader may leave the hub's frames there while it pauses (``READ_PAUSE``).

A real ``SyncClient`` against this test playing the hub over a real Unix socket.
The reader's pause is made far longer than the test, so only the gate can have
applied what the test sent: a host site's view (``with core.lock:
core.scrape(...)``) sees it at once, and a reply waiting for an ack ends the
pause, so the ack is read without waiting the pause out.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import PeerChange
from wsgi_tracker.sync import client as client_module
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.client import SyncClient

V4 = bytes([10, 0, 0, 1, 0x1A, 0xE1])
IH = b"%020d" % 7


@pytest.fixture
def paused(
    hub_listener: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SyncClient, socket.socket]]:
    """A client joined to the test's hub whose reader has caught up and sits in a pause
    far longer than the test (bounded wait); stopped after the test."""
    monkeypatch.setattr(client_module, "READ_PAUSE", 600.0)
    path, listener = hub_listener
    client = SyncClient(TrackerCore(), path)
    client.start()
    try:
        conn, _ = listener.accept()
        conn.sendall(f.encode(f.Hello(f.ROLE_HUB, 1)) + f.encode(f.SnapshotDone()))
        assert client.wait_ready(10)
        deadline = time.monotonic() + 10
        while not (client.connected and not client._unpause.is_set() and not client._inbox):
            assert time.monotonic() < deadline, "the reader never paused"
            time.sleep(0.01)
        time.sleep(0.05)  # it reached the wait (the pause is minutes long)
        yield client, conn
    finally:
        client.stop(timeout=2)


def test_a_view_under_the_core_lock_sees_what_a_paused_reader_left_in_the_socket(
    paused: tuple[SyncClient, socket.socket],
) -> None:
    client, conn = paused
    core = client.core
    peers = [PeerChange(IH, b"-PEER-%014d" % p, V4, p == 0, 0, time.time(), 0) for p in range(3)]
    conn.sendall(f.encode(f.Deltas(peers)))
    deadline = time.monotonic() + 10
    while client_module._unread(client._fileno()) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # the bytes are in this process's socket, as an ack promises
    assert core.store.peek(IH) is None  # the reader left them there
    with core.lock:
        (entry,) = core.scrape([IH])
    assert (entry.complete, entry.incomplete) == (1, 2)


def test_a_reply_waiting_for_its_ack_ends_the_readers_pause(
    paused: tuple[SyncClient, socket.socket],
) -> None:
    client, conn = paused
    token = client._acked + 1
    acked: list[bool] = []
    waiter = threading.Thread(target=lambda: acked.append(client.wait_for(token, 30)))
    waiter.start()
    deadline = time.monotonic() + 10
    while not client._waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.sendall(f.encode(f.Ack(token)))  # read by the reader alone: nothing drains
    waiter.join(20)
    assert acked == [True]


def test_stopping_ends_the_pause_and_gives_the_lock_its_gate_back(
    paused: tuple[SyncClient, socket.socket],
) -> None:
    client, _ = paused
    core = client.core
    assert core.lock.before == client.drain
    client.stop(timeout=5)
    assert core.lock.before is None
    assert all(not t.is_alive() for t in client._threads)  # not left in its 600 s pause


def test_a_serving_process_reader_does_not_pause_it_applies_what_comes(
    paused: tuple[SyncClient, socket.socket],
) -> None:
    client, conn = paused
    core = client.core
    with core.lock:  # a request reads the replica: the process is serving
        pass
    first, second = IH, b"%020d" % 8
    deadline = time.monotonic() + 10
    for ih in (first, second):
        peer = PeerChange(ih, b"-PEER-%014d" % 1, V4, False, 0, time.time(), 0)
        conn.sendall(f.encode(f.Deltas([peer])))
        if ih == first:
            client._unpause.set()  # ends the pause under way; after it, none is taken
        while core.store.peek(ih) is None and time.monotonic() < deadline:
            time.sleep(0.01)  # peek takes no lock: only the reader can have applied it
        assert core.store.peek(ih) is not None
