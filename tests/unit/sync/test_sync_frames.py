"""The sync wire format, without a socket: every frame round-trips, bad bytes raise FrameError."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.core.types import PeerChange, WsChange
from wsgi_tracker.sync import frames as f

V4 = b"\x7f\x00\x00\x01\x1a\xe1"
V6 = b"\x00" * 15 + b"\x01" + b"\x1a\xe1"


def peer(
    n: int, endpoint: bytes = V4, seeder: bool = False, event: int = 0, key: int = 0
) -> PeerChange:
    return PeerChange(
        n.to_bytes(20, "big"), b"-XX0001-" + n.to_bytes(12, "big"), endpoint, seeder, event,
        1_700_000_000.25 + n, key,
    )  # fmt: skip


EVERY_FRAME = [
    f.Hello(f.ROLE_WORKER, 4242),
    f.Hello(f.ROLE_HUB, 1),
    f.Hello(f.ROLE_UDP, 9),
    f.Snapshot([peer(1), peer(2, V6, seeder=True), peer(6, key=0xDEADBEEF)]),
    f.Totals([(b"a" * 20, 7), (b"b" * 20, 2**40)]),
    f.SnapshotDone(),
    f.Deltas(
        [
            peer(3, event=2),
            peer(4, V6, event=3, key=1),
            peer(5, seeder=True, event=1),
            peer(7, V6, key=2**32 - 1),
        ]
    ),
    f.Counts([(b"c" * 20, 1), (b"d" * 20, 3)]),
    f.Heartbeat(),
    f.Stats([f.StatsEntry(10, f.ROLE_WORKER, b'{"announces": 5}'), f.StatsEntry(11, 0, b"")]),
    f.WsPeers([WsChange(b"e" * 20, b"\xff" * 20, 4242, True, 1, 1_700_000_000.5)]),
    f.WsRelay(4242, b"f" * 20, b"\x00" * 20, '{"offer":{"sdp":"v=0 \u00e9"}}'),
    f.Mark(1),
    f.Ack(2**64 - 1),
]


@pytest.mark.parametrize("frame", EVERY_FRAME, ids=lambda fr: type(fr).__name__)
def test_every_frame_round_trips(frame: f.Frame) -> None:
    assert f.decode_all(f.encode(frame)) == [frame]


def test_frames_split_at_any_byte_decode_the_same() -> None:
    stream = b"".join(f.encode(fr) for fr in EVERY_FRAME)
    for cut in range(len(stream) + 1):
        decoder = f.FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        decoder.close()
        assert got == EVERY_FRAME


def test_one_byte_at_a_time_decodes_the_same() -> None:
    stream = b"".join(f.encode(fr) for fr in EVERY_FRAME)
    decoder = f.FrameDecoder()
    got = [fr for i in range(len(stream)) for fr in decoder.feed(stream[i : i + 1])]
    assert got == EVERY_FRAME


def test_large_peer_lists_split_into_frames_under_the_limit() -> None:
    peers = [peer(n, V6) for n in range(f.RECORDS_PER_FRAME * 2 + 5)]
    data = f.encode(f.Deltas(peers))
    frames = f.decode_all(data)
    assert len(frames) == 3
    assert [p for fr in frames for p in fr.peers] == peers  # type: ignore[union-attr]
    decoder = f.FrameDecoder()
    assert all(len(raw.wire) <= f.MAX_BODY + 5 for raw in decoder.feed_raw(data))


def test_empty_lists_encode_to_nothing() -> None:
    assert f.encode(f.Deltas([])) == b""
    assert f.encode(f.Counts([])) == b""


def test_raw_frames_forward_the_exact_bytes() -> None:
    wire = f.encode(EVERY_FRAME[5])
    (raw,) = f.FrameDecoder().feed_raw(wire)
    assert raw.wire == wire
    assert raw.decode() == EVERY_FRAME[5]


def test_a_mark_or_ack_of_another_size_is_refused() -> None:
    for kind, name in ((f.KIND_MARK, "mark"), (f.KIND_ACK, "ack")):
        with pytest.raises(f.FrameError, match=f"{name} frame is 7 bytes, expected 8"):
            f.decode_all(struct.pack(">IB", 7, kind) + bytes(7))


def test_truncated_stream_is_refused_at_close() -> None:
    wire = f.encode(EVERY_FRAME[2])
    decoder = f.FrameDecoder()
    assert decoder.feed(wire[:-1]) == []
    with pytest.raises(f.FrameError, match="stream ended inside a frame"):
        decoder.close()


def test_truncated_peer_record_is_refused() -> None:
    body = f.encode(f.Deltas([peer(1)]))[5:]
    with pytest.raises(f.FrameError, match="truncated"):
        f.decode_all(struct.pack(">IB", len(body) - 3, f.KIND_DELTAS) + body[:-3])


def test_oversized_frame_is_refused_before_its_body_arrives() -> None:
    header = struct.pack(">IB", f.MAX_BODY + 1, f.KIND_DELTAS)
    with pytest.raises(f.FrameError, match="exceeds the limit"):
        f.FrameDecoder().feed(header)


def test_unknown_frame_kind_is_refused() -> None:
    with pytest.raises(f.FrameError, match="unknown frame kind 99"):
        f.FrameDecoder().feed(struct.pack(">IB", 0, 99))


def test_an_unknown_role_is_refused() -> None:
    roles = sorted(f.ROLE_NAMES)
    assert roles == list(range(len(roles)))  # the next role is the next number
    with pytest.raises(f.FrameError, match=rf"hello role is {len(roles)}, expected one of"):
        f.decode_all(f.encode(f.Hello(len(roles), 5)))


def test_wrong_version_is_refused_with_who_and_which_version() -> None:
    wire = f.encode(f.Hello(f.ROLE_WORKER, 777, version=f.VERSION + 1))
    with pytest.raises(
        f.FrameError, match=rf"pid 777 \(worker\) speaks protocol version {f.VERSION + 1}"
    ):
        f.decode_all(wire)
    with pytest.raises(
        f.FrameError, match=rf"speaks protocol version 1, this process speaks {f.VERSION}"
    ):
        f.decode_all(f.encode(f.Hello(f.ROLE_HUB, 1, version=1)))


def test_a_record_without_a_key_is_a_version_1_record() -> None:
    """Keyless records keep the version 1 layout: 50 bytes and the endpoint, flags 0-3."""
    ih, pid = b"i" * 20, b"p" * 20
    v1 = struct.pack(">20s20sdBB", ih, pid, 1.5, 1, 2) + V4
    assert f.encode(f.Deltas([PeerChange(ih, pid, V4, True, 2, 1.5)]))[5:] == v1
    keyed = f.encode(f.Deltas([PeerChange(ih, pid, V4, True, 2, 1.5, 0x01020304)]))[5:]
    assert keyed == struct.pack(">20s20sdBB", ih, pid, 1.5, 1 | 4, 2) + V4 + b"\x01\x02\x03\x04"


def test_a_cut_or_zero_key_is_refused() -> None:
    body = f.encode(f.Deltas([peer(1, key=7)]))[5:]
    with pytest.raises(f.FrameError, match="peer key truncated"):
        f.decode_all(struct.pack(">IB", len(body) - 2, f.KIND_DELTAS) + body[:-2])
    zero = body[:-4] + bytes(4)
    with pytest.raises(f.FrameError, match="zero key"):
        f.decode_all(struct.pack(">IB", len(zero), f.KIND_DELTAS) + zero)


def test_hello_from_something_else_is_refused() -> None:
    body = b"HTTP" + bytes(7)
    with pytest.raises(f.FrameError, match="not a wsgi-tracker peer"):
        f.decode_all(struct.pack(">IB", len(body), f.KIND_HELLO) + body)


def test_bad_event_and_flags_are_refused() -> None:
    body = bytearray(f.encode(f.Deltas([peer(1)]))[5:])
    bad_event = bytes(body[:49]) + b"\x07" + bytes(body[50:])
    with pytest.raises(f.FrameError, match="event 7"):
        f.decode_all(struct.pack(">IB", len(body), f.KIND_DELTAS) + bad_event)
    bad_flags = bytes(body[:48]) + b"\x80" + bytes(body[49:])
    with pytest.raises(f.FrameError, match="unknown bits"):
        f.decode_all(struct.pack(">IB", len(body), f.KIND_DELTAS) + bad_flags)


def test_ws_records_with_bad_fields_are_refused() -> None:
    good = f.encode(f.WsPeers([WsChange(b"e" * 20, b"p" * 20, 1, False, 0, 1.0)]))
    for offset, value, match in ((-2, 4, "unknown bits"), (-1, 9, "event 9")):
        bad = bytearray(good)
        bad[offset] = value
        with pytest.raises(f.FrameError, match=match):
            f.decode_all(bytes(bad))
    relay = f.encode(f.WsRelay(1, b"e" * 20, b"p" * 20, "x"))[:-1] + b"\xff"
    with pytest.raises(f.FrameError, match="not UTF-8"):
        f.decode_all(relay)


@given(
    st.lists(
        st.builds(
            WsChange,
            st.binary(min_size=20, max_size=20),
            st.binary(min_size=20, max_size=20),
            st.integers(0, 2**32 - 1),
            st.booleans(),
            st.integers(0, 3),
            st.floats(0, f.MAX_TIMESTAMP, exclude_max=True),
        ),
        max_size=50,
    ),
    st.integers(0, 2**32 - 1),
    st.text(max_size=300),
)
def test_ws_peers_and_relays_round_trip(changes: list[WsChange], holder: int, text: str) -> None:
    frames = [f.WsPeers(changes), f.WsRelay(holder, b"i" * 20, b"p" * 20, text)]
    assert f.decode_all(b"".join(f.encode(fr) for fr in frames)) == frames[int(not changes) :]


def test_heartbeat_with_a_body_is_refused() -> None:
    with pytest.raises(f.FrameError, match="must be empty"):
        f.decode_all(struct.pack(">IB", 1, f.KIND_HEARTBEAT) + b"x")


@given(
    st.lists(
        st.builds(
            PeerChange,
            st.binary(min_size=20, max_size=20),
            st.binary(min_size=20, max_size=20),
            st.sampled_from([V4, V6]) | st.binary(min_size=6, max_size=6),
            st.booleans(),
            st.integers(min_value=0, max_value=3),
            st.floats(min_value=0, max_value=f.MAX_TIMESTAMP, exclude_max=True),
            st.integers(min_value=0, max_value=2**32 - 1),
        ),
        max_size=20,
    )
)
def test_any_peer_records_round_trip_with_their_keys(peers: list[PeerChange]) -> None:
    frames = f.decode_all(f.encode(f.Deltas(peers)))
    assert [p for fr in frames for p in fr.peers] == peers  # type: ignore[union-attr]


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_frame_error(data: bytes) -> None:
    decoder = f.FrameDecoder()
    with contextlib.suppress(f.FrameError):
        decoder.feed(data)
        decoder.close()


@given(
    st.lists(st.sampled_from(range(len(EVERY_FRAME))), max_size=8),
    st.binary(max_size=64),
    st.integers(min_value=0, max_value=4096),
)
def test_valid_frames_with_garbage_spliced_in_raise_only_frame_error(
    picks: list[int], junk: bytes, at: int
) -> None:
    stream = b"".join(f.encode(EVERY_FRAME[i]) for i in picks)
    at = min(at, len(stream))
    decoder = f.FrameDecoder()
    with contextlib.suppress(f.FrameError):
        decoder.feed(stream[:at] + junk + stream[at:])
        decoder.close()


@given(st.sampled_from(range(1, 11)), st.binary(max_size=512))
def test_any_body_under_a_valid_header_raises_only_frame_error(kind: int, body: bytes) -> None:
    with contextlib.suppress(f.FrameError):
        f.decode_all(struct.pack(">IB", len(body), kind) + body)


record_change = st.builds(
    PeerChange,
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
    st.sampled_from([V4, V6]),
    st.booleans(),
    st.integers(0, 3),
    st.sampled_from([0.0, 1_700_000_000.5, float(f.MAX_TIMESTAMP - 1)]),
    st.sampled_from([0, 1, 2**32 - 1]),
)


@given(
    peers=st.one_of(
        st.lists(record_change, max_size=8),
        # one shape throughout, the bulk decoder's case
        st.tuples(st.sampled_from([V4, V6]), st.sampled_from([0, 5])).flatmap(
            lambda shape: st.lists(
                record_change.map(lambda p: p._replace(endpoint=shape[0], key=shape[1])),
                min_size=1,
                max_size=8,
            )
        ),
    ),
    damage=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=3),
    cut=st.integers(0, 8),
)
def test_peer_bodies_decode_in_bulk_as_the_record_walk_does(peers, damage, cut):
    """The one-call decode of a one-shape body and the record-by-record walk agree on any
    bytes: the same rows, or the same FrameError."""
    body = bytearray(f.encode(f.Deltas(peers))[5:])
    for at, value in damage:
        if at < len(body):
            body[at] = value
    data = bytes(body[: len(body) - cut])

    def outcome(decode):  # type: ignore[no-untyped-def]
        try:
            return decode(data)
        except f.FrameError as exc:
            return str(exc)

    walked = outcome(f._walk_peers)
    bulk = outcome(f._decode_peers)
    assert (bulk if isinstance(bulk, str) else bulk.rows) == walked
    if not isinstance(bulk, str):
        # What a lazy replica stashes reads back as the same rows, any slice of them.
        lo, hi = cut % (len(walked) + 1), len(walked)
        again = f._decode_peers(data)  # not yet cut into rows
        kept = again.pending(lo, hi)
        assert [kept.row(i) for i in range(len(kept))] == walked[lo:hi]
        assert kept.info_hashes() == [row[0] for row in walked[lo:hi]]
        if walked:
            assert f._decode_peers(data).last_timestamp() == walked[-1][2]


@given(st.lists(record_change, max_size=20), st.sampled_from([0, 2, 4, 6]))
def test_rows_encode_to_the_bytes_of_their_changes(peers: list[PeerChange], other: int) -> None:
    """A walk's rows (PeerRecords; the flags byte may hold other bits) are packed straight,
    to the same bytes as the PeerChanges they stand for."""
    rows = [(*r[:3], r[3] | other, *r[4:]) for r in f.peer_rows(peers)]
    for kind in (f.Snapshot, f.Deltas):
        assert f.encode(kind(f.PeerRecords(rows))) == f.encode(kind(peers))


@given(
    st.lists(
        st.one_of(
            st.lists(
                st.builds(
                    peer,
                    st.integers(1, 10**6),
                    st.sampled_from([V4, V6]),
                    st.booleans(),
                    st.integers(0, 3),
                    st.sampled_from([0, 0, 7]),
                ),
                max_size=6,
            ).map(f.Deltas),
            st.sampled_from([f.Heartbeat(), f.Mark(3), f.Counts([(b"c" * 20, 1)])]),
        ),
        max_size=12,
    ),
    st.integers(1, 64),
)
def test_a_joined_run_of_deltas_holds_every_record_of_the_run_in_order(
    sent: list[f.Frame], chunk: int
) -> None:
    """``feed_joined`` against ``feed``: the same frames, any read sizes, but each run of
    Deltas of one record shape as one frame; the records and the other frames in order."""
    wire = b"".join(f.encode(fr) for fr in sent)

    def tokens(frames: list[f.Frame]) -> list[object]:
        out: list[object] = []
        for fr in frames:
            out.extend(fr.peers if isinstance(fr, f.Deltas) else [fr])
        return out

    plain, joined = f.FrameDecoder(), f.FrameDecoder()
    got: list[f.Frame] = []
    for at in range(0, len(wire), chunk):
        got.extend(joined.feed_joined(wire[at : at + chunk]))
    expected = plain.feed(wire)
    assert tokens(got) == tokens(expected)
    assert len(got) <= len(expected)
    # Read whole, a run is cut only where the kind or the shape of a frame's first
    # record changes (a frame of mixed shapes is walked, joined or not).
    whole = f.FrameDecoder().feed_joined(wire)
    assert tokens(whole) == tokens(expected)
    for a, b in itertools.pairwise(whole):
        if isinstance(a, f.Deltas) and isinstance(b, f.Deltas):
            assert a.peers and b.peers
            one, other = a.peers[0], b.peers[0]
            assert (len(one.endpoint), bool(one.key)) != (len(other.endpoint), bool(other.key))
