"""The sidecar's on-disk snapshot: every live peer and every completed-download counter.

A restart (a deploy, a crash) must not lose the swarms or the counters, which
the tracker cannot learn back from clients. Never pickle (a file on disk must
not be able to run code): the body is the sync protocol's own Totals and
Snapshot frames (``frames.py``), the records a joining worker receives, so one
tested codec reads both the socket and the disk.

Layout: a fixed header ``WTSN``, format version, time saved, the journal
generation the snapshot folds in everything before, compressed and inflated
lengths, and a CRC-32 of header and body; then the zlib-compressed frames.
``decode`` inflates to exactly the length the header gives (never more, so a
lying header cannot balloon memory) and accepts only Totals and Snapshot
frames.

``encode``/``decode`` are pure; ``save``/``load`` are the thin file shell and
``Saver`` the sidecar's timer. ``write`` goes to a temporary file in the same
directory, fsyncs it and renames it over the old one, so a crash mid-write
leaves the previous snapshot whole. ``load`` never starts over a damaged file:
it renames it aside (``<path>.damaged-<time>``), logs an ERROR naming both, and
the sidecar starts from the journal alone; a snapshot it cannot read or
rename, or a directory it cannot write, is ``SnapshotPathError``: the sidecar
refuses to start, in one line.

Saving copies the store in a forked child (copy-on-write, as Redis's BGSAVE):
the serving process pays for ``fork`` and for the pages it writes to while the
child runs, never for the walk or the encoding.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import struct
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import gevent
import gevent.event
from gevent import monkey

from wsgi_tracker.core.swarm import SwarmStore
from wsgi_tracker.core.types import EVENT_NONE, PeerChange, PeerRow
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync import snapshot_v1
from wsgi_tracker.sync.journal import Journal, fsync_dir
from wsgi_tracker.sync.replica import walk

log = logging.getLogger("wsgi_tracker.sync.snapshot")

MAGIC = b"WTSN"
VERSION = 2  # 1 had a record format of its own; 2 is sync frames
# magic, version, pad, saved_at, journal generation, body length, inflated length,
# CRC-32 of header + body
HEADER = struct.Struct(">4sBxxxdQQQI")
MAX_INFLATED = 8 << 30  # far above 1M torrents x 1M peers (~70 MB); a header past it lies
_fork = monkey.get_original("os", "fork")  # the plain one: the child never runs gevent
# The saving child yields the CPU to serving (weight ~1/10 of it when both want a core):
# UDP does not wait for it, and it still finishes on a busy machine (at 19 a 1M save never
# did in 30 s at load 4; at 10 it took 21 s; BENCHMARKS.md, "Issue 13 (session 5)").
CHILD_NICE = 10


class SnapshotError(ValueError):
    """The bytes are not a snapshot this version can read; the message says where."""


class SnapshotPathError(OSError):
    """The snapshot cannot be kept safe where it must be; the message names the file."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Swarm state at one moment: counters per torrent and every peer as a change.

    ``generation``: the journal generations below it are folded in.
    """

    saved_at: float
    downloaded: dict[bytes, int] = field(default_factory=dict)
    peers: Sequence[PeerChange] = field(default_factory=list)
    generation: int = 0


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What ``load`` restored, for the start-up log line and for tests."""

    peers: int
    expired: int
    refused: int
    counters: int
    saved_at: float
    generation: int


def encode(snapshot: Snapshot) -> bytes:
    """The file's bytes. Raises SnapshotError for a field a record cannot hold."""
    for ih, pid, _ts, _flags, _event, endpoint, _key in f.peer_rows(snapshot.peers):
        if len(ih) != 20 or len(pid) != 20:
            # struct would silently pad or cut them; a changed id is a different peer.
            raise SnapshotError(f"peer {pid[:24]!r}: ids must be 20 bytes")
        if len(endpoint) not in (6, 18):
            raise SnapshotError(f"peer endpoint of {len(endpoint)} bytes (expected 6 or 18)")
    if any(len(ih) != 20 for ih in snapshot.downloaded):
        raise SnapshotError("counter keys must be 20-byte info_hashes")
    totals = [(ih, n) for ih, n in snapshot.downloaded.items() if n]
    try:
        raw = f.encode(f.Totals(totals)) + f.encode(f.Snapshot(snapshot.peers))
    except (struct.error, f.FrameError) as exc:
        raise SnapshotError(f"record does not fit the snapshot format: {exc}") from None
    return _frame(snapshot.saved_at, snapshot.generation, raw)


# zlib's fastest level: at 1M torrents level 6 took 2.06 s of a save's ~11 s (the final
# one runs in the stopping sidecar, against serve's deadline), level 1 0.59 s, for a file
# 3% larger (11.4 against 11.1 MB). Any level reads back the same.
COMPRESS_LEVEL = 1


def _frame(saved_at: float, generation: int, raw: bytes) -> bytes:
    body = zlib.compress(raw, COMPRESS_LEVEL)
    fields = (MAGIC, VERSION, saved_at, generation, len(body), len(raw))
    crc = zlib.crc32(body, zlib.crc32(HEADER.pack(*fields, 0)))
    return HEADER.pack(*fields, crc) + body


def decode(data: bytes) -> Snapshot:
    """Parse a snapshot file's bytes; any damage raises SnapshotError, nothing else."""
    if data[:4] != MAGIC[: len(data)]:
        raise SnapshotError(f"not a wsgi-tracker snapshot (magic {data[:4]!r})")
    if len(data) < HEADER.size:
        raise SnapshotError(f"truncated header: {len(data)} of {HEADER.size} bytes")
    if data[4:5] == b"\x01":
        try:
            old = snapshot_v1.decode(data, _inflate)
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None
        return Snapshot(*old)
    _, version, saved_at, generation, length, raw_length, crc = HEADER.unpack_from(data)
    if version != VERSION:
        raise SnapshotError(f"snapshot format version {version}; this build reads {VERSION}")
    body = data[HEADER.size :]
    if len(body) != length:
        raise SnapshotError(f"body is {len(body)} bytes, header says {length} (truncated?)")
    if zlib.crc32(body, zlib.crc32(data[: HEADER.size - 4] + bytes(4))) != crc:
        raise SnapshotError("body checksum mismatch (file damaged)")
    try:
        frames = f.decode_all(_inflate(body, raw_length))
    except f.FrameError as exc:
        raise SnapshotError(f"body: {exc}") from None
    downloaded: dict[bytes, int] = {}
    rows: list[PeerRow] = []
    for frame in frames:
        if isinstance(frame, f.Totals):
            downloaded.update(frame.totals)
        elif isinstance(frame, f.Snapshot):
            # Rows, not a PeerChange apiece: a million of those cost seconds at start.
            rows.extend(r if r[4] == EVENT_NONE else _no_event(r) for r in f.peer_rows(frame.peers))
        else:
            raise SnapshotError(f"a {type(frame).__name__} frame has no place in a snapshot")
    return Snapshot(saved_at, downloaded, f.PeerRecords(rows), generation)


def _no_event(row: PeerRow, timestamp: float | None = None) -> PeerRow:
    """``row`` as state: no event (a snapshot holds peers, not what they did), and at
    ``timestamp`` if given."""
    ih, pid, ts, flags, _, endpoint, key = row
    return (ih, pid, ts if timestamp is None else timestamp, flags, EVENT_NONE, endpoint, key)


def _inflate(body: bytes, length: int) -> bytes:
    """Inflate to exactly ``length`` bytes; never more, so a bad header cannot balloon memory."""
    if length > MAX_INFLATED:
        raise SnapshotError(f"header says the body inflates to {length} bytes: not a snapshot")
    try:
        return f.inflate_exactly(body, length)
    except f.FrameError as exc:
        raise SnapshotError(str(exc)) from None


def capture(store: SwarmStore, now: float, generation: int = 0) -> Snapshot:
    """The store's live state as a Snapshot (sync's torrent-by-torrent walk; ``peek`` keeps
    the eviction order). Call it where nothing else changes the store: in the forked
    child, or once serving has stopped."""
    downloaded: dict[bytes, int] = {}
    rows: list[PeerRow] = []
    for chunk, totals in walk(store, list(store.torrents.keys())):
        rows.extend(chunk.rows)
        downloaded.update(totals)
    return Snapshot(now, downloaded, f.PeerRecords(rows), generation)


def save(
    store: SwarmStore, path: str | os.PathLike[str], now: float | None = None, generation: int = 0
) -> int:
    """Write the store atomically to ``path``; returns the bytes written.

    Raises OSError if the file cannot be written; the old snapshot is untouched then.
    """
    return write(path, encode(capture(store, time.time() if now is None else now, generation)))


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
    fsync_dir(target.parent)
    return len(data)


def saved_generation(path: str | os.PathLike[str]) -> int | None:
    """The journal generation in the header of the file at ``path`` (None: unreadable)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER.size)
    except OSError:
        return None
    if len(head) < HEADER.size or head[:4] != MAGIC:
        return None
    return HEADER.unpack(head)[3]


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise SnapshotPathError unless a snapshot (and its journal) can be written at ``path``.

    Checked at start, so an impossible path is one line then, not an error every period.
    """
    target = Path(path)
    if target.is_dir():
        raise SnapshotPathError(f"snapshot_path {target} is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".probe")
    except OSError as exc:
        raise SnapshotPathError(
            f"snapshot_path {target}: cannot write in {target.parent}: {exc.strerror or exc}"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def set_aside(path: Path, now: float) -> Path:
    """Rename a damaged snapshot out of the way of the next save; returns its new name."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        aside = path.with_name(f"{path.name}.damaged-{stamp}" + (f"-{n}" if n else ""))
        if not aside.exists():
            try:
                os.rename(path, aside)
            except OSError as exc:
                raise SnapshotPathError(
                    f"snapshot {path} is damaged and cannot be renamed aside "
                    f"({exc.strerror or exc}); refusing to start over it"
                ) from None
            return aside
    raise SnapshotPathError(f"snapshot {path} is damaged and 1000 damaged copies exist already")


def load(
    path: str | os.PathLike[str],
    store: SwarmStore,
    now: float | None = None,
) -> LoadReport | None:
    """Restore a snapshot into ``store``; None if there was none or it was damaged.

    Peers whose TTL ran out while the sidecar was down are dropped; counters are
    adopted as they were (``set_downloaded``). A damaged, truncated or
    other-version file is renamed aside (never overwritten) with an ERROR.
    Raises SnapshotPathError for a file it cannot read or set aside.
    """
    now = time.time() if now is None else now
    target = Path(path)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        log.info("snapshot %s: none yet, starting empty", path)
        return None
    except OSError as exc:
        raise SnapshotPathError(f"snapshot {path}: cannot read: {exc.strerror or exc}") from None
    try:
        snap = decode(data)
    except SnapshotError as exc:
        aside = set_aside(target, now)
        log.error(
            "snapshot %s is damaged (%s): kept as %s; starting from the journal alone",
            path,
            exc,
            aside,
        )
        return None
    report = restore(snap, store, now)
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


def restore(snap: Snapshot, store: SwarmStore, now: float) -> LoadReport:
    """Merge ``snap`` into ``store`` in bulk, as a joining replica does (``load_state``:
    a torrent the store lacks is made in one step, ~1 us at 1M; 112 us by
    ``store.apply``), dropping peers whose TTL has run out by ``now``."""
    ttl = store.peer_ttl
    rows: list[PeerRow] = []
    for row in f.peer_rows(snap.peers):
        stamp = row[2]
        if stamp + ttl <= now:
            continue
        # saved by a clock that ran ahead: seen now, not later
        rows.append(
            row if stamp <= now and row[4] == EVENT_NONE else _no_event(row, min(stamp, now))
        )
    applied = store.load_state(rows)
    store.set_totals(snap.downloaded.items())
    return LoadReport(
        peers=applied,
        expired=len(snap.peers) - len(rows),
        refused=len(rows) - applied,
        counters=len(snap.downloaded),
        saved_at=snap.saved_at,
        generation=snap.generation,
    )


class Saver:
    """The sidecar's saver: a snapshot every ``interval`` seconds and a last one on stop,
    each folding the journal in.

    A periodic save starts the journal's next generation and forks at the same
    instant (nothing yields in between), so the child's copy holds exactly the
    increments of the older journals; they are deleted once its file is renamed
    into place. A failed save is one log line, and the journals stay. The final
    save runs in this process, serving having stopped.
    """

    def __init__(
        self, store: SwarmStore, path: str | os.PathLike[str], interval: float, journal: Journal
    ) -> None:
        self.store = store
        self.path = path
        self.interval = interval
        self.journal = journal
        self._stop = gevent.event.Event()
        self._loops: list[gevent.Greenlet] = []
        self._child = 0  # pid of a saving child, while one runs

    def start(self) -> None:
        self._loops = [gevent.spawn(self._run), gevent.spawn(self._fsync_loop)]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.save_in_background()

    def _fsync_loop(self) -> None:
        """``appendfsync everysec``: the journal reaches the disk at least once a second."""
        pool = gevent.get_hub().threadpool
        while not self._stop.wait(1.0):
            pool.apply(self.journal.fsync)

    def save_in_background(self) -> bool:
        started = time.monotonic()
        generation = self.journal.rotate()
        # Until the child is done, collections here leave every object alive now alone:
        # a full one would write to each object's header, copying the whole heap
        # (the pages the child shares) while UDP waits.
        gc.freeze()
        pid = self._child = _fork()
        if pid == 0:  # the child: a frozen copy of the store; no gevent, no logging
            code = 1
            try:
                os.nice(CHILD_NICE)
                save(self.store, self.path, time.time(), generation)
                code = 0
            finally:
                os._exit(code)
        try:
            while True:  # poll, so the loop serves meanwhile
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # reaped by someone else: the file tells
                    break
                if done:
                    break
                gevent.sleep(0.02)
        finally:
            self._child = 0
            gc.unfreeze()
        # The file, not the exit status, says whether it worked: it holds our generation.
        if saved_generation(self.path) != generation:
            log.error("snapshot %s: not saved (the saving child failed)", self.path)
            return False
        self.journal.drop_before(generation)
        log.debug(
            "snapshot %s: saved in a child process in %.0f ms",
            self.path,
            (time.monotonic() - started) * 1000,
        )
        return True

    def stop(self) -> bool:
        """Write the last snapshot; returns its success.

        A periodic save still running is killed first: the final one supersedes
        it, and waiting for it could cost the stop its deadline at a million
        torrents. Its journals stay until the final save has replaced them.
        """
        self._stop.set()
        if self._child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._child, signal.SIGKILL)
        gevent.joinall(self._loops)
        started = time.monotonic()
        generation = self.journal.rotate()
        snap = capture(self.store, time.time(), generation)
        try:
            size = write(self.path, encode(snap))
        except (OSError, SnapshotError) as exc:
            log.error("snapshot %s: not saved before exit: %s", self.path, exc)
            self.journal.close()
            return False
        self.journal.drop_before(generation)
        self.journal.close()
        log.info(
            "snapshot %s: saved %d peers and %d counters (%d bytes, %.0f ms) before exit",
            self.path,
            len(snap.peers),
            len(snap.downloaded),
            size,
            (time.monotonic() - started) * 1000,
        )
        return True


def open_store_files(path: str, store: SwarmStore) -> Journal:
    """At start: check ``path``, restore the snapshot, replay the journal, open the next one.

    Raises SnapshotPathError (or JournalError) with one line naming the file.
    """
    check_writable(path)
    target = Path(path)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # a saving child killed midway
        stale.unlink(missing_ok=True)
    report = load(path, store)
    journal = Journal(path)
    replayed = journal.replay(report.generation if report else 0, store.add_downloaded)
    if replayed:
        log.info("journal of %s: replayed %d completed downloads", path, replayed)
    journal.open(journal.next_generation())
    return journal
