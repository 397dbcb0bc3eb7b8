"""A plain WSGI application, no framework, with the tracker mounted in three lines.

The site answers ``/`` and ``/torrents``; ``TrackerMiddleware`` answers
``/announce`` and ``/scrape`` and hands every other request to the site untouched.
Serve it like any WSGI app (docs/EMBEDDING.md)::

    gunicorn -c deploy/gunicorn.conf.py examples.plain_wsgi:application
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

from examples.catalogue import CATALOGUE, live_counts
from wsgi_tracker import TrackerConfig, TrackerMiddleware  # tracker 1/3

NAV = '<nav><a href="/">Home</a> | <a href="/torrents">Torrents</a></nav>'


def home(environ: dict[str, Any]) -> str:
    host = html.escape(environ.get("HTTP_HOST") or "this-host")
    return (
        "<p>Free and open downloads, shared over BitTorrent. This site's tracker: "
        f"<code>http://{host}{application.config.announce_path}</code></p>"
        '<p>See <a href="/torrents">what is being shared</a>.</p>'
    )


def torrents(environ: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(t.name)}</td><td><code>{t.info_hash.hex()}</code></td>"
        f"<td>{c.complete}</td><td>{c.incomplete}</td><td>{c.downloaded}</td></tr>"
        for t, c in zip(CATALOGUE, live_counts(application.core, CATALOGUE), strict=True)
    )
    return (
        "<table><tr><th>Name</th><th>Info-hash</th><th>Seeders</th><th>Leechers</th>"
        f"<th>Downloads</th></tr>{rows}</table>"
    )


PAGES = {"/": ("Example torrent site", home), "/torrents": ("Torrents", torrents)}


def site(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The site as it was before the tracker: two pages and a 404."""
    title, render = PAGES.get(environ.get("PATH_INFO") or "/", ("Not found", None))
    content = render(environ) if render else "<p>No such page.</p>"
    body = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"</head><body>{NAV}<h1>{title}</h1>{content}</body></html>\n"
    ).encode()
    status = "200 OK" if render else "404 Not Found"
    start_response(
        status, [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]


config = TrackerConfig.load(numwant_max=100)  # tracker 2/3: file, WSGI_TRACKER_*, then these
application = TrackerMiddleware(site, config)  # tracker 3/3
