"""The first release's snapshot format (version 1), read so that an upgrade keeps its counts.

Only read, never written: the next save writes the current format. Kept apart
from ``snapshot`` so the living format reads without the old one in the way.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

from wsgi_tracker.core.types import EVENT_NONE, PeerChange
from wsgi_tracker.sync.frames import MAX_TIMESTAMP

V1State = tuple[float, dict[bytes, int], list[PeerChange]]

# Version 1, the first release's own record format, is still read so that an upgrade keeps
# the completed counts (the next save writes version 2). Header: magic, version, pad,
# saved_at, body length, inflated length, CRC; body: counters, then IPv4 and IPv6 peers,
# each section a u32 count of fixed-size records.
V1_HEADER = struct.Struct(">4sBxxxdQQI")
V1_COUNT = struct.Struct(">I")
V1_RECORDS = (
    (struct.Struct(">20sQ"), "counters"),
    (struct.Struct(">20s20sB6sd"), "IPv4 peers"),
    (struct.Struct(">20s20sB18sd"), "IPv6 peers"),
)


def decode(data: bytes, inflate: Callable[[bytes, int], bytes]) -> V1State:
    """(saved_at, downloaded, peers) of a version-1 file; damage raises ValueError."""
    if len(data) < V1_HEADER.size:
        raise ValueError(f"truncated header: {len(data)} of {V1_HEADER.size} bytes")
    _, _, saved_at, length, raw_length, crc = V1_HEADER.unpack_from(data)
    body = data[V1_HEADER.size :]
    if len(body) != length:
        raise ValueError(f"body is {len(body)} bytes, header says {length} (truncated?)")
    if zlib.crc32(body, zlib.crc32(data[: V1_HEADER.size - 4] + bytes(4))) != crc:
        raise ValueError("body checksum mismatch (file damaged)")
    raw = inflate(body, raw_length)
    sections: list[list[tuple[Any, ...]]] = []
    pos = 0
    for record, name in V1_RECORDS:
        if len(raw) - pos < V1_COUNT.size:
            raise ValueError(f"{name}: missing record count")
        (count,) = V1_COUNT.unpack_from(raw, pos)
        end = pos + V1_COUNT.size + count * record.size
        if end > len(raw):
            raise ValueError(f"{name}: {count} records do not fit in the file")
        sections.append(list(record.iter_unpack(raw[pos + V1_COUNT.size : end])))
        pos = end
    if pos != len(raw):
        raise ValueError(f"{len(raw) - pos} stray bytes after the last section")
    peers = []
    for ih, pid, seeder, ep, seen in sections[1] + sections[2]:
        if seeder > 1 or not 0 <= seen < MAX_TIMESTAMP:  # also refuses NaN
            raise ValueError(f"peer {pid!r}: seeder flag {seeder} or time {seen} is invalid")
        peers.append(PeerChange(ih, pid, ep, bool(seeder), EVENT_NONE, seen))
    return saved_at, dict(sections[0]), peers
