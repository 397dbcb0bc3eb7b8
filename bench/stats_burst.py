"""What a burst of /stats requests costs one worker: ``python -m bench.stats_burst``.

In one gevent-patched process: a replica of ``--torrents`` one-peer torrents,
then ``--burst`` statistics snapshots at once (what /stats and /metrics render),
as concurrent requests on one worker are. Prints the walks of the replica they
made and the CPU they took (docs/HARDENING.md, "Attacks (session 6)").
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after patching, as in a worker)
import time  # noqa: E402

import gevent  # noqa: E402

from wsgi_tracker.config import TrackerConfig  # noqa: E402
from wsgi_tracker.core.tracker import TrackerCore  # noqa: E402
from wsgi_tracker.core.types import Announce  # noqa: E402
from wsgi_tracker.stats import collect  # noqa: E402
from wsgi_tracker.stats.collect import TrackerStats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torrents", type=int, default=300_000)
    parser.add_argument("--burst", type=int, default=20)
    args = parser.parse_args()
    core = TrackerCore(TrackerConfig(max_torrents=max(args.torrents, 1)))
    for n in range(args.torrents):
        core.announce(Announce(n.to_bytes(20, "big"), b"p" * 20, 6881, left=0), b"\x7f\0\0\1")
    stats = TrackerStats(core)
    walks = []
    walk = collect.replica_totals

    def counted(of: TrackerCore) -> tuple[int, int, int]:
        walks.append(1)
        return walk(of)

    collect.replica_totals = counted
    start = time.process_time()
    gevent.joinall([gevent.spawn(stats.snapshot) for _ in range(args.burst)])
    cpu = time.process_time() - start
    print(f"torrents {args.torrents} burst {args.burst}: {len(walks)} walks, {cpu:.2f} s CPU")


if __name__ == "__main__":
    main()
