"""``http11`` against h11 on generated request heads: same verdicts, same fields.

h11 is the reference the project's HTTP parsing is modelled on. For every head
the two parsers must agree: what h11 refuses we refuse; what we accept h11
accepts with the same method, target, version and header fields (h11's
normalised Content-Length and Transfer-Encoding included). The one allowed
difference is the short list in ``http11.STRICTER_THAN_H11``: there we refuse a
head h11 takes, and the test checks that the head really has that feature
(a bare LF, a control byte, ...), so a refusal cannot hide behind a rule name.

Heads that once broke the agreement (or that the issue reported) are kept in
``http11_corpus.txt`` and replayed first; add each new one found there.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsgi_tracker.http.http11 import (
    STRICTER_THAN_H11,
    HeadLimits,
    HttpError,
    RequestHead,
    parse_request_head,
)

CORPUS_FILE = Path(__file__).with_name("http11_corpus.txt")
# Generous limits: the limits are gunicorn's settings, tested on their own; here the
# generated heads stay far below them so every verdict is about syntax.
LIMITS = HeadLimits(line=8190, fields=1000, field_size=8190)


def load_corpus() -> list[bytes]:
    """Each non-comment line of the corpus file is a Python bytes literal: a request head."""
    heads = []
    for line in CORPUS_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            heads.append(ast.literal_eval(line.strip()))
    return heads


def h11_reads(head: bytes) -> h11.Request | None:
    """h11's verdict on ``head`` followed by the blank line: its Request, or None if refused."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"\r\n\r\n")
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Request), event  # a full head is there: no NEED_DATA
    return event


def we_read(head: bytes) -> RequestHead | HttpError:
    """Our verdict on the same bytes, framed as the worker frames a head (up to CRLF CRLF)."""
    message = head + b"\r\n\r\n"
    try:
        return parse_request_head(message[: message.find(b"\r\n\r\n")], LIMITS)
    except HttpError as exc:
        return exc


_BARE_LF = re.compile(rb"(?<!\r)\n")
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_feature(head: bytes, rule: str) -> bool:
    """Whether ``head`` really shows what the stricter ``rule`` refuses (checked independently)."""
    body = head[: (head + b"\r\n\r\n").find(b"\r\n\r\n")]
    lines = body.split(b"\r\n")
    names = {line.partition(b":")[0].lower() for line in lines[1:]}
    version = lines[0].rpartition(b" ")[2]
    return {
        "bare LF": bool(_BARE_LF.search(body)),
        "control byte": bool(_CONTROL.search(body)),
        "obs-fold": any(line[:1] in (b" ", b"\t") for line in lines[1:]),
        "both Content-Length and Transfer-Encoding": {b"content-length", b"transfer-encoding"}
        <= names,
        "unsupported HTTP version": not version.startswith(b"HTTP/1."),
    }[rule]


def assert_agrees(head: bytes) -> None:
    theirs = h11_reads(head)
    ours = we_read(head)
    if isinstance(ours, HttpError):
        if theirs is None:
            return  # both refuse
        rule = next((r for r in STRICTER_THAN_H11 if str(ours).startswith(r)), None)
        assert rule is not None, f"h11 accepts {head!r}, we refuse it: {ours}"
        assert has_feature(head, rule), f"refused as {rule!r} without one: {head!r} ({ours})"
        return
    assert theirs is not None, f"we accept {head!r}, h11 refuses it"
    assert ours.method == theirs.method.decode("ascii")
    assert ours.target == theirs.target.decode("ascii")
    assert ours.version == "HTTP/" + theirs.http_version.decode("ascii")
    expected = [
        (name.upper().replace(b"-", b"_").decode("latin-1"), value.decode("latin-1"))
        for name, value in theirs.headers.raw_items()
    ]
    assert ours.headers == expected
    lengths = [v for n, v in theirs.headers if n == b"content-length"]
    assert ours.content_length == (int(lengths[0]) if lengths else None)
    assert ours.chunked == any(n == b"transfer-encoding" for n, _ in theirs.headers)


@pytest.mark.parametrize("head", load_corpus())
def test_corpus_head_gets_the_same_verdict_as_h11(head: bytes) -> None:
    assert_agrees(head)


def test_corpus_covers_every_stricter_rule() -> None:
    refused = [we_read(h) for h in load_corpus() if h11_reads(h) is not None]
    for rule in STRICTER_THAN_H11:
        assert any(isinstance(r, HttpError) and str(r).startswith(rule) for r in refused), rule


# --- generated heads: pieces chosen near the rules' edges, joined in any order ------------

METHODS = st.one_of(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"get", b"M-SEARCH", b"G@T", b"", b"G\x00T"]),
    st.binary(max_size=4),
)
TARGETS = st.one_of(
    st.sampled_from(
        [b"/", b"/announce?info_hash=%AA&port=1", b"*", b"http://h/p", b"/\xff", b"/a\x7f", b""]
    ),
    st.binary(max_size=8).map(lambda b: b"/" + b),
)
VERSIONS = st.sampled_from(
    [b"HTTP/1.1"] * 4
    + [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1"]
)
REQUEST_LINES = st.one_of(
    st.tuples(METHODS, TARGETS, VERSIONS).map(b" ".join),
    st.tuples(METHODS, st.sampled_from([b"  ", b"\t", b""]), TARGETS, VERSIONS).map(
        lambda p: p[0] + p[1] + p[2] + b" " + p[3]
    ),
    st.binary(max_size=20),
)
NAMES = st.one_of(
    st.sampled_from(
        [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding",
         b"Connection", b"Expect", b"X-Forwarded-For", b"User-Agent", b"Content-Type", b"X_Y",
         b" Host", b"Host ", b"", b"X Y", b"X\x00", b"\xc3\xa9"]
    ),
    st.binary(max_size=5),
)  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(
        [b"x", b"5", b"5, 5", b"5,6", b"05", b"5,", b"-1", b"+5", b"9" * 21, b"9" * 20, b" 7 ",
         b"chunked", b"Chunked ", b"gzip", b"chunked, chunked", b"close", b"keep-alive",
         b"100-continue", b"\tx\t", b"a  b", b"a\x00b", b"a\rb", b"a\nb", b"a\x01b", b"a\x7fb",
         b"a\x0bb", b"\xff\xfe", b"", b"a\x1fb", b"a\tb"]
    ),
    st.binary(max_size=6),
)  # fmt: skip
SEPARATORS = st.sampled_from([b": ", b": ", b":", b" : ", b":\t", b""])
FIELD_LINES = st.one_of(
    st.tuples(NAMES, SEPARATORS, VALUES).map(b"".join),
    st.tuples(st.sampled_from([b" ", b"\t"]), VALUES).map(b"".join),  # obs-fold
)
LINE_ENDS = st.sampled_from([b"\r\n"] * 10 + [b"\n", b"\r", b"\r\r\n", b"\n\r\n"])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    head = draw(REQUEST_LINES)
    fields = draw(st.lists(FIELD_LINES, max_size=6))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), b"Host: h")  # usually a valid head
    for line in fields:
        head += draw(LINE_ENDS) + line
    return head


@settings(max_examples=3000)
@given(request_heads())
@example(b"GET / HTTP/1.1\r\nHost: x\nContent-Length: 35")  # the smuggling report
def test_generated_head_gets_the_same_verdict_as_h11(head: bytes) -> None:
    assert_agrees(head)
