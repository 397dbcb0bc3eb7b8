"""Restarts lose nothing: a deploy (every process SIGTERMed), a crash (SIGKILL), a reload (SIGHUP).

Real processes: ``udp-sidecar`` as the sync hub with a snapshot file, and
gunicorn with two workers joined to it. The test keeps its own tally of what
it announced, so "counters equal" is compared with what really happened, not
with what some process remembered. Waits poll with a bound and assert the
state reached, never how fast.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bencodepy
import pytest
import servers
from servers import Server, announce_url, gunicorn, http_get, scrape_url, sidecar, udp_scrape

from wsgi_tracker.sync import snapshot

pytestmark = pytest.mark.integration

WORKERS = 2
WITHIN = 15.0  # seconds: a bound on every wait, not a figure under test
PROTOCOL_ID = 0x41727101980
LOOPBACK = socket.inet_aton("127.0.0.1")


def ih(tag: str) -> bytes:
    return tag.encode().ljust(20, b".")


def pid(tag: str, n: int) -> bytes:
    return f"-RS0001-{tag}{n}".encode().ljust(20, b"_")[:20]


@dataclass
class Paths:
    snapshot: str
    sync: str


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(str(tmp_path / "swarms.snap"), str(tmp_path / "hub" / "sync.sock"))


@contextlib.contextmanager
def tracker(paths: Paths, snapshot_interval: int = 3600) -> Iterator[tuple[Server, Server]]:
    """The hub first, then the workers; on exit the workers stop first, as a deploy does."""
    env = {
        "WSGI_TRACKER_SNAPSHOT_PATH": paths.snapshot,
        "WSGI_TRACKER_SNAPSHOT_INTERVAL": str(snapshot_interval),
    }
    with (
        sidecar(sync_socket=paths.sync, env=env) as udp,
        gunicorn(workers=WORKERS, env={"WSGI_TRACKER_SYNC_SOCKET": paths.sync}) as http,
    ):
        joined = workers_joined(udp, WORKERS)
        assert len(joined) >= WORKERS, f"only workers {joined} joined the hub"
        yield http, udp


def workers_joined(udp: Server, count: int) -> set[str]:
    """Pids of the workers the hub has greeted, once there are ``count`` (bounded wait).

    A worker joins in post_worker_init, after gunicorn installed its signal
    handlers: a SIGTERM sent earlier is lost and costs the whole graceful_timeout.
    """
    deadline = time.monotonic() + WITHIN
    pids: set[str] = set()
    while len(pids) < count and time.monotonic() < deadline:
        pids = set(re.findall(r"sync hub: worker pid (\d+) connected", udp.stderr()))
        time.sleep(0.05)
    return pids


# --- clients -----------------------------------------------------------------------------


def http_announce(http: Server, torrent: bytes, peer: bytes, port: int, left: int, event: str):
    extra = {"event": event} if event else {}
    status, body = http_get(
        announce_url(http.url + "/announce", torrent, peer, port, left, numwant=200, **extra)
    )
    reply = bencodepy.decode(body)
    assert status == 200 and b"failure reason" not in reply, reply
    return reply


def udp_announce(udp: Server, torrent: bytes, peer: bytes, port: int, left: int, event: int):
    servers.udp_announce(udp.host, udp.port, torrent, peer, port, left, event)


def http_counts(http: Server, hashes: list[bytes]) -> dict[bytes, tuple[int, int, int]]:
    _, body = http_get(scrape_url(http.url + "/scrape", *hashes))
    files = bencodepy.decode(body)[b"files"]
    return {
        h: (files[h][b"complete"], files[h][b"downloaded"], files[h][b"incomplete"]) for h in hashes
    }


def ports(compact: bytes) -> set[int]:
    return {
        int.from_bytes(compact[i + 4 : i + 6], "big")
        for i in range(0, len(compact), 6)
        if compact[i : i + 4] == LOOPBACK
    }


@dataclass
class Tally:
    """What the test did: completions per torrent, and the live seeders/leechers by port."""

    downloaded: Counter = field(default_factory=Counter)
    seeders: dict[bytes, set[int]] = field(default_factory=dict)
    leechers: dict[bytes, set[int]] = field(default_factory=dict)

    def expect(self) -> dict[bytes, tuple[int, int, int]]:
        hashes = set(self.downloaded) | set(self.seeders) | set(self.leechers)
        return {
            h: (
                len(self.seeders.get(h, ())),
                self.downloaded[h],
                len(self.leechers.get(h, ())),
            )
            for h in sorted(hashes)
        }


def make_swarms(http: Server, udp: Server) -> Tally:
    """Completions and live peers over both protocols, spread over the workers."""
    t = Tally()
    for name, n_http, n_udp, leech in (("alpha", 6, 0, 3), ("beta", 0, 4, 2), ("gamma", 2, 2, 1)):
        h = ih(name)
        seeders, leechers = t.seeders.setdefault(h, set()), t.leechers.setdefault(h, set())
        for i in range(n_http):
            http_announce(http, h, pid(name, i), 7000 + i, 0, "completed")
            seeders.add(7000 + i)
        for i in range(n_udp):
            udp_announce(udp, h, pid(name, 100 + i), 7100 + i, 0, 1)
            seeders.add(7100 + i)
        for i in range(leech):
            http_announce(http, h, pid(name, 200 + i), 7200 + i, 1000, "started")
            leechers.add(7200 + i)
        t.downloaded[h] += n_http + n_udp
    # A leecher that left: it must not come back after the restart.
    http_announce(http, ih("gamma"), pid("gamma", 300), 7300, 10, "started")
    http_announce(http, ih("gamma"), pid("gamma", 300), 7300, 10, "stopped")
    return t


def converged(http: Server, udp: Server, expect: dict[bytes, tuple[int, int, int]]) -> dict:
    """Poll the workers (fresh connections) and the sidecar until they agree with ``expect``."""
    hashes = list(expect)
    deadline = time.monotonic() + WITHIN
    while True:
        answers = [http_counts(http, hashes) for _ in range(2 * WORKERS)]
        answers.append(dict(zip(hashes, udp_scrape(udp.host, udp.port, *hashes), strict=True)))
        if all(a == expect for a in answers) or time.monotonic() > deadline:
            return {"http": answers[:-1], "udp": answers[-1]}
        time.sleep(0.05)


def all_agree(http: Server, udp: Server, expect: dict) -> None:
    got = converged(http, udp, expect)
    assert got["udp"] == expect
    for answer in got["http"]:
        wrong = {h: (answer[h], expect[h]) for h in expect if answer[h] != expect[h]}
        assert not wrong, f"a worker answers (got, want) {wrong}"


def peers_handed_out(http: Server, torrent: bytes) -> set[int]:
    """Ports a brand-new leecher is given for ``torrent`` (it announces, then leaves)."""
    probe = pid("probe", secrets.randbelow(10**6))
    reply = http_announce(http, torrent, probe, 6999, 1, "started")
    http_announce(http, torrent, probe, 6999, 1, "stopped")
    return ports(reply[b"peers"])


# --- the tests -----------------------------------------------------------------------------


def test_deploy_keeps_completed_counters_exactly_and_live_peers(paths):
    with tracker(paths) as (http, udp):
        tally = make_swarms(http, udp)
        all_agree(http, udp, tally.expect())
        # One more completion, and the deploy starts at once: it is still in a
        # worker's send buffer, and SIGTERM must hand it to the hub, and the hub
        # to the snapshot.
        last = ih("delta")
        http_announce(http, last, pid("delta", 0), 7400, 0, "completed")
        tally.downloaded[last] += 1
        tally.seeders[last] = {7400}
    assert Path(paths.snapshot).is_file()
    with tracker(paths) as (http, udp):
        all_agree(http, udp, tally.expect())
        for torrent, seeders in tally.seeders.items():
            assert peers_handed_out(http, torrent) == seeders | tally.leechers.get(torrent, set())


def test_crash_of_every_process_restores_the_last_periodic_snapshot(paths):
    with tracker(paths, snapshot_interval=1) as (http, udp):
        tally = make_swarms(http, udp)
        all_agree(http, udp, tally.expect())
        saved = wait_for_snapshot(paths.snapshot, tally)
        # A power cut: workers, master and sidecar all SIGKILLed; nobody saves anything.
        for worker in worker_pids(http):
            os.kill(worker, signal.SIGKILL)
        for server in (http, udp):
            server.proc.kill()
            server.proc.wait(WITHIN)
    assert saved == dict(tally.downloaded)
    with tracker(paths) as (http, udp):
        all_agree(http, udp, tally.expect())


def wait_for_snapshot(path: str, tally: Tally) -> dict[bytes, int]:
    """The counters of the snapshot file, once a periodic save has caught up with ``tally``."""
    deadline = time.monotonic() + WITHIN
    counters: dict[bytes, int] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, snapshot.SnapshotError):
            snap = snapshot.decode(Path(path).read_bytes())
            counters = snap.downloaded
            if counters == dict(tally.downloaded) and len(snap.peers) == sum(
                len(s) for s in (*tally.seeders.values(), *tally.leechers.values())
            ):
                return counters
        time.sleep(0.1)
    return counters


def test_corrupt_snapshot_is_kept_aside_and_the_sidecar_starts_empty(paths):
    damaged = b"WTSN\x02 this is not a snapshot"
    Path(paths.snapshot).write_bytes(damaged)
    with tracker(paths) as (http, udp):
        assert udp_scrape(udp.host, udp.port, ih("alpha")) == [(0, 0, 0)]
        http_announce(http, ih("alpha"), pid("alpha", 1), 7001, 0, "completed")
        all_agree(http, udp, {ih("alpha"): (1, 1, 0)})
        log = udp.stderr()
        where = re.escape(paths.snapshot)
        damage = rf"ERROR \[\d+\] wsgi_tracker.sync.snapshot: snapshot {where} is damaged"
        assert len(re.findall(damage, log)) == 1, log
        assert "Traceback" not in log
    # ...on the way out it wrote a good one, and the damaged one is still beside it.
    assert snapshot.decode(Path(paths.snapshot).read_bytes()).downloaded == {ih("alpha"): 1}
    (aside,) = Path(paths.snapshot).parent.glob("swarms.snap.damaged-*")
    assert aside.read_bytes() == damaged


def test_graceful_reload_keeps_answering_and_keeps_the_swarms(paths):
    with tracker(paths) as (http, udp):
        tally = make_swarms(http, udp)
        all_agree(http, udp, tally.expect())
        before = worker_pids(http)
        http.proc.send_signal(signal.SIGHUP)
        answered = 0
        deadline = time.monotonic() + WITHIN
        # Announce all through the reload, until every old worker is gone (bounded).
        for n in range(5000):
            h = ih("alpha")
            http_announce(http, h, pid("reload", n % 50), 8000 + n % 50, 5, "")
            tally.leechers[h].add(8000 + n % 50)
            answered += 1
            if not (worker_pids(http) & before) and len(worker_pids(http)) == WORKERS:
                break
            if time.monotonic() > deadline:
                break
        assert not (worker_pids(http) & before), "the old workers never left"
        assert len(workers_joined(udp, 2 * WORKERS)) == 2 * WORKERS
        assert answered >= 1
        all_agree(http, udp, tally.expect())


def worker_pids(http: Server) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, StopIteration):
                status = (entry / "status").read_text()
                ppid = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid"))
                if int(ppid) == http.proc.pid:
                    pids.add(int(entry.name))
    return pids
