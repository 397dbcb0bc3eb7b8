"""The counter journal: every completed-download increment, appended as it happens.

The snapshot holds the counts as of its last save; a crash between saves used
to lose everything since (a minute by default). Like Redis's append-only file
with ``appendfsync everysec``, the sidecar appends each increment it applies
(its own UDP completions, the workers' Counts frames, raised claims) to a
journal beside the snapshot before the completion is answered, and fsyncs it
at least every second:

* a process crash (``kill -9``) loses nothing written: it is in the kernel's
  page cache, and the next start replays it;
* a power loss loses at most the last second;
* a save folds the journal in: the saver starts a new generation at the
  instant it copies the store, the snapshot records that generation, and the
  older journals are deleted once the snapshot is safely renamed. So the
  journal holds at most the increments of a save interval or two.

Files: ``<snapshot_path>.journal.<generation>``, each a header (``WTJN``,
version) and records ``CRC-32 (u32) | a sync Counts frame`` (the frame codec of
``frames.py``, so the on-disk increment is the tested wire one). A torn last
record (power loss mid-write) ends the replay of that file with a warning.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from wsgi_tracker.core.types import PeerChange
from wsgi_tracker.sync import frames as f

log = logging.getLogger("wsgi_tracker.sync.journal")

MAGIC = b"WTJN"
VERSION = 1
HEADER = struct.Struct(">4sB3x")
CRC = struct.Struct(">I")
FRAME_HEAD = 5  # frames.py: length u32 | kind u8
_ONE_HEAD = struct.pack(">IB", 24, f.KIND_COUNTS)  # one (info_hash 20, increment u32) pair
_ONE = struct.pack(">I", 1)


class JournalError(OSError):
    """The journal cannot be written where it must be; the message names the file."""


def record(counts: list[tuple[bytes, int]]) -> bytes:
    """One journal record: the Counts frame, preceded by its CRC-32."""
    frame = f.encode(f.Counts(counts))
    return CRC.pack(zlib.crc32(frame)) + frame


def parse(data: bytes) -> tuple[list[tuple[bytes, int]], str | None]:
    """Every increment in a journal file's bytes, and what stopped the reading early (or None).

    Pure: the replay, the tests and the property tests all read through it.
    """
    if len(data) < HEADER.size:
        return [], f"truncated header ({len(data)} bytes)"
    magic, version = HEADER.unpack_from(data)
    if magic != MAGIC:
        return [], f"not a wsgi-tracker journal (magic {magic!r})"
    if version != VERSION:
        return [], f"journal format version {version}; this build reads {VERSION}"
    out: list[tuple[bytes, int]] = []
    pos = HEADER.size
    while pos < len(data):
        head = pos + CRC.size
        if len(data) - head < FRAME_HEAD:
            return out, f"torn record at byte {pos}"
        (length,) = struct.unpack_from(">I", data, head)
        end = head + FRAME_HEAD + length
        if end > len(data):
            return out, f"torn record at byte {pos}"
        frame = data[head:end]
        if zlib.crc32(frame) != CRC.unpack_from(data, pos)[0]:
            return out, f"record at byte {pos} fails its checksum"
        try:
            (decoded,) = f.decode_all(frame)
        except (f.FrameError, ValueError) as exc:
            return out, f"record at byte {pos}: {exc}"
        if not isinstance(decoded, f.Counts):
            return out, f"record at byte {pos} is a {type(decoded).__name__} frame"
        out.extend(decoded.counts)
        pos = end
    return out, None


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file durable (POSIX: the entry lives in the directory)."""
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


class Journal:
    """The journal files of one snapshot path, and the one being appended to.

    Call ``append``/``listener`` from the thread that owns the store; ``fsync``
    may run in another thread (the sidecar's thread pool) at the same time.
    """

    def __init__(self, snapshot_path: str | os.PathLike[str]) -> None:
        target = Path(snapshot_path)
        self.directory = target.parent
        self.prefix = f"{target.name}.journal."
        self.generation = -1
        self._fd = -1
        self._retired: list[int] = []  # earlier generations' fds, closed after their fsync
        self._dirty = False
        self._new_file = False

    def files(self) -> list[tuple[int, Path]]:
        """(generation, path) of every journal file, oldest first."""
        found = []
        for entry in self.directory.iterdir() if self.directory.is_dir() else ():
            suffix = entry.name[len(self.prefix) :]
            if entry.name.startswith(self.prefix) and suffix.isdigit():
                found.append((int(suffix), entry))
        return sorted(found)

    def replay(self, since: int, add: Callable[[bytes, int], None]) -> int:
        """Apply every increment journaled at generation ``since`` or later; returns how many.

        Older files were folded into the snapshot already and are deleted.
        """
        total = 0
        for generation, path in self.files():
            if generation < since:
                path.unlink(missing_ok=True)
                continue
            counts, problem = parse(path.read_bytes())
            if problem:
                log.warning(
                    "journal %s: %s; replayed the %d increments before it",
                    path,
                    problem,
                    len(counts),
                )
            for ih, n in counts:
                add(ih, n)
                total += n
        return total

    def open(self, generation: int) -> None:
        """Append to the file of ``generation`` from now on (JournalError if impossible).

        The file before it stays open until the next ``fsync`` has flushed it.
        """
        path = self.directory / f"{self.prefix}{generation}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            if os.fstat(fd).st_size == 0:
                os.write(fd, HEADER.pack(MAGIC, VERSION))
        except OSError as exc:
            raise JournalError(f"journal {path}: cannot write: {exc.strerror or exc}") from None
        if self._fd >= 0:
            self._retired.append(self._fd)
        self._fd, self.generation = fd, generation
        self._new_file = self._dirty = True

    def next_generation(self) -> int:
        """A generation above every file's."""
        return max([self.generation + 1, *(g + 1 for g, _ in self.files())])

    def rotate(self) -> int:
        """Start the next generation (a save copies the store at this instant); returns it."""
        self.open(self.generation + 1)
        return self.generation

    def drop_before(self, generation: int) -> None:
        """Delete the files a snapshot of ``generation`` has folded in."""
        for g, path in self.files():
            if g < generation:
                path.unlink(missing_ok=True)

    def append(self, counts: list[tuple[bytes, int]]) -> None:
        """Write increments (into the page cache: a crash of this process keeps them)."""
        if counts and self._fd >= 0:
            os.write(self._fd, record(counts))
            self._dirty = True

    def listener(self, change: PeerChange, counted: bool, refreshed: float = 0.0) -> None:
        """On ``TrackerCore.listeners``: this process's own completions, journaled before the
        answer."""
        if counted and self._fd >= 0:
            # The one-increment Counts frame, put together without the general encoder
            # (a test proves it is the same bytes): this runs on every completion.
            frame = _ONE_HEAD + change.info_hash + _ONE
            os.write(self._fd, CRC.pack(zlib.crc32(frame)) + frame)
            self._dirty = True

    def fsync(self) -> None:
        """Flush what was appended since the last call to the disk (``everysec``).

        Runs in a thread of its own while the store's thread appends; only this
        closes the files ``open`` retired, so no fd is closed under it.
        """
        while self._retired:
            fd = self._retired.pop(0)
            self._sync(fd)
            os.close(fd)
        if self._dirty and self._fd >= 0:
            self._dirty = False
            self._sync(self._fd)
        if self._new_file:
            self._new_file = False
            fsync_dir(self.directory)

    def _sync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            log.error("journal in %s: fsync failed: %s", self.directory, exc)

    def close(self) -> None:
        """The last fsync; call once nothing appends or fsyncs any more."""
        self._dirty = True
        self.fsync()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
