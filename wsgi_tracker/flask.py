"""Mount the tracker inside an existing Flask site, Flask-extension style."""

from __future__ import annotations

from typing import Any

from flask import Flask

from wsgi_tracker.access.hooks import OnAnnounce
from wsgi_tracker.access.policy import Authenticator
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.http.middleware import TrackerMiddleware


class Tracker:
    """``Tracker(app)`` or ``tracker.init_app(app)``: the site keeps all its own routes.

    The tracker wraps ``app.wsgi_app`` rather than registering views, so
    announces skip Flask's request machinery (a tracker answers thousands of
    them a second) while every other path reaches Flask untouched. Settings come
    from ``config``, else from ``app.config["TRACKER"]`` (a dict of
    TrackerConfig fields), else from the environment. ``authenticate`` and
    ``on_announce`` let the site check passkeys against its own users and keep
    ratio accounts (docs/ACCESS.md).
    """

    def __init__(
        self,
        app: Flask | None = None,
        config: TrackerConfig | None = None,
        *,
        authenticate: Authenticator | None = None,
        on_announce: OnAnnounce | None = None,
    ) -> None:
        self.config = config
        self.authenticate = authenticate
        self.on_announce = on_announce
        self.middleware: TrackerMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        config = self.config or TrackerConfig.load(**_settings(app))
        self.middleware = TrackerMiddleware(
            app.wsgi_app, config, authenticate=self.authenticate, on_announce=self.on_announce
        )
        app.wsgi_app = self.middleware  # type: ignore[method-assign]
        app.extensions["wsgi_tracker"] = self


def _settings(app: Flask) -> dict[str, Any]:
    return dict(app.config.get("TRACKER", {}))
