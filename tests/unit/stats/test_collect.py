"""``stats.collect``: what a burst of /stats requests costs the process serving them."""

from __future__ import annotations

import threading

import pytest

from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import Announce
from wsgi_tracker.stats import collect
from wsgi_tracker.stats.collect import TrackerStats


def test_a_burst_of_stats_requests_walks_the_replica_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each /stats of a burst began its own walk of every torrent (a copy of every key
    and, at 1M torrents, seconds of CPU each); now the others wait for the one walk."""
    core = TrackerCore(TrackerConfig())
    for n in range(50):
        core.announce(Announce(bytes([n]) * 20, b"p" * 20, 6881, left=0), bytes([127, 0, 0, 1]))
    stats = TrackerStats(core)
    walks: list[int] = []
    walking, finish = threading.Event(), threading.Event()
    walk = collect.replica_totals

    def held_walk(of: TrackerCore) -> tuple[int, int, int]:
        walks.append(1)
        walking.set()
        assert finish.wait(30)
        return walk(of)

    monkeypatch.setattr(collect, "replica_totals", held_walk)
    seen: list[int] = []
    burst = [threading.Thread(target=lambda: seen.append(stats.snapshot()["torrents"]))]
    burst[0].start()
    assert walking.wait(30)
    for _ in range(8):
        burst.append(threading.Thread(target=lambda: seen.append(stats.snapshot()["torrents"])))
        burst[-1].start()
    finish.set()
    for thread in burst:
        thread.join(30)
    assert len(walks) == 1
    assert seen == [50] * 9
