"""A stopping worker tells its WebSocket clients 1001 "going away", with a reason.

Over real sockets against ``wsgi-tracker serve`` (two workers, sync on): a
graceful stop of one worker (SIGTERM, gunicorn respawns it), a reload of all
of them (SIGHUP to the master), and serve's own stop (SIGTERM to serve). In
each, every connection the stopping workers held gets a close frame with
code 1001 and a reason, well before gunicorn's graceful_timeout (10 s) would
have cut it off without one. Every wait is bounded; nothing is asserted
about speed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import (
    Serve,
    serve,
    wait_until,
    ws_announce,
    ws_closed_with,
    ws_connect,
    ws_holder,
)

pytestmark = pytest.mark.integration

IH = "g" * 20
CONNECTIONS = 6  # over two workers: both hold some (checked below by the closes seen)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Serve]:
    with serve(tmp_path, workers=2) as s:
        yield s


def connected(stack: Serve, n: int = CONNECTIONS) -> list[Any]:
    held = []
    for i in range(n):
        ws = ws_connect(stack.http)
        ws_announce(ws, f"-GA0001-{os.getpid() % 1000:03d}{i:09d}", IH)
        held.append(ws)
    return held


def assert_going_away(ws: Any) -> None:
    code, reason = ws_closed_with(ws)
    assert code == 1001, (code, reason)
    assert "going away" in reason and "stopping" in reason, reason
    ws.close()


def test_a_worker_stopped_gracefully_closes_its_connections_with_1001(stack: Serve) -> None:
    held = connected(stack)
    workers = stack.worker_pids()
    victim = ws_holder(stack.http, held[0], workers)
    mine = [ws for ws in held if ws_holder(stack.http, ws, workers) == victim]
    others = [ws for ws in held if ws not in mine]
    os.kill(victim, signal.SIGTERM)
    for ws in mine:
        assert_going_away(ws)
    # The other worker's connections stay open and served.
    for i, ws in enumerate(others):
        assert ws_announce(ws, f"-GA0001-still-open{i:02d}", IH)["action"] == "announce"
        ws.close()


def test_a_reload_closes_the_old_workers_connections_with_1001(stack: Serve) -> None:
    held = connected(stack)
    old = stack.worker_pids()
    master = stack.master_pid()
    assert master is not None
    os.kill(master, signal.SIGHUP)
    for ws in held:
        assert_going_away(ws)
    assert wait_until(lambda: len(stack.worker_pids() - old) == 2)
    # An old worker accepts until gunicorn tells it to stop, and then closes what
    # it accepted with 1001 too; only once they are gone is every accept a new one's.
    assert wait_until(lambda: not stack.worker_pids() & old)
    fresh = ws_connect(stack.http)  # the new workers serve WebSocket announces
    assert ws_announce(fresh, "-GA0001-after-reload", IH)["incomplete"] >= 1
    fresh.close()


def test_serve_stopping_closes_every_connection_with_1001(tmp_path: Path) -> None:
    with serve(tmp_path, workers=2) as stack:
        held = connected(stack)
        stack.proc.send_signal(signal.SIGTERM)
        for ws in held:
            assert_going_away(ws)
        stack.proc.wait(timeout=30)
