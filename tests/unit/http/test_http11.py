"""Sans-IO HTTP/1.1 heads: what the tracker's worker accepts, refuses, and sends."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.http.http11 import HttpError, environ_for, parse_request_head, response_head


def test_announce_head_becomes_a_wsgi_environ() -> None:
    head = (
        b"GET /tracker/ann%20ounce?info_hash=%AA&port=1 HTTP/1.1\r\n"
        b"Host: example.org\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
        b"Content-Type: text/plain"
    )
    req = parse_request_head(head, 4094)
    env = environ_for(req, {"wsgi.url_scheme": "http"})
    assert req.keep_alive and not req.chunked and req.content_length is None
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/tracker/ann ounce"
    assert env["QUERY_STRING"] == "info_hash=%AA&port=1"
    assert env["HTTP_HOST"] == "example.org"
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1,10.0.0.2"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["wsgi.url_scheme"] == "http"


@pytest.mark.parametrize(
    ("version", "connection", "keep"),
    [
        (b"HTTP/1.1", b"", True),
        (b"HTTP/1.1", b"Connection: close", False),
        (b"HTTP/1.0", b"", False),
        (b"HTTP/1.0", b"Connection: Keep-Alive", True),
    ],
)
def test_keep_alive_follows_version_and_connection(
    version: bytes, connection: bytes, keep: bool
) -> None:
    head = b"GET / " + version + (b"\r\n" + connection if connection else b"")
    assert parse_request_head(head, 4094).keep_alive is keep


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /\r\nHost: x", "400 Bad Request"),
        (b"GET / HTTP/2.0", "505 HTTP Version Not Supported"),
        (b"G@T / HTTP/1.1", "400 Bad Request"),
        (b"GET /a\x00b HTTP/1.1", "400 Bad Request"),
        (b"GET / HTTP/1.1\r\nno colon here", "400 Bad Request"),
        (b"GET / HTTP/1.1\r\nContent-Length: -1", "400 Bad Request"),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2", "400 Bad Request"),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip", "501 Not Implemented"),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3",
            "400 Bad Request",
        ),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1", "414 URI Too Long"),
        (b"GET / HTTP/1.1" + b"\r\nA: b" * 101, "431 Request Header Fields Too Large"),
    ],
)
def test_malformed_heads_are_refused_with_a_status(head: bytes, status: str) -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(head, 4094)
    assert info.value.status == status


@given(st.binary(max_size=300))
def test_arbitrary_heads_parse_or_raise_http_error(head: bytes) -> None:
    try:
        req = parse_request_head(head, 4094)
    except HttpError:
        return
    environ_for(req, {})


def test_response_head_frames_the_body() -> None:
    head = response_head("200 OK", [("Content-Length", "3")], True, False, b"D")
    assert head == b"HTTP/1.1 200 OK\r\nDate: D\r\nContent-Length: 3\r\n\r\n"
    head = response_head("200 OK", [], False, True, b"D")
    assert head.endswith(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
