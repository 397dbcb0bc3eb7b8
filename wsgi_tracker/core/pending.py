"""Remote changes a replica has received and not yet applied, kept per torrent.

An idle process would otherwise pay to apply every other process's announce
(issue 16 target 1: at most 1.5 us each), most of them to torrents it is never
asked about. ``SwarmStore.stash`` puts them here instead, each as the opaque
item the sync layer made of it (an info_hash first, the second it arrived in
last), and the store folds a torrent's items in, in order, the moment anything
reads or changes that torrent (docs/SYNC.md, "Applying lazily").

What it costs per change is a dict lookup and a store of the item: a
torrent's first pending change is kept bare, its later ones in a list. The
items of a torrent nobody reads go without ever being applied: they are
grouped by arrival into generations of ``GENERATION`` seconds, and a
generation whose last second is past every peer's TTL drops the torrents whose
every pending change is in it (what they announced has expired everywhere;
see ``drop_expired``).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

Item = tuple[Any, ...]  # (info_hash, ..., arrival second); only the sync layer reads the middle
GENERATION = 60  # seconds of arrivals per generation
# A torrent with this many items stashed is folded at once (``add`` names it): the read
# that folds a torrent pays for all its items (~2.5 ms at most, then), and a torrent
# that busy is read soon anyway. A flood on a few torrents nobody read for a while
# would otherwise leave thousands each for the next read to fold, on its reply's path.
MAX_PER_TORRENT = 256

_first = itemgetter(0)


class PendingChanges:
    """Per torrent, the stashed items in arrival order; bounded in time by generations."""

    __slots__ = ("_generations", "by_torrent", "records")

    def __init__(self) -> None:
        # A torrent's one item, or its list of them (a list apiece cost ~0.3 us a torrent).
        self.by_torrent: dict[bytes, Any] = {}
        self.records = 0
        # (first second, the torrents with items that arrived from then on, for GENERATION s)
        self._generations: collections.deque[tuple[int, set[bytes]]] = collections.deque()

    def __bool__(self) -> bool:
        return bool(self.by_torrent)

    def __len__(self) -> int:
        return len(self.by_torrent)

    def __contains__(self, info_hash: object) -> bool:
        return info_hash in self.by_torrent

    def add(self, items: Sequence[Item], second: int) -> list[bytes]:
        """Stash ``items`` (each ending with ``second``) behind each torrent's earlier ones;
        the torrents that now hold ``MAX_PER_TORRENT`` items, for the caller to fold."""
        pending = self.by_torrent
        get = pending.get
        full: list[bytes] = []
        for item in items:
            ih = item[0]
            had = get(ih)
            if had is None:
                pending[ih] = item
            elif type(had) is list:
                had.append(item)
                if len(had) == MAX_PER_TORRENT:
                    full.append(ih)
            else:
                pending[ih] = [had, item]
        self.records += len(items)
        generations = self._generations
        if not generations or second >= generations[-1][0] + GENERATION:
            generations.append((second, set()))
        generations[-1][1].update(map(_first, items))
        return full

    def take(self, info_hash: bytes) -> list[Item] | None:
        """The torrent's items in arrival order, which leave; None when it has none."""
        had = self.by_torrent.pop(info_hash, None)
        if had is None:
            return None
        if type(had) is not list:
            had = [had]
        self.records -= len(had)
        return had

    def oldest(self) -> Iterator[bytes]:
        """Torrents with items, those with the oldest first (for folding under a bound)."""
        generations = self._generations
        pending = self.by_torrent
        while generations:
            torrents = generations[0][1]
            while torrents:
                ih = torrents.pop()
                if ih in pending:
                    yield ih
            generations.popleft()

    def drop_expired(self, second: int, horizon: int) -> int:
        """Forget, unapplied, the torrents whose every item arrived over ``horizon``
        seconds before ``second``; how many items went.

        The store passes a horizon past its torrent TTL: by then every peer such an
        item announced has expired, and so has the torrent itself unless something
        newer refreshed it, which would have folded the items first. A torrent with
        a newer item keeps all of them, to be folded in order.
        """
        generations, pending = self._generations, self.by_torrent
        dropped = 0
        while generations and generations[0][0] + GENERATION + horizon <= second:
            start, torrents = generations.popleft()
            end = start + GENERATION
            for ih in torrents:
                had = pending.get(ih)
                if had is None:
                    continue
                last = had[-1][-1] if type(had) is list else had[-1]
                if last < end:
                    del pending[ih]
                    dropped += len(had) if type(had) is list else 1
        self.records -= dropped
        return dropped

    def clear(self) -> None:
        self.by_torrent.clear()
        self._generations.clear()
        self.records = 0
