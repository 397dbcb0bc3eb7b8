"""What the hub keeps to pass on when nobody would receive it: nothing.

With no client (one UDP process, no workers) the sidecar's own announces are
neither buffered nor held; with the sender as its only client (a second UDP
process alone with the hub), a client's changes are merged without being
sorted into news and refreshes. Either way the replica has them, and a client
that joins later gets them in its snapshot.
"""

from __future__ import annotations

import time

from gevent import socket as gsocket

from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import Announce, PeerChange
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.hub import SyncHub, _Client

IP = b"\x7f\0\0\1"


def hub_and_core() -> tuple[SyncHub, TrackerCore]:
    core = TrackerCore()
    hub = SyncHub(core, "/nonexistent/sync.sock")
    core.listeners.append(hub._own_change)  # what start() does, without the socket
    return hub, core


def announce(core: TrackerCore, peer: int) -> None:
    with core.lock:
        core.announce(Announce(b"t" * 20, b"p" * 19 + bytes([peer]), 6881 + peer, left=5), IP)


def test_with_no_client_the_sidecars_announces_are_kept_nowhere_but_the_replica() -> None:
    hub, core = hub_and_core()
    for _ in range(2):  # a new peer, then its refresh
        announce(core, 1)
    assert not len(hub._buffer) and not hub._held
    assert hub.settle() is None
    assert core.store.scrape(b"t" * 20) == (0, 0, 1)


def test_with_a_client_the_sidecars_announces_go_to_it() -> None:
    hub, core = hub_and_core()
    a, b = gsocket.socketpair()
    try:
        hub.clients.add(_Client(a, 1))
        announce(core, 2)
        assert len(hub._buffer) == 1
        assert hub.settle() is None  # the socket took the bytes
        b.settimeout(5)
        (frame,) = f.FrameDecoder().feed(b.recv(1 << 16))
        assert isinstance(frame, f.Deltas) and frame.peers[0].peer_id == b"p" * 19 + b"\2"
    finally:
        a.close()
        b.close()


def client_rows(peer: int) -> list:
    change = PeerChange(
        b"u" * 20, b"q" * 19 + bytes([peer]), IP + b"\x1a\xe1", False, 2, time.time(), 0
    )
    return list(f.peer_rows([change]))


def test_a_clients_changes_are_sorted_only_when_someone_else_would_get_them() -> None:
    hub, core = hub_and_core()
    sockets = [gsocket.socketpair() for _ in range(2)]
    try:
        sender, other = (_Client(a, n) for n, (a, _) in enumerate(sockets))
        hub.clients.add(sender)
        rows = client_rows(1)
        assert list(hub._merge(rows, 0, 1, sender)) == []  # nobody to pass it on to
        hub.clients.add(other)
        rows = client_rows(2)
        assert [c.peer_id for c in hub._merge(rows, 0, 1, sender)] == [rows[0][1]]
        assert core.store.scrape(b"u" * 20) == (0, 0, 2)  # merged either way
    finally:
        for a, b in sockets:
            a.close()
            b.close()
