"""The sync wire format, sans-IO: frames to bytes and bytes to frames.

Every frame is ``length (u32, big-endian) | kind (u8) | body``; ``length``
counts the body only and is at most ``MAX_BODY``. Peer records are shared by
snapshots and deltas::

    info_hash (20) | peer_id (20) | timestamp (f64) | flags (u8) | event (u8) | endpoint
    [| key (u32)]

where flags bit 0 is "seeder", bit 1 "IPv6" (an 18-byte endpoint instead of
6) and bit 2 "key": the peer's BEP 3 key follows the endpoint. The key travels
so that every replica can apply the same identity rule (only the key a peer
first sent lets it change address); a record without one is byte for byte a
version 1 record. WebSocket peers (version 3) have no endpoint but a holder, the pid
of the process holding their socket; a relay names the holder it is routed
to::

    ws peer:  info_hash (20) | peer_id (20) | holder (u32) | timestamp (f64) | flags | event
    ws relay: holder (u32) | info_hash (20) | peer_id (20) | JSON text (UTF-8, the rest)

Reports frames (version 4) carry announce accounting to the hub (docs/ACCESS.md), one
record per accepted announce::

    info_hash (20) | peer_id (20) | timestamp (f64) | uploaded (u64) | downloaded (u64)
    | left (u64) | event (u8) | flags (u8) | user kind (u8) | endpoint | user

where flags bit 0 is "IPv6" and bit 1 "came over UDP"; the user is nothing
(kind 0), an i64 (kind 1) or u16-length-prefixed UTF-8 (kind 2). Mark and Ack
(version 5) carry one ``seq (u64)`` each: a client marks a batch of its changes, and
the hub acknowledges the mark once the batch is applied and handed on (read-your-writes,
docs/SYNC.md). Nothing here
touches a socket or a clock: the hub and the client are thin shells that move
these bytes (see docs/SYNC.md for the conversation).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import overload

from wsgi_tracker.core.types import (
    EVENT_STOPPED,
    IPV4_WIDTH,
    IPV6_WIDTH,
    ROW_SEEDER,
    AnnounceReport,
    PeerChange,
    PeerRow,
    WsChange,
    row_change,
)

# 2: peer records may carry the key (flags bit 2). Version 1 records still decode, but a
# version 1 process would refuse the new flag mid-stream, so the Hello tells them apart.
# 3: WebSocket peers and relays (WS_PEERS, WS_RELAY).
# 4: Reports frames (announce accounting, kind 11).
# 5: Mark and Ack (kinds 12, 13): a version 4 hub would refuse a Mark mid-stream, and a
# version 4 client would never get the acks its replies wait for, so the Hello refuses
# any other version rather than letting the two half-work.
VERSION = 5
MAGIC = b"WTSY"
MAX_BODY = 1 << 20
# The store keeps expiry times as doubles (to the microsecond), which would hold any
# time; the bound is a sanity rule where records enter: no announce happens after 2106,
# so a record "from" then is damage or mischief, and refusing it here keeps it out of
# every replica. (When the store kept 32-bit seconds, such a record overflowed it.)
MAX_TIMESTAMP = 2**32 - 2**24
# Peer records per frame: 68-72 bytes each (IPv6 with a key) keeps a frame well under MAX_BODY.
RECORDS_PER_FRAME = 4096
# Report records are at most ~1.1 kB (a 1 kB user id), so 512 fit in MAX_BODY.
REPORTS_PER_FRAME = 512
MAX_USER_BYTES = 1024

ROLE_HUB = 0
ROLE_WORKER = 1
ROLE_TOOL = 2
ROLE_UDP = 3  # a UDP-serving process of udp-sidecar other than the hub's own (udp_processes)
ROLE_NAMES = {ROLE_HUB: "hub", ROLE_WORKER: "worker", ROLE_TOOL: "tool", ROLE_UDP: "udp"}

_HEADER = struct.Struct(">IB")
_HELLO = struct.Struct(">4sHBI")
_PEER = struct.Struct(">20s20sdBB")
_KEY_FIELD = struct.Struct(">I")
_COUNT = struct.Struct(">20sI")
_TOTAL = struct.Struct(">20sQ")
_STATS_ENTRY = struct.Struct(">IBI")
_WS_PEER = struct.Struct(">20s20sIdBB")
_WS_RELAY = struct.Struct(">I20s20s")
_REPORT = struct.Struct(">20s20sdQQQBBB")
_USER_INT = struct.Struct(">q")
_USER_LEN = struct.Struct(">H")
_SEQ = struct.Struct(">Q")

_SEEDER = ROW_SEEDER
_IPV6 = 2
_KEY = 4
# A body whose records are all of one shape (family, key or not) is decoded in one C call:
# for each shape, the whole record and the bytes its flags byte may hold.
_SHAPES = {
    flags: (
        struct.Struct(f">20s20sdBB{width}s{'I' if flags & _KEY else ''}"),
        bytes((flags, flags | _SEEDER)),
    )
    for flags, width in (
        (0, IPV4_WIDTH),
        (_KEY, IPV4_WIDTH),
        (_IPV6, IPV6_WIDTH),
        (_IPV6 | _KEY, IPV6_WIDTH),
    )
}
_FLAGS_AT = _PEER.size - 2
_EVENT_AT = _PEER.size - 1
_NO_KEY = (0,)
_NO_KEY_SIZES = {rec.size for flags, (rec, _) in _SHAPES.items() if not flags & _KEY}
# A timestamp is checked by its big-endian bytes: for doubles of one sign the bit patterns
# order as the values do, and every pattern below this one's (sign bit clear, so no
# negative, NaN or infinity) is a time in [0, MAX_TIMESTAMP). A body checks its records'
# first two bytes against the first two of this, cautiously (anything else: the walk).
_TS_AT = 40
_TS_LIMIT = struct.pack(">d", MAX_TIMESTAMP)
_TIMESTAMP = struct.Struct(">d")


class FrameError(ValueError):
    """The byte stream is not a valid sync conversation; the message says which rule broke."""


def inflate_exactly(body: bytes, length: int) -> bytes:
    """zlib-inflate ``body`` to exactly ``length`` bytes, never more.

    Files of sync frames (the snapshot, the cluster's snapshot) carry their
    inflated length; stopping there means a lying header cannot balloon memory.
    Raises FrameError saying what did not fit.
    """
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(body, max(1, length))
    except zlib.error as exc:
        raise FrameError(f"body does not decompress: {exc}") from None
    if inflater.unconsumed_tail or not inflater.eof or len(raw) != length:
        raise FrameError(f"body does not inflate to the {length} bytes the header says")
    return raw


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each way: who is speaking, and in which protocol version."""

    role: int
    pid: int
    version: int = VERSION


class PeerRecords(Sequence[PeerChange]):
    """A decoded frame's peer records: ``rows`` (``PeerRow`` tuples, what
    ``SwarmStore.merge_many`` takes) for merging in bulk, a PeerChange only when
    one is asked for.

    A PeerChange apiece cost ~0.4 us a record, a third of what merging one may
    cost in all; most records are only merged. A body of one record shape is
    kept as it came (``packed``) and cut into rows only when they are asked for:
    a replica that applies lazily keeps it so (``pending``), filed by each
    record's ``info_hashes``, and cuts a record's ``row`` when its torrent is read.
    """

    __slots__ = ("_body", "_rec", "_rows")

    def __init__(
        self, rows: list[PeerRow] | None, body: bytes = b"", rec: struct.Struct | None = None
    ) -> None:
        self._rows = rows
        self._body = body
        self._rec = rec

    @classmethod
    def packed(cls, body: bytes, rec: struct.Struct) -> PeerRecords:
        """The records of a checked body whose every record is of shape ``rec``."""
        return cls(None, body, rec)

    def joinable(self, other: PeerRecords) -> bool:
        """Whether ``joined`` can put ``other`` behind these: both packed, one shape."""
        return self._rows is None and other._rows is None and self._rec is other._rec

    @classmethod
    def joined(cls, parts: Sequence[PeerRecords]) -> PeerRecords:
        """One run of records from several ``joinable`` bodies, in order: a reader that
        takes the hub's 1 ms batches by the dozen stashes them in one go."""
        rec = parts[0]._rec
        assert rec is not None
        return cls.packed(b"".join([p._body for p in parts]), rec)

    @property
    def rows(self) -> list[PeerRow]:
        rows = self._rows
        if rows is None:
            rec = self._rec
            assert rec is not None
            rows = list(rec.iter_unpack(self._body))
            if rec.size in _NO_KEY_SIZES:
                rows = list(map(tuple.__add__, rows, repeat(_NO_KEY)))  # type: ignore[arg-type]
            self._rows = rows
        return rows

    def pending(self, start: int, stop: int) -> PeerRecords:
        """Records ``start`` to ``stop``, for ``SwarmStore.stash`` to keep as they are: a
        packed body's bytes (the store reads a record's row, ``row``, when it folds it)."""
        rows = self._rows
        if rows is not None:
            return PeerRecords(rows[start:stop])
        rec = self._rec
        assert rec is not None
        size = rec.size
        if start == 0 and stop * size == len(self._body):
            return self
        return PeerRecords.packed(self._body[start * size : stop * size], rec)

    def info_hashes(self) -> list[bytes | None]:
        """Each record's info_hash (a stash files the records by them; it marks the ones
        it applied at once None)."""
        rows = self._rows
        if rows is not None:
            return [row[0] for row in rows]
        rec = self._rec
        assert rec is not None
        body = self._body
        return [body[at : at + 20] for at in range(0, len(body), rec.size)]

    def row(self, index: int) -> PeerRow:
        """Record ``index``'s row, cut from a packed body without cutting the others."""
        rows = self._rows
        if rows is not None:
            return rows[index]
        rec = self._rec
        assert rec is not None
        row = rec.unpack_from(self._body, index * rec.size)
        if rec.size in _NO_KEY_SIZES:
            return row + _NO_KEY  # type: ignore[no-any-return]
        return row  # type: ignore[no-any-return]

    def last_timestamp(self) -> float:
        """The last record's timestamp, without cutting a packed body into rows."""
        rec = self._rec
        if self._rows is None and rec is not None:
            (ts,) = _TIMESTAMP.unpack_from(self._body, len(self._body) - rec.size + _TS_AT)
            return ts  # type: ignore[no-any-return]
        return self.rows[-1][2]

    def __len__(self) -> int:
        rows = self._rows
        if rows is not None:
            return len(rows)
        assert self._rec is not None
        return len(self._body) // self._rec.size

    @overload
    def __getitem__(self, index: int) -> PeerChange: ...
    @overload
    def __getitem__(self, index: slice) -> list[PeerChange]: ...
    def __getitem__(self, index: int | slice) -> PeerChange | list[PeerChange]:
        if isinstance(index, slice):
            return list(map(row_change, self.rows[index]))
        return row_change(self.rows[index])

    def __iter__(self) -> Iterator[PeerChange]:
        return map(row_change, self.rows)

    def __eq__(self, other: object) -> bool:
        # As changes: rows made elsewhere may hold other flag bits for the same change.
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it stands for

    def __repr__(self) -> str:
        return f"PeerRecords({list(self)!r})"


def peer_rows(peers: Sequence[PeerChange]) -> Sequence[PeerRow]:
    """The rows of decoded records, or rows made from any other sequence of changes."""
    if isinstance(peers, PeerRecords):
        return peers.rows
    return [
        (
            p.info_hash,
            p.peer_id,
            p.timestamp,
            _SEEDER if p.seeder else 0,
            p.event,
            p.endpoint,
            p.key,
        )
        for p in peers
    ]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Part of a full state: peers to merge, newest timestamp wins."""

    peers: Sequence[PeerChange]


@dataclass(frozen=True, slots=True)
class Totals:
    """Completed-download totals. Hub to client: the hub's figures (inside a
    snapshot). Client to hub: the totals the client last knew (a claim)."""

    totals: list[tuple[bytes, int]]


@dataclass(frozen=True, slots=True)
class SnapshotDone:
    """Ends a snapshot: everything before it is the sender's state."""


@dataclass(frozen=True, slots=True)
class Deltas:
    """A batch of announces, in the order they happened."""

    peers: Sequence[PeerChange]


@dataclass(frozen=True, slots=True)
class Counts:
    """Completed downloads to add to each torrent's total."""

    counts: list[tuple[bytes, int]]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent when a side has been quiet, so the other can tell quiet from dead."""


@dataclass(frozen=True, slots=True)
class StatsEntry:
    pid: int
    role: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Stats:
    """Opaque counter payloads: a client sends its own, the hub sends everyone's."""

    entries: list[StatsEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WsPeers:
    """WebSocket peers' changes (in a snapshot: their state), in the order they happened."""

    changes: list[WsChange]


@dataclass(frozen=True, slots=True)
class WsRelay:
    """An offer or answer for the peer ``peer_id`` of ``info_hash``, whose socket
    process ``holder`` holds: the hub passes it to that process only."""

    holder: int
    info_hash: bytes
    peer_id: bytes
    text: str


@dataclass(frozen=True, slots=True)
class Reports:
    """Accepted announces with their counters, for the hub's one ledger (client to hub)."""

    reports: list[AnnounceReport]


@dataclass(frozen=True, slots=True)
class Mark:
    """Client to hub, after a batch of its changes: "acknowledge ``seq`` once this is
    applied and handed on". Sequence numbers only grow on one connection."""

    seq: int


@dataclass(frozen=True, slots=True)
class Ack:
    """Hub to the client that sent ``Mark(seq)``: every change before that mark is in the
    hub's replica and in every other joined client's socket (docs/SYNC.md)."""

    seq: int


Frame = (
    Hello
    | Snapshot
    | Totals
    | SnapshotDone
    | Deltas
    | Counts
    | Heartbeat
    | Stats
    | WsPeers
    | WsRelay
    | Reports
    | Mark
    | Ack
)

KIND_HELLO = 1
KIND_SNAPSHOT = 2
KIND_TOTALS = 3
KIND_SNAPSHOT_DONE = 4
KIND_DELTAS = 5
KIND_COUNTS = 6
KIND_HEARTBEAT = 7
KIND_STATS = 8
KIND_WS_PEERS = 9
KIND_WS_RELAY = 10
KIND_REPORTS = 11
KIND_MARK = 12
KIND_ACK = 13

_REPORT_IPV6 = 1
_REPORT_UDP = 2
_USER_NONE, _USER_INT_KIND, _USER_TEXT = 0, 1, 2


# --- encoding ------------------------------------------------------------------------


def _frame(kind: int, body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise FrameError(f"frame body of {len(body)} bytes exceeds {MAX_BODY}")
    return _HEADER.pack(len(body), kind) + body


# Each record in one C call, by its shape: the hub encodes every change it ships.
_PACK_V4, _PACK_V4_KEY, _PACK_V6, _PACK_V6_KEY = (
    _SHAPES[flags][0].pack for flags in (0, _KEY, _IPV6, _IPV6 | _KEY)
)


# A row's fields in a PeerChange's order: rows (a store walk's, a decoded frame's) are
# packed by the same loop, in C, with no PeerChange made per record.
_AS_CHANGE = itemgetter(0, 1, 5, 3, 4, 2, 6)
# What ``_peer_body`` reads: a PeerChange, or a row in a PeerChange's order, whose seeder
# field is then the row's flags (an int; the compiled build checks what it is told).
_ChangeFields = tuple[bytes, bytes, bytes, int, int, float, int]


def _peer_body(peers: Iterable[_ChangeFields]) -> bytes:
    """The records of ``peers``, or of rows given as ``map(_AS_CHANGE, rows)``: the
    seeder field may then be a row's flags, of which only the seeder bit is read."""
    parts: list[bytes] = []
    append = parts.append
    for ih, pid, ep, seeder, event, ts, key in peers:
        flags = seeder & _SEEDER
        if len(ep) == IPV6_WIDTH:
            if key:
                append(_PACK_V6_KEY(ih, pid, ts, flags | _IPV6 | _KEY, event, ep, key))
            else:
                append(_PACK_V6(ih, pid, ts, flags | _IPV6, event, ep))
        elif key:
            append(_PACK_V4_KEY(ih, pid, ts, flags | _KEY, event, ep, key))
        else:
            append(_PACK_V4(ih, pid, ts, flags, event, ep))
    return b"".join(parts)


def _peer_frames(kind: int, peers: Sequence[PeerChange]) -> bytes:
    if not peers:
        return b""
    step = RECORDS_PER_FRAME
    if isinstance(peers, PeerRecords):
        rows = peers.rows
        return b"".join(
            _frame(kind, _peer_body(map(_AS_CHANGE, rows[i : i + step])))
            for i in range(0, len(rows), step)
        )
    return b"".join(
        _frame(kind, _peer_body(peers[i : i + step])) for i in range(0, len(peers), step)
    )


def _pair_frames(kind: int, rec: struct.Struct, pairs: list[tuple[bytes, int]]) -> bytes:
    step = MAX_BODY // rec.size
    return b"".join(
        _frame(kind, b"".join(rec.pack(ih, n) for ih, n in pairs[i : i + step]))
        for i in range(0, len(pairs), step)
    )


def _ws_peer_frames(changes: list[WsChange]) -> bytes:
    pack = _WS_PEER.pack
    step = MAX_BODY // _WS_PEER.size
    return b"".join(
        _frame(
            KIND_WS_PEERS,
            b"".join(
                pack(c.info_hash, c.peer_id, c.holder, c.timestamp, c.seeder, c.event)
                for c in changes[i : i + step]
            ),
        )
        for i in range(0, len(changes), step)
    )


def encode(frame: Frame) -> bytes:
    """The bytes of one frame; peer, count and total lists split into several as needed."""
    match frame:
        case Hello(role, pid, version):
            return _frame(KIND_HELLO, _HELLO.pack(MAGIC, version, role, pid))
        case Snapshot(peers):
            return _peer_frames(KIND_SNAPSHOT, peers)
        case Deltas(peers):
            return _peer_frames(KIND_DELTAS, peers)
        case Totals(totals):
            return _pair_frames(KIND_TOTALS, _TOTAL, totals)
        case Counts(counts):
            return _pair_frames(KIND_COUNTS, _COUNT, counts)
        case SnapshotDone():
            return _frame(KIND_SNAPSHOT_DONE, b"")
        case Heartbeat():
            return _frame(KIND_HEARTBEAT, b"")
        case Reports(reports):
            step = REPORTS_PER_FRAME
            return b"".join(
                _frame(KIND_REPORTS, b"".join(map(_report_record, reports[i : i + step])))
                for i in range(0, len(reports), step)
            )
        case Stats(entries):
            return _frame(
                KIND_STATS,
                b"".join(
                    _STATS_ENTRY.pack(e.pid, e.role, len(e.payload)) + e.payload for e in entries
                ),
            )
        case WsPeers(changes):
            return _ws_peer_frames(changes)
        case Mark(seq):
            return _frame(KIND_MARK, _SEQ.pack(seq))
        case Ack(seq):
            return _frame(KIND_ACK, _SEQ.pack(seq))
        case WsRelay(holder, info_hash, peer_id, text):
            return _frame(KIND_WS_RELAY, _WS_RELAY.pack(holder, info_hash, peer_id) + text.encode())
    raise TypeError(f"not a sync frame: {frame!r}")


# --- decoding ------------------------------------------------------------------------


def _decode_hello(body: bytes) -> Hello:
    if len(body) != _HELLO.size:
        raise FrameError(f"hello frame is {len(body)} bytes, expected {_HELLO.size}")
    magic, version, role, pid = _HELLO.unpack(body)
    if magic != MAGIC:
        raise FrameError(f"hello magic is {magic!r}, expected {MAGIC!r}: not a wsgi-tracker peer")
    if role not in ROLE_NAMES:
        raise FrameError(f"hello role is {role}, expected one of {sorted(ROLE_NAMES)}")
    if version != VERSION:
        raise FrameError(
            f"sync peer pid {pid} ({ROLE_NAMES[role]}) speaks protocol version {version}, "
            f"this process speaks {VERSION}: run the same wsgi-tracker release everywhere"
        )
    return Hello(role, pid, version)


def _decode_peers(body: bytes) -> PeerRecords:
    """The records of a Snapshot or Deltas body.

    A body of one record shape (the usual: one process's announces) is checked
    a column at a time and kept whole (``PeerRecords.packed``: rows are cut in
    one ``iter_unpack`` when asked for). That its flags bytes, read at the fixed
    stride, all say the same shape is exactly what the record-by-record walk
    would find; events are checked by their bytes, and timestamps by their
    first two bytes (``_TS_LIMIT``), so the result is the walk's. Anything else
    (mixed shapes, a time the byte check cannot clear, or a rule broken, for the
    walk's message) takes the walk.
    """
    if len(body) > _FLAGS_AT:
        shape = _SHAPES.get(body[_FLAGS_AT] & ~_SEEDER)
        if shape is not None:
            rec, flags = shape
            size = rec.size
            if (
                not len(body) % size
                and not body[_FLAGS_AT::size].translate(None, flags)
                and max(body[_EVENT_AT::size]) <= EVENT_STOPPED
                and _times_fit(body[_TS_AT::size], body[_TS_AT + 1 :: size])
                and (not body[_FLAGS_AT] & _KEY or _keys_set(body, rec))
            ):
                return PeerRecords.packed(body, rec)
    return PeerRecords(_walk_peers(body))


def _times_fit(tops: bytes, seconds: bytes) -> bool:
    """Whether timestamps whose first bytes are ``tops`` and second bytes ``seconds``
    are all below ``_TS_LIMIT`` (so in [0, MAX_TIMESTAMP)); False may still be fine."""
    top, second = _TS_LIMIT[0], _TS_LIMIT[1]
    high = max(tops)
    if high < top:
        return True
    return high == top == min(tops) and max(seconds) < second


def _keys_set(body: bytes, rec: struct.Struct) -> bool:
    """Whether no record of a one-shape keyed body has a zero key (0 means none): the
    key's four bytes, a column each, OR-ed together bytewise, hold no zero."""
    size = rec.size
    either = 0
    for at in range(size - 4, size):
        either |= int.from_bytes(body[at::size], "big")
    return 0 not in either.to_bytes(len(body) // size, "big")


def _walk_peers(body: bytes) -> list[PeerRow]:
    out: list[PeerRow] = []
    unpack = _PEER.unpack_from
    size = _PEER.size
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < size:
            raise FrameError(f"peer record truncated at byte {pos} of {end}")
        ih, pid, ts, flags, event = unpack(body, pos)
        pos += size
        width = IPV6_WIDTH if flags & _IPV6 else IPV4_WIDTH
        if flags & ~(_SEEDER | _IPV6 | _KEY):
            raise FrameError(f"peer record flags {flags:#x} has unknown bits")
        if event > EVENT_STOPPED:
            raise FrameError(f"peer record event {event} is not 0-3")
        if not math.isfinite(ts) or not 0 <= ts < MAX_TIMESTAMP:
            raise FrameError(f"peer record timestamp {ts} is not a time")
        if end - pos < width:
            raise FrameError(f"peer endpoint truncated at byte {pos} of {end}")
        ep = body[pos : pos + width]
        pos += width
        key = 0
        if flags & _KEY:
            if end - pos < 4:
                raise FrameError(f"peer key truncated at byte {pos} of {end}")
            (key,) = _KEY_FIELD.unpack_from(body, pos)
            pos += 4
            if not key:
                raise FrameError("peer record has the key flag and a zero key (0 means none)")
        out.append((ih, pid, ts, flags, event, ep, key))
    return out


def _decode_pairs(body: bytes, rec: struct.Struct, what: str) -> list[tuple[bytes, int]]:
    if len(body) % rec.size:
        raise FrameError(f"{what} frame of {len(body)} bytes is not a multiple of {rec.size}")
    return list(rec.iter_unpack(body))


def user_on_the_wire(user: object) -> int | str | None:
    """The user id as it crosses processes: None, an int that fits i64, else text."""
    if user is None or (isinstance(user, int) and -(2**63) <= user < 2**63):
        return user  # type: ignore[return-value]
    return user if isinstance(user, str) else str(user)


def fits_the_wire(user: object) -> bool:
    """Whether a report for ``user`` can be sent (its id as text is not too long)."""
    wire = user_on_the_wire(user)
    return not isinstance(wire, str) or len(wire.encode("utf-8", "surrogatepass")) <= MAX_USER_BYTES


def _report_record(r: AnnounceReport) -> bytes:
    user = user_on_the_wire(r.user)
    if user is None:
        kind, tail = _USER_NONE, b""
    elif isinstance(user, int):
        kind, tail = _USER_INT_KIND, _USER_INT.pack(user)
    else:
        text = user.encode("utf-8", "surrogatepass")
        if len(text) > MAX_USER_BYTES:
            raise FrameError(f"user id of {len(text)} bytes exceeds {MAX_USER_BYTES}")
        kind, tail = _USER_TEXT, _USER_LEN.pack(len(text)) + text
    flags = (_REPORT_IPV6 if len(r.endpoint) == IPV6_WIDTH else 0) | (
        _REPORT_UDP if r.protocol == "udp" else 0
    )
    head = _REPORT.pack(
        r.info_hash, r.peer_id, r.timestamp, r.uploaded, r.downloaded, r.left, r.event, flags, kind
    )
    return head + r.endpoint + tail


def _decode_reports(body: bytes) -> Reports:
    out: list[AnnounceReport] = []
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < _REPORT.size:
            raise FrameError(f"report record truncated at byte {pos} of {end}")
        ih, pid, ts, up, down, left, event, flags, kind = _REPORT.unpack_from(body, pos)
        pos += _REPORT.size
        if flags & ~(_REPORT_IPV6 | _REPORT_UDP):
            raise FrameError(f"report record flags {flags:#x} has unknown bits")
        if event > EVENT_STOPPED:
            raise FrameError(f"report record event {event} is not 0-3")
        if not math.isfinite(ts) or not 0 <= ts < MAX_TIMESTAMP:
            raise FrameError(f"report record timestamp {ts} is not a time")
        width = IPV6_WIDTH if flags & _REPORT_IPV6 else IPV4_WIDTH
        if end - pos < width:
            raise FrameError(f"report endpoint truncated at byte {pos} of {end}")
        ep = body[pos : pos + width]
        pos += width
        user: int | str | None = None
        if kind == _USER_INT_KIND:
            if end - pos < _USER_INT.size:
                raise FrameError(f"report user id truncated at byte {pos} of {end}")
            (user,) = _USER_INT.unpack_from(body, pos)
            pos += _USER_INT.size
        elif kind == _USER_TEXT:
            if end - pos < _USER_LEN.size:
                raise FrameError(f"report user id truncated at byte {pos} of {end}")
            (size,) = _USER_LEN.unpack_from(body, pos)
            pos += _USER_LEN.size
            if size > MAX_USER_BYTES or end - pos < size:
                raise FrameError(f"report user id of {size} bytes truncated or too long")
            try:
                user = body[pos : pos + size].decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                raise FrameError("report user id is not UTF-8") from None
            pos += size
        elif kind != _USER_NONE:
            raise FrameError(f"report user kind {kind} is not 0-2")
        protocol = "udp" if flags & _REPORT_UDP else "http"
        out.append(AnnounceReport(ih, pid, user, ep, protocol, up, down, left, event, ts))
    return Reports(out)


def _decode_stats(body: bytes) -> Stats:
    entries: list[StatsEntry] = []
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < _STATS_ENTRY.size:
            raise FrameError(f"stats entry truncated at byte {pos} of {end}")
        pid, role, size = _STATS_ENTRY.unpack_from(body, pos)
        pos += _STATS_ENTRY.size
        if end - pos < size:
            raise FrameError(f"stats payload of {size} bytes truncated at byte {pos} of {end}")
        entries.append(StatsEntry(pid, role, body[pos : pos + size]))
        pos += size
    return Stats(entries)


def _decode_ws_peers(body: bytes) -> WsPeers:
    if len(body) % _WS_PEER.size:
        raise FrameError(
            f"ws peers frame of {len(body)} bytes is not a multiple of {_WS_PEER.size}"
        )
    changes = []
    for ih, peer_id, holder, ts, flags, event in _WS_PEER.iter_unpack(body):
        if flags & ~_SEEDER:
            raise FrameError(f"ws peer record flags {flags:#x} has unknown bits")
        if event > EVENT_STOPPED:
            raise FrameError(f"ws peer record event {event} is not 0-3")
        if not math.isfinite(ts) or not 0 <= ts < MAX_TIMESTAMP:
            raise FrameError(f"ws peer record timestamp {ts} is not a time")
        changes.append(WsChange(ih, peer_id, holder, bool(flags), event, ts))
    return WsPeers(changes)


def _decode_ws_relay(body: bytes) -> WsRelay:
    if len(body) < _WS_RELAY.size:
        raise FrameError(f"ws relay frame of {len(body)} bytes is shorter than {_WS_RELAY.size}")
    holder, ih, peer_id = _WS_RELAY.unpack_from(body)
    try:
        text = body[_WS_RELAY.size :].decode()
    except UnicodeDecodeError as exc:
        raise FrameError(f"ws relay text is not UTF-8 at byte {exc.start}") from None
    return WsRelay(holder, ih, peer_id, text)


def _seq(kind: type[Mark] | type[Ack], name: str):  # type: ignore[no-untyped-def]
    def decode(body: bytes) -> Frame:
        if len(body) != _SEQ.size:
            raise FrameError(f"{name} frame is {len(body)} bytes, expected {_SEQ.size}")
        return kind(_SEQ.unpack(body)[0])

    return decode


def _empty(frame: Frame, name: str):  # type: ignore[no-untyped-def]
    def decode(body: bytes) -> Frame:
        if body:
            raise FrameError(f"{name} frame must be empty, got {len(body)} bytes")
        return frame

    return decode


_DECODERS = {
    KIND_HELLO: _decode_hello,
    KIND_SNAPSHOT: lambda body: Snapshot(_decode_peers(body)),
    KIND_TOTALS: lambda body: Totals(_decode_pairs(body, _TOTAL, "totals")),
    KIND_SNAPSHOT_DONE: _empty(SnapshotDone(), "snapshot-done"),
    KIND_DELTAS: lambda body: Deltas(_decode_peers(body)),
    KIND_COUNTS: lambda body: Counts(_decode_pairs(body, _COUNT, "counts")),
    KIND_HEARTBEAT: _empty(Heartbeat(), "heartbeat"),
    KIND_STATS: _decode_stats,
    KIND_WS_PEERS: _decode_ws_peers,
    KIND_WS_RELAY: _decode_ws_relay,
    KIND_REPORTS: _decode_reports,
    KIND_MARK: _seq(Mark, "mark"),
    KIND_ACK: _seq(Ack, "ack"),
}


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame as received: the hub forwards ``wire`` untouched to the other clients."""

    kind: int
    wire: bytes

    def decode(self) -> Frame:
        return _DECODERS[self.kind](self.wire[_HEADER.size :])


class FrameDecoder:
    """Incremental: feed whatever the socket gave, get back every frame now complete."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self.max_body = max_body
        self._buf = bytearray()

    def feed_raw(self, data: bytes) -> list[RawFrame]:
        """Split off complete frames, checking length and kind but not the body."""
        buf = self._buf
        buf += data
        out: list[RawFrame] = []
        pos = 0
        head = _HEADER.size
        while len(buf) - pos >= head:
            length, kind = _HEADER.unpack_from(buf, pos)
            if length > self.max_body:
                raise FrameError(f"frame length {length} exceeds the limit of {self.max_body}")
            if kind not in _DECODERS:
                raise FrameError(f"unknown frame kind {kind}")
            if len(buf) - pos < head + length:
                break
            out.append(RawFrame(kind, bytes(buf[pos : pos + head + length])))
            pos += head + length
        del buf[:pos]
        return out

    def feed(self, data: bytes) -> list[Frame]:
        return [raw.decode() for raw in self.feed_raw(data)]

    def feed_joined(self, data: bytes) -> list[Frame]:
        """``feed``, with each run of Deltas frames whose records are of one shape
        decoded as one Deltas (their records in order): a reader that takes the hub's
        1 ms batches by the hundred checks and files each run once, not each batch."""
        out: list[Frame] = []
        run: list[bytes] = []
        shape = -1
        head = _HEADER.size
        for raw in self.feed_raw(data):
            wire = raw.wire
            joins = raw.kind == KIND_DELTAS and len(wire) > head + _FLAGS_AT
            flags = wire[head + _FLAGS_AT] & ~_SEEDER if joins else -1
            if run and flags != shape:  # another shape, or no Deltas: the run ends
                out.append(Deltas(_decode_peers(b"".join(run))))
                run = []
            if joins:
                run.append(wire[head:])
                shape = flags
            else:
                out.append(raw.decode())
        if run:
            out.append(Deltas(_decode_peers(b"".join(run))))
        return out

    def close(self) -> None:
        """The stream ended: bytes left over mean the last frame was cut short."""
        if self._buf:
            raise FrameError(f"stream ended inside a frame ({len(self._buf)} bytes left over)")


def decode_all(data: bytes) -> list[Frame]:
    """Every frame in a complete byte string (tests and tools)."""
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    decoder.close()
    return frames
