"""Remote changes a replica has received and not yet applied, kept as they came.

An idle process would otherwise pay to apply every other process's announce
(issue 16 target 1: at most 1.5 us each), most of them to torrents it is never
asked about. ``SwarmStore.stash`` hands each batch here whole, as the sync
layer decoded it (``Records``: a frame's body, cut into rows only when one is
read), and the store folds a torrent's records in, in order, the moment
anything reads or changes that torrent (docs/SYNC.md, "Applying lazily").

What a record costs on arrival is one dict probe and an entry in each of two
flat lists (``_chain``, ``_owners``): no object is made per record but the int
of its torrent's entry. Each torrent's entry in
``by_torrent`` is its last record's number with its record count in the low
bits, and ``_chain`` holds, per record, the entry its torrent had before it
(0 for none): a torrent's records are a backward chain through the batches.
Per-record containers apiece (the items of session 6) cost 2-3 us a record
here, most of it freeing and probing objects gone cold while the process slept.

Records of a torrent nobody reads go without ever being applied: a batch
older than every peer's TTL drops the torrents whose every record is in it or
before it (what they announced has expired everywhere; see ``drop_expired``).
A batch leaves memory once none of its records waits (``live``): the bound
the store keeps (``max_pending``) is on ``retained``, the records of the
batches still kept, waiting or not.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from wsgi_tracker.core.types import PeerRow

# A torrent with this many records stashed is due to be folded (``add`` queues it on
# ``due``), and the store folds due torrents a bounded amount per batch stashed: a flood
# on a few torrents nobody read for a while would otherwise leave thousands each for the
# next read to fold, on its reply's path. Not at once: under an even flood every stash
# reaches the limit within a fraction of a second, and folding them all in the batch
# that tipped them stalled a worker's requests for tens of ms (docs/BENCHMARKS.md,
# "Session 13").
MAX_PER_TORRENT = 256
# ... and one with this many is folded at once (``add`` names it), so that no read of one
# torrent pays for more than this many (~5 ms) however far the due folds fall behind.
HARD_PER_TORRENT = 2 * MAX_PER_TORRENT
# Records a lazy replica keeps stashed (``SwarmStore.max_pending``; ~110-225 B each): past
# it the oldest are folded as fast as records come in, so under a sustained flood every
# record is merged after all, about this many arrivals later (docs/SYNC.md, "Applying
# lazily"; ``bench.apply_cost`` warms up past it).
MAX_PENDING = 250_000
# What a stash folds per call once folds are owed (torrents due, or past ``max_pending``):
# this many times the records it brought, so the owed folds shrink faster than stashes fill.
FOLD_PER_RECORD = 2
_COUNT_BITS = 10  # an entry's low bits: its torrent's record count, up to HARD_PER_TORRENT
_COUNT = (1 << _COUNT_BITS) - 1
# Dead batches at the front are cut off the lists once this many (and half) have gathered.
_COMPACT_AFTER = 64


class Records(Protocol):
    """A batch of remote changes as the sync layer decoded it (``frames.PeerRecords``)."""

    def __len__(self) -> int: ...

    @property
    def rows(self) -> list[PeerRow]: ...

    def info_hashes(self) -> list[bytes | None]: ...

    def row(self, index: int) -> PeerRow: ...


class _Batch:
    """One stashed batch: its first record's number, the second it arrived in, and how
    many of its records still wait to be folded."""

    __slots__ = ("base", "live", "records", "row", "second")

    def __init__(self, base: int, records: Records, second: int) -> None:
        self.base = base
        self.records = records
        self.row: Callable[[int], PeerRow] = records.row  # bound once: a fold calls it often
        self.second = second
        self.live = 0


class PendingChanges:
    """Per torrent, its stashed records in arrival order, kept in the batches they came in."""

    __slots__ = (
        "_batches",
        "_chain",
        "_chain_base",
        "_front",
        "_next",
        "_owners",
        "_scanned",
        "by_torrent",
        "due",
        "records",
        "retained",
    )

    def __init__(self) -> None:
        # torrent -> its last record's number << _COUNT_BITS | its record count
        self.by_torrent: dict[bytes, int] = {}
        # torrents whose stash reached MAX_PER_TORRENT, in that order (one may have been
        # folded since, by a read: ``is_due`` tells)
        self.due: deque[bytes] = deque()
        self.records = 0  # waiting to be folded
        self.retained = 0  # in the batches kept, waiting or not
        self._batches: list[_Batch] = []  # from _front on, the kept ones
        self._front = 0
        self._scanned = 0  # the batches before this one were expired and dropped from
        # record number _chain_base + i -> its torrent's entry before it (0: none), kept
        # as machine words: an int object apiece was a cold read per record in a fold ...
        self._chain: array[int] = array("q")
        # ... and the batch it is in (a pointer apiece: a fold finds each record's at once)
        self._owners: list[_Batch] = []
        self._chain_base = 1
        self._next = 1  # the next record's number (0 means none)

    def __bool__(self) -> bool:
        return bool(self.by_torrent)

    def __len__(self) -> int:
        return len(self.by_torrent)

    def __contains__(self, info_hash: object) -> bool:
        return info_hash in self.by_torrent

    def add(self, records: Records, hashes: list[bytes | None], second: int) -> list[bytes]:
        """Stash ``records`` (``hashes``: each one's info_hash, None for one already
        applied), arrived in ``second``; the torrents that now hold ``HARD_PER_TORRENT``
        records, for the caller to fold at once. Those reaching ``MAX_PER_TORRENT`` go on
        ``due``."""
        pending = self.by_torrent
        get = pending.get
        chain = self._chain
        append = chain.append
        number = first = self._next
        batch = _Batch(first, records, second)
        self._owners.extend([batch] * len(hashes))
        full: list[bytes] = []
        live = 0
        for ih in hashes:
            if ih is None:
                append(0)
            else:
                had = get(ih)
                if had is None:
                    pending[ih] = number << _COUNT_BITS | 1
                    append(0)
                else:
                    count = (had & _COUNT) + 1
                    pending[ih] = number << _COUNT_BITS | count
                    append(had)
                    if count == MAX_PER_TORRENT:
                        self.due.append(ih)
                    elif count == HARD_PER_TORRENT:
                        full.append(ih)
                live += 1
            number += 1
        self._next = number
        batch.live = live
        self._batches.append(batch)
        self.records += live
        self.retained += len(hashes)
        return full

    def is_due(self, info_hash: bytes) -> bool:
        """Whether the torrent holds ``MAX_PER_TORRENT`` records or more."""
        return (self.by_torrent.get(info_hash, 0) & _COUNT) >= MAX_PER_TORRENT

    def take(self, info_hash: bytes) -> list[tuple[int, list[PeerRow]]] | None:
        """The torrent's records, which leave, in arrival order and grouped by the second
        they arrived in; None when it has none."""
        had = self.by_torrent.pop(info_hash, None)
        if had is None:
            return None
        groups: list[tuple[int, list[PeerRow]]] = []
        self._unlink(had, groups)
        self._release()
        return groups

    def _unlink(self, entry: int, groups: list[tuple[int, list[PeerRow]]] | None) -> None:
        """Take a torrent's records out of the batches that hold them, oldest first, from
        its last ``entry``; their rows go to ``groups`` (by arrival second) unless None."""
        chain, base = self._chain, self._chain_base
        numbers: list[int] = []
        while entry:
            number = entry >> _COUNT_BITS
            numbers.append(number)
            entry = chain[number - base]
        self.records -= len(numbers)
        owners = self._owners
        rows: list[PeerRow] = []
        second = -1
        for number in reversed(numbers):
            batch = owners[number - base]
            batch.live -= 1
            if groups is not None:
                if batch.second != second:
                    second = batch.second
                    rows = []
                    groups.append((second, rows))
                rows.append(batch.row(number - batch.base))

    def _release(self) -> None:
        """Let go of the batches at the front with nothing left waiting."""
        batches, front = self._batches, self._front
        while front < len(batches) and not batches[front].live:
            self.retained -= len(batches[front].records)
            front += 1
        self._front = front
        if front >= _COMPACT_AFTER and 2 * front >= len(batches):
            base = batches[front].base if front < len(batches) else self._next
            del self._chain[: base - self._chain_base]
            del self._owners[: base - self._chain_base]
            self._chain_base = base
            del batches[:front]
            self._scanned = max(0, self._scanned - front)
            self._front = 0

    def oldest(self) -> Iterator[bytes]:
        """Torrents with records waiting, those with the oldest first (for folding under a
        bound): each is taken (``take``) before the next is asked for."""
        batches, pending = self._batches, self.by_torrent
        while self._front < len(batches):
            batch = batches[self._front]
            for ih in batch.records.info_hashes():
                if ih is not None and ih in pending:
                    yield ih
            if self._front < len(batches) and batches[self._front] is batch:
                return  # its waiting records are of torrents no longer here: cannot be

    def drop_expired(self, second: int, horizon: int) -> int:
        """Forget, unapplied, the torrents whose every record arrived over ``horizon``
        seconds before ``second``; how many records went.

        The store passes a horizon past its torrent TTL: by then every peer such a
        record announced has expired, and so has the torrent itself unless something
        newer refreshed it, which would have folded its records first. A torrent with
        a newer record keeps all of them, to be folded in order.
        """
        batches, pending = self._batches, self.by_torrent
        at = max(self._scanned, self._front)
        before = self.records
        while at < len(batches) and batches[at].second + horizon <= second:
            batch = batches[at]
            end = batch.base + len(batch.records)
            if batch.live:
                for ih in batch.records.info_hashes():
                    if ih is None:
                        continue
                    had = pending.get(ih)
                    if had is not None and had >> _COUNT_BITS < end:
                        del pending[ih]
                        self._unlink(had, None)
            at += 1
        self._scanned = at
        self._release()
        return before - self.records

    def clear(self) -> None:
        self.by_torrent.clear()
        self.due.clear()
        self._batches.clear()
        del self._chain[:]
        self._owners.clear()
        self._chain_base = self._next
        self._front = self._scanned = 0
        self.records = self.retained = 0
