"""The cyclic garbage collector's policy in every serving process (workers, UDP processes).

One place for it: the pace (``tune_gc``, at a process's start) and what a bulk
build of the replica does to the collector (``pause``/``resume``, the sync
client's join).

A replica is millions of long-lived objects and a stream of changes allocates
a few per record (a new peer, a new torrent), so CPython's default young
generation of 700 allocations ran a collection every ~100 records and, as the
heap grew, full collections that walk all of it. In an idle worker applying a
crowd of new peers that was about a third of the cost per change
(docs/BENCHMARKS.md). The tracker makes almost no reference cycles (records
are tuples and slotted objects), so collecting young objects 70 times less
often costs little memory and keeps full collections as rare relative to the
heap as before.

The young generation is still bounded, because a collection of it walks every
object in it and a page of the host site does make cycles (the example Flask
site: ~26 cyclic objects a page, compiled templates and their scopes). At 50,000
a young collection in a page worker freed ~23,000 of them at once and took 30-72
ms of CPU (140 ms of wall time under the UDP flood, past the host page's 50 ms
p99 target by itself); at 5,000 the largest took 3.5-5 ms, and an idle worker's
cost per remote change did not move (docs/BENCHMARKS.md, "Issue 16 target 2
(session 7, fair)"). A UDP process serves no pages and keeps 50,000: there the
young generation holds the hub's batches in flight, which each young collection
walks (at 5,000, 1-4 collections of up to 12 ms of CPU in each 5 s of a flood;
at 50,000 none of 0.5 ms or more inside the windows of 11 runs).
"""

from __future__ import annotations

import gc

YOUNG = 5_000  # allocations between young collections (CPython: 700); bounds their pause
YOUNG_UDP = 50_000  # the same in a UDP process (udp-sidecar): no pages, so no cycles
MIDDLE = 20  # young collections per middle one (CPython: 10)
OLD = 100  # middle collections per full one, also bounded by the heap's growth (CPython: 10)

_tuned = False  # this process serves (tune_gc ran), so a built replica is frozen


def tune_gc(young: int = YOUNG) -> None:
    """The pace of a serving process; ``young``: ``YOUNG_UDP`` in a UDP process."""
    global _tuned
    gc.set_threshold(young, MIDDLE, OLD)
    _tuned = True


def pause() -> bool:
    """No collection while a replica is built in bulk (a join): it makes millions of
    objects that all live on, and each collection would walk them again (~2 of ~6.5 us
    a torrent joining 1M). Returns whether it paused (False: the collector was off)."""
    if not gc.isenabled():
        return False
    gc.disable()
    return True


def resume() -> None:
    """The collector back on after ``pause``. In a serving process, everything alive
    now is frozen first (``gc.freeze``: out of every generation, for good): else the
    next young collection walks the whole new replica, then a middle one again, then
    a full one (141 and 237 ms of CPU after joining 1M single-peer torrents, under 3 ms
    frozen; docs/BENCHMARKS.md, "Issue 16 target 2 (session 7, fair)"). Reference
    counting still frees frozen objects; only cycles among them are never collected,
    and a replica makes none (records are bytes, tuples and slotted objects), so what
    can leak is bounded by the cyclic objects alive at each join."""
    if _tuned:
        gc.freeze()
    gc.enable()
