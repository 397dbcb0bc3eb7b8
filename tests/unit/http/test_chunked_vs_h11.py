"""``http.chunked`` against h11 on generated chunked bodies: same verdicts, same bytes.

For every wire (a valid chunked body, then mangled a few bytes at a time) the
two decoders must agree on whether it is refused, complete or still waiting,
on the body bytes, and on where the body ends (the bytes after it). The one
allowed differences: a refusal of ours that h11 does not make must start with
one of the stricter rules (``http11.STRICTER_THAN_H11`` for the field lines of
a trailer, ``chunked.STRICTER_THAN_H11`` for size lines), or be made early: h11
still waits, and refuses the same bytes once their line and section end.
"""

from __future__ import annotations

from typing import NamedTuple

import h11
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsgi_tracker.http import chunked, http11
from wsgi_tracker.http.chunked import BodyError, ChunkedBody
from wsgi_tracker.http.http11 import HeadLimits

HEAD = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
LIMITS = HeadLimits(line=8190, fields=1000, field_size=8190)
STRICTER = http11.STRICTER_THAN_H11 + chunked.STRICTER_THAN_H11


class Verdict(NamedTuple):
    state: str  # "refused", "done" or "waiting"
    body: bytes
    rest: bytes
    why: str = ""


def h11_reads(wire: bytes) -> Verdict:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(HEAD + wire)
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Verdict("done", body, conn.trailing_data[0])
            elif event is h11.NEED_DATA:
                return Verdict("waiting", body, b"")
            else:
                assert isinstance(event, h11.Request), event
    except h11.RemoteProtocolError as exc:
        return Verdict("refused", b"", b"", str(exc))


def we_read(wire: bytes) -> Verdict:
    framing = ChunkedBody(LIMITS)
    try:
        body = framing.feed(wire)
    except BodyError as exc:
        return Verdict("refused", b"", b"", str(exc))
    if framing.done:
        return Verdict("done", body, framing.rest)
    return Verdict("waiting", body, b"")


def assert_agrees(wire: bytes) -> None:
    theirs, ours = h11_reads(wire), we_read(wire)
    if ours.state == "refused" and theirs.state != "refused":
        why = ours.why.removeprefix("trailer: ")
        if theirs.state == "waiting" and h11_reads(wire + b"\r\n\r\n").state == "refused":
            return  # refused early: once its line (or trailer section) ends, h11 refuses it too
        assert why.startswith(STRICTER), f"h11 {theirs.state} on {wire!r}, we refuse: {ours.why}"
        return
    assert (ours.state, ours.body, ours.rest) == (theirs.state, theirs.body, theirs.rest), (
        wire,
        ours,
        theirs,
    )


def valid_bodies() -> st.SearchStrategy[bytes]:
    chunk = st.binary(min_size=1, max_size=40).map(lambda c: b"%x\r\n%s\r\n" % (len(c), c))
    ext = st.sampled_from([b"", b";a", b";a=b", b';a="q s"', b" ", b";x;y=1 "])
    chunk_with_ext = st.tuples(st.binary(min_size=1, max_size=40), ext).map(
        lambda ce: b"%x%s\r\n%s\r\n" % (len(ce[0]), ce[1], ce[0])
    )
    trailer = st.lists(
        st.sampled_from([b"X-A: 1\r\n", b"X-Sum:abc\r\n", b"Expires: never \r\n"]), max_size=3
    ).map(b"".join)
    return st.tuples(
        st.lists(chunk | chunk_with_ext, max_size=4),
        st.sampled_from([b"0", b"000", b"0;end"]),
        trailer,
        st.binary(max_size=8),
    ).map(lambda t: b"".join(t[0]) + t[1] + b"\r\n" + t[2] + b"\r\n" + t[3])


INTERESTING = b"\r\n;:= \t0aF\x00\x01\x7f\x80-"


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(valid_bodies()))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        if not wire:
            break
        at = draw(st.integers(min_value=0, max_value=len(wire) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        byte = draw(st.sampled_from(list(INTERESTING)))
        if op == "insert":
            wire.insert(at, byte)
        elif op == "delete":
            del wire[at]
        elif op == "replace":
            wire[at] = byte
        else:
            del wire[at:]
    return bytes(wire)


@settings(max_examples=800)
@given(mangled())
@example(b"5\r\nhello\r\n0\r\n\r\n")
@example(b"5 ;x\r\nhello\r\n0\r\n\r\n")  # no space before ';' in h11's grammar
@example(b"5;x \r\nhello\r\n0\r\n\r\n")
@example(b"0\r\nX: 1\n\r\n")  # a bare LF in a trailer: h11 takes it, we do not
@example(b"0\r\n\n")
@example(b"1" * 18 + b"\r\n")  # 18 hex digits: h11 takes up to 20
def test_a_chunked_body_gets_the_same_verdict_as_h11(wire: bytes) -> None:
    assert_agrees(wire)


def test_valid_bodies_are_read_whole_by_both() -> None:
    wire = b"3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nX-A: 1\r\n\r\nnext"
    assert h11_reads(wire)[:3] == we_read(wire)[:3] == ("done", b"abcde", b"next")
