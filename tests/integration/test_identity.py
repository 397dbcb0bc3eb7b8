"""Nobody moves, stops or changes another's peer; one address cannot fill a swarm.

The whole tracker as an operator runs it (``wsgi-tracker serve``: two gunicorn
workers and udp-sidecar, sync on). The victim announces from 127.0.0.1; the
attacker plays another host from 127.0.0.2 or 127.0.0.3 (any 127/8 address can
be bound as a source) and reaches *another process* than the victim's wherever
the protocols allow: a worker the victim did not use, or the sidecar (UDP
against UDP is the sidecar both times). Each attack is made only once
the attacker's process has the victim (sync has carried it there), so the
refusal is that replica's own, from the key and address sync delivered.
"""

from __future__ import annotations

import http.client
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import bencodepy
import pytest
from servers import Serve, announce_url, scrape_url, serve

from wsgi_tracker.config import TrackerConfig

WAIT = 30.0  # a bound on every wait for sync, not a figure under test
VICTIM, ATTACKER, OTHER = "127.0.0.1", "127.0.0.2", "127.0.0.3"
PER_ADDRESS = TrackerConfig().max_peers_per_address  # the shipped default is what is proved


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("identity")
    env = {"WSGI_TRACKER_MAX_PEERS_PER_ADDRESS": str(PER_ADDRESS)}
    with serve(tmp, workers=2, app="tests.sync_pid_app:app", env=env) as s:
        yield s


def torrent() -> bytes:
    return secrets.token_bytes(20)


def peer_id(tag: bytes) -> bytes:
    return (b"-ID0001-" + tag + secrets.token_bytes(12))[:20]


# --- clients that choose their source address ---------------------------------------------


def http_announce(
    stack: Serve, source: str, ih: bytes, pid: bytes, port: int, **extra: object
) -> tuple[str, dict]:
    """(worker pid, decoded reply) of one announce from ``source`` on a fresh connection."""
    url = announce_url(stack.http.url + "/announce", ih, pid, port, 1, compact=1, **extra)
    return _get(stack, source, url)


def http_scrape(stack: Serve, ih: bytes) -> tuple[str, tuple[int, int]]:
    """(worker pid, (seeders, leechers)) of ``ih`` as one worker sees it."""
    pid, body = _get(stack, VICTIM, scrape_url(stack.http.url + "/scrape", ih))
    entry = body[b"files"][ih]
    return pid, (entry[b"complete"], entry[b"incomplete"])


def _get(stack: Serve, source: str, url: str) -> tuple[str, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=10, source_address=(source, 0)
    )
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        return response.getheader("X-Worker-Pid") or "", bencodepy.decode(response.read())
    finally:
        conn.close()


def on_other_worker(
    stack: Serve, not_pid: str, call: Callable[[], tuple[str, dict]]
) -> tuple[str, dict]:
    """Repeat ``call`` (a request on a fresh connection) until another worker answers it.

    Only for requests that are refused (they change nothing) or idempotent.
    """
    deadline = time.monotonic() + WAIT
    while True:
        pid, body = call()
        if pid != not_pid:
            return pid, body
        assert time.monotonic() < deadline, "the other worker never answered"


class Udp:
    """A BEP 15 client bound to ``source``."""

    def __init__(self, stack: Serve, source: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(5)
        self.sock.connect((stack.udp.host, stack.udp.port))
        tid = secrets.randbits(32)
        self.sock.send(struct.pack("!QII", 0x41727101980, 0, tid))
        action, got, self.cid = struct.unpack("!IIQ", self.sock.recv(2048)[:16])
        assert (action, got) == (0, tid)

    def close(self) -> None:
        self.sock.close()

    def announce(
        self, ih: bytes, pid: bytes, port: int, *, event: int = 0, key: int = 0
    ) -> tuple[int, bytes]:
        """(action, the rest): 1 and the compact peers, or 3 and the error message."""
        tid = secrets.randbits(32)
        packet = struct.pack(
            "!QII20s20sqqqIIIiH", self.cid, 1, tid, ih, pid, 0, 1, 0, event, 0, key, 200, port
        )
        self.sock.send(packet)
        reply = self.sock.recv(4096)
        action, got = struct.unpack("!II", reply[:8])
        assert got == tid
        return action, reply[20:] if action == 1 else reply[8:]

    def scrape(self, ih: bytes) -> tuple[int, int]:
        """(seeders, leechers) as the sidecar sees them."""
        tid = secrets.randbits(32)
        self.sock.send(struct.pack("!QII", self.cid, 2, tid) + ih)
        reply = self.sock.recv(2048)
        seeders, _, leechers = struct.unpack("!III", reply[8:20])
        return seeders, leechers


@pytest.fixture
def udp(stack: Serve) -> Iterator[Callable[[str], Udp]]:
    opened: list[Udp] = []

    def open_from(source: str) -> Udp:
        opened.append(Udp(stack, source))
        return opened[-1]

    yield open_from
    for client in opened:
        client.close()


def endpoints(compact: bytes) -> set[tuple[str, int]]:
    return {
        (socket.inet_ntoa(compact[i : i + 4]), int.from_bytes(compact[i + 4 : i + 6], "big"))
        for i in range(0, len(compact), 6)
    }


# --- what every process holds ---------------------------------------------------------------


def seen_everywhere(
    stack: Serve, observer: Udp, ih: bytes, want: set[tuple[str, int]], workers: set[str]
) -> None:
    """Wait until the sidecar and both workers hand out exactly ``want`` for ``ih``.

    The observer is a leecher of its own from 127.0.0.3 that announces over UDP
    and over HTTP (until both workers have answered); a peer is never handed
    itself, so ``want`` leaves it out.
    """
    me = b"-OBS001-" + ih[:12]  # one observer per torrent, however often it looks
    deadline = time.monotonic() + WAIT
    got_udp: set[tuple[str, int]] = set()
    got_http: dict[str, set[tuple[str, int]]] = {}
    while time.monotonic() < deadline:
        action, peers = observer.announce(ih, me, 9)
        assert action == 1, peers
        got_udp = endpoints(peers)
        pid, body = http_announce(stack, OTHER, ih, me, 9)
        assert b"failure reason" not in body, body
        got_http[pid] = endpoints(body.get(b"peers", b""))
        if (
            got_udp == want
            and set(got_http) >= workers
            and all(got_http[w] == want for w in workers)
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"sidecar has {got_udp}, workers have {got_http}; want {want}")


def worker_pids(stack: Serve) -> set[str]:
    pids: set[str] = set()
    deadline = time.monotonic() + WAIT
    while len(pids) < 2:
        assert time.monotonic() < deadline, f"only workers {pids} answered"
        pids.add(http_scrape(stack, b"\0" * 20)[0])
    return pids


def failure(body: dict) -> str:
    assert b"failure reason" in body, body
    assert b"peers" not in body, "a refusal never carries a peer list"
    return body[b"failure reason"].decode()


# --- peer identity ----------------------------------------------------------------------------


@pytest.mark.parametrize("victim_over", ["http", "udp"])
@pytest.mark.parametrize("attacker_over", ["http", "udp"])
def test_peer_cannot_be_moved_from_another_address(
    stack: Serve, udp: Callable[[str], Udp], victim_over: str, attacker_over: str
) -> None:
    workers = worker_pids(stack)
    ih, victim, key = torrent(), peer_id(b"v"), secrets.randbits(31) + 1
    if victim_over == "http":
        victim_pid, body = http_announce(stack, VICTIM, ih, victim, 6001, key=f"{key:08X}")
        assert b"failure reason" not in body, body
    else:
        victim_pid = "sidecar"
        assert udp(VICTIM).announce(ih, victim, 6001, key=key)[0] == 1
    observer = udp(OTHER)
    seen_everywhere(stack, observer, ih, {(VICTIM, 6001)}, workers)

    # Re-announce the victim's peer_id from another host, with no key and a wrong one.
    if attacker_over == "http":
        for wrong in ({}, {"key": f"{key + 1:08X}"}, {"key": "not-the-key"}):
            pid, body = on_other_worker(
                stack,
                victim_pid,
                lambda wrong=wrong: http_announce(stack, ATTACKER, ih, victim, 6666, **wrong),
            )
            assert pid != victim_pid
            assert "peer_id is in use from another address" in failure(body)
    else:
        attacker = udp(ATTACKER)
        for wrong in (0, key + 1):
            action, message = attacker.announce(ih, victim, 6666, key=wrong)
            assert action == 3
            assert b"peer_id is in use from another address" in message
    # ...and the two-step hijack of the issue: the move failed, so a stop from there fails.
    attacker = udp(ATTACKER)
    action, message = attacker.announce(ih, victim, 6666, event=3)
    assert (action, b"only the peer itself may stop it" in message) == (3, True)
    seen_everywhere(stack, observer, ih, {(VICTIM, 6001)}, workers)


def test_peer_cannot_be_stopped_from_another_address(
    stack: Serve, udp: Callable[[str], Udp]
) -> None:
    workers = worker_pids(stack)
    ih, key = torrent(), secrets.randbits(31) + 1
    victims = [peer_id(b"s%d" % n) for n in range(3)]
    pids = set()
    for n, victim in enumerate(victims):
        pid, body = http_announce(stack, VICTIM, ih, victim, 7000 + n, key=f"{key + n:08X}")
        assert b"failure reason" not in body, body
        pids.add(pid)
    observer = udp(OTHER)
    want = {(VICTIM, 7000 + n) for n in range(3)}
    seen_everywhere(stack, observer, ih, want, workers)

    for source in (ATTACKER, OTHER):
        for victim in victims:  # over HTTP, whichever worker answers: all hold the victims
            _, body = http_announce(stack, source, ih, victim, 7000, event="stopped")
            assert "only the peer itself may stop it" in failure(body)
            action, message = udp(source).announce(ih, victim, 7000, event=3)
            assert action == 3 and b"only the peer itself may stop it" in message
    seen_everywhere(stack, observer, ih, want, workers)
    assert observer.scrape(ih) == (0, 4)  # the three victims and the observer


def test_peer_moves_with_its_key(stack: Serve, udp: Callable[[str], Udp]) -> None:
    """A client whose address changed (a new DHCP lease, a VPN) proves itself with its key."""
    workers = worker_pids(stack)
    ih, victim, key = torrent(), peer_id(b"m"), secrets.randbits(31) + 1
    first, body = http_announce(stack, VICTIM, ih, victim, 8001, key=f"{key:08X}")
    assert b"failure reason" not in body, body
    observer = udp(OTHER)
    seen_everywhere(stack, observer, ih, {(VICTIM, 8001)}, workers)

    _, body = on_other_worker(
        stack, first, lambda: http_announce(stack, ATTACKER, ih, victim, 8002, key=f"{key:08X}")
    )
    assert b"failure reason" not in body, body
    seen_everywhere(stack, observer, ih, {(ATTACKER, 8002)}, workers)

    # Over UDP the same key is the number the HTTP key's eight hex digits spell.
    client = udp(OTHER)
    assert client.announce(ih, victim, 8003, key=key)[0] == 1
    seen_everywhere(stack, observer, ih, {(OTHER, 8003)}, workers)
    assert client.announce(ih, victim, 8003, key=key, event=3)[0] == 1
    seen_everywhere(stack, observer, ih, set(), workers)


# --- abuse bounds ---------------------------------------------------------------------------


def test_one_address_cannot_fill_a_swarm(stack: Serve, udp: Callable[[str], Udp]) -> None:
    workers = worker_pids(stack)
    ih = torrent()
    flood = udp(ATTACKER)
    mine = {(ATTACKER, 10_000 + n) for n in range(PER_ADDRESS)}
    for n in range(PER_ADDRESS):  # a household's worth, half over each protocol
        if n % 2:
            assert flood.announce(ih, peer_id(b"f%d" % n), 10_000 + n)[0] == 1
        else:
            _, body = http_announce(stack, ATTACKER, ih, peer_id(b"f%d" % n), 10_000 + n)
            assert b"failure reason" not in body, body
    observer = udp(OTHER)
    seen_everywhere(stack, observer, ih, mine, workers)

    for n in range(PER_ADDRESS, PER_ADDRESS + 40):
        action, message = flood.announce(ih, peer_id(b"f%d" % n), 10_000 + n)
        assert action == 3 and message.startswith(b"too many peers from your address"), message
        _, body = http_announce(stack, ATTACKER, ih, peer_id(b"g%d" % n), 10_000 + n)
        assert failure(body).startswith("too many peers from your address")
    # Another host still joins, and every process holds the capped swarm and no more.
    action, _ = udp(VICTIM).announce(ih, peer_id(b"real"), 6881)
    assert action == 1
    seen_everywhere(stack, observer, ih, mine | {(VICTIM, 6881)}, workers)


def test_stack_logs_no_tracebacks(stack: Serve) -> None:
    assert "Traceback" not in stack.log(), stack.log()[-4000:]
