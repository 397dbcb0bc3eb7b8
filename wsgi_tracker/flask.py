"""Mount the tracker inside an existing Flask site, Flask-extension style."""

from __future__ import annotations

from typing import Any

from flask import Flask

from .config import TrackerConfig
from .middleware import TrackerMiddleware


class Tracker:
    """``Tracker(app)`` or ``tracker.init_app(app)``: the site keeps all its own routes.

    The tracker wraps ``app.wsgi_app`` rather than registering views, so
    announces skip Flask's request machinery (a tracker answers thousands of
    them a second) while every other path reaches Flask untouched. Settings come
    from ``config``, else from ``app.config["TRACKER"]`` (a dict of
    TrackerConfig fields), else from the environment.
    """

    def __init__(self, app: Flask | None = None, config: TrackerConfig | None = None) -> None:
        self.config = config
        self.middleware: TrackerMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        config = self.config or TrackerConfig.load(**_settings(app))
        self.middleware = TrackerMiddleware(app.wsgi_app, config)
        app.wsgi_app = self.middleware  # type: ignore[method-assign]
        app.extensions["wsgi_tracker"] = self


def _settings(app: Flask) -> dict[str, Any]:
    return dict(app.config.get("TRACKER", {}))
