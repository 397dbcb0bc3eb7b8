"""The HTTP server as an attacker meets it: strict heads, framed responses, no flood outage.

A real gunicorn with ``TrackerWorker`` serves ``sample_site`` (the tracker in
front of a small site whose ``MISFRAMED`` pages break HTTP framing on purpose).
Attackers connect from 127.0.0.2, the bystanders they must not hurt from
127.0.0.3, a trusted proxy from 127.0.0.4. Every read has a timeout well under
the server's keep-alive (30 s), so "refused at once" means answered before
that timeout, not a hang. Nothing is asserted about speed: the flood test
counts (every bystander answered, at most the cap of the flood's connections
held) and its one bound is far below the time the flood's connections would
take to free a slot.
"""

from __future__ import annotations

import contextlib
import re
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Server, gunicorn, http_get, read_to_close

from wsgi_tracker.config import TrackerConfig

pytestmark = pytest.mark.integration
TESTS_DIR = str(Path(__file__).parents[1])  # the support modules: servers.py, the apps
ATTACKER, BYSTANDER, PROXY = "127.0.0.2", "127.0.0.3", "127.0.0.4"
HEAD_TIMEOUT = 5
CAP = 8
READ_TIMEOUT = 15.0  # far below keepalive (30 s): a reply by then was not waiting for it


@pytest.fixture(scope="module")
def site() -> Iterator[Server]:
    env = {
        "WSGI_TRACKER_HTTP_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
        "WSGI_TRACKER_HTTP_CONNECTIONS_PER_ADDRESS": str(CAP),
        "WSGI_TRACKER_TRUSTED_PROXIES": PROXY,
    }
    with gunicorn("sample_site:app", env=env, extra_args=("--pythonpath", TESTS_DIR)) as srv:
        yield srv


def connect(srv: Server, source: str = BYSTANDER) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(READ_TIMEOUT)
    sock.bind((source, 0))
    sock.connect((srv.host, srv.port))
    return sock


def talk(srv: Server, data: bytes, source: str = BYSTANDER) -> bytes:
    """Send ``data`` without half-closing, and read until the server closes the connection."""
    with connect(srv, source) as sock:
        sock.sendall(data)
        return read_to_close(sock)


def get(path: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def status(reply: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    return int(match.group(1)) if match else None


# --- strict request heads ------------------------------------------------------------------


def test_bare_lf_in_header_is_refused(site: Server) -> None:
    # The smuggling report: h11 reads one POST with a 35-byte body, the old worker
    # read a GET /smuggled after it. Now there is one answer, a 400, and a close.
    smuggled = get(b"/smuggled")
    raw = b"POST /echo HTTP/1.1\r\nHost: x\nContent-Length: %d\r\n\r\n" % len(smuggled)
    reply = talk(site, raw + smuggled)
    assert status(reply) == 400 and b"bare LF" in reply
    assert reply.count(b"HTTP/1.1 ") == 1 and b"smuggled" not in reply


def test_all_lf_request_is_refused_at_once(site: Server) -> None:
    reply = talk(site, b"GET /echo HTTP/1.1\nHost: t\n\n")
    assert status(reply) == 400 and b"bare LF" in reply


def test_http09_request_is_refused_at_once(site: Server) -> None:
    assert status(talk(site, b"GET /echo\r\n")) == 400


@pytest.mark.parametrize(
    "value", [b"a\rb", b"a\x00b", b"a\x01b", b"a\x7f"], ids=["CR", "NUL", "0x01", "DEL"]
)
def test_control_bytes_in_header_values_are_refused(site: Server, value: bytes) -> None:
    reply = talk(site, get(b"/x", b"X-Test: " + value + b"\r\n"))
    assert status(reply) == 400 and b"site /x" not in reply


def test_obs_fold_is_refused(site: Server) -> None:
    reply = talk(site, get(b"/x", b"X-Test: a\r\n folded\r\n"))
    assert status(reply) == 400 and b"obs-fold" in reply


def test_duplicate_host_is_refused(site: Server) -> None:
    reply = talk(site, b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert status(reply) == 400 and b"Host" in reply


def test_missing_host_on_http11_is_refused_but_not_on_http10(site: Server) -> None:
    assert status(talk(site, b"GET /x HTTP/1.1\r\n\r\n")) == 400
    reply = talk(site, b"GET /x HTTP/1.0\r\n\r\n")
    assert status(reply) == 200 and reply.endswith(b"site /x ")


@pytest.mark.parametrize(
    "fields",
    [
        b"Content-Length: " + b"9" * 5000 + b"\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 1, 2\r\n",
        b"Content-Length: 1\r\nContent-Length: 2\r\n",
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["5000 digits", "negative", "conflicting list", "conflicting fields", "with chunked"],
)
def test_malformed_content_length_is_refused(site: Server, fields: bytes) -> None:
    reply = talk(site, b"POST /echo HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\nabc")
    assert status(reply) == 400
    assert http_get(site.url + "/still")[0] == 200  # no traceback took the worker down


@pytest.mark.parametrize(
    "fields",
    [b"Transfer-Encoding: gzip\r\n", b"Transfer-Encoding: chunked\r\n" * 2],
    ids=["gzip", "twice"],
)
def test_transfer_encoding_other_than_one_chunked_is_refused(site: Server, fields: bytes) -> None:
    assert status(talk(site, b"POST /echo HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")) == 501


# --- responses framed by what they declare ---------------------------------------------------


def test_body_longer_than_content_length_is_cut_and_closed(site: Server) -> None:
    reply = talk(site, get(b"/long") + get(b"/after"))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.endswith(b"\r\nContent-Length: 2") and body == b"he"  # and no injected "llo world"
    assert b"site /after" not in reply  # closed, so nothing can pose as the next response


def test_short_body_closes_the_connection(site: Server) -> None:
    reply = talk(site, get(b"/short") + get(b"/after"))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.endswith(b"\r\nContent-Length: 20") and body == b"hi"
    assert b"site /after" not in reply


@pytest.mark.parametrize("path", [b"/inject", b"/bad-name"])
def test_crlf_or_bad_chars_in_app_header_is_a_500(site: Server, path: bytes) -> None:
    reply = talk(site, get(path))
    assert status(reply) == 500
    assert b"X-Injected" not in reply and b"Set-Cookie" not in reply


# --- slow clients and floods -----------------------------------------------------------------


def test_slowloris_is_closed_by_head_deadline(site: Server) -> None:
    with connect(site) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        reply = b""
        for _ in range(100):  # a byte every 0.2 s: 20 s of drip, less than keepalive
            with contextlib.suppress(OSError):  # the server may close between two bytes
                sock.sendall(b"a")
            ready, _, _ = selectors.select.select([sock], [], [], 0.2)
            if ready:
                reply = read_to_close(sock)
                break
    assert status(reply) == 408 and f"within {HEAD_TIMEOUT} s".encode() in reply


def trickle(sock: socket.socket, pieces: int, piece: bytes, every: float) -> bytes:
    """Send ``piece`` every ``every`` seconds, at most ``pieces`` times; the reply, if one
    came before the body ended (the server's verdict on a slow body)."""
    for _ in range(pieces):
        with contextlib.suppress(OSError):  # the server may close between two pieces
            sock.sendall(piece)
        ready, _, _ = selectors.select.select([sock], [], [], every)
        if ready:
            return read_to_close(sock)
    return b""


def test_a_body_trickled_below_the_min_rate_gets_408(site: Server) -> None:
    """A slow POST (R.U.D.Y.): 10 bytes every 0.2 s, 50 bytes/s against the default 500,
    passes the head deadline and would outlast keepalive; it is cut once the grace of
    ``http_head_timeout`` and what its bytes earned are spent."""
    with connect(site) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        reply = trickle(sock, 100, b"x" * 10, 0.2)  # 20 s at most: less than keepalive
    assert status(reply) == 408 and b"slower than 500 bytes/s" in reply


def test_a_body_above_the_min_rate_is_read_past_the_grace(site: Server) -> None:
    """3,000 bytes/s for about 6 s, longer than the grace: read whole (its bytes earn time)."""
    body = b"y" * 300
    with connect(site) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\n" + b"Host: t\r\nConnection: close\r\n")
        sock.sendall(b"Content-Length: %d\r\n\r\n" % (len(body) * 60))
        early = trickle(sock, 60, body, 0.1)
        reply = early or read_to_close(sock)
    assert status(reply) == 200 and reply.endswith(body * 60)


def test_silent_connection_is_closed_by_head_deadline(site: Server) -> None:
    with connect(site) as sock:
        assert read_to_close(sock) == b""  # closed by the server, not by our timeout


def test_connections_over_the_per_address_cap_get_503(site: Server) -> None:
    held = [connect(site, ATTACKER) for _ in range(CAP)]
    try:
        with connect(site, ATTACKER) as extra:
            reply = read_to_close(extra)
        assert status(reply) == 503 and f"more than {CAP} connections".encode() in reply
        assert status(talk(site, get(b"/x", b"Connection: close\r\n"))) == 200  # others served
        proxied = [connect(site, PROXY) for _ in range(CAP + 2)]  # a trusted proxy: no cap
        try:
            proxied[-1].sendall(get(b"/x", b"Connection: close\r\n"))
            assert status(read_to_close(proxied[-1])) == 200
        finally:
            for sock in proxied:
                sock.close()
    finally:
        for sock in held:
            sock.close()


FLOOD = 4500
PROBES = 50
# The flood test's head deadline: a flood connection holds its slot this long unless
# refused, so a bystander answered well within it was not queued behind the flood.
FLOOD_HEAD_TIMEOUT = 120
PROBE_WITHIN = 30.0  # seconds: a bound on each probe, a quarter of that deadline
WORKERS = 2


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            hard = need  # root may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def open_flood(srv: Server, count: int, source: str = ATTACKER) -> list[socket.socket]:
    """``count`` connections from ``source``, each with half a request head, none finished."""
    socks = []
    with selectors.DefaultSelector() as sel:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((source, 0))
            sock.connect_ex((srv.host, srv.port))
            socks.append(sock)
            sel.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + 30
        while sel.get_map() and time.monotonic() < deadline:  # bounded: connects settle
            for key, _ in sel.select(timeout=1):
                sel.unregister(key.fileobj)
                with contextlib.suppress(OSError):
                    key.fileobj.send(b"GET /announce HTTP/1.1\r\nHo")  # type: ignore[union-attr]
    return socks


def held_open(flood: list[socket.socket], at_most: int, within: float) -> int:
    """How many flood connections the server still holds open (neither answered nor
    closed), read until only ``at_most`` are left or ``within`` seconds passed."""
    open_ = set(flood)
    with selectors.DefaultSelector() as sel:
        for sock in flood:
            sel.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + within
        while len(open_) > at_most and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                sock = key.fileobj
                with contextlib.suppress(OSError):  # a reset is a close too
                    sock.recv(65536)  # type: ignore[union-attr]
                sel.unregister(sock)
                open_.discard(sock)  # type: ignore[arg-type]
    return len(open_)


def probe(srv: Server) -> bool:
    """One bystander request on a fresh connection: answered 200 within PROBE_WITHIN?"""
    try:
        with socket.socket() as sock:
            sock.settimeout(PROBE_WITHIN)
            sock.bind((BYSTANDER, 0))
            sock.connect((srv.host, srv.port))
            sock.sendall(get(b"/scrape?info_hash=" + b"%AA" * 20, b"Connection: close\r\n"))
            return status(read_to_close(sock)) == 200
    except OSError:
        return False


def test_one_address_cannot_exhaust_connections() -> None:
    """4500 half-sent heads from one address against 2 workers of 2000 connections each.

    Without the per-address cap the flood would take every slot and a bystander
    would wait for the head deadline to free one (FLOOD_HEAD_TIMEOUT, here four
    times the probe's bound). With it, every probe is answered and the server
    holds at most the cap per worker of the flood's connections; the rest are
    refused (503) or reset at once.
    """
    raise_nofile(FLOOD + 1024)
    cap = TrackerConfig().http_connections_per_address  # the shipped setting
    env = {"WSGI_TRACKER_HTTP_HEAD_TIMEOUT": str(FLOOD_HEAD_TIMEOUT)}
    with gunicorn(workers=WORKERS, env=env) as srv:  # shipped settings: 2000 connections each
        flood = open_flood(srv, FLOOD)
        try:
            answered = sum(probe(srv) for _ in range(PROBES))
            held = held_open(flood, WORKERS * cap, PROBE_WITHIN)
        finally:
            for sock in flood:
                sock.close()
    assert answered == PROBES, f"{answered} of {PROBES} bystanders answered"
    assert held <= WORKERS * cap, f"{held} flood connections held, cap {cap} a worker"


# --- gunicorn settings the worker honours -----------------------------------------------------


def test_limit_request_settings_are_honoured() -> None:
    limits = ("--limit-request-line", "100", "--limit-request-fields", "5",
              "--limit-request-field_size", "60")  # fmt: skip
    with gunicorn("sample_site:app", extra_args=("--pythonpath", TESTS_DIR, *limits)) as srv:
        assert status(talk(srv, get(b"/" + b"a" * 100))) == 414
        assert status(talk(srv, get(b"/x", b"".join(b"X-%d: 1\r\n" % i for i in range(5))))) == 431
        assert status(talk(srv, get(b"/x", b"X-Big: " + b"b" * 60 + b"\r\n"))) == 431
        fields = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 40) for i in range(4)) + b"Connection: close"
        assert status(talk(srv, get(b"/x", fields[:-17] + b"\r\n"))) == 200


def test_keepalive_zero_closes_after_each_response() -> None:
    args = ("--pythonpath", TESTS_DIR, "--keep-alive", "0")
    with gunicorn("sample_site:app", extra_args=args) as srv:
        reply = talk(srv, get(b"/a") + get(b"/b"))
    assert b"site /a" in reply and b"Connection: close" in reply and b"site /b" not in reply


def test_access_logfile_writes_gunicorn_format_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    fmt = '%(h)s "%(r)s" %(s)s %(b)s "%(a)s" %({x-test}i)s %({content-length}o)s'
    args = ("--pythonpath", TESTS_DIR, "--access-logfile", str(log), "--access-logformat", fmt)
    with gunicorn("sample_site:app", extra_args=args) as srv:
        fields = b"User-Agent: probe/1\r\nX-Test: seen\r\nConnection: close\r\n"
        request = get(b"/hello?a=1", fields)
        assert status(talk(srv, request, source="127.0.0.1")) == 200
        line = '127.0.0.1 "GET /hello?a=1 HTTP/1.1" 200 15 "probe/1" seen 15'
        for _ in range(100):  # bounded: the log line is written right after the reply
            if log.exists() and line in log.read_text():
                break
            time.sleep(0.05)
        assert line in log.read_text()
        assert "GET /hello" not in srv.stderr()  # to the file named, not to the error log


def test_no_access_lines_without_access_logfile(site: Server) -> None:
    assert status(talk(site, get(b"/unlogged", b"Connection: close\r\n"))) == 200
    assert http_get(site.url + "/after-unlogged")[0] == 200
    assert "/unlogged" not in site.stderr()  # the project's log config leaves access lines off


SHED_SLOTS = 200  # worker_connections of the shedding test's one worker


def test_half_sent_heads_from_many_addresses_cannot_hold_every_slot() -> None:
    """Half-sent heads from several addresses, each under the per-address bound and
    together past worker_connections. Before, they held every slot until the head
    deadline (FLOOD_HEAD_TIMEOUT, four times the probe's bound), and a bystander waited
    for it. Now each new connection past 90% of the slots closes the one waiting
    longest for its head: every probe is answered, and the oldest flood connections
    are the ones closed."""
    cap = TrackerConfig().http_connections_per_address
    sources = [f"127.0.3.{n}" for n in range(1, 4)]  # 3 x 100: past the 200 slots
    env = {"WSGI_TRACKER_HTTP_HEAD_TIMEOUT": str(FLOOD_HEAD_TIMEOUT)}
    extra = ("--worker-connections", str(SHED_SLOTS))
    with gunicorn(workers=1, env=env, extra_args=extra) as srv:
        flood: list[socket.socket] = []
        try:
            for source in sources:
                flood += open_flood(srv, min(100, cap - 1), source)
            answered = sum(probe(srv) for _ in range(PROBES))
            first = flood[:50]
            closed = len(first) - held_open(first, 0, PROBE_WITHIN)
        finally:
            for sock in flood:
                sock.close()
    assert answered == PROBES, f"{answered} of {PROBES} bystanders answered"
    assert closed == len(first), f"{closed} of the {len(first)} oldest flood connections closed"
