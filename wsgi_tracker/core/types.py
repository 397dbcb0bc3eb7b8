"""The values every layer exchanges: requests, results and changes, depending on nothing.

The codecs (HTTP, UDP, sync) turn bytes into these and back; the core takes and
returns them. Keeping them here, apart from the policy, lets a codec import its
types without loading the tracker.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

# Announce events; the numbers are BEP 15's, so UDP needs no translation.
EVENT_NONE = 0
EVENT_COMPLETED = 1
EVENT_STARTED = 2
EVENT_STOPPED = 3

IPV4_WIDTH = 6  # 4-byte address + 2-byte port
IPV6_WIDTH = 18  # 16-byte address + 2-byte port


# The dataclasses built per request write their ``__init__`` out: mypyc compiles the
# methods a class body defines, but the ``__init__`` that @dataclass generates at import
# runs interpreted (0.24 us to build an ``Announce`` against 0.09 us written out), and
# three such objects a UDP announce were ~10% of udp-sidecar's CPU in py-spy. @dataclass
# keeps a class's own ``__init__`` and still gives ``__eq__`` and ``__repr__``.
@dataclass(slots=True)
class Announce:
    """One announce, whatever protocol carried it."""

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int = 0
    downloaded: int = 0
    left: int = 0
    event: int = 0
    numwant: int | None = None  # None: the configured default
    ip: str | None = None  # the client's claimed address; used only if allowed
    key: int = 0  # the BEP 3 key as 32 bits, 0 for none (``http.codec`` says how HTTP's reads)
    passkey: str | None = None

    def __init__(
        self,
        info_hash: bytes,
        peer_id: bytes,
        port: int,
        uploaded: int = 0,
        downloaded: int = 0,
        left: int = 0,
        event: int = 0,
        numwant: int | None = None,
        ip: str | None = None,
        key: int = 0,
        passkey: str | None = None,
    ) -> None:  # compiled, unlike the one @dataclass writes (core/types.py)
        self.info_hash = info_hash
        self.peer_id = peer_id
        self.port = port
        self.uploaded = uploaded
        self.downloaded = downloaded
        self.left = left
        self.event = event
        self.numwant = numwant
        self.ip = ip
        self.key = key
        self.passkey = passkey


@dataclass(slots=True)
class AnnounceResult:
    interval: int
    min_interval: int
    complete: int
    incomplete: int
    peers: bytes = b""  # compact IPv4 entries, 6 bytes each
    peers6: bytes = b""  # compact IPv6 entries, 18 bytes each
    peer_ids: list[bytes] | None = None  # parallel to ``peers`` when asked for
    peer_ids6: list[bytes] | None = None

    def __init__(
        self,
        interval: int,
        min_interval: int,
        complete: int,
        incomplete: int,
        peers: bytes = b"",
        peers6: bytes = b"",
        peer_ids: list[bytes] | None = None,
        peer_ids6: list[bytes] | None = None,
    ) -> None:  # compiled, unlike the one @dataclass writes (core/types.py)
        self.interval = interval
        self.min_interval = min_interval
        self.complete = complete
        self.incomplete = incomplete
        self.peers = peers
        self.peers6 = peers6
        self.peer_ids = peer_ids
        self.peer_ids6 = peer_ids6


@dataclass(frozen=True, slots=True)
class ScrapeEntry:
    info_hash: bytes
    complete: int
    downloaded: int
    incomplete: int


class PeerChange(NamedTuple):
    """What one announce did to the store; also the unit of sync (a delta).

    A NamedTuple rather than a frozen dataclass: one is built per announce,
    and a frozen dataclass costs ~4x as much to construct.
    """

    info_hash: bytes
    peer_id: bytes
    endpoint: bytes
    seeder: bool
    event: int
    timestamp: float
    # The BEP 3 ``key`` as 32 bits (0: none sent), what lets a peer prove it is the same
    # client from another address (``SwarmStore._move``); never handed to other peers.
    key: int = 0


# A peer change in bulk, as the sync codec decodes a frame of them (``sync/frames.py``) without
# a PeerChange apiece: (info_hash, peer_id, timestamp, flags, event, endpoint, key), the wire's
# order. Of the flags only ``ROW_SEEDER`` means anything off the wire (the rest follow from the
# endpoint's width and the key). ``SwarmStore.merge_many`` takes these.
PeerRow = tuple[bytes, bytes, float, int, int, bytes, int]
ROW_SEEDER = 1


def row_change(row: PeerRow) -> PeerChange:
    """The PeerChange a row stands for."""
    ih, pid, ts, flags, event, endpoint, key = row
    return PeerChange(ih, pid, endpoint, bool(flags & ROW_SEEDER), event, ts, key)


class WsChange(NamedTuple):
    """What one WebSocket announce (or a closed socket) did; the unit of sync."""

    info_hash: bytes
    peer_id: bytes
    holder: int  # pid of the process holding the peer's socket
    seeder: bool
    event: int
    timestamp: float


@dataclass(frozen=True, slots=True)
class AnnounceReport:
    """One accepted announce as the admitting process saw it.

    ``core/accounting.py`` turns these into the hook's events; with sync on,
    workers send them to the hub in Reports frames (``sync/frames.py``).
    """

    info_hash: bytes
    peer_id: bytes
    user: Hashable  # str, int or None once it has crossed a process boundary
    endpoint: bytes  # packed address + port, 6 or 18 bytes
    protocol: str  # "http" or "udp"
    uploaded: int
    downloaded: int
    left: int
    event: int
    timestamp: float
