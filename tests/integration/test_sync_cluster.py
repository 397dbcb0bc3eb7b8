"""One swarm view across four gunicorn workers and udp-sidecar, with real processes.

``gunicorn -k gevent -w 4`` serves ``tests/sync_pid_app.py`` (the tracker, plus
an ``X-Worker-Pid`` header so a test knows which worker's replica answered)
and ``udp-sidecar`` is the hub on a Unix socket in a temporary directory.
Peers announce over HTTP (a new connection each time, so every worker gets
some) and over hand-built BEP 15 datagrams. Every wait polls with a bound and
asserts what the replicas converged to, never how fast.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import bencodepy
import pytest
from servers import (
    Server,
    alive,
    announce_url,
    children,
    gunicorn,
    http_get,
    ports,
    scrape_url,
    serve,
    sidecar,
)

from udp_sidecar.protocol import build_announce_request
from wsgi_tracker.sync import frames

pytestmark = pytest.mark.integration

WORKERS = 4
CONVERGE_WITHIN = 15.0  # seconds; a bound on the wait, not a figure under test
UDP_PROTOCOL_ID = 0x41727101980
LOOPBACK = socket.inet_aton("127.0.0.1")


@dataclass
class Cluster:
    http: Server
    udp: Server
    sync_socket: str
    stack: contextlib.ExitStack
    worker_pids: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    sock = str(tmp_path_factory.mktemp("sync") / "hub" / "sync.sock")
    env = {"WSGI_TRACKER_SYNC_SOCKET": sock}
    with contextlib.ExitStack() as stack:
        udp = stack.enter_context(sidecar(sync_socket=sock))
        http = stack.enter_context(
            gunicorn("tests.sync_pid_app:app", workers=WORKERS, worker_class="gevent", env=env)
        )
        c = Cluster(http, udp, sock, stack)
        c.worker_pids = live_workers(c)
        yield c


# --- clients -----------------------------------------------------------------------------


def get(c: Cluster, url: str) -> tuple[str, dict]:
    """(worker pid, decoded body) of one GET on a fresh connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        body = response.read()
        return response.getheader("X-Worker-Pid") or "", bencodepy.decode(body)
    finally:
        conn.close()


def live_workers(c: Cluster) -> set[str]:
    """The pids of every worker, learnt from which ones answer (bounded)."""
    pids: set[str] = set()
    deadline = time.monotonic() + CONVERGE_WITHIN
    while len(pids) < WORKERS and time.monotonic() < deadline:
        pids.add(get(c, scrape_url(c.http.url + "/scrape", b"\0" * 20))[0])
    assert len(pids) == WORKERS, f"only workers {pids} answered"
    return pids


def http_announce(
    c: Cluster, ih: bytes, peer: bytes, port: int, left: int, event: str = ""
) -> tuple[str, set[int]]:
    """(worker pid, ports of the IPv4 peers handed back)."""
    extra = {"event": event} if event else {}
    url = announce_url(c.http.url + "/announce", ih, peer, port, left, numwant=200, **extra)
    pid, body = get(c, url)
    assert b"failure reason" not in body, body
    return pid, ports(body.get(b"peers", b""))


def http_scrape(c: Cluster, hashes: list[bytes]) -> tuple[str, dict[bytes, tuple[int, int, int]]]:
    """(worker pid, {info_hash: (seeders, downloaded, leechers)})."""
    pid, body = get(c, scrape_url(c.http.url + "/scrape", *hashes))
    files = body[b"files"]
    return pid, {
        ih: (files[ih][b"complete"], files[ih][b"downloaded"], files[ih][b"incomplete"])
        for ih in hashes
    }


class Udp:
    """A BEP 15 client on one socket; it reconnects on every call (the sidecar may restart)."""

    def __init__(self, server: Server) -> None:
        self.addr = (server.host, server.port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(1)

    def close(self) -> None:
        self.sock.close()

    def _ask(self, packet: Callable[[int], bytes]) -> bytes:
        for _ in range(5):
            tid = secrets.randbits(32)
            try:
                self.sock.sendto(packet(tid), self.addr)
                reply = self.sock.recv(65536)
            except OSError:
                continue
            if struct.unpack_from(">I", reply, 4)[0] == tid:
                return reply
        raise AssertionError(f"no UDP answer from {self.addr}")

    def _connection_id(self) -> bytes:
        reply = self._ask(lambda tid: struct.pack(">QII", UDP_PROTOCOL_ID, 0, tid))
        return reply[8:16]

    def announce(self, ih: bytes, peer: bytes, port: int, left: int, event: int = 0) -> set[int]:
        cid = self._connection_id()
        reply = self._ask(
            lambda tid: build_announce_request(
                cid, tid, ih, peer, port, left=left, event=event, num_want=200
            )
        )
        assert struct.unpack_from(">I", reply)[0] == 1, reply
        return ports(reply[20:])

    def scrape(self, hashes: list[bytes]) -> dict[bytes, tuple[int, int, int]]:
        cid = self._connection_id()
        reply = self._ask(lambda tid: struct.pack(">8sII", cid, 2, tid) + b"".join(hashes))
        assert struct.unpack_from(">I", reply)[0] == 2, reply
        return {ih: struct.unpack_from(">III", reply, 8 + 12 * i) for i, ih in enumerate(hashes)}


@pytest.fixture
def udp(cluster: Cluster) -> Iterator[Udp]:
    client = Udp(cluster.udp)
    yield client
    client.close()


def torrents(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i}".encode().ljust(20, b".") for i in range(n)]


def peer_id(tag: str, i: int) -> bytes:
    return f"-SY0001-{tag}{i}".encode().ljust(20, b"_")[:20]


def converged(
    c: Cluster, udp: Udp, expect: dict[bytes, tuple[int, int, int]]
) -> dict[str, dict[bytes, tuple[int, int, int]]]:
    """Poll every worker and the sidecar until all report ``expect``; returns the last answers."""
    hashes = list(expect)
    latest: dict[str, dict[bytes, tuple[int, int, int]]] = {}
    deadline = time.monotonic() + CONVERGE_WITHIN
    while time.monotonic() < deadline:
        pid, answer = http_scrape(c, hashes)
        latest[pid] = answer
        latest["udp"] = udp.scrape(hashes)
        if all(latest.get(p) == expect for p in (*c.worker_pids, "udp")):
            return latest
    return latest


def eventually(ask: Callable[[], set[int]], want: set[int]) -> set[int]:
    """Ask until the answer is ``want`` (bounded); returns the last answer."""
    deadline = time.monotonic() + CONVERGE_WITHIN
    got = ask()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.02)
        got = ask()
    return got


def assert_converged(c: Cluster, udp: Udp, expect: dict[bytes, tuple[int, int, int]]) -> None:
    latest = converged(c, udp, expect)
    wrong = {who: got for who, got in latest.items() if got != expect}
    missing = {*c.worker_pids, "udp"} - set(latest)
    assert not wrong and not missing, f"not converged: wrong {wrong}, never asked {missing}"


# --- tests -------------------------------------------------------------------------------


def test_http_and_udp_announces_converge_on_every_worker_and_the_sidecar(
    cluster: Cluster, udp: Udp
) -> None:
    hashes = torrents("conv", 20)
    expect = {}
    for t, ih in enumerate(hashes):
        seeders = leechers = 0
        for i in range(10):
            seeder = (i + t) % 3 == 0
            left = 0 if seeder else 1000
            port = 10_000 + 100 * t + i
            if i < 6:
                http_announce(cluster, ih, peer_id("c", i), port, left, "started")
            else:
                udp.announce(ih, peer_id("c", i), port, left, event=2)
            seeders += seeder
            leechers += not seeder
        expect[ih] = (seeders, 0, leechers)
    assert_converged(cluster, udp, expect)

    http_ports = {10_000 + i for i in range(6)}
    udp_ports = {10_000 + i for i in range(6, 10)}
    _, got = http_announce(cluster, hashes[0], peer_id("probe-h", 0), 19_998, 1000)
    assert got == http_ports | udp_ports  # the UDP-only peers reach an HTTP leecher
    want = http_ports | udp_ports | {19_998}  # and the HTTP-only ones a UDP leecher
    got = eventually(lambda: udp.announce(hashes[0], peer_id("probe-u", 0), 19_999, 1000), want)
    assert got == want


def test_stopped_on_one_process_removes_the_peer_everywhere(cluster: Cluster, udp: Udp) -> None:
    (ih,) = torrents("stop", 1)
    for i in range(4):
        http_announce(cluster, ih, peer_id("s", i), 11_000 + i, 1000)
    udp.announce(ih, peer_id("s", 9), 11_009, 1000)
    assert_converged(cluster, udp, {ih: (0, 0, 5)})

    http_announce(cluster, ih, peer_id("s", 0), 11_000, 1000, "stopped")
    udp.announce(ih, peer_id("s", 9), 11_009, 1000, event=3)
    assert_converged(cluster, udp, {ih: (0, 0, 3)})
    for _ in range(2 * WORKERS):
        _, got = http_announce(cluster, ih, peer_id("s", 1), 11_001, 1000)
        assert got == {11_002, 11_003}
    assert udp.announce(ih, peer_id("s", 2), 11_002, 1000) == {11_001, 11_003}


def test_completions_spread_over_workers_and_udp_count_exactly_once(
    cluster: Cluster, udp: Udp
) -> None:
    (ih,) = torrents("done", 1)
    n = 24
    for i in range(n):
        if i % 3:
            http_announce(cluster, ih, peer_id("d", i), 12_000 + i, 1000, "started")
        else:
            udp.announce(ih, peer_id("d", i), 12_000 + i, 1000, event=2)
    for i in range(n):
        if i % 3:
            http_announce(cluster, ih, peer_id("d", i), 12_000 + i, 0, "completed")
        else:
            udp.announce(ih, peer_id("d", i), 12_000 + i, 0, event=1)
    assert_converged(cluster, udp, {ih: (n, n, 0)})
    # A repeated "completed" from a peer that is already a seeder counts nothing.
    http_announce(cluster, ih, peer_id("d", 1), 12_001, 0, "completed")
    udp.announce(ih, peer_id("d", 0), 12_000, 0, event=1)
    assert_converged(cluster, udp, {ih: (n, n, 0)})


def test_hub_refuses_a_client_of_another_protocol_version(cluster: Cluster) -> None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    try:
        client.connect(cluster.sync_socket)
        client.sendall(frames.encode(frames.Hello(frames.ROLE_TOOL, 4321, version=99)))
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    finally:
        client.close()
    assert frames.decode_all(received)[0] == frames.Hello(frames.ROLE_HUB, cluster.udp.proc.pid)
    deadline = time.monotonic() + CONVERGE_WITHIN
    while "speaks protocol version 99" not in cluster.udp.stderr():
        assert time.monotonic() < deadline, cluster.udp.stderr()
        time.sleep(0.05)
    assert f"pid 4321 (tool) speaks protocol version 99, this process speaks {frames.VERSION}" in (
        cluster.udp.stderr()
    )


def test_socket_is_private_to_the_tracker_user(cluster: Cluster) -> None:
    assert os.stat(cluster.sync_socket).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(cluster.sync_socket)).st_mode & 0o777 == 0o700


def test_replacement_worker_answers_its_first_request_with_the_full_list(
    cluster: Cluster, udp: Udp
) -> None:
    (ih,) = torrents("respawn", 1)
    for i in range(30):
        http_announce(cluster, ih, peer_id("r", i), 13_000 + i, 0)
    udp.announce(ih, peer_id("r", 99), 13_099, 0)
    assert_converged(cluster, udp, {ih: (31, 0, 0)})
    everyone = {13_000 + i for i in range(30)} | {13_099}

    victim = sorted(cluster.worker_pids)[0]
    os.kill(int(victim), signal.SIGKILL)
    old = cluster.worker_pids - {victim}
    first_answers: dict[str, set[int]] = {}
    deadline = time.monotonic() + 30
    while not first_answers and time.monotonic() < deadline:
        try:
            pid, got = http_announce(cluster, ih, peer_id("r-probe", 0), 13_500, 1000)
        except (OSError, http.client.HTTPException):
            continue  # the connection may have gone to the killed worker
        if pid not in old and pid != victim:
            first_answers[pid] = got
        else:
            time.sleep(0.02)
    assert first_answers, "no replacement worker answered"
    (new_pid, got) = next(iter(first_answers.items()))
    assert got == everyone
    cluster.worker_pids = old | {new_pid}


def test_sidecar_killed_http_keeps_full_lists_restarted_hub_rebuilds(
    cluster: Cluster, udp: Udp
) -> None:
    (ih,) = torrents("restart", 1)
    for i in range(8):
        http_announce(cluster, ih, peer_id("k", i), 14_000 + i, 1000)
    for i in range(8, 12):
        udp.announce(ih, peer_id("k", i), 14_000 + i, 1000)
    http_announce(cluster, ih, peer_id("k", 0), 14_000, 0, "completed")
    http_announce(cluster, ih, peer_id("k", 1), 14_001, 0, "completed")
    udp.announce(ih, peer_id("k", 8), 14_008, 0, event=1)
    assert_converged(cluster, udp, {ih: (3, 3, 9)})
    everyone = {14_000 + i for i in range(12)}

    cluster.udp.proc.send_signal(signal.SIGKILL)
    cluster.udp.proc.wait(10)
    for _ in range(3 * WORKERS):  # every worker, still with the UDP-only peers
        _, got = http_announce(cluster, ih, peer_id("k-probe", 0), 14_500, 1000)
        assert got == everyone
    # A peer and a download that arrive while the hub is down reach the others later.
    http_announce(cluster, ih, peer_id("k", 20), 14_020, 1000)
    http_announce(cluster, ih, peer_id("k", 2), 14_002, 0, "completed")

    cluster.udp = cluster.stack.enter_context(
        sidecar(port=cluster.udp.port, sync_socket=cluster.sync_socket)
    )
    want = everyone | {14_020, 14_500}
    got = eventually(lambda: udp.announce(ih, peer_id("k-udp-probe", 0), 14_600, 1000), want)
    assert got == want
    # 15 peers, the hub's lost download counts rebuilt from the workers' replicas.
    assert_converged(cluster, udp, {ih: (4, 4, 11)})


# --- wsgi-tracker serve: both processes, one socket ----------------------------------------


def test_serve_starts_sidecar_and_gunicorn_on_one_socket_and_stops_both(tmp_path: Path) -> None:
    sock = tmp_path / "hub" / "sync.sock"
    with serve(tmp_path) as s:
        c = Cluster(s.http, s.udp, str(sock), None)  # type: ignore[arg-type]
        udp = Udp(c.udp)
        try:
            (ih,) = torrents("serve", 1)
            http_announce(c, ih, peer_id("v", 0), 15_000, 0)
            got = eventually(lambda: udp.announce(ih, peer_id("v", 1), 15_001, 1000), {15_000})
            assert got == {15_000}, s.log()
        finally:
            udp.close()
        kids = children(s.proc.pid)
        assert len(kids) == 2  # udp-sidecar and the gunicorn master
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0
        assert not any(alive(pid) for pid in kids)
        assert not sock.exists()  # the hub took its socket away
        assert "sees only part of every swarm" not in s.log()


# --- other ways to run the workers ---------------------------------------------------------


def test_threaded_workers_sync_through_the_hub(tmp_path: Path) -> None:
    """The same client on real threads (gunicorn's gthread worker, no gevent)."""
    sock = str(tmp_path / "hub" / "sync.sock")
    with (
        sidecar(sync_socket=sock) as udp_server,
        gunicorn(
            "tests.sync_pid_app:app",
            workers=2,
            worker_class="gthread",
            env={"WSGI_TRACKER_SYNC_SOCKET": sock},
            extra_args=["--threads", "4"],
        ) as http_server,
    ):
        c = Cluster(http_server, udp_server, sock, contextlib.ExitStack())
        pids: set[str] = set()
        deadline = time.monotonic() + CONVERGE_WITHIN
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(get(c, scrape_url(c.http.url + "/scrape", b"\0" * 20))[0])
        c.worker_pids = pids
        udp = Udp(udp_server)
        try:
            (ih,) = torrents("threads", 1)
            for i in range(12):
                http_announce(c, ih, peer_id("t", i), 16_000 + i, 0 if i < 4 else 1000)
            udp.announce(ih, peer_id("t", 12), 16_012, 1000)
            assert_converged(c, udp, {ih: (4, 0, 9)})
        finally:
            udp.close()


def test_several_workers_without_a_hub_warn_at_start_up(tmp_path: Path) -> None:
    missing = str(tmp_path / "nobody" / "sync.sock")
    with gunicorn(workers=2, env={"WSGI_TRACKER_SYNC_SOCKET": missing}) as server:
        deadline = time.monotonic() + CONVERGE_WITHIN
        while server.stderr().count("sees only part of every swarm") < 2:
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.05)
        assert f"no sync hub answers at {missing}" in server.stderr()


def test_one_worker_without_a_hub_does_not_warn(tmp_path: Path) -> None:
    missing = str(tmp_path / "nobody" / "sync.sock")
    with gunicorn(workers=1, env={"WSGI_TRACKER_SYNC_SOCKET": missing}) as server:
        assert http_get(server.url + "/scrape")[0] == 200
        assert "sees only part of every swarm" not in server.stderr()


def test_socket_in_another_users_directory_is_refused_by_hub_and_client(tmp_path: Path) -> None:
    from wsgi_tracker.sync.hub import HubError, listen_unix
    from wsgi_tracker.sync.socket_path import UnsafeSocketPath, check_private

    if os.getuid() != 0:
        pytest.skip("handing a directory to another user needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    path = str(theirs / "sync.sock")
    with pytest.raises(HubError, match="belongs to uid 65534"):
        listen_unix(path)
    with pytest.raises(UnsafeSocketPath, match="another user could replace the sync socket"):
        check_private(path)
    assert not os.path.exists(path)
