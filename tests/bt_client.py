"""A real BitTorrent client for the tests: libtorrent seeders and leechers on loopback.

Sessions find peers only through the tracker under test: DHT, local service
discovery, UPnP and NAT-PMP are off, and so is ``ssrf_mitigation`` (it blocks
trackers on localhost). Every wait is on libtorrent's alerts with a deadline,
and every alert seen is kept, so a failure says what the client went through.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libtorrent as lt

PIECE = 16 * 1024


@dataclass(frozen=True)
class GeneratedTorrent:
    """A generated single-file torrent: its metainfo, v1 info_hash and the seeded data."""

    metainfo: bytes
    info_hash: bytes
    name: str
    data: bytes


def make_torrent(
    content_dir: Path, tracker_url: str, size: int = 8 * PIECE + 1234
) -> GeneratedTorrent:
    """Write ``size`` random bytes into ``content_dir`` and build a v1 torrent for them.

    v1 only: a hybrid torrent would also announce a truncated v2 hash, and the
    test reads the counters of exactly one info_hash.
    """
    name = "payload.bin"
    data = os.urandom(size)
    content_dir.mkdir(parents=True, exist_ok=True)
    (content_dir / name).write_bytes(data)
    files = lt.list_files(str(content_dir / name))
    creator = lt.create_torrent(files, PIECE, flags=lt.create_torrent.v1_only)
    creator.add_tracker(tracker_url)
    lt.set_piece_hashes(creator, str(content_dir))
    metainfo = lt.bencode(creator.generate())
    info = lt.torrent_info(lt.bdecode(metainfo))
    return GeneratedTorrent(metainfo, bytes.fromhex(str(info.info_hash())), name, data)


@dataclass(frozen=True)
class Seen:
    """What one alert said, copied out at once: libtorrent frees an alert on the next pop."""

    kind: type
    message: str
    num_peers: int | None = None  # tracker replies: how many peers the tracker handed out
    swarm: tuple[int, int] | None = None  # scrape replies: (complete, incomplete)

    @classmethod
    def of(cls, alert: lt.alert) -> Seen:
        if isinstance(alert, lt.tracker_reply_alert):
            return cls(type(alert), alert.message(), num_peers=alert.num_peers)
        if isinstance(alert, lt.scrape_reply_alert):
            return cls(type(alert), alert.message(), swarm=(alert.complete, alert.incomplete))
        return cls(type(alert), alert.message())


@dataclass
class Peer:
    """One libtorrent session holding one torrent, with a record of every alert it posted."""

    session: lt.session
    handle: lt.torrent_handle
    save_path: Path
    listen_port: int
    seen: list[Seen] = field(default_factory=list)

    def _drain(self, wait_ms: int) -> list[Seen]:
        self.session.wait_for_alert(wait_ms)
        fresh = [Seen.of(alert) for alert in self.session.pop_alerts()]
        self.seen.extend(fresh)
        return fresh

    def wait_for(self, kind: type, timeout: float, what: str, since: int = 0) -> Seen:
        """The first alert of ``kind`` from the ``since``-th on (seen or new), in ``timeout`` s."""
        deadline = time.monotonic() + timeout
        fresh = self.seen[since:]
        while True:
            for record in fresh:
                if record.kind is kind:
                    return record
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} within {timeout:.0f} s; alerts:\n{self.history()}")
            fresh = self._drain(int(min(left, 0.5) * 1000) + 1)

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait, draining alerts, until ``check()`` holds."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout:.0f} s; alerts:\n{self.history()}")
            self._drain(200)

    def close(self) -> None:
        """End the session now: it sends its 'stopped' announces, waiting at most
        ``stop_tracker_timeout`` for the replies."""
        self.seen.clear()
        del self.session, self.handle

    def read_downloaded(self, name: str, timeout: float) -> bytes:
        """The file as written to disk: 'finished' means hashed, not yet flushed."""
        since = len(self.seen)
        self.handle.flush_cache()
        self.wait_for(lt.cache_flushed_alert, timeout, "flushed download", since)
        return (self.save_path / name).read_bytes()

    def is_seeding(self) -> bool:
        return self.handle.status().is_seeding

    def history(self) -> str:
        self._drain(0)
        return "\n".join(f"  {r.kind.__name__}: {r.message}" for r in self.seen[-40:])


def session_settings(listen_port: int, host: str = "127.0.0.1") -> dict[str, object]:
    listen = f"[{host}]" if ":" in host else host
    return {
        "listen_interfaces": f"{listen}:{listen_port}",
        "outgoing_interfaces": host,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "ssrf_mitigation": False,
        # Seeder and leecher share 127.0.0.1; without this only one may connect.
        "allow_multiple_connections_per_ip": True,
        # TCP only: one transport keeps a failure simple to read.
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "alert_mask": (
            lt.alert.category_t.error_notification
            | lt.alert.category_t.status_notification
            | lt.alert.category_t.tracker_notification
            | lt.alert.category_t.connect_notification
            | lt.alert.category_t.storage_notification
        ),
        "user_agent": "wsgi-tracker-tests/libtorrent",
        # libtorrent caches UDP connection ids process-wide, keyed by the tracker's IP
        # without its port: a later test's udp-sidecar on 127.0.0.1 (another secret)
        # would be sent the previous one's id and refuse it. Connect afresh every time.
        "udp_tracker_token_expiry": 0,
        # Bounds how long closing a session waits for its 'stopped' announces.
        "stop_tracker_timeout": 2,
    }


@contextlib.contextmanager
def peer(
    torrent: GeneratedTorrent,
    save_path: Path,
    listen_port: int,
    tracker_url: str | None = None,
    host: str = "127.0.0.1",
) -> Iterator[Peer]:
    """A session downloading (or, if ``save_path`` holds the data, seeding) ``torrent``.

    ``tracker_url`` replaces the torrent's tracker (same info_hash, another tracker);
    ``host`` is the loopback address the session listens on and connects from.
    """
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(lt.bdecode(torrent.metainfo))
    params.save_path = str(save_path)
    if tracker_url is not None:
        params.trackers = [tracker_url]
        params.flags |= lt.torrent_flags.override_trackers
    # Not queued, not paused: the torrent starts at once (checking, then seeding or leeching).
    params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    params.flags |= lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd
    params.flags |= lt.torrent_flags.disable_pex
    session = lt.session(session_settings(listen_port, host))
    client = Peer(session, session.add_torrent(params), save_path, listen_port)
    del session  # ``client`` holds the only reference, so closing it ends the session
    try:
        yield client
    finally:
        client.close()
