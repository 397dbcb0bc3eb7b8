"""The sync client, one per serving process: local changes out, everyone else's in.

It uses ``threading`` and ``socket`` only, so the same code runs as greenlets
under gunicorn's gevent worker (which patches both before the app loads) and
as real threads under a threaded WSGI server. Two loops:

* the connection loop connects (with exponential backoff), reads the hub's
  snapshot, then applies every frame the hub sends, under ``core.lock``, in
  slices of ``SLICE`` changes; with a backlog it pauses as long as each slice
  took, so a flood of remote changes never holds a request up for long; once
  caught up it leaves the hub's frames in the socket for ``READ_PAUSE``, so
  the 1 ms batches are taken together;
* the flusher sends what ``ChangeBuffer`` collected every few milliseconds,
  each batch marked with a sequence number (Mark), and a heartbeat when there
  was nothing to send.

Read-your-writes (docs/SYNC.md): whatever reads the replica first applies what
the hub has already sent (``core.lock`` is a ``ReadGate`` that calls ``drain``
while this client runs: a non-blocking read, so no two greenlets wait on the
socket; every byte is consumed under ``_read_lock`` into one decoder, so order
holds), and an announce's reply waits, bounded, for the hub's Ack of the batch
holding its change (``write_token`` / ``wait_for``). The hub acks once the batch
is in its replica and in every other process's socket, so whichever process
the client asks next drains it before answering.

While the hub is away the process serves from its own replica and buffers its
changes (bounded). After each (re)connect it re-sends its whole replica and
the totals it last knew, so a restarted hub rebuilds its state from the
workers.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import heapq
import itertools
import logging
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Sequence
from operator import itemgetter

from wsgi_tracker.core import gc_tuning
from wsgi_tracker.core.locks import new_lock
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import PeerChange, WsChange
from wsgi_tracker.core.ws_swarm import WsSwarmFull
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.replica import (
    DEAD_AFTER,
    FLUSH_DELAY,
    HEARTBEAT,
    JOIN_WAIT,
    RECV_BYTES,
    ChangeBuffer,
    ReportBuffer,
    batch_wait,
    merge,
    refresh_ahead,
    stash,
    walk,
)
from wsgi_tracker.sync.session import FROM_HUB, Conversation, Phase
from wsgi_tracker.sync.socket_path import UnsafeSocketPath, check_private, why_no_hub

log = logging.getLogger("wsgi_tracker.sync")

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
MAX_WS_WAITING = 10_000  # WebSocket peer changes kept while the hub is away (~60 B each)
# How long an announce's reply waits for the hub's ack of its change: a round trip
# is well under a millisecond on an idle machine; past this the reply goes out
# anyway (counted as ack_timeouts in /stats).
ACK_WAIT = 0.03
# Remote changes applied in one go before the reader lets requests run (~0.5-3 ms).
SLICE = 512
# Remote changes a request applies itself before answering (a few ms at most); past it
# the answer may miss the newest remote changes (counted as stale_reads). A backlog
# this large means the process is overloaded, and the reader catches up in slices.
DRAIN_MAX = 1024
# ... except the first request to a process whose reader is in an idle pause: it may
# apply what the pause left, at most this many. A lazy replica stashes them (about a
# fifth of a merge each): 8x as many, in ~5 ms. Not for a busy process: most of what
# it gets it holds, and merges, and 8,192 merges on a reply's path cost ~25 ms.
IDLE_DRAIN_LAZY = 8 * DRAIN_MAX
# How long the reader leaves the hub's frames in the socket once it has caught up, while
# no reply of this process waits for an ack: the 1 ms batches gather there and are read,
# decoded and applied together, not one wake-up each. Every reader of the replica takes
# ``core.lock``, whose gate drains the socket first, so none of them misses a change
# the pause left there (docs/SYNC.md, "Read-your-writes").
READ_PAUSE = 0.01
# A process that read nothing of its replica for IDLE_AFTER seconds is idle: its reader's
# pause grows to IDLE_PAUSE, or to as long as the hub took to send what one drain
# applies (the drain's budget at RECORD_BYTES a change) at the rate it sent before,
# so it takes the hub's 1 ms batches by the hundred and a request still finds at most
# one drain's worth waiting (read-your-writes holds). Never more than a third of the
# socket's send buffer: an ack waits for its bytes to be in every socket, so a full
# one would hold other processes' replies up until the pause ended (a Unix socket took
# 130 KB of the hub's 1.4 KB writes into a 208 KB buffer, 28 KB of 100 B ones).
IDLE_AFTER = 1.0
IDLE_PAUSE = 0.05
RECORD_BYTES = 64
# Decoded changes held ahead of being applied; the rest stay in the socket, so a hub
# sending a large snapshot still meets the kernel's flow control.
INBOX_MAX = 2 * f.RECORDS_PER_FRAME
_FIONREAD = struct.Struct("i")


def _unread(fd: int) -> int:
    """Bytes waiting on ``fd`` (0 once it is closed)."""
    try:
        return _FIONREAD.unpack(fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0]
    except (OSError, ValueError):
        return 0


class _Batch:
    """The replies waiting for one batch's ack, with one timer between them.

    ``acked`` is set by the ack (or the hub's loss); ``released`` too, and also
    by the batch's first plain reply once its own timeout is over: that reply
    holds the batch's one timer, and every later plain reply (its deadline is no
    earlier) waits on ``released`` with none. A timer per reply (gevent's
    ``Timeout`` in each ``Event.wait``) was ~5% of a serving worker's GIL time in
    py-spy, at 10-25 replies a batch. A patient wait (a completion) waits for
    ``acked`` on its own timer, so no plain reply's timeout cuts it short.
    """

    __slots__ = ("acked", "released", "timer_deadline")

    def __init__(self) -> None:
        self.acked = threading.Event()
        self.released = threading.Event()
        self.timer_deadline: float | None = None  # the first plain reply's

    def release(self) -> None:
        self.acked.set()
        self.released.set()


class SyncClient:
    """Keep ``core``'s replica in step with the hub at ``path``.

    ``cluster_stats`` holds the latest payloads of every process as the hub
    last sent them; ``on_stats`` (if given) is called with that list each time.
    """

    def __init__(
        self,
        core: TrackerCore,
        path: str,
        *,
        role: int = f.ROLE_WORKER,
        flush_delay: float = FLUSH_DELAY,
        heartbeat: float = HEARTBEAT,
        dead_after: float = DEAD_AFTER,
        on_stats: Callable[[list[f.StatsEntry]], None] | None = None,
    ) -> None:
        self.core = core
        self.path = path
        self.role = role
        self.flush_delay = flush_delay
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.on_stats = on_stats
        self.cluster_stats: list[f.StatsEntry] = []
        self.connected = False  # snapshot applied, changes flowing
        # Seconds from the newest remote announce to its arrival here (for /stats).
        self.delta_lag: float | None = None
        self.ready = threading.Event()  # first snapshot applied, or no hub at the start
        self._wake = threading.Event()
        self._unpause = threading.Event()  # ends the reader's READ_PAUSE early
        # When anything last drained (monotonic), and when the reader last paused: whether
        # the process is serving, idle, or in between (``_pause``).
        self._last_read = time.monotonic()
        self._paused_at = self._last_read
        self._bytes_read = 0  # from the hub, all told; and as of the last pause
        self._bytes_at_pause = 0
        # The core's lock itself, not its gate (``ReadGate``): what holds it here reads
        # nothing of the replica, or is this client applying frames.
        self._buffer = ChangeBuffer(core.lock.raw, self._wake.set)
        self._reports = ReportBuffer(core.lock.raw)
        # Held to send, and around a batch's take-send-or-put-back and a session's start
        # (its claims, its socket, its hello): see ``_send``.
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._resync: tuple[list[bytes], list[tuple[bytes, int]]] | None = None
        self._joining: set[bytes] | None = None
        self._ws_joining: set[tuple[bytes, bytes]] = set()  # the snapshot's WebSocket peers
        self._stats_payload: bytes | None = None
        self._stopped = False
        self._gc_paused = False  # by this client, while it joins
        self._lost_at: float | None = None  # monotonic time the hub was lost, for the log
        # Reading: every byte from the hub is consumed under _read_lock, by the reader or
        # by a request draining (``drain``), into one decoder; decoded frames wait in the
        # inbox and are applied in order (``_pos``: how far into the first one).
        self._read_lock = new_lock()
        self._decoder = f.FrameDecoder()
        self._talk = Conversation(FROM_HUB, "the hub")
        self._inbox: collections.deque[f.Frame] = collections.deque()
        self._inbox_changes = 0
        self._pos = 0
        self._fault: Exception | None = None  # a bad frame a request found; the reader raises it
        self._session_resync: tuple[list[bytes], list[tuple[bytes, int]]] = ([], [])
        self._later: list[Callable[[], object]] = []  # callbacks run outside the lock
        # Acks: the highest batch number the hub acknowledged. A reply waits on its own
        # batch's events (``_Batch``, shared by the batch's requests), set only once that
        # batch is acked (or the hub is lost): an ack wakes nobody else. ``_tokens`` is
        # a heap of the batches waited on, so an ack finds its events without a scan.
        self._acked = 0
        self._waiters: dict[int, _Batch] = {}
        self._tokens: list[int] = []
        self._waiters_lock = new_lock()
        self.ack_waits = 0
        self.ack_timeouts = 0
        self.ack_skips = 0
        self.ack_unneeded = 0  # replies to pure refreshes: nothing to wait for
        self._refresh_ahead = refresh_ahead()
        # The newest batch a wait gave up on: until the hub acks it, it is behind, and no
        # later batch can be acked sooner (acks come in order), so waits are skipped.
        self._given_up = 0
        self.stale_reads = 0
        # Off (the read_your_writes setting): no reply waits for an ack.
        self.read_your_writes = core.config.read_your_writes
        self.lazy_apply = core.config.lazy_apply  # deltas stashed, not merged (_merge)
        self._idle_drain = IDLE_DRAIN_LAZY if self.lazy_apply else DRAIN_MAX
        self._drain_budget = DRAIN_MAX  # the idle drain's during an idle pause (_pause)
        self._pause_bytes = self._idle_drain * RECORD_BYTES  # cut to the socket's (_session)
        self._threads: list[threading.Thread] = []
        # Where WebSocket relays for this process's sockets go: (info_hash, peer_id, text).
        self.on_relay: Callable[[bytes, bytes, str], object] | None = None
        self._ws_waiting: collections.deque[WsChange] = collections.deque(maxlen=MAX_WS_WAITING)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.core.listeners.append(self._buffer)
        self.core.lock.before = self.drain  # every reader drains first (``ReadGate``)
        accounting = self.core.accounting
        if accounting is not None:
            # The hub's ledger sees every process's announces: accounting runs there.
            accounting.sink = self._reports.offer
            if self.core.on_announce is not None and not self.core.config.announce_hook:
                log.warning(
                    "with sync on, the announce hook runs in the hub (udp-sidecar), which "
                    "calls the announce_hook setting; the on_announce callable given to "
                    "this process is not called: name it as announce_hook instead"
                )
        for target, name in (
            (self._connection_loop, "sync-conn"),
            (self._flush_loop, "sync-flush"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_ready(self, timeout: float) -> bool:
        """Wait (bounded) until the first snapshot is in, or it is clear no hub answers."""
        return self.ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is still buffered, then disconnect: a graceful exit loses no announce.

        The flusher sends the last batch itself and only then is the socket
        closed: closing it under a flusher that had just taken a batch (or was
        inside ``sendall``) lost that batch, 0-4 completions in half the mixed
        HTTP + UDP stops.
        """
        if self._buffer in self.core.listeners:
            self.core.listeners.remove(self._buffer)
        gate = self.core.lock
        if gate.before == self.drain:
            gate.before = None
        self._stopped = True
        self._wake.set()
        self._unpause.set()
        flusher = self._threads[1] if len(self._threads) > 1 else None
        if flusher is not None:
            flusher.join(timeout)
        self._close()
        for thread in self._threads:
            thread.join(timeout=2)

    def publish_ws(self, change: WsChange) -> None:
        """A WebSocket peer's change, to every other process (the WebSocket tracker's seam).

        Sent at once, not batched: a relay sent next must find this peer known.
        While the hub is away changes wait (the latest ``MAX_WS_WAITING``) and go
        first in the resync, so a peer that left meanwhile leaves the other
        workers' replicas too, not only at its TTL (the peers still held are
        re-sent after them anyway).
        """
        if not (self.connected and self._send(f.encode(f.WsPeers([change])))):
            self._ws_waiting.append(change)

    def relay_ws(self, holder: int, info_hash: bytes, peer_id: bytes, text: str) -> bool:
        """An offer or answer for a socket process ``holder`` holds; whether it left."""
        return self.connected and self._send(f.encode(f.WsRelay(holder, info_hash, peer_id, text)))

    def publish_stats(self, payload: bytes) -> None:
        """This process's stats payload; sent to the hub with the next flush or heartbeat."""
        self._stats_payload = payload
        self._wake.set()

    # --- read-your-writes ------------------------------------------------------------

    def write_token(self, refreshed: float = 0.0) -> int:
        """The batch that carries the change this process just made (call with
        ``core.lock`` held, right after the change); pass it to ``wait_for``.

        0, which needs no wait, when the change only moved a known peer's expiry
        and that expiry was well ahead (``refreshed``: ``SwarmStore.refreshed`` after
        the change, 0.0 for anything else): no reply or scrape of any process shows
        it, and the hub itself holds such a refresh back up to ``REFRESH_WINDOW``
        under the same rule, so an ack would promise nothing about it. Most
        announces are such refreshes (a client re-announcing on its interval), so
        read-your-writes costs their replies nothing (``ack_unneeded`` in /stats).
        """
        if refreshed > time.time() + self._refresh_ahead:
            self.ack_unneeded += 1
            return 0
        buffer = self._buffer
        return buffer.taken + 1 if len(buffer) else buffer.taken

    def wait_for(self, token: int, timeout: float = ACK_WAIT, *, patient: bool = False) -> bool:
        """Wait, at most ``timeout``, until the hub has acked batch ``token``: then the
        change is in every process's replica or socket. Returns at once, False, while
        the hub is away (nothing can be acked; ``/stats`` says read_your_writes false), and
        always with the ``read_your_writes`` setting off.

        Once a wait has timed out, the hub is behind: until it acks that batch, later
        waits return at once, False (``ack_skips``), unless ``patient``. Under overload
        every reply would otherwise wait out its timeout for an ack that cannot come
        sooner, and a closed-loop client is then paced by the timeout, not by the
        tracker; the first ack past that batch ends the skipping."""
        if token <= self._acked:
            return True
        if not self.connected or not self.read_your_writes:
            return False
        if not patient and self._acked < self._given_up:
            self.ack_skips += 1
            return False
        self.ack_waits += 1
        deadline = time.monotonic() + timeout
        with self._waiters_lock:  # an ack or a loss taken meanwhile has set no event of ours
            if token <= self._acked:
                return True
            if not self.connected:
                self.ack_timeouts += 1
                self._given_up = max(self._given_up, token)
                return False
            batch = self._waiters.get(token)
            if batch is None:
                batch = self._waiters[token] = _Batch()
                heapq.heappush(self._tokens, token)
                self._unpause.set()  # the ack comes through the reader: it reads now
            timer = batch.timer_deadline
            holds_timer = not patient and timer is None
            if holds_timer:
                batch.timer_deadline = deadline
            untimed = not patient and timer is not None and timer <= deadline
        if patient:
            batch.acked.wait(timeout)
        elif untimed:
            batch.released.wait()  # the batch's timer ends it, no later than our deadline
        else:
            batch.released.wait(timeout)
            if holds_timer:
                batch.released.set()  # the batch's other plain replies go with this one
        if self._acked >= token:
            return True
        self.ack_timeouts += 1
        self._given_up = max(self._given_up, token)
        return False

    def settle(self, timeout: float = ACK_WAIT) -> Callable[[], bool] | None:
        """Send this process's changes now: a UDP process calls it once a batch is
        answered. None when nothing it made waits for an ack, else the wait (bounded
        by ``timeout``; whether acked) its replies go after, while it answers on."""
        with self.core.lock.raw:
            token = self.write_token()
        if token <= self._acked or not self.read_your_writes:
            return None
        self._wake.set()
        # Patient: a batch of UDP replies may hold a completion, which is answered once
        # the hub has it (as an HTTP completion is), and one wait covers the whole batch.
        return lambda: self.wait_for(token, timeout, patient=True)

    def drain(self, budget: int | None = None) -> bool:
        """Apply what the hub has already sent, without waiting for more: call before
        answering a read. Costs one ioctl when there is nothing; applies at most
        ``budget`` changes (``DRAIN_MAX``; the first drain in an idle pause more).
        Returns whether everything sent so far is applied."""
        if budget is None:
            budget, self._drain_budget = self._drain_budget, DRAIN_MAX
        self._last_read = time.monotonic()  # the process is serving: see ``_pause``
        sock = self._sock
        if sock is None or (not self._inbox and not _unread(sock.fileno())):
            return True
        try:
            with self._read_lock:
                done = self._catch_up(budget)
        except (OSError, f.FrameError) as exc:
            # The reader reports it and reconnects; the request is answered regardless.
            self._fault = exc
            self._close()
            return False
        finally:
            self._run_later()
        if not done:
            self.stale_reads += 1
        return done

    def status(self) -> dict[str, object]:
        """What /stats shows of sync for this process."""
        return {
            "connected": self.connected,
            "lag_seconds": self.delta_lag,
            # Replies wait for the hub's ack only while it is there, and only if asked to.
            "read_your_writes": self.connected and self.read_your_writes,
            "ack_waits": self.ack_waits,
            "ack_timeouts": self.ack_timeouts,
            "ack_skips": self.ack_skips,
            "ack_unneeded": self.ack_unneeded,
            "stale_reads": self.stale_reads,
        }

    def _acknowledged(self, seq: int) -> None:
        """Wake the replies waiting for batches up to ``seq``, and only them."""
        with self._waiters_lock:
            if seq > self._acked:
                self._acked = seq
            tokens, waiters = self._tokens, self._waiters
            while tokens and tokens[0] <= seq:
                waiters.pop(heapq.heappop(tokens)).release()

    def _wake_waiters(self) -> None:
        """The hub is lost: nothing waited for will be acked, so every reply goes now."""
        with self._waiters_lock:
            waiters, self._waiters, self._tokens = self._waiters, {}, []
        for batch in waiters.values():
            batch.release()

    # --- connection ------------------------------------------------------------------

    def _connection_loop(self) -> None:
        backoff = BACKOFF_FIRST
        failures = 0
        while not self._stopped:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.dead_after)
                check_private(self.path)
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                if failures == 0:
                    log.log(
                        logging.WARNING if isinstance(exc, UnsafeSocketPath) else logging.INFO,
                        "no sync hub at %s (%s); serving from this process's replica and retrying",
                        self.path,
                        exc.strerror or exc,
                    )
                failures += 1
                self.ready.set()
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            failures = 0
            try:
                self._session(sock)
            except (OSError, f.FrameError) as exc:
                if not self._stopped:
                    self._lost_at = time.monotonic()
                    log.warning(
                        "lost the sync hub at %s: %s; serving from this process's replica "
                        "and reconnecting",
                        self.path,
                        exc,
                    )
            finally:
                self.connected = False
                self._resume_gc()
                self._close()
                self._wake_waiters()

    def _pause_gc(self) -> None:
        """No garbage collection while a snapshot is applied (core/gc_tuning.py)."""
        if gc_tuning.pause():
            self._gc_paused = True

    def _resume_gc(self) -> None:
        if self._gc_paused:
            self._gc_paused = False
            gc_tuning.resume()

    def _close(self, which: socket.socket | None = None) -> None:
        """Close the session's socket (``which``: that one, the session's only if it is)."""
        if which is None or which is self._sock:
            sock, self._sock = self._sock, None
        else:
            sock = which
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _session(self, sock: socket.socket) -> None:
        # Both ends keep the kernel's default buffer, the hub's the same size as this
        # one's. A 2 MB one (session 10) lost counts when the hub was killed: what a
        # worker had not yet read of it went with the reset, and the workers' claims
        # could not make it up (test_supervision.py's sidecar kill, 1 run in 2).
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self._pause_bytes = min(self._idle_drain * RECORD_BYTES, default // 3)
        core = self.core
        store = core.store
        # Under the send lock: no batch is between taken and sent or put back while the
        # claims are read, and the flusher's heartbeats follow our hello (see _send).
        with self._send_lock:
            with core.lock.raw:
                # What we held before this hub's snapshot is what a restarted hub lacks:
                # the totals we believed it had, and the torrents whose peers we re-send.
                held = list(store.torrents.items())
                claims = [
                    (ih, swarm.downloaded - self._buffer.pending_count(ih))
                    for ih, swarm in held
                    if swarm.downloaded
                ]
                resync = ([ih for ih, _ in held], claims)
            with self._read_lock:
                self._decoder = f.FrameDecoder()
                self._talk = Conversation(FROM_HUB, "the hub")
                self._inbox.clear()
                self._inbox_changes = 0
                self._pos = 0
                self._fault = None
                self._session_resync = resync
                # Torrents held before this session whose total the hub has not spoken
                # for yet (a Totals or Counts frame); None once the snapshot is complete.
                # Only these can hold a stale total: any other torrent's count is ours
                # unsent or the hub's.
                self._joining = set(resync[0])
                self._ws_joining = set()
            self._pause_gc()
            self._sock = sock
            sock.sendall(f.encode(f.Hello(self.role, os.getpid())))
        since = time.monotonic()
        while not self._stopped:
            try:
                # Wait until the hub has sent something, consuming nothing: every byte is
                # read under _read_lock, here or by a request draining.
                data = sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                if self._talk.phase is Phase.JOINING and time.monotonic() - since < JOIN_WAIT:
                    continue  # a hub walking a large store may pause; it is not gone
                raise
            except OSError:
                if self._fault is not None:
                    raise self._fault from None
                raise
            if not data:
                with self._read_lock:
                    self._catch_up(None)
                    self._decoder.close()
                raise OSError("hub closed the connection")
            while not self._stopped:
                began = time.monotonic()
                with self._read_lock:
                    done = self._catch_up(SLICE, reads=1)
                self._run_later()
                if done:
                    break
                # A backlog: as long again for everyone else (requests, the host site's
                # pages) before the next slice, so applying takes at most half the
                # process while they wait, and never starves. A timed sleep, not
                # gevent's sleep(0), which lets no socket be polled. Not in a first
                # join: every request waits for it (``ready``), so a pause is lost time.
                time.sleep(time.monotonic() - began if self.ready.is_set() else 0)
            self._pause()

    def _pause(self) -> None:
        """Caught up: leave the hub's next frames in the socket for ``READ_PAUSE``, so
        they are taken together, unless a reply waits for an ack (it ends the pause:
        ``wait_for``), the process is still joining, or it is stopping. A reader of the
        replica meanwhile drains them itself (``ReadGate``).

        Only while nothing read the replica since the last pause: a serving worker's
        reader applies what comes at once, between its requests, as without the pause,
        rather than leave it to the next request's drain, on that reply's path. An idle
        process (``IDLE_AFTER``) pauses up to ``IDLE_PAUSE``, less if the hub's last
        rate would fill ``_pause_bytes`` sooner. One wait: a timer that expires costs a
        gevent ``Timeout`` (its exception thrown into the reader), and polling the socket
        every 10 ms was 13% of an idle worker's time."""
        self._unpause.clear()
        began = time.monotonic()
        last_read, paused_at, self._paused_at = self._last_read, self._paused_at, began
        taken, self._bytes_at_pause = self._bytes_read - self._bytes_at_pause, self._bytes_read
        if not self.connected or last_read > paused_at or self._waiters or self._stopped:
            return
        pause = READ_PAUSE
        if began - last_read >= IDLE_AFTER:
            pause = IDLE_PAUSE
            if taken:
                pause = min(pause, self._pause_bytes * (began - paused_at) / taken)
            self._drain_budget = self._idle_drain
        self._unpause.wait(pause)
        self._drain_budget = DRAIN_MAX

    def _catch_up(self, budget: int | None, reads: int | None = None) -> bool:
        """Read what the socket holds and apply it in order, at most ``budget`` changes
        (None: all). With ``_read_lock`` held. Returns whether nothing is left to apply.

        ``reads`` bounds the socket reads (the reader reads once per slice, so a
        stream arriving as fast as it is applied still yields between slices).
        """
        left = budget
        while True:
            if reads is None or reads > 0:
                self._take_bytes()
                reads = None if reads is None else reads - 1
            if not self._inbox:
                return True
            applied = self._apply_some(left)
            if left is not None:
                left -= applied
                if left <= 0:
                    return not self._inbox and not _unread(self._fileno())

    def _fileno(self) -> int:
        sock = self._sock
        return -1 if sock is None else sock.fileno()

    def _take_bytes(self) -> None:
        """Move what the socket holds into the inbox, decoded, up to ``INBOX_MAX``
        changes (the rest waits in the kernel). With ``_read_lock`` held."""
        fd = self._fileno()
        while self._inbox_changes < INBOX_MAX:
            waiting = _unread(fd)
            if not waiting:
                return
            try:
                data = os.read(fd, min(waiting, RECV_BYTES))
            except BlockingIOError:
                return
            if not data:
                return  # the end: the reader's peek sees it
            self._bytes_read += len(data)
            for frame in self._decoder.feed_joined(data):
                self._talk.receive(frame)  # SyncStateError if it has no place now
                if isinstance(frame, f.Ack):
                    self._acknowledged(frame.seq)  # about our own writes: no order to keep
                elif not isinstance(frame, f.Hello):
                    self._inbox.append(frame)
                    if isinstance(frame, f.Deltas | f.Snapshot):
                        self._inbox_changes += len(frame.peers)

    def _apply_some(self, budget: int | None) -> int:
        """Apply inbox frames in order, at most ``budget`` peer changes (None: all); a
        long Deltas or Snapshot frame is split across calls. Returns changes applied."""
        inbox = self._inbox
        done = 0
        while inbox and (budget is None or done < budget):
            frame = inbox[0]
            if type(frame) is f.Deltas and not self._pos and len(inbox) > 1:
                frame = self._join_deltas(None if budget is None else budget - done)
            if isinstance(frame, f.Deltas | f.Snapshot):
                peers = frame.peers
                start = self._pos
                stop = len(peers) if budget is None else min(len(peers), start + budget - done)
                self._merge(peers, start, stop, isinstance(frame, f.Snapshot))
                done += stop - start
                self._inbox_changes -= stop - start
                if stop < len(peers):
                    self._pos = stop
                    break
                self._pos = 0
                if isinstance(frame, f.Deltas) and peers:
                    last = (
                        peers.last_timestamp()
                        if isinstance(peers, f.PeerRecords)
                        else peers[-1].timestamp
                    )
                    self.delta_lag = max(0.0, time.time() - last)
            else:
                self._apply(frame, self._session_resync)
                done += 1
            inbox.popleft()
        return done

    def _join_deltas(self, room: int | None) -> f.Frame:
        """The Deltas frames at the head of the inbox, as one (as many as are ``joinable``
        and fit in ``room`` changes): stashing costs per call as well as per record."""
        inbox = self._inbox
        head = inbox[0]
        assert isinstance(head, f.Deltas)
        first = head.peers
        if not isinstance(first, f.PeerRecords):
            return head
        parts = [first]
        n = len(first)
        for frame in itertools.islice(inbox, 1, None):
            if type(frame) is not f.Deltas:
                break
            peers = frame.peers
            if not (isinstance(peers, f.PeerRecords) and first.joinable(peers)):
                break
            if room is not None and n + len(peers) > room:
                break
            parts.append(peers)
            n += len(peers)
        if len(parts) == 1:
            return head
        for _ in parts:
            inbox.popleft()
        joined = f.Deltas(f.PeerRecords.joined(parts))
        inbox.appendleft(joined)
        return joined

    def _merge(self, peers: Sequence[PeerChange], start: int, stop: int, state: bool) -> None:
        """One slice of a frame's records, merged in bulk (``SwarmStore.merge_many``); with
        ``lazy_apply``, deltas are stashed instead, to be applied per torrent when it is
        next read (``SwarmStore.stash``; docs/SYNC.md, "Applying lazily")."""
        with self.core.lock.raw:
            if state or not self.lazy_apply:
                merge(self.core.store, peers, state, start, stop)
            else:
                stash(self.core.store, peers, start, stop)

    def _run_later(self) -> None:
        """Callbacks that may block (a WebSocket relay's send), run outside ``_read_lock``."""
        while self._later:
            self._later.pop(0)()

    def _apply(self, frame: f.Frame, resync: tuple[list[bytes], list[tuple[bytes, int]]]) -> None:
        core = self.core
        store = core.store
        pending = self._buffer.pending_count
        joining = self._joining
        if isinstance(frame, f.Counts):
            with core.lock.raw:
                for ih, n in frame.counts:
                    if joining and ih in joining:
                        joining.discard(ih)
                        store.set_downloaded(ih, pending(ih))
                    store.add_downloaded(ih, n)
        elif isinstance(frame, f.Totals) and joining is not None:
            totals = frame.totals
            with core.lock.raw:
                if joining:
                    joining.difference_update(map(itemgetter(0), totals))
                if self._buffer.counts:
                    set_downloaded = store.set_downloaded
                    for ih, total in totals:
                        set_downloaded(ih, total + pending(ih))
                else:  # nothing of ours unsent (a fresh worker): a million totals, no lookups
                    store.set_totals(totals)
        elif isinstance(frame, f.SnapshotDone) and joining is not None:
            with core.lock.raw:
                # The hub had no total for these: only our unsent counts remain. Only a
                # torrent held before this session can hold more: one made since holds
                # our unsent counts, or its count came from the hub.
                for ih in joining:
                    swarm = store.peek(ih)
                    if swarm is not None and swarm.downloaded:
                        swarm.downloaded = pending(ih)
                # Other processes' WebSocket peers: the hub's snapshot is the truth (the
                # ones that left while we were away are not in it; their holders'
                # resyncs reach us after it).
                core.ws.forget_others(os.getpid(), self._ws_joining)
            self._ws_joining = set()
            self._joining = None
            self._resume_gc()
            self._resync = resync
            self.connected = True
            self.ready.set()
            self._wake.set()
            if self._lost_at is None:
                log.info("joined the sync hub at %s (snapshot applied)", self.path)
            else:
                log.info(
                    "reconnected to the sync hub at %s after %.1f s (snapshot applied)",
                    self.path,
                    time.monotonic() - self._lost_at,
                )
        elif isinstance(frame, f.WsPeers):
            now = time.time()
            if joining is not None:
                self._ws_joining.update((c.info_hash, c.peer_id) for c in frame.changes)
            with core.lock.raw:
                for ws_change in frame.changes:
                    with contextlib.suppress(WsSwarmFull):
                        core.ws.apply(ws_change, now)
        elif isinstance(frame, f.WsRelay):
            on_relay = self.on_relay
            if on_relay is not None:
                relay = frame
                self._later.append(lambda: on_relay(relay.info_hash, relay.peer_id, relay.text))
        elif isinstance(frame, f.Stats):
            self.cluster_stats = frame.entries
            on_stats = self.on_stats
            if on_stats is not None:
                entries = frame.entries
                self._later.append(lambda: on_stats(entries))

    # --- sending ---------------------------------------------------------------------

    def _send(self, data: bytes, on: socket.socket | None = None) -> bool:
        """Write ``data`` to the hub; whether it went. With ``on``, only if that is still
        the session's socket.

        A batch taken for one session must never go out on the next: that one
        may never be joined (a dying hub's listener still accepts), its bytes
        are lost with it, and as they were taken from the buffer, the next
        session's claims counted them as sent. That lost one completion in
        about one run in eight of the sidecar-kill test (docs/HARDENING.md).
        """
        with self._send_lock:
            return self._write(data, on)

    def _write(self, data: bytes, on: socket.socket | None) -> bool:
        """``_send`` with the send lock held."""
        sock = self._sock
        if sock is None or (on is not None and sock is not on):
            return False
        try:
            if data:
                sock.sendall(data)
        except OSError:
            self._close(sock)  # the connection loop sees it and reconnects
            return False
        return True

    def _flush_loop(self) -> None:
        """Send the buffer (at most one batch per flush delay), or a heartbeat when quiet.

        On ``stop`` it sends one last batch at once and ends; ``stop`` waits for it.
        """
        last = beat = 0.0
        while True:
            stopping = self._stopped
            woken = stopping or self._wake.wait(self.heartbeat)
            self._wake.clear()
            stopping = self._stopped
            if not self.connected:
                if stopping:
                    return
                if self._sock is not None and time.monotonic() - beat >= self.heartbeat:
                    # Joining: the hub hears from us while we apply its snapshot (a
                    # million torrents take seconds), so silence still means we are gone.
                    beat = time.monotonic()
                    self._send(f.encode(f.Heartbeat()))
                continue
            session = self._sock  # the one we are connected on: what we take goes there
            if self._resync is not None:
                resync, self._resync = self._resync, None
                if not self._send_replica(*resync, session):
                    continue
            wait = batch_wait(last, time.monotonic(), len(self._buffer), self.flush_delay)
            if woken and not stopping and wait:
                time.sleep(wait)
            last = time.monotonic()
            with self._send_lock:  # taken, then sent or put back, before a session starts
                self._send_batch(session)
            if stopping:
                return

    def _send_batch(self, session: socket.socket | None) -> None:
        """What the buffers hold, to ``session``; put back if it did not go there. With the
        send lock held."""
        changes, counts = self._buffer.take()
        reports = self._reports.take()
        # Only the frames with something in them: an empty one encodes to nothing, but
        # making and matching it cost ~2 us each, on every flush (a UDP batch's, say).
        data = f.encode(f.Deltas(changes)) if changes else b""
        if counts:
            data += f.encode(f.Counts(counts))
        if reports:
            data += f.encode(f.Reports(reports))
        if changes:
            # Numbered as write_token numbers it: the hub acks it once it holds them (and
            # the counts before it: a completion is answered once the hub has its count).
            data += f.encode(f.Mark(self._buffer.taken))
        payload, self._stats_payload = self._stats_payload, None
        if payload is not None:
            data += f.encode(f.Stats([f.StatsEntry(os.getpid(), self.role, payload)]))
        if not data:
            data = f.encode(f.Heartbeat())
        if not self._write(data, session):
            self._buffer.put_back(changes, counts)
            self._reports.put_back(reports)
            if payload is not None and self._stats_payload is None:
                self._stats_payload = payload

    def _send_replica(
        self,
        torrents: list[bytes],
        claims: list[tuple[bytes, int]],
        session: socket.socket | None = None,
    ) -> bool:
        """Re-send the totals we last knew and the live peers of ``torrents``, one by one.

        A fresh process has nothing to re-send; one that served while the hub
        was away sends what the hub may lack (the hub passes on only news).
        """
        core = self.core
        store = core.store
        if not self._send(f.encode(f.Totals(claims)), session):
            return False
        for peers, _ in walk(store, torrents, core.lock, totals=False):
            if not self._send(f.encode(f.Snapshot(peers)), session):
                return False
        with core.lock:
            held = core.ws.held_by(os.getpid())
        waiting = list(self._ws_waiting)
        if not self._send(
            f.encode(f.WsPeers(waiting + held)) + f.encode(f.SnapshotDone()), session
        ):
            return False
        for _ in waiting:  # not clear(): one that failed to go meanwhile waits for the next
            self._ws_waiting.popleft()
        return True


def start_client(
    core: TrackerCore, path: str | None, role: int = f.ROLE_WORKER
) -> SyncClient | None:
    """A started client for ``path``, or None when sync is off (``path`` None)."""
    if path is None:
        return None
    client = SyncClient(core, path, role=role)
    client.start()
    return client


def warn_if_alone(path: str | None, workers: int, connected: bool = False) -> bool:
    """Log loudly when several workers will each see only part of every swarm.

    Called once at worker start-up (gunicorn's ``post_worker_init``); without
    ``connected`` it probes ``path``. Returns whether it warned.
    """
    if workers <= 1 or connected:
        return False
    if path is None:
        reason = "sync is off (sync_socket = 'off')"
    else:
        why = why_no_hub(path)
        if why is None:
            return False
        reason = f"no sync hub answers at {path} ({why})"
    log.warning(
        "%s: each of the %d workers sees only part of every swarm and hands out partial "
        "peer lists; run udp-sidecar (it is the sync hub) or use one worker",
        reason,
        workers,
    )
    return True
