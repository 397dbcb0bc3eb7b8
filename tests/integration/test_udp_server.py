"""udp-sidecar end to end: the datagram handler on a real core, then a real process on loopback.

The first part drives ``DatagramHandler`` (no sockets, a hand-driven clock);
the second runs ``python -m udp_sidecar`` on 127.0.0.1 and ::1 and talks
BEP 15 to it over real UDP sockets. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ManualClock
from hypothesis import given
from hypothesis import strategies as st
from servers import REPO_ROOT, free_port, has_ipv6_loopback, sidecar

from udp_sidecar.connection_ids import ConnectionIds
from udp_sidecar.protocol import (
    MAX_PEERS_IPV4,
    MAX_PEERS_IPV6,
    MAX_SCRAPE_IPV4,
    PROTOCOL_ID,
    build_announce_request,
)
from udp_sidecar.server import DatagramHandler
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import PeerChange

KEY = bytes(range(32))
V4 = ("127.0.0.1", 40000)
V6 = ("::1", 40000, 0, 0)


# --- packets (from the BEP 15 tables, independent of the code under test) -----------------


def connect_packet(tid: int) -> bytes:
    return struct.pack(">QII", PROTOCOL_ID, 0, tid)


def announce_packet(
    cid: bytes,
    tid: int,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    *,
    left: int = 100,
    event: int = 0,
    num_want: int = -1,
    ip: int = 0,
    options: bytes = b"",
) -> bytes:
    return build_announce_request(
        cid, tid, info_hash, peer_id, port, left=left, event=event, num_want=num_want, ip=ip,
        options=options,
    )  # fmt: skip


def scrape_packet(cid: bytes, tid: int, *hashes: bytes) -> bytes:
    return struct.pack(">8sII", cid, 2, tid) + b"".join(hashes)


@dataclass
class AnnounceReply:
    interval: int
    leechers: int
    seeders: int
    peers: list[bytes]


def read_announce(reply: bytes, tid: int, width: int) -> AnnounceReply:
    action, got_tid, interval, leechers, seeders = struct.unpack_from(">IIIII", reply)
    assert (action, got_tid) == (1, tid), reply
    body = reply[20:]
    assert len(body) % width == 0
    return AnnounceReply(
        interval, leechers, seeders, [body[i : i + width] for i in range(0, len(body), width)]
    )


def read_scrape(reply: bytes, tid: int) -> list[tuple[int, int, int]]:
    assert struct.unpack_from(">II", reply) == (2, tid), reply
    return [struct.unpack_from(">III", reply, off) for off in range(8, len(reply), 12)]


def read_error(reply: bytes, tid: int) -> str:
    assert struct.unpack_from(">II", reply) == (3, tid), reply
    return reply[8:].decode()


def ih(n: int) -> bytes:
    return n.to_bytes(20, "big")


def pid(n: int) -> bytes:
    return b"-TS0001-" + n.to_bytes(12, "big")


def v4_entry(ip: str, port: int) -> bytes:
    return socket.inet_pton(socket.AF_INET, ip) + port.to_bytes(2, "big")


def v6_entry(ip: str, port: int) -> bytes:
    return socket.inet_pton(socket.AF_INET6, ip) + port.to_bytes(2, "big")


# --- the handler on a real core ------------------------------------------------------------


@pytest.fixture
def core(clock) -> TrackerCore:
    return TrackerCore(TrackerConfig(interval_jitter=0), clock=clock)


def handlers(core: TrackerCore, clock) -> tuple[DatagramHandler, DatagramHandler]:
    ids = ConnectionIds(KEY, core.config.connection_id_ttl)
    return DatagramHandler(core, ids, False, clock), DatagramHandler(core, ids, True, clock)


def connected(handler: DatagramHandler, addr: tuple) -> bytes:
    reply = handler.handle(connect_packet(1), addr)
    assert reply is not None and len(reply) == 16
    return reply[8:]


def test_connection_id_serves_every_port_of_its_address(core, clock):
    # libtorrent keeps one id per tracker and may send from any of its sockets.
    v4, _ = handlers(core, clock)
    cid = connected(v4, ("127.0.0.1", 1111))
    reply = v4.handle(announce_packet(cid, 2, ih(1), pid(1), 6881), ("127.0.0.1", 2222))
    assert read_announce(reply, 2, 6).leechers == 1


def test_connect_then_announce_gets_peers_of_the_socket_family(core, clock):
    v4, v6 = handlers(core, clock)
    for n in range(3):
        addr = (f"127.0.0.{n + 1}", 5000 + n)
        cid = connected(v4, addr)
        v4.handle(announce_packet(cid, 2, ih(1), pid(n), 6881 + n, left=0), addr)
    addr6 = ("2001:db8::1", 5000, 0, 0)
    cid6 = connected(v6, addr6)
    got = read_announce(v6.handle(announce_packet(cid6, 3, ih(1), pid(9), 7000), addr6), 3, 18)
    assert (got.seeders, got.leechers, got.peers) == (3, 1, [])  # no IPv4 peer in a v6 reply
    cid = connected(v4, V4)
    got = read_announce(v4.handle(announce_packet(cid, 4, ih(1), pid(8), 7001), V4), 4, 6)
    assert sorted(got.peers) == sorted(v4_entry(f"127.0.0.{n + 1}", 6881 + n) for n in range(3))
    assert (got.interval, got.seeders, got.leechers) == (1800, 3, 2)


def test_wrong_connection_id_gets_a_short_error_and_no_peers(core, clock):
    v4, _ = handlers(core, clock)
    cid = connected(v4, V4)
    v4.handle(announce_packet(cid, 2, ih(1), pid(1), 6881, left=0), V4)
    other = ("127.0.0.9", 40000)
    for bad in (b"\x00" * 8, cid, PROTOCOL_ID.to_bytes(8, "big")):  # cid belongs to V4
        packet = announce_packet(bad, 5, ih(1), pid(2), 6882)
        reply = v4.handle(packet, other)
        assert "connection id" in read_error(reply, 5)
        assert len(reply) <= len(packet)
    assert core.store.scrape(ih(1)) == (1, 0, 0)  # nothing was stored for the refused peer
    assert core.counters.errors[("udp", "connection_id")] == 3


def test_connection_id_expires_after_its_lifetime(core, clock):
    v4, _ = handlers(core, clock)
    cid = connected(v4, V4)
    clock.advance(core.config.connection_id_ttl - 1)
    assert len(v4.handle(announce_packet(cid, 2, ih(1), pid(1), 6881), V4)) == 20
    clock.advance(core.config.connection_id_ttl)
    assert "connection id" in read_error(v4.handle(scrape_packet(cid, 3, ih(1)), V4), 3)


def test_malformed_request_from_an_unproven_sender_gets_no_more_bytes_than_it_sent(core, clock):
    v4, _ = handlers(core, clock)
    for packet in (
        scrape_packet(b"\x00" * 8, 7),  # zero hashes: 16 bytes in
        struct.pack(">8sII", b"\x00" * 8, 9, 7),  # unknown action
        announce_packet(b"\x00" * 8, 7, ih(1), pid(1), 6881, options=b"\x02\x09"),
    ):
        reply = v4.handle(packet, V4)
        assert struct.unpack_from(">II", reply) == (3, 7)
        assert len(reply) <= len(packet)


def test_malformed_request_from_a_proven_sender_gets_the_whole_message(core, clock):
    v4, _ = handlers(core, clock)
    cid = connected(v4, V4)
    message = read_error(v4.handle(scrape_packet(cid, 7), V4), 7)
    assert message == "scrape without info_hash: give 1 or more"
    assert core.counters.errors[("udp", "malformed")] == 1


@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda action, body: struct.pack(">8sII", bytes(8), action, 1) + body,
            st.integers(0, 3),
            st.binary(max_size=300),
        ),
    )
)
def test_no_datagram_from_an_unproven_sender_gets_a_larger_reply(data):
    clock = ManualClock()
    v4, v6 = handlers(TrackerCore(TrackerConfig(), clock=clock), clock)
    for handler, addr in ((v4, V4), (v6, V6)):
        reply = handler.handle(data, addr)
        assert reply is None or len(reply) <= len(data)


@pytest.mark.parametrize(
    "packet", [b"", b"\x00" * 15, struct.pack(">QII", 0x1234, 0, 1)], ids=["empty", "15", "magic"]
)
def test_packets_that_are_not_bep15_are_dropped(core, clock, packet):
    v4, _ = handlers(core, clock)
    assert v4.handle(packet, V4) is None


def test_reply_peer_lists_are_capped_to_one_datagram_per_family(clock):
    config = TrackerConfig(numwant_max=500, numwant_default=50, max_peers_per_address=400)
    core = TrackerCore(config, clock=clock)
    v4, v6 = handlers(core, clock)
    for n in range(MAX_PEERS_IPV4 + 10):
        core.store.apply(_change(n, v4_entry("10.0.0.1", 1000 + n), clock()))
        core.store.apply(_change(n + 10_000, v6_entry("2001:db8::1", 1000 + n), clock()))
    cid, cid6 = connected(v4, V4), connected(v6, V6)
    got = read_announce(
        v4.handle(announce_packet(cid, 1, ih(1), pid(90_001), 1, num_want=400), V4), 1, 6
    )
    assert len(got.peers) == MAX_PEERS_IPV4
    reply6 = v6.handle(announce_packet(cid6, 1, ih(1), pid(90_002), 1, num_want=-1), V6)
    assert len(read_announce(reply6, 1, 18).peers) == 50
    reply6 = v6.handle(announce_packet(cid6, 2, ih(1), pid(90_002), 1, num_want=400), V6)
    assert len(read_announce(reply6, 2, 18).peers) == MAX_PEERS_IPV6
    assert len(reply6) + 48 <= 1280


def _change(n: int, endpoint: bytes, now: float) -> PeerChange:
    return PeerChange(ih(1), pid(n), endpoint, True, 0, now)


def test_ip_field_is_believed_only_when_allowed_and_only_over_ipv4(clock):
    core = TrackerCore(TrackerConfig(allow_ip_param=True), clock=clock)
    v4, v6 = handlers(core, clock)
    ten = int.from_bytes(socket.inet_aton("10.1.2.3"), "big")
    v4.handle(announce_packet(connected(v4, V4), 1, ih(1), pid(1), 6881, left=0, ip=ten), V4)
    v6.handle(announce_packet(connected(v6, V6), 1, ih(1), pid(2), 6882, left=0, ip=ten), V6)
    got = read_announce(
        v4.handle(announce_packet(connected(v4, V4), 2, ih(1), pid(3), 1), V4), 2, 6
    )
    assert got.peers == [v4_entry("10.1.2.3", 6881)]
    got = read_announce(
        v6.handle(announce_packet(connected(v6, V6), 2, ih(1), pid(4), 1), V6), 2, 18
    )
    assert got.peers == [v6_entry("::1", 6882)]


def test_core_refusal_becomes_an_error_reply(clock):
    core = TrackerCore(TrackerConfig(max_peers_per_torrent=1), clock=clock)
    v4, _ = handlers(core, clock)
    v4.handle(announce_packet(connected(v4, V4), 1, ih(1), pid(1), 6881), V4)
    reply = v4.handle(announce_packet(connected(v4, V4), 2, ih(1), pid(2), 6882), V4)
    assert read_error(reply, 2) == "swarm is full: this torrent has the most peers allowed"


def test_link_local_sender_with_a_scope_is_served(core, clock):
    _, v6 = handlers(core, clock)
    addr = ("fe80::1%lo", 40000, 0, 1)
    got = read_announce(
        v6.handle(announce_packet(connected(v6, addr), 1, ih(1), pid(1), 1), addr), 1, 18
    )
    assert got.leechers == 1


# --- a real udp-sidecar on loopback --------------------------------------------------------


HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not has_ipv6_loopback(), reason="no IPv6 loopback on this machine"))]  # fmt: skip


class Client:
    """One BEP 15 client socket (one source port): request/reply with bounded retries."""

    def __init__(self, host: str, port: int) -> None:
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.width = 18 if self.family == socket.AF_INET6 else 6
        self.server = (host, port)
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(2.0)
        self.tid = 100
        self.cid = b""

    def close(self) -> None:
        self.sock.close()

    def request(self, build) -> tuple[bytes, int]:
        """Send ``build(tid)``; the reply with that tid (3 tries, 2 s each: loopback UDP)."""
        self.tid += 1
        packet = build(self.tid)
        for _ in range(3):
            self.sock.sendto(packet, self.server)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    reply = self.sock.recv(4096)
                except TimeoutError:
                    break
                if reply[4:8] == self.tid.to_bytes(4, "big"):
                    return reply, self.tid
        raise AssertionError(f"no reply from {self.server} to transaction {self.tid}")

    def connect(self) -> bytes:
        reply, tid = self.request(connect_packet)
        assert struct.unpack_from(">II", reply) == (0, tid) and len(reply) == 16
        self.cid = reply[8:]
        return self.cid

    def announce(self, info_hash: bytes, peer_id: bytes, port: int, **kw) -> AnnounceReply:
        reply, tid = self.request(
            lambda t: announce_packet(self.cid, t, info_hash, peer_id, port, **kw)
        )
        return read_announce(reply, tid, self.width)

    def scrape(self, *hashes: bytes) -> list[tuple[int, int, int]]:
        reply, tid = self.request(lambda t: scrape_packet(self.cid, t, *hashes))
        return read_scrape(reply, tid)


@pytest.fixture(scope="module")
def server() -> Iterator:
    binds = ["127.0.0.1", "::1"] if has_ipv6_loopback() else ["127.0.0.1"]
    with sidecar(binds=binds) as running:
        yield running


@contextlib.contextmanager
def clients(host: str, port: int, n: int) -> Iterator[list[Client]]:
    made = [Client(host, port) for _ in range(n)]
    try:
        for c in made:
            c.connect()
        yield made
    finally:
        for c in made:
            c.close()


def entry(host: str, port: int) -> bytes:
    return (v6_entry if ":" in host else v4_entry)(host, port)


@pytest.mark.integration
@pytest.mark.parametrize("host", HOSTS)
def test_peers_find_each_other_in_their_own_family(server, host):
    torrent = ih(10 if ":" in host else 11)
    with clients(host, server.port, 4) as peers:
        seeder, *leechers = peers
        seeder.announce(torrent, pid(1), 6001, left=0, event=2)
        for n, c in enumerate(leechers, 2):
            c.announce(torrent, pid(n), 6000 + n, event=2)
        got = leechers[-1].announce(torrent, pid(4), 6004)
        assert (got.seeders, got.leechers) == (1, 3)
        assert sorted(got.peers) == sorted(entry(host, p) for p in (6001, 6002, 6003))
        got = seeder.announce(torrent, pid(1), 6001, left=0)  # a seeder gets leechers only
        assert sorted(got.peers) == sorted(entry(host, p) for p in (6002, 6003, 6004))


@pytest.mark.integration
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv4_and_ipv6_peers_share_counts_but_not_lists(server):
    torrent = ih(77)
    with clients("127.0.0.1", server.port, 1) as (a,), clients("::1", server.port, 1) as (b,):
        a.announce(torrent, pid(1), 6001, left=0)
        got = b.announce(torrent, pid(2), 6002)
        assert (got.seeders, got.leechers, got.peers) == (1, 1, [])
        assert a.scrape(torrent) == b.scrape(torrent) == [(1, 0, 1)]


@pytest.mark.integration
@pytest.mark.parametrize("host", HOSTS)
def test_scrape_counts_follow_completed_and_stopped(server, host):
    torrent, unknown = ih(1000 + len(host)), ih(999)
    with clients(host, server.port, 2) as (a, b):
        a.announce(torrent, pid(1), 6001, event=2)
        b.announce(torrent, pid(2), 6002, event=2)
        assert a.scrape(torrent, unknown, torrent) == [(0, 0, 2), (0, 0, 0), (0, 0, 2)]
        a.announce(torrent, pid(1), 6001, left=0, event=1)
        assert b.scrape(torrent) == [(1, 1, 1)]
        a.announce(torrent, pid(1), 6001, left=0, event=1)  # completed again: counted once
        got = b.announce(torrent, pid(2), 6002, event=3)
        assert got.peers == []
        assert a.scrape(torrent) == [(1, 1, 0)]


@pytest.mark.integration
@pytest.mark.parametrize("host", HOSTS)
def test_forged_connection_id_is_refused_with_a_short_error(server, host):
    with clients(host, server.port, 1) as (c,):
        c.cid = bytes(8)
        packet_len = len(announce_packet(c.cid, 0, ih(5), pid(1), 6001))
        reply, tid = c.request(lambda t: announce_packet(c.cid, t, ih(5), pid(1), 6001))
        assert "connection id" in read_error(reply, tid)
        assert len(reply) <= packet_len
        reply, tid = c.request(lambda t: scrape_packet(c.cid, t, ih(5)))
        assert len(reply) <= 36 and read_error(reply, tid).startswith("connection id")


@pytest.mark.integration
@pytest.mark.parametrize("host", HOSTS)
def test_malformed_requests_get_error_replies_and_the_server_keeps_serving(server, host):
    torrent = ih(20 if ":" in host else 21)
    with clients(host, server.port, 1) as (c,):
        reply, tid = c.request(lambda t: scrape_packet(c.cid, t))
        assert read_error(reply, tid) == "scrape without info_hash: give 1 or more"
        reply, tid = c.request(lambda t: scrape_packet(c.cid, t, *[ih(1)] * (MAX_SCRAPE_IPV4 + 1)))
        assert "too many info_hashes" in read_error(reply, tid)
        reply, tid = c.request(lambda t: struct.pack(">8sII", c.cid, 7, t))
        assert "unknown action 7" in read_error(reply, tid)
        reply, tid = c.request(
            lambda t: announce_packet(c.cid, t, torrent, pid(1), 6001, options=b"\x02\x20/ann")
        )
        assert "truncated" in read_error(reply, tid)
        for junk in (b"", b"x", b"\xff" * 15, b"\x00" * 16):
            c.sock.sendto(junk, c.server)
        assert c.announce(torrent, pid(1), 6001).leechers == 1


@pytest.mark.integration
@pytest.mark.parametrize("host", HOSTS)
def test_a_burst_read_as_batches_answers_each_datagram_on_its_own(server, host):
    """The server reads many datagrams per wake-up and answers them together: a malformed
    one among them gets its own error, junk gets nothing, and every other its reply."""
    torrent = ih(30 if ":" in host else 31)
    with clients(host, server.port, 1) as (c,):
        good = {1000 + n: announce_packet(c.cid, 1000 + n, torrent, pid(n), 7000 + n)
                for n in range(40)}  # fmt: skip
        bad = {
            2001: announce_packet(c.cid, 2001, torrent, pid(99), 7099, event=9),
            2002: announce_packet(bytes(8), 2002, torrent, pid(98), 7098),
            2003: scrape_packet(c.cid, 2003),
        }
        burst = list(good.items())
        for at, (tid, packet) in zip((5, 17, 33), bad.items(), strict=True):
            burst.insert(at, (tid, packet))
        burst.insert(25, (0, b"\xff" * 15))  # not BEP 15: dropped, and nothing else with it
        for _, packet in burst:
            c.sock.sendto(packet, c.server)
        replies: dict[int, bytes] = {}
        deadline = time.monotonic() + 10
        while len(replies) < len(good) + len(bad) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                reply = c.sock.recv(4096)
                replies[struct.unpack_from(">I", reply, 4)[0]] = reply
        assert sorted(replies) == sorted([*good, *bad])
        for tid in good:
            assert read_announce(replies[tid], tid, c.width).interval > 0
        assert "invalid event: 9" in read_error(replies[2001], 2001)
        assert "connection id" in read_error(replies[2002], 2002)
        assert "scrape without info_hash" in read_error(replies[2003], 2003)
        last = c.announce(torrent, pid(0), 7000)
        assert last.leechers == len(good)
        assert sorted(last.peers) == sorted(entry(host, 7000 + n) for n in range(1, 40))


@pytest.mark.integration
def test_expired_connection_id_is_refused(tmp_path):
    config = tmp_path / "tracker.toml"
    config.write_text("connection_id_ttl = 1\n")
    with sidecar(config_file=str(config)) as running, clients("127.0.0.1", running.port, 1) as (c,):
        time.sleep(1.6)  # ids live ttl to 1.5 * ttl: this one has surely expired
        reply, tid = c.request(lambda t: announce_packet(c.cid, t, ih(1), pid(1), 6001))
        assert "connection id" in read_error(reply, tid)
        c.connect()
        assert c.announce(ih(1), pid(1), 6001).leechers == 1


# --- the command ---------------------------------------------------------------------------


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO_ROOT), "WSGI_TRACKER_SYNC_SOCKET": "off", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "udp_sidecar", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("udp-sidecar: "), result.stderr
    return lines[0]


@pytest.mark.integration
def test_port_in_use_is_a_one_line_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        line = one_line_error(run_command("--udp-bind", "127.0.0.1", "--udp-port", str(port)))
    assert f"cannot bind 127.0.0.1:{port}" in line and "in use" in line


@pytest.mark.integration
@pytest.mark.parametrize("bind", ["not-an-address", "300.1.1.1"])
def test_bad_bind_address_is_a_one_line_error(bind):
    line = one_line_error(run_command("--udp-bind", bind, "--udp-port", str(free_port())))
    assert repr(bind) in line


@pytest.mark.integration
def test_unreadable_and_invalid_configs_are_one_line_errors(tmp_path):
    assert "cannot read config file" in one_line_error(
        run_command("--config", str(tmp_path / "missing.toml"))
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("connection_id_ttl = 0\n")
    assert "connection_id_ttl must be 1-86400" in one_line_error(run_command("--config", str(bad)))
    private = tmp_path / "private.toml"
    private.write_text("private = true\n")  # and no passkeys from anywhere
    assert "private needs passkeys_file" in one_line_error(
        run_command(
            "--config", str(private), "--udp-bind", "127.0.0.1", "--udp-port", str(free_port())
        )
    )


@pytest.mark.integration
def test_help_names_every_option():
    result = run_command("--help")
    assert result.returncode == 0
    for option in ("--udp-bind", "--udp-port", "--config", "--sync-socket", "--log-level"):
        assert option in result.stdout


@pytest.mark.integration
def test_console_script_is_installed_and_runs():
    script = Path(sys.executable).with_name("udp-sidecar")
    if not script.exists():
        pytest.skip("the project is not installed in this interpreter's environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "udp-sidecar" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_gracefully(signum):
    with sidecar() as running:
        running.proc.send_signal(signum)
        assert running.proc.wait(20) == 0
        assert "listening on 127.0.0.1:" in running.stderr()
