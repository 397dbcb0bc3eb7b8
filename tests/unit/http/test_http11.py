"""Sans-IO HTTP/1.1 heads: what the tracker's worker accepts, refuses, and sends."""

import importlib.util
import itertools
import sys
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker import compiled
from wsgi_tracker.http.http11 import (
    HeadLimits,
    HttpError,
    PartialHead,
    environ_for,
    parse_request_head,
    response_head,
    skip_empty_lines,
)

LIMITS = HeadLimits(line=4094, fields=100, field_size=8190)


def test_announce_head_becomes_a_wsgi_environ() -> None:
    head = (
        b"GET /tracker/ann%20ounce?info_hash=%AA&port=1 HTTP/1.1\r\n"
        b"Host: example.org\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
        b"Content-Type: text/plain"
    )
    req = parse_request_head(head, LIMITS)
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
    head = b"GET / " + version + b"\r\nHost: t" + (b"\r\n" + connection if connection else b"")
    assert parse_request_head(head, LIMITS).keep_alive is keep


def test_repeated_content_length_is_one_field() -> None:
    head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\nContent-Length: 5"
    req = parse_request_head(head, LIMITS)
    assert req.content_length == 5
    assert environ_for(req, {})["CONTENT_LENGTH"] == "5"


H = b"\r\nHost: t"


@pytest.mark.parametrize(
    ("head", "status", "message"),
    [
        (b"GET /\r\nHost: x", "400", "malformed request line"),
        (b"GET / HTTP/2.0" + H, "505", "unsupported HTTP version"),
        (b"GET / HTTP/1" + H, "400", "malformed HTTP version"),
        (b"G@T / HTTP/1.1" + H, "400", "malformed method"),
        (b"GET /a\x00b HTTP/1.1" + H, "400", "control byte 0x00"),
        (b"GET /\xff HTTP/1.1" + H, "400", "malformed request target"),
        (b"GET / HTTP/1.1" + H + b"\r\nno colon here", "400", "malformed header field"),
        (b"GET / HTTP/1.1" + H + b"\nContent-Length: 35", "400", "bare LF at byte 23"),
        (b"GET / HTTP/1.1" + H + b"\r\nX: a\rb", "400", "bare CR"),
        (b"GET / HTTP/1.1" + H + b"\r\nX: a\x01b", "400", "control byte 0x01"),
        (b"GET / HTTP/1.1" + H + b"\r\nX: a\x7f", "400", "control byte 0x7f"),
        (b"GET / HTTP/1.1" + H + b"\r\nX: a\r\n folded", "400", "obs-fold"),
        (b"GET / HTTP/1.1" + H + H, "400", "more than one Host"),
        (b"GET / HTTP/1.1\r\nX: y", "400", "missing Host"),
        (b"GET / HTTP/1.1" + H + b"\r\nContent-Length: -1", "400", "invalid Content-Length"),
        (b"GET / HTTP/1.1" + H + b"\r\nContent-Length: " + b"9" * 5000, "400", "invalid"),
        (b"GET / HTTP/1.1" + H + b"\r\nContent-Length: 1, 2", "400", "conflicting"),
        (
            b"GET / HTTP/1.1" + H + b"\r\nContent-Length: 1\r\nContent-Length: 2",
            "400",
            "conflicting Content-Length headers",
        ),
        (b"GET / HTTP/1.1" + H + b"\r\nTransfer-Encoding: gzip", "501", "unsupported Transfer"),
        (
            b"GET / HTTP/1.1" + H + b"\r\nTransfer-Encoding: chunked" * 2,
            "501",
            "more than one Transfer-Encoding",
        ),
        (
            b"POST / HTTP/1.1" + H + b"\r\nTransfer-Encoding: chunked\r\nContent-Length: 3",
            "400",
            "both Content-Length and Transfer-Encoding",
        ),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1" + H, "414", "request line over 4094"),
        (b"GET / HTTP/1.1" + b"\r\nA: b" * 101, "431", "more than 100 header fields"),
        (b"GET / HTTP/1.1" + H + b"\r\nA: " + b"b" * 8190, "431", "header field over 8190"),
    ],
)
def test_malformed_heads_are_refused_with_a_status(head: bytes, status: str, message: str) -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(head, LIMITS)
    assert info.value.status.startswith(status)
    assert message in str(info.value)


def test_gunicorn_limits_are_read_as_gunicorn_reads_them() -> None:
    assert HeadLimits.from_gunicorn(4094, 50, 8190) == HeadLimits(4094, 50, 8190)
    assert HeadLimits.from_gunicorn(0, 0, 0) == HeadLimits(0, 32768, 0)  # 0: unlimited
    assert HeadLimits.from_gunicorn(99999, 99999, -1) == HeadLimits(8190, 32768, 8190)
    head = b"GET / HTTP/1.1" + H + b"".join(b"\r\nX-%d: 1" % i for i in range(50))
    with pytest.raises(HttpError, match="more than 50 header fields"):
        parse_request_head(head, HeadLimits(4094, 50, 8190))
    assert parse_request_head(head, HeadLimits(4094, 51, 8190)).method == "GET"
    with pytest.raises(HttpError, match="header field over 10 bytes"):
        parse_request_head(b"GET / HTTP/1.1\r\nHost: 0123456789", HeadLimits(4094, 50, 10))
    assert parse_request_head(b"GET /" + b"a" * 9000 + b" HTTP/1.1" + H, HeadLimits(0, 1, 0))


@pytest.mark.parametrize(
    ("start", "message"),
    [
        (b"GET /echo\r\n", "malformed request line"),  # HTTP/0.9: no blank line will come
        (b"GET / HTTP/1.1\nHost: t\n", "bare LF"),  # all-LF: no CRLF CRLF will come
        (b"GET / HTTP/7.0\r\nHost", "unsupported HTTP version"),
        (b"GET /" + b"a" * 5000, "request line over 4094 bytes"),
    ],
)
def test_a_head_that_cannot_end_well_is_refused_before_it_ends(start: bytes, message: str) -> None:
    with pytest.raises(HttpError, match=message):
        PartialHead(LIMITS).feed(start)


def test_a_head_still_arriving_is_not_refused() -> None:
    for start in (b"", b"GE", b"GET / HTTP/1.1\r\nHo", b"GET / HTTP/1.1\r\nHost: t\r"):
        assert PartialHead(LIMITS).feed(start) == -1


def test_a_head_over_64_kib_is_refused_before_it_ends() -> None:
    head = PartialHead(HeadLimits(line=0, fields=0, field_size=0))
    head.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(HttpError, match="request head over 65536 bytes"):
        for _ in range(70):
            head.feed(b"X-A: " + b"a" * 1017 + b"\r\n")


def test_the_parsed_field_cache_keeps_no_long_block() -> None:
    """A client sending a different long head each time (54 KB, an attack pass) must not
    fill the cache: 512 such blocks held ~55 MB in a worker. Short ones are kept."""
    from wsgi_tracker.http import http11

    for n in range(20):
        filler = b"X-Pad: " + b"%05d" % n + b"p" * 3000
        parse_request_head(b"GET / HTTP/1.1\r\nHost: t\r\n" + filler, LIMITS)
    short = b"Host: t\r\nUser-Agent: ok"
    parse_request_head(b"GET / HTTP/1.1\r\n" + short, LIMITS)
    assert short in http11._FIELDS
    assert max(len(b or b"") for b in http11._FIELDS) <= http11.FIELDS_CACHE_BLOCK


def pure_module(name: str) -> ModuleType:
    """A fresh copy of module ``name`` run from its ``.py``, whether or not it is compiled."""
    spec = importlib.util.spec_from_file_location(f"{name}__pure", compiled.source_path(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_a_head_fed_a_byte_a_read_is_scanned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 29 KB head trickled a byte a read: each byte is checked once and the request line
    parsed once (the old loop re-checked the whole head on every read: 3.3 s of CPU).

    Counted on the module's source: the compiled build calls its functions directly,
    past any patch of the module's globals."""
    http11 = pure_module("wsgi_tracker.http.http11")
    checked: list[int] = []
    lines: list[bytes] = []
    check, parse_line = http11.check_field_bytes, http11.parse_request_line

    def counting_check(block: bytes) -> None:
        checked.append(len(block))
        check(block)

    def counting_parse(line: bytes, max_line: int) -> tuple[bytes, bytes, bytes]:
        lines.append(line)
        return parse_line(line, max_line)

    monkeypatch.setattr(http11, "check_field_bytes", counting_check)
    monkeypatch.setattr(http11, "parse_request_line", counting_parse)
    whole = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: %b\r\n" % (b"p" * 300) * 90 + b"\r\n"
    head = http11.PartialHead(LIMITS)
    ends = [head.feed(whole[i : i + 1]) for i in range(len(whole))]
    assert ends[-1] == len(whole) - 4 and set(ends[:-1]) == {-1}
    assert sum(checked) <= len(whole)  # every byte once (a CR held back is counted once too)
    assert lines == [b"GET / HTTP/1.1"]
    assert parse_request_head(head.data[: ends[-1]], LIMITS).headers[0] == ("HOST", "t")


@given(
    st.lists(
        st.sampled_from(
            [b"GET / HTTP/1.1", b"GET /x", b"HTTP/7.0", b"\r\n", b"\r", b"\n", b"Host: t",
             b"A: b", b" ", b"\x00", b"\xff", b":", b"a" * 50]
        ),
        max_size=30,
    ),
    st.lists(st.integers(0, 400), max_size=8),
)  # fmt: skip
def test_a_head_split_anywhere_gets_the_verdict_it_gets_whole(
    parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    limits = HeadLimits(line=60, fields=100, field_size=8190)

    def verdict(pieces: list[bytes]) -> int | str:
        head = PartialHead(limits)
        try:
            for piece in pieces:
                end = head.feed(piece)
                if end >= 0:
                    parse_request_head(head.data[:end], limits)
                    return end
        except HttpError:
            return "refused"
        return "not ended"

    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    assert verdict([data[a:b] for a, b in itertools.pairwise(bounds)]) == verdict([data])


def test_empty_lines_before_a_request_line_are_skipped() -> None:
    assert skip_empty_lines(b"\r\n\r\nGET") == b"GET"
    assert skip_empty_lines(b"\n\nGET") == b"\n\nGET"  # bare LFs stay, to be refused


@given(st.binary(max_size=300))
def test_arbitrary_heads_parse_or_raise_http_error(head: bytes) -> None:
    try:
        req = parse_request_head(head, LIMITS)
    except HttpError:
        return
    environ_for(req, {})


def frame(status: str, headers: list[tuple[str, str]], **kw: bool):  # type: ignore[no-untyped-def]
    options = {"http10": False, "head_only": False, "keep_alive": True, **kw}
    return response_head(status, headers, date=b"D", **options)


def test_response_head_frames_the_body() -> None:
    head = frame("200 OK", [("Content-Length", "3")])
    assert head.data == b"HTTP/1.1 200 OK\r\nDate: D\r\nContent-Length: 3\r\n\r\n"
    assert (head.length, head.chunked, head.body, head.keep_alive) == (3, False, True, True)
    head = frame("200 OK", [], keep_alive=False)
    assert head.data.endswith(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    assert head.chunked and head.length is None
    head = frame("200 OK", [], http10=True)
    assert not head.chunked and not head.keep_alive  # the close ends the body
    head = frame("200 OK", [("Content-Length", "3")], http10=True)
    assert head.data.endswith(b"Connection: keep-alive\r\n\r\n") and head.keep_alive


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified", "101 Switching"])
def test_responses_without_a_body_are_not_chunked(status: str) -> None:
    head = frame(status, [])
    assert not head.body and not head.chunked and head.keep_alive
    assert not frame("200 OK", [], head_only=True).body


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("200 OK", [("Set-Cookie", "a=1\r\nX-Injected: 1")]),
        ("200 OK", [("Set-Cookie", "a=1\nX-Injected: 1")]),
        ("200 OK", [("X-Null", "a\x00")]),
        ("200 OK", [("Bad Name", "1")]),
        ("200 OK", [("Bad:Name", "1")]),
        ("200 OK", [("", "1")]),
        ("200 OK", [("X-Unicode", "\u2603")]),
        ("200 OK", [("Content-Length", "ten")]),
        ("200 OK", [("Content-Length", "1"), ("Content-Length", "2")]),
        ("200 OK\r\nX-Injected: 1", []),
        ("OK", []),
    ],
)
def test_app_status_or_header_with_crlf_or_bad_chars_is_a_500(
    status: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(HttpError) as info:
        frame(status, headers)
    assert info.value.status.startswith("500")


def test_a_header_block_seen_before_reads_the_same_under_any_request_line():
    """Header blocks are kept once parsed; the request line is parsed every time."""
    block = b"\r\nHost: a\r\nConnection: close\r\nContent-Length: 3"
    first = parse_request_head(b"POST /x HTTP/1.1" + block)
    first.headers.append(("X", "y"))  # a caller's list of its own
    again = parse_request_head(b"PUT /y?q HTTP/1.0" + block)
    assert (again.method, again.target, again.version) == ("PUT", "/y?q", "HTTP/1.0")
    assert again.headers == [("HOST", "a"), ("CONNECTION", "close"), ("CONTENT_LENGTH", "3")]
    assert (again.content_length, again.keep_alive) == (3, False)
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: a").keep_alive
    assert not parse_request_head(b"GET / HTTP/1.0\r\nHost: a").keep_alive


def test_a_refused_header_block_is_refused_every_time():
    for _ in range(2):
        with pytest.raises(HttpError, match="more than one Host"):
            parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b")
    with pytest.raises(HttpError, match="missing Host"):  # the version's rule, not the block's
        parse_request_head(b"GET / HTTP/1.1\r\nAccept: a")
    assert parse_request_head(b"GET / HTTP/1.0\r\nAccept: a").headers == [("ACCEPT", "a")]
