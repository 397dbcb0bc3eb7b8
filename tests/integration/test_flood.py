"""Floods stay within the configured limits, and the swarms already there keep working.

Real processes with small limits (``max_torrents`` 500, ``max_peers_per_torrent``
40): udp-sidecar as the hub and one gunicorn worker joined to it, so every
flooded announce lands in two replicas. The policy under test
(docs/HARDENING.md says why):

* unique info_hashes: past ``max_torrents`` the stalest torrent is evicted
  (least recently announced), so torrents in use stay and abandoned ones go;
* unique peers into one torrent: past ``max_peers_per_torrent`` a new peer is
  refused ("swarm is full"), while peers already in it re-announce as usual.

Memory is read from /proc/PID/status (VmRSS) of both processes; torrent counts
from a full scrape. Every loop is bounded by a count; no assertion is on speed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import secrets
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

import bencodepy
import pytest
from servers import Server, gunicorn, sidecar, udp_scrape

from udp_sidecar.protocol import build_announce_request

pytestmark = pytest.mark.integration

MAX_TORRENTS = 500
MAX_PEERS = 40
FLOOD_ROUNDS = 4
FLOOD_PER_ROUND = 2000  # unique torrents per round, half over HTTP, half over UDP
REFRESH_EVERY = 100  # the earlier swarms announce once per this many flood requests
# RSS may grow while the replicas fill up to their limits (round 1) and the
# allocator settles; after that a bounded store must not grow with the flood.
SETTLED_GROWTH_KB = 4096
WITHIN = 15.0
PROTOCOL_ID = 0x41727101980
LOOPBACK = socket.inet_aton("127.0.0.1")
KEEP = [f"keep-{i}".encode().ljust(20, b".") for i in range(3)]  # the earlier swarms


def enc(raw: bytes) -> str:
    return quote_from_bytes(raw, safe="")


@dataclass
class Tracker:
    http: Server
    udp: Server
    conn: http.client.HTTPConnection  # one keep-alive connection for the HTTP flood
    sock: socket.socket
    cid: bytes = b""

    def worker_pid(self) -> int:
        """The one gunicorn worker: the master's child, found in /proc."""
        master = str(self.http.proc.pid)
        kids = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, AttributeError):
                if entry.name.isdigit():
                    stat = (entry / "status").read_text()
                    if re.search(r"^PPid:\s+(\d+)$", stat, re.M).group(1) == master:
                        kids.append(int(entry.name))
        (pid,) = kids
        return pid


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracker]:
    sync = str(tmp_path_factory.mktemp("flood") / "hub" / "sync.sock")
    env = {
        "WSGI_TRACKER_MAX_TORRENTS": str(MAX_TORRENTS),
        "WSGI_TRACKER_MAX_PEERS_PER_TORRENT": str(MAX_PEERS),
        "WSGI_TRACKER_FULL_SCRAPE": "1",
        "WSGI_TRACKER_SYNC_SOCKET": sync,
    }
    with (
        sidecar(sync_socket=sync, env=env) as udp,
        gunicorn(workers=1, env=env) as http,
        contextlib.closing(http_client(http)) as conn,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.settimeout(5)
        sock.connect((udp.host, udp.port))
        t = Tracker(http, udp, conn, sock)
        for n, ih in enumerate(KEEP):  # earlier swarms: two seeders (counted) and a leecher
            http_announce(t, ih, peer(f"k{n}s", 0), 9000, 0, "completed")
            udp_announce(t, ih, peer(f"k{n}s", 1), 9001, 0, 1)
            http_announce(t, ih, peer(f"k{n}l", 2), 9002, 50, "started")
        yield t


def http_client(server: Server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(server.host, server.port, timeout=10)


def peer(tag: str, n: int) -> bytes:
    return f"-FL0001-{tag}-{n}".encode().ljust(20, b"_")[:20]


def http_get(t: Tracker, target: str) -> dict:
    for attempt in range(2):  # a kept-alive connection the server closed: open a new one
        try:
            t.conn.request("GET", target)
            response = t.conn.getresponse()
            return bencodepy.decode(response.read())
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            t.conn.close()
            if attempt:
                raise
    raise AssertionError("unreachable")


def http_announce(t: Tracker, ih: bytes, pid: bytes, port: int, left: int, event: str = ""):
    target = (
        f"/announce?info_hash={enc(ih)}&peer_id={enc(pid)}&port={port}&left={left}"
        f"&numwant=200{'&event=' + event if event else ''}"
    )
    return http_get(t, target)


def udp_request(t: Tracker, packet: bytes) -> bytes:
    t.sock.send(packet)
    for _ in range(100):  # skip stale replies; the transaction id says which is ours
        reply = t.sock.recv(4096)
        if reply[4:8] == packet[12:16]:
            return reply
    raise AssertionError("no reply with our transaction id")


def udp_announce(t: Tracker, ih: bytes, pid: bytes, port: int, left: int, event: int = 0):
    if not t.cid:
        tid = secrets.randbits(32)
        t.sock.send(struct.pack(">QII", PROTOCOL_ID, 0, tid))
        t.cid = t.sock.recv(64)[8:16]
    tid = secrets.randbits(32)
    packet = build_announce_request(t.cid, tid, ih, pid, port, left=left, event=event, num_want=200)
    reply = udp_request(t, packet)
    action = struct.unpack_from(">I", reply)[0]
    if action == 3 and b"connection id" in reply:  # it aged out: connect again
        t.cid = b""
        return udp_announce(t, ih, pid, port, left, event)
    return reply


def full_scrape(t: Tracker) -> dict[bytes, tuple[int, int, int]]:
    files = http_get(t, "/scrape")[b"files"]
    return {h: (f[b"complete"], f[b"downloaded"], f[b"incomplete"]) for h, f in files.items()}


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def ports(compact: bytes) -> set[int]:
    return {
        int.from_bytes(compact[i + 4 : i + 6], "big")
        for i in range(0, len(compact), 6)
        if compact[i : i + 4] == LOOPBACK
    }


def refresh_earlier_swarms(t: Tracker, n: int) -> None:
    """The earlier swarms go on announcing as their clients do, over both protocols."""
    for k, ih in enumerate(KEEP):
        if n % 2:
            http_announce(t, ih, peer(f"k{k}l", 2), 9002, 50)
        else:
            udp_announce(t, ih, peer(f"k{k}s", 1), 9001, 0)


def sync_barrier(t: Tracker) -> None:
    """Wait until each replica has applied everything the other was sent before now.

    Each replica evicts on its own, in the order changes reach it; a replica
    lagging by more than max_torrents flood announces would evict a swarm that
    announced meanwhile. Sync is in order, so a fresh marker torrent seen on the
    far side means all before it arrived. (A real swarm announces every
    ``interval``, minutes, not every hundred requests: this only keeps the test
    about the policy rather than about sync lag on a busy machine.)
    """
    to_worker, to_hub = b"mark-u" + os.urandom(14), b"mark-h" + os.urandom(14)
    udp_announce(t, to_worker, peer("mark", 0), 9999, 0)
    http_announce(t, to_hub, peer("mark", 0), 9999, 0)
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        seen_by_worker = http_get(t, f"/scrape?info_hash={enc(to_worker)}")[b"files"]
        if (
            seen_by_worker[to_worker][b"complete"]
            and udp_scrape(t.udp.host, t.udp.port, to_hub)[0][0]
        ):
            return
        time.sleep(0.01)
    raise AssertionError("sync did not catch up within the bound")


def assert_earlier_swarms_answer(t: Tracker) -> None:
    for k, ih in enumerate(KEEP):
        reply = http_announce(t, ih, peer(f"k{k}l", 2), 9002, 50)
        assert (reply[b"complete"], reply[b"incomplete"]) == (2, 1), reply
        assert ports(reply[b"peers"]) == {9000, 9001}
        assert udp_scrape(t.udp.host, t.udp.port, ih) == [(2, 2, 1)]


# --- the tests ----------------------------------------------------------------------------


def test_torrent_flood_evicts_the_stalest_and_memory_stays_bounded(tracker):
    t = tracker
    pids = {"worker": t.worker_pid(), "sidecar": t.udp.proc.pid}
    start = {name: rss_kb(pid) for name, pid in pids.items()}
    after_round: list[dict[str, int]] = []
    sent = 0
    for _round in range(FLOOD_ROUNDS):
        for n in range(FLOOD_PER_ROUND):
            ih, pid = os.urandom(20), os.urandom(20)
            if n % 2:
                reply = http_announce(t, ih, pid, 6881, 0)
                assert b"failure reason" not in reply
            else:
                assert struct.unpack_from(">I", udp_announce(t, ih, pid, 6881, 0))[0] == 1
            sent += 1
            if sent % REFRESH_EVERY == 0:
                sync_barrier(t)
                refresh_earlier_swarms(t, sent // REFRESH_EVERY)
        sync_barrier(t)
        after_round.append({name: rss_kb(pid) for name, pid in pids.items()})
        assert len(full_scrape(t)) <= MAX_TORRENTS
        assert_earlier_swarms_answer(t)
    held = full_scrape(t)
    assert len(held) == MAX_TORRENTS  # full, and no fuller
    assert all(ih in held for ih in KEEP)
    for name in pids:
        growth = after_round[-1][name] - after_round[0][name]
        assert growth <= SETTLED_GROWTH_KB, (
            f"{name} RSS grew {growth} kB over {FLOOD_ROUNDS - 1} more rounds of "
            f"{FLOOD_PER_ROUND} new torrents (start {start[name]} kB, rounds {after_round})"
        )


def test_peer_flood_fills_one_swarm_then_refuses_new_peers_only(tracker):
    """HTTP fills the swarm (the worker decides); once the hub has it, UDP is refused too.

    Each replica enforces the limit itself, so the two floods run one after the
    other: concurrent floods through two processes could each admit the last
    slot (HARDENING.md, "limits are per replica").
    """
    t = tracker
    ih = b"one-big-swarm".ljust(20, b".")
    admitted: list[bytes] = []
    refused = 0
    for n in range(10 * MAX_PEERS):  # unique peers over HTTP
        reply = http_announce(t, ih, peer("pf", n), 10000 + n, 100)
        if b"failure reason" in reply:
            assert list(reply) == [b"failure reason"]
            assert reply[b"failure reason"].startswith(b"swarm is full")
            refused += 1
        else:
            admitted.append(peer("pf", n))
    assert (len(admitted), refused) == (MAX_PEERS, 9 * MAX_PEERS)
    assert converged_udp_scrape(t, ih, (0, 0, MAX_PEERS)) == (0, 0, MAX_PEERS)
    for n in range(5 * MAX_PEERS):  # ...and unique peers over UDP
        reply = udp_announce(t, ih, peer("pu", n), 11000 + n, 100)
        assert struct.unpack_from(">I", reply)[0] == 3, "a peer got into a full swarm"
        assert reply[8:].startswith(b"swarm is full")
    assert full_scrape(t)[ih] == (0, 0, MAX_PEERS)
    # Peers already in it keep announcing, over either protocol, and get the swarm back.
    reply = http_announce(t, ih, admitted[0], 10000, 100)
    assert reply[b"incomplete"] == MAX_PEERS and len(reply[b"peers"]) == 6 * (MAX_PEERS - 1)
    reply = udp_announce(t, ih, admitted[2], 10002, 100)
    action, _tid, _interval, leechers, _seeders = struct.unpack_from(">IIIII", reply)
    assert (action, leechers) == (1, MAX_PEERS)
    assert len(reply) == 20 + 6 * (MAX_PEERS - 1)
    # One leaves: exactly one newcomer fits again.
    http_announce(t, ih, admitted[1], 10001, 100, "stopped")
    assert b"failure reason" not in http_announce(t, ih, peer("late", 0), 12000, 100)
    late = http_announce(t, ih, peer("late", 1), 12001, 100)
    assert late[b"failure reason"].startswith(b"swarm is full")
    assert_earlier_swarms_answer(t)


def converged_udp_scrape(t: Tracker, ih: bytes, want: tuple[int, int, int]) -> tuple:
    """The sidecar's counts for ``ih`` once they are ``want`` (a bounded wait for sync)."""
    deadline = time.monotonic() + WITHIN
    got = udp_scrape(t.udp.host, t.udp.port, ih)[0]
    while got != want and time.monotonic() < deadline:
        time.sleep(0.02)
        got = udp_scrape(t.udp.host, t.udp.port, ih)[0]
    return got
