"""/stats.html: one self-contained page (no CDN, no external file) that polls /stats.

The numbers are elements with ``data-field="<key path in /stats>"``, so the
page and the JSON cannot disagree about what a number means; the chart is an
SVG polyline of the last few minutes of announce rate, drawn by inline JS.
The page itself is ``stats.html`` beside this module (package data), so it is
edited and checked as HTML, not as a Python string.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib.resources import files


@cache
def _page() -> str:
    return files(__package__).joinpath("stats.html").read_text(encoding="utf-8")


def render_page(stats_url: str) -> bytes:
    """The page, told where /stats is (a URL relative to the page itself)."""
    return _page().replace("__STATS_URL__", escape(stats_url, quote=True)).encode()
