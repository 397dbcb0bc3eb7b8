"""The example sites' own data: the torrents they publish, with live counts from the tracker.

A real site keeps its catalogue in its database; what matters here is how a page
reads the tracker's state: ``live_counts`` asks the tracker core of the process
serving the page, which (with udp-sidecar running) knows every worker's peers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import ScrapeEntry


@dataclass(frozen=True)
class Torrent:
    name: str
    info_hash: bytes


def _published(name: str) -> Torrent:
    # Stand-ins for the info-hashes of real .torrent files.
    return Torrent(name, hashlib.sha1(name.encode()).digest())


CATALOGUE = (
    _published("debian-12-amd64-netinst.iso"),
    _published("big-buck-bunny-1080p.mkv"),
    _published("project-gutenberg-top-100.tar"),
)


def live_counts(core: TrackerCore, torrents: tuple[Torrent, ...]) -> list[ScrapeEntry]:
    """Seeders, leechers and downloads of each torrent, in catalogue order."""
    with core.lock:
        return core.scrape([t.info_hash for t in torrents])
