"""``http.chunked``: request bodies decoded as their bytes arrive, split anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.http import chunked
from wsgi_tracker.http.chunked import (
    MAX_SIZE_LINE,
    BodyError,
    ChunkedBody,
    LengthBody,
    framing_for,
)
from wsgi_tracker.http.http11 import HeadLimits, check_field_bytes, parse_request_head

LIMITS = HeadLimits()


def decode(wire: bytes, cuts: list[int] | None = None) -> tuple[bytes, bool, bytes]:
    """(body, done, rest) of ``wire`` fed in the pieces ``cuts`` makes."""
    framing = ChunkedBody(LIMITS)
    pieces, last = [], 0
    for cut in sorted(cuts or []):
        pieces.append(wire[last:cut])
        last = cut
    pieces.append(wire[last:])
    body = b"".join(framing.feed(p) for p in pieces if p)
    return body, framing.done, framing.rest


def encode(chunks: list[bytes], trailer: bytes = b"", ext: bytes = b"") -> bytes:
    return b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks if c) + (
        b"0\r\n" + trailer + b"\r\n"
    )


def test_a_body_in_chunks_with_extensions_and_trailers() -> None:
    wire = b"5;name=v\r\nhello\r\n6 \r\n world\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\nGET /"
    assert decode(wire) == (b"hello world", True, b"GET /")


def test_an_empty_body() -> None:
    assert decode(b"0\r\n\r\n") == (b"", True, b"")


def test_a_partial_body_is_not_done_and_returns_what_came() -> None:
    assert decode(b"a\r\n01234") == (b"01234", False, b"")


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=6),
    st.sampled_from([b"", b"X-A: 1\r\n", b"X-A: 1\r\nX-B: two words\r\n"]),
    st.binary(max_size=20),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_any_split_of_the_wire_decodes_the_same(
    chunks: list[bytes], trailer: bytes, after: bytes, cuts: list[int]
) -> None:
    wire = encode(chunks, trailer) + after
    cuts = [c for c in cuts if c <= len(wire)]
    assert decode(wire, cuts) == (b"".join(chunks), True, after)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"zz\r\n", "malformed chunk size"),
        (b"5\r\nhelloXX", "chunk data not followed by CRLF"),
        (b"1" * 17 + b"\r\n", "chunk size over 16 hex digits"),
        (b"5;a\rb\r\nhello\r\n0\r\n\r\n", "bare LF or CR"),
        (b"5;a\x01\r\nhello\r\n0\r\n\r\n", "control byte"),
        (b"0\r\nbad trailer\r\n\r\n", "trailer: malformed header field"),
        (b"0\r\nX: a\nb\r\n\r\n", "trailer: bare LF"),
        (b"0\r\n folded: x\r\n\r\n", "trailer: obs-fold"),
        (b"0\r\nContent-Length: x\r\n\r\n", "trailer: invalid Content-Length"),
        (b"-5\r\n", "malformed chunk size"),
        (b"0x5\r\n", "malformed chunk size"),
    ],
)
def test_broken_framing_is_refused_with_what_broke(wire: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message) as caught:
        decode(wire)
    assert caught.value.status == "400 Bad Request"


@pytest.mark.parametrize("wire", [b"1" * 17, b"g", b"5;" + b"x" * MAX_SIZE_LINE])
def test_a_size_line_that_cannot_become_valid_is_refused_before_its_end(wire: bytes) -> None:
    with pytest.raises(BodyError):
        ChunkedBody(LIMITS).feed(wire)


def test_a_trailer_section_is_bounded_before_its_end() -> None:
    framing = ChunkedBody(LIMITS)
    framing.feed(b"0\r\n")
    with pytest.raises(BodyError, match="trailer section over"):
        for _ in range(100):
            framing.feed(b"X-Long: " + b"x" * 1000 + b"\r\n")


@given(st.binary(max_size=50), st.integers(min_value=0, max_value=60), st.binary(max_size=50))
def test_a_length_body_ends_at_its_length(head: bytes, length: int, tail: bytes) -> None:
    framing = LengthBody(length)
    data = head + tail
    body = framing.feed(data)
    assert body == data[:length]
    assert framing.done == (len(data) >= length)
    assert framing.rest == (data[length:] if framing.done else b"")


TRAILER_PARTS = [b"X-A: 1", b"\r\n", b"\r", b"\n", b"\x01", b":", b" b"]


@given(
    st.lists(st.sampled_from(TRAILER_PARTS), max_size=12),
    st.lists(st.integers(min_value=0, max_value=80), max_size=6),
)
def test_a_trailer_split_anywhere_gets_the_verdict_it_gets_whole(
    parts: list[bytes], cuts: list[int]
) -> None:
    """The trailer is checked as its bytes arrive (each once); a split, even inside a CRLF,
    must not change what is refused or where the body ends."""
    wire = b"0\r\n" + b"".join(parts) + b"\r\n\r\nGET /"

    def verdict(cuts: list[int]) -> object:
        try:
            return decode(wire, cuts)
        except BodyError as exc:
            return str(exc)

    assert verdict([c for c in cuts if c <= len(wire)]) == verdict([])
    assert verdict(list(range(1, len(wire)))) == verdict([])


def test_a_trailer_fed_a_byte_a_read_is_scanned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trailer trickled one byte a read was scanned whole on each (quadratic: 32 KB cost
    4 s of CPU); now each byte passes the byte check once."""
    scanned = []

    def counted(block: bytes) -> None:
        scanned.append(len(block))
        check_field_bytes(block)

    monkeypatch.setattr(chunked, "check_field_bytes", counted)
    trailer = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500) for i in range(60))  # ~30 KB
    framing = ChunkedBody(LIMITS)
    framing.feed(b"0\r\n")
    for i in range(len(trailer)):
        framing.feed(trailer[i : i + 1])
    framing.feed(b"\r\nGET /")
    assert framing.done and framing.rest == b"GET /"
    assert sum(scanned) <= 2 * len(trailer)


def test_a_content_length_over_the_body_limit_is_refused_from_the_head() -> None:
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11")
    assert framing_for(req, HeadLimits(), 11).wire_left() == 11
    with pytest.raises(BodyError, match="request body of 11 bytes is over the limit of 10") as e:
        framing_for(req, HeadLimits(), 10)
    assert e.value.status.startswith("413")


def test_a_chunked_body_is_refused_at_the_size_that_passes_the_limit() -> None:
    body = ChunkedBody(HeadLimits(), max_body=10)
    assert body.feed(b"6\r\nhello \r\n") == b"hello "
    with pytest.raises(BodyError, match="over the limit of 10 bytes") as e:
        body.feed(b"5\r\n")  # before its data comes
    assert e.value.status.startswith("413")
    exact = ChunkedBody(HeadLimits(), max_body=10)
    assert exact.feed(b"6\r\nhello \r\n4\r\nworl\r\n0\r\n\r\n") == b"hello worl" and exact.done
