"""The standalone tracker, plus ``/lock-types``: which locks a serving worker really holds.

Run under ``wsgi-tracker serve`` by tests/test_host_site_stack.py: every lock
the tracker takes in a gevent worker must be gevent's (wsgi_tracker/locks.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from wsgi_tracker.http.middleware import make_app

tracker = make_app()


def _kind(lock: object) -> str:
    """The lock's type; for the core's ``ReadGate``, the lock inside it."""
    held = getattr(lock, "raw", lock)
    return f"{type(held).__module__}.{type(held).__qualname__}"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") != "/lock-types":
        return tracker(environ, start_response)
    tracker.start_sync()
    sync = tracker.sync
    locks = {"core": _kind(tracker.core.lock), "start_sync": _kind(tracker._sync_lock)}
    if sync is not None:
        locks["sync_buffer"] = _kind(sync._buffer._lock)
        locks["sync_send"] = _kind(sync._send_lock)
    body = json.dumps({"pid": os.getpid(), "locks": locks}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
