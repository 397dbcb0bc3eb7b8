"""Sans-IO HTTP tracker protocol: raw query bytes in, requests out; results in, bytes out.

No WSGI, no sockets, no globals: every branch is tested without a server.
``info_hash`` and ``peer_id`` are raw bytes percent-encoded in the query, so
the query is decoded as bytes and never passes through text.
"""

from __future__ import annotations

import binascii
import re
import zlib
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

import bencodepy

from wsgi_tracker.core.addresses import split_endpoint
from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STARTED,
    EVENT_STOPPED,
    Announce,
    AnnounceResult,
    ScrapeEntry,
)

EVENTS = {
    b"": EVENT_NONE,
    b"started": EVENT_STARTED,
    b"completed": EVENT_COMPLETED,
    b"stopped": EVENT_STOPPED,
    b"paused": EVENT_NONE,  # BEP 21 partial seed: a regular announce for us
}
MAX_COUNTER = 2**63 - 1  # the UDP wire carries 64-bit counters; HTTP gets the same bound
MAX_VALUE_BYTES = 256  # no legitimate parameter is longer (ipv6 text is 45)
ANNOUNCE_KEYS = frozenset(
    b"info_hash peer_id port uploaded downloaded left event compact no_peer_id "
    b"numwant key trackerid ip ipv4 ipv6 corrupt redundant supportcrypto requirecrypto "
    b"cryptoport".split()
)


_MALFORMED_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _unquote(raw: bytes) -> bytes:
    """Percent-decode to raw bytes (form encoding: '+' is a space).

    Well-formed input goes through ``binascii.a2b_qp`` with '%' turned into
    quoted-printable's '=': one C pass, ~0.3 us against ~3.8 us for
    ``unquote_to_bytes`` on a 20-byte hash, and decoding was the largest cost
    of an announce. The two agree on every well-formed input (a hypothesis
    test checks it); anything with a stray '%' takes the reference path.
    """
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    if b"%" not in raw:
        return raw
    if _MALFORMED_ESCAPE.search(raw):
        return unquote_to_bytes(raw)
    return binascii.a2b_qp(raw.replace(b"=", b"=3D").replace(b"%", b"="))


def _params(query: bytes) -> list[tuple[bytes, bytes]]:
    """(decoded name, still-encoded value) pairs: values are decoded only when used."""
    pairs = []
    for part in query.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        if b"%" in key or b"+" in key:
            key = _unquote(key)
        if len(value) > MAX_VALUE_BYTES * 3:
            raise TrackerError(f"parameter {_show(key)} is too long")
        pairs.append((key, value))
    return pairs


def _show(key: bytes) -> str:
    return key[:32].decode("latin-1")


def _exact20(name: str, value: bytes) -> bytes:
    if len(value) != 20:
        raise TrackerError(f"invalid {name}: expected 20 bytes, got {len(value)}")
    return value


def _integer(name: str, raw: bytes, lo: int, hi: int) -> int:
    if not raw.isdigit():  # plain digits decode to themselves: only the rest is decoded
        raw = _unquote(raw)
    if not raw.isdigit() or len(raw) > 20:
        raise TrackerError(f"invalid {name}: {raw[:24]!r} is not a non-negative integer")
    number = int(raw)
    if not lo <= number <= hi:
        raise TrackerError(f"invalid {name}: {number} is outside {lo}-{hi}")
    return number


def _flag(name: str, raw: bytes) -> bool:
    value = raw if raw in (b"0", b"1") else _unquote(raw)
    if value == b"1":
        return True
    if value == b"0":
        return False
    raise TrackerError(f"invalid {name}: expected 0 or 1, got {value[:24]!r}")


def key_of(raw: bytes | None) -> int:
    """The HTTP ``key`` parameter as the 32 bits the store keeps (0: none).

    BEP 3 leaves the key's form open. libtorrent sends its 32-bit key as eight
    hex digits over HTTP and as the same number in the UDP key field, so eight
    hex digits are read as that number: a client's HTTP and UDP announces then
    prove the same identity. Any other string is reduced by CRC-32: an
    attacker does not know the string, and guessing the 32 bits is all one
    could do either way. A key that maps to 0 counts as none.
    """
    if not raw:
        return 0
    if len(raw) == 8:
        try:
            return int.from_bytes(binascii.unhexlify(raw), "big")
        except binascii.Error:
            pass
    return zlib.crc32(raw)


class AnnounceQuery:
    """An announce's parameters, with what only HTTP knows (compact, no_peer_id)."""

    __slots__ = ("announce", "compact", "no_peer_id")

    def __init__(self, announce: Announce, compact: bool, no_peer_id: bool) -> None:
        self.announce = announce
        self.compact = compact
        self.no_peer_id = no_peer_id


# Long on purpose: one pass over the query and then every field, on every HTTP announce's path.
def parse_announce(query: bytes, passkey: str | None = None) -> AnnounceQuery:
    """Parse a raw announce query string; raises TrackerError naming the bad field.

    One pass keeps each known parameter's value still encoded; a value is
    decoded only when it is used and only when it is not already plain (digits,
    an event name), which is all but the two 20-byte strings. The errors are
    those of decoding everything first: an overlong value anywhere before a
    repeated parameter.
    """
    seen: dict[bytes, bytes] = {}
    repeated = b""
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if len(value) > MAX_VALUE_BYTES * 3:
            raise TrackerError(f"parameter {_show(_unquote(key))} is too long")
        if key not in ANNOUNCE_KEYS:
            if b"%" not in key and b"+" not in key:
                continue
            key = _unquote(key)
            if key not in ANNOUNCE_KEYS:
                continue
        if key in seen:
            repeated = repeated or key
        seen[key] = value
    if repeated:
        raise TrackerError(f"repeated parameter: {_show(repeated)}")
    get = seen.get
    for required in (b"info_hash", b"peer_id", b"port", b"left"):
        if required not in seen:
            raise TrackerError(f"missing parameter: {required.decode()}")
    event_raw = get(b"event", b"")
    event = EVENTS.get(event_raw)
    if event is None:
        event_raw = _unquote(event_raw)
        event = EVENTS.get(event_raw)
        if event is None:
            raise TrackerError(
                f"invalid event: {event_raw[:24]!r} (expected started, completed, stopped)"
            )
    numwant_raw = get(b"numwant")
    ip_raw = get(b"ip") or get(b"ipv4") or get(b"ipv6")
    if ip_raw:
        ip_raw = _unquote(ip_raw)
    key_raw = get(b"key")
    announce = Announce(
        info_hash=_exact20("info_hash", _unquote(seen[b"info_hash"])),
        peer_id=_exact20("peer_id", _unquote(seen[b"peer_id"])),
        port=_integer("port", seen[b"port"], 1, 65535),
        uploaded=_integer("uploaded", get(b"uploaded", b"0"), 0, MAX_COUNTER),
        downloaded=_integer("downloaded", get(b"downloaded", b"0"), 0, MAX_COUNTER),
        left=_integer("left", seen[b"left"], 0, MAX_COUNTER),
        event=event,
        numwant=None if numwant_raw is None else _integer("numwant", numwant_raw, 0, 2**31 - 1),
        ip=ip_raw.decode("latin-1") if ip_raw else None,
        key=key_of(_unquote(key_raw) if key_raw else None),
        passkey=passkey,
    )
    compact_raw = get(b"compact")
    no_peer_id_raw = get(b"no_peer_id")
    return AnnounceQuery(
        announce,
        compact=True if compact_raw is None else _flag("compact", compact_raw),
        no_peer_id=False if no_peer_id_raw is None else _flag("no_peer_id", no_peer_id_raw),
    )


def parse_scrape(query: bytes, max_hashes: int) -> list[bytes]:
    """info_hash values of a scrape (BEP 48: any number, here at most ``max_hashes``).

    An empty list asks for a full scrape, which the tracker may refuse.
    """
    hashes: list[bytes] = []
    for key, value in _params(query):
        if key == b"info_hash":
            hashes.append(_exact20("info_hash", _unquote(value)))
            if len(hashes) > max_hashes:
                raise TrackerError(f"too many info_hash values: at most {max_hashes} per scrape")
    return list(dict.fromkeys(hashes))


def encode_announce(result: AnnounceResult, compact: bool, no_peer_id: bool) -> bytes:
    """The bencoded announce reply.

    The compact form is assembled directly: bencode.py takes ~35 us per reply,
    a fifth of the whole request budget at the benchmark target, and this is
    the reply every modern client asks for. tests/unit/http/test_http_protocol.py checks
    it byte for byte against bencode.py.
    """
    if compact:
        parts = [
            b"d8:completei%de10:incompletei%de8:intervali%de12:min intervali%de5:peers%d:"
            % (
                result.complete,
                result.incomplete,
                result.interval,
                result.min_interval,
                len(result.peers),
            ),
            result.peers,
        ]
        if result.peers6:
            parts += (b"6:peers6%d:" % len(result.peers6), result.peers6)
        parts.append(b"e")
        return b"".join(parts)
    reply: dict[bytes, object] = {
        b"complete": result.complete,
        b"incomplete": result.incomplete,
        b"interval": result.interval,
        b"min interval": result.min_interval,
        b"peers": _peer_dicts(result.peers, 6, result.peer_ids, no_peer_id)
        + _peer_dicts(result.peers6, 18, result.peer_ids6, no_peer_id),
    }
    return bencodepy.encode(reply)


def _peer_dicts(
    packed: bytes, width: int, ids: Sequence[bytes] | None, no_peer_id: bool
) -> list[dict[bytes, object]]:
    out: list[dict[bytes, object]] = []
    for n, off in enumerate(range(0, len(packed), width)):
        ip, port = split_endpoint(packed[off : off + width])
        peer: dict[bytes, object] = {b"ip": ip.encode(), b"port": port}
        if not no_peer_id and ids is not None:
            peer[b"peer id"] = ids[n]
        out.append(peer)
    return out


def encode_scrape(entries: Sequence[ScrapeEntry]) -> bytes:
    files = {
        e.info_hash: {
            b"complete": e.complete,
            b"downloaded": e.downloaded,
            b"incomplete": e.incomplete,
        }
        for e in entries
    }
    return bencodepy.encode({b"files": files})


def encode_failure(reason: str) -> bytes:
    return bencodepy.encode({b"failure reason": reason.encode("utf-8", "replace")})
