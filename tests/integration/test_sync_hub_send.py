"""The hub writes to an idle client at once and queues behind bytes in flight.

``_Client.send`` skips the writer greenlet when nothing waits (the lower
lag); these tests fill a small socket buffer so that both paths are taken,
and check that the client reads every byte, in order.
"""

from __future__ import annotations

import socket

import gevent
from gevent import socket as gsocket

from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.sync.hub import SyncHub, _Client

CHUNK = 50_000


def drain(sock: gsocket.socket, total: int) -> bytes:
    """Read ``total`` bytes (each read bounded by the socket's timeout)."""
    got = bytearray()
    while len(got) < total:
        data = sock.recv(1 << 16)
        assert data, "the hub side closed early"
        got += data
    return bytes(got)


def test_idle_client_is_written_to_directly() -> None:
    a, b = gsocket.socketpair()
    try:
        client = _Client(a, 1)
        client.send(b"delta")
        assert not client.queue and client.queued == 0
        b.settimeout(5)
        assert drain(b, 5) == b"delta"
    finally:
        a.close()
        b.close()


def test_order_is_kept_when_the_socket_fills() -> None:
    a, b = gsocket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.settimeout(5)
    hub = SyncHub(TrackerCore(), "/nonexistent/sync.sock")
    client = _Client(a, 1)
    chunks = [bytes([i]) * CHUNK for i in range(10)]
    writer = None
    try:
        for chunk in chunks[:5]:
            client.send(chunk)
        assert client.queue, "a full socket leaves the rest to the writer"
        writer = gevent.spawn(hub._write_loop, client)
        gevent.sleep(0)  # the writer takes the queue and blocks in sendall
        assert client.writing
        for chunk in chunks[5:]:
            client.send(chunk)  # must queue behind the bytes in flight
        assert drain(b, CHUNK * len(chunks)) == b"".join(chunks)
    finally:
        client.close()
        if writer is not None:
            writer.join(timeout=2)
            writer.kill()
        a.close()
        b.close()
