"""A real BitTorrent client (libtorrent) downloads through our tracker, over HTTP and UDP.

The leecher is told of no peer but by the tracker (DHT, LSD, PEX, UPnP and
NAT-PMP are off, and nothing adds peers by hand), so a completed download
proves the tracker handed the seeder to the leecher. The tracker's scrape must
then count exactly one download, and forget the leecher once it stops.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bencodepy
import libtorrent as lt
import pytest
from bt_client import GeneratedTorrent, make_torrent, peer
from servers import (
    Server,
    free_port,
    gunicorn,
    has_ipv6_loopback,
    http_get,
    scrape_url,
    sidecar,
    udp_scrape,
)

pytestmark = [pytest.mark.client, pytest.mark.integration]

TEST_BUDGET = 60.0  # seconds for all the waits of one test; a run here takes a few


class Deadline:
    """One time budget shared by every wait of a test, so the whole test is bounded."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def download_through_tracker(
    tmp_path: Path,
    tracker_url: str,
    counts: Callable[[bytes], tuple[int, int, int]],
    host: str = "127.0.0.1",
) -> GeneratedTorrent:
    """Seed, leech, and wait until the tracker's own counters show the finished download,
    then stop the leecher and see the tracker drop it.

    ``counts(info_hash)`` is the tracker's (seeders, downloaded, leechers); both
    clients listen on ``host``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = Deadline(TEST_BUDGET)
    seed_dir = tmp_path / "seeder"
    torrent = make_torrent(seed_dir, tracker_url)
    with peer(torrent, seed_dir, free_port(family), host=host) as seeder:
        seeder.wait_until(seeder.is_seeding, deadline.left(), "seeding state after the file check")
        seeder.wait_for(lt.tracker_reply_alert, deadline.left(), "seeder announce reply")
        seeder.wait_until(
            lambda: counts(torrent.info_hash) == (1, 0, 0),
            deadline.left(),
            f"the seeder on the tracker (tracker says {counts(torrent.info_hash)})",
        )

        leech_dir = tmp_path / "leecher"
        leech_dir.mkdir()
        with peer(torrent, leech_dir, free_port(family), host=host) as leecher:
            leecher.wait_for(lt.torrent_finished_alert, deadline.left(), "finished download")
            assert leecher.read_downloaded(torrent.name, deadline.left()) == torrent.data
            reply = leecher.wait_for(lt.tracker_reply_alert, 1, "leecher announce reply")
            assert reply.num_peers == 1, "the tracker handed the leecher its one peer"
            # The 'completed' announce follows the finish; wait for the tracker to count it.
            leecher.wait_until(
                lambda: counts(torrent.info_hash) == (2, 1, 0),
                deadline.left(),
                f"a counted download (tracker says {counts(torrent.info_hash)})",
            )
            leecher.handle.scrape_tracker()
            scraped = leecher.wait_for(lt.scrape_reply_alert, deadline.left(), "scrape reply")
            assert scraped.swarm == (2, 0), "libtorrent reads our scrape: two seeders"
            # Pausing the torrent sends event=stopped: the tracker forgets the peer at once.
            leecher.handle.pause()
            leecher.wait_until(
                lambda: counts(torrent.info_hash) == (1, 1, 0),
                deadline.left(),
                f"the leecher's stop (tracker says {counts(torrent.info_hash)})",
            )
    return torrent


@pytest.fixture
def http_tracker() -> Iterator[Server]:
    with gunicorn() as server:
        yield server


def test_libtorrent_leecher_finds_seeder_over_http_and_download_is_counted(
    tmp_path: Path, http_tracker: Server
) -> None:
    download_through_tracker(tmp_path, http_tracker.url + "/announce", http_counts(http_tracker))


def http_counts(server: Server) -> Callable[[bytes], tuple[int, int, int]]:
    """The tracker's (complete, downloaded, incomplete) of a torrent, by an HTTP scrape."""

    def counts(info_hash: bytes) -> tuple[int, int, int]:
        status, body = http_get(scrape_url(server.url + "/scrape", info_hash))
        assert status == 200
        entry = bencodepy.decode(body)[b"files"][info_hash]
        return entry[b"complete"], entry[b"downloaded"], entry[b"incomplete"]

    return counts


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this machine")
def test_libtorrent_over_ipv6_finds_seeder_through_peers6(tmp_path: Path) -> None:
    with gunicorn(bind_host="::1") as server:
        download_through_tracker(tmp_path, server.url + "/announce", http_counts(server), "::1")


@pytest.fixture
def udp_tracker() -> Iterator[Server]:
    with sidecar() as server:
        yield server


def test_libtorrent_leecher_finds_seeder_over_udp_and_download_is_counted(
    tmp_path: Path, udp_tracker: Server
) -> None:
    def counts(info_hash: bytes) -> tuple[int, int, int]:
        seeders, completed, leechers = udp_scrape("127.0.0.1", udp_tracker.port, info_hash)[0]
        return seeders, completed, leechers

    download_through_tracker(tmp_path, f"udp://127.0.0.1:{udp_tracker.port}/announce", counts)


def test_peer_announced_over_udp_is_handed_to_an_http_leecher(tmp_path: Path) -> None:
    """One swarm across both protocols: the sidecar hub syncs the gunicorn worker."""
    deadline = Deadline(TEST_BUDGET)
    sock_dir = tmp_path / "sync"
    sock_dir.mkdir(mode=0o700)
    sock = str(sock_dir / "sync.sock")
    with (
        sidecar(sync_socket=sock) as udp,
        gunicorn(env={"WSGI_TRACKER_SYNC_SOCKET": sock}) as http,
    ):
        seed_dir = tmp_path / "seeder"
        torrent = make_torrent(seed_dir, f"udp://127.0.0.1:{udp.port}/announce")
        with peer(torrent, seed_dir, free_port()) as seeder:
            seeder.wait_for(lt.tracker_reply_alert, deadline.left(), "seeder announce reply (UDP)")
            leech_dir = tmp_path / "leecher"
            leech_dir.mkdir()
            http_url = http.url + "/announce"
            with peer(torrent, leech_dir, free_port(), tracker_url=http_url) as leecher:
                leecher.wait_for(lt.torrent_finished_alert, deadline.left(), "finished download")
                assert leecher.read_downloaded(torrent.name, deadline.left()) == torrent.data
                reply = leecher.wait_for(lt.tracker_reply_alert, 1, "leecher reply (HTTP)")
                assert reply.num_peers == 1, "the HTTP tracker handed out the UDP seeder"
                assert "http://" in reply.message
