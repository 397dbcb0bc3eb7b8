"""Read-your-writes across processes (issue 16, target 3), against ``wsgi-tracker serve``.

Once a client holds its reply, its next request to any process of the tracker
(either gunicorn worker, or udp-sidecar) reflects that announce. Each check
runs on fresh connections, which land on the workers at random: every trial
first asks ``/stats`` on its connection which worker holds it, and the trials
repeat (bounded) until every cross-process order has been seen. Every trial is
checked, not only the covering ones.
"""

from __future__ import annotations

import http.client
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

TRIALS = 80  # per test; the chance that 80 fair draws miss an order of two workers is ~1e-10
WITHIN = 60.0  # seconds: a bound on each test's loop, not a figure under test
# Between trials (never inside one, where it would give a worker time to catch up on its
# own): back to back, the worker that just closed a connection is still running when the
# next one arrives and accepts it before the other wakes, so a burst of trials can all
# land on one worker (seen: none of 80 trials crossed). A pause lets both wait for it,
# as they would for separate clients, so the draws are fair.
BETWEEN_TRIALS = 0.02
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


def get(conn: http.client.HTTPConnection, target: str) -> dict[bytes, object]:
    conn.request("GET", target)
    reply = bencodepy.decode(conn.getresponse().read())
    assert b"failure reason" not in reply, reply
    return reply


def announce(s: Serve, ih: bytes, port: int, left: int = 1, **extra: object) -> tuple[str, dict]:
    """One announce on a fresh connection: (the worker that answered, the reply)."""
    with worker_connection(s) as (worker, conn):
        path = announce_url("/announce", ih, peer_id(ih, port), port, left, **extra)
        return worker, get(conn, path)


def scrape(s: Serve, ih: bytes) -> tuple[str, tuple[int, int, int]]:
    """One scrape on a fresh connection: (worker, (complete, downloaded, incomplete))."""
    with worker_connection(s) as (worker, conn):
        files = get(conn, scrape_url("/scrape", ih))[b"files"]
        entry = files[ih]  # type: ignore[index]
        return worker, (entry[b"complete"], entry[b"downloaded"], entry[b"incomplete"])


def peer_id(ih: bytes, port: int) -> bytes:
    """The same peer on every announce of one trial (a torrent and a port)."""
    return b"-RW0001-" + port.to_bytes(4, "big") + ih[:8]


def torrent() -> bytes:
    return secrets.token_bytes(20)


def trials(seen: set, want: int) -> Iterator[int]:
    """Trial numbers until ``seen`` holds ``want`` cross-process orders (bounded)."""
    deadline = time.monotonic() + WITHIN
    for n in range(TRIALS):
        if len(seen) >= want or time.monotonic() > deadline:
            return
        if n:
            time.sleep(BETWEEN_TRIALS)
        yield n


def test_a_stop_answered_by_one_worker_is_gone_from_the_next_workers_answer(stack: Serve) -> None:
    orders: set[tuple[str, str]] = set()
    for _ in trials(orders, 2):
        ih = torrent()
        announce(stack, ih, 7001, event="started")
        stopped_by, _ = announce(stack, ih, 7001, event="stopped")
        asked, reply = announce(stack, ih, 7002, numwant=50)
        assert 7001 not in ports(reply[b"peers"]), (stopped_by, asked)
        if stopped_by != asked:
            orders.add((stopped_by, asked))
    assert len(orders) == 2, f"only saw {orders}: the workers were not both reached"


def test_a_scrape_on_a_new_connection_reads_the_announce_just_answered(stack: Serve) -> None:
    orders: set[tuple[str, str]] = set()
    for _ in trials(orders, 2):
        ih = torrent()
        announced_by, _ = announce(stack, ih, 7003, left=0, event="completed")
        asked, counts = scrape(stack, ih)
        assert counts == (1, 1, 0), (announced_by, asked)
        if announced_by != asked:
            orders.add((announced_by, asked))
    assert len(orders) == 2, f"only saw {orders}: the workers were not both reached"


def test_an_http_announce_is_in_the_next_udp_scrape(stack: Serve) -> None:
    seen: set[str] = set()
    for _ in trials(seen, 2):
        ih = torrent()
        announced_by, _ = announce(stack, ih, 7004, left=0, event="completed")
        assert udp_scrape("127.0.0.1", stack.udp.port, ih) == [(1, 1, 0)], announced_by
        seen.add(announced_by)
    assert len(seen) == 2, f"only workers {seen} answered"


def test_a_udp_announce_is_in_the_next_http_scrape(stack: Serve) -> None:
    seen: set[str] = set()
    for _ in trials(seen, 2):
        ih = torrent()
        udp_announce("127.0.0.1", stack.udp.port, ih, peer_id(ih, 7005), 7005, 0, 1)
        asked, counts = scrape(stack, ih)
        assert counts == (1, 1, 0), asked
        seen.add(asked)
    assert len(seen) == 2, f"only workers {seen} answered"


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
        asked, counts = scrape(s, ih)
        assert counts == (1, 0, 0), asked
