"""The example private tracker site, end to end: libtorrent seeds and leeches through it.

``examples/private_site`` runs under ``wsgi-tracker serve`` (two workers, sync
on) with its own ``tracker.toml``: passkeys are checked against its SQLite
users, and its announce hook credits each member from the tracker's
accounting. Alice seeds over HTTP, Bob leeches over UDP; once both have
stopped, the site's database and ratio page show what each moved.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import bencodepy
import libtorrent as lt
import pytest
from bt_client import make_torrent, peer
from servers import REPO_ROOT, free_port, http_get, serve

from examples.private_site import accounts

pytestmark = [pytest.mark.client, pytest.mark.integration]

SITE_CONFIG = REPO_ROOT / "examples" / "private_site" / "tracker.toml"
BUDGET = 90.0  # seconds for every wait of the test together


def test_members_are_credited_for_a_real_download_over_http_and_udp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(accounts.DB_ENV, str(tmp_path / "site.sqlite3"))
    accounts.create()
    alice, bob = accounts.add_user("alice"), accounts.add_user("bob")
    end = time.monotonic() + BUDGET

    def left() -> float:
        return max(0.0, end - time.monotonic())

    env = {accounts.DB_ENV: str(tmp_path / "site.sqlite3")}
    with serve(
        tmp_path / "serve",
        workers=2,
        app="examples.private_site.app:app",
        config=SITE_CONFIG.read_text(),
        env=env,
    ) as stack:
        site = stack.http.url
        member_page = http_get(f"{site}/members/bob")[1].decode()
        udp_url = f"udp://127.0.0.1:{stack.udp.port}/announce/{bob}"
        assert udp_url in member_page
        http_url = f"{site}/announce/{alice}"
        assert http_url in http_get(f"{site}/members/alice")[1].decode()

        def counts(info_hash: bytes) -> tuple[int, int, int]:
            """(complete, downloaded, incomplete) by a scrape with Alice's passkey."""
            body = http_get(
                f"{site}/scrape/{alice}?info_hash=" + "".join(f"%{b:02x}" for b in info_hash)
            )[1]
            entry = bencodepy.decode(body)[b"files"][info_hash]
            return entry[b"complete"], entry[b"downloaded"], entry[b"incomplete"]

        seed_dir = tmp_path / "alice"
        torrent = make_torrent(seed_dir, http_url)
        size = len(torrent.data)
        with peer(torrent, seed_dir, free_port()) as seeder:
            seeder.wait_until(seeder.is_seeding, left(), "the seeder's file check")
            seeder.wait_for(lt.tracker_reply_alert, left(), "the seeder's announce reply")
            leech_dir = tmp_path / "bob"
            leech_dir.mkdir()
            with peer(torrent, leech_dir, free_port(), tracker_url=udp_url) as leecher:
                leecher.wait_for(lt.torrent_finished_alert, left(), "Bob's finished download")
                assert leecher.read_downloaded(torrent.name, left()) == torrent.data
                leecher.wait_until(
                    lambda: counts(torrent.info_hash) == (2, 1, 0), left(), "Bob's completion"
                )
                leecher.handle.pause()  # event=stopped, with Bob's final counters
                leecher.wait_until(
                    lambda: counts(torrent.info_hash) == (1, 1, 0), left(), "Bob's stop"
                )
            seeder.handle.pause()  # Alice's stop carries what she uploaded
            seeder.wait_until(
                lambda: counts(torrent.info_hash) == (0, 1, 0), left(), "Alice's stop"
            )

        def credited() -> bool:
            """Every announce asserted below is in the site's database: the hook
            delivers them apart from the swarm's counts, so a scrape seeing Bob's
            stop does not mean the site has credited it yet."""
            a, b = accounts.account("alice"), accounts.account("bob")
            return bool(
                a
                and b
                and a.uploaded >= size
                and b.downloaded >= size
                and a.announces >= 2
                and b.announces >= 3
            )

        while not credited():
            assert left() > 0, f"not credited: {accounts.accounts()}"
            time.sleep(0.2)
        ratio_page = http_get(site + "/")[1].decode()

    a, b = accounts.account("alice"), accounts.account("bob")
    assert a is not None and b is not None
    assert size <= a.uploaded <= 2 * size and a.downloaded == 0
    assert size <= b.downloaded <= 2 * size
    assert a.seeding_seconds > 0 and a.leeching_seconds == 0
    assert b.leeching_seconds > 0
    assert (a.announces, b.announces) == (2, 3)  # started, stopped; started, completed, stopped
    row = re.search(r'<tr data-member="alice">(.*?)</tr>', ratio_page, re.S)
    assert row is not None
    assert f'<td data-field="uploaded">{a.uploaded}</td>' in row.group(1)
    assert '<td data-field="ratio">-</td>' in row.group(1)  # nothing downloaded: no ratio
