"""The WebTorrent JSON codec without a socket: what it accepts, what it refuses and why."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.core.types import EVENT_COMPLETED, EVENT_NONE, EVENT_STARTED, EVENT_STOPPED
from wsgi_tracker.websocket import codec as c

LIMITS = c.Limits()
binary20 = st.binary(min_size=20, max_size=20)


def text(b: bytes) -> str:
    return b.decode("latin-1")


def announce(**fields: object) -> str:
    msg = {"action": "announce", "info_hash": "i" * 20, "peer_id": "p" * 20, **fields}
    return json.dumps({k: v for k, v in msg.items() if v is not ...})


def offers(n: int) -> list[dict]:
    return [
        {"offer_id": f"{k:020d}", "offer": {"type": "offer", "sdp": f"v=0 {k}"}} for k in range(n)
    ]


def test_an_announce_as_webtorrent_sends_it() -> None:
    msg = c.parse_message(
        announce(uploaded=0, downloaded=5, left=None, event="started", numwant=2, offers=offers(2)),
        LIMITS,
    )
    assert msg == c.WsAnnounce(
        b"i" * 20,
        b"p" * 20,
        EVENT_STARTED,
        None,
        2,
        (c.Offer(b"0" * 20, "v=0 0"), c.Offer(b"0" * 19 + b"1", "v=0 1")),
    )
    assert not msg.seeder


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (None, EVENT_NONE),
        ("update", EVENT_NONE),
        ("started", EVENT_STARTED),
        ("completed", EVENT_COMPLETED),
        ("stopped", EVENT_STOPPED),
    ],
)
def test_events(event: str | None, code: int) -> None:
    msg = c.parse_message(announce(event=event, left=0), LIMITS)
    assert isinstance(msg, c.WsAnnounce)
    assert (msg.event, msg.seeder, msg.offers) == (code, True, ())


def test_an_answer() -> None:
    raw = announce(to_peer_id="t" * 20, offer_id="o" * 20, answer={"type": "answer", "sdp": "x"})
    assert c.parse_message(raw, LIMITS) == c.WsAnswer(
        b"i" * 20, b"p" * 20, b"t" * 20, b"o" * 20, "x"
    )


def test_scrape_of_one_several_or_all() -> None:
    one = json.dumps({"action": "scrape", "info_hash": "a" * 20})
    several = json.dumps({"action": "scrape", "info_hash": ["a" * 20, "b" * 20]})
    assert c.parse_message(one, LIMITS) == c.WsScrape((b"a" * 20,))
    assert c.parse_message(several, LIMITS) == c.WsScrape((b"a" * 20, b"b" * 20))
    assert c.parse_message('{"action": "scrape"}', LIMITS) == c.WsScrape(())


@pytest.mark.parametrize(
    ("raw", "code", "reason"),
    [
        ("not json", c.CLOSE_INVALID, "not JSON"),
        ("[1, 2]", c.CLOSE_INVALID, "JSON list, not an object"),
        ('"announce"', c.CLOSE_INVALID, "JSON str, not an object"),
        ("[" * 60_000, c.CLOSE_INVALID, "nested too deeply"),
        ('{"action": "announce", "numwant": ' + "9" * 5000 + "}", c.CLOSE_INVALID, "too long"),
    ],
)
def test_what_is_not_a_message_closes(raw: str, code: int, reason: str) -> None:
    with pytest.raises(c.WsError, match=reason) as info:
        c.parse_message(raw, LIMITS)
    assert info.value.close_code == code


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"action": "connect"}', "unknown action 'connect'"),
        ("{}", "unknown action None"),
        (announce(info_hash="short"), "info_hash must be a 20-character string, got 5 characters"),
        (announce(info_hash=7), "info_hash must be a 20-character string, got int"),
        (announce(peer_id="\u0100" * 20), "peer_id has a character above U[+]00FF"),
        (announce(left=-1), "left must be a non-negative integer or null, got -1"),
        (announce(left=True), "left must be a non-negative integer or null, got True"),
        (announce(uploaded="5"), "uploaded must be a non-negative integer"),
        (announce(numwant=1.5), "numwant must be a non-negative integer"),
        (announce(event="finished"), "event 'finished' is not one of"),
        (announce(offers={}), "offers must be a list, got dict"),
        (announce(offers=offers(11)), "too many offers: 11, at most 10"),
        (announce(offers=[1]), r"offers\[0\] must be an object"),
        (announce(offers=[{"offer_id": "x"}]), r"offers\[0\].offer_id must be a 20-character"),
        (
            announce(offers=[{"offer_id": "o" * 20, "offer": {"type": "answer", "sdp": ""}}]),
            r"offers\[0\].offer must be an object \{type: 'offer'",
        ),
        (announce(answer="sdp", to_peer_id="t" * 20, offer_id="o" * 20), "answer must be"),
        (announce(answer={"type": "answer", "sdp": ""}, offer_id="o" * 20), "to_peer_id must"),
        ('{"action": "scrape", "info_hash": ["a"]}', r"info_hash\[0\] must be a 20-character"),
        ('{"action": "scrape", "info_hash": []}', "info_hash is an empty list"),
        (json.dumps({"action": "scrape", "info_hash": ["a" * 20] * 65}), "too many info_hashes"),
    ],
)
def test_a_message_that_breaks_a_rule_is_refused_not_closed(raw: str, reason: str) -> None:
    with pytest.raises(c.WsError, match=reason) as info:
        c.parse_message(raw, LIMITS)
    assert info.value.close_code is None
    assert info.value.reason.endswith("nothing was changed")
    failure = json.loads(c.encode_failure(info.value))
    assert failure["failure reason"] == info.value.reason
    assert failure["action"] in ("announce", "scrape", "connect")


def test_a_refusal_names_the_torrent_so_the_client_shows_it() -> None:
    with pytest.raises(c.WsError) as info:
        c.parse_message(announce(info_hash="\xff" * 20, offers=offers(11)), LIMITS)
    assert json.loads(c.encode_failure(info.value))["info_hash"] == "\xff" * 20


def test_unknown_keys_are_ignored() -> None:
    assert isinstance(c.parse_message(announce(trackerid="abc", extra=[1]), LIMITS), c.WsAnnounce)


def test_message_buffer_assembles_fragments_and_enforces_caps() -> None:
    buf = c.MessageBuffer(c.Limits(max_message_bytes=10, max_frame_bytes=6))
    assert buf.add("abc", False, False) is None
    assert buf.add("def", True, False) is None
    assert buf.add("gh", True, True) == "abcdefgh"
    with pytest.raises(c.WsError, match="frame over 6 bytes") as info:
        buf.add("é" * 4, False, False)  # 8 bytes of UTF-8
    assert info.value.close_code == c.CLOSE_TOO_BIG
    buf = c.MessageBuffer(c.Limits(max_message_bytes=10, max_frame_bytes=6))
    buf.add("123456", True, False)
    with pytest.raises(c.WsError, match="message over 10 bytes"):
        buf.add("78901", True, True)


def test_a_message_in_one_byte_fragments_is_held_in_about_its_own_size() -> None:
    """64 KiB as one-character fragments: the engine's strings were kept one by one (~560 KB
    held per connection, x1,000 connections a worker); now ~its size in one bytearray."""
    buf = c.MessageBuffer(LIMITS)
    pieces = ["é" if n % 2 else "a" for n in range(40_000)]  # 60,000 bytes of UTF-8
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert all(buf.add(p, True, False) is None for p in pieces)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2 * 60_000
    assert buf.add("!", True, True) == "".join(pieces) + "!"


# --- handshake -------------------------------------------------------------------------


def upgrade(**headers: str) -> dict[str, str]:
    env = {
        "REQUEST_METHOD": "GET",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "keep-alive, Upgrade",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    env.update(headers)
    return env


def test_handshake_token_is_the_rfc_6455_example() -> None:
    assert c.wants_websocket(upgrade())
    assert c.accept_token(upgrade()) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert c.switching_protocols("tok").startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"REQUEST_METHOD": "POST"}, "405"),
        ({"HTTP_CONNECTION": "keep-alive"}, "400"),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, "426"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "short"}, "400"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "!!!!"}, "400"),
    ],
)
def test_bad_handshakes_are_refused_with_a_status(headers: dict[str, str], status: str) -> None:
    with pytest.raises(c.HandshakeError) as info:
        c.accept_token(upgrade(**headers))
    assert info.value.status.startswith(status)


# --- properties ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.text(max_size=400))
def test_any_text_parses_or_raises_ws_error(raw: str) -> None:
    try:
        c.parse_message(raw, LIMITS)
    except c.WsError as exc:
        assert exc.reason


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "action",
                "info_hash",
                "peer_id",
                "left",
                "event",
                "numwant",
                "offers",
                "answer",
                "to_peer_id",
                "offer_id",
                "uploaded",
                "downloaded",
                "other",
            ]
        ),
        json_values | st.sampled_from(["announce", "scrape", "i" * 20]),
        max_size=12,
    )
)
def test_any_json_object_parses_or_is_refused_with_a_reason(obj: dict) -> None:
    try:
        c.parse_message(json.dumps(obj), LIMITS)
    except c.WsError as exc:
        assert exc.close_code is None
        json.loads(c.encode_failure(exc))


@given(binary20, binary20, st.lists(st.tuples(binary20, st.text(max_size=50)), max_size=10))
def test_binary_ids_survive_json_both_ways(ih: bytes, peer: bytes, raw_offers: list) -> None:
    """Any byte string a browser sends as a 20-character string comes back the same."""
    msg = c.parse_message(
        announce(
            info_hash=text(ih),
            peer_id=text(peer),
            offers=[
                {"offer_id": text(o), "offer": {"type": "offer", "sdp": s}} for o, s in raw_offers
            ],
        ),
        LIMITS,
    )
    assert isinstance(msg, c.WsAnnounce)
    assert (msg.info_hash, msg.peer_id) == (ih, peer)
    assert [(o.offer_id, o.sdp) for o in msg.offers] == raw_offers
    for offer in msg.offers:
        relayed = json.loads(c.encode_offer(ih, peer, offer))
        assert relayed["offer_id"].encode("latin-1") == offer.offer_id
        assert relayed["peer_id"].encode("latin-1") == peer
        assert relayed["offer"] == {"type": "offer", "sdp": offer.sdp}
    files = json.loads(c.encode_scrape_reply([(ih, 1, 2, 3)]))["files"]
    assert {k.encode("latin-1"): v for k, v in files.items()} == {
        ih: {"complete": 1, "incomplete": 2, "downloaded": 3}
    }


@given(st.lists(st.tuples(st.text(max_size=20), st.booleans()), max_size=20))
def test_message_buffer_never_holds_more_than_its_cap(pieces: list[tuple[str, bool]]) -> None:
    limits = c.Limits(max_message_bytes=40, max_frame_bytes=25)
    buf = c.MessageBuffer(limits)
    frame = message = 0
    for piece, finished in pieces:
        size = len(piece.encode())
        frame, message = frame + size, message + size
        try:
            out = buf.add(piece, finished, finished)
        except c.WsError:
            assert frame > limits.max_frame_bytes or message > limits.max_message_bytes
            return
        assert frame <= limits.max_frame_bytes and message <= limits.max_message_bytes
        if finished:
            assert out is not None and len(out.encode()) == message
            frame = message = 0


def client_frames(payloads: list[bytes]) -> bytes:
    """Masked text frames as a browser sends them, by wsproto's own client."""
    from wsproto.frame_protocol import FrameProtocol, Opcode

    proto = FrameProtocol(client=True, extensions=[])
    return b"".join(proto._serialize_frame(Opcode.TEXT, p) for p in payloads)


def frame_header(length: int, masked: bool = True) -> bytes:
    """A text frame's header claiming ``length`` payload bytes (and its mask key)."""
    if length < 126:
        head = bytes([0x81, (0x80 if masked else 0) | length])
    elif length < 1 << 16:
        head = bytes([0x81, (0x80 if masked else 0) | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x81, (0x80 if masked else 0) | 127]) + length.to_bytes(8, "big")
    return head + (b"mask" if masked else b"")


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    st.lists(st.integers(1, 400), max_size=20),
)
def test_frame_headers_follow_frames_split_anywhere(payloads: list[bytes], cuts: list[int]) -> None:
    """Frames within the limit, cut into reads anywhere, are never refused, and the
    follower ends at a frame boundary (nothing to skip, no partial header)."""
    stream = client_frames(payloads)
    headers = c.FrameHeaders(300)
    pos = 0
    for cut in [*cuts, len(stream)]:
        headers.feed(stream[pos : pos + cut])
        pos += cut
    headers.feed(stream[pos:])
    assert headers._skip == 0 and headers._head == b""


@pytest.mark.parametrize("claim", [301, 1 << 16, (1 << 63) - 1, (1 << 64) - 1])
@pytest.mark.parametrize("split", [1, 2, 5, 13])
def test_a_header_claiming_too_much_is_refused_when_it_arrives(claim: int, split: int) -> None:
    """After a valid frame, a header claiming too much is a 1009 in the read that completes
    it, however the header is cut, before any of its payload comes."""
    headers = c.FrameHeaders(300)
    header = frame_header(claim)
    stream = client_frames([b"x" * 300]) + header
    end = len(stream) - len(header) + min(split, len(header) - 1)
    headers.feed(stream[:end])
    with pytest.raises(c.WsError) as refused:
        headers.feed(stream[end:])
    assert refused.value.close_code == c.CLOSE_TOO_BIG
    assert refused.value.reason == f"frame over 300 bytes: its header claims {claim}"
