"""The Django app: reads ``settings.TRACKER`` at start-up and checks the URLconf."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from wsgi_tracker.config import ConfigError, TrackerConfig, load_with_sources
from wsgi_tracker.core.locks import ProcessLock
from wsgi_tracker.django import LABEL
from wsgi_tracker.http.chunked import BodyError
from wsgi_tracker.http.middleware import TrackerMiddleware


class TrackerAppConfig(AppConfig):
    name = "wsgi_tracker.django"
    label = LABEL
    verbose_name = "BitTorrent tracker"
    _lock = ProcessLock()  # made in the worker that uses it, after gevent has patched

    def ready(self) -> None:
        self.config = settings_config()  # a bad setting stops Django at start, by name
        self._tracker: TrackerMiddleware | None = None
        checks.register(check_shadowed_urls, checks.Tags.urls)
        logging.getLogger("django.request").addFilter(not_a_body_error)

    @property
    def tracker(self) -> TrackerMiddleware:
        """Built on first use, so ``manage.py migrate`` and friends load no access lists."""
        with self._lock:
            if self._tracker is None:
                self._tracker = TrackerMiddleware(None, self.config)
            return self._tracker


def not_a_body_error(record: logging.LogRecord) -> bool:
    """Drop Django's line (with its traceback) for a body TrackerWorker could not read:
    the client's error, answered and logged in one line by the worker itself."""
    return not (record.exc_info and isinstance(record.exc_info[1], BodyError))


def settings_config() -> TrackerConfig:
    given = getattr(settings, "TRACKER", {})
    if not isinstance(given, dict):
        raise ImproperlyConfigured("settings.TRACKER must be a dict of settings (docs/CONFIG.md)")
    layer = ("settings", {k: (v, f"settings.TRACKER[{k!r}]") for k, v in given.items()})
    try:
        return load_with_sources(layers=[layer])[0]
    except ConfigError as exc:
        raise ImproperlyConfigured(str(exc)) from exc


def check_shadowed_urls(app_configs: Any = None, **_: Any) -> list[checks.CheckMessage]:
    """A site URL the tracker answers first (with get_wsgi_application) is a warning."""
    from django.urls import Resolver404, resolve

    from wsgi_tracker.django import tracker

    found: list[checks.CheckMessage] = []
    for rule in tracker().routes().values():
        try:
            match = resolve(rule.replace("<passkey>", "passkey"))
        except Resolver404:
            continue
        if match.app_name == LABEL:
            continue
        found.append(
            checks.Warning(
                f"the site's URL {match.route!r} ({match.view_name}) is shadowed: "
                f"the tracker answers {rule} first",
                hint="move it, or the tracker (settings.TRACKER announce_path, scrape_path, "
                "stats_path)",
                id="wsgi_tracker.W001",
            )
        )
    return found
