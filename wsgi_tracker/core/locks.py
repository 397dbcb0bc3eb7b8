"""Locks made in the process that uses them, after gevent has patched it.

gunicorn's master imports the tracker (the worker class, a preloaded app)
before its gevent worker patches ``threading`` in the forked child. A lock
made then, or a ``threading.Lock`` captured as a default at import, is the
real ``_thread.lock``: a greenlet that yields while holding it (a socket call,
gevent's ``Thread.start()``) blocks the whole worker, every other greenlet
included (issue 15: the announce hook hung every worker with sync on).

So the tracker never keeps a lock object across a fork or from import time:
``ProcessLock`` is an attribute that makes its lock on first use in each
process, through ``threading.Lock`` looked up at that moment, which is
gevent's once gevent has patched and the real one otherwise (a threaded WSGI
server). Nothing that can switch greenlets runs while these locks are held.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

# Bumped in every forked child: a lock made in an earlier generation is the parent's.
_generation = 0
# Guards only the making of a lock (no yield inside), so two threads of one process
# never make two locks for one attribute.
_making = threading.Lock()


def _forked() -> None:
    global _generation, _making
    _generation += 1
    _making = threading.Lock()  # the parent's may have been held across the fork


os.register_at_fork(after_in_child=_forked)


def new_lock() -> Any:
    """A lock that suits this process as it is now (gevent's once patched)."""
    return threading.Lock()


class ReadGate:
    """``TrackerCore.lock``: the lock every reader and writer of a replica takes, and so
    the one place where what sync has received is applied before anyone reads.

    ``before`` (None, or ``SyncClient.drain`` while a sync client runs in this
    process) is called on entering, before the lock is taken: the middleware's
    announces and scrapes, a host site's view (``with core.lock:
    core.scrape(...)``, docs/EMBEDDING.md), ``/stats``, the WebSocket tracker and a
    UDP process's batch all see every change already in the sync socket, so
    the client's reader may leave frames there a while (docs/SYNC.md,
    "Read-your-writes"). Whoever applies those frames holds ``raw``, the lock
    itself, which does not drain again.
    """

    __slots__ = ("before", "raw")

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.before: Callable[[], object] | None = None

    def __enter__(self) -> bool:
        before = self.before
        if before is not None:
            before()
        return self.raw.acquire()  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        self.raw.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        before = self.before
        if before is not None:
            before()
        return self.raw.acquire(blocking, timeout)  # type: ignore[no-any-return]

    def release(self) -> None:
        self.raw.release()

    def locked(self) -> bool:
        return self.raw.locked()  # type: ignore[no-any-return]


class OwnLock:
    """One object's lock, made on first use in each process.

    Held in an attribute and read through ``get()`` (a property of the owner's):
    the form for a class without a ``__dict__``, such as one mypyc compiles to a
    native class, where the ``ProcessLock`` descriptor cannot keep its lock.
    ``OwnLock(gate=True)`` makes a ``ReadGate`` around the lock instead.
    """

    __slots__ = ("_gate", "_held")

    def __init__(self, *, gate: bool = False) -> None:
        self._gate = gate
        self._held: tuple[int, Any] | None = None

    def get(self) -> Any:
        held = self._held
        if held is not None and held[0] == _generation:
            return held[1]
        with _making:
            held = self._held
            if held is None or held[0] != _generation:
                made = ReadGate(new_lock()) if self._gate else new_lock()
                held = self._held = (_generation, made)
        return held[1]


class ProcessLock:
    """A per-instance lock attribute, made on first use in each process.

    ``lock = ProcessLock()`` in a class body; ``with self.lock:`` as usual.
    ``ProcessLock(gate=True)`` makes a ``ReadGate`` around the lock instead.
    """

    def __init__(self, *, gate: bool = False) -> None:
        self._gate = gate

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}_of_process"

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        own = obj.__dict__.get(self._slot)
        if own is None:
            with _making:
                own = obj.__dict__.setdefault(self._slot, OwnLock(gate=self._gate))
        return own.get()
