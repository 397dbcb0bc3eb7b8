"""The sans-IO HTTP tracker protocol: raw query bytes in, bencoded bytes out."""

from __future__ import annotations

import zlib
from urllib.parse import quote_from_bytes

import bencodepy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STARTED,
    EVENT_STOPPED,
    AnnounceResult,
    ScrapeEntry,
)
from wsgi_tracker.http.codec import (
    encode_announce,
    encode_failure,
    encode_scrape,
    parse_announce,
    parse_scrape,
)

IH = bytes(range(20))
PID = b"-LT2110-" + bytes(range(200, 212))


def q(**params: object) -> bytes:
    """A raw query string; bytes values are percent-encoded byte by byte."""
    out = []
    for key, value in params.items():
        raw = value if isinstance(value, bytes) else str(value).encode()
        out.append(f"{key}={quote_from_bytes(raw, safe='')}")
    return "&".join(out).encode()


def announce_query(**overrides: object) -> bytes:
    params: dict[str, object] = {"info_hash": IH, "peer_id": PID, "port": 6881, "left": 100}
    params.update(overrides)
    return q(**{k: v for k, v in params.items() if v is not None})


def failure(query: bytes) -> str:
    with pytest.raises(TrackerError) as info:
        parse_announce(query)
    return str(info.value)


# --- parsing announces -------------------------------------------------------------------


def test_minimal_announce_gets_documented_defaults():
    parsed = parse_announce(announce_query())
    a = parsed.announce
    assert (a.info_hash, a.peer_id, a.port, a.left) == (IH, PID, 6881, 100)
    assert (a.uploaded, a.downloaded, a.event, a.numwant, a.ip, a.key) == (
        0,
        0,
        EVENT_NONE,
        None,
        None,
        0,
    )
    assert parsed.compact is True  # BEP 23: compact unless asked otherwise
    assert parsed.no_peer_id is False


def test_every_byte_value_survives_percent_decoding():
    for start in range(0, 256, 20):
        raw = bytes((start + i) % 256 for i in range(20))
        assert parse_announce(announce_query(info_hash=raw, peer_id=raw)).announce.info_hash == raw


def test_unreserved_bytes_may_be_sent_unencoded():
    raw = b"abcdefghij-._~012345"
    query = b"info_hash=" + raw + b"&peer_id=" + raw + b"&port=1&left=0"
    assert parse_announce(query).announce.peer_id == raw


def test_full_announce_fields_are_read():
    parsed = parse_announce(
        announce_query(
            uploaded=5,
            downloaded=7,
            left=0,
            event="completed",
            numwant=30,
            key=b"\x01\xffk",
            compact=0,
            no_peer_id=1,
            ip="10.0.0.1",
            trackerid="x",
            supportcrypto=1,
        ),
        passkey="sekrit",
    )
    a = parsed.announce
    assert (a.uploaded, a.downloaded, a.left, a.event, a.numwant) == (5, 7, 0, EVENT_COMPLETED, 30)
    assert a.key == zlib.crc32(b"\x01\xffk")  # any string: reduced to 32 bits
    assert a.ip == "10.0.0.1"
    assert a.passkey == "sekrit"
    assert (parsed.compact, parsed.no_peer_id) == (False, True)


def test_an_eight_hex_digit_key_is_the_number_udp_carries():
    """libtorrent sends its key as %08X over HTTP and as the same u32 over UDP."""
    assert parse_announce(announce_query(key="DEADBEEF")).announce.key == 0xDEADBEEF
    assert parse_announce(announce_query(key="0000002a")).announce.key == 42
    assert parse_announce(announce_query(key="00000000")).announce.key == 0  # means none
    assert parse_announce(announce_query(key="")).announce.key == 0
    assert parse_announce(announce_query(key="xyzxyzxy")).announce.key == zlib.crc32(b"xyzxyzxy")


@pytest.mark.parametrize(
    ("text", "number"),
    [("", EVENT_NONE), ("started", EVENT_STARTED), ("stopped", EVENT_STOPPED)],
)
def test_events_map_to_bep15_numbers(text, number):
    assert parse_announce(announce_query(event=text)).announce.event == number


def test_unknown_parameters_are_ignored():
    query = announce_query() + b"&foo=bar&foo=baz&%ff%fe=%00"
    assert parse_announce(query).announce.port == 6881


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"info_hash": IH[:19]}, "invalid info_hash: expected 20 bytes, got 19"),
        ({"info_hash": IH + b"x"}, "invalid info_hash: expected 20 bytes, got 21"),
        ({"peer_id": b""}, "invalid peer_id: expected 20 bytes, got 0"),
        ({"info_hash": None}, "missing parameter: info_hash"),
        ({"peer_id": None}, "missing parameter: peer_id"),
        ({"port": None}, "missing parameter: port"),
        ({"left": None}, "missing parameter: left"),
        ({"port": 0}, "invalid port: 0 is outside 1-65535"),
        ({"port": 65536}, "invalid port: 65536 is outside 1-65535"),
        ({"port": "http"}, "invalid port: b'http' is not a non-negative integer"),
        ({"left": -1}, "invalid left: b'-1' is not a non-negative integer"),
        ({"uploaded": "1e3"}, "invalid uploaded"),
        ({"downloaded": 2**63}, "invalid downloaded"),
        ({"left": "9" * 21}, "invalid left"),
        ({"numwant": "-1"}, "invalid numwant"),
        ({"event": "finished"}, "invalid event: b'finished'"),
        ({"compact": 2}, "invalid compact: expected 0 or 1, got b'2'"),
        ({"no_peer_id": "yes"}, "invalid no_peer_id"),
    ],
)
def test_bad_announce_fails_naming_the_field(overrides, message):
    assert failure(announce_query(**overrides)).startswith(message)


def test_repeated_parameter_is_refused():
    assert failure(announce_query() + b"&port=7000") == "repeated parameter: port"


def test_overlong_value_is_refused_before_decoding():
    assert "too long" in failure(announce_query(key=b"k" * 1000))


# --- parsing scrapes ---------------------------------------------------------------------


def test_scrape_reads_several_hashes_in_order_without_duplicates():
    a, b = b"a" * 20, bytes(range(100, 120))
    query = b"&".join([q(info_hash=a), q(info_hash=b), q(info_hash=a), b"other=1"])
    assert parse_scrape(query, max_hashes=8) == [a, b]


def test_scrape_without_hash_asks_for_full_scrape():
    assert parse_scrape(b"", max_hashes=8) == []


def test_scrape_hash_count_is_bounded():
    query = b"&".join(q(info_hash=bytes([i]) * 20) for i in range(5))
    assert len(parse_scrape(query, max_hashes=5)) == 5
    with pytest.raises(TrackerError, match="too many info_hash values: at most 4"):
        parse_scrape(query, max_hashes=4)


def test_scrape_with_short_hash_fails_naming_it():
    with pytest.raises(TrackerError, match="invalid info_hash: expected 20 bytes, got 3"):
        parse_scrape(q(info_hash=b"abc"), max_hashes=8)


# --- arbitrary input never escapes as anything but TrackerError --------------------------

query_bytes = st.one_of(
    st.binary(max_size=600),
    st.lists(
        st.tuples(
            st.sampled_from([b"info_hash", b"peer_id", b"port", b"left", b"event", b"numwant"])
            | st.binary(max_size=12),
            st.binary(max_size=40).map(lambda v: quote_from_bytes(v).encode())
            | st.binary(max_size=30),
        ),
        max_size=12,
    ).map(lambda pairs: b"&".join(k + b"=" + v for k, v in pairs)),
)


@given(query_bytes)
def test_any_query_bytes_parse_or_fail_cleanly_as_announce(query):
    try:
        parsed = parse_announce(query)
    except TrackerError as exc:
        assert str(exc)
    else:
        assert len(parsed.announce.info_hash) == len(parsed.announce.peer_id) == 20
        assert 1 <= parsed.announce.port <= 65535


@given(query_bytes, st.integers(min_value=1, max_value=10))
def test_any_query_bytes_parse_or_fail_cleanly_as_scrape(query, max_hashes):
    try:
        hashes = parse_scrape(query, max_hashes)
    except TrackerError as exc:
        assert str(exc)
    else:
        assert len(hashes) <= max_hashes
        assert all(len(h) == 20 for h in hashes)


@given(
    st.fixed_dictionaries(
        {
            "info_hash": st.binary(min_size=20, max_size=20),
            "peer_id": st.binary(min_size=20, max_size=20),
            "port": st.integers(1, 65535),
            "left": st.integers(0, 2**63 - 1),
            "uploaded": st.integers(0, 2**63 - 1),
            "numwant": st.integers(0, 2**31 - 1),
        }
    )
)
def test_valid_fields_round_trip_through_the_query(fields):
    a = parse_announce(q(**fields)).announce
    assert {k: getattr(a, k) for k in fields} == fields


def _outcome(query: bytes) -> object:
    try:
        parsed = parse_announce(query)
    except TrackerError as exc:
        return str(exc)
    return parsed.announce, parsed.compact, parsed.no_peer_id


def _encoded(value: bytes, picks: list[bool]) -> bytes:
    """``value`` as a client may send it: the picked bytes as %XX, the rest as quote() does."""
    return b"".join(
        b"%%%02X" % byte if picks[n % len(picks)] else quote_from_bytes(bytes([byte])).encode()
        for n, byte in enumerate(value)
    )


plain_or_not = st.binary(max_size=8)


@given(
    st.fixed_dictionaries(
        {
            b"info_hash": st.binary(min_size=20, max_size=20),
            b"peer_id": st.binary(min_size=19, max_size=21),
            b"port": st.sampled_from([b"6881", b"0", b"65536", b"+1"]) | plain_or_not,
            b"left": st.sampled_from([b"0", b"123"]) | plain_or_not,
            b"uploaded": st.sampled_from([b"5"]) | plain_or_not,
            b"event": st.sampled_from([b"started", b"completed", b"stopped", b"paused", b""])
            | plain_or_not,
            b"compact": st.sampled_from([b"0", b"1", b"2"]) | plain_or_not,
            b"numwant": st.sampled_from([b"50"]) | plain_or_not,
            b"key": st.sampled_from([b"DEADBEEF", b""]) | plain_or_not,
            b"ip": st.sampled_from([b"10.0.0.1", b"::1", b""]) | plain_or_not,
        }
    ),
    st.lists(st.booleans(), min_size=1, max_size=8),
)
def test_a_value_reads_the_same_however_much_of_it_is_percent_encoded(fields, picks):
    """Values are decoded lazily (plain digits and event names are used as they come):
    the result, or the error, is that of decoding every value first."""
    plain = b"&".join(k + b"=" + quote_from_bytes(v).encode() for k, v in fields.items())
    mixed = b"&".join(k + b"=" + _encoded(v, picks) for k, v in fields.items())
    assert _outcome(mixed) == _outcome(plain)


@given(st.sampled_from([b"port", b"left", b"event"]), st.integers(0, 3), st.binary(max_size=3))
def test_an_overlong_value_is_refused_before_a_repeated_parameter(name, at, filler):
    parts = [b"info_hash=" + b"a" * 20, b"peer_id=" + b"b" * 20, b"port=1", b"left=0"]
    parts.insert(at, name + b"=" + filler)  # a repeat (or an unknown one for event)
    parts.append(b"x=" + b"9" * 800)
    assert "is too long" in _outcome(b"&".join(parts))


# --- encoding ----------------------------------------------------------------------------

V4 = bytes([127, 0, 0, 1]) + (6881).to_bytes(2, "big")
V4B = bytes([10, 0, 0, 2]) + (51413).to_bytes(2, "big")
V6 = bytes(15) + b"\x01" + (6882).to_bytes(2, "big")


def test_compact_reply_is_the_bep23_dictionary_byte_for_byte():
    result = AnnounceResult(1800, 900, 3, 4, peers=V4 + V4B)
    assert encode_announce(result, compact=True, no_peer_id=False) == (
        b"d8:completei3e10:incompletei4e8:intervali1800e12:min intervali900e"
        b"5:peers12:\x7f\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\xc8\xd5e"
    )


def test_compact_reply_carries_ipv6_peers_in_peers6():
    result = AnnounceResult(1800, 900, 1, 0, peers6=V6)
    assert encode_announce(result, compact=True, no_peer_id=False) == (
        b"d8:completei1e10:incompletei0e8:intervali1800e12:min intervali900e"
        b"5:peers0:6:peers618:" + V6 + b"e"
    )


def test_non_compact_reply_lists_dictionaries_with_peer_ids_bep3():
    result = AnnounceResult(1800, 900, 1, 1, peers=V4, peer_ids=[PID], peers6=V6, peer_ids6=[IH])
    assert encode_announce(result, compact=False, no_peer_id=False) == (
        b"d8:completei1e10:incompletei1e8:intervali1800e12:min intervali900e5:peersl"
        b"d2:ip9:127.0.0.17:peer id20:" + PID + b"4:porti6881ee"
        b"d2:ip3:::17:peer id20:" + IH + b"4:porti6882ee"
        b"ee"
    )


def test_non_compact_reply_without_peer_ids():
    result = AnnounceResult(60, 30, 0, 2, peers=V4B, peer_ids=[PID])
    assert encode_announce(result, compact=False, no_peer_id=True) == (
        b"d8:completei0e10:incompletei2e8:intervali60e12:min intervali30e"
        b"5:peersld2:ip8:10.0.0.24:porti51413eeee"
    )


def test_scrape_reply_is_the_bep48_files_dictionary():
    a, b = b"A" * 20, b"B" * 20
    body = encode_scrape([ScrapeEntry(b, 1, 2, 3), ScrapeEntry(a, 0, 5, 0)])
    assert body == (
        b"d5:filesd"
        b"20:" + a + b"d8:completei0e10:downloadedi5e10:incompletei0ee"
        b"20:" + b + b"d8:completei1e10:downloadedi2e10:incompletei3ee"
        b"ee"
    )


def test_failure_reply_names_the_problem():
    assert encode_failure("invalid info_hash: expected 20 bytes, got 19") == (
        b"d14:failure reason44:invalid info_hash: expected 20 bytes, got 19e"
    )


def test_failure_reply_with_non_ascii_text_is_valid_utf8():
    body = encode_failure("caf\u00e9")
    assert bencodepy.decode(body) == {b"failure reason": "caf\u00e9".encode()}


@given(
    complete=st.integers(0, 2**40),
    incomplete=st.integers(0, 2**40),
    interval=st.integers(1, 10**6),
    min_interval=st.integers(1, 10**6),
    v4=st.lists(st.binary(min_size=6, max_size=6), max_size=60),
    v6=st.lists(st.binary(min_size=18, max_size=18), max_size=30),
)
def test_compact_fast_path_equals_bencode_py(complete, incomplete, interval, min_interval, v4, v6):
    peers, peers6 = b"".join(v4), b"".join(v6)
    result = AnnounceResult(interval, min_interval, complete, incomplete, peers, peers6)
    expected: dict[bytes, object] = {
        b"complete": complete,
        b"incomplete": incomplete,
        b"interval": interval,
        b"min interval": min_interval,
        b"peers": peers,
    }
    if peers6:
        expected[b"peers6"] = peers6
    assert encode_announce(result, compact=True, no_peer_id=False) == bencodepy.encode(expected)
