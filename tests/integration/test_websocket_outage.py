"""WebSocket peers while the sync hub (udp-sidecar) is away, under ``wsgi-tracker serve``.

The outage is made certain, not raced: serve itself is paused (SIGSTOP) so
it cannot restart the sidecar, the sidecar is killed, and only once both
workers have logged the loss do the clients act. Then serve resumes, restarts
the sidecar, and the workers rejoin. The worker that held the changes must
bring the other up to date: a peer announced during the outage is offered to
from the other worker, and a peer that left during it is gone there (not
lingering for ``ws_peer_ttl``). Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import (
    Serve,
    alive,
    serve,
    wait_until,
    ws_announce,
    ws_connect_in,
    ws_eventually_scrape,
    ws_offer,
    ws_recv,
)

pytestmark = pytest.mark.integration

WITHIN = 20.0  # seconds: a bound on every wait, not a figure under test
IH = "o" * 20
LEAVES, COMES, OFFERS = "-OU0001-leaves000001", "-OU0001-comes0000001", "-OU0001-offers000001"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Serve]:
    with serve(tmp_path, workers=2) as s:
        yield s


def test_peers_announced_and_gone_during_a_hub_outage_reach_the_other_worker(
    stack: Serve,
) -> None:
    workers = stack.worker_pids()
    a, b = sorted(workers)
    ws_b, ws_a, ws_gone = (ws_connect_in(stack.http, w, workers) for w in (b, a, a))
    ws_announce(ws_gone, LEAVES, IH)
    before = {"complete": 0, "incomplete": 1, "downloaded": 0}
    assert ws_eventually_scrape(ws_b, IH, before, WITHIN) == before

    sidecar = stack.sidecar_pid()
    assert sidecar is not None
    stack.proc.send_signal(signal.SIGSTOP)  # serve cannot restart the sidecar now
    try:
        os.kill(sidecar, signal.SIGKILL)
        assert wait_until(lambda: not alive(sidecar), WITHIN)
        assert wait_until(lambda: stack.log().count("lost the sync hub") >= 2, WITHIN)
        joined = stack.log().count("reconnected to the sync hub")
        ws_announce(ws_a, COMES, IH)
        ws_gone.close()
        assert ws_eventually_scrape(ws_a, IH, before, WITHIN) == before  # one left, one came
    finally:
        stack.proc.send_signal(signal.SIGCONT)
    rejoined = "reconnected to the sync hub"
    assert wait_until(lambda: stack.log().count(rejoined) >= joined + 2, WITHIN)

    # Worker B's replica: the new peer in, the gone one out.
    after = {"complete": 0, "incomplete": 1, "downloaded": 0}
    assert ws_eventually_scrape(ws_b, IH, after, WITHIN) == after
    ws_announce(ws_b, OFFERS, IH, offers=[ws_offer(1)], numwant=1)
    got = ws_recv(ws_a)  # B's offer to COMES, through the restarted hub to worker A
    assert got["peer_id"] == OFFERS and got["offer"] == ws_offer(1)["offer"], got
    for ws in (ws_a, ws_b):
        ws.close()
