"""What the cluster keeps in Redis, sans-IO: key names, stream entries, the snapshot blob.

Nothing here talks to Redis; ``node.py`` is the shell that moves these bytes.

* A stream entry is one batch of a node's changes: fields ``n`` (the node id),
  ``t`` (its wall-clock send time, for lag) and ``f`` (sync frames: Deltas,
  Snapshot, Counts, WsPeers, encoded by ``wsgi_tracker.sync.frames``, the same
  codec as on the Unix socket).
* A node's inbox (``Keys.inbox``) is a stream of the same entries holding
  WsRelay frames only: offers and answers for the sockets that node holds.
* The snapshot is one string: a header (magic, version, the stream position
  it covers, when and by whom it was written) and the zlib-compressed sync
  Snapshot frames of every live peer. Download totals are not in it: they
  live in their own hash, summed by Redis.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from wsgi_tracker.core.types import PeerChange, WsChange
from wsgi_tracker.sync import frames as f

SNAPSHOT_MAGIC = b"WTCS"
SNAPSHOT_VERSION = 1
# magic, version, saved_at, length of the stream id, length of the node id,
# inflated body length, CRC-32 of the compressed body
_SNAPSHOT_HEADER = struct.Struct(">4sBdBBQI")
MAX_SNAPSHOT_INFLATED = 4 << 30  # a header claiming more is damage, not a tracker
# The most one peer takes in a snapshot's frames (a keyed IPv6 record is 72 bytes; each
# frame's header is shared by thousands): a snapshot claiming more than this per peer a
# replica may hold is refused before it is inflated (whoever can write Redis could
# otherwise make every joining node inflate and merge gigabytes).
SNAPSHOT_BYTES_PER_PEER = 80

StreamId = tuple[int, int]
ORIGIN: StreamId = (0, 0)  # before the first entry


class EntryError(ValueError):
    """A stream entry or snapshot blob is not one this version wrote; the message says why."""


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key of one cluster. The ``{name}`` hash tag keeps them in one slot,
    so the publish script (which touches three of them) also runs on Redis Cluster."""

    name: str

    def _key(self, what: str) -> bytes:
        return f"{{{self.name}}}:{what}".encode()

    @property
    def stream(self) -> bytes:
        return self._key("changes")

    @property
    def downloaded(self) -> bytes:
        return self._key("downloaded")

    @property
    def snapshot(self) -> bytes:
        return self._key("snapshot")

    @property
    def snapshot_lease(self) -> bytes:
        return self._key("snapshot-lease")

    @property
    def stats(self) -> bytes:
        return self._key("stats")

    @property
    def epoch(self) -> bytes:
        return self._key("epoch")

    def sequence(self, node: str) -> bytes:
        return self._key(f"seq:{node}")

    def inbox(self, node: str) -> bytes:
        """A node's own stream: WebSocket relays for the sockets its workers hold."""
        return self._key(f"to:{node}")


def parse_id(raw: bytes | str) -> StreamId:
    """``b"1700000000000-3"`` -> (1700000000000, 3): stream ids compare as numbers."""
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
        ms, _, seq = text.partition("-")
        return int(ms), int(seq or 0)
    except ValueError:  # UnicodeDecodeError included
        raise EntryError(f"stream id {raw!r} is not <ms>-<seq>") from None


def format_id(sid: StreamId) -> bytes:
    return f"{sid[0]}-{sid[1]}".encode()


MAX_TOTAL = 2**32 - 1  # what a Counts frame carries (u32)


def total_of(raw: bytes) -> int | None:
    """A download total as read from the totals hash, or None for one no node wrote: the
    same rule as the scripts' ``total_of`` (decimal digits, at most ``MAX_TOTAL``)."""
    if not 0 < len(raw) <= 10 or not raw.isdigit():
        return None
    total = int(raw)
    return total if total <= MAX_TOTAL else None


@dataclass(frozen=True, slots=True)
class Entry:
    """One batch from the stream, its frames not yet decoded."""

    id: StreamId
    node: str
    sent_at: float
    frames: bytes


def encode_batch(
    deltas: list[PeerChange],
    state: list[PeerChange],
    counts: list[tuple[bytes, int]],
    ws: list[WsChange] | None = None,
) -> bytes:
    """The ``f`` field of an entry: announces, re-sent state, download increments,
    WebSocket peers (holders are the author's pids)."""
    return (
        f.encode(f.Deltas(deltas))
        + f.encode(f.Snapshot(state))
        + f.encode(f.Counts(counts))
        + f.encode(f.WsPeers(ws or []))
    )


def decode_entry(raw_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    """An entry as XREAD returns it; EntryError if a field is missing or malformed."""
    try:
        node = fields[b"n"].decode()
        sent_at = float(fields[b"t"])
        body = fields[b"f"]
    except KeyError as exc:
        raise EntryError(f"stream entry {raw_id!r} lacks field {exc.args[0]!r}") from None
    except (UnicodeDecodeError, ValueError):
        raise EntryError(f"stream entry {raw_id!r} has a malformed node or time") from None
    return Entry(parse_id(raw_id), node, sent_at, body)


CHANGE_KINDS = frozenset({f.KIND_DELTAS, f.KIND_SNAPSHOT, f.KIND_COUNTS, f.KIND_WS_PEERS})
RELAY_KINDS = frozenset({f.KIND_WS_RELAY})  # an inbox entry's


def split_frames(
    body: bytes, kinds: frozenset[int] = CHANGE_KINDS
) -> list[tuple[f.RawFrame, f.Frame]]:
    """The sync frames of an entry, as received and decoded; FrameError (a ValueError)
    if any is bad or of a kind other than ``kinds``, before anything of it is applied."""
    decoder = f.FrameDecoder()
    raws = decoder.feed_raw(body)
    decoder.close()
    for raw in raws:
        if raw.kind not in kinds:
            raise f.FrameError(f"frame kind {raw.kind} does not belong in this cluster entry")
    return [(raw, raw.decode()) for raw in raws]


# --- the snapshot --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Every live peer some node held, and the stream position its replica had reached."""

    position: StreamId
    saved_at: float
    node: str
    peers: list[PeerChange]


def encode_snapshot(snap: ClusterSnapshot) -> bytes:
    raw = f.encode(f.Snapshot(snap.peers))
    body = zlib.compress(raw, 6)
    position, node = format_id(snap.position), snap.node.encode()[:255]
    header = _SNAPSHOT_HEADER.pack(
        SNAPSHOT_MAGIC,
        SNAPSHOT_VERSION,
        snap.saved_at,
        len(position),
        len(node),
        len(raw),
        zlib.crc32(body),
    )
    return header + position + node + body


def decode_snapshot(data: bytes, max_peers: int | None = None) -> ClusterSnapshot:
    """The blob's snapshot; EntryError for anything damaged, never a partial state. With
    ``max_peers`` (the reader's bound), one claiming more bytes than that many peers take
    is refused unread."""
    size = _SNAPSHOT_HEADER.size
    if len(data) < size:
        raise EntryError(f"cluster snapshot truncated: {len(data)} of {size} header bytes")
    magic, version, saved_at, id_len, node_len, inflated, crc = _SNAPSHOT_HEADER.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise EntryError(f"not a cluster snapshot (magic {magic!r})")
    if version != SNAPSHOT_VERSION:
        raise EntryError(f"cluster snapshot version {version}; this build reads {SNAPSHOT_VERSION}")
    bound = MAX_SNAPSHOT_INFLATED
    if max_peers is not None:
        bound = min(bound, max(1 << 20, max_peers * SNAPSHOT_BYTES_PER_PEER))
    if inflated > bound:
        raise EntryError(f"cluster snapshot claims {inflated} bytes inflated, past {bound}")
    pos = size + id_len + node_len
    if len(data) < pos:
        raise EntryError("cluster snapshot truncated inside its header")
    position = parse_id(data[size : size + id_len])
    node = data[size + id_len : pos].decode(errors="replace")
    body = data[pos:]
    if zlib.crc32(body) != crc:
        raise EntryError("cluster snapshot checksum mismatch (damaged)")
    try:
        raw = f.inflate_exactly(body, inflated)
    except f.FrameError as exc:
        raise EntryError(f"cluster snapshot: {exc}") from None
    peers: list[PeerChange] = []
    try:
        for frame in f.decode_all(raw):
            if not isinstance(frame, f.Snapshot):
                raise EntryError(f"cluster snapshot holds a {type(frame).__name__} frame")
            peers.extend(frame.peers)
    except f.FrameError as exc:
        raise EntryError(f"cluster snapshot body: {exc}") from None
    return ClusterSnapshot(position, saved_at, node, peers)
