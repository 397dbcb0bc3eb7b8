"""A host site's whole tracker under ``wsgi-tracker serve`` (sync on, two workers).

Issue 15: with sync on, an announce hook hung every worker, because the
core's lock was a real ``_thread.lock`` held while gevent switched greenlets.
Here the hook, sync, statistics and access lists run together, as a private
site runs them, over HTTP and UDP; and the locks a started worker and the
sidecar hold are gevent's.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import bencodepy
import pytest
from servers import REPO_ROOT, announce_url, http_get, serve

from udp_sidecar.protocol import build_announce_request, build_connect_request

pytestmark = pytest.mark.integration

ALLOWED = bytes.fromhex("5a" * 20)
REFUSED = bytes.fromhex("5b" * 20)
WAIT = 20.0


def peer(n: int) -> bytes:
    return b"-qB4630-%012d" % n


def wait_for(predicate, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def http_announce(url: str, **params) -> dict:
    status, body = http_get(announce_url(url, **params))
    assert status == 200
    return bencodepy.decode(body)


def udp_announce(
    udp_port: int, ih: bytes, peer_id: bytes, url_data: bytes = b"", **fields
) -> bytes:
    """One BEP 15 connect + announce; the raw reply (action 1 or 3)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(build_connect_request(1), ("127.0.0.1", udp_port))
        conn = s.recv(2048)[8:16]
        packet = build_announce_request(conn, 2, ih, peer_id, **fields)
        for start in range(0, len(url_data), 255):
            chunk = url_data[start : start + 255]
            packet += bytes([2, len(chunk)]) + chunk
        s.sendto(packet, ("127.0.0.1", udp_port))
        return s.recv(2048)


def hook_lines(log: Path) -> list[list]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def site(tmp_path: Path):
    """serve --workers 2 with a whitelist, passkeys, the hook and /stats all on."""
    whitelist = tmp_path / "whitelist"
    whitelist.write_text(f"{ALLOWED.hex()} the one torrent\n")
    passkeys = tmp_path / "passkeys"
    passkeys.write_text("key-alice alice\nkey-bob bob\n")
    log = tmp_path / "hook.log"
    config = (
        'access_mode = "whitelist"\n'
        f'access_list_file = "{whitelist}"\n'
        "private = true\n"
        f'passkeys_file = "{passkeys}"\n'
        'announce_hook = "tests.access_app:record"\n'
        'stats_path = "/stats"\n'
        'metrics_path = "/metrics"\n'
    )
    with serve(tmp_path / "serve", workers=2, config=config, env={"HOOK_LOG": str(log)}) as stack:
        yield stack, log


def test_hook_sync_stats_and_access_lists_together_answer_and_the_hook_fires(site):
    stack, log = site
    base = stack.http.url + "/announce/"
    for n in range(20):  # fresh connections: both workers get some
        reply = http_announce(
            base + ("key-alice" if n % 2 else "key-bob"),
            info_hash=ALLOWED, peer_id=peer(n), port=7000 + n, left=n,
        )  # fmt: skip
        assert b"failure reason" not in reply, reply
    refused = http_announce(base + "key-alice", info_hash=REFUSED, peer_id=peer(99), port=1, left=1)
    assert refused[b"failure reason"] == b"torrent not allowed"
    assert (
        http_announce(base + "nobody", info_hash=ALLOWED, peer_id=peer(98), port=1, left=1)[
            b"failure reason"
        ]
        == b"unknown passkey"
    )
    reply = udp_announce(stack.udp.port, ALLOWED, peer(50), b"/announce/key-alice", port=7050)
    assert struct.unpack("!I", reply[:4])[0] == 1, reply
    # Every accepted announce reaches the hook, and everyone's counters are summed in /stats.
    wait_for(lambda: len(hook_lines(log)) >= 21, what="21 hook events")
    users = sorted(line[0] for line in hook_lines(log))
    assert users == ["alice"] * 11 + ["bob"] * 10

    def stats() -> dict:
        return json.loads(http_get(stack.http.url + "/stats")[1])

    totals = wait_for(lambda: (s := stats())["announces"]["total"] == 21 and s, what="stats")
    assert totals["scope"] == "tracker"
    assert totals["errors"]["http"] == {"torrent_not_allowed": 1, "passkey_unknown": 1}
    assert "wsgi_tracker_announces_total" in http_get(stack.http.url + "/metrics")[1].decode()


def test_every_lock_in_a_started_worker_is_gevents(tmp_path: Path):
    with serve(tmp_path, workers=2, app="tests.lock_probe_app:app") as stack:
        seen: dict[int, dict] = {}
        deadline = time.monotonic() + WAIT
        while len(seen) < 2 and time.monotonic() < deadline:
            answer = json.loads(http_get(stack.http.url + "/lock-types")[1])
            seen[answer["pid"]] = answer["locks"]
    assert len(seen) == 2, seen
    for locks in seen.values():
        assert set(locks) == {"core", "start_sync", "sync_buffer", "sync_send"}
        assert all(kind == "gevent.thread.LockType" for kind in locks.values()), locks


SIDECAR_AND_PRELOAD = """
import os, sys
from wsgi_tracker.core.tracker import TrackerCore
early = TrackerCore()            # made before gevent patches, like a preloaded app
early.lock.acquire(); early.lock.release()
child = os.fork()
if child == 0:                   # a gunicorn worker: fork, then patch, then serve
    import udp_sidecar.__main__  # patches, as the sidecar does before anything else
    import gevent.thread
    from wsgi_tracker.sync.hub import SyncHub
    hub = SyncHub(TrackerCore(), "/nonexistent/sync.sock")
    locks = [early.lock, hub.core.lock, hub._buffer._lock]
    os._exit(0 if all(isinstance(x, gevent.thread.LockType) for x in locks) else 1)
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_locks_made_before_a_fork_are_gevents_in_the_patched_child_and_the_sidecar():
    done = subprocess.run(
        [sys.executable, "-c", SIDECAR_AND_PRELOAD], cwd=REPO_ROOT, timeout=60, check=False
    )
    assert done.returncode == 0
