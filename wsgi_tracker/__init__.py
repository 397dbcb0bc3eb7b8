"""wsgi-tracker: a BitTorrent tracker as a WSGI component.

Public API: ``TrackerMiddleware`` (wrap any WSGI app), ``make_app`` (the
tracker on its own), ``TrackerConfig`` (every setting), and ``Tracker`` in
``wsgi_tracker.flask`` for Flask sites.
"""

from wsgi_tracker.config import ConfigError, TrackerConfig
from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.http.middleware import TrackerMiddleware, make_app

__all__ = ["ConfigError", "TrackerConfig", "TrackerError", "TrackerMiddleware", "make_app"]
