"""Sans-IO BEP 15 / BEP 41 packets and connection-id cookies: every packet, every bad input.

Packets are built here with ``struct`` straight from the BEP 15 tables, not
with the module's own builders, so a layout mistake cannot cancel itself out.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udp_sidecar.connection_ids import ConnectionIds
from udp_sidecar.protocol import (
    ACTION_ANNOUNCE,
    ACTION_CONNECT,
    ACTION_ERROR,
    ACTION_SCRAPE,
    MAX_OPTIONS_BYTES,
    MAX_PEERS_IPV4,
    MAX_PEERS_IPV6,
    MAX_SCRAPE_IPV4,
    MAX_SCRAPE_IPV6,
    PROTOCOL_ID,
    AnnounceRequest,
    ConnectRequest,
    PacketError,
    ScrapeRequest,
    build_announce,
    build_announce_request,
    build_connect,
    build_error,
    build_scrape,
    parse_options,
    parse_request,
    passkey_of,
    to_announce,
)
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.types import Announce, ScrapeEntry

CID = b"\x01\x02\x03\x04\x05\x06\x07\x08"
IH = bytes(range(20))
PID = b"-XX0001-abcdefghijkl"
KEY = bytes(range(32))


def connect_packet(tid: int = 7, magic: int = PROTOCOL_ID) -> bytes:
    return struct.pack(">QII", magic, ACTION_CONNECT, tid)


def announce_packet(
    *,
    cid: bytes = CID,
    tid: int = 9,
    info_hash: bytes = IH,
    peer_id: bytes = PID,
    downloaded: int = 1,
    left: int = 2,
    uploaded: int = 3,
    event: int = 2,
    ip: int = 0,
    key: int = 0xDEADBEEF,
    num_want: int = -1,
    port: int = 6881,
    options: bytes = b"",
) -> bytes:
    """An announce with every field set to something recognisable."""
    return build_announce_request(
        cid,
        tid,
        info_hash,
        peer_id,
        port,
        downloaded=downloaded,
        left=left,
        uploaded=uploaded,
        event=event,
        ip=ip,
        key=key,
        num_want=num_want,
        options=options,
    )


def scrape_packet(hashes: list[bytes], cid: bytes = CID, tid: int = 11) -> bytes:
    return struct.pack(">8sII", cid, ACTION_SCRAPE, tid) + b"".join(hashes)


def url_data(*chunks: bytes) -> bytes:
    return b"".join(bytes([2, len(c)]) + c for c in chunks)


def refused(data: bytes, **kw: int) -> PacketError:
    with pytest.raises(PacketError) as info:
        parse_request(data, **kw)
    return info.value


# --- connect -------------------------------------------------------------------------------


def test_connect_request_parses_to_its_transaction_id():
    assert parse_request(connect_packet(0xFFFFFFFF)) == ConnectRequest(0xFFFFFFFF)


def test_connect_with_trailing_bytes_is_still_a_connect():
    assert parse_request(connect_packet(5) + b"extra") == ConnectRequest(5)


def test_connect_without_protocol_id_is_dropped_unanswered():
    err = refused(connect_packet(5, magic=0x1234))
    assert err.transaction_id is None
    assert "protocol id" in str(err)


def test_connect_reply_is_action_tid_and_id():
    assert build_connect(5, CID) == struct.pack(">II8s", 0, 5, CID)


# --- short packets and unknown actions -----------------------------------------------------


@pytest.mark.parametrize("size", range(16))
def test_packet_shorter_than_a_header_is_dropped_unanswered(size):
    err = refused(connect_packet()[:size])
    assert err.transaction_id is None
    assert "too short" in str(err)


@pytest.mark.parametrize("action", [ACTION_ERROR, 4, 0xFFFFFFFF])
def test_unknown_action_is_refused_with_its_transaction_id(action):
    err = refused(struct.pack(">8sII", CID, action, 77))
    assert (err.transaction_id, err.connection_id) == (77, CID)
    assert f"unknown action {action}" in str(err)


# --- announce ------------------------------------------------------------------------------


def test_announce_fields_are_read():
    req = parse_request(announce_packet(ip=0x7F000001, num_want=30, event=1))
    assert req == AnnounceRequest(
        connection_id=CID,
        transaction_id=9,
        info_hash=IH,
        peer_id=PID,
        downloaded=1,
        left=2,
        uploaded=3,
        event=1,
        ip=0x7F000001,
        key=0xDEADBEEF,
        num_want=30,
        port=6881,
        url_data=b"",
    )


def test_announce_counters_go_up_to_the_wire_bound():
    req = parse_request(announce_packet(left=2**63 - 1, downloaded=2**63 - 1, num_want=2**31 - 1))
    assert isinstance(req, AnnounceRequest)
    assert (req.left, req.downloaded, req.num_want) == (2**63 - 1, 2**63 - 1, 2**31 - 1)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"left": -1}, f"invalid left: -1 is outside 0-{2**63 - 1}"),
        ({"downloaded": -(2**63)}, f"invalid downloaded: {-(2**63)} is outside 0-{2**63 - 1}"),
        ({"uploaded": -5, "left": -1}, f"invalid left: -1 is outside 0-{2**63 - 1}"),  # 1st
        ({"uploaded": -5}, f"invalid uploaded: -5 is outside 0-{2**63 - 1}"),
    ],
)
def test_a_negative_counter_is_refused_naming_the_field(fields, reason):
    """HTTP refuses a negative number; UDP took a negative left as a leecher."""
    err = refused(announce_packet(tid=77, **fields))
    assert str(err).startswith(reason)
    assert (err.transaction_id, err.connection_id) == (77, CID)


@pytest.mark.parametrize("size", [16, 20, 97])
def test_short_announce_is_refused_with_its_ids(size):
    err = refused(announce_packet()[:size])
    assert (err.transaction_id, err.connection_id) == (9, CID)
    assert "announce too short" in str(err)


def test_unknown_event_is_refused_naming_the_field():
    err = refused(announce_packet(event=4))
    assert err.transaction_id == 9
    assert "invalid event: 4" in str(err)


def test_port_zero_is_refused_naming_the_field():
    assert "invalid port" in str(refused(announce_packet(port=0)))


def test_announce_reply_is_header_then_peers():
    peers = b"\x7f\x00\x00\x01\x1a\xe1" * 3
    assert build_announce(9, 1800, 4, 5, peers) == struct.pack(">IIIII", 1, 9, 1800, 4, 5) + peers


# --- BEP 41 options ------------------------------------------------------------------------


def test_url_data_options_are_concatenated():
    req = parse_request(announce_packet(options=url_data(b"/announce", b"/KEY?a=1")))
    assert isinstance(req, AnnounceRequest)
    assert req.url_data == b"/announce/KEY?a=1"
    assert (req.path, req.query) == (b"/announce/KEY", b"a=1")


def test_nop_and_unknown_options_are_skipped():
    options = b"\x01" + url_data(b"/a") + b"\x01\x01" + b"\x07\x02zz" + url_data(b"b")
    assert parse_options(options, 0) == b"/ab"


def test_end_of_options_stops_the_walk_and_later_bytes_are_ignored():
    options = url_data(b"/x") + b"\x00" + b"\x02\xffgarbage"
    assert parse_options(options, 0) == b"/x"


def test_padding_of_zero_bytes_after_the_body_is_accepted():
    req = parse_request(announce_packet(options=b"\x00" * 1000))
    assert isinstance(req, AnnounceRequest) and req.url_data == b""


@pytest.mark.parametrize(
    "options",
    [b"\x02", b"\x02\x05abc", url_data(b"/ok") + b"\x02\x10/cut", b"\x09", b"\x09\x03a"],
    ids=["no-length", "short-data", "second-cut", "unknown-no-length", "unknown-short"],
)
def test_truncated_option_is_refused_with_its_ids(options):
    err = refused(announce_packet(options=options))
    assert (err.transaction_id, err.connection_id) == (9, CID)
    assert "truncated" in str(err)


@pytest.mark.parametrize(
    "options",
    [b"\x01" * 65000, b"\x02\x01a" * 21600, url_data(b"a" * 255) * 8 + b"\x01"],
    ids=["nops", "one-byte-url-data", "past-the-bound"],
)
def test_options_past_their_bound_are_refused_with_its_ids(options):
    """The walk is bounded: 64 KiB of NOPs or of 1-byte URLData cost 6-9 ms a datagram."""
    err = refused(announce_packet(options=options))
    assert (err.transaction_id, err.connection_id) == (9, CID)
    assert str(err) == f"BEP 41 options over {MAX_OPTIONS_BYTES} bytes before EndOfOptions"


def test_options_up_to_their_bound_and_padding_after_the_end_are_read():
    chunks = [bytes([65 + n]) * 255 for n in range(8)]  # the last one ends past the bound
    req = parse_request(announce_packet(options=url_data(*chunks) + b"\x00" + b"\x01" * 9000))
    assert isinstance(req, AnnounceRequest) and req.url_data == b"".join(chunks)


@given(st.lists(st.binary(max_size=255), max_size=8))
def test_url_data_chunks_always_come_back_joined(chunks):
    assert parse_options(url_data(*chunks), 0) == b"".join(chunks)


# --- scrape --------------------------------------------------------------------------------


def test_scrape_reads_hashes_in_order_keeping_duplicates():
    hashes = [b"a" * 20, b"b" * 20, b"a" * 20]
    assert parse_request(scrape_packet(hashes)) == ScrapeRequest(CID, 11, hashes)


def test_scrape_of_zero_hashes_is_refused():
    err = refused(scrape_packet([]))
    assert (err.transaction_id, err.connection_id) == (11, CID)
    assert "without info_hash" in str(err)


def test_scrape_with_a_partial_hash_is_refused():
    assert "20-byte" in str(refused(scrape_packet([b"a" * 20, b"b" * 7])))


@pytest.mark.parametrize("limit", [MAX_SCRAPE_IPV4, MAX_SCRAPE_IPV6])
def test_scrape_takes_as_many_hashes_as_one_reply_holds_and_no_more(limit):
    full = [i.to_bytes(20, "big") for i in range(limit)]
    req = parse_request(scrape_packet(full), max_scrape_hashes=limit)
    assert isinstance(req, ScrapeRequest) and len(req.info_hashes) == limit
    err = refused(scrape_packet([*full, b"x" * 20]), max_scrape_hashes=limit)
    assert f"at most {limit}" in str(err)


def test_scrape_reply_is_seeders_completed_leechers_per_hash():
    entries = [ScrapeEntry(b"a" * 20, 5, 7, 3), ScrapeEntry(b"b" * 20, 0, 0, 0)]
    assert build_scrape(11, entries) == struct.pack(">IIIIIIII", 2, 11, 5, 7, 3, 0, 0, 0)


# --- errors and reply sizes ----------------------------------------------------------------


def test_error_reply_carries_the_message():
    assert build_error(3, "nope") == struct.pack(">II", 3, 3) + b"nope"


def test_error_reply_is_cut_to_the_limit():
    assert len(build_error(3, "x" * 500, limit=16)) == 16


def test_peer_caps_keep_replies_within_one_unfragmented_datagram():
    def datagram(headers: int, peers: int, width: int) -> int:
        return headers + len(build_announce(1, 1, 1, 1, b"\0" * width * peers))

    assert datagram(28, MAX_PEERS_IPV4, 6) <= 1500 < datagram(28, MAX_PEERS_IPV4 + 1, 6)
    assert datagram(48, MAX_PEERS_IPV6, 18) <= 1280 < datagram(48, MAX_PEERS_IPV6 + 1, 18)


def test_a_completed_total_past_32_bits_saturates_in_the_scrape_reply():
    """The total is a 64-bit sum (sync and the cluster carry it so): past the 32-bit
    field it was a struct.error, a traceback logged for every scrape of the torrent."""
    reply = build_scrape(4, [ScrapeEntry(b"a" * 20, 5, 2**40, 3)])
    assert struct.unpack(">IIIII", reply) == (ACTION_SCRAPE, 4, 5, 2**32 - 1, 3)


def test_scrape_caps_keep_replies_within_one_unfragmented_datagram():
    def datagram(headers: int, n: int) -> int:
        return headers + len(build_scrape(1, [ScrapeEntry(b"a" * 20, 1, 1, 1)] * n))

    assert datagram(28, MAX_SCRAPE_IPV4) <= 1500 < datagram(28, MAX_SCRAPE_IPV4 + 1)
    assert datagram(48, MAX_SCRAPE_IPV6) <= 1280 < datagram(48, MAX_SCRAPE_IPV6 + 1)


# --- fuzz ----------------------------------------------------------------------------------


@given(st.binary(max_size=3000))
def test_arbitrary_bytes_parse_or_raise_packet_error_only(data):
    try:
        req = parse_request(data)
    except PacketError:
        return
    assert isinstance(req, ConnectRequest | AnnounceRequest | ScrapeRequest)


@given(
    st.sampled_from([ACTION_CONNECT, ACTION_ANNOUNCE, ACTION_SCRAPE, ACTION_ERROR]),
    st.sampled_from([CID, PROTOCOL_ID.to_bytes(8, "big")]),
    st.binary(max_size=600),
    st.integers(0, 200),
)
def test_any_body_after_a_valid_header_parses_or_raises_packet_error_only(
    action, cid, body, max_hashes
):
    try:
        req = parse_request(struct.pack(">8sII", cid, action, 1) + body, max_hashes)
    except PacketError as err:
        assert err.transaction_id in (None, 1)
    else:
        assert isinstance(req, ConnectRequest | AnnounceRequest | ScrapeRequest)


@given(
    st.binary(min_size=8, max_size=8),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
    st.tuples(*[st.integers(-(2**63), 2**63 - 1)] * 3),
    st.integers(0, 2**32 - 1),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 65535),
)
def test_any_announce_reads_back_its_fields_or_is_refused_with_its_ids(
    cid, tid, info_hash, peer_id, counters, event, ip_key, num_want, port
):
    """Announces are read in one unpack of header and body: every field lands in place,
    and a refused one still names its transaction and connection ids."""
    downloaded, left, uploaded = counters
    ip, key = ip_key
    packet = struct.pack(
        ">8sII20s20sqqqIIIiH", cid, ACTION_ANNOUNCE, tid, info_hash, peer_id,
        downloaded, left, uploaded, event, ip, key, num_want, port,
    )  # fmt: skip
    try:
        req = parse_request(packet)
    except PacketError as err:
        assert (err.transaction_id, err.connection_id) == (tid, cid)
        assert event > 3 or port == 0 or min(counters) < 0
        return
    assert req == AnnounceRequest(
        cid, tid, info_hash, peer_id, downloaded, left, uploaded, event, ip, key, num_want, port
    )


# --- to the core ---------------------------------------------------------------------------

CONFIG = TrackerConfig()


def core_announce(packet: bytes, max_peers: int = MAX_PEERS_IPV4, ip_field: bool = True):
    req = parse_request(packet)
    assert isinstance(req, AnnounceRequest)
    return to_announce(req, CONFIG.numwant_default, CONFIG.announce_path, max_peers, ip_field)


def test_announce_becomes_the_core_announce_field_by_field():
    got = core_announce(
        announce_packet(ip=0x0A000001, num_want=20, event=3, options=url_data(b"/announce/pk"))
    )
    assert dataclasses.asdict(got) == dataclasses.asdict(
        Announce(
            info_hash=IH,
            peer_id=PID,
            port=6881,
            uploaded=3,
            downloaded=1,
            left=2,
            event=3,
            numwant=20,
            ip="10.0.0.1",
            key=0xDEADBEEF,
            passkey="pk",
        )
    )


@pytest.mark.parametrize(
    ("num_want", "max_peers", "expected"),
    [
        (-1, MAX_PEERS_IPV4, None),  # the configured default (50) fits
        (-7, MAX_PEERS_IPV4, None),
        (-1, 30, 30),  # the default would not fit this family's datagram
        (0, MAX_PEERS_IPV4, 0),
        (100, MAX_PEERS_IPV4, 100),
        (100, MAX_PEERS_IPV6, MAX_PEERS_IPV6),
        (2**31 - 1, MAX_PEERS_IPV4, MAX_PEERS_IPV4),
    ],
)
def test_numwant_means_default_when_negative_and_is_capped_to_fit_the_reply(
    num_want, max_peers, expected
):
    assert core_announce(announce_packet(num_want=num_want), max_peers).numwant == expected


def test_ip_field_is_passed_on_only_where_the_socket_family_can_carry_it():
    packet = announce_packet(ip=0x0A000001)
    assert core_announce(packet, ip_field=True).ip == "10.0.0.1"
    assert core_announce(packet, ip_field=False).ip is None
    assert core_announce(announce_packet(ip=0)).ip is None


@pytest.mark.parametrize(
    ("url", "passkey"),
    [
        (b"/announce/SECRET", "SECRET"),
        (b"/announce/SECRET?info=1", "SECRET"),
        (b"/announce/a%2Fb", "a/b"),
        (b"/announce", None),
        (b"/announce/", None),
        (b"/announce?x=/announce/K", None),
        (b"/other/SECRET", None),
        (b"/announcement", None),
    ],
)
def test_passkey_is_read_from_the_announce_path_like_http(url, passkey):
    assert passkey_of(url, "/announce") == passkey


def test_passkey_follows_the_configured_announce_path():
    assert passkey_of(b"/tracker/announce/K1", "/tracker/announce") == "K1"
    assert passkey_of(b"/announce/K1", "/tracker/announce") is None


# --- connection ids ------------------------------------------------------------------------

ADDRESS = b"\x7f\x00\x00\x01"


@pytest.mark.parametrize("issued", [1000.0, 1019.5, 1059.99, 1060.0])
@pytest.mark.parametrize("windows", [1, 2, 4])
def test_connection_id_lives_at_least_ttl_and_at_most_ttl_plus_one_window(issued, windows):
    ids = ConnectionIds(KEY, 120, windows)
    cid = ids.issue(ADDRESS, issued)
    assert len(cid) == 8
    for age in (0, 1, 60, 119.99):
        assert ids.valid(cid, ADDRESS, issued + age)
    assert not ids.valid(cid, ADDRESS, issued + 120 + 120 / windows)
    assert not ids.valid(cid, ADDRESS, issued + 10_000)


def test_connection_id_is_bound_to_the_address_only():
    ids = ConnectionIds(KEY, 120)
    cid = ids.issue(ADDRESS, 1000)
    assert not ids.valid(cid, b"\x7f\x00\x00\x02", 1000)
    assert not ids.valid(cid, b"\x00" * 12 + ADDRESS, 1000)


def test_connection_id_depends_on_the_secret_key():
    cid = ConnectionIds(KEY, 120).issue(ADDRESS, 1000)
    assert not ConnectionIds(bytes(32), 120).valid(cid, ADDRESS, 1000)


def test_connection_id_is_not_valid_before_it_was_issued():
    ids = ConnectionIds(KEY, 120)
    cid = ids.issue(ADDRESS, 10_000)
    assert not ids.valid(cid, ADDRESS, 10_000 - 200)


def test_forged_or_protocol_id_is_not_a_connection_id():
    ids = ConnectionIds(KEY, 120)
    assert not ids.valid(PROTOCOL_ID.to_bytes(8, "big"), ADDRESS, 1000)
    assert not ids.valid(b"\x00" * 8, ADDRESS, 1000)
    assert not ids.valid(b"short", ADDRESS, 1000)


def test_connection_ids_keep_no_state_per_client():
    ids = ConnectionIds(KEY, 120)
    for n in range(2000):
        ids.issue(n.to_bytes(4, "big"), 1000 + n)
    assert len(ids._primed) <= 2 * ids.windows + 2


@pytest.mark.parametrize(("ttl", "windows"), [(0, 2), (-5, 2), (120, 0)])
def test_connection_ids_refuse_a_meaningless_lifetime(ttl, windows):
    with pytest.raises(ValueError):
        ConnectionIds(KEY, ttl, windows)
