"""The gevent shell of the WebSocket tracker: one upgraded socket, wsproto, WsTracker.

``TrackerWorker`` hands over the socket of a request the middleware accepted
as a WebSocket upgrade (see ``worker.UPGRADE_KEY``); this sends the 101, then
moves bytes between the socket and wsproto's sans-IO connection, and text
messages between wsproto and ``WsTracker``.

Sends never block the greenlet that relays: a message to a peer goes out
with a non-blocking send, and only what the kernel did not take waits in
that connection's outbox for its own writer greenlet (spawned on demand). A
peer that lets more than ``MAX_OUTBOX_BYTES`` pile up is closed, and so is the
one with the most queued whenever all of a worker's outboxes together pass
``ws_max_queued_bytes`` (``_Backlog``): 1,000 slow readers of 1 MiB each were
1 GB a worker.

When the worker stops (``going_away``), every connection it holds is told
1001 "going away" with a reason, so browsers reconnect (to another worker, or
to this one's successor) instead of seeing an abnormal close.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent import socket as gsocket
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from wsgi_tracker.websocket.codec import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_UNSUPPORTED,
    FrameHeaders,
    MessageBuffer,
    WsError,
    switching_protocols,
)
from wsgi_tracker.websocket.relay import Session, WsTracker

log = logging.getLogger("wsgi_tracker.websocket")

Release = Callable[[], None]  # the worker's: called once the socket is closed

RECV_BYTES = 65536
MAX_OUTBOX_BYTES = 1 << 20
CLOSE_WAIT = 2.0  # seconds a client has to answer our close before its socket is shut
SWEEP_EVERY = 1.0  # seconds between idle checks


class _Backlog:
    """The bytes queued in all of this process's outboxes (one worker, one event loop).

    Only outboxes with something pending are in ``outboxes``; the largest is
    looked for only when the total passes ``limit`` (0: no bound).
    """

    __slots__ = ("limit", "outboxes", "total")

    def __init__(self) -> None:
        self.limit = 0
        self.total = 0
        self.outboxes: set[_Outbox] = set()

    def grew(self, outbox: _Outbox, size: int) -> None:
        self.outboxes.add(outbox)
        self.total += size
        while self.limit and self.total > self.limit and self.outboxes:
            largest = max(self.outboxes, key=lambda o: o.queued)
            log.warning(
                "Closed a slow WebSocket reader: %d bytes queued for it, %d for all of this "
                "worker's, over ws_max_queued_bytes (%d)",
                largest.queued,
                self.total,
                self.limit,
            )
            largest.break_off()

    def shrank(self, outbox: _Outbox, size: int, empty: bool) -> None:
        self.total -= size
        if empty:
            self.outboxes.discard(outbox)


_backlog = _Backlog()


class _Outbox:
    """Bytes to one socket, in order, without ever blocking the sender.

    ``pending`` exists only while the kernel is not taking everything (a deque
    costs ~600 bytes, and nearly every held connection never needs one).
    """

    __slots__ = ("broken", "pending", "queued", "sock", "writer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: deque[bytes] | None = None
        self.queued = 0
        self.writer: gevent.Greenlet | None = None
        self.broken = False

    def send(self, data: bytes) -> None:
        if self.broken or not data:
            return
        if not self.pending:
            try:
                sent = self.sock.send(data, 0, timeout=0.0)  # type: ignore[call-arg]
            except OSError:
                sent = 0  # full (EAGAIN) or broken: the writer finds out which
            if sent == len(data):
                return
            data = data[sent:]
        if self.pending is None:
            self.pending = deque()
        self.pending.append(data)
        self.queued += len(data)
        _backlog.grew(self, len(data))  # may break this outbox off, or another
        if self.queued > MAX_OUTBOX_BYTES:
            self.break_off()
        elif self.writer is None and not self.broken:
            self.writer = gevent.spawn(self._write)

    def _write(self) -> None:
        try:
            while self.pending and not self.broken:
                data = self.pending.popleft()
                self.queued -= len(data)
                _backlog.shrank(self, len(data), not self.pending)
                self.sock.sendall(data)
        except OSError:
            self.break_off()
        finally:
            self.writer = None
            if not self.pending:
                self.pending = None

    def break_off(self) -> None:
        """Stop writing and wake the reader (it sees EOF and cleans up)."""
        self.broken = True
        self.pending = None
        if self.queued:
            _backlog.shrank(self, self.queued, True)
            self.queued = 0
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def flush(self, timeout: float) -> None:
        writer = self.writer
        if writer is not None:
            writer.join(timeout)


class WsConnection:
    """One upgraded socket served until it closes, idles out, or breaks a rule.

    No greenlet waits on it while it is idle: a greenlet parked in ``recv``
    was ~8.7 KB of a held connection's ~13 KB (its saved C stack, gunicorn's
    pool Greenlet, its page of Python's frame data stack). An io watcher waits
    instead; when the socket is readable it starts one short-lived greenlet
    that reads once, handles every message in what it read (it may block:
    locks, the sync socket), and re-arms the watcher. The watcher is off
    while that greenlet runs, so one connection's messages are handled one at
    a time, in order; being level-triggered it fires again at once if more is
    waiting, so a busy client takes one read per turn of the loop like any other.
    """

    __slots__ = (
        "buffer", "done", "fd", "headers", "last", "outbox", "release", "session", "sock",
        "tracker", "watcher", "ws",
    )  # fmt: skip

    def __init__(
        self, sock: socket.socket, tracker: WsTracker, passkey: str | None, release: Release
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.tracker = tracker
        self.release = release
        self.done = False
        self.last = time.monotonic()  # data last received, for the idle sweep
        self.ws = Connection(ConnectionType.SERVER)
        self.outbox = _Outbox(sock)
        _backlog.limit = tracker.core.config.ws_max_queued_bytes
        self.session = Session(self.send_text, passkey)
        self.buffer = MessageBuffer(tracker.limits)
        limits = tracker.limits
        self.headers = FrameHeaders(min(limits.max_frame_bytes, limits.max_message_bytes))
        self.watcher = gevent.get_hub().loop.io(self.fd, 1)

    def send_text(self, text: str) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self.outbox.send(self.ws.send(TextMessage(text)))

    def close(self, code: int, reason: str) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self.outbox.send(self.ws.send(CloseConnection(code, reason[:120])))

    def start(self, token: str, buffered: bytes) -> None:
        """Send the 101, handle what came with the request, then wait on the watcher."""
        # Blocking mode for the outbox's writer; reads never block (``_drain`` reads
        # only once the watcher said the socket is readable).
        self.sock.settimeout(None)
        self.outbox.send(switching_protocols(token))
        self.tracker.opened(self.session)
        _held.add(self)
        _start_sweep()
        self._after(self._step(buffered) if buffered else True)

    def _readable(self) -> None:
        """In the event loop itself, which must never block: hand over to a greenlet."""
        self.watcher.stop()
        gevent.spawn_raw(self._drain)  # a bare greenlet: the cheapest to start

    def _drain(self) -> None:
        try:
            data = os.read(self.fd, RECV_BYTES)
        except BlockingIOError:
            keep = True  # woken for nothing (another reader took it): wait again
        except OSError:
            keep = False  # reset by the peer
        else:
            self.last = time.monotonic()
            keep = self._step(data)
        self._after(keep)

    def _step(self, data: bytes) -> bool:
        """Feed ``data`` (b"" at EOF) to wsproto and the tracker; False once it is over."""
        try:
            self.ws.receive_data(data or None)
            return (
                bool(data)
                and self._events(data)
                and self.ws.state is not ConnectionState.CLOSED
                and not self.outbox.broken
            )
        except (OSError, LocalProtocolError):  # a peer gone mid-send
            return False
        except BaseException:
            self.finish()
            raise

    def _after(self, keep: bool) -> None:
        if self.done:
            return  # closed meanwhile (idle sweep, going away)
        if keep:
            self.watcher.start(self._readable)
        else:
            self.finish()

    def idle_out(self) -> None:
        self.close(CLOSE_NORMAL, f"idle for {self.tracker.core.config.ws_idle_timeout} s")
        self.finish()

    def finish(self) -> None:
        """The connection is over: its peers stop everywhere, the socket closes (once)."""
        if self.done:
            return
        self.done = True
        self.watcher.stop()
        _held.discard(self)
        try:
            self.tracker.closed(self.session)
            self.outbox.flush(1.0)
        finally:
            self.watcher.close()
            self.sock.close()
            self.release()

    def _events(self, data: bytes) -> bool:
        """Handle what wsproto made of the bytes so far (``data`` the last of them), then
        check the frame headers in ``data``; False once the socket should close."""
        try:
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    text = self.buffer.add(event.data, event.frame_finished, event.message_finished)
                    if text is not None:
                        self.tracker.handle(self.session, text)
                elif isinstance(event, BytesMessage):
                    raise WsError("binary message: this protocol is JSON text", CLOSE_UNSUPPORTED)
                elif isinstance(event, Ping):
                    self.outbox.send(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        self.outbox.send(self.ws.send(event.response()))
                    else:  # wsproto could not parse a frame (still open): say why
                        self.close(event.code, event.reason or "protocol error")
                    return False
            self.headers.feed(data)
        except WsError as exc:
            assert exc.close_code is not None
            self.close(exc.close_code, exc.reason)
            return False
        return True


# Every connection this process serves, for ``going_away`` and the idle sweep (one
# worker, one event loop).
_held: set[WsConnection] = set()
_sweeper: list[gevent.Greenlet] = []


def _start_sweep() -> None:
    if not _sweeper or _sweeper[0].dead:
        _sweeper[:] = [gevent.spawn(_sweep)]


def _sweep() -> None:
    """Close (1000 "idle") each connection silent past its ``ws_idle_timeout``, instead
    of a timer per connection; ends when no connection is left. Checked every
    ``SWEEP_EVERY`` s, so a close comes up to that much late."""
    while _held:
        gevent.sleep(SWEEP_EVERY)
        now = time.monotonic()
        for conn in list(_held):
            if now - conn.last > conn.tracker.core.config.ws_idle_timeout:
                conn.last = now  # one close, not one a sweep while it closes
                gevent.spawn(conn.idle_out)


def going_away(reason: str, wait: float = CLOSE_WAIT) -> int:
    """Close every held connection with 1001 and ``reason``; returns how many there were.

    Each client gets ``wait`` seconds (together) to answer with its own close,
    which ends its connection cleanly (its peers stop everywhere as on any
    close); the sockets of those that have not are then shut. Without this a
    graceful stop waited ``graceful_timeout`` for connections that never end
    on their own, then dropped them with no close frame (1006 in a browser).
    """
    held = list(_held)
    for conn in held:
        conn.close(CLOSE_GOING_AWAY, reason)
    deadline = time.monotonic() + wait
    while _held and time.monotonic() < deadline:
        gevent.sleep(0.05)
    for conn in list(_held):
        conn.outbox.break_off()
        conn.finish()
    return len(held)


def serve_upgraded(
    sock: socket.socket,
    buffered: bytes,
    release: Release,
    tracker: WsTracker,
    token: str,
    passkey: str | None,
) -> None:
    """The worker's hand-over handler (see middleware): the socket is served from
    here on, and ``release`` is called once it is closed. Returns at once."""
    # gevent's server closes the socket object it accepted once the worker's handler
    # returns: the connection lives on in a socket object of its own on the same fd.
    conn = WsConnection(gsocket.socket(fileno=sock.detach()), tracker, passkey, release)
    try:
        conn.start(token, buffered)
    except (OSError, LocalProtocolError):  # gone before the 101 went out
        conn.finish()
