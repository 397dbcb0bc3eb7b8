"""Announces steered by torrent over a ``SO_REUSEPORT`` group (udp_sidecar/steering.py),
on real sockets of this process: the kernel runs the filter, the test reads which socket
each datagram reached. And which batches of a UDP process need the hub's ack
(``VisibleChanges``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from udp_sidecar.protocol import build_announce_request, build_connect_request
from udp_sidecar.server import VisibleChanges, settle_visible
from udp_sidecar.steering import owner, program, steer
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import EVENT_COMPLETED, Announce
from wsgi_tracker.sync.replica import refresh_ahead

HOST = "127.0.0.1"
SOURCES = 32  # source ports: every one on one socket by the kernel's hash has odds 2**-31


@contextlib.contextmanager
def group(size: int) -> Iterator[tuple[int, list[socket.socket]]]:
    """``size`` sockets sharing one port, the first one steering; yields (port, sockets)."""
    socks: list[socket.socket] = []
    try:
        port = 0
        for n in range(size):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((HOST, port))
            port = s.getsockname()[1]
            if n == 0:
                steer(s, size)
            s.setblocking(False)
        yield port, socks
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def sources(port: int) -> Iterator[list[socket.socket]]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SOURCES)]
    try:
        for s in socks:
            s.connect((HOST, port))
        yield socks
    finally:
        for s in socks:
            s.close()


def arrivals(socks: list[socket.socket], expected: int) -> list[list[bytes]]:
    """The datagrams each socket got, once ``expected`` have arrived (bounded wait)."""
    got: list[list[bytes]] = [[] for _ in socks]
    deadline = time.monotonic() + 10
    while sum(map(len, got)) < expected and time.monotonic() < deadline:
        for s, into in zip(socks, got, strict=True):
            with contextlib.suppress(BlockingIOError):
                while True:
                    into.append(s.recv(4096))
        time.sleep(0.005)
    return got


def announce(info_hash: bytes) -> bytes:
    return build_announce_request(b"\0" * 8, 7, info_hash, b"-TS0001-000000000001", 6881)


@pytest.mark.parametrize("size", [2, 3])
def test_every_announce_of_a_torrent_reaches_its_process_from_any_source_port(
    size: int,
) -> None:
    hashes = [os.urandom(20) for _ in range(12)]
    with group(size) as (port, socks), sources(port) as srcs:
        for info_hash in hashes:
            for src in srcs:
                src.send(announce(info_hash))
        got = arrivals(socks, len(hashes) * SOURCES)
    assert sum(map(len, got)) == len(hashes) * SOURCES
    for index, datagrams in enumerate(got):
        assert {d[16:36] for d in datagrams} == {h for h in hashes if owner(h, size) == index}
        assert all(len(d) == 98 for d in datagrams)


def test_connects_scrapes_and_short_announces_go_by_the_kernels_hash() -> None:
    info_hash = next(h for h in iter(lambda: os.urandom(20), None) if owner(h, 2) == 0)
    scrape = struct.pack(">QII", 0x41727101980, 2, 7) + info_hash
    short = announce(info_hash)[:97]  # refused by any process: not steered
    with group(2) as (port, socks), sources(port) as srcs:
        for packet in (build_connect_request(7), scrape, short):
            for src in srcs:
                src.send(packet)
            got = arrivals(socks, SOURCES)
            # Spread by source port: both sockets get some, the steered-to one is not all.
            assert all(got), (packet[:16], list(map(len, got)))


def test_steering_needs_a_group_of_two_or_more() -> None:
    with pytest.raises(ValueError, match="2 processes or more, not 1"):
        program(1)


def test_the_filter_checks_the_length_before_it_reads_the_packet() -> None:
    code, _, _, k = program(2)[0]
    assert (code, k) == (0x80, 0)  # A = length, before any load from the payload


def make_announce(peer: int, **kw: int) -> Announce:
    return Announce(b"t" * 20, b"p" * 19 + bytes([peer]), 6881 + peer, left=10, key=5, **kw)


def test_only_a_change_a_reader_sees_needs_the_hubs_ack() -> None:
    core = TrackerCore(TrackerConfig())
    visible = VisibleChanges(refresh_ahead())
    core.listeners.append(visible)
    ip = b"\x7f\0\0\1"
    with core.lock:
        core.announce(make_announce(1), ip)
    assert visible.take()  # a new peer
    assert not visible.take()  # taken
    with core.lock:
        core.announce(make_announce(1), ip)
    assert not visible.take()  # a pure refresh: same endpoint, flag and key
    with core.lock:
        core.announce(make_announce(1), ip)
        core.announce(make_announce(1, event=EVENT_COMPLETED), ip)
    assert visible.take()  # a batch with a completion in it


def test_a_batch_of_refreshes_does_not_call_the_clients_settle() -> None:
    core = TrackerCore(TrackerConfig())
    calls: list[int] = []
    settle = settle_visible(core, lambda: calls.append(1))
    ip = b"\x7f\0\0\1"
    with core.lock:
        core.announce(make_announce(2), ip)
    assert settle() is None and calls == [1]
    with core.lock:
        core.announce(make_announce(2), ip)
    assert settle() is None and calls == [1]
