"""Mount the tracker inside a Flask site, Flask-extension style.

``Tracker(app)`` or, in an application factory, ``tracker = Tracker()`` then
``tracker.init_app(app)`` for each app: every app gets its own tracker, kept in
``app.extensions["wsgi_tracker"]`` and reached from views as
:data:`current_tracker`. Settings are the app's flat ``TRACKER_*`` keys
(``TRACKER_NUMWANT_MAX = 55``) or a ``TRACKER`` dict, over the tracker's file and
``WSGI_TRACKER_*`` variables; an unknown key is an error with a suggestion.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.local import LocalProxy
from werkzeug.routing import Map
from werkzeug.wrappers import Response

from wsgi_tracker.access.hooks import OnAnnounce
from wsgi_tracker.access.policy import Authenticator
from wsgi_tracker.config import BY_NAME, ConfigError, TrackerConfig, load_with_sources
from wsgi_tracker.http.middleware import TrackerMiddleware
from wsgi_tracker.settings import did_you_mean

EXTENSION = "wsgi_tracker"
PREFIX = "TRACKER_"
log = logging.getLogger("wsgi_tracker.flask")


def _current() -> TrackerMiddleware:
    try:
        return current_app.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError(f"no tracker on app {current_app.name!r}: call init_app") from None


current_tracker: TrackerMiddleware = LocalProxy(_current)  # type: ignore[assignment]
"""The current app's tracker (``core``, ``config``, ``stats``), in a request or app context."""


class Tracker:
    """The Flask extension: one object for any number of apps, state kept per app.

    The tracker wraps ``app.wsgi_app`` rather than answering through views, so
    announces skip Flask's request machinery (a tracker answers thousands of
    them a second) while every other path reaches Flask untouched. Its paths are
    still registered as the ``wsgi_tracker`` blueprint, so ``flask routes`` lists
    them and ``url_for("wsgi_tracker.announce_passkey", passkey=...)`` builds
    them; a site route the tracker would shadow is logged as a warning.
    ``authenticate`` and ``on_announce`` let the site check passkeys against its
    own users and keep ratio accounts (docs/ACCESS.md).
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
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> TrackerMiddleware:
        config = self.config or app_config(app)
        warned: set[tuple[str, str]] = set()

        def warn_shadowed() -> None:
            for pair in shadowed(app, middleware):
                if pair not in warned:
                    warned.add(pair)
                    log.warning(
                        "app %r: the site route %s is shadowed, the tracker answers %s first; "
                        "move the route, or the tracker (announce_path, scrape_path, stats_path)",
                        app.name,
                        *pair,
                    )

        middleware = TrackerMiddleware(
            app.wsgi_app,
            config,
            authenticate=self.authenticate,
            on_announce=self.on_announce,
            on_first_request=warn_shadowed,  # routes added after init_app, as factories do
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION] = middleware
        app.register_blueprint(_blueprint(middleware))
        warn_shadowed()
        return middleware

    def middleware_for(self, app: Flask | None = None) -> TrackerMiddleware:
        """The tracker of ``app`` (default: the current app)."""
        return (app or current_app).extensions[EXTENSION]


def app_config(app: Flask) -> TrackerConfig:
    """The app's ``TRACKER`` dict and ``TRACKER_*`` keys over the file and environment."""
    given: dict[str, tuple[Any, str]] = {}
    nested = app.config.get("TRACKER") or {}
    if not isinstance(nested, Mapping):
        raise ConfigError(
            f"app.config['TRACKER'] must be a dict of settings, got {type(nested).__name__}"
        )
    for name, value in nested.items():
        given[name] = _value(name, value, f"app.config['TRACKER'][{name!r}]")
    for key, value in app.config.items():
        if key.startswith(PREFIX):
            given[_name(key)] = _value(_name(key), value, f"app.config[{key!r}]")
    layers = [("app.config", given)]
    return load_with_sources(env=os.environ, layers=layers)[0]


def _name(key: str) -> str:
    name = key[len(PREFIX) :].lower()
    if name not in BY_NAME:
        known = [PREFIX + n.upper() for n in BY_NAME]
        raise ConfigError(f"app.config[{key!r}]: unknown setting{did_you_mean(key, known)}")
    return name


def _value(name: str, value: Any, where: str) -> tuple[Any, str]:
    """Text for a typed setting (from ``from_prefixed_env`` or a .env file) is converted."""
    s = BY_NAME.get(name)
    if s is not None and isinstance(value, str) and s.kind != "str":
        value = s.from_text(value, where)
    return value, where


def _blueprint(middleware: TrackerMiddleware) -> Blueprint:
    """The tracker's paths as Flask routes, for ``flask routes`` and ``url_for``.

    The middleware answers these paths before Flask dispatches, so the view runs
    only if something calls Flask's own dispatch directly, or for a path Flask's
    router matched to a rule and the middleware did not take (``//announce``:
    werkzeug merges slashes). It then answers through the middleware, at the
    rule's own path: handed the path as it came, the middleware passed it back to
    Flask, whose router chose this view again, until Python's recursion limit.
    """
    bp = Blueprint(EXTENSION, __name__)

    def view(**args: str) -> Response:
        rule = request.url_rule
        assert rule is not None  # a view runs for a matched rule
        path = rule.rule.replace("<passkey>", args.get("passkey", ""))
        return Response.from_app(middleware, {**request.environ, "PATH_INFO": path})

    for endpoint, rule in middleware.routes().items():
        bp.add_url_rule(rule, endpoint, view)
    return bp


def shadowed(app: Flask, middleware: TrackerMiddleware) -> list[tuple[str, str]]:
    """(site rule, tracker path) for each site route the tracker answers first."""
    site = [r.empty() for r in app.url_map.iter_rules() if r.endpoint.split(".")[0] != EXTENSION]
    adapter = Map(site).bind("localhost")
    found = []
    for rule in middleware.routes().values():
        try:
            matched, _ = adapter.match(
                rule.replace("<passkey>", "passkey"), method="GET", return_rule=True
            )
        except HTTPException:  # no site route there (or only a redirect to one)
            continue
        found.append((matched.rule, rule))
    return found
