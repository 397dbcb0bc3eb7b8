"""wsgi-tracker: a BitTorrent tracker as a WSGI component.

Public API: ``TrackerMiddleware`` (wrap any WSGI app), ``make_app`` (the
tracker on its own), ``TrackerConfig`` (every setting), and ``Tracker`` in
``wsgi_tracker.flask`` for Flask sites.

The names load on first use (PEP 562), so importing one layer, say the UDP
codec, does not pull in the WSGI shell, the sync client and prometheus_client.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from wsgi_tracker import compiled

# Before any compiled module loads: refuse a stale build, or go pure (WSGI_TRACKER_PURE=1).
compiled.check()

_PUBLIC = {
    "ConfigError": "wsgi_tracker.config",
    "TrackerConfig": "wsgi_tracker.config",
    "TrackerError": "wsgi_tracker.core.errors",
    "TrackerMiddleware": "wsgi_tracker.http.middleware",
    "make_app": "wsgi_tracker.http.middleware",
}

__all__ = ["ConfigError", "TrackerConfig", "TrackerError", "TrackerMiddleware", "make_app"]

if TYPE_CHECKING:
    from wsgi_tracker.config import ConfigError, TrackerConfig
    from wsgi_tracker.core.errors import TrackerError
    from wsgi_tracker.http.middleware import TrackerMiddleware, make_app


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'wsgi_tracker' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
