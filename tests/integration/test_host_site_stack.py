"""A host site's whole tracker under ``wsgi-tracker serve`` (sync on, two workers).

Issue 15: with sync on, an announce hook hung every worker, because the
core's lock was a real ``_thread.lock`` held while gevent switched greenlets.
Here the hook, sync, statistics and access lists run together, as a private
site runs them, over HTTP and UDP; and the locks a started worker and the
sidecar hold are gevent's.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import bencodepy
import pytest
from servers import REPO_ROOT, announce_url, http_get, serve, udp_scrape

from udp_sidecar.protocol import build_announce_request, build_connect_request
from wsgi_tracker.core.types import EVENT_COMPLETED

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
    gated = [early.lock, hub.core.lock, hub._buffer._lock]
    locks = [getattr(x, "raw", x) for x in gated]  # the lock inside the core's ReadGate
    os._exit(0 if all(isinstance(x, gevent.thread.LockType) for x in locks) else 1)
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_locks_made_before_a_fork_are_gevents_in_the_patched_child_and_the_sidecar():
    done = subprocess.run(
        [sys.executable, "-c", SIDECAR_AND_PRELOAD], cwd=REPO_ROOT, timeout=60, check=False
    )
    assert done.returncode == 0


# --- accounting computed once, over the whole tracker ------------------------------------


class WorkerConnection:
    """A keep-alive connection, so every request on it reaches the same worker."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def get(self, url: str) -> tuple[str, bytes]:
        parts = urlsplit(url)
        self.conn.request("GET", f"{parts.path}?{parts.query}" if parts.query else parts.path)
        response = self.conn.getresponse()
        return response.getheader("X-Worker-Pid") or "", response.read()

    def close(self) -> None:
        self.conn.close()


def one_connection_per_worker(port: int, workers: int) -> list[WorkerConnection]:
    """Open connections until there is one to each worker (scrapes: no accounting)."""
    held: dict[str, WorkerConnection] = {}
    spare: list[WorkerConnection] = []
    for _ in range(200):
        conn = WorkerConnection(port)
        pid, _ = conn.get(f"http://127.0.0.1:{port}/scrape?info_hash=" + "%00" * 20)
        (spare if pid in held else held.__setitem__(pid, conn) or []).append(conn)
        if len(held) == workers:
            break
    for conn in spare:
        conn.close()
    assert len(held) == workers, f"reached only workers {sorted(held)}"
    return list(held.values())


def accounting_config(tmp_path: Path, hook: str, **settings: object) -> str:
    """Settings for serve: private, the hook, stats, whatever else is given."""
    passkeys = tmp_path / "passkeys"
    passkeys.write_text("key-alice alice\nkey-bob bob\n")
    lines = [
        "private = true",
        f'passkeys_file = "{passkeys}"',
        f'announce_hook = "tests.access_app:{hook}"',
        "hook_flush_seconds = 1",
        'stats_path = "/stats"',
        'metrics_path = "/metrics"',
        *(f"{k} = {json.dumps(v)}" for k, v in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def stats_of(url: str) -> dict:
    return json.loads(http_get(url + "/stats")[1])


def test_each_announce_reaches_the_hook_once_with_deltas_wherever_it_landed(tmp_path: Path):
    log = tmp_path / "hook.log"
    config = accounting_config(tmp_path, "record_all")
    with serve(
        tmp_path / "serve", workers=2, app="tests.sync_pid_app:app", config=config,
        env={"HOOK_LOG": str(log)},
    ) as stack:  # fmt: skip
        a, b = one_connection_per_worker(stack.http.port, 2)
        alice = stack.http.url + "/announce/key-alice"
        p = peer(1)
        try:
            # One peer's session, over worker a, worker b and the sidecar in turn.
            a.get(announce_url(alice, ALLOWED, p, 7001, 1000, event="started"))
            b.get(announce_url(alice, ALLOWED, p, 7001, 700, uploaded=100, downloaded=300))
            udp_announce(
                stack.udp.port, ALLOWED, p, b"/announce/key-alice", port=7001,
                uploaded=250, downloaded=1000, left=0, event=1,
            )  # fmt: skip
            # The client restarted: its counters start again from small numbers.
            a.get(announce_url(alice, ALLOWED, p, 7001, 0, uploaded=50, downloaded=0))
            udp_announce(
                stack.udp.port, ALLOWED, p, b"/announce/key-alice", port=7001,
                uploaded=80, left=0, event=3,
            )  # fmt: skip
            # Many peers of bob, each announcing twice, to whichever worker.
            bob = stack.http.url + "/announce/key-bob"
            for n in range(10, 40):
                conn = (a, b)[n % 2]
                conn.get(announce_url(bob, ALLOWED, peer(n), 7000 + n, 5, event="started"))
                (b, a)[n % 2].get(announce_url(bob, ALLOWED, peer(n), 7000 + n, 5, uploaded=10))
        finally:
            a.close()
            b.close()
        expected = 5 + 60
        wait_for(lambda: len(hook_lines(log)) >= expected, what=f"{expected} hook events")
        # Nothing arrives twice: wait two more flushes, then count again.
        time.sleep(2.5)
        events = hook_lines(log)
        assert len(events) == expected
        totals = wait_for(
            lambda: (
                (s := stats_of(stack.http.url)).get("hook", {}).get("delivered") == expected and s
            ),
            what="hook totals in /stats",
        )
        assert totals["hook"]["dropped"] == 0
    mine = [e for e in events if e["peer_id"] == p.hex()]
    assert [(e["protocol"], e["event"]) for e in mine] == [
        ("http", 2), ("http", 0), ("udp", 1), ("http", 0), ("udp", 3),
    ]  # fmt: skip
    assert [(e["uploaded_delta"], e["downloaded_delta"]) for e in mine] == [
        (0, 0), (100, 300), (150, 700), (0, 0), (30, 0),
    ]  # fmt: skip
    assert all(e["user"] == "alice" and e["ip"] == "127.0.0.1" for e in mine)
    assert mine[0]["leeching_seconds"] == mine[0]["seeding_seconds"] == 0
    assert mine[1]["leeching_seconds"] > 0 and mine[1]["seeding_seconds"] == 0
    assert mine[3]["seeding_seconds"] > 0 and mine[3]["leeching_seconds"] == 0  # left=0 since udp
    bobs = [e for e in events if e["user"] == "bob"]
    assert sum(e["uploaded_delta"] for e in bobs) == 30 * 10
    assert sorted(e["port"] for e in bobs if e["uploaded_delta"]) == list(range(7010, 7040))


def test_a_stuck_hook_drops_and_counts_and_a_silent_peer_expires(tmp_path: Path):
    log, gate = tmp_path / "hook.log", tmp_path / "gate"
    gate.touch()
    config = accounting_config(tmp_path, "gated_record", hook_queue_size=5, interval=2, peer_ttl=4)
    env = {"HOOK_LOG": str(log), "HOOK_GATE": str(gate)}
    with serve(tmp_path / "serve", workers=2, config=config, env=env) as stack:
        alice = stack.http.url + "/announce/key-alice"
        for n in range(20):  # stopped at once: no session stays behind to expire
            http_get(announce_url(alice, ALLOWED, peer(n), 7000 + n, 0, event="stopped"))

        def outcome() -> dict | None:
            hook = stats_of(stack.http.url).get("hook", {})
            return hook if hook.get("dropped", 0) >= 10 else None

        assert wait_for(outcome, what="drops")["dropped"] <= 15
        gate.unlink()  # the site's database is back
        done = wait_for(
            lambda: (h := stats_of(stack.http.url)["hook"])["delivered"] + h["dropped"] == 20 and h,
            what="every event delivered or dropped",
        )
        metrics = http_get(stack.http.url + "/metrics")[1].decode()
        assert f'wsgi_tracker_hook_events_total{{outcome="dropped"}} {done["dropped"]}.0' in metrics
        # A peer that never says stopped: its session ends when its TTL (4 s) runs out.
        http_get(announce_url(alice, ALLOWED, peer(99), 7099, 10, event="started", uploaded=3))
        expired = wait_for(
            lambda: [e for e in hook_lines(log) if e["event"] == 4], what="an expiry event"
        )
    assert [(e["peer_id"], e["uploaded"], e["user"]) for e in expired] == [
        (peer(99).hex(), 3, "alice")
    ]


IH = bytes.fromhex("6c" * 20)
QBIT = b"-qB4630-123456789012"
OLD_QBIT = b"-qB4100-123456789012"
STRANGER = b"-XX0001-123456789012"
USE_ONE_OF = "client not allowed: use one of these clients: -qB, -LT"


# --- client lists and min interval (core policy) over the whole stack ----------------------


def failure(url: str) -> str | None:
    reply = bencodepy.decode(http_get(url)[1])
    reason = reply.get(b"failure reason")
    return None if reason is None else reason.decode()


def udp_failure(port: int, peer_id: bytes, event: int = 0) -> str | None:
    reply = udp_announce(port, IH, peer_id, port=6881, left=10, event=event)
    return reply[8:].decode() if struct.unpack("!I", reply[:4])[0] == 3 else None


def test_client_lists_and_min_interval_over_http_and_udp_under_serve(tmp_path):
    config = (
        'client_allow = ["-qB", "-LT"]\n'
        'client_deny = ["-qB41"]\n'
        "interval = 600\nmin_interval = 300\nmin_interval_enforced = true\n"
        'stats_path = "/stats"\n'
    )
    with serve(tmp_path, workers=2, config=config) as stack:
        url = stack.http.url + "/announce"
        udp = stack.udp.port

        def http(peer_id: bytes, **kw) -> str | None:
            return failure(announce_url(url, IH, peer_id, 6881, 10, **kw))

        assert (
            http(STRANGER, event="started")
            == "client not allowed: use one of these clients: -qB, -LT"
        )
        assert (
            udp_failure(udp, STRANGER, 2)
            == "client not allowed: use one of these clients: -qB, -LT"
        )
        assert "is banned" in (http(OLD_QBIT) or "")
        assert "is banned" in (udp_failure(udp, OLD_QBIT) or "")
        # On one worker (a keep-alive connection): no sync lag between the two.
        same_worker = WorkerConnection(stack.http.port)
        try:
            for extra, refused in (({"event": "started"}, None), ({}, b"announce too soon")):
                _, body = same_worker.get(announce_url(url, IH, QBIT, 6881, 10, **extra))
                reason = bencodepy.decode(body).get(b"failure reason")
                assert (reason and reason.split(b":")[0]) == refused, reason
        finally:
            same_worker.close()
        # The sidecar knows the peer through sync: its early UDP announce is refused too.
        deadline = time.monotonic() + 20
        while udp_scrape("127.0.0.1", udp, IH)[0][2] != 1:
            assert time.monotonic() < deadline, "the sidecar never saw the HTTP announce"
            time.sleep(0.05)
        assert "announce too soon" in (udp_failure(udp, QBIT) or "")
        assert udp_failure(udp, QBIT, EVENT_COMPLETED) is None
        assert http(QBIT, event="stopped") is None
        deadline = time.monotonic() + 20
        while True:  # whole-tracker counters converge within about two seconds
            errors = json.loads(http_get(stack.http.url + "/stats")[1])["errors"]
            if errors.get("udp", {}).get("announce_too_soon"):
                break
            assert time.monotonic() < deadline, errors
            time.sleep(0.1)
    assert errors["http"] == {"client_not_allowed": 2, "announce_too_soon": 1}
    assert errors["udp"] == {"client_not_allowed": 2, "announce_too_soon": 1}
