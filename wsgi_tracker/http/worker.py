"""``wsgi_tracker.http.worker.TrackerWorker``: gunicorn's gevent worker with a lean HTTP/1.1 loop.

gunicorn's own gevent workers parse every request in layers of Python built for
generality; on an announce (a ~300-byte GET answered with ~400 bytes) that
parsing, not the tracker, is most of the cost, and ``-k gevent`` also starved
some keep-alive connections (p99 ~350 ms) under load. This worker keeps
gunicorn's process model, signals, graceful shutdown and monkey-patching, and
replaces only the per-connection request loop: one ``recv`` per request head,
``http11`` to parse it, one write per response, TCP_NODELAY set. The
complete responses made in one turn of the event loop go out back to back
when the turn ends (``Outbox``), so a client woken by the first finds the rest.
It is a complete WSGI server (request bodies by length or chunked, keep-alive,
streamed and chunked responses, HEAD, ``Expect: 100-continue``), so the host
site's own pages work unchanged.

It is also the edge a flood meets (docs/HARDENING.md): a request head must be
complete within ``http_head_timeout``, a body must keep up ``http_body_min_rate``
(``BodyPace``), one address holds at most
``http_connections_per_address`` connections, gunicorn's ``limit_request_*``
bound the head, and a response is framed by what its head declares (never more
body than its Content-Length, a short one closes the connection).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from email.utils import formatdate
from typing import Any

import gevent
import gevent.event
from gevent.hub import Hub
from gunicorn.http.wsgi import base_environ
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import HTTPException

from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.addresses import parse_ip
from wsgi_tracker.http.chunked import BodyError, ChunkedBody, LengthBody, framing_for
from wsgi_tracker.http.http11 import (
    SERVER_ERROR,
    UPGRADE_KEY,
    HeadLimits,
    HttpError,
    PartialHead,
    RequestHead,
    ResponseHead,
    environ_for,
    parse_request_head,
    response_head,
    skip_empty_lines,
)
from wsgi_tracker.http.proxy import ClientAddress

log = logging.getLogger("wsgi_tracker.worker")

# The socket hand-over of an Upgrade request (http11.UPGRADE_KEY): the handler the app
# passes gets the socket, the bytes already read after the request head, and ``done``,
# which it calls (once) after it has closed the socket; the socket counts against the
# worker's bounds until then. The handler may return at once and keep the socket.
Release = Callable[[], None]
Handler = Callable[[socket.socket, bytes, Release], None]

RECV_BYTES = 65536
DRAIN_LIMIT = 65536  # unread request body we will skip to keep a connection alive
SWEEP_SECONDS = 0.25  # how often idle connections' deadlines are checked (Deadlines)
# Before a pipelined request (the next one already read with the last), every other
# connection gets its turn: a timed sleep, since the loop polls sockets before a timer
# fires and gevent's sleep(0) lets none be polled. Without it one client streaming
# requests held the worker for as long as it sent (1.1 s for 256 KB of announces).
PIPELINE_YIELD = 1e-6
# Past this share of worker_connections in use, each new connection closes the one that
# has waited longest for a request head (``TrackerWorker._shed``). Without it half-sent
# heads from a few dozen addresses, each under the per-address bound, held every slot:
# the head deadline freed them, and the flood took them again before a bystander could
# (the session 15 attack pass: 61 of 77 bystander announces answered in 140 s, the
# slowest after 4.25 s). A connection mid-request is never closed so.
SHED_AT = 0.9


class _Clock:
    """The Date header, formatted once a second instead of once a request."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


class BodyPace:
    """How slowly a body may come: ``grace`` seconds from its first read, then one more
    second per ``min_rate`` bytes received (Apache's mod_reqtimeout ``MinRate``).

    The head has its deadline (``http_head_timeout``); without one for the body a
    client could hold a connection for ever by trickling a POST (each read waits
    only gunicorn's keepalive, and a byte every few seconds never trips it).
    """

    __slots__ = ("grace", "idle", "min_rate")

    def __init__(self, grace: float, min_rate: int, idle: float | None) -> None:
        self.grace = grace
        self.min_rate = min_rate  # 0: no rule
        self.idle = idle  # the socket's usual timeout, put back after each read


class AppBodyError(BodyError, HTTPException):
    """What an app's read of a broken body raises: a BodyError that is also werkzeug's
    HTTPException with the body's status, so a Flask app answers it as the client's
    error it is, with no traceback, instead of a 500 (an app need not know the worker).
    Whatever the app answers, the worker sends the body's own refusal."""

    def __init__(self, error: BodyError) -> None:
        super().__init__(str(error), error.status)
        self.code = int(error.status[:3])

    def __str__(self) -> str:
        return str(self.description)


def app_body_error(error: BodyError) -> AppBodyError:
    """The AppBodyError to raise in the app, Django's ``BadRequest`` too once Django is
    loaded: Django took the worker's error for its own and logged "Internal Server
    Error" with a traceback (and sent ``got_request_exception``, which error trackers
    report); ``wsgi_tracker.django`` drops its log line for it (the worker logs one)."""
    return _app_body_error_class()(error)


@functools.cache
def _app_body_error_class() -> type[AppBodyError]:
    bad_request = getattr(sys.modules.get("django.core.exceptions"), "BadRequest", None)
    if bad_request is None:
        return AppBodyError
    return type("AppBodyError", (AppBodyError, bad_request), {})


class RequestBody:
    """``wsgi.input``: the body as its framing (``http.chunked``) delimits it, buffered
    bytes first; it reads b"" at the body's end, never into the next request."""

    def __init__(
        self,
        sock: socket.socket,
        buffered: bytes,
        framing: LengthBody | ChunkedBody,
        expect: bool,
        pace: BodyPace,
    ) -> None:
        self._sock = sock
        self._framing = framing
        # The body bytes read and not yet taken: a bytearray, so a read() of a long body
        # appends each read and takes from the front in place (bytes were copied whole on
        # each: quadratic, 35 s for a 32 MB read()).
        self._buf = bytearray(framing.feed(buffered) if buffered else b"")  # BodyError: at once
        self._expect = expect and not framing.done
        self._broken: BodyError | None = None  # once broken, the rest cannot be read
        self._pace = pace
        self._deadline = 0.0  # set by the first read from the socket

    @property
    def broken(self) -> BodyError | None:
        """Why the body could not be read (its framing broke, it came too slowly or was too
        long), whatever the app made of the error: then the client's answer is this one."""
        return self._broken

    def _fill(self, want: int) -> None:
        if self._broken is not None:
            raise app_body_error(self._broken)
        if self._expect:
            self._expect = False
            self._sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            self._read_into_buffer(want)
        except BodyError as exc:
            self._broken = exc
            raise app_body_error(exc) from None

    def _read_into_buffer(self, want: int) -> None:
        framing = self._framing
        while len(self._buf) < want and not framing.done:
            chunk = self._recv(framing.wire_left())
            if not chunk:  # a BodyError, not an OSError: the app's framework logged a
                # traceback for each (~2.5 KB of log for a 60-byte request, at will)
                raise BodyError("client closed the connection inside a request body")
            self._buf += framing.feed(chunk)

    def _recv(self, left: int | None) -> bytes:
        """One read of the body's bytes, within the pace's deadline (BodyError 408 past it)."""
        size = RECV_BYTES if left is None else min(RECV_BYTES, left)
        pace = self._pace
        if not pace.min_rate:
            return self._sock.recv(size)
        now = time.monotonic()
        if not self._deadline:
            self._deadline = now + pace.grace
        wait = self._deadline - now
        if wait > 0:
            self._sock.settimeout(wait if pace.idle is None else min(wait, pace.idle))
            try:
                chunk = self._sock.recv(size)
            except TimeoutError:
                if time.monotonic() < self._deadline:
                    raise  # the keepalive's wait: a silent client, closed as before
                chunk = None
            finally:
                self._sock.settimeout(pace.idle)
            if chunk is not None:
                self._deadline += len(chunk) / pace.min_rate
                return chunk
        raise BodyError(f"request body slower than {pace.min_rate} bytes/s", "408 Request Timeout")

    def read(self, size: int | None = -1) -> bytes:
        want = sys.maxsize if size is None or size < 0 else size
        self._fill(want)
        return self._take(want)

    def readline(self, size: int | None = -1) -> bytes:
        seen = 0  # the bytes already looked through for a LF
        while (end := self._buf.find(b"\n", seen)) < 0 and not self._framing.done:
            if size is not None and 0 <= size <= len(self._buf):
                break
            seen = len(self._buf)
            self._fill(seen + 1)
        end = end + 1 or len(self._buf)
        if size is not None and size >= 0:
            end = min(end, size)
        return self._take(end)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> RequestBody:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def finish(self) -> bytes | None:
        """Skip what the app left unread (up to ``DRAIN_LIMIT`` bytes); the bytes after
        the body, or None to close (a longer rest, a broken framing)."""
        framing = self._framing
        self._expect = False  # never invite a body nobody will read
        left = framing.wire_left()
        if self._broken is not None or (left is not None and left > DRAIN_LIMIT):
            return None
        skipped = 0
        try:
            while not framing.done and skipped <= DRAIN_LIMIT:
                chunk = self._recv(left)
                if not chunk:
                    return None
                skipped += len(chunk)
                framing.feed(chunk)
                left = framing.wire_left()
        except BodyError as exc:
            log.info("closing a connection after its request: %s", exc)
            return None
        return framing.rest if framing.done else None


class _Sent:
    """What gunicorn's access-log atoms read of a response: status, headers, body bytes."""

    __slots__ = ("headers", "sent", "status")

    def __init__(self, status: str, headers: list[tuple[str, str]], sent: int) -> None:
        self.status = status
        self.headers = headers
        self.sent = sent


def _access_log_enabled(cfg: Any, log: Any) -> bool:
    """Whether an access line would go anywhere: gunicorn's own test (glogging: an access
    log, a log config or a syslog redirect), and a handler on its access logger, so that
    a log config which leaves that logger alone costs no per-request formatting."""
    configured = bool(
        cfg.accesslog
        or cfg.logconfig
        or cfg.logconfig_dict
        or getattr(cfg, "logconfig_json", None)
        or (cfg.syslog and not cfg.disable_redirect_access_to_syslog)
    )
    access = getattr(log, "access_log", None)  # absent from a custom logger_class: trust it
    return configured and (access is None or access.hasHandlers())


def _send_all(sock: socket.socket, data: bytes) -> None:
    """``sendall``, but one plain ``send`` when the kernel takes it all (the usual case).

    gevent's ``sendall`` on a socket with a timeout arms a Timeout object per
    call; that was ~5% of an announce in a py-spy profile.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


class Outbox:
    """Complete responses of one event-loop turn, written back to back before the next poll.

    A write that wakes a client asleep in ``epoll`` pays for the wake-up (in
    this VM an inter-processor interrupt: the largest single cost of an
    announce in py-spy). Under load one turn of the loop serves many
    connections; writing their replies one after the other when the turn
    ends lets every reply after the first find the client awake (the UDP
    sidecar's batch send is the same idea, docs/BENCHMARKS.md).

    The requests are still read and answered in the turn their bytes arrive,
    so no connection is served twice while another waits. A connection's
    greenlet calls ``drain`` before it writes anything else or closes: its
    deferred bytes go first, so replies keep their order and a close drops
    none. What the kernel does not take at once is finished by a greenlet
    of its own. Plain sockets only: a TLS socket's bytes are not what its fd
    carries.
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._pending: dict[socket.socket, bytes] = {}  # in the order they were made
        self._sending: dict[socket.socket, gevent.Greenlet] = {}  # a rest being sent

    def defer(self, sock: socket.socket, data: bytes) -> None:
        """Write ``data`` on ``sock`` when this turn of the loop ends."""
        if sock in self._pending or sock in self._sending:
            self.drain(sock)
        if not self._pending:
            self._hub.loop.run_callback(self._flush)
        self._pending[sock] = data

    def drain(self, sock: socket.socket) -> None:
        """Write now whatever of ``sock``'s is still deferred (before its next bytes or close)."""
        if self._pending or self._sending:
            data = self._pending.pop(sock, None)
            if data is not None:
                sock.sendall(data)
            rest = self._sending.pop(sock, None)
            if rest is not None:
                rest.join()

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for sock, data in pending.items():
            try:
                sent = os.write(sock.fileno(), data)  # non-blocking, as gevent's sockets are
            except BlockingIOError:
                sent = 0
            except OSError:
                _give_up(sock)
                continue
            if sent < len(data):
                self._sending[sock] = gevent.spawn(self._send_rest, sock, data[sent:])

    def _send_rest(self, sock: socket.socket, rest: bytes) -> None:
        try:
            sock.sendall(rest)  # bounded by the socket's timeout, as a direct send is
        except OSError:
            _give_up(sock)
        if self._sending.get(sock) is gevent.getcurrent():
            del self._sending[sock]


def _give_up(sock: socket.socket) -> None:
    """A reply could not be written: end the connection, as a failed direct send does.

    The shutdown wakes the connection's greenlet (its read sees the end) and leaves
    the close to it.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Deadlines:
    """Connections waiting for their next bytes, each until a deadline.

    One sweeper greenlet ends the waits that ran past their deadline (within
    ``SWEEP_SECONDS``), instead of a gevent ``Timeout`` armed and cancelled
    around every wait: that was ~5% of a keep-alive announce in py-spy, and
    a wait costs two dict operations here.
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._waiting: dict[Any, float] = {}  # io watcher -> monotonic deadline

    def wait(self, watcher: Any, deadline: float) -> None:
        """Until ``watcher``'s fd is readable; TimeoutError once ``deadline`` has passed."""
        self._waiting[watcher] = deadline
        try:
            self._hub.wait(watcher)
        finally:
            del self._waiting[watcher]

    def sweep(self) -> None:
        """Forever: every SWEEP_SECONDS, end the waits past their deadline."""
        while True:
            gevent.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for watcher, deadline in list(self._waiting.items()):
                if deadline <= now:
                    self._hub.cancel_wait(watcher, TimeoutError("no request bytes in time"))


def address_key(ip: str) -> str:
    """What the per-address cap counts: an IPv4 address, or an IPv6 address's /64.

    One IPv6 host usually owns a whole /64 (SLAAC, privacy addresses), so
    counting single addresses would give an attacker 2^64 fresh ones.
    """
    if ":" not in ip:
        return ip
    packed = parse_ip(ip)
    if packed is None:
        return ip
    if len(packed) == 4:  # IPv4-mapped, from a dual-stack socket
        return socket.inet_ntop(socket.AF_INET, packed)
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


#: gunicorn settings whose code this worker replaces without doing what they ask.
NOT_APPLIED = ("pre_request", "post_request", "proxy_protocol")


def settings_not_applied(cfg: Any) -> list[str]:
    """The NOT_APPLIED settings changed from gunicorn's default: each is warned about at start,
    so none is ignored silently."""
    return [
        name
        for name in NOT_APPLIED
        if name in cfg.settings and cfg.settings[name].value != cfg.settings[name].default
    ]


def warn_without_hub_hooks(workers: int, sync_explicit: bool) -> bool:
    """Warn, as the project's gunicorn config does, when several workers will not sync.

    Without that config (``gunicorn -k ...TrackerWorker -w 2 app``) nothing joins the
    hub unless ``sync_socket`` names one; returns whether it warned.
    """
    if workers <= 1 or sync_explicit:
        return False
    log.warning(
        "TrackerWorker runs without the project's gunicorn config (-c "
        "wsgi_tracker/running/gunicorn_conf.py or deploy/gunicorn.conf.py), so no worker "
        "joins the sync hub: each of the %d workers sees only part of every swarm and hands "
        "out partial peer lists; use that config, set sync_socket, or run one worker",
        workers,
    )
    return True


def _nothing() -> None:
    """The release of a connection that no per-address bound counts (a Unix socket)."""


class TrackerWorker(GeventWorker):
    """Use with ``gunicorn -k wsgi_tracker.http.worker.TrackerWorker``."""

    # Set by the project's gunicorn config (post_worker_init), which joins the sync hub.
    hub_hooks = False
    _alive = True
    _stopping: gevent.event.Event | None = None  # made in run(), in the patched worker

    @property
    def alive(self) -> bool:
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        """gunicorn ends ``alive`` in several places (its signal handlers among them):
        each of them wakes ``_websockets_go_away`` at once. Polling the flag every
        0.1 s was a tenth of an idle worker's time under a UDP load."""
        self._alive = value
        if not value and self._stopping is not None:
            self._stopping.set()

    def init_process(self) -> None:
        for name in settings_not_applied(self.cfg):
            self.log.warning(
                "TrackerWorker does not apply gunicorn's %s setting; it is ignored", name
            )
        self._access_log = _access_log_enabled(self.cfg, self.log)
        self._clock = _Clock()
        self._base: dict[str, Any] | None = None
        cfg = self.cfg
        self._limits = HeadLimits.from_gunicorn(
            cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
        )
        # gunicorn's keepalive <= 0 means no keep-alive; then the idle wait is moot.
        self._keepalive = cfg.keepalive > 0
        self._idle_timeout = cfg.keepalive if cfg.keepalive > 0 else None
        settings = TrackerConfig.load()
        self._head_timeout = float(settings.http_head_timeout)
        self._pace = BodyPace(self._head_timeout, settings.http_body_min_rate, self._idle_timeout)
        self._max_body = settings.http_max_body_bytes
        self._per_address = settings.http_connections_per_address
        self._exempt = ClientAddress(settings.trusted_proxies).is_trusted
        self._connections: dict[str, int] = {}
        self._outbox: Outbox | None = None
        self._deadlines: Deadlines | None = None
        self._handed_over = 0  # upgraded sockets held by their handlers, not by the pool
        self._live = 0  # connections in gunicorn's pool now
        self._shed_at = max(1, int(self.worker_connections * SHED_AT))
        # The connections waiting for a request head (a first one, a keep-alive one, or
        # the rest of one), oldest wait first: a dict keeps insertion order.
        self._heads: dict[socket.socket, None] = {}
        super().init_process()

    def run(self) -> None:
        if not self.cfg.is_ssl:  # TLS bytes are not what the fd carries: gevent's calls then
            hub = gevent.get_hub()  # here, in the patched worker
            self._outbox = Outbox(hub)
            self._deadlines = Deadlines(hub)
            gevent.spawn(self._deadlines.sweep)
        if not self.hub_hooks:
            # Imported here, in the patched worker: the master imports this module first.
            from wsgi_tracker.http.middleware import find_tracker

            tracker = find_tracker(self.wsgi)
            warn_without_hub_hooks(
                self.cfg.workers, tracker is not None and tracker.config.sync_explicit
            )
        self._stopping = gevent.event.Event()
        if not self.alive:
            self._stopping.set()
        going = gevent.spawn(self._websockets_go_away)
        super().run()
        # Handed-over sockets are not in gunicorn's pool, so run() did not wait for them.
        going.join(5.0)

    def _websockets_go_away(self) -> None:
        """Once the worker is stopping, close its WebSocket connections with 1001.

        Every graceful stop ends ``alive``: SIGTERM (``serve``'s stop reaches the
        workers so), the old workers of a SIGHUP reload, max_requests, a dead
        master. Held connections never end on their own, so gunicorn would wait
        ``graceful_timeout`` and then kill them without a close frame.
        """
        assert self._stopping is not None
        self._stopping.wait()
        # Imported here, in the patched worker: the master imports this module first.
        from wsgi_tracker.websocket.server import going_away

        going_away("server going away: this worker is stopping; reconnect")

    def notify(self) -> None:
        """Stop gracefully when the master dies, as on SIGTERM.

        gunicorn's gevent worker calls ``sys.exit`` here instead: requests in
        flight were cut off, and a completion one of them counted after the
        sync client's last flush was answered but never reached the hub.
        """
        if self.ppid != os.getppid():
            if self.alive:
                self.log.info("Parent changed, stopping gracefully: %s", self)
            self.alive = False
            return
        super().notify()

    def _environ_base(self, listener: socket.socket) -> dict[str, Any]:
        if self._base is None:
            env = base_environ(self.cfg)
            env.update(
                {
                    "wsgi.multithread": True,
                    "wsgi.multiprocess": self.cfg.workers > 1,
                    "wsgi.input_terminated": True,
                    "SCRIPT_NAME": "",
                    "SERVER_SOFTWARE": "wsgi-tracker",
                    "wsgi.url_scheme": "https" if self.cfg.is_ssl else "http",
                }
            )
            name = listener.getsockname()
            if isinstance(name, tuple):
                env["SERVER_NAME"], env["SERVER_PORT"] = str(name[0]), str(name[1])
            else:
                env["SERVER_NAME"], env["SERVER_PORT"] = "localhost", "80"
            self._base = env
        return self._base

    def handle(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        if not isinstance(addr, tuple):  # a Unix socket: a local proxy, never capped
            self._handle(listener, client, {"REMOTE_ADDR": "", "REMOTE_PORT": ""}, _nothing)
            return
        ip = addr[0]
        key = address_key(ip)
        held = self._connections.get(key, 0)
        if self._per_address and held >= self._per_address and not self._exempt(ip):
            # Refused at once, so the flood's connections never wait in gunicorn's pool
            # (worker_connections) where everyone else's would queue behind them.
            with contextlib.suppress(OSError):
                client.settimeout(1)
                self._refuse(
                    client,
                    HttpError(
                        "503 Service Unavailable",
                        f"more than {self._per_address} connections from {key}",
                    ),
                )
            client.close()
            return
        self._connections[key] = held + 1
        kept = False
        try:
            peer = {"REMOTE_ADDR": ip, "REMOTE_PORT": str(addr[1])}
            kept = self._handle(listener, client, peer, lambda: self._release(key))
        finally:
            if not kept:
                self._release(key)

    def _release(self, key: str) -> None:
        left = self._connections[key] - 1
        if left:
            self._connections[key] = left
        else:
            del self._connections[key]

    def _handle(
        self, listener: socket.socket, client: socket.socket, peer: dict[str, str], release: Release
    ) -> bool:
        """Serve one connection; True if an upgrade handler kept the socket (and calls
        ``release`` once it is done with it)."""
        self._live += 1
        if self._live > self._shed_at:
            self._shed()
        if client.family in (socket.AF_INET, socket.AF_INET6):
            # Without it a keep-alive reply waits ~40 ms for the client's delayed ACK.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.settimeout(self._head_timeout)  # a new connection owes its first head at once
        base = {**self._environ_base(listener), **peer}
        watcher = None if self._deadlines is None else gevent.get_hub().loop.io(client.fileno(), 1)
        kept = False
        try:
            kept = self._serve(client, base, watcher, release)
        except (OSError, TimeoutError):
            pass  # the client went away or idled out; nothing to answer
        finally:
            if self._outbox is not None:
                with contextlib.suppress(OSError):
                    self._outbox.drain(client)
            if watcher is not None:
                watcher.close()
            if not kept:
                client.close()
            self._heads.pop(client, None)
            self._live -= 1
        return kept

    def _shed(self) -> None:
        """Close the connection waiting longest for a request head, to keep slots free
        (``SHED_AT``): a client that sends its request at once is then never the one,
        and one idle longest on keep-alive reconnects when it has something to ask.
        A shutdown, not a close: its reader, in another greenlet, sees the stream end."""
        heads = self._heads
        if heads:
            oldest = next(iter(heads))
            del heads[oldest]
            with contextlib.suppress(OSError):
                oldest.shutdown(socket.SHUT_RDWR)

    def _hand_over(
        self, handler: Handler, sock: socket.socket, after: bytes, release: Release
    ) -> bool:
        """Give an upgraded socket to its handler; False (refused, 503) past the worker's
        ``worker_connections`` held this way: they are not in gunicorn's pool, which
        bounds the requests in flight apart from them."""
        if self._handed_over >= self.worker_connections:
            self._refuse(
                sock,
                HttpError(
                    "503 Service Unavailable",
                    f"this worker holds {self._handed_over} upgraded connections, its most",
                ),
            )
            return False
        self._handed_over += 1
        live = True

        def done() -> None:
            nonlocal live
            if live:
                live = False
                self._handed_over -= 1
                release()

        try:
            handler(sock, after, done)
        except Exception:  # the socket was the handler's: nothing to answer on it now
            self.log.exception("upgrade handler failed")
            sock.close()
            done()
        return True

    # Long on purpose: the keep-alive loop of one connection, on every request's path.
    def _serve(
        self, sock: socket.socket, base: dict[str, Any], watcher: Any, release: Release
    ) -> bool:
        """The keep-alive loop; True once an upgrade handler holds the socket."""
        pending = b""
        first = True
        deadline = time.monotonic() + self._head_timeout  # the first head's, from the connect
        # A connection accepted just as a graceful stop or reload began still gets its
        # answer (with Connection: close); only a kept-alive one is closed unanswered.
        heads = self._heads
        while first or self.alive:
            heads[sock] = None  # waiting for a head, the newest to: the last one shed
            if not pending:  # idle between requests: keepalive (the first: the head deadline)
                if watcher is None:
                    pending = sock.recv(RECV_BYTES)
                elif first:
                    pending = self._read(sock, watcher, deadline, at_once=True)
                else:
                    idle = time.monotonic() + (self._idle_timeout or self._head_timeout)
                    pending = self._read(sock, watcher, idle, at_once=False)
                if not pending:
                    return False
            if pending[:2] == b"\r\n":
                pending = skip_empty_lines(pending)
            end = pending.find(b"\r\n\r\n")
            if end < 0:
                if not first:
                    deadline = time.monotonic() + self._head_timeout
                rest = self._rest_of_head(sock, pending, deadline)
                if rest is None:
                    return False
                pending, end = rest
            elif first:
                sock.settimeout(self._idle_timeout)
            first = False
            heads.pop(sock, None)  # (gone already if it was shed just as its head came)
            head, pending = pending[:end], pending[end + 4 :]
            try:
                req = parse_request_head(head, self._limits)
                framing = framing_for(req, self._limits, self._max_body)
                body = RequestBody(sock, pending, framing, req.expect_continue, self._pace)
            except HttpError as exc:
                self._refuse(sock, exc)
                return False
            env = environ_for(req, base)
            env["wsgi.input"] = body
            upgrade: list[Handler] = []
            if "HTTP_UPGRADE" in env:
                env[UPGRADE_KEY] = upgrade.append
            if not self._respond(sock, env, req, body, upgrade):
                return False
            after = body.finish()
            if upgrade:
                if after is None:
                    return False
                # The socket's new owner may hold it for hours: the request's head,
                # environ and body must not stay alive in this frame (~3 KB each).
                handler = upgrade[0]
                del env, req, body, framing, head, upgrade, base
                return self._hand_over(handler, sock, after, release)
            if after is None:
                return False
            pending = after
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if pending or watcher is None:  # (TLS: gevent's recv would not yield either)
                gevent.sleep(PIPELINE_YIELD)
        return False

    def _read(self, sock: socket.socket, watcher: Any, deadline: float, at_once: bool) -> bytes:
        """A plain socket's next bytes, waited for until ``deadline`` (TimeoutError after).

        ``at_once``: try before waiting (a new connection's head is usually there).
        Otherwise wait first: after a reply the next request cannot have come yet
        (it is not even written, see Outbox), so gevent's ``recv`` would pay a
        failed read and a Timeout for nothing.
        """
        assert self._deadlines is not None
        fd = sock.fileno()
        if not at_once:
            self._deadlines.wait(watcher, deadline)
        while True:
            try:
                return os.read(fd, RECV_BYTES)
            except BlockingIOError:
                self._deadlines.wait(watcher, deadline)

    def _rest_of_head(
        self, sock: socket.socket, pending: bytes, deadline: float
    ) -> tuple[bytes, int] | None:
        """Read until the head ends, by ``deadline``: (bytes, end of head), or None to close.

        The slow path: a head that did not come in one read. What is already
        wrong in its start is refused at once; one that is not complete by the
        deadline gets 408, however steadily its bytes trickle in (slowloris).
        """
        head = PartialHead(self._limits)
        try:
            end = head.feed(pending)
            while end < 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(RECV_BYTES)
                if not chunk:
                    return None
                end = head.feed(chunk)
            sock.settimeout(self._idle_timeout)
            return head.data, end
        except TimeoutError:
            self._refuse(
                sock,
                HttpError(
                    "408 Request Timeout",
                    f"request head not complete within {self._head_timeout:g} s",
                ),
            )
        except HttpError as exc:
            self._refuse(sock, exc)
        return None

    def _refuse(self, sock: socket.socket, exc: HttpError) -> None:
        if self._outbox is not None:
            self._outbox.drain(sock)
        body = f"{exc.status}: {exc}\n".encode("latin-1", "replace")
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        frame = response_head(
            exc.status, headers, http10=False, head_only=False, keep_alive=False,
            date=self._clock.date(),
        )  # fmt: skip
        sock.sendall(frame.data + body)

    # Long on purpose: one request from environ to the last body byte, with framing enforced inline;
    # on every request's path.
    def _respond(
        self,
        sock: socket.socket,
        env: dict[str, Any],
        req: RequestHead,
        body: RequestBody,
        upgrade: list[Handler],
    ) -> bool:
        """Run the app and send its response (none if it took the socket over, see
        UPGRADE_KEY); returns whether to keep the connection."""
        started: list[Any] = []
        frame: ResponseHead | None = None
        sent = 0  # body bytes sent
        cut = False  # the app yielded more than its Content-Length
        keep = req.keep_alive and self.alive and self._keepalive
        http10 = req.version == "HTTP/1.0"
        head_only = req.method == "HEAD"
        when = datetime.now() if self._access_log else None
        outbox = self._outbox
        if outbox is not None:
            outbox.drain(sock)  # the previous reply first (a pipelined request)

        def send(data: bytes) -> None:
            nonlocal frame, sent, cut
            if not started:
                raise AssertionError("the app wrote a body before calling start_response")
            out = b""
            if frame is None:
                if body.broken is not None:  # the app answered a body it could not read
                    raise body.broken
                status, headers = started
                frame = response_head(
                    status, headers, http10=http10, head_only=head_only, keep_alive=keep,
                    date=self._clock.date(),
                )  # fmt: skip
                out = frame.data
            if data and frame.body:
                length = frame.length
                if length is not None and sent + len(data) > length:
                    data = data[: length - sent]
                    cut = True
                sent += len(data)
                out += b"%x\r\n%b\r\n" % (len(data), data) if frame.chunked and data else data
            if not out:
                return
            if outbox is not None and frame.keep_alive and (not frame.body or sent == frame.length):
                outbox.defer(sock, out)  # complete, and the connection stays: see Outbox
            else:
                if outbox is not None:
                    outbox.drain(sock)
                _send_all(sock, out)

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info and frame is not None:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return send

        try:
            result: Iterable[bytes] = self.wsgi(env, start_response)
            try:
                if upgrade:
                    return True
                for data in result:
                    if data:
                        send(data)
                        if cut:
                            break
                if frame is None:
                    send(b"")
                assert frame is not None
                if frame.chunked:
                    sock.sendall(b"0\r\n\r\n")
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except OSError:
            return False
        except Exception as exc:
            broken = body.broken
            if broken is not None:  # the client's body broke as the app read it: its fault
                self.log.info("Bad request body for %s: %s", env.get("RAW_URI"), broken)
                if frame is None:
                    started[:] = [broken.status, []]
                    self._refuse(sock, broken)
                return False
            if isinstance(exc, HttpError):  # the app's head broke the rules: no traceback
                self.log.error("Refused the response to %s: %s", env.get("RAW_URI"), exc)
            else:
                self.log.exception("Error handling request %s", env.get("RAW_URI"))
            if frame is None:
                started[:] = [SERVER_ERROR, []]
                self._refuse(sock, HttpError(SERVER_ERROR, "the app failed"))
            return False
        finally:
            if when is not None and started:
                request_time = datetime.now() - when
                log_headers = [(n.replace("_", "-"), v) for n, v in req.headers]
                self.log.access(_Sent(started[0], started[1], sent), log_headers, env, request_time)
        if frame.length is not None and frame.body and (cut or sent < frame.length):
            self.log.error(
                "The app sent %s body bytes than its Content-Length (%d) for %s; "
                "the connection is closed",
                "more" if cut else f"{sent}, fewer",
                frame.length,
                env.get("RAW_URI"),
            )
            return False
        return frame.keep_alive
