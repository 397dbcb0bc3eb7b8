"""/stats.html in headless Debian Chromium: the numbers a person sees are the ones /stats gives."""

from __future__ import annotations

import json
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest
from servers import CHROMIUM, CHROMIUM_FLAGS, announce_url, gunicorn, http_get, scrape_url

pytestmark = pytest.mark.integration

TOKEN = "page-token"
IH = bytes.fromhex("55" * 20)
# The fields that stay put while nobody announces (rates move as the window slides).
STEADY = (
    "torrents",
    "peers",
    "seeders",
    "leechers",
    "processes",
    "announces.http",
    "announces.udp",
    "announces.total",
    "scrapes.http",
    "scrapes.total",
)


class Shown(HTMLParser):
    """The text of every ``data-field`` element, the body's attributes, the chart's lines."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.body: dict[str, str | None] = {}
        self.lines: dict[str, str | None] = {}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "polyline":
            self.lines[a.get("class") or ""] = a.get("points")
        if a.get("data-field"):
            self._open = a["data-field"]

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.fields[self._open] = data.strip()
            self._open = None


def dump_dom(url: str) -> str:
    """The page after its scripts ran (a few seconds of virtual time: two polls)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
    return done.stdout.decode()


def lookup(doc: dict, path: str) -> object:
    for key in path.split("."):
        doc = doc[key]
    return doc


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_stats_page_shows_the_numbers_of_stats():
    env = {"WSGI_TRACKER_STATS_PATH": "/stats", "WSGI_TRACKER_STATS_TOKEN": TOKEN}
    with gunicorn(env=env) as web:
        for n in range(1234):  # enough to need a thousands separator
            peer = b"-BROWSE-%012d" % n
            http_get(announce_url(web.url + "/announce", IH, peer, 6881, n % 3))
        http_get(scrape_url(web.url + "/scrape", IH))
        page = Shown()
        page.feed(dump_dom(f"{web.url}/stats.html?token={TOKEN}"))
        stats = json.loads(http_get(f"{web.url}/stats?token={TOKEN}")[1])
    assert page.body.get("data-stats-time"), "the page never loaded /stats"
    shown = {f: page.fields[f].replace(",", "") for f in STEADY}
    assert shown == {f: str(lookup(stats, f)) for f in STEADY}
    assert shown["announces.http"] == "1234"
    assert page.fields["announces.http"] == "1,234"
    assert page.lines["total"], "the announce-rate chart has no line"
