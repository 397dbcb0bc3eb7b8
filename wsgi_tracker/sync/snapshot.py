"""The sidecar's on-disk snapshot: every live peer and every completed-download counter.

A restart (a deploy, a crash) must not lose the swarms or the counters, which
the tracker cannot learn back from clients. The format is our own and
boring on purpose: never pickle (a file on disk must not be able to run code).

Layout: a fixed header ``WTSN``, format version, time saved, compressed and
inflated lengths and a CRC-32 of header and body; the body is zlib-compressed and
holds three sections, each a record count followed by fixed-width records, so
decoding is a bounds check and ``struct.iter_unpack``:

* counters: info_hash, downloaded
* IPv4 peers: info_hash, peer_id, seeder flag, compact endpoint (6 bytes), last seen
* IPv6 peers: the same with an 18-byte endpoint

``encode``/``decode`` are pure functions over bytes; ``save``/``load`` are the
thin file shell, and ``PeriodicSaver`` the sidecar's timer around them.
``save`` writes a temporary file in the same directory, fsyncs it and renames
it over the old one, so a crash mid-write leaves the previous snapshot whole.
``load`` never raises for a bad file: it logs one line and the sidecar starts
empty rather than not at all.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import gevent.event

from wsgi_tracker.core.swarm import PeerRefused, SwarmStore
from wsgi_tracker.core.types import EVENT_NONE, IPV4_WIDTH, IPV6_WIDTH, PeerChange
from wsgi_tracker.sync.frames import MAX_TIMESTAMP

log = logging.getLogger("wsgi_tracker.sync.snapshot")

MAGIC = b"WTSN"
VERSION = 1
# magic, version, pad, saved_at, body length, inflated length, CRC-32 of header + body
HEADER = struct.Struct(">4sBxxxdQQI")
COUNT = struct.Struct(">I")
PAUSE_EVERY = 256  # torrents copied between pauses while capturing
COUNTER = struct.Struct(">20sQ")
PEER4 = struct.Struct(f">20s20sB{IPV4_WIDTH}sd")
PEER6 = struct.Struct(f">20s20sB{IPV6_WIDTH}sd")


class SnapshotError(ValueError):
    """The bytes are not a snapshot this version can read; the message says where."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Swarm state at one moment: counters per torrent and every peer as a change."""

    saved_at: float
    downloaded: dict[bytes, int] = field(default_factory=dict)
    peers: list[PeerChange] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What ``load`` restored, for the start-up log line and for tests."""

    peers: int
    expired: int
    refused: int
    counters: int
    saved_at: float


def encode(snapshot: Snapshot) -> bytes:
    """The file's bytes. Raises SnapshotError for a field a record cannot hold."""
    v4: list[bytes] = []
    v6: list[bytes] = []
    try:
        if any(len(ih) != 20 for ih in snapshot.downloaded):
            raise SnapshotError("counter keys must be 20-byte info_hashes")
        counters = [COUNTER.pack(ih, n) for ih, n in snapshot.downloaded.items() if n]
        for p in snapshot.peers:
            if len(p.info_hash) != 20 or len(p.peer_id) != 20:
                # struct would silently pad or cut them; a changed id is a different peer.
                raise SnapshotError(f"peer {p.peer_id[:24]!r}: ids must be 20 bytes")
            if len(p.endpoint) == IPV4_WIDTH:
                v4.append(PEER4.pack(p.info_hash, p.peer_id, p.seeder, p.endpoint, p.timestamp))
            elif len(p.endpoint) == IPV6_WIDTH:
                v6.append(PEER6.pack(p.info_hash, p.peer_id, p.seeder, p.endpoint, p.timestamp))
            else:
                raise SnapshotError(f"peer endpoint of {len(p.endpoint)} bytes (expected 6 or 18)")
    except struct.error as exc:
        raise SnapshotError(f"record does not fit the snapshot format: {exc}") from None
    raw = b"".join(
        [COUNT.pack(len(counters)), *counters, COUNT.pack(len(v4)), *v4, COUNT.pack(len(v6)), *v6]
    )
    body = zlib.compress(raw, 6)
    fields = (MAGIC, VERSION, snapshot.saved_at, len(body), len(raw))
    crc = zlib.crc32(body, zlib.crc32(HEADER.pack(*fields, 0)))
    return HEADER.pack(*fields, crc) + body


def decode(data: bytes) -> Snapshot:
    """Parse a snapshot file's bytes; any damage raises SnapshotError, nothing else."""
    if len(data) < HEADER.size:
        raise SnapshotError(f"truncated header: {len(data)} of {HEADER.size} bytes")
    magic, version, saved_at, length, raw_length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"not a wsgi-tracker snapshot (magic {magic!r})")
    if version != VERSION:
        raise SnapshotError(f"snapshot format version {version}; this build reads {VERSION}")
    body = data[HEADER.size :]
    if len(body) != length:
        raise SnapshotError(f"body is {len(body)} bytes, header says {length} (truncated?)")
    if zlib.crc32(body, zlib.crc32(data[: HEADER.size - 4] + bytes(4))) != crc:
        raise SnapshotError("body checksum mismatch (file damaged)")
    raw = _inflate(body, raw_length)
    downloaded: dict[bytes, int] = {}
    peers: list[PeerChange] = []
    pos = 0
    rows, pos = _section(raw, pos, COUNTER, "counters")
    for ih, n in rows:
        downloaded[ih] = n
    for rec, name in ((PEER4, "IPv4 peers"), (PEER6, "IPv6 peers")):
        rows, pos = _section(raw, pos, rec, name)
        for ih, pid, seeder, ep, seen in rows:
            if seeder > 1:
                raise SnapshotError(f"{name}: seeder flag {seeder} is not 0 or 1")
            if not 0 <= seen < MAX_TIMESTAMP:  # also refuses NaN
                raise SnapshotError(f"{name}: last-seen time {seen} is not a time")
            peers.append(PeerChange(ih, pid, ep, bool(seeder), EVENT_NONE, seen))
    if pos != len(raw):
        raise SnapshotError(f"{len(raw) - pos} stray bytes after the last section")
    return Snapshot(saved_at, downloaded, peers)


def _inflate(body: bytes, length: int) -> bytes:
    """Inflate to exactly ``length`` bytes; never more, so a bad header cannot balloon memory."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(body, max(1, length))
    except zlib.error as exc:
        raise SnapshotError(f"body does not decompress: {exc}") from None
    if inflater.unconsumed_tail or not inflater.eof or len(raw) != length:
        raise SnapshotError(f"body does not inflate to the {length} bytes the header says")
    return raw


def _section(raw: bytes, pos: int, record: struct.Struct, name: str) -> tuple[list[tuple], int]:
    if len(raw) - pos < COUNT.size:
        raise SnapshotError(f"{name}: missing record count")
    (count,) = COUNT.unpack_from(raw, pos)
    pos += COUNT.size
    end = pos + count * record.size
    if end > len(raw):
        raise SnapshotError(f"{name}: {count} records do not fit in the file")
    return list(record.iter_unpack(raw[pos:end])), end


def capture(
    store: SwarmStore,
    now: float,
    pause: Callable[[], None] | None = None,
    every: int = PAUSE_EVERY,
) -> Snapshot:
    """The store's live state as a Snapshot, torrent by torrent.

    Call it from the thread that owns the store. ``pause`` (if given) runs
    after every ``every`` torrents, so the sidecar's other greenlets keep
    serving while a large store is copied; each torrent is copied whole.
    """
    downloaded: dict[bytes, int] = {}
    peers: list[PeerChange] = []
    for n, ih in enumerate(list(store.torrents.keys()), 1):
        peers.extend(store.swarm_peers(ih))
        swarm = store.peek(ih)  # a snapshot is not a use: the eviction order stays
        if swarm is not None and swarm.downloaded:
            downloaded[ih] = swarm.downloaded
        if pause is not None and n % every == 0:
            pause()
    return Snapshot(now, downloaded, peers)


def save(store: SwarmStore, path: str | os.PathLike[str], now: float | None = None) -> int:
    """Write the store atomically to ``path``; returns the bytes written.

    Raises OSError if the file cannot be written; the old snapshot is untouched then.
    """
    return write(path, encode(capture(store, time.time() if now is None else now)))


def write(path: str | os.PathLike[str], data: bytes) -> int:
    """Replace ``path`` with ``data`` atomically: temp file in the same directory, fsync, rename."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return len(data)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(
    path: str | os.PathLike[str],
    store: SwarmStore,
    now: float | None = None,
) -> LoadReport | None:
    """Restore a snapshot into ``store``; None if there was none or it was unreadable.

    Peers whose TTL ran out while the sidecar was down are dropped; counters are
    adopted as they were (``set_downloaded``). Never raises for a bad file: a
    corrupt snapshot is reported in one log line and the sidecar starts empty.
    """
    now = time.time() if now is None else now
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        log.info("snapshot %s: none yet, starting empty", path)
        return None
    except OSError as exc:
        log.warning("snapshot %s: cannot read (%s); starting empty", path, exc.strerror or exc)
        return None
    try:
        snap = decode(data)
    except SnapshotError as exc:
        log.warning("snapshot %s: ignored, %s; starting empty", path, exc)
        return None
    expired = refused = 0
    for change in snap.peers:
        if change.timestamp + store.peer_ttl <= now:
            expired += 1
            continue
        if change.timestamp > now:  # saved by a clock that ran ahead: seen now, not later
            change = change._replace(timestamp=now)
        try:
            store.apply(change, count_download=False)
        except PeerRefused:
            refused += 1
    for ih, total in snap.downloaded.items():
        store.set_downloaded(ih, total)
    report = LoadReport(
        peers=len(snap.peers) - expired - refused,
        expired=expired,
        refused=refused,
        counters=len(snap.downloaded),
        saved_at=snap.saved_at,
    )
    log.info(
        "snapshot %s: restored %d peers and %d counters saved %.0f s ago "
        "(%d peers expired meanwhile, %d refused by limits)",
        path,
        report.peers,
        report.counters,
        max(0.0, now - snap.saved_at),
        report.expired,
        report.refused,
    )
    return report


class PeriodicSaver:
    """The sidecar's saver: a snapshot every ``interval`` seconds and a last one on stop.

    Copying the store happens in the serving thread with pauses between
    torrents; encoding, writing and fsync run in gevent's thread pool, so a
    large snapshot or a slow disk does not stall UDP or the sync hub. A failed
    save is one log line; the next period tries again.
    """

    def __init__(
        self,
        store: SwarmStore,
        path: str | os.PathLike[str],
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.path = path
        self.interval = interval
        self.clock = clock
        self._stop = gevent.event.Event()
        self._loop: gevent.Greenlet | None = None

    def start(self) -> None:
        self._loop = gevent.spawn(self._run)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.save_now(final=False)

    def stop(self) -> bool:
        """Finish any save under way, then write the last snapshot; returns its success."""
        self._stop.set()
        if self._loop is not None:
            self._loop.join()
        return self.save_now(final=True)

    def save_now(self, final: bool) -> bool:
        started = time.monotonic()
        snap = capture(self.store, self.clock(), pause=lambda: gevent.sleep(0))
        try:
            size = gevent.get_hub().threadpool.apply(_encode_and_write, (self.path, snap))
        except (OSError, SnapshotError) as exc:
            log.error("snapshot %s: not saved: %s", self.path, exc)
            return False
        (log.info if final else log.debug)(
            "snapshot %s: saved %d peers and %d counters (%d bytes, %.0f ms)%s",
            self.path,
            len(snap.peers),
            len(snap.downloaded),
            size,
            (time.monotonic() - started) * 1000,
            " before exit" if final else "",
        )
        return True


def _encode_and_write(path: str | os.PathLike[str], snap: Snapshot) -> int:
    return write(path, encode(snap))
