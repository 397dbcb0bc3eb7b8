"""Read-your-writes across processes (issue 16, target 3), against ``wsgi-tracker serve``.

Once a client holds its reply, its next request to any process of the tracker
(either gunicorn worker, or udp-sidecar) reflects that announce. Each check
runs on fresh connections, which land on the workers as the kernel hands them
out: each asks ``/stats`` first which worker holds it, and connections are
opened (bounded) until one is held by the worker the order under test needs,
so every cross-process order is checked, each several times. (Counting on the
draws to cover them failed in CI: on a loaded machine 80 fresh connections
could land in one order only.)
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import bencodepy
import pytest
from servers import (
    Serve,
    announce_url,
    ports,
    scrape_url,
    serve,
    udp_announce,
    udp_scrape,
    wait_until,
)

pytestmark = pytest.mark.integration

TRIES = 400  # fresh connections to reach one worker (bounded; a few do, as a rule)
WITHIN = 60.0  # seconds: a bound on each test's loop, not a figure under test
# Between tries: back to back, the worker that just closed a connection is still running
# when the next one arrives and accepts it before the other wakes. A pause lets both wait
# for it, as they would for separate clients.
BETWEEN_TRIES = 0.02
REPEATS = 4  # trials per cross-process order
CONFIG = 'stats_path = "/stats"\n'


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with serve(tmp_path_factory.mktemp("ryw"), config=CONFIG) as s:
        yield s


@contextmanager
def worker_connection(s: Serve) -> Iterator[tuple[str, http.client.HTTPConnection]]:
    """A new keep-alive connection and the worker that holds it (from its /stats)."""
    conn = http.client.HTTPConnection("127.0.0.1", s.http.port, timeout=10)
    try:
        conn.request("GET", "/stats")
        served_by = json.loads(conn.getresponse().read())["served_by"]
        yield served_by, conn
    finally:
        conn.close()


def workers(s: Serve) -> list[str]:
    """Both workers' names, as /stats gives them, from fresh connections (bounded)."""
    seen: set[str] = set()
    deadline = time.monotonic() + WITHIN
    for _ in range(TRIES):
        if len(seen) == 2 or time.monotonic() > deadline:
            break
        with worker_connection(s) as (worker, _conn):
            seen.add(worker)
        time.sleep(BETWEEN_TRIES)
    assert len(seen) == 2, f"only worker {seen} took connections"
    return sorted(seen)


@contextmanager
def connection_on(s: Serve, worker: str) -> Iterator[http.client.HTTPConnection]:
    """A fresh connection that ``worker`` holds: new ones until it takes one (bounded)."""
    deadline = time.monotonic() + WITHIN
    for _ in range(TRIES):
        with worker_connection(s) as (served_by, conn):
            if served_by == worker:
                yield conn
                return
        assert time.monotonic() < deadline, f"worker {worker} took no new connection"
        time.sleep(BETWEEN_TRIES)
    raise AssertionError(f"worker {worker} took none of {TRIES} new connections")


def orders(s: Serve) -> Iterator[tuple[str, str]]:
    """Each cross-worker order (first, then the other), ``REPEATS`` times each."""
    for first, then in itertools.permutations(workers(s)):
        for _ in range(REPEATS):
            yield first, then


def get(conn: http.client.HTTPConnection, target: str) -> dict[bytes, object]:
    conn.request("GET", target)
    reply = bencodepy.decode(conn.getresponse().read())
    assert b"failure reason" not in reply, reply
    return reply


def announce_on(
    conn: http.client.HTTPConnection, ih: bytes, port: int, left: int = 1, **extra: object
) -> dict:
    return get(conn, announce_url("/announce", ih, peer_id(ih, port), port, left, **extra))


def scrape_on(conn: http.client.HTTPConnection, ih: bytes) -> tuple[int, int, int]:
    """(complete, downloaded, incomplete)"""
    entry = get(conn, scrape_url("/scrape", ih))[b"files"][ih]  # type: ignore[index]
    return entry[b"complete"], entry[b"downloaded"], entry[b"incomplete"]


def announce(s: Serve, ih: bytes, port: int, left: int = 1, **extra: object) -> None:
    """One announce on a fresh connection, any worker's."""
    with worker_connection(s) as (_worker, conn):
        announce_on(conn, ih, port, left, **extra)


def scrape(s: Serve, ih: bytes) -> tuple[int, int, int]:
    """One scrape on a fresh connection, any worker's."""
    with worker_connection(s) as (_worker, conn):
        return scrape_on(conn, ih)


def peer_id(ih: bytes, port: int) -> bytes:
    """The same peer on every announce of one trial (a torrent and a port)."""
    return b"-RW0001-" + port.to_bytes(4, "big") + ih[:8]


def torrent() -> bytes:
    return secrets.token_bytes(20)


def test_a_stop_answered_by_one_worker_is_gone_from_the_next_workers_answer(stack: Serve) -> None:
    for first, then in orders(stack):
        ih = torrent()
        # The next request's connection is open (and held by ``then``) before the announce.
        with connection_on(stack, then) as later:
            with connection_on(stack, first) as now:
                announce_on(now, ih, 7001, event="started")
                announce_on(now, ih, 7001, event="stopped")
            reply = announce_on(later, ih, 7002, numwant=50)
        assert 7001 not in ports(reply[b"peers"]), (first, then)


def test_a_scrape_on_a_new_connection_reads_the_announce_just_answered(stack: Serve) -> None:
    for first, then in orders(stack):
        ih = torrent()
        with connection_on(stack, then) as later:
            with connection_on(stack, first) as now:
                announce_on(now, ih, 7003, left=0, event="completed")
            assert scrape_on(later, ih) == (1, 1, 0), (first, then)


def test_an_http_announce_is_in_the_next_udp_scrape(stack: Serve) -> None:
    for worker in workers(stack):
        for _ in range(REPEATS):
            ih = torrent()
            with connection_on(stack, worker) as conn:
                announce_on(conn, ih, 7004, left=0, event="completed")
            assert udp_scrape("127.0.0.1", stack.udp.port, ih) == [(1, 1, 0)], worker


def test_a_udp_announce_is_in_the_next_http_scrape(stack: Serve) -> None:
    for worker in workers(stack):
        for _ in range(REPEATS):
            ih = torrent()
            with connection_on(stack, worker) as conn:
                udp_announce("127.0.0.1", stack.udp.port, ih, peer_id(ih, 7005), 7005, 0, 1)
                assert scrape_on(conn, ih) == (1, 1, 0), worker


def sync_counters(s: Serve) -> dict[str, int]:
    with worker_connection(s) as (_worker, conn):
        conn.request("GET", "/stats")
        return json.loads(conn.getresponse().read())["sync"]


def test_replies_stop_waiting_for_a_hub_that_is_behind_until_it_catches_up(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The hub stopped (SIGSTOP) acks nothing: the first reply waits its bound out, the
    next ones go at once (``ack_skips``) instead of each waiting for an ack that cannot
    come before that one, and a completion still waits. Resumed, the hub acks, and
    replies wait for their acks again (read-your-writes). One worker: every request
    is its."""
    with serve(tmp_path_factory.mktemp("behind"), workers=1, config=CONFIG) as s:
        ih = torrent()

        def acked_in_time(port: int) -> bool:
            """An announce whose reply waited for its ack and got it."""
            before = sync_counters(s)
            announce(s, ih, port)
            after = sync_counters(s)
            return (after["ack_waits"], after["ack_timeouts"], after["ack_skips"]) == (
                before["ack_waits"] + 1,
                before["ack_timeouts"],
                before["ack_skips"],
            )

        assert wait_until(lambda: acked_in_time(7010), WITHIN), "acks never came in time"
        hub = s.sidecar_pid()
        assert hub is not None
        before = sync_counters(s)
        os.kill(hub, signal.SIGSTOP)
        try:
            for port in range(7011, 7016):
                announce(s, ih, port)
            announce(s, ih, 7016, left=0, event="completed")
            during = sync_counters(s)
        finally:
            os.kill(hub, signal.SIGCONT)
        assert during["ack_timeouts"] - before["ack_timeouts"] == 2  # the first, the completion
        assert during["ack_skips"] - before["ack_skips"] == 4
        assert wait_until(lambda: acked_in_time(7017), WITHIN), "replies never waited again"


def test_with_read_your_writes_off_no_reply_waits_and_changes_still_spread(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The ``read_your_writes`` setting off (what ``bench ryw`` compares against): no
    announce's reply waits for an ack, completions included, /stats says so, and the
    change still reaches the other processes (eventually, not before the reply)."""
    config = CONFIG + "read_your_writes = false\n"
    with serve(tmp_path_factory.mktemp("ryw-off"), workers=1, config=config) as s:
        ih = torrent()
        before = sync_counters(s)
        assert before["connected"] and before["read_your_writes"] is False
        for port in range(7020, 7024):
            announce(s, ih, port)
        announce(s, ih, 7024, left=0, event="completed")
        after = sync_counters(s)
        assert (after["ack_waits"], after["ack_timeouts"], after["ack_skips"]) == (
            before["ack_waits"],
            before["ack_timeouts"],
            before["ack_skips"],
        )
        assert wait_until(lambda: udp_scrape("127.0.0.1", s.udp.port, ih) == [(1, 1, 4)], WITHIN), (
            "the announces never reached the sidecar"
        )


def test_a_pure_refresh_needs_no_ack_and_a_visible_change_still_waits(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A peer re-announcing as it was (no event, same address, port and seeder flag)
    changes nothing any reply shows, and the hub holds such refreshes back itself, so its
    reply does not wait (``ack_unneeded``); a new peer's and a seeder flip's do. One
    worker: every request is its."""
    with serve(tmp_path_factory.mktemp("refresh"), workers=1, config=CONFIG) as s:
        ih = torrent()
        before = sync_counters(s)
        announce(s, ih, 7030)  # a new peer: waits for its ack
        for _ in range(3):
            announce(s, ih, 7030)  # the same peer again: a pure refresh
        announce(s, ih, 7030, left=0)  # now a seeder: visible, waits
        after = sync_counters(s)
        assert after["ack_unneeded"] - before["ack_unneeded"] == 3
        waited = (after["ack_waits"] + after["ack_skips"]) - (
            before["ack_waits"] + before["ack_skips"]
        )
        assert waited == 2
        assert scrape(s, ih) == (1, 0, 0)
