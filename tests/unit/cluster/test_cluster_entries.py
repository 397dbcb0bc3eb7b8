"""The cluster's Redis records, sans-IO: stream entries and the snapshot blob.

Round trips on generated changes, and any damage to a blob or entry is one
EntryError or FrameError (both ValueErrors), never another exception or a
partial state.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.cluster.entries import (
    RELAY_KINDS,
    ClusterSnapshot,
    EntryError,
    Keys,
    decode_entry,
    decode_snapshot,
    encode_batch,
    encode_snapshot,
    format_id,
    parse_id,
    split_frames,
)
from wsgi_tracker.core.types import PeerChange, WsChange
from wsgi_tracker.sync import frames as f

changes = st.builds(
    PeerChange,
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
    st.one_of(st.binary(min_size=6, max_size=6), st.binary(min_size=18, max_size=18)),
    st.booleans(),
    st.integers(0, 3),
    st.floats(0, f.MAX_TIMESTAMP - 1, allow_nan=False),
    key=st.integers(0, 2**32 - 1),
)
ws_changes = st.builds(
    WsChange,
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.integers(0, 3),
    st.floats(0, f.MAX_TIMESTAMP - 1, allow_nan=False),
)
counts = st.lists(st.tuples(st.binary(min_size=20, max_size=20), st.integers(1, 2**32 - 1)))
stream_ids = st.tuples(st.integers(0, 2**63), st.integers(0, 2**63))


@given(st.lists(changes), st.lists(changes), counts, st.lists(ws_changes))
def test_an_entry_carries_deltas_state_counts_and_ws_peers_through_the_sync_codec(
    deltas: list[PeerChange],
    state: list[PeerChange],
    increments: list[tuple[bytes, int]],
    ws: list[WsChange],
) -> None:
    fields = {
        b"n": b"node-a#1",
        b"t": b"1700000000.25",
        b"f": encode_batch(deltas, state, increments, ws),
    }
    entry = decode_entry(b"1700000000123-7", fields)
    assert (entry.id, entry.node, entry.sent_at) == ((1700000000123, 7), "node-a#1", 1700000000.25)
    got = [frame for _, frame in split_frames(entry.frames)]
    assert [p for fr in got if isinstance(fr, f.Deltas) for p in fr.peers] == deltas
    assert [p for fr in got if isinstance(fr, f.Snapshot) for p in fr.peers] == state
    assert [c for fr in got if isinstance(fr, f.Counts) for c in fr.counts] == increments
    assert [c for fr in got if isinstance(fr, f.WsPeers) for c in fr.changes] == ws


def test_an_entry_without_its_node_or_with_a_foreign_frame_is_refused() -> None:
    with pytest.raises(EntryError, match="lacks field b'n'"):
        decode_entry(b"1-0", {b"t": b"1", b"f": b""})
    with pytest.raises(EntryError, match="malformed"):
        decode_entry(b"1-0", {b"n": b"x", b"t": b"soon", b"f": b""})
    with pytest.raises(f.FrameError, match="does not belong"):
        split_frames(f.encode(f.Hello(f.ROLE_HUB, 1)))
    with pytest.raises(f.FrameError, match="stream ended inside a frame"):
        split_frames(encode_batch([], [], [(b"x" * 20, 1)])[:-1])
    relay = f.encode(f.WsRelay(7, b"i" * 20, b"p" * 20, '{"action":"announce"}'))
    with pytest.raises(f.FrameError, match="does not belong"):
        split_frames(relay)  # a relay is for one node's inbox, not the changes stream
    with pytest.raises(f.FrameError, match="does not belong"):
        split_frames(encode_batch([], [], [(b"x" * 20, 1)]), RELAY_KINDS)
    assert [fr for _, fr in split_frames(relay, RELAY_KINDS)] == [f.decode_all(relay)[0]]


@given(st.binary(max_size=200))
def test_entry_frames_of_any_bytes_parse_or_raise_one_error(body: bytes) -> None:
    try:
        got = split_frames(body)
    except f.FrameError:
        return
    assert all(isinstance(frame, f.Deltas | f.Snapshot | f.Counts | f.WsPeers) for _, frame in got)
    assert b"".join(raw.wire for raw, _ in got) == body


@given(stream_ids)
def test_stream_ids_round_trip_and_order_as_numbers(sid: tuple[int, int]) -> None:
    assert parse_id(format_id(sid)) == sid
    assert parse_id(b"10-0") > parse_id(b"9-5")


@given(st.lists(changes, max_size=50), stream_ids, st.text(max_size=30))
def test_the_snapshot_round_trips(peers: list[PeerChange], sid: tuple[int, int], node: str) -> None:
    snap = ClusterSnapshot(sid, 1700000000.5, node, peers)
    got = decode_snapshot(encode_snapshot(snap))
    assert (got.position, got.saved_at, got.peers) == (sid, 1700000000.5, peers)


@given(st.lists(changes, min_size=1, max_size=5), st.data())
def test_a_damaged_snapshot_is_one_error_never_a_partial_state(
    peers: list[PeerChange], data: st.DataObject
) -> None:
    blob = bytearray(encode_snapshot(ClusterSnapshot((5, 1), 1.0, "n", peers)))
    at = data.draw(st.integers(0, len(blob) - 1))
    how = data.draw(st.sampled_from(["flip", "cut"]))
    if how == "flip":
        blob[at] ^= data.draw(st.integers(1, 255))
    else:
        del blob[at:]
    try:
        got = decode_snapshot(bytes(blob))
    except EntryError:
        return
    # A flip the format cannot see (saved_at, the node's name) leaves the peers whole.
    assert got.peers == peers


def test_a_snapshot_claiming_more_than_the_reader_may_hold_is_refused_unread() -> None:
    """A few MB of zlib can claim gigabytes of repeated records: past what ``max_peers``
    peers take, the reader refuses before inflating anything."""
    ep = bytes([10, 0, 0, 1, 0x1A, 0xE1])
    peers = [PeerChange(b"%020d" % i, b"%020d" % i, ep, False, 0, 1.0) for i in range(20_000)]
    blob = encode_snapshot(ClusterSnapshot((5, 1), 1.0, "n", peers))
    assert len(decode_snapshot(blob, max_peers=20_000).peers) == 20_000
    with pytest.raises(EntryError, match=r"claims \d+ bytes inflated, past 1048576"):
        decode_snapshot(blob, max_peers=10)


def test_keys_share_one_hash_tag_so_redis_cluster_keeps_them_in_one_slot() -> None:
    keys = Keys("site")
    names = [keys.stream, keys.downloaded, keys.snapshot, keys.stats, keys.sequence("n#1")]
    assert all(k.startswith(b"{site}:") for k in names)
    assert len(set(names)) == len(names)
