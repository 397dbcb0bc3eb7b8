"""``wsgi_tracker.http.worker.TrackerWorker``: gunicorn's gevent worker with a lean HTTP/1.1 loop.

gunicorn's own gevent workers parse every request in layers of Python built for
generality; on an announce (a ~300-byte GET answered with ~400 bytes) that
parsing, not the tracker, is most of the cost, and ``-k gevent`` also starved
some keep-alive connections (p99 ~350 ms) under load. This worker keeps
gunicorn's process model, signals, graceful shutdown and monkey-patching, and
replaces only the per-connection request loop: one ``recv`` per request head,
``http11`` to parse it, one ``sendall`` per response, TCP_NODELAY set.
It is a complete WSGI server (request bodies, keep-alive, streamed and chunked
responses, HEAD, ``Expect: 100-continue``), so the host site's own pages work
unchanged; a chunked *request* body is refused with 411.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import Any

from gunicorn.http.wsgi import base_environ
from gunicorn.workers.ggevent import GeventWorker

from wsgi_tracker.http.http11 import (
    HttpError,
    RequestHead,
    environ_for,
    parse_request_head,
    response_head,
)

log = logging.getLogger("wsgi_tracker.worker")
RECV_BYTES = 65536
MAX_HEAD_BYTES = 65536
DRAIN_LIMIT = 65536  # unread request body we will skip to keep a connection alive


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


class RequestBody:
    """``wsgi.input``: reads exactly Content-Length bytes, buffered bytes first."""

    def __init__(self, sock: socket.socket, buffered: bytes, length: int, expect: bool) -> None:
        self._sock = sock
        self._buf = buffered[:length]
        self._after = buffered[length:]  # the start of a pipelined next request
        self._left = length - len(self._buf)  # still on the socket
        self._expect = expect and self._left > 0

    def _fill(self, want: int) -> None:
        if self._expect:
            self._expect = False
            self._sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(self._buf) < want and self._left > 0:
            chunk = self._sock.recv(min(RECV_BYTES, self._left))
            if not chunk:
                raise OSError("client closed the connection inside a request body")
            self._left -= len(chunk)
            self._buf += chunk

    def read(self, size: int | None = -1) -> bytes:
        want = len(self._buf) + self._left if size is None or size < 0 else size
        self._fill(want)
        data, self._buf = self._buf[:want], self._buf[want:]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        while b"\n" not in self._buf and self._left > 0:
            if size is not None and 0 <= size <= len(self._buf):
                break
            self._fill(len(self._buf) + 1)
        end = self._buf.find(b"\n") + 1 or len(self._buf)
        if size is not None and size >= 0:
            end = min(end, size)
        line, self._buf = self._buf[:end], self._buf[end:]
        return line

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
        """Skip what the app left unread; the bytes after the body, or None to close."""
        if self._left > DRAIN_LIMIT:
            return None
        self._expect = False  # never invite a body nobody will read
        self._fill(len(self._buf) + self._left)
        return self._after


def _send_all(sock: socket.socket, data: bytes) -> None:
    """``sendall``, but one plain ``send`` when the kernel takes it all (the usual case).

    gevent's ``sendall`` on a socket with a timeout arms a Timeout object per
    call; that was ~5% of an announce in a py-spy profile.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


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


class TrackerWorker(GeventWorker):
    """Use with ``gunicorn -k wsgi_tracker.http.worker.TrackerWorker``."""

    alive: bool  # gunicorn's Worker sets it; declared for the type checker
    # Set by the project's gunicorn config (post_worker_init), which joins the sync hub.
    hub_hooks = False

    def init_process(self) -> None:
        self._clock = _Clock()
        self._base: dict[str, Any] | None = None
        super().init_process()

    def run(self) -> None:
        if not self.hub_hooks:
            # Imported here, in the patched worker: the master imports this module first.
            from wsgi_tracker.http.middleware import find_tracker

            tracker = find_tracker(self.wsgi)
            warn_without_hub_hooks(
                self.cfg.workers, tracker is not None and tracker.config.sync_explicit
            )
        super().run()

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
        if client.family in (socket.AF_INET, socket.AF_INET6):
            # Without it a keep-alive reply waits ~40 ms for the client's delayed ACK.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.settimeout(self.cfg.keepalive or None)
        base = self._environ_base(listener)
        if isinstance(addr, tuple):
            base = {**base, "REMOTE_ADDR": addr[0], "REMOTE_PORT": str(addr[1])}
        else:
            base = {**base, "REMOTE_ADDR": "", "REMOTE_PORT": ""}
        try:
            self._serve(client, base)
        except (OSError, TimeoutError):
            pass  # the client went away or idled out; nothing to answer
        finally:
            client.close()

    def _serve(self, sock: socket.socket, base: dict[str, Any]) -> None:
        pending = b""
        max_line = self.cfg.limit_request_line or MAX_HEAD_BYTES
        first = True
        # A connection accepted just as a graceful stop or reload began still gets its
        # answer (with Connection: close); only a kept-alive one is closed unanswered.
        while first or self.alive:
            first = False
            end = pending.find(b"\r\n\r\n")
            while end < 0:
                if len(pending) > MAX_HEAD_BYTES:
                    self._refuse(sock, HttpError("431 Request Header Fields Too Large", "head"))
                    return
                chunk = sock.recv(RECV_BYTES)
                if not chunk:
                    return
                pending += chunk
                end = pending.find(b"\r\n\r\n")
            head, pending = pending[:end], pending[end + 4 :]
            try:
                req = parse_request_head(head.lstrip(b"\r\n"), max_line)
                if req.chunked:
                    raise HttpError("411 Length Required", "chunked request bodies")
            except HttpError as exc:
                self._refuse(sock, exc)
                return
            body = RequestBody(sock, pending, req.content_length or 0, req.expect_continue)
            env = environ_for(req, base)
            env["wsgi.input"] = body
            if not self._respond(sock, env, req):
                return
            after = body.finish()
            if after is None:
                return
            pending = after
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False

    def _refuse(self, sock: socket.socket, exc: HttpError) -> None:
        body = f"{exc.status}: {exc}\n".encode("latin-1", "replace")
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        sock.sendall(response_head(exc.status, headers, False, False, self._clock.date()) + body)

    def _respond(self, sock: socket.socket, env: dict[str, Any], req: RequestHead) -> bool:
        """Run the app and send its response; returns whether to keep the connection."""
        started: list[Any] = []
        sent_head = False
        keep = req.keep_alive and self.alive
        chunked = False
        head_only = req.method == "HEAD"

        def head() -> bytes:
            nonlocal keep, chunked
            status, headers = started
            if not any(n.lower() == "content-length" for n, _ in headers):
                if req.version == "HTTP/1.1" and not head_only:
                    chunked = True
                else:
                    keep = False
            if keep and req.version == "HTTP/1.0":
                headers = [*headers, ("Connection", "keep-alive")]
            return response_head(status, headers, keep, chunked, self._clock.date())

        def send(data: bytes) -> None:
            nonlocal sent_head
            if not started:
                raise AssertionError("the app wrote a body before calling start_response")
            out = b""
            if not sent_head:
                out = head()
                sent_head = True
            if data and not head_only:
                out += b"%x\r\n%b\r\n" % (len(data), data) if chunked else data
            if out:
                _send_all(sock, out)

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info and sent_head:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return send

        try:
            result: Iterable[bytes] = self.wsgi(env, start_response)
            try:
                for data in result:
                    if data:
                        send(data)
                if not sent_head:
                    send(b"")
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except OSError:
            return False
        except Exception:
            self.log.exception("Error handling request %s", env.get("RAW_URI"))
            if not sent_head:
                self._refuse(sock, HttpError("500 Internal Server Error", "the app failed"))
            return False
        return keep
