"""The example site's pages: its tracker's URL, and its torrents with live counts."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import escape, format_html, format_html_join

from examples.catalogue import CATALOGUE, live_counts
from wsgi_tracker.django import tracker

NAV = '<nav><a href="/">Home</a> | <a href="/torrents">Torrents</a></nav>'


def _page(title: str, body: str) -> HttpResponse:
    return HttpResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title></head><body>{NAV}<h1>{escape(title)}</h1>{body}</body></html>"
    )


def home(request: HttpRequest) -> HttpResponse:
    announce = request.build_absolute_uri(reverse("wsgi_tracker:announce"))
    return _page(
        "Example torrent site",
        format_html(
            "<p>Free and open downloads, shared over BitTorrent. This site's tracker: "
            '<code>{}</code></p><p>See <a href="/torrents">what is being shared</a>.</p>',
            announce,
        ),
    )


def torrents(request: HttpRequest) -> HttpResponse:
    counts = live_counts(tracker().core, CATALOGUE)
    rows = format_html_join(
        "\n",
        "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (t.name, t.info_hash.hex(), c.complete, c.incomplete, c.downloaded)
            for t, c in zip(CATALOGUE, counts, strict=True)
        ),
    )
    return _page(
        "Torrents",
        "<table><tr><th>Name</th><th>Info-hash</th><th>Seeders</th><th>Leechers</th>"
        f"<th>Downloads</th></tr>{rows}</table>",
    )
