"""The cyclic garbage collector's pace in every serving process (workers, UDP processes).

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
(session 7, fair)").
"""

from __future__ import annotations

import gc

YOUNG = 5_000  # allocations between young collections (CPython: 700); bounds their pause
MIDDLE = 20  # young collections per middle one (CPython: 10)
OLD = 100  # middle collections per full one, also bounded by the heap's growth (CPython: 10)


def tune_gc() -> None:
    gc.set_threshold(YOUNG, MIDDLE, OLD)
