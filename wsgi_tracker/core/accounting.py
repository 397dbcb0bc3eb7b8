"""Announce accounting, computed once for the whole tracker (docs/ACCESS.md).

A private site credits each user the bytes their peers moved and the time
they seeded. Clients report cumulative counters per session, and a peer's
announces land on any worker or the UDP sidecar, so the arithmetic needs the
peer's previous announce wherever it was made. The tracker does it once:

* every accepted announce becomes an ``AnnounceReport`` (what the process
  that admitted it saw);
* one ``Ledger`` per tracker keeps each peer's previous report (its baseline)
  and turns each report into an ``AnnounceEvent`` with the deltas since it;
  a peer that vanishes without ``stopped`` becomes an ``EVENT_EXPIRED`` event.

With sync on, the ledger is the hub's (udp-sidecar): every process sends its
reports with its sync deltas, so every accepted announce reaches it exactly
once. Without sync, the process that serves keeps its own. Same code both
ways; nothing here touches a socket, a thread or a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from wsgi_tracker.access.hooks import EVENT_EXPIRED, AnnounceEvent, AnnounceHook
from wsgi_tracker.core.addresses import split_endpoint
from wsgi_tracker.core.locks import ProcessLock
from wsgi_tracker.core.types import EVENT_STOPPED, AnnounceReport


def counter_delta(baseline: int, current: int) -> int:
    """Bytes since the baseline; a counter that went backwards (a client restarted its
    session) credits nothing and becomes the new baseline."""
    return current - baseline if current >= baseline else 0


def event_for(
    report: AnnounceReport, previous: AnnounceReport | None, event: int | None = None
) -> AnnounceEvent:
    """The hook's event for ``report`` measured from ``previous`` (None: nothing to
    measure from, so every delta is 0)."""
    ip, port = split_endpoint(report.endpoint)
    up = down = 0
    seeding = leeching = 0.0
    if previous is not None:
        up = counter_delta(previous.uploaded, report.uploaded)
        down = counter_delta(previous.downloaded, report.downloaded)
        elapsed = max(0.0, report.timestamp - previous.timestamp)
        if previous.left == 0:
            seeding = elapsed
        else:
            leeching = elapsed
    return AnnounceEvent(
        report.user,
        report.info_hash,
        report.peer_id,
        report.uploaded,
        report.downloaded,
        report.left,
        report.event if event is None else event,
        report.timestamp,
        ip,
        port,
        report.protocol,
        up,
        down,
        seeding,
        leeching,
    )


# A report waits this long before it is accounted, so that an announce made a moment
# earlier elsewhere, still on its way through sync (milliseconds), is accounted first.
REORDER_SECONDS = 1.0
# Sessions ended by ``stopped`` are remembered this long (bounded), so a late report
# from before the stop starts no ghost session.
STOP_MEMORY = 300.0
MAX_STOPS_REMEMBERED = 100_000


class Ledger:
    """Each live peer's baseline; turns reports into events for ``emit``.

    ``record`` only queues a report; ``settle`` accounts those older than
    ``REORDER_SECONDS`` in timestamp order, since one peer's announces reach
    the hub from several processes and may arrive out of order. Baselines are
    kept oldest first, so expiry pops from the front. A report from the same
    instant as the baseline is the same announce received twice (a batch
    re-sent after a lost connection) and is dropped; an older one (later than
    the reorder window) is delivered with zero deltas and leaves the baseline
    alone. Past ``max_peers`` the oldest baseline is expired early.
    """

    lock = ProcessLock()

    def __init__(
        self, emit: Callable[[AnnounceEvent], None], peer_ttl: int, max_peers: int = 1_000_000
    ) -> None:
        self.emit = emit
        self.peer_ttl = peer_ttl
        self.max_peers = max_peers
        self.pending: list[AnnounceReport] = []
        self.baselines: OrderedDict[bytes, AnnounceReport] = OrderedDict()
        self.stops: OrderedDict[bytes, float] = OrderedDict()
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self.baselines)

    def record(self, report: AnnounceReport) -> None:
        """Queue one report for ``settle``: an append, safe under ``TrackerCore.lock``."""
        with self.lock:
            self.pending.append(report)

    def settle(self, now: float, window: float = REORDER_SECONDS) -> None:
        """Account, oldest first, every queued report made before ``now - window``."""
        horizon = now - window
        with self.lock:
            pending = self.pending
            if not pending:
                return
            due = [r for r in pending if r.timestamp <= horizon]
            if len(due) < len(pending):
                self.pending = [r for r in pending if r.timestamp > horizon]
            else:
                self.pending = []
            due.sort(key=_when)
            for report in due:
                self._account(report)

    def _account(self, report: AnnounceReport) -> None:
        key = report.info_hash + report.peer_id
        previous = self.baselines.get(key)
        if previous is not None and previous.user != report.user:
            previous = None  # another user's session: it starts afresh
        if previous is not None and report.timestamp <= previous.timestamp:
            if report.timestamp == previous.timestamp:
                self.duplicates += 1
            else:
                self.emit(event_for(report, None))
            return
        if previous is None and self.stops.get(key, -1.0) > report.timestamp:
            self.emit(event_for(report, None))  # from before the session's stop
            return
        self.emit(event_for(report, previous))
        if report.event == EVENT_STOPPED:
            # Only the peer's own host ends its session, as only it removes the peer.
            if previous is None or previous.endpoint[:-2] == report.endpoint[:-2]:
                self.baselines.pop(key, None)
                self._remember_stop(key, report.timestamp)
            return
        self.baselines[key] = report
        self.baselines.move_to_end(key)
        while len(self.baselines) > self.max_peers:
            _, oldest = self.baselines.popitem(last=False)
            self.emit(_expiry(oldest, oldest.timestamp))

    def _remember_stop(self, key: bytes, when: float) -> None:
        stops = self.stops
        stops.pop(key, None)
        stops[key] = when
        horizon = when - STOP_MEMORY
        while stops and (len(stops) > MAX_STOPS_REMEMBERED or next(iter(stops.values())) < horizon):
            stops.popitem(last=False)

    def expire(self, now: float) -> int:
        """Emit an expiry for every peer silent for ``peer_ttl``; returns how many."""
        horizon = now - self.peer_ttl
        expired = 0
        with self.lock:
            baselines = self.baselines
            while baselines:
                oldest = next(iter(baselines.values()))
                if oldest.timestamp > horizon:
                    break
                baselines.popitem(last=False)
                self.emit(_expiry(oldest, oldest.timestamp + self.peer_ttl))
                expired += 1
        return expired


def _when(report: AnnounceReport) -> float:
    return report.timestamp


def _expiry(last: AnnounceReport, when: float) -> AnnounceEvent:
    """The event for a peer that went silent: its last figures, nothing credited."""
    ip, port = split_endpoint(last.endpoint)
    return AnnounceEvent(
        last.user,
        last.info_hash,
        last.peer_id,
        last.uploaded,
        last.downloaded,
        last.left,
        EVENT_EXPIRED,
        when,
        ip,
        port,
        last.protocol,
    )


# Takes a report off this process (to the hub); False when it had to drop it.
ReportSink = Callable[[AnnounceReport], bool]


class Accounting:
    """Where this process's accepted announces are accounted: its own ledger, or,
    with sync on, the hub's (``sink``, set by the sync client).

    The hook's thread calls ``tick`` before each delivery: reports settle into
    events and silent peers expire there, never on the announce path.
    """

    def __init__(self, hook: AnnounceHook, peer_ttl: int, clock: Callable[[], float]) -> None:
        self.hook = hook
        self.clock = clock
        self.ledger = Ledger(hook.put, peer_ttl)
        self.sink: ReportSink | None = None
        hook.tick = self.tick

    def record(self, report: AnnounceReport) -> None:
        """Account one accepted announce; called under ``TrackerCore.lock``, never yields."""
        sink = self.sink
        if sink is not None:
            if not sink(report):
                self.hook.dropped += 1
        elif len(self.ledger.pending) >= self.hook.max_queue:
            self.hook.dropped += 1  # the hook is stuck: nothing settles meanwhile
        else:
            self.ledger.record(report)

    def tick(self, final: bool) -> None:
        if final:  # the process is leaving: nothing more will arrive to reorder
            self.ledger.settle(float("inf"))
            return
        now = self.clock()
        self.ledger.settle(now)
        self.ledger.expire(now)
