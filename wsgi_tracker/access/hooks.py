"""The announce hook: the host app hears of announces in batches, off the request path.

A site doing ratio accounting wants every announce with its deltas, but must
not slow announces down. The core's ledger (``core/accounting.py``) turns
announces into ``AnnounceEvent``s and ``AnnounceHook.put`` appends them to a
bounded deque (no syscall, no switch); a background thread started by
``start`` (a greenlet once gevent has patched ``threading``) runs the ledger's
periodic work (``tick``) and hands the host callable lists of events every
``hook_flush_seconds``, each sized for one database transaction. When the
queue is full, new events are dropped and counted rather than blocking.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from wsgi_tracker.access.policy import resolve_callable
from wsgi_tracker.config import TrackerConfig

log = logging.getLogger(__name__)

BATCH_SIZE = 10_000  # events per call: one database transaction's worth

# Not a BEP 15 event: the peer stopped announcing and its TTL ran out.
EVENT_EXPIRED = 4


@dataclass(frozen=True, slots=True)
class AnnounceEvent:
    """What the site's hook is given: one announce (or an expiry) with its deltas.

    ``uploaded``/``downloaded``/``left`` are the client's own cumulative
    figures; ``uploaded_delta``/``downloaded_delta`` are the bytes since this
    peer's previous accepted announce (0 on its first, and when a counter went
    backwards). ``seeding_seconds``/``leeching_seconds`` split the time since
    that announce by what the peer was then. ``event`` uses BEP 15 numbers
    (0 none, 1 completed, 2 started, 3 stopped), or ``EVENT_EXPIRED`` (4).
    """

    user: Hashable  # the host app's user id, else the passkey, else None
    info_hash: bytes
    peer_id: bytes
    uploaded: int
    downloaded: int
    left: int
    event: int
    timestamp: float
    ip: str = ""
    port: int = 0
    protocol: str = ""
    uploaded_delta: int = 0
    downloaded_delta: int = 0
    seeding_seconds: float = 0.0
    leeching_seconds: float = 0.0


OnAnnounce = Callable[[list[AnnounceEvent]], object]


class AnnounceHook:
    """Batches events to ``callback`` from a background thread (``start``).

    ``tick(final)`` is called before each delivery (``final`` at close), so
    the owner can move events in (the ledger settles and expires there).
    """

    def __init__(
        self,
        callback: OnAnnounce,
        max_queue: int = 100_000,
        *,
        flush_seconds: float = 3.0,
    ) -> None:
        self.callback = callback
        self.max_queue = max_queue
        self.flush_seconds = flush_seconds
        self.tick: Callable[[bool], None] | None = None
        self.queue: deque[AnnounceEvent] = deque()
        self.delivered = 0
        self.dropped = 0
        self.failed_batches = 0
        self._thread: threading.Thread | None = None
        # A thread does not survive fork: a gunicorn worker starts its own.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_thread(ref()))
        # A process that exits in order (gunicorn's graceful stop) delivers what it queued.
        atexit.register(lambda: _close(ref()))

    @classmethod
    def from_config(
        cls, config: TrackerConfig, callback: OnAnnounce | None = None
    ) -> AnnounceHook | None:
        if callback is None and config.announce_hook:
            callback = resolve_callable("announce_hook", config.announce_hook)
        if callback is None:
            return None
        return cls(callback, config.hook_queue_size, flush_seconds=config.hook_flush_seconds)

    @property
    def full(self) -> bool:
        return len(self.queue) >= self.max_queue

    def put(self, event: AnnounceEvent) -> None:
        """Queue one event; never blocks, never switches greenlets (callers may hold
        ``TrackerCore.lock``). Past ``max_queue`` the event is dropped and counted."""
        if len(self.queue) >= self.max_queue:
            self.dropped += 1
            return
        self.queue.append(event)

    def start(self) -> None:
        """Start delivering (once per process; ``TrackerCore.start``). It yields under
        gevent, so it is never called with a lock held."""
        if self._thread is not None:
            return
        stop = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(
            target=self._run, args=(stop,), name="announce-hook", daemon=True
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.flush_seconds):
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Let the owner move events in, then deliver them in batches of BATCH_SIZE."""
        if self.tick is not None:
            self.tick(final)
        queue = self.queue
        while queue:
            batch = [queue.popleft() for _ in range(min(BATCH_SIZE, len(queue)))]
            try:
                self.callback(batch)
            except Exception:
                self.failed_batches += 1
                log.exception("announce hook raised; %d events lost", len(batch))
            else:
                self.delivered += len(batch)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued and stop the thread (orderly shutdown, tests)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout)
        self.flush(final=True)


def _forget_thread(hook: AnnounceHook | None) -> None:
    if hook is not None:
        hook._thread = None


def _close(hook: AnnounceHook | None) -> None:
    if hook is not None:
        hook.close()
