"""What the collectors after a join cost, with and without the freeze:
``python -m bench.gc_join [--torrents 1000000]``.

In-process, one interpreter per case. A joined replica's single-peer torrents
(the store's ``Swarm`` holding a ``OnePeer``, as a join leaves them) are built
with the collector paused, as the sync client pauses it; then it resumes,
through ``core/gc_tuning.resume`` (``frozen``: in a serving process, so the
replica is frozen) or by plain ``gc.enable`` (``plain``: what it did before),
and the process goes on making torrents that live and cycles that do not
(400,000 steps: a new torrent every 4th, a cyclic dict each). Every collection
is timed in CPU (``time.thread_time``) by a ``gc.callbacks`` probe; the line
gives their number, their total and the three largest, with their generation.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file: python bench/gc_join.py
    sys.path.insert(0, str(REPO))

from wsgi_tracker.core import gc_tuning  # noqa: E402
from wsgi_tracker.core.swarm import OnePeer, Swarm  # noqa: E402

STEPS = 400_000


def torrent(n: int) -> Swarm:
    swarm = Swarm()
    swarm.v4 = OnePeer(n.to_bytes(26, "big"))
    return swarm


def one_case(frozen: bool, torrents: int) -> dict[str, object]:
    """Run in a fresh interpreter: the join, then the steps, every collection timed."""
    gc_tuning.tune_gc()
    gc_tuning.pause()
    replica = {n.to_bytes(20, "big"): torrent(n) for n in range(torrents)}
    pauses: list[tuple[int, float]] = []
    began = [0.0]

    def probe(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.thread_time()
        else:
            pauses.append((info["generation"], (time.thread_time() - began[0]) * 1000))

    gc.callbacks.append(probe)  # before the collector resumes: its first collection counts
    if frozen:
        gc_tuning.resume()
    else:
        gc.enable()
    later = []
    for n in range(STEPS):
        cycle: dict[str, object] = {}
        cycle["self"] = cycle
        if n % 4 == 0:
            later.append(torrent(torrents + n))
    gc.callbacks.remove(probe)
    largest = sorted(pauses, key=lambda p: -p[1])[:3]
    return {
        "torrents": len(replica),
        "collections": len(pauses),
        "cpu_ms": round(sum(ms for _, ms in pauses), 1),
        "largest": [(g, round(ms, 1)) for g, ms in largest],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torrents", type=int, default=1_000_000, help="joined (1,000,000)")
    parser.add_argument("--case", choices=("plain", "frozen"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # the child
        print(json.dumps(one_case(args.case == "frozen", args.torrents)))
        return
    for case in ("plain", "frozen"):
        child = [sys.executable, "-m", "bench.gc_join", "--case", case]
        done = subprocess.run(
            [*child, "--torrents", str(args.torrents)],
            capture_output=True, text=True, check=True, cwd=REPO,
        )  # fmt: skip
        r = json.loads(done.stdout)
        print(
            f"GC_JOIN {case}: {r['torrents']} torrents joined, then {STEPS} steps: "
            f"{r['collections']} collections, {r['cpu_ms']} ms CPU in all, largest "
            f"(generation, ms) {r['largest']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
