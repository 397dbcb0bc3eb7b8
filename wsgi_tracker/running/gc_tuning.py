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
"""

from __future__ import annotations

import gc

YOUNG = 50_000  # allocations between young collections (CPython: 700)
MIDDLE = 20  # young collections per middle one (CPython: 10)
OLD = 100  # middle collections per full one, also bounded by the heap's growth (CPython: 10)


def tune_gc() -> None:
    gc.set_threshold(YOUNG, MIDDLE, OLD)
