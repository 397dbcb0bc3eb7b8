"""TrackerWorker under a real gunicorn: a complete WSGI server for the host site too."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import bencodepy
import pytest
from sample_site import BIG
from servers import Server, announce_url, gunicorn, http_get, serve

pytestmark = pytest.mark.integration
TESTS_DIR = str(Path(__file__).parents[1])  # the support modules: servers.py, the apps


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with gunicorn("sample_site:app", extra_args=("--pythonpath", TESTS_DIR)) as srv:
        yield srv


def exchange(srv: Server, raw: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes on one connection and read until the server closes it.

    The last request of each test says ``Connection: close`` (or is refused), so
    the server's close marks the end of the exchange.
    """
    data = b""
    with socket.create_connection((srv.host, srv.port), timeout=timeout) as sock:
        sock.sendall(raw)
        while chunk := sock.recv(65536):
            data += chunk
    return data


CLOSE = b"Host: t\r\nConnection: close\r\n"  # the last request of an exchange


def test_site_pages_pass_through_untouched(server: Server) -> None:
    status, body = http_get(server.url + "/hello?a=1")
    assert (status, body) == (200, b"site /hello a=1")


def test_announce_is_answered_by_the_tracker(server: Server) -> None:
    url = announce_url(server.url + "/announce", os.urandom(20), os.urandom(20), 6881, 0)
    status, body = http_get(url)
    assert status == 200
    assert bencodepy.decode(body)[b"interval"] >= 1800


def test_pipelined_requests_on_one_connection_all_answered(server: Server) -> None:
    raw = b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % n for n in range(4))
    data = exchange(server, raw + b"GET /p4 HTTP/1.1\r\n" + CLOSE + b"\r\n")
    assert [b"site /p%d " % n in data for n in range(5)] == [True] * 5


def test_a_client_streaming_pipelined_requests_lets_other_connections_in_between(
    server: Server,
) -> None:
    """The next pipelined request waits for every other connection's turn: one client
    sending requests as fast as it reads the replies must not hold the worker (an attack
    pass held it 1.1 s with 256 KB of announces). A bystander asking once the stream is
    being answered is answered while most of the stream is still to come."""
    n = 800  # ~100 KB of replies: the kernel's buffers take them all, so no write waits
    raw = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n" * (n - 1)
    raw += b"GET /hello HTTP/1.1\r\n" + CLOSE + b"\r\n"
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(raw)
        data = sock.recv(65536)  # the stream is being answered
        assert data.startswith(b"HTTP/1.1 200")
        assert http_get(server.url + "/bystander") == (200, b"site /bystander ")
        sock.setblocking(False)
        try:
            while chunk := sock.recv(1 << 20):
                data += chunk
        except BlockingIOError:
            pass
        answered_before = data.count(b"HTTP/1.1 200")
        sock.setblocking(True)
        while chunk := sock.recv(1 << 20):
            data += chunk
    assert data.count(b"site /hello ") == n  # all of it, in the end
    assert answered_before < n // 2


def test_a_reply_larger_than_the_socket_buffer_arrives_whole_and_in_order(server: Server) -> None:
    """The worker's end-of-turn write takes part of it; the rest follows, then the next
    reply, while other connections are answered meanwhile."""
    raw = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\n" + CLOSE + b"\r\n"
    data = b""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(raw)
        first = sock.recv(4096)  # the kernel's buffers hold a part; the worker waits to send on
        assert http_get(server.url + "/hello") == (200, b"site /hello ")
        data = first
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % len(BIG) in head
    assert rest[: len(BIG)] == BIG
    assert rest[len(BIG) :].startswith(b"HTTP/1.1 200") and rest.endswith(b"site /after ")


def test_request_body_is_read_by_content_length(server: Server) -> None:
    raw = b"POST /echo HTTP/1.1\r\n" + CLOSE + b"Content-Length: 11\r\n\r\nhello world"
    assert exchange(server, raw).endswith(b"\r\n\r\nhello world")


def test_body_iterates_by_lines(server: Server) -> None:
    raw = b"POST /lines HTTP/1.1\r\n" + CLOSE + b"Content-Length: 6\r\n\r\na\nb\nc\n"
    assert exchange(server, raw).endswith(b"\r\n\r\n3")


def test_expect_continue_gets_an_interim_reply(server: Server) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"ok")
        assert sock.recv(1000).endswith(b"\r\n\r\nok")


CHUNKED = b"Transfer-Encoding: chunked\r\n"


def test_a_chunked_body_is_read_whole_and_the_next_request_follows(server: Server) -> None:
    raw = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\n" + CHUNKED + b"\r\n"
        b"6;ext=1\r\nhello \r\n5\r\nworld\r\n0\r\nX-Checksum: 1\r\n\r\n"
        b"GET /after HTTP/1.1\r\n" + CLOSE + b"\r\n"
    )
    first, _, second = (
        exchange(server, raw).partition(b"HTTP/1.1 200 OK\r\n")[2].partition(b"HTTP/1.1 200")
    )
    assert first.endswith(b"\r\n\r\nhello world") and second.endswith(b"site /after ")


def test_an_unread_chunked_body_is_skipped_before_the_next_request(server: Server) -> None:
    raw = (
        b"POST /ignored HTTP/1.1\r\nHost: t\r\n" + CHUNKED + b"\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /after HTTP/1.1\r\n" + CLOSE + b"\r\n"
    )
    data = exchange(server, raw)
    assert data.count(b"HTTP/1.1 200") == 2 and data.endswith(b"site /after ")


def test_a_chunked_body_trickling_in_is_read_as_it_comes(server: Server) -> None:
    """Sizes, data and the chunk ends split across reads, with an Expect: 100-continue."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\n" + CLOSE + CHUNKED + b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        for piece in (b"0", b"a\r\n0123", b"456789\r", b"\n0", b"\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.02)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.endswith(b"\r\n\r\n0123456789")


def test_a_broken_chunked_body_is_refused_and_nothing_after_it_is_read(server: Server) -> None:
    """Broken in the bytes that came with the head: refused before the app runs. Broken
    after the app answered without reading it: the connection closes unread."""
    smuggled = b"GET /smuggled HTTP/1.1\r\n" + CLOSE + b"\r\n"
    head = b"POST /ignored HTTP/1.1\r\nHost: t\r\n" + CHUNKED + b"\r\n"
    data = exchange(server, head + b"3\r\nabcXX" + smuggled)
    assert data.startswith(b"HTTP/1.1 400") and b"not followed by CRLF" in data
    assert b"smuggled" not in data
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(head + b"3\r\nabc")
        reply = b""
        while not reply.endswith(b"site /ignored "):
            reply += sock.recv(65536)
        sock.sendall(b"XX" + smuggled)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert reply.startswith(b"HTTP/1.1 200") and rest == b""


def test_a_flask_site_under_serve_takes_a_chunked_upload(tmp_path: Path) -> None:
    """http.client sends the body chunked (no length known), as a streaming client does."""
    payload = os.urandom(300_000)
    with serve(tmp_path, workers=2, app="tests.upload_site:app") as stack:
        conn = http.client.HTTPConnection(stack.http.host, stack.http.port, timeout=20)
        try:
            parts = (payload[i : i + 70_000] for i in range(0, len(payload), 70_000))
            conn.request("POST", "/upload", body=parts, encode_chunked=True)
            reply = conn.getresponse()
            assert (reply.status, reply.read()) == (
                200,
                f"{len(payload)} {hashlib.sha1(payload).hexdigest()}".encode(),
            )
            form = iter([b"a=1&", b"b=two"])
            conn.request(
                "POST", "/form", body=form, encode_chunked=True,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
            reply = conn.getresponse()
            assert (reply.status, reply.read()) == (200, b"a=1,b=two")  # the same connection
        finally:
            conn.close()


def test_unread_body_is_skipped_before_the_next_request(server: Server) -> None:
    raw = (
        b"POST /ignored HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nxxxxx"
        b"GET /after HTTP/1.1\r\n" + CLOSE + b"\r\n"
    )
    assert b"site /after" in exchange(server, raw)


def test_response_without_length_is_chunked(server: Server) -> None:
    data = exchange(server, b"GET /stream HTTP/1.1\r\n" + CLOSE + b"\r\n")
    assert b"Transfer-Encoding: chunked" in data
    assert data.endswith(b"6\r\npart0;\r\n6\r\npart1;\r\n6\r\npart2;\r\n0\r\n\r\n")


def test_http10_without_length_is_closed_after_the_body(server: Server) -> None:
    data = exchange(server, b"GET /stream HTTP/1.0\r\n\r\n")
    assert b"Connection: close" in data and data.endswith(b"part0;part1;part2;")


def test_head_request_gets_no_body(server: Server) -> None:
    raw = b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\nGET /y HTTP/1.1\r\n" + CLOSE + b"\r\n"
    data = exchange(server, raw)
    assert b"Content-Length: 8\r\n" in data and b"site /x" not in data and b"site /y" in data


def test_app_error_gets_500_and_the_worker_lives_on(server: Server) -> None:
    data = exchange(server, b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")  # 500 closes
    assert data.startswith(b"HTTP/1.1 500 ")
    assert http_get(server.url + "/still")[0] == 200


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/3.0\r\n\r\n", b"505"),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\nzz\r\n",
            b"400",
        ),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414"),  # over limit_request_line
    ],
)
def test_malformed_requests_get_a_status_and_a_close(
    server: Server, raw: bytes, status: bytes
) -> None:
    data = exchange(server, raw)
    assert data.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in data


def test_idle_keep_alive_connection_is_closed_after_the_keepalive_time() -> None:
    with (
        gunicorn(
            "sample_site:app", extra_args=("--pythonpath", TESTS_DIR, "--keep-alive", "1")
        ) as srv,
        socket.create_connection((srv.host, srv.port), timeout=15) as sock,
    ):
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while b"site /a" not in data:
            data += sock.recv(65536)
        # Idle now: the server closes within its keepalive (1 s) plus the reaper's tick.
        assert sock.recv(65536) == b""


def test_a_reply_the_client_never_reads_ends_its_connection_at_the_send_timeout() -> None:
    """Past the kernel's buffers the rest of a reply is written under the connection's
    timeout (its keepalive, 1 s here); then the worker gives up and ends the connection,
    answering others meanwhile."""
    with (
        gunicorn(
            "sample_site:app", extra_args=("--pythonpath", TESTS_DIR, "--keep-alive", "1")
        ) as srv,
        socket.create_connection((srv.host, srv.port), timeout=15) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        assert http_get(srv.url + "/hello") == (200, b"site /hello ")
        time.sleep(3)  # read nothing for well past the 1 s send timeout
        data = b""
        for _ in range(len(BIG) // 1024):  # ends at the server's close, long before
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        assert len(data) < len(BIG)  # cut: the connection ended without the rest
