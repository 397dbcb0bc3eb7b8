"""wsgi-tracker: a BitTorrent tracker as a WSGI component.

Public API: ``TrackerMiddleware`` (wrap any WSGI app), ``make_app`` (the
tracker on its own), ``TrackerConfig`` (every setting), and ``Tracker`` in
``wsgi_tracker.flask`` for Flask sites.
"""

from .config import ConfigError, TrackerConfig
from .errors import TrackerError
from .middleware import TrackerMiddleware, make_app

__all__ = ["ConfigError", "TrackerConfig", "TrackerError", "TrackerMiddleware", "make_app"]
