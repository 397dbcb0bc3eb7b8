"""A corpus of malformed HTTP requests against a real gunicorn: each gets its expected answer.

Every request is written by hand with the answer it must get: a bencoded
``failure reason`` naming the problem (HTTP 200, as clients read the body), or
an HTTP error status where gunicorn refuses the request before the tracker
sees it (an over-long request line, too many headers, a broken request). The
bad requests all name one real torrent (``IH``) and one real peer, so any
that slipped through would show up there; afterwards a full scrape and
announce replies prove the store holds exactly what the valid requests made.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote_from_bytes

import bencodepy
import pytest
from servers import Server, gunicorn

pytestmark = pytest.mark.integration

IH = bytes.fromhex("aa" * 20)  # the torrent every bad request names
PID = b"-BAD001-" + b"0" * 12
IH_A = bytes.fromhex("a1" * 20)
IH_B = bytes.fromhex("b2" * 20)
MAX_SCRAPE = 8
MAX_QUERY = 2048


def enc(value: bytes | str) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return quote_from_bytes(raw, safe="")


def a(*pairs: tuple[str, bytes | str], drop: tuple[str, ...] = ()) -> bytes:
    """``/announce?`` with the base parameters (minus ``drop``) followed by ``pairs``.

    A pair whose name is already in the base replaces it; names can repeat.
    """
    base = {"info_hash": IH, "peer_id": PID, "port": "6881", "left": "0"}
    names = {name for name, _ in pairs}
    items = [(k, v) for k, v in base.items() if k not in drop and k not in names]
    return ("/announce?" + "&".join(f"{k}={enc(v)}" for k, v in [*items, *pairs])).encode()


def raw(target: str | bytes) -> bytes:
    return target.encode("latin-1") if isinstance(target, str) else target


def scrape(*hashes: bytes) -> bytes:
    return ("/scrape?" + "&".join(f"info_hash={enc(h)}" for h in hashes)).encode()


SAME = "same"  # the lean worker answers as gunicorn's own does
CLOSED = None  # the server closes the connection without an answer


@dataclass(frozen=True)
class Case:
    """One request and its answer: a failure-reason regex, an HTTP status, or CLOSED.

    ``lean`` is the answer under ``wsgi_tracker.http.worker.TrackerWorker`` where its own
    HTTP parser differs from gunicorn's (both are what clients meet in production).
    """

    name: str
    target: bytes  # the request target, or a whole request when ``whole`` is set
    expect: str | int | None
    whole: bool = False
    lean: str | int | None = SAME


def request(target: bytes, headers: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n" + headers + b"Connection: close\r\n\r\n"


R = "repeated parameter: "
M = "missing parameter: "
NAN = "is not a non-negative integer"
OUT = "is outside"
TOO_LONG = r"parameter \S+ is too long"
LEN = "invalid {}: expected 20 bytes, got {}"

CORPUS: list[Case] = [
    # --- missing, empty query ---------------------------------------------------------
    Case("no query at all", b"/announce", M + "info_hash"),
    Case("empty query", b"/announce?", M + "info_hash"),
    Case("only ampersands", b"/announce?&&&&", M + "info_hash"),
    Case("missing info_hash", a(drop=("info_hash",)), M + "info_hash"),
    Case("missing peer_id", a(drop=("peer_id",)), M + "peer_id"),
    Case("missing port", a(drop=("port",)), M + "port"),
    Case("missing left", a(drop=("left",)), M + "left"),
    Case("misspelt info_hash", a(("infohash", IH), drop=("info_hash",)), M + "info_hash"),
    Case("upper-case key", a(("INFO_HASH", IH), drop=("info_hash",)), M + "info_hash"),
    Case("key without value", raw("/announce?info_hash"), M + "peer_id"),
    # --- repeated -----------------------------------------------------------------------
    Case("repeated info_hash", a(("info_hash", IH), ("info_hash", IH_A)), R + "info_hash"),
    Case("repeated peer_id", a(("peer_id", PID), ("peer_id", PID)), R + "peer_id"),
    Case("repeated port", a(("port", "6881"), ("port", "6882")), R + "port"),
    Case("repeated left", a(("left", "0"), ("left", "0")), R + "left"),
    Case("repeated event", a(("event", "started"), ("event", "stopped")), R + "event"),
    Case("repeated numwant", a(("numwant", "1"), ("numwant", "2")), R + "numwant"),
    Case("repeated compact", a(("compact", "1"), ("compact", "1")), R + "compact"),
    Case("repeated uploaded", a(("uploaded", "1"), ("uploaded", "1")), R + "uploaded"),
    Case("repeated downloaded", a(("downloaded", "1"), ("downloaded", "2")), R + "downloaded"),
    Case("repeated key", a(("key", "x"), ("key", "y")), R + "key"),
    Case(
        "repeated via percent-encoded name",
        a(("port", "6881")) + b"&p%6Frt=6882",
        R + "port",
    ),
    # --- empty values -------------------------------------------------------------------
    Case("empty info_hash", a(("info_hash", "")), LEN.format("info_hash", 0)),
    Case("empty peer_id", a(("peer_id", "")), LEN.format("peer_id", 0)),
    Case("empty port", a(("port", "")), "invalid port: b'' " + NAN),
    Case("empty left", a(("left", "")), "invalid left: b'' " + NAN),
    Case("empty uploaded", a(("uploaded", "")), "invalid uploaded: b'' " + NAN),
    Case("empty downloaded", a(("downloaded", "")), "invalid downloaded: b'' " + NAN),
    Case("empty numwant", a(("numwant", "")), "invalid numwant: b'' " + NAN),
    Case("empty compact", a(("compact", "")), "invalid compact: expected 0 or 1"),
    Case("empty no_peer_id", a(("no_peer_id", "")), "invalid no_peer_id: expected 0 or 1"),
    # --- info_hash / peer_id of the wrong length ------------------------------------------
    Case("info_hash 1 byte", a(("info_hash", b"\xaa")), LEN.format("info_hash", 1)),
    Case("info_hash 19 bytes", a(("info_hash", IH[:19])), LEN.format("info_hash", 19)),
    Case("info_hash 21 bytes", a(("info_hash", IH + b"\0")), LEN.format("info_hash", 21)),
    Case("info_hash as 40 hex chars", a(("info_hash", IH.hex())), LEN.format("info_hash", 40)),
    Case("info_hash v2 32 bytes", a(("info_hash", b"\xaa" * 32)), LEN.format("info_hash", 32)),
    Case(
        "info_hash base32 (magnet style)",
        a(("info_hash", "VKVKVKVKVKVKVKVKVKVKVKVKVKVKVKVK")),
        LEN.format("info_hash", 32),
    ),
    Case(
        "info_hash with broken percent escape",
        raw("/announce?peer_id=" + enc(PID) + "&port=1&left=0&info_hash=%zz" + enc(IH[:18])),
        LEN.format("info_hash", 21),
    ),
    Case(
        "info_hash with a truncated escape",
        raw("/announce?peer_id=" + enc(PID) + "&port=1&left=0&info_hash=" + enc(IH[:19]) + "%a"),
        LEN.format("info_hash", 21),
    ),
    Case(
        "info_hash with plus as space 21 bytes",
        raw("/announce?peer_id=" + enc(PID) + "&port=1&left=0&info_hash=+" + enc(IH)),
        LEN.format("info_hash", 21),
    ),
    Case("peer_id 1 byte", a(("peer_id", "x")), LEN.format("peer_id", 1)),
    Case("peer_id 19 bytes", a(("peer_id", PID[:19])), LEN.format("peer_id", 19)),
    Case("peer_id 21 bytes", a(("peer_id", PID + b"x")), LEN.format("peer_id", 21)),
    Case("peer_id 40 hex", a(("peer_id", PID.hex())), LEN.format("peer_id", 40)),
    Case("peer_id unicode 20 chars", a(("peer_id", "é" * 20)), LEN.format("peer_id", 40)),
    # --- oversized values ---------------------------------------------------------------
    Case("info_hash 800 bytes", a(("info_hash", "A" * 800)), "parameter info_hash is too long"),
    Case("peer_id 1000 bytes", a(("peer_id", "B" * 1000)), "parameter peer_id is too long"),
    Case("key 769 bytes", a(("key", "k" * 769)), "parameter key is too long"),
    Case("unknown param 1500 bytes", a(("zzz", "z" * 1500)), "parameter zzz is too long"),
    Case("port of 900 digits", a(("port", "9" * 900)), "parameter port is too long"),
    Case("left of 800 digits", a(("left", "1" * 800)), "parameter left is too long"),
    Case("ip of 1000 bytes", a(("ip", "1" * 1000)), "parameter ip is too long"),
    Case("trackerid 999 bytes", a(("trackerid", "t" * 999)), "parameter trackerid is too long"),
    # --- port ---------------------------------------------------------------------------
    Case("port zero", a(("port", "0")), "invalid port: 0 " + OUT + " 1-65535"),
    Case("port 65536", a(("port", "65536")), "invalid port: 65536 " + OUT),
    Case("port 99999", a(("port", "99999")), "invalid port: 99999 " + OUT),
    Case("port negative", a(("port", "-1")), "invalid port: b'-1' " + NAN),
    Case("port plus sign", a(("port", "+80")), "invalid port: b'\\+80' " + NAN),
    Case("port hex", a(("port", "0x50")), "invalid port: b'0x50' " + NAN),
    Case("port float", a(("port", "6881.0")), "invalid port: b'6881.0' " + NAN),
    Case("port exponent", a(("port", "1e3")), "invalid port: b'1e3' " + NAN),
    Case("port words", a(("port", "http")), "invalid port: b'http' " + NAN),
    Case("port leading space", a(("port", " 80")), "invalid port: b' 80' " + NAN),
    Case("port trailing NUL", a(("port", "80\0")), r"invalid port: b'80\\x00' " + NAN),
    Case("port fullwidth digits", a(("port", "\uff18\uff10")), "invalid port: .* " + NAN),
    Case("port 21 digits", a(("port", "1" * 21)), "invalid port: .* " + NAN),
    Case("port 2^64", a(("port", str(2**64))), "invalid port: 18446744073709551616 " + OUT),
    # --- counters -----------------------------------------------------------------------
    Case("left negative", a(("left", "-5")), "invalid left: b'-5' " + NAN),
    Case("left 2^63", a(("left", str(2**63))), "invalid left: 9223372036854775808 " + OUT),
    Case("left 2^64", a(("left", str(2**64))), "invalid left: .* " + OUT),
    Case("left 25 digits", a(("left", "9" * 25)), "invalid left: .* " + NAN),
    Case("left float", a(("left", "0.5")), "invalid left: b'0.5' " + NAN),
    Case("left word", a(("left", "none")), "invalid left: b'none' " + NAN),
    Case("uploaded negative", a(("uploaded", "-1")), "invalid uploaded: b'-1' " + NAN),
    Case("uploaded 2^63", a(("uploaded", str(2**63))), "invalid uploaded: .* " + OUT),
    Case("uploaded NaN", a(("uploaded", "NaN")), "invalid uploaded: b'NaN' " + NAN),
    Case("downloaded negative", a(("downloaded", "-9")), "invalid downloaded: b'-9' " + NAN),
    Case("downloaded infinity", a(("downloaded", "inf")), "invalid downloaded: b'inf' " + NAN),
    Case("downloaded 2^64", a(("downloaded", str(2**64))), "invalid downloaded: .* " + OUT),
    # --- numwant ------------------------------------------------------------------------
    Case("numwant negative", a(("numwant", "-1")), "invalid numwant: b'-1' " + NAN),
    Case("numwant 2^31", a(("numwant", str(2**31))), "invalid numwant: 2147483648 " + OUT),
    Case("numwant float", a(("numwant", "1.5")), "invalid numwant: b'1.5' " + NAN),
    Case("numwant word", a(("numwant", "all")), "invalid numwant: b'all' " + NAN),
    Case("numwant 20 nines", a(("numwant", "9" * 20)), "invalid numwant: .* " + OUT),
    # --- event --------------------------------------------------------------------------
    Case("event start", a(("event", "start")), "invalid event: b'start'"),
    Case("event upper case", a(("event", "STARTED")), "invalid event: b'STARTED'"),
    Case("event complete", a(("event", "complete")), "invalid event: b'complete'"),
    Case("event stop", a(("event", "stop")), "invalid event: b'stop'"),
    Case("event number", a(("event", "2")), "invalid event: b'2'"),
    Case("event trailing space", a(("event", "started ")), "invalid event: b'started '"),
    Case("event NUL", a(("event", "stopped\0")), "invalid event: "),
    Case("event bep15 none", a(("event", "none")), "invalid event: b'none'"),
    Case("event empty word", a(("event", "empty")), "invalid event: b'empty'"),
    # --- flags --------------------------------------------------------------------------
    Case("compact 2", a(("compact", "2")), "invalid compact: expected 0 or 1, got b'2'"),
    Case("compact yes", a(("compact", "yes")), "invalid compact: expected 0 or 1"),
    Case("compact true", a(("compact", "true")), "invalid compact: expected 0 or 1"),
    Case("compact -1", a(("compact", "-1")), "invalid compact: expected 0 or 1"),
    Case("no_peer_id 2", a(("no_peer_id", "2")), "invalid no_peer_id: expected 0 or 1"),
    Case("no_peer_id x", a(("no_peer_id", "x")), "invalid no_peer_id: expected 0 or 1"),
    # --- several faults: the first field checked is named ---------------------------------
    Case(
        "everything wrong",
        a(("info_hash", "x"), ("peer_id", "y"), ("port", "z"), ("left", "-")),
        LEN.format("info_hash", 1),
    ),
    Case("good ids, bad port and left", a(("port", "0"), ("left", "-")), "invalid port"),
    # --- over-long query or URL -----------------------------------------------------------
    Case(
        "query just over max_query_bytes",
        a(*[(f"x{i}", "y" * 200) for i in range(10)]),
        f"request too long: query of \\d+ bytes, at most {MAX_QUERY}",
    ),
    Case(
        "query of 4000 bytes",
        raw("/announce?" + "a=b&" * 1000),
        "request too long: query of 4000 bytes",
    ),
    Case("many tiny params within limit", raw("/announce?" + "&" * 2000), M + "info_hash"),
    Case("request line over gunicorn's limit", raw("/announce?" + "a" * 9000), 414),
    Case("request line of escapes", raw("/announce?info_hash=" + "%41" * 3000), 414),
    Case("scrape request line over limit", raw("/scrape?" + "c" * 9000), 414),
    # --- scrape -------------------------------------------------------------------------
    Case("scrape info_hash 19 bytes", scrape(IH[:19]), LEN.format("info_hash", 19)),
    Case("scrape info_hash 21 bytes", scrape(IH + b"!"), LEN.format("info_hash", 21)),
    Case("scrape info_hash hex", scrape(IH.hex().encode()), LEN.format("info_hash", 40)),
    Case("scrape empty info_hash", raw("/scrape?info_hash="), LEN.format("info_hash", 0)),
    Case("scrape one good one bad", scrape(IH, b"short"), LEN.format("info_hash", 5)),
    Case(
        "scrape over the hash limit",
        scrape(*[bytes([i]) * 20 for i in range(MAX_SCRAPE + 1)]),
        f"too many info_hash values: at most {MAX_SCRAPE} per scrape",
    ),
    Case("scrape oversized value", raw("/scrape?info_hash=" + "f" * 900), TOO_LONG),
    Case(
        "scrape query over max_query_bytes",
        raw("/scrape?" + "&".join(["info_hash=" + enc(IH)] * 40)),
        "request too long",
    ),
    Case("absolute-form target", raw("http://evil/announce?info_hash=1"), M + "peer_id"),
    Case("fragment in target", raw("/announce#frag"), M + "info_hash", lean=404),
    Case("NUL bytes as info_hash", raw("/announce?info_hash=%00%00"), M + "peer_id"),
    Case(
        "POST with chunked garbage body",
        b"POST /announce HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\nzz\r\n",
        M + "info_hash",
        whole=True,
        lean=400,  # the body's broken framing came with the head: refused before the app
    ),
    Case("scrape on the passkey path", raw("/scrape/x?info_hash=" + enc(IH[:3])), "got 3"),
    # --- broken HTTP: gunicorn answers before the tracker runs ----------------------------
    Case("garbage request line", b"GARBAGE\r\n\r\n", 400, whole=True),
    Case(
        "empty request",
        b"\r\n\r\n",
        400,
        whole=True,
        lean=CLOSED,  # empty lines before a request line are skipped (RFC 9112 2.2)
    ),
    Case(
        "unescaped high bytes in query",
        raw(b"/announce?info_hash=" + IH),
        400,
    ),
    Case("control byte in query", raw(b"/announce?x=\x01\x02"), 400),
    Case("DEL in query", raw(b"/announce?x=\x7f"), 400),
    Case("tab in query", raw(b"/announce?x=\t"), 400),
    Case("asterisk target", raw(b"*"), 400, lean=404),
    Case(
        "two content-lengths",
        request(b"/announce", b"Content-Length: 1\r\nContent-Length: 2\r\n"),
        400,
        whole=True,
    ),
    Case("folded header", request(b"/announce", b" Folded: yes\r\n"), 400, whole=True),
    Case(
        "NUL in header value",
        request(b"/announce", b"X: \x00\r\n"),
        400,
        whole=True,
    ),
    Case("request line without version", b"GET /announce\r\n\r\n", 400, whole=True),
    Case(
        "unknown HTTP version",
        b"GET /announce HTTP/9.9\r\nHost: t\r\n\r\n",
        400,
        whole=True,
        lean=505,
    ),
    Case(
        "bare LF request line",
        b"GET /announce HTTP/1.1\nHost: t\n\n",
        400,
        whole=True,
    ),
    Case("space in target", b"GET /announce? a=b HTTP/1.1\r\nHost: t\r\n\r\n", 400, whole=True),
    Case("NUL in request line", b"GET /ann\0ounce HTTP/1.1\r\nHost: t\r\n\r\n", 400, whole=True),
    Case(
        "header without colon",
        request(b"/announce", b"NoColonHere\r\n"),
        400,
        whole=True,
    ),
    Case(
        "header over 8 KiB",
        request(b"/announce", b"X-Big: " + b"x" * 9000 + b"\r\n"),
        431,
        whole=True,
    ),
    Case(
        "too many headers",
        request(b"/announce", b"".join(b"X-H%d: 1\r\n" % i for i in range(60))),
        431,
        whole=True,
    ),
    Case(
        "bad content-length",
        request(b"/announce", b"Content-Length: -1\r\n"),
        400,
        whole=True,
    ),
    Case(
        "invalid header name",
        request(b"/announce", b"Bad Header: 1\r\n"),
        400,
        whole=True,
    ),
]


# --- a tiny raw HTTP client: the corpus needs bytes no library will send ------------------


def exchange(server: Server, data: bytes) -> tuple[int | None, bytes]:
    """Send ``data`` on a fresh connection, then half-close; (status, body) read to EOF.

    The half-close tells a server waiting for more of a broken head that no more
    is coming; status None means it closed without answering.
    """
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(data)
        with contextlib.suppress(OSError):  # the server may have closed already
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        for _ in range(10_000):  # bounded: a reply is a few hundred bytes
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    reply = b"".join(chunks)
    if not reply:
        return None, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert match, f"no HTTP status line in {reply[:200]!r}"
    return int(match.group(1)), body


def get(server: Server, target: bytes) -> tuple[int, bytes]:
    return exchange(server, request(target))


def decoded(body: bytes) -> dict[bytes, object]:
    value = bencodepy.decode(body)
    assert isinstance(value, dict)
    return value


def announce(server: Server, ih: bytes, peer: int, port: int, left: int, **extra: str) -> dict:
    pid = b"-OK0001-" + peer.to_bytes(12, "big")
    pairs = [("info_hash", ih), ("peer_id", pid), ("port", str(port)), ("left", str(left))]
    pairs += list(extra.items())
    status, body = get(
        server, ("/announce?" + "&".join(f"{k}={enc(v)}" for k, v in pairs)).encode()
    )
    assert status == 200
    reply = decoded(body)
    assert b"failure reason" not in reply, reply
    return reply


def valid_requests(server: Server) -> None:
    """The only requests allowed to change state; ``expected_state`` says what they leave."""
    announce(server, IH_A, 1, 7001, 0, event="completed")  # seeder, counts one download
    announce(server, IH_A, 2, 7002, 100, event="started")  # leecher
    announce(server, IH_A, 3, 7003, 100, event="started")
    announce(server, IH_A, 3, 7003, 100, event="stopped")  # ...and gone again
    announce(server, IH_B, 4, 7004, 5, event="started")


EXPECTED_SCRAPE = {
    IH_A: {b"complete": 1, b"downloaded": 1, b"incomplete": 1},
    IH_B: {b"complete": 0, b"downloaded": 0, b"incomplete": 1},
}


WORKERS = {"gunicorn-gevent": "gevent", "lean-worker": "wsgi_tracker.http.worker.TrackerWorker"}


@pytest.fixture(scope="module", params=list(WORKERS))
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    env = {
        "WSGI_TRACKER_MAX_SCRAPE_HASHES": str(MAX_SCRAPE),
        "WSGI_TRACKER_MAX_QUERY_BYTES": str(MAX_QUERY),
        "WSGI_TRACKER_FULL_SCRAPE": "1",
    }
    with gunicorn(workers=1, worker_class=WORKERS[request.param], env=env) as srv:
        valid_requests(srv)
        yield srv


def test_corpus_has_at_least_one_hundred_distinct_requests():
    assert len(CORPUS) >= 100
    assert len({c.name for c in CORPUS}) == len(CORPUS)
    assert len({(c.target, c.whole) for c in CORPUS}) == len(CORPUS)


def is_lean(server: Server) -> bool:
    return WORKERS["lean-worker"] in server.proc.args


def check_answer(server: Server, case: Case) -> None:
    status, body = exchange(server, case.target if case.whole else request(case.target))
    expect = case.lean if is_lean(server) and case.lean != SAME else case.expect
    if expect is CLOSED:
        assert (status, body) == (None, b"")
        return
    if isinstance(expect, int):
        assert status == expect, body[:300]
        assert len(body) < 512 and b"peers" not in body
        return
    assert status == 200, body[:300]
    reply = decoded(body)
    assert list(reply) == [b"failure reason"], reply  # never peers, never counts
    reason = reply[b"failure reason"]
    assert isinstance(reason, bytes) and len(reason) < 200
    assert re.search(expect, reason.decode()), reason


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_malformed_request_gets_its_expected_answer(server, case):
    check_answer(server, case)


def test_store_holds_exactly_what_the_valid_requests_put_there(server):
    # Replay the whole corpus once more between idempotent re-announces, then look.
    for case in CORPUS:
        check_answer(server, case)
    status, body = get(server, b"/scrape")  # full scrape: every torrent in the store
    assert status == 200
    assert decoded(body) == {b"files": EXPECTED_SCRAPE}
    status, body = get(server, scrape(IH, IH_A, IH_B))
    assert decoded(body)[b"files"][IH] == {b"complete": 0, b"downloaded": 0, b"incomplete": 0}
    reply = announce(server, IH_A, 2, 7002, 100, numwant="50")  # the leecher looks again
    assert reply[b"peers"] == bytes([127, 0, 0, 1]) + (7001).to_bytes(2, "big")
    assert (reply[b"complete"], reply[b"incomplete"]) == (1, 1)
    reply = announce(server, IH_B, 4, 7004, 5)
    assert reply[b"peers"] == b"" and (reply[b"complete"], reply[b"incomplete"]) == (0, 1)


def test_megabyte_url_is_cut_off_and_the_server_keeps_serving(server):
    """Reading stops at a limit: a 414 (line) or 431 (head), or a reset if the rest is unread."""
    try:
        status, _ = get(server, b"/announce?" + b"x" * 2**20)
    except OSError:  # reset, broken pipe: it stopped reading
        status = None
    assert status in (None, 431 if is_lean(server) else 414)
    assert announce(server, IH_B, 4, 7004, 5)[b"incomplete"] == 1


def test_valid_request_after_the_corpus_is_served_normally(server):
    reply = announce(server, IH_A, 1, 7001, 0, compact="0")
    peers = reply[b"peers"]
    assert peers == [
        {b"ip": b"127.0.0.1", b"port": 7002, b"peer id": b"-OK0001-" + (2).to_bytes(12, "big")}
    ]
