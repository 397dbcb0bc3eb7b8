"""What the hub and the client both do to a replica: merge remote changes, collect local ones."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from wsgi_tracker.core.pending import FOLD_PER_RECORD
from wsgi_tracker.core.swarm import SwarmStore
from wsgi_tracker.core.types import AnnounceReport, PeerChange, PeerRow
from wsgi_tracker.sync import frames
from wsgi_tracker.sync.frames import RECORDS_PER_FRAME

AbstractLock = Any  # threading.Lock or gevent's; both are context managers

# Local changes held while the hub is away. Past it the oldest are dropped: the
# re-sent live peers after a reconnect cover them, only a stop can be lost.
MAX_BUFFERED = 200_000
# Workers and the hub alike send at most one batch per FLUSH_DELAY: a change waits
# up to this long, and at 10k announces/s a batch still carries ~5 changes per
# process. 1 ms rather than 2 ms took the sync-alone p50 lag from ~2.3 to ~1.2 ms;
# CPU per HTTP announce did not move measurably (bench.sync_lag).
FLUSH_DELAY = 0.001
# A batch this large is sent at once rather than after the flush delay.
FLUSH_RECORDS = 256
# A pure refresh of a known peer waits at most this long in the hub before it is shipped,
# and ships once however often the peer announced meanwhile. Receivers then hold the
# peer's expiry up to this much early, against a TTL of about an hour (docs/SYNC.md,
# "Shipping"); and a reply to such an announce does not wait for its ack (client.py).
REFRESH_WINDOW = 0.95  # plus at most one of the hub's REFRESH_TICK: out within a second
# Both ends heartbeat after this much silence, and give the other up after DEAD_AFTER.
HEARTBEAT = 1.0
DEAD_AFTER = 10.0
RECV_BYTES = 256 << 10  # one read from a sync socket
# A join of a million torrents takes seconds on both ends: the joining client is
# silent while it applies (its reader always has data waiting), and the hub may
# be slow to send while it walks its store. Until the join is done, silence
# ends the connection only after this long.
JOIN_WAIT = 120.0
# The hub writes a client's queue in pieces this big: a socket timeout then means
# no progress for DEAD_AFTER, not a large queue drained slowly.
WRITE_CHUNK = 256 << 10


def batch_wait(last: float, now: float, buffered: int, flush_delay: float = FLUSH_DELAY) -> float:
    """How long a flusher holds the batch it was woken for; the one rule of both flushers.

    At most one batch per ``flush_delay``: a lone change (the delay since the
    ``last`` batch has passed) goes at once, a stream is batched, and a batch of
    ``FLUSH_RECORDS`` goes without waiting.
    """
    if buffered >= FLUSH_RECORDS:
        return 0.0
    return max(0.0, last + flush_delay - now)


def refresh_ahead(window: float = REFRESH_WINDOW) -> float:
    """How far ahead a peer's expiry must be for a refresh of it to be held ``window``:
    so far that a receiver getting it up to ``window`` late never lets the peer lapse."""
    return 2 * window + 1.0


def walk(
    store: SwarmStore,
    torrents: Sequence[bytes],
    lock: AbstractLock | None = None,
    less: Callable[[], Mapping[bytes, int]] | None = None,
    totals: bool = True,
) -> Iterator[tuple[frames.PeerRecords, list[tuple[bytes, int]]]]:
    """The replica torrent by torrent, in chunks of about ``RECORDS_PER_FRAME`` records.

    The one walk behind the hub's snapshot for a joining client, a client's
    re-sent replica and the snapshot file (``SwarmStore.state_rows``). Each
    chunk's peers and totals (as held, less what ``less()`` holds then for each
    torrent; none without ``totals``) are taken together under ``lock``, once a chunk
    (a few ms at most); the generator never yields control inside a chunk, so
    the caller decides what runs between chunks. The peers come as rows
    (``PeerRecords``), which ``frames.encode`` packs without a PeerChange
    apiece. The last chunk may be empty.
    """
    guard = contextlib.nullcontext() if lock is None else lock
    at = 0
    while True:
        with guard:
            rows, pairs, at = store.state_rows(
                torrents, at, RECORDS_PER_FRAME, None if less is None else less(), totals
            )
        yield frames.PeerRecords(rows), pairs
        if at >= len(torrents):
            return


def apply_remote(store: SwarmStore, change: PeerChange, state: bool = False) -> bool:
    """Merge one change another process made (``SwarmStore.merge`` has the rules: a delta
    wins a tie, state loses one, downloads are never counted); whether it was applied."""
    return store.merge(change, state)


def merge(
    store: SwarmStore,
    peers: Sequence[PeerChange],
    state: bool = False,
    start: int = 0,
    stop: int | None = None,
    news: list[PeerRow] | None = None,
) -> int:
    """Merge ``peers[start:stop]`` (a decoded frame's ``PeerRecords``, or any sequence of
    changes) as ``apply_remote`` would one by one, in bulk; how many were applied.

    Callers that must yield between slices (a joining client, a lagging hub)
    pass bounded ``start``/``stop``; ``news`` collects the applied records. State
    (a snapshot) goes through ``SwarmStore.load_state``, which makes the torrents
    the store lacks in one step each: a joining replica lacks them all.
    """
    rows = frames.peer_rows(peers)
    if state and news is None:
        return store.load_state(rows, start, stop)
    return store.merge_many(rows, start, stop, state, news)


def stash(store: SwarmStore, peers: Sequence[PeerChange], start: int, stop: int) -> None:
    """Take ``peers[start:stop]`` (a Deltas frame's records) to be applied lazily, each
    torrent's when it is next read (``SwarmStore.stash``); past the store's
    ``max_pending``, fold the oldest, about twice as many as came in, and past twice
    ``max_pending`` until the bound holds again.

    Not all at once at the bound: under an even flood every torrent has records in the
    oldest batch, so freeing it means folding nearly everything stashed, and doing that
    in the one call that crossed the bound held a worker for ~95 ms (250,000 records;
    docs/BENCHMARKS.md, "Session 13"). Folding twice the inflow per call frees the old
    batches within about one more ``max_pending`` of arrivals."""
    if isinstance(peers, frames.PeerRecords):
        records = peers.pending(start, stop)
    else:
        records = frames.PeerRecords(list(frames.peer_rows(peers[start:stop])))
    store.stash(records, int(store.clock()))
    pending = store.pending
    if pending.retained > store.max_pending:
        store.fold_some(FOLD_PER_RECORD * (stop - start))
        while pending.retained > 2 * store.max_pending and store.fold_some(stop - start):
            pass


class ChangeBuffer:
    """The listener on ``TrackerCore.listeners``: costs an append, never a syscall.

    The core calls it with ``core.lock`` held, and ``take``/``put_back`` take
    the same lock, so nothing slips between. ``wake`` is called once per batch
    (the first change after a ``take``), so a flusher sleeps until there is
    something to send.
    """

    def __init__(
        self,
        lock: AbstractLock,
        wake: Callable[[], None],
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.changes: collections.deque[PeerChange] = collections.deque(maxlen=max_buffered)
        self.counts: dict[bytes, int] = {}
        # Non-empty batches taken so far: the change just made is in batch ``taken + 1``
        # while the buffer holds anything, else in one already taken (read-your-writes,
        # client.py numbers its Mark frames by it).
        self.taken = 0
        self._wake = wake
        self._armed = False
        self._lock = lock

    def __call__(self, change: PeerChange, counted: bool, refreshed: float = 0.0) -> None:
        self.changes.append(change)
        if counted:
            ih = change.info_hash
            self.counts[ih] = self.counts.get(ih, 0) + 1
        if not self._armed:
            self._armed = True
            self._wake()

    def __len__(self) -> int:
        return len(self.changes)

    def take(self) -> tuple[list[PeerChange], list[tuple[bytes, int]]]:
        """Everything buffered so far, emptying the buffer."""
        with self._lock:
            self._armed = False
            if self.changes:
                self.taken += 1
            changes = list(self.changes)
            self.changes.clear()
            counts, self.counts = self.counts, {}
        return changes, list(counts.items())

    def put_back(self, changes: list[PeerChange], counts: list[tuple[bytes, int]]) -> None:
        """Return a batch that could not be sent, ahead of anything buffered since."""
        with self._lock:
            self.changes.extendleft(reversed(changes))
            for ih, n in counts:
                self.counts[ih] = self.counts.get(ih, 0) + n

    def pending_count(self, info_hash: bytes) -> int:
        """Downloads counted here and not yet sent (call with the core's lock held)."""
        return self.counts.get(info_hash, 0)


class ReportBuffer:
    """Accepted announces' reports on their way to the hub, whose ledger runs the hook.

    ``offer`` is the hook's sink (``AnnounceHook.sink``), called with
    ``core.lock`` held; it never wakes the flusher itself, since the same
    announce's change already has. Bounded like the changes: a report it
    cannot hold is refused, and the hook counts it dropped.
    """

    def __init__(self, lock: AbstractLock, max_buffered: int = MAX_BUFFERED) -> None:
        self.reports: list[AnnounceReport] = []
        self.max_buffered = max_buffered
        self._lock = lock

    def offer(self, report: AnnounceReport) -> bool:
        if len(self.reports) >= self.max_buffered or not frames.fits_the_wire(report.user):
            return False
        self.reports.append(report)
        return True

    def take(self) -> list[AnnounceReport]:
        with self._lock:
            reports, self.reports = self.reports, []
        return reports

    def put_back(self, reports: list[AnnounceReport]) -> None:
        with self._lock:
            self.reports[:0] = reports
