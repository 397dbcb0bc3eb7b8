"""Sans-IO BEP 15 (UDP tracker) and BEP 41 (URL data) packets, and connection-id cookies.

Bytes in, dataclasses out; results in, bytes out. No sockets, no clock and no
key of its own: the server shell injects them, so every branch is tested
without a network. Parsing raises exactly one exception type, ``PacketError``.

Layouts (all big-endian, BEP 15):

    request header   connection_id 8 | action 4 | transaction_id 4
    announce body    info_hash 20 | peer_id 20 | downloaded 8 | left 8 | uploaded 8 |
                     event 4 | ip 4 | key 4 | num_want 4 (signed) | port 2   = 98 bytes
                     then BEP 41 options
    scrape body      info_hash 20 * n
    reply header     action 4 | transaction_id 4
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from wsgi_tracker.core.types import Announce, ScrapeEntry

PROTOCOL_ID = 0x41727101980
PROTOCOL_ID_BYTES = PROTOCOL_ID.to_bytes(8, "big")
ACTION_CONNECT = 0
ACTION_ANNOUNCE = 1
ACTION_SCRAPE = 2
ACTION_ERROR = 3

# BEP 41 option types. Other types carry a length byte too, and are skipped.
OPTION_END = 0
OPTION_NOP = 1
OPTION_URL_DATA = 2
# Options walked before an EndOfOptions (or the packet's end) must come: a URL's path and
# query, as HTTP's max_query_bytes bounds a query. The walk is Python per option, ~95-140
# ns a byte: a 64 KiB datagram of NOPs or 1-byte URLData options cost 6-9 ms, ten times
# an announce's cost per byte, and was parsed before its connection id was checked.
MAX_OPTIONS_BYTES = 2048

# Connection ids stay raw 8-byte strings end to end: compared with
# compare_digest and echoed, never used as numbers.
_HEADER = struct.Struct(">8sII")
_ANNOUNCE = struct.Struct(">8sII20s20sqqqIIIiH")
_CONNECT_REPLY = struct.Struct(">II8s")
_ANNOUNCE_REPLY = struct.Struct(">IIIII")
_REPLY_HEADER = struct.Struct(">II")
_SCRAPE_ENTRY = struct.Struct(">III")

_ANNOUNCE_ACTION = ACTION_ANNOUNCE.to_bytes(4, "big")
_U32 = 2**32 - 1  # bytes 8-12 of an announce

HEADER_SIZE = _HEADER.size  # 16
ANNOUNCE_SIZE = _ANNOUNCE.size  # 98
IPV4_WIDTH = 6
IPV6_WIDTH = 18

# A reply must never be fragmented: IPv4 within a 1500-byte MTU less 20 (IP)
# + 8 (UDP) header bytes; IPv6 within its 1280-byte minimum MTU less 40 + 8.
IPV4_PAYLOAD = 1500 - 28
IPV6_PAYLOAD = 1280 - 48
MAX_PEERS_IPV4 = (IPV4_PAYLOAD - _ANNOUNCE_REPLY.size) // IPV4_WIDTH  # 242
MAX_PEERS_IPV6 = (IPV6_PAYLOAD - _ANNOUNCE_REPLY.size) // IPV6_WIDTH  # 67
MAX_SCRAPE_IPV4 = (IPV4_PAYLOAD - _REPLY_HEADER.size) // _SCRAPE_ENTRY.size  # 122
MAX_SCRAPE_IPV6 = (IPV6_PAYLOAD - _REPLY_HEADER.size) // _SCRAPE_ENTRY.size  # 102


class PacketError(ValueError):
    """A datagram that is not a valid request; the message names the field and the rule.

    ``transaction_id`` is None when the packet is not recognisably BEP 15
    (too short, or a connect without the protocol id): such packets are
    dropped, not answered. ``connection_id`` lets the shell decide how long an
    error reply may be (see ``build_error``).
    """

    def __init__(
        self, message: str, transaction_id: int | None = None, connection_id: bytes | None = None
    ) -> None:
        super().__init__(message)
        self.transaction_id = transaction_id
        self.connection_id = connection_id


@dataclass(slots=True)
class ConnectRequest:
    transaction_id: int

    def __init__(
        self,
        transaction_id: int,
    ) -> None:  # compiled, unlike the one @dataclass writes (core/types.py)
        self.transaction_id = transaction_id


@dataclass(slots=True)
class AnnounceRequest:
    """The announce fields as BEP 15 carries them, plus the BEP 41 URL data (path?query)."""

    connection_id: bytes
    transaction_id: int
    info_hash: bytes
    peer_id: bytes
    downloaded: int
    left: int
    uploaded: int
    event: int
    ip: int  # IPv4 address as a number; 0 means "use the sender's"
    key: int  # 0: none (the store keeps keys as these 32 bits)
    num_want: int  # negative (BEP 15: -1) means the tracker's default
    port: int
    url_data: bytes = b""

    def __init__(
        self,
        connection_id: bytes,
        transaction_id: int,
        info_hash: bytes,
        peer_id: bytes,
        downloaded: int,
        left: int,
        uploaded: int,
        event: int,
        ip: int,
        key: int,
        num_want: int,
        port: int,
        url_data: bytes = b"",
    ) -> None:  # compiled, unlike the one @dataclass writes (core/types.py)
        self.connection_id = connection_id
        self.transaction_id = transaction_id
        self.info_hash = info_hash
        self.peer_id = peer_id
        self.downloaded = downloaded
        self.left = left
        self.uploaded = uploaded
        self.event = event
        self.ip = ip
        self.key = key
        self.num_want = num_want
        self.port = port
        self.url_data = url_data

    @property
    def path(self) -> bytes:
        return self.url_data.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        return self.url_data.partition(b"?")[2]


@dataclass(slots=True)
class ScrapeRequest:
    connection_id: bytes
    transaction_id: int
    info_hashes: list[bytes]

    def __init__(
        self,
        connection_id: bytes,
        transaction_id: int,
        info_hashes: list[bytes],
    ) -> None:  # compiled, unlike the one @dataclass writes (core/types.py)
        self.connection_id = connection_id
        self.transaction_id = transaction_id
        self.info_hashes = info_hashes


Request = ConnectRequest | AnnounceRequest | ScrapeRequest


def parse_request(data: bytes, max_scrape_hashes: int = MAX_SCRAPE_IPV4) -> Request:
    """Parse one client datagram; raises PacketError for anything else."""
    size = len(data)
    if size >= ANNOUNCE_SIZE and data[8:12] == _ANNOUNCE_ACTION:
        # Nearly every datagram: header and body in one unpack, not two.
        return _parse_announce(data)
    if size < HEADER_SIZE:
        raise PacketError(f"packet too short: {size} bytes, a request has at least {HEADER_SIZE}")
    connection_id, action, transaction_id = _HEADER.unpack_from(data)
    if action == ACTION_ANNOUNCE:
        raise PacketError(
            f"announce too short: {size} bytes, at least {ANNOUNCE_SIZE}",
            transaction_id,
            connection_id,
        )
    if action == ACTION_CONNECT:
        if connection_id != PROTOCOL_ID_BYTES:
            raise PacketError(
                f"connect: protocol id 0x{connection_id.hex()} is not 0x{PROTOCOL_ID:x}"
            )
        return ConnectRequest(transaction_id)
    if action == ACTION_SCRAPE:
        return _parse_scrape(data, connection_id, transaction_id, max_scrape_hashes)
    raise PacketError(
        f"unknown action {action}: expected 0 (connect), 1 (announce) or 2 (scrape)",
        transaction_id,
        connection_id,
    )


def _parse_announce(data: bytes) -> AnnounceRequest:
    """An announce of at least ``ANNOUNCE_SIZE`` bytes (the caller checked the size and action)."""
    size = len(data)
    (
        connection_id,
        _,
        transaction_id,
        info_hash,
        peer_id,
        downloaded,
        left,
        uploaded,
        event,
        ip,
        key,
        num_want,
        port,
    ) = _ANNOUNCE.unpack_from(data)
    if event > 3:
        raise PacketError(
            f"invalid event: {event} (expected 0 none, 1 completed, 2 started, 3 stopped)",
            transaction_id,
            connection_id,
        )
    if port == 0:
        raise PacketError("invalid port: 0 is outside 1-65535", transaction_id, connection_id)
    if (downloaded | left | uploaded) < 0:  # one test on the common path
        raise PacketError(_negative(downloaded, left, uploaded), transaction_id, connection_id)
    url_data = b""
    if size > ANNOUNCE_SIZE:
        try:
            url_data = parse_options(data, ANNOUNCE_SIZE)
        except PacketError as exc:
            raise PacketError(str(exc), transaction_id, connection_id) from None
    return AnnounceRequest(
        connection_id,
        transaction_id,
        info_hash,
        peer_id,
        downloaded,
        left,
        uploaded,
        event,
        ip,
        key,
        num_want,
        port,
        url_data,
    )


def _negative(downloaded: int, left: int, uploaded: int) -> str:
    """Which counter is refused. BEP 15's counters are signed, but a negative count means
    nothing: a negative ``left`` was taken as a leecher, where HTTP refuses it. (A negative
    num_want is BEP 15's "default" for -1, and harmless for any other: kept so.)"""
    name, value = next(
        (n, v)
        for n, v in (("downloaded", downloaded), ("left", left), ("uploaded", uploaded))
        if v < 0
    )
    return f"invalid {name}: {value} is outside 0-{2**63 - 1}"


def parse_options(data: bytes, offset: int) -> bytes:
    """BEP 41 options from ``offset``: the URLData options concatenated.

    EndOfOptions stops the walk (bytes after it are ignored) and so does the
    end of the packet. NOP is one byte. Every other type is followed by a
    length byte; unknown ones are skipped. An option cut short raises, and so
    does an option that starts ``MAX_OPTIONS_BYTES`` or more past ``offset``.
    """
    parts = []
    end = len(data)
    limit = offset + MAX_OPTIONS_BYTES
    pos = offset
    while pos < end:
        kind = data[pos]
        if kind == OPTION_END:
            break
        if pos >= limit:
            raise PacketError(f"BEP 41 options over {MAX_OPTIONS_BYTES} bytes before EndOfOptions")
        if kind == OPTION_NOP:
            pos += 1
            continue
        if pos + 1 >= end:
            raise PacketError(f"BEP 41 option {kind} at byte {pos} is truncated: no length byte")
        stop = pos + 2 + data[pos + 1]
        if stop > end:
            raise PacketError(
                f"BEP 41 option {kind} at byte {pos} is truncated: "
                f"{data[pos + 1]} bytes announced, {end - pos - 2} present"
            )
        if kind == OPTION_URL_DATA:
            parts.append(data[pos + 2 : stop])
        pos = stop
    return b"".join(parts)


def _parse_scrape(
    data: bytes, connection_id: bytes, transaction_id: int, max_hashes: int
) -> ScrapeRequest:
    body = len(data) - HEADER_SIZE
    if body == 0:
        raise PacketError("scrape without info_hash: give 1 or more", transaction_id, connection_id)
    if body % 20:
        raise PacketError(
            f"scrape body of {body} bytes is not a whole number of 20-byte info_hashes",
            transaction_id,
            connection_id,
        )
    if body // 20 > max_hashes:
        raise PacketError(
            f"too many info_hashes: {body // 20}, at most {max_hashes} per scrape",
            transaction_id,
            connection_id,
        )
    hashes = [data[i : i + 20] for i in range(HEADER_SIZE, len(data), 20)]
    return ScrapeRequest(connection_id, transaction_id, hashes)


# --- requests: what a client sends (tests and bench/ build them here) ------------------


def build_connect_request(transaction_id: int) -> bytes:
    return _HEADER.pack(PROTOCOL_ID_BYTES, ACTION_CONNECT, transaction_id)


def build_announce_request(
    connection_id: bytes,
    transaction_id: int,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    *,
    downloaded: int = 0,
    left: int = 0,
    uploaded: int = 0,
    event: int = 0,
    ip: int = 0,
    key: int = 0,
    num_want: int = -1,
    options: bytes = b"",
) -> bytes:
    """An announce as BEP 15 lays it out; ``options`` are BEP 41 bytes after it."""
    return (
        _ANNOUNCE.pack(
            connection_id,
            ACTION_ANNOUNCE,
            transaction_id,
            info_hash,
            peer_id,
            downloaded,
            left,
            uploaded,
            event,
            ip,
            key,
            num_want,
            port,
        )
        + options
    )


def build_scrape_request(
    connection_id: bytes, transaction_id: int, info_hashes: list[bytes]
) -> bytes:
    return _HEADER.pack(connection_id, ACTION_SCRAPE, transaction_id) + b"".join(info_hashes)


# --- replies ---------------------------------------------------------------------------


def build_connect(transaction_id: int, connection_id: bytes) -> bytes:
    return _CONNECT_REPLY.pack(ACTION_CONNECT, transaction_id, connection_id)


def build_announce(
    transaction_id: int, interval: int, leechers: int, seeders: int, peers: bytes
) -> bytes:
    """``peers`` is compact entries of the socket's family: 6 bytes (IPv4) or 18 (IPv6)."""
    return (
        _ANNOUNCE_REPLY.pack(ACTION_ANNOUNCE, transaction_id, interval, leechers, seeders) + peers
    )


def build_scrape(transaction_id: int, entries: list[ScrapeEntry]) -> bytes:
    """One (seeders, completed, leechers) triple per requested hash, in request order.

    ``completed`` saturates at the field's 2**32 - 1: the total is a 64-bit sum (sync
    and the cluster carry it so, as HTTP shows it), and past the field it was a
    struct.error and a logged traceback for each scrape of the torrent, with no reply.
    The peer counts are bounded by ``max_peers`` (at most 10**9)."""
    pack = _SCRAPE_ENTRY.pack
    return _REPLY_HEADER.pack(ACTION_SCRAPE, transaction_id) + b"".join(
        pack(e.complete, min(e.downloaded, _U32), e.incomplete) for e in entries
    )


def build_error(transaction_id: int, message: str, limit: int | None = None) -> bytes:
    """An error reply, cut to ``limit`` bytes in total when given.

    The shell passes the request's length as the limit whenever the sender's
    address is not proven by a valid connection id, so a spoofed request can
    never be reflected at a victim with a larger answer.
    """
    packet = _REPLY_HEADER.pack(ACTION_ERROR, transaction_id) + message.encode("utf-8", "replace")
    return packet if limit is None else packet[:limit]


# --- from the wire to the core ---------------------------------------------------------


def to_announce(
    req: AnnounceRequest, numwant_default: int, announce_path: str, max_peers: int, ip_field: bool
) -> Announce:
    """The protocol-neutral announce for ``TrackerCore``.

    ``max_peers`` caps numwant so the reply fits one unfragmented datagram.
    ``ip_field`` says whether the IPv4-only ``ip`` field may be passed on at
    all (not over IPv6: the reply could not carry the peers of another
    family); the core still honours it only if ``allow_ip_param`` is set.
    """
    numwant: int | None = None if req.num_want < 0 else req.num_want
    if (numwant_default if numwant is None else numwant) > max_peers:
        numwant = max_peers
    # Positional: ~0.3 us against ~0.8 us with keywords, per announce. The field
    # order is Announce's; tests/unit/udp_sidecar/test_udp_protocol.py checks every field by name.
    return Announce(
        req.info_hash,
        req.peer_id,
        req.port,
        req.uploaded,
        req.downloaded,
        req.left,
        req.event,
        numwant,
        str(ipaddress.IPv4Address(req.ip)) if req.ip and ip_field else None,
        req.key,
        passkey_of(req.url_data, announce_path) if req.url_data else None,
    )


def passkey_of(url_data: bytes, announce_path: str) -> str | None:
    """The KEY of ``<announce_path>/KEY[?query]``, as the HTTP side reads it from the path.

    The path is percent-decoded and read as latin-1, the way WSGI presents
    PATH_INFO, so one passkey works over both protocols.
    """
    path = unquote_to_bytes(url_data.partition(b"?")[0]).decode("latin-1")
    prefix = announce_path.rstrip("/") + "/"
    if path.startswith(prefix) and len(path) > len(prefix):
        return path[len(prefix) :]
    return None
