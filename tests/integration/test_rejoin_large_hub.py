"""A worker killed while the hub holds a large state rejoins and answers in full (issue 13).

``wsgi-tracker serve --workers 2``; the hub is filled with ``FILLER`` torrents
by a tool process over the sync socket (as fast as the hub applies them, far
faster than over UDP), one real torrent is announced over HTTP, and a worker
is killed with ``kill -9``. gunicorn starts another, which joins with the
hub's snapshot. Meanwhile scrapes on fresh connections (gunicorn hands each
to either worker) must always find the real torrent and the last filler
torrent with their full counts: a worker never answers from a half-filled
replica, and the new one is not dropped for silence while it joins.
``bench.faults --parts serve`` times the same at a million torrents.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import threading
import time
from pathlib import Path

import bencodepy
import pytest
from servers import Serve, alive, announce_url, scrape_url, serve, wait_until

from wsgi_tracker.core.types import EVENT_STARTED, PeerChange
from wsgi_tracker.sync import frames as f

pytestmark = pytest.mark.integration

FILLER = 150_000
WITHIN = 60.0  # seconds: a bound on every wait (a join on a loaded machine), not a figure
REAL = b"rejoin-real".ljust(20, b".")
LAST = (FILLER - 1).to_bytes(20, "big")  # the hub's walk reaches it last


def fill(sync_socket: str, torrents: int) -> None:
    """``torrents`` one-peer torrents into the hub, as a tool process sends them, and
    back once the hub has acked them (applied, and in every worker's socket)."""
    now = time.time()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WITHIN)
        sock.connect(sync_socket)
        sock.sendall(f.encode(f.Hello(f.ROLE_TOOL, os.getpid())))
        decoder = f.FrameDecoder()

        def until(kind: type) -> None:
            while True:
                data = sock.recv(1 << 16)
                assert data, "the hub closed the connection"
                if any(isinstance(frame, kind) for frame in decoder.feed(data)):
                    return

        until(f.SnapshotDone)
        sock.sendall(f.encode(f.Totals([])) + f.encode(f.SnapshotDone()))
        for start in range(0, torrents, f.RECORDS_PER_FRAME):
            peers = [
                PeerChange(
                    n.to_bytes(20, "big"),
                    b"-FL0001-" + n.to_bytes(12, "big"),
                    bytes([10, n >> 16 & 255, n >> 8 & 255, n & 255, 26, 225]),
                    False,
                    EVENT_STARTED,
                    now,
                )
                for n in range(start, min(start + f.RECORDS_PER_FRAME, torrents))
            ]
            sock.sendall(f.encode(f.Deltas(peers)))
        sock.sendall(f.encode(f.Mark(1)))
        until(f.Ack)


def scrape(s: Serve) -> dict[bytes, tuple[int, int, int]]:
    """(complete, downloaded, incomplete) of the real torrent and the last filler one."""
    conn = http.client.HTTPConnection("127.0.0.1", s.http.port, timeout=WITHIN)
    try:
        conn.request("GET", scrape_url("/scrape", REAL, LAST))
        files = bencodepy.decode(conn.getresponse().read()).get(b"files", {})
    finally:
        conn.close()
    keys = (b"complete", b"downloaded", b"incomplete")
    return {ih: tuple(files.get(ih, {}).get(k, 0) for k in keys) for ih in (REAL, LAST)}


def announce(s: Serve, left: int, event: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", s.http.port, timeout=WITHIN)
    try:
        peer = b"-RJ0001-" + secrets.token_bytes(12)
        conn.request("GET", announce_url("/announce", REAL, peer, 6881, left, event=event))
        assert b"failure reason" not in conn.getresponse().read()
    finally:
        conn.close()


def scrapes_by(s: Serve, pid: int) -> float:
    """Scrapes the process ``pid`` answered, as /stats (served by any worker) reports them."""
    conn = http.client.HTTPConnection("127.0.0.1", s.http.port, timeout=WITHIN)
    try:
        conn.request("GET", "/stats")
        report = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return report.get("by_process", {}).get(f"http:{pid}", {}).get("scrapes", 0)


def each_answers_in_full(s: Serve, pids: set[int], full: dict[bytes, tuple[int, int, int]]) -> bool:
    counted = {pid: scrapes_by(s, pid) for pid in pids}
    if not all(scrape(s) == full for _ in range(10)):
        return False
    return wait_until(lambda: all(scrapes_by(s, p) > counted[p] for p in pids), 5.0)


def test_a_worker_killed_rejoins_a_large_hub_and_answers_in_full(tmp_path: Path) -> None:
    with serve(tmp_path, config='stats_path = "/stats"\n') as s:
        fill(str(tmp_path / "hub" / "sync.sock"), FILLER)
        announce(s, 0, "completed")
        announce(s, 100, "started")
        announce(s, 100, "started")
        full = {REAL: (1, 1, 2), LAST: (0, 0, 1)}
        before = s.worker_pids()
        # Both workers hold it all before the kill (one may still be applying the fill):
        # a round of scrapes all full, of which /stats says each worker answered some.
        assert wait_until(lambda: each_answers_in_full(s, before, full), WITHIN), scrape(s)
        victim = min(before)
        answers: list[dict[bytes, tuple[int, int, int]]] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set() and len(answers) < 10_000:
                # The request the killed worker held when it died is reset: no answer at
                # all (the probe used to die of it, and the new worker then got no scrape
                # to count: 2 of 5 runs failed at load ~1).
                with contextlib.suppress(ConnectionError):
                    answers.append(scrape(s))
                time.sleep(0.01)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        try:
            os.kill(victim, signal.SIGKILL)
            assert wait_until(lambda: not alive(victim) and len(s.worker_pids() - before), WITHIN)
            (new,) = s.worker_pids() - before
            joined = f"worker pid {new} re-sent"
            assert wait_until(lambda: joined in s.log(), WITHIN), s.log()[-3000:]
            # The new worker answers scrapes: /stats counts them by process.
            assert wait_until(lambda: scrapes_by(s, new) > 0, WITHIN), s.log()[-3000:]
        finally:
            stop.set()
            prober.join(WITHIN)
        assert answers and all(a == full for a in answers), [a for a in answers if a != full][:5]
        log = s.log()
        assert "silent for" not in log, log[-3000:]
        assert len(re.findall(rf"sync hub: worker pid {new} connected", log)) == 1, log[-3000:]
