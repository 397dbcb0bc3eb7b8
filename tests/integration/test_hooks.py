"""The announce hook: batched, off the request path, bounded; from Flask, gunicorn and UDP."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from servers import announce_url, gunicorn, http_get, sidecar
from test_access import udp_announce
from werkzeug.serving import make_server

from wsgi_tracker.access.hooks import AnnounceEvent, AnnounceHook
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.addresses import pack_ip
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import EVENT_COMPLETED, EVENT_STARTED, Announce
from wsgi_tracker.flask import Tracker

IH = bytes.fromhex("33" * 20)
CLIENT = pack_ip("127.0.0.1")
WAIT = 10.0


def pid(n: int) -> bytes:
    return b"-HOOK---%012d" % n


def wait_for(predicate, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Recorder:
    """A host callable that keeps the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[AnnounceEvent]] = []

    def __call__(self, events: list[AnnounceEvent]) -> None:
        self.batches.append(events)

    @property
    def events(self) -> list[AnnounceEvent]:
        return [e for batch in self.batches for e in batch]


def test_accepted_announces_reach_the_hook_in_batches_with_their_counters(clock):
    recorder = Recorder()
    # Fifty clients from one address: lift the per-address cap (16).
    config = TrackerConfig(max_peers_per_address=50)
    core = TrackerCore(config, clock=clock, on_announce=recorder)
    for n in range(50):
        req = Announce(IH, pid(n), 6881, uploaded=n, downloaded=2 * n, left=3 * n, passkey="k")
        core.announce(req, CLIENT)
    core.hook.close()
    assert len(recorder.events) == 50
    assert len(recorder.batches) < 50  # batched, not one call per announce
    first = recorder.events[0]
    assert first == AnnounceEvent("k", IH, pid(0), 0, 0, 0, 0, clock.now, "127.0.0.1", 6881, "http")
    assert [e.uploaded for e in recorder.events] == list(range(50))
    assert core.hook.delivered == 50


def test_a_slow_hook_never_holds_up_announces_and_a_full_queue_drops_and_counts():
    release = threading.Event()
    got: list[int] = []

    def slow(events: list[AnnounceEvent]) -> None:
        release.wait(WAIT)  # stuck until the test lets go
        got.extend(e.left for e in events)

    config = TrackerConfig(hook_queue_size=10, hook_flush_seconds=1, max_peers_per_address=50)
    core = TrackerCore(config, on_announce=slow)
    core.start()
    core.announce(Announce(IH, pid(0), 6881, left=0), CLIENT)
    hook, ledger = core.hook, core.accounting.ledger
    wait_for(lambda: not ledger.pending and not hook.queue)  # in the stuck callback
    for n in range(1, 31):
        core.announce(Announce(IH, pid(n), 6881, left=n), CLIENT)  # returns: never waits
    assert core.hook.dropped == 20
    release.set()
    core.hook.close()
    assert got == list(range(11))


def test_a_failing_hook_loses_its_batch_only():
    calls: list[int] = []

    def flaky(events: list[AnnounceEvent]) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            raise RuntimeError("database down")

    hook = AnnounceHook(flaky, flush_seconds=0.05)
    hook.start()
    event = AnnounceEvent(None, IH, pid(1), 0, 0, 0, 0, 0.0)
    hook.put(event)
    wait_for(lambda: hook.failed_batches == 1)
    hook.put(event)
    hook.close()
    assert (hook.failed_batches, hook.delivered) == (1, 1)


@pytest.fixture
def flask_site():
    """A Flask site with the tracker mounted: its users table decides passkeys."""
    recorder = Recorder()
    app = Flask("site")
    users = {"k-alice": "alice", "k-bob": "bob"}

    @app.route("/")
    def home() -> str:
        return "the site"

    Tracker(
        app,
        TrackerConfig(private=True, sync_socket="off", hook_flush_seconds=1),
        authenticate=users.get,
        on_announce=recorder,
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", recorder
    finally:
        server.shutdown()
        thread.join(WAIT)


def test_flask_site_gets_its_own_user_ids_for_ratio_accounting(flask_site):
    url, recorder = flask_site
    base = url + "/announce/"
    http_get(announce_url(base + "k-alice", IH, pid(1), 6881, 100, uploaded=5, event="started"))
    http_get(announce_url(base + "k-bob", IH, pid(2), 6881, 0, uploaded=7, event="completed"))
    http_get(announce_url(base + "k-eve", IH, pid(3), 6881, 0, uploaded=9))  # refused
    assert http_get(url + "/") == (200, b"the site")
    wait_for(lambda: len(recorder.events) == 2)
    assert [(e.user, e.uploaded, e.left, e.event) for e in recorder.events] == [
        ("alice", 5, 100, EVENT_STARTED),
        ("bob", 7, 0, EVENT_COMPLETED),
    ]


def test_hook_named_in_settings_hears_http_workers_and_the_udp_sidecar(tmp_path):
    log = Path(tmp_path) / "hook.log"
    env = {
        "WSGI_TRACKER_ANNOUNCE_HOOK": "tests.access_app:record",
        "HOOK_LOG": str(log),
    }
    with gunicorn(env=env, workers=2) as web, sidecar(env=env) as udp:
        http_get(announce_url(web.url + "/announce/key-h", IH, pid(1), 6881, 10, uploaded=1))
        udp_announce(udp.port, IH, 2, url_data=b"/announce/key-u")
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2)
    events = sorted(json.loads(line) for line in log.read_text().splitlines())
    assert events == [["key-h", IH.hex(), 1, 0, 10, 0], ["key-u", IH.hex(), 0, 0, 1, 2]]
