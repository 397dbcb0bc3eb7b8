"""A real WebTorrent client: two headless Chromium tabs share a file through our tracker only.

The example Flask site runs under ``wsgi-tracker serve`` (two workers, sync
on) and serves /webtorrent with the vendored ``webtorrent`` browser bundle.
One tab seeds a generated file, the other opens its magnet link (whose only
tracker is ours; the browser has no DHT or LSD) and downloads it over WebRTC;
the test compares the SHA-256 the page computed with the file's own.

Chromium is driven over the DevTools protocol (its /json endpoints and a
WebSocket per tab, with websocket-client), so nothing beyond Debian's
chromium is needed.

What WebRTC between the two tabs took here (Debian chromium, headless, root,
Dec 2026): the flags below, though on this machine the exchange also worked
without the last two, over the host candidate of eth0's address (192.0.2.2,
the machine talking to itself). In a network namespace with nothing but
``lo`` (``unshare -n``) the download did not complete within 90 s, with or
without ``--allow-loopback-in-peer-connection`` and
``--disable-features=WebRtcHideLocalIpsWithMdns``: a host with no interface
but loopback is not covered. They stay because they are what Chromium offers
for loopback candidates and .local (mDNS) host names nothing here resolves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websocket
from servers import CHROMIUM, CHROMIUM_FLAGS, free_port, serve

pytestmark = pytest.mark.integration

WITHIN = 90.0  # seconds: a bound on the whole exchange (WebRTC set-up), not a figure under test
SIZE = 200_000
FLAGS = [
    *CHROMIUM_FLAGS,
    "--remote-allow-origins=*",
    # WebRTC between two tabs over loopback:
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def sample() -> bytes:
    """The bytes the seeding page generates (same formula as its script)."""
    return bytes((i * 7 + (i >> 8)) % 251 for i in range(SIZE))


@contextlib.contextmanager
def chromium() -> Iterator[int]:
    """Headless Chromium with a DevTools port; yields the port, stops the browser by pid."""
    assert CHROMIUM is not None
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="wt-chromium-") as profile:
        log = Path(profile) / "chromium.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    CHROMIUM,
                    *FLAGS,
                    f"--user-data-dir={profile}/data",
                    f"--remote-debugging-port={port}",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1)
                    break
                assert proc.poll() is None, log.read_text(errors="replace")
                time.sleep(0.1)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class Tab:
    """One page, evaluated in over its DevTools WebSocket."""

    def __init__(self, devtools: int, url: str) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{devtools}/json/new?{quote(url, safe='')}", method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            target = json.load(reply)
        self.ws = websocket.create_connection(
            target["webSocketDebuggerUrl"], timeout=10, suppress_origin=True
        )
        self._id = 0

    def state(self) -> dict[str, Any]:
        """The page's ``window.wt`` (what its script has done so far)."""
        self._id += 1
        self.ws.send(
            json.dumps(
                {
                    "id": self._id,
                    "method": "Runtime.evaluate",
                    "params": {
                        "expression": "JSON.stringify(window.wt || {})",
                        "returnByValue": True,
                    },
                }
            )
        )
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                return json.loads(reply["result"]["result"].get("value") or "{}")

    def wait_for(self, key: str, deadline: float) -> dict[str, Any]:
        state = self.state()
        while key not in state and not state.get("error") and time.monotonic() < deadline:
            time.sleep(0.25)
            state = self.state()
        assert key in state, state
        return state

    def close(self) -> None:
        self.ws.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tests/run.sh installs it)")
def test_two_browser_tabs_share_a_file_found_only_through_our_tracker(tmp_path: Path) -> None:
    with (
        serve(
            tmp_path, workers=2, app="examples.flask_site.app:app", config='stats_path = "/stats"\n'
        ) as stack,
        chromium() as devtools,
    ):
        site = stack.http.url
        deadline = time.monotonic() + WITHIN
        seeder = Tab(devtools, f"{site}/webtorrent?seed=1&size={SIZE}")
        try:
            seeding = seeder.wait_for("magnet", deadline)
            magnet = seeding["magnet"]
            assert seeding["tracker"] == f"ws://127.0.0.1:{stack.http.port}/announce"
            # The magnet names our tracker and nothing else: no other way to find a peer.
            trackers = [p for p in magnet.split("&") if p.startswith("tr=")]
            assert trackers == ["tr=" + quote(seeding["tracker"], safe="")], magnet
            leecher = Tab(devtools, f"{site}/webtorrent?magnet={quote(magnet, safe='')}")
            try:
                done = leecher.wait_for("sha256", deadline)
            finally:
                leecher.close()
        finally:
            seeder.close()
        assert done["length"] == SIZE
        assert done["sha256"] == hashlib.sha256(sample()).hexdigest()

        # The other worker's counters reach /stats with its next report (every second).
        def relayed(s: dict[str, Any]) -> bool:
            return bool(s["websocket"]["offer"] >= 1 and s["websocket"]["answer"] >= 1)

        stats: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while not (stats and relayed(stats)) and time.monotonic() < deadline:
            with urllib.request.urlopen(f"{site}/stats", timeout=10) as reply:
                stats = json.load(reply)
            time.sleep(0.2)
        assert relayed(stats), stats
