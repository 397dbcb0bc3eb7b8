"""Arbitrary bytes into every parser: only its own error comes out, and the store stays put.

Each parser is driven through the shell that uses it, against a real
``SwarmStore`` already holding a swarm, so "never changes the store" is
checked where it matters: the HTTP query through ``TrackerMiddleware``, the
HTTP request head through the lean worker's ``http11`` parser, a UDP datagram
through ``DatagramHandler``, and the sync stream through ``FrameDecoder``
(fed in arbitrary pieces) and the replica merge.

Strategies mix raw bytes with near-valid input (known keys, percent escapes,
real headers, a valid connection id) so the deep branches are reached too.
"""

from __future__ import annotations

import io
import struct
from urllib.parse import quote_from_bytes

import bencodepy
from hypothesis import given, settings
from hypothesis import strategies as st

from udp_sidecar.connection_ids import ConnectionIds
from udp_sidecar.protocol import PROTOCOL_ID
from udp_sidecar.server import DatagramHandler
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.swarm import SwarmStore
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import PeerChange
from wsgi_tracker.http.http11 import HeadLimits, HttpError, parse_request_head
from wsgi_tracker.http.middleware import TrackerMiddleware
from wsgi_tracker.sync import frames
from wsgi_tracker.sync.replica import apply_remote

NOW = 1_800_000_000.0
IH = bytes(range(20))
PID = b"-XX0001-" + bytes(12)
SENDER = ("127.0.0.1", 6881)
SENDER_ENDPOINT = bytes([127, 0, 0, 1]) + (6881).to_bytes(2, "big")
KEY = b"k" * 32

# --- the store and how to tell it did not change -------------------------------------------


def seeded_core() -> TrackerCore:
    core = TrackerCore(TrackerConfig(sync_socket="off"), clock=lambda: NOW)
    core.store.apply(PeerChange(IH, PID, bytes([10, 0, 0, 1, 0x1A, 0xE1]), True, 1, NOW))
    return core


def state(store: SwarmStore) -> tuple:
    peers = sorted(
        (p.info_hash, p.peer_id, p.endpoint, p.seeder, p.timestamp) for p in store.peers()
    )
    return len(store), peers, sorted((ih, s.downloaded) for ih, s in store.torrents.items())


# --- HTTP query, through the middleware ------------------------------------------------------

KEYS = [
    b"info_hash", b"peer_id", b"port", b"left", b"uploaded", b"downloaded", b"event",
    b"numwant", b"compact", b"no_peer_id", b"key", b"ip", b"ipv6", b"trackerid", b"x",
]  # fmt: skip
VALUES = st.one_of(
    st.binary(max_size=30).map(lambda b: quote_from_bytes(b, safe="").encode()),
    st.binary(max_size=30),
    st.sampled_from([b"", b"0", b"1", b"-1", b"65536", b"started", b"stopped", b"%", b"%zz"]),
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.just(quote_from_bytes(IH, safe="").encode()),
)
PAIRS = st.lists(
    st.tuples(st.one_of(st.sampled_from(KEYS), st.binary(max_size=12)), VALUES), max_size=12
).map(lambda pairs: b"&".join(k + b"=" + v for k, v in pairs))
QUERIES = st.one_of(st.binary(max_size=600), PAIRS, st.binary(min_size=2000, max_size=3000))


def call(app: TrackerMiddleware, path: str, query: bytes) -> tuple[str, bytes]:
    seen: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query.decode("latin-1"),
        "REMOTE_ADDR": "127.0.0.2",
        "wsgi.input": io.BytesIO(),
    }
    body = b"".join(app(environ, lambda status, headers, exc=None: seen.append(status)))
    return seen[0], body


@settings(max_examples=400)
@given(query=QUERIES, path=st.sampled_from(["/announce", "/scrape", "/announce/pk"]))
def test_http_query_bytes_answer_bencoded_and_refusals_leave_the_store(query, path):
    core = seeded_core()
    app = TrackerMiddleware(None, core.config, core=core)
    before = state(core.store)
    status, body = call(app, path, query)
    assert status.startswith("200")
    reply = bencodepy.decode(body)
    assert isinstance(reply, dict)
    if b"failure reason" in reply:
        assert list(reply) == [b"failure reason"]
        assert state(core.store) == before
    elif path == "/scrape":
        assert state(core.store) == before


# --- HTTP request head (the lean worker's parser) -------------------------------------------

HEAD_LINES = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [b"Host: t", b"Content-Length: 5", b"Content-Length: -1", b"Transfer-Encoding: x",
             b"Connection: close", b"Expect: 100-continue", b"X: \x00", b": v", b"a b: c"]
        ),
    ),
    max_size=8,
)  # fmt: skip
REQUEST_LINES = st.one_of(
    st.binary(max_size=80),
    st.tuples(
        st.sampled_from([b"GET", b"POST", b"", b"G\x00T", b"HEAD"]),
        st.binary(max_size=40),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b""]),
    ).map(b" ".join),
)


@settings(max_examples=400)
@given(line=REQUEST_LINES, fields=HEAD_LINES)
def test_request_head_bytes_parse_or_raise_http_error_only(line, fields):
    head = b"\r\n".join([line, *fields])
    try:
        req = parse_request_head(head, HeadLimits(line=4094))
    except HttpError as exc:
        assert exc.status[:3] in {"400", "414", "431", "501", "505"}
        return
    assert req.version.startswith("HTTP/1.")


# --- UDP datagrams, through the handler ------------------------------------------------------


def udp_handler() -> tuple[DatagramHandler, TrackerCore, bytes]:
    core = seeded_core()
    ids = ConnectionIds(KEY, core.config.connection_id_ttl)
    return (
        DatagramHandler(core, ids, ipv6=False, clock=lambda: NOW),
        core,
        ids.issue(SENDER_ENDPOINT, NOW),
    )


DATAGRAMS = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.binary(min_size=8, max_size=8), st.integers(0, 4), st.binary(max_size=150)).map(
        lambda t: t[0] + struct.pack(">II", t[1], 7) + t[2]
    ),
)


@settings(max_examples=500)
@given(data=DATAGRAMS)
def test_unproven_datagram_never_raises_never_grows_never_stores(data):
    handler, core, _cid = udp_handler()
    before = state(core.store)
    reply = handler.handle(data, SENDER)
    assert state(core.store) == before
    if reply is None:
        return
    action = struct.unpack_from(">I", reply)[0]
    is_connect = data[:8] == PROTOCOL_ID.to_bytes(8, "big") and data[8:12] == bytes(4)
    assert action == (0 if is_connect else 3)
    assert len(reply) <= len(data)


@settings(max_examples=500)
@given(
    action=st.integers(0, 4),
    body=st.one_of(
        st.binary(max_size=160),
        st.tuples(st.binary(min_size=40, max_size=40), st.binary(max_size=80)).map(
            lambda t: t[0] + t[1]
        ),
    ),
)
def test_proven_datagram_changes_the_store_only_when_announce_is_accepted(action, body):
    handler, core, cid = udp_handler()
    before = state(core.store)
    data = cid + struct.pack(">II", action, 9) + body
    reply = handler.handle(data, SENDER)
    kind = None if reply is None else struct.unpack_from(">I", reply)[0]
    if kind == 1:  # an accepted announce: the only way in
        return
    assert kind in (None, 2, 3)  # dropped (a connect without the magic), scrape, error
    assert state(core.store) == before


# --- the sync stream ---------------------------------------------------------------------------


def valid_stream() -> bytes:
    peer = PeerChange(IH, PID, bytes(6), False, 2, NOW)
    return b"".join(
        [
            frames.encode(frames.Hello(frames.ROLE_WORKER, 42)),
            frames.encode(frames.Deltas([peer])),
            frames.encode(frames.Counts([(IH, 1)])),
            frames.encode(frames.Heartbeat()),
            frames.encode(frames.Mark(7)),
            frames.encode(frames.Ack(7)),
        ]
    )


def stream_strategy() -> st.SearchStrategy[bytes]:
    good = valid_stream()

    def damage(args: tuple[int, bytes]) -> bytes:
        at, junk = args
        at %= len(good) + 1
        return good[:at] + junk + good[at + len(junk) :]

    return st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=12)).map(damage),
        st.tuples(st.integers(0, 14), st.binary(max_size=200)).map(
            lambda t: struct.pack(">IB", len(t[1]), t[0]) + t[1]
        ),
    )


def decode_in_pieces(data: bytes, cuts: list[int]) -> list:
    decoder = frames.FrameDecoder()
    out = []
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        out += decoder.feed(data[last:cut])
        last = cut
    out += decoder.feed(data[last:])
    decoder.close()
    return out


@settings(max_examples=500)
@given(data=stream_strategy(), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_sync_stream_decodes_the_same_in_any_pieces_or_raises_frame_error(data, cuts):
    try:
        whole = frames.decode_all(data)
    except frames.FrameError:
        whole = None
    try:
        pieces = decode_in_pieces(data, cuts)
    except frames.FrameError:
        pieces = None
    assert pieces == whole


@settings(max_examples=300)
@given(data=stream_strategy())
def test_decoded_sync_frames_merge_into_a_store_without_raising(data):
    """Whatever decodes is safe to apply; whatever fails to decode applies nothing."""
    store = seeded_core().store
    before = state(store)
    try:
        decoded = frames.decode_all(data)
    except frames.FrameError:
        assert state(store) == before
        return
    for frame in decoded:
        if isinstance(frame, frames.Deltas | frames.Snapshot):
            for change in frame.peers:
                apply_remote(store, change)
        elif isinstance(frame, frames.Counts):
            for ih, n in frame.counts:
                store.add_downloaded(ih, n)
    store.expire()


def test_seeded_store_is_what_the_properties_compare_against():
    store = seeded_core().store
    assert store.scrape(IH) == (1, 1, 0)
