"""A corpus of malformed UDP datagrams against a real udp-sidecar: each dropped or refused.

Every packet is written by hand with its fate: dropped (no reply at all), or
an error packet (action 3) carrying the request's transaction id and, where
the sender proved its address with a valid connection id, a message naming
the problem. Never peers, and never a reply larger than the request to an
address that has not proven itself (no amplification for spoofed senders).

A "dropped" verdict needs no waiting: after each bad packet the client sends a
connect as a barrier, and one socket is served in order, so if the first
reply is the barrier's, the bad packet got none.

The bad packets all name one real torrent (``IH``); afterwards scrapes and an
announce prove the store holds exactly what the valid requests put there.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from servers import Server, sidecar

pytestmark = pytest.mark.integration

PROTOCOL_ID = 0x41727101980
MAGIC = PROTOCOL_ID.to_bytes(8, "big")
IH = bytes.fromhex("aa" * 20)  # the torrent every bad packet names
PID = b"-BAD001-" + b"0" * 12
IH_A = bytes.fromhex("a1" * 20)
IH_B = bytes.fromhex("b2" * 20)
TID = 0x5EED1234
BOGUS = b"\x13\x37" * 4  # a connection id nobody issued
DROP = "dropped"
NOT_CONNECTED = "connection id expired or unknown"
RECV_TIMEOUT = 5.0


def head(cid: bytes, action: int, tid: int = TID) -> bytes:
    return cid + struct.pack(">II", action, tid)


def announce(
    cid: bytes,
    *,
    ih: bytes = IH,
    pid: bytes = PID,
    downloaded: int = 0,
    left: int = 0,
    uploaded: int = 0,
    event: int = 2,
    ip: int = 0,
    key: int = 7,
    numwant: int = -1,
    port: int = 6881,
    tid: int = TID,
) -> bytes:
    return head(cid, 1, tid) + struct.pack(
        ">20s20sqqqIIIiH", ih, pid, downloaded, left, uploaded, event, ip, key, numwant, port
    )


def scrape(cid: bytes, *hashes: bytes) -> bytes:
    return head(cid, 2) + b"".join(hashes)


@dataclass(frozen=True)
class Case:
    """``build(cid)`` makes the packet from a fresh valid connection id; ``expect`` is
    DROP or the start of the error message ("" for garbage: any error, or a drop)."""

    name: str
    build: Callable[[bytes], bytes]
    expect: str


def fixed(packet: bytes) -> Callable[[bytes], bytes]:
    return lambda _cid: packet


def garbage(seed: int, size: int) -> bytes:
    """Random bytes that are not a connect (so a drop or an unproven error is the fate)."""
    data = bytearray(random.Random(seed).randbytes(size))
    if size >= 16 and int.from_bytes(data[8:12], "big") == 0:
        data[11] = 9
    return bytes(data)


def flip(cid: bytes) -> bytes:
    return bytes([cid[0] ^ 1]) + cid[1:]


SHORT = "announce too short: {} bytes, at least 98"
ACTION = "unknown action {}: expected 0 (connect), 1 (announce) or 2 (scrape)"
EVENT = "invalid event: {} (expected 0 none"
TRUNC = "BEP 41 option {} at byte {} is truncated"

CORPUS: list[Case] = [
    # --- too short to be BEP 15: dropped --------------------------------------------------
    *[Case(f"{n}-byte packet", fixed(b"\x00" * n), DROP) for n in range(16)],
    Case("15 bytes of a real connect", fixed(MAGIC + struct.pack(">II", 0, TID)[:7]), DROP),
    Case("single 0xff", fixed(b"\xff"), DROP),
    # --- a connect without the protocol id: dropped (nothing proves the sender) ----------
    Case("connect with zero id", fixed(head(bytes(8), 0)), DROP),
    Case("connect with all-ones id", fixed(head(b"\xff" * 8, 0)), DROP),
    Case("connect id off by one", fixed(head((PROTOCOL_ID + 1).to_bytes(8, "big"), 0)), DROP),
    Case("connect id little-endian", fixed(head(PROTOCOL_ID.to_bytes(8, "little"), 0)), DROP),
    Case("connect with a connection id", lambda cid: head(cid, 0), DROP),
    Case("connect with bogus id", fixed(head(BOGUS, 0)), DROP),
    Case("connect id truncated to 32 bits", fixed(head(bytes(4) + MAGIC[4:], 0)), DROP),
    Case(
        "HTTP request on the UDP port",
        fixed(b"GET /announce?info_hash=x HTTP/1.1\r\n\r\n"),
        "unknown action 1869966947",  # b"ounc": refused, cut to the request's length
    ),
    Case(
        "connect reply sent back",
        fixed(struct.pack(">II8s", 0, TID, BOGUS)),
        ACTION.format(0x13371337),
    ),
    # --- unknown actions: refused; the reply no longer than the request if unproven -------
    *[
        Case(f"action {a} unproven", fixed(head(BOGUS, a)), ACTION.format(a))
        for a in (3, 4, 255, 2**31, 2**32 - 1)
    ],
    *[
        Case(f"action {a} proven", lambda cid, a=a: head(cid, a), ACTION.format(a))
        for a in (3, 5, 1000, 2**32 - 1)
    ],
    Case("action 3 with trailing data", lambda cid: head(cid, 3) + b"x" * 100, ACTION.format(3)),
    Case("unknown action with magic as id", fixed(head(MAGIC, 9)), ACTION.format(9)),
    # --- announces too short ----------------------------------------------------------------
    *[
        Case(f"announce of {n} bytes", lambda cid, n=n: announce(cid)[:n], SHORT.format(n))
        for n in (16, 17, 24, 36, 56, 80, 96, 97)
    ],
    *[
        Case(
            f"unproven announce of {n} bytes", lambda _c, n=n: announce(BOGUS)[:n], SHORT.format(n)
        )
        for n in (16, 40, 97)
    ],
    # --- bad fields in a whole announce ---------------------------------------------------
    *[
        Case(f"event {e}", lambda cid, e=e: announce(cid, event=e), EVENT.format(e))
        for e in (4, 5, 255, 2**31, 2**32 - 1)
    ],
    Case("event 4 unproven", fixed(announce(BOGUS, event=4)), EVENT.format(4)),
    Case("port zero", lambda cid: announce(cid, port=0), "invalid port: 0 is outside 1-65535"),
    Case("port zero unproven", fixed(announce(BOGUS, port=0)), "invalid port: 0"),
    Case(
        "port zero and event 9",
        lambda cid: announce(cid, port=0, event=9),
        EVENT.format(9),
    ),
    # --- negative counters: HTTP refuses them; UDP took a negative left as a leecher -------
    Case("negative left", lambda cid: announce(cid, left=-1), "invalid left: -1 is outside 0-"),
    Case(
        "most negative downloaded",
        lambda cid: announce(cid, downloaded=-(2**63)),
        f"invalid downloaded: {-(2**63)} is outside 0-",
    ),
    Case("negative uploaded unproven", fixed(announce(BOGUS, uploaded=-1)), "invalid uploaded: -1"),
    # --- BEP 41 options cut short ---------------------------------------------------------
    Case("URL option without length", lambda cid: announce(cid) + b"\x02", TRUNC.format(2, 98)),
    Case(
        "URL option longer than packet",
        lambda cid: announce(cid) + b"\x02\x10abc",
        TRUNC.format(2, 98),
    ),
    Case(
        "URL option of 255 with 254 present",
        lambda cid: announce(cid) + b"\x02\xff" + b"a" * 254,
        TRUNC.format(2, 98),
    ),
    Case("unknown option without length", lambda cid: announce(cid) + b"\x07", TRUNC.format(7, 98)),
    Case(
        "truncated option after NOPs",
        lambda cid: announce(cid) + b"\x01\x01\x01\x02\x05ab",
        TRUNC.format(2, 101),
    ),
    Case(
        "second URL option truncated",
        lambda cid: announce(cid) + b"\x02\x03/an\x02\x09nounce",
        TRUNC.format(2, 103),
    ),
    Case("truncated option unproven", fixed(announce(BOGUS) + b"\x02\x40"), TRUNC.format(2, 98)),
    # --- announces with a connection id the sender does not own ---------------------------
    Case("announce with bogus id", fixed(announce(BOGUS)), NOT_CONNECTED),
    Case("announce with zero id", fixed(announce(bytes(8))), NOT_CONNECTED),
    Case("announce with protocol id", fixed(announce(MAGIC)), NOT_CONNECTED),
    Case("announce with a flipped bit", lambda cid: announce(flip(cid)), NOT_CONNECTED),
    Case("announce with reversed id", lambda cid: announce(cid[::-1]), NOT_CONNECTED),
    Case("completed with bogus id", fixed(announce(BOGUS, event=1, left=0)), NOT_CONNECTED),
    Case("stopped with bogus id", fixed(announce(BOGUS, event=3)), NOT_CONNECTED),
    Case(
        "announce with bogus id and URL data",
        fixed(announce(BOGUS) + b"\x02\x09/announce\x00"),
        NOT_CONNECTED,
    ),
    Case("numwant huge with bogus id", fixed(announce(BOGUS, numwant=2**31 - 1)), NOT_CONNECTED),
    # --- scrapes --------------------------------------------------------------------------
    Case("scrape of nothing", lambda cid: scrape(cid), "scrape without info_hash"),
    Case("scrape of 1 byte", lambda cid: scrape(cid, b"x"), "scrape body of 1 bytes"),
    Case("scrape of 19 bytes", lambda cid: scrape(cid, IH[:19]), "scrape body of 19 bytes"),
    Case("scrape of 21 bytes", lambda cid: scrape(cid, IH + b"x"), "scrape body of 21 bytes"),
    Case("scrape of 1.5 hashes", lambda cid: scrape(cid, IH, IH[:10]), "scrape body of 30 bytes"),
    Case(
        "scrape of 123 hashes",
        lambda cid: scrape(cid, *[IH] * 123),
        "too many info_hashes: 123, at most ",
    ),
    Case(
        "scrape of 204 hashes",
        lambda cid: scrape(cid, *[IH] * 204),
        "too many info_hashes: 204, at most ",
    ),
    Case(
        "scrape of 1000 hashes (cut by the server's buffer)",
        lambda cid: scrape(cid, *[IH] * 1000),
        "too many info_hashes: 204",
    ),
    Case("scrape with bogus id", fixed(scrape(BOGUS, IH)), NOT_CONNECTED),
    Case("scrape with zero id", fixed(scrape(bytes(8), IH, IH_A)), NOT_CONNECTED),
    Case("scrape with a flipped bit", lambda cid: scrape(flip(cid), IH), NOT_CONNECTED),
    Case("scrape of nothing unproven", fixed(scrape(BOGUS)), "scrape without info_hash"),
    Case("scrape of 19 bytes unproven", fixed(scrape(BOGUS, IH[:19])), "scrape body of 19"),
    Case("scrape of 123 unproven", fixed(scrape(BOGUS, *[IH] * 123)), "too many info_hashes"),
    # --- random garbage: not one of these may ever be answered with more than it sent -----
    *[
        Case(f"garbage {size} bytes", fixed(garbage(size, size)), "")
        for size in (
            16,
            17,
            20,
            31,
            64,
            97,
            98,
            99,
            128,
            200,
            512,
            1000,
            1400,
            2000,
            4096,
            9000,
        )
    ],
]


# --- a client that needs no timing to know a packet went unanswered ---------------------


class Client:
    """One UDP socket to the sidecar; ``ask`` returns a packet's reply or None (dropped)."""

    def __init__(self, server: Server, family: int) -> None:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.addr = (host, server.port)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(RECV_TIMEOUT)
        self.sock.bind((host, 0))
        self.barrier = 0

    def close(self) -> None:
        self.sock.close()

    def ask(self, packet: bytes) -> bytes | None:
        self.barrier += 1
        marker = 0xB0000000 + self.barrier
        self.sock.sendto(packet, self.addr)
        self.sock.sendto(MAGIC + struct.pack(">II", 0, marker), self.addr)
        replies = []
        for _ in range(3):  # the bad packet's reply (if any), then the barrier's
            data, _ = self.sock.recvfrom(65536)
            if data[:8] == struct.pack(">II", 0, marker):
                assert len(replies) <= 1, replies
                return replies[0] if replies else None
            replies.append(data)
        raise AssertionError(f"barrier reply never came; got {replies!r}")

    def connect(self) -> bytes:
        self.sock.sendto(MAGIC + struct.pack(">II", 0, TID), self.addr)
        data, _ = self.sock.recvfrom(65536)
        action, tid = struct.unpack_from(">II", data)
        assert (action, tid, len(data)) == (0, TID, 16)
        return data[8:16]

    def request(self, packet: bytes) -> bytes:
        self.sock.sendto(packet, self.addr)
        data, _ = self.sock.recvfrom(65536)
        return data


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with sidecar(binds=("127.0.0.1", "::1")) as srv:
        client = Client(srv, socket.AF_INET)
        try:
            valid_requests(client)
        finally:
            client.close()
        yield srv


@pytest.fixture(params=["ipv4", "ipv6"])
def client(server: Server, request: pytest.FixtureRequest) -> Iterator[Client]:
    family = socket.AF_INET6 if request.param == "ipv6" else socket.AF_INET
    c = Client(server, family)
    yield c
    c.close()


def ok_announce(client: Client, ih: bytes, peer: int, port: int, left: int, event: int) -> tuple:
    pid = b"-OK0001-" + peer.to_bytes(12, "big")
    reply = client.request(
        announce(client.connect(), ih=ih, pid=pid, left=left, event=event, port=port, numwant=50)
    )
    action, tid, _interval, leechers, seeders = struct.unpack_from(">IIIII", reply)
    assert (action, tid) == (1, TID), reply
    return leechers, seeders, reply[20:]


def valid_requests(client: Client) -> None:
    """The only requests allowed to change state."""
    ok_announce(client, IH_A, 1, 7001, 0, 1)  # seeder, counts one download
    ok_announce(client, IH_A, 2, 7002, 100, 2)  # leecher
    ok_announce(client, IH_A, 3, 7003, 100, 2)
    ok_announce(client, IH_A, 3, 7003, 100, 3)  # ...and gone again
    ok_announce(client, IH_B, 4, 7004, 5, 2)


def check_answer(client: Client, case: Case) -> None:
    cid = client.connect()
    packet = case.build(cid)
    reply = client.ask(packet)
    if case.expect == DROP:
        assert reply is None, reply
        return
    if reply is None:
        assert case.expect == "", f"expected an error matching {case.expect!r}, got nothing"
        return
    action, tid = struct.unpack_from(">II", reply)
    assert action == 3, f"not an error packet: {reply!r}"  # never peers, never counts
    assert tid == struct.unpack_from(">I", packet, 12)[0]
    proven = packet[:8] == cid
    if not proven:
        assert len(reply) <= len(packet), "an unproven sender got a larger reply"
    message = reply[8:].decode("utf-8", "replace")
    if proven or len(reply) < len(packet):  # whole
        assert message.startswith(case.expect), message
    else:  # cut to the request's size: what is left must be the start of it
        shown = min(len(message), len(case.expect))
        assert message[:shown] == case.expect[:shown], message


def test_corpus_has_at_least_one_hundred_distinct_packets():
    assert len(CORPUS) >= 100
    assert len({c.name for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_malformed_packet_is_dropped_or_refused(client, case):
    check_answer(client, case)


def test_state_is_exactly_what_the_valid_requests_made(server):
    for family in (socket.AF_INET, socket.AF_INET6):
        c = Client(server, family)
        try:
            for case in CORPUS:  # once more, in one go, from both families
                check_answer(c, case)
        finally:
            c.close()
    c = Client(server, socket.AF_INET)
    try:
        reply = c.request(scrape(c.connect(), IH, IH_A, IH_B))
        assert struct.unpack_from(">II", reply) == (2, TID)
        assert list(struct.iter_unpack(">III", reply[8:])) == [(0, 0, 0), (1, 1, 1), (0, 0, 1)]
        leechers, seeders, peers = ok_announce(c, IH_A, 2, 7002, 100, 0)
        assert (leechers, seeders) == (1, 1)
        assert peers == bytes([127, 0, 0, 1]) + (7001).to_bytes(2, "big")
    finally:
        c.close()
