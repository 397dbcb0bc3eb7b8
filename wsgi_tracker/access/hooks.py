"""The announce hook: the host app hears of announces in batches, off the request path.

A site doing ratio accounting wants every announce's counters, but must not
slow announces down. ``AnnounceHook.put`` only appends to a bounded deque
(atomic under the GIL, no lock); a background thread started by ``start``
(a greenlet once gevent has patched ``threading``) hands the host callable lists of events every
``FLUSH_SECONDS``. When the queue is full, new events are dropped and counted
rather than blocking or growing without bound.
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

FLUSH_SECONDS = 0.2
BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class AnnounceEvent:
    """One accepted announce, as the host app sees it. ``event`` uses BEP 15 numbers."""

    user: Hashable  # the host app's user id, else the passkey, else None
    info_hash: bytes
    peer_id: bytes
    uploaded: int
    downloaded: int
    left: int
    event: int
    timestamp: float


OnAnnounce = Callable[[list[AnnounceEvent]], object]


class AnnounceHook:
    """Batches events to ``callback`` from a background thread (``start``)."""

    def __init__(self, callback: OnAnnounce, max_queue: int = 10_000) -> None:
        self.callback = callback
        self.max_queue = max_queue
        self.queue: deque[AnnounceEvent] = deque()
        self.delivered = 0
        self.dropped = 0
        self.failed_batches = 0
        self._thread: threading.Thread | None = None
        # A thread does not survive fork: a gunicorn worker starts its own.
        ref = weakref.ref(self)

        def forget_thread() -> None:
            if (hook := ref()) is not None:
                hook._forget_thread()

        def close() -> None:
            if (hook := ref()) is not None:
                hook.close()

        os.register_at_fork(after_in_child=forget_thread)
        # A process that exits in order (gunicorn's graceful stop) delivers what it queued.
        atexit.register(close)

    @classmethod
    def from_config(
        cls, config: TrackerConfig, callback: OnAnnounce | None = None
    ) -> AnnounceHook | None:
        if callback is None and config.announce_hook:
            callback = resolve_callable("announce_hook", config.announce_hook)
        if callback is None:
            return None
        return cls(callback, config.hook_queue_size)

    def _forget_thread(self) -> None:
        self._thread = None

    def put(self, event: AnnounceEvent) -> None:
        """Queue one event; never blocks, never switches greenlets (the caller holds
        ``TrackerCore.lock``): the thread is started by ``start``, not here."""
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
        while not stop.wait(FLUSH_SECONDS):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Deliver everything queued so far, in batches of at most BATCH_SIZE."""
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
        if thread is None:
            self.flush()
            return
        self._stop.set()
        thread.join(timeout)
