"""``wsgi_tracker.wsgi:app``: the standalone tracker for any WSGI server.

Configured from ``WSGI_TRACKER_CONFIG`` (a TOML file) and ``WSGI_TRACKER_*``.
"""

from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.http.middleware import make_app

app = make_app(TrackerConfig.load())
