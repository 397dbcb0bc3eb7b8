"""A joining worker is heard from while it applies the hub's snapshot (issue 13 item 4),
and answers nothing from a half-filled replica.

A real ``SyncClient`` against this test playing the hub's side of a real Unix
socket: the hub's hello and the first part of a snapshot, then nothing more,
as a hub walking a million torrents may pause. The client must heartbeat
(after its hello, never before) while it joins, and answer nothing from the
half-filled replica meanwhile (it is not ready).
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse

import bencodepy
import pytest

from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import PeerChange
from wsgi_tracker.http import middleware
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.client import SyncClient
from wsgi_tracker.sync.session import FROM_CLIENT, Conversation, Phase

HEARTBEAT = 0.1


def test_a_joining_client_heartbeats_after_its_hello_until_the_snapshot_is_done(
    hub_listener: tuple[str, socket.socket],
) -> None:
    path, listener = hub_listener
    core = TrackerCore()
    client = SyncClient(core, path, heartbeat=HEARTBEAT)
    client.start()
    try:
        conn, _ = listener.accept()
        conn.settimeout(0.2)
        peers = [
            PeerChange(n.to_bytes(20, "big"), bytes(20), bytes(6), False, 0, time.time())
            for n in range(100)
        ]
        conn.sendall(f.encode(f.Hello(f.ROLE_HUB, 1)) + f.encode(f.Snapshot(peers)))
        talk = Conversation(FROM_CLIENT, "the client")  # what the real hub checks
        decoder = f.FrameDecoder()
        heard: list[f.Frame] = []
        deadline = time.monotonic() + 10
        while sum(isinstance(x, f.Heartbeat) for x in heard) < 3 and time.monotonic() < deadline:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            assert data, "the client hung up while joining"
            for frame in decoder.feed(data):
                talk.receive(frame)  # a heartbeat before the hello would raise here
                heard.append(frame)
        assert isinstance(heard[0], f.Hello)
        assert [type(x) for x in heard[1:]] == [f.Heartbeat] * 3
        assert talk.phase is Phase.JOINING
        # Still joining: half a replica is never served from.
        assert not client.ready.is_set() and not client.connected
        assert len(core.store) == len(peers)
        conn.sendall(f.encode(f.SnapshotDone()))
        assert client.wait_ready(10) and client.connected
        conn.close()
    finally:
        client.stop()


def test_a_request_while_the_first_snapshot_is_still_arriving_is_refused_not_half_answered(
    monkeypatch: pytest.MonkeyPatch, hub_listener: tuple[str, socket.socket]
) -> None:
    """Past its wait, a request gets a failure reason to retry, never 0/0/0 for a torrent
    the hub holds (a million torrents took longer than the wait on a loaded machine)."""
    monkeypatch.setattr(middleware, "SYNC_JOIN_WAIT", 0.2)
    path, listener = hub_listener
    held = (7).to_bytes(20, "big")
    app = middleware.TrackerMiddleware(config=TrackerConfig(sync_socket=path))
    query = "info_hash=" + urllib.parse.quote_from_bytes(held)
    environ = {"PATH_INFO": "/scrape", "QUERY_STRING": query, "REMOTE_ADDR": "127.0.0.1"}

    def scrape() -> dict:
        return bencodepy.decode(b"".join(app(dict(environ), lambda *a: None)))

    conn = None
    try:
        answers: list[dict] = []
        first = threading.Thread(target=lambda: answers.append(scrape()))
        first.start()  # the first request starts the client and waits for the snapshot
        conn, _ = listener.accept()
        peer = PeerChange(held, bytes(20), bytes(6), True, 0, time.time())
        first_half = [
            PeerChange(n.to_bytes(20, "big"), bytes(20), bytes(6), False, 0, time.time())
            for n in range(5)
        ]
        conn.sendall(f.encode(f.Hello(f.ROLE_HUB, 1)) + f.encode(f.Snapshot(first_half)))
        first.join(10)
        assert b"still loading" in answers[0][b"failure reason"]
        assert b"still loading" in scrape()[b"failure reason"]
        conn.sendall(f.encode(f.Snapshot([peer])) + f.encode(f.SnapshotDone()))
        assert app.sync is not None and app.sync.wait_ready(10)
        assert scrape()[b"files"][held][b"complete"] == 1
    finally:
        if app.sync is not None:
            app.sync.stop()
        if conn is not None:
            conn.close()
