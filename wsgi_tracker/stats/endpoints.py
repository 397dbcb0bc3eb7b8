"""The WSGI endpoints for /stats, /metrics and /stats.html, behind an optional token.

Off unless ``stats_path`` / ``metrics_path`` are set: a tracker's statistics
say how big it is, and an operator opts in to showing that.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.stats.collect import (
    PROMETHEUS_CONTENT_TYPE,
    TrackerStats,
    render_json,
    render_prometheus,
)
from wsgi_tracker.stats.page import render_page


def _token_of(environ: WSGIEnvironment) -> str:
    auth: str = environ.get("HTTP_AUTHORIZATION", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :].strip()
    values = parse_qs(environ.get("QUERY_STRING", "")).get("token")
    return values[0] if values else ""


def stats_routes(stats: TrackerStats, config: TrackerConfig) -> dict[str, WSGIApplication]:
    """PATH_INFO -> WSGI app for each statistics endpoint the config switches on."""
    token = config.stats_token.encode()

    def guarded(content_type: str, render: Callable[[], bytes]) -> WSGIApplication:
        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if token and not hmac.compare_digest(_token_of(environ).encode(), token):
                body = b"statistics need the token: ?token=... or Authorization: Bearer ...\n"
                status, content_type_sent = "403 Forbidden", "text/plain"
            else:
                body, status, content_type_sent = render(), "200 OK", content_type
            start_response(
                status,
                [
                    ("Content-Type", content_type_sent),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [body]

        return app

    routes: dict[str, WSGIApplication] = {}
    if config.stats_path:
        page = render_page(config.stats_path.rsplit("/", 1)[-1])
        routes[config.stats_path] = guarded(
            "application/json", lambda: render_json(stats.snapshot())
        )
        routes[config.stats_path + ".html"] = guarded("text/html; charset=utf-8", lambda: page)
    if config.metrics_path:
        routes[config.metrics_path] = guarded(
            PROMETHEUS_CONTENT_TYPE, lambda: render_prometheus(stats.snapshot())
        )
    return routes
