"""The sidecar's snapshot file: exact round trip, atomic writes, damage never crashes."""

from __future__ import annotations

import logging
import os
import struct
import zlib

import pytest

from wsgi_tracker.core.swarm import SwarmStore
from wsgi_tracker.core.types import EVENT_COMPLETED, EVENT_NONE, EVENT_STARTED, PeerChange
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync import snapshot
from wsgi_tracker.sync.snapshot import Snapshot, SnapshotError, decode, encode

NOW = 1_800_000_000.0
TTL = 3900


def ih(n: int) -> bytes:
    return n.to_bytes(20, "big")


def pid(n: int) -> bytes:
    return b"-XX0001-" + n.to_bytes(12, "big")


def v4(n: int) -> bytes:
    return bytes([10, 0, n >> 8 & 255, n & 255]) + (6881 + n % 1000).to_bytes(2, "big")


def v6(n: int) -> bytes:
    return b"\x20\x01\x0d\xb8" + bytes(10) + n.to_bytes(2, "big") + (51413).to_bytes(2, "big")


def make_store(clock: float = NOW) -> SwarmStore:
    return SwarmStore(peer_ttl=TTL, clock=lambda: clock)


def populated_store() -> SwarmStore:
    store = make_store()
    for t in range(5):
        for p in range(40):
            ep = v4(p) if p % 3 else v6(p)
            event = EVENT_COMPLETED if p % 7 == 0 else EVENT_STARTED
            store.apply(PeerChange(ih(t), pid(p), ep, p % 2 == 0, event, NOW - p * 60))
    store.set_downloaded(ih(99), 12345)  # a torrent that has a count and no live peers
    return store


def state(store: SwarmStore) -> tuple[dict, set]:
    counters = {h: s.downloaded for h, s in store.torrents.items() if s.downloaded}
    peers = {(p.info_hash, p.peer_id, p.endpoint, p.seeder, p.timestamp) for p in store.peers()}
    return counters, peers


def test_encode_decode_round_trip_keeps_every_field():
    snap = snapshot.capture(populated_store(), NOW)
    back = decode(encode(snap))
    assert back.saved_at == NOW
    assert back.downloaded == snap.downloaded
    assert sorted(back.peers, key=repr) == sorted(snap.peers, key=repr)
    assert {len(p.endpoint) for p in back.peers} == {6, 18}


def test_empty_snapshot_round_trips():
    assert decode(encode(Snapshot(NOW))) == Snapshot(NOW)


def test_every_truncation_is_reported_not_raised_otherwise():
    data = encode(snapshot.capture(populated_store(), NOW))
    for cut in range(len(data)):
        with pytest.raises(SnapshotError):
            decode(data[:cut])


def test_every_flipped_byte_is_detected():
    data = encode(snapshot.capture(populated_store(), NOW))
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 0x41
        with pytest.raises(SnapshotError):
            decode(bytes(damaged))


def test_other_version_and_foreign_files_are_refused_by_name():
    data = bytearray(encode(Snapshot(NOW)))
    data[4] = 99
    with pytest.raises(SnapshotError, match="version 99"):
        decode(bytes(data))
    with pytest.raises(SnapshotError, match="not a wsgi-tracker snapshot"):
        decode(b"\x80\x04\x95" + bytes(40))  # a pickle header, for instance


def test_lying_length_header_cannot_balloon_memory():
    body = encode(Snapshot(NOW, {ih(1): 5}))[snapshot.HEADER.size :]
    with pytest.raises(SnapshotError, match="inflate"):
        decode(framed(body, 2**40))


def framed(body: bytes, raw_length: int) -> bytes:
    """A header with a valid checksum around ``body``: damage the checksum cannot see."""
    fields = (b"WTSN", snapshot.VERSION, NOW, 0, len(body), raw_length)
    crc = zlib.crc32(body, zlib.crc32(snapshot.HEADER.pack(*fields, 0)))
    return snapshot.HEADER.pack(*fields, crc) + body


def peer_frame(timestamp: float) -> bytes:
    """A Snapshot frame of one IPv4 peer seen at ``timestamp`` (which encode would refuse)."""
    record = ih(1) + pid(1) + struct.pack(">dBB", timestamp, 0, 0) + v4(1)
    return struct.pack(">IB", len(record), f.KIND_SNAPSHOT) + record


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (f.encode(f.Deltas([PeerChange(ih(1), pid(1), v4(1), False, 0, NOW)])), "no place"),
        (f.encode(f.Hello(f.ROLE_HUB, 1)), "no place"),
        (struct.pack(">IB", 1, 99) + b"x", "unknown frame kind 99"),
        (struct.pack(">IB", 16, f.KIND_TOTALS), "stream ended inside a frame"),
        (struct.pack(">IB", 7, f.KIND_TOTALS) + bytes(7), "not a multiple"),
        *[(peer_frame(t), "is not a time") for t in (-1.0, float("nan"), float("inf"), 1e300)],
    ],
)
def test_well_checksummed_nonsense_is_refused_by_frame(raw, problem):
    with pytest.raises(SnapshotError, match=problem):
        decode(framed(zlib.compress(raw), len(raw)))


def test_the_body_is_sync_frames():
    """One codec for the socket and the disk: the inflated body decodes as sync frames."""
    data = encode(snapshot.capture(populated_store(), NOW))
    raw = zlib.decompress(data[snapshot.HEADER.size :])
    kinds = {type(frame) for frame in f.decode_all(raw)}
    assert kinds == {f.Totals, f.Snapshot}


def test_save_then_load_restores_counters_and_peers_exactly(tmp_path):
    store = populated_store()
    path = tmp_path / "swarms.snap"
    snapshot.save(store, path, now=NOW)
    fresh = make_store()
    report = snapshot.load(path, fresh, now=NOW)
    assert report is not None and report.expired == 0 and report.refused == 0
    assert state(fresh) == state(store)
    assert fresh.scrape(ih(99)) == (0, 12345, 0)
    for t in range(5):
        assert fresh.scrape(ih(t)) == store.scrape(ih(t))


def test_load_drops_peers_whose_ttl_ran_out_while_down(tmp_path):
    store = make_store()
    store.apply(PeerChange(ih(1), pid(1), v4(1), False, EVENT_STARTED, NOW - 3000))
    store.apply(PeerChange(ih(1), pid(2), v4(2), True, EVENT_COMPLETED, NOW - 100))
    path = tmp_path / "s.snap"
    snapshot.save(store, path, now=NOW)
    later = NOW + 1000  # peer 1 was last seen 4000 s ago (> TTL), peer 2 1100 s ago
    fresh = make_store(later)
    report = snapshot.load(path, fresh, now=later)
    assert report is not None and (report.peers, report.expired) == (1, 1)
    assert [p.peer_id for p in fresh.peers()] == [pid(2)]
    assert fresh.scrape(ih(1)) == (1, 1, 0)


def test_peer_seen_in_the_future_is_restored_as_seen_now(tmp_path):
    store = make_store()
    store.apply(PeerChange(ih(1), pid(1), v4(1), False, EVENT_NONE, NOW + 5000))
    path = tmp_path / "s.snap"
    snapshot.save(store, path, now=NOW)
    fresh = make_store()
    snapshot.load(path, fresh, now=NOW)
    assert [p.timestamp for p in fresh.peers()] == [NOW]


def test_restored_peers_expire_from_their_original_time(tmp_path):
    store = make_store()
    store.apply(PeerChange(ih(1), pid(1), v4(1), False, EVENT_NONE, NOW - 3000))
    path = tmp_path / "s.snap"
    snapshot.save(store, path, now=NOW)
    fresh = make_store()
    snapshot.load(path, fresh, now=NOW)
    (peer,) = fresh.peers()
    assert peer.timestamp == NOW - 3000


def test_load_respects_the_peer_limit_of_the_new_store(tmp_path):
    store = populated_store()
    path = tmp_path / "s.snap"
    snapshot.save(store, path, now=NOW)
    small = SwarmStore(peer_ttl=TTL, max_peers_per_torrent=10, clock=lambda: NOW)
    report = snapshot.load(path, small, now=NOW)
    assert report is not None and report.refused == 5 * 30
    assert all(len(s) == 10 for h, s in small.torrents.items() if h != ih(99))


def test_missing_file_starts_empty_quietly(tmp_path, caplog):
    store = make_store()
    with caplog.at_level(logging.INFO, logger="wsgi_tracker.sync.snapshot"):
        assert snapshot.load(tmp_path / "absent.snap", store, now=NOW) is None
    assert len(store) == 0
    assert [r.levelno for r in caplog.records] == [logging.INFO]


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"WTSN", b"WTSN\x01" + bytes(200)],
    ids=["empty", "garbage", "magic-only", "zeros"],
)
def test_damaged_file_is_kept_aside_with_an_error_and_the_start_is_empty(tmp_path, caplog, content):
    path = tmp_path / "s.snap"
    path.write_bytes(content)
    store = make_store()
    with caplog.at_level(logging.WARNING, logger="wsgi_tracker.sync.snapshot"):
        assert snapshot.load(path, store, now=NOW) is None
    assert len(store) == 0
    (record,) = caplog.records
    (aside,) = tmp_path.iterdir()
    assert aside.name.startswith("s.snap.damaged-") and aside.read_bytes() == content
    assert record.levelno == logging.ERROR
    assert str(path) in record.getMessage() and str(aside) in record.getMessage()


def test_a_second_damaged_file_does_not_overwrite_the_first(tmp_path):
    path = tmp_path / "s.snap"
    for content in (b"first", b"second"):
        path.write_bytes(content)
        snapshot.load(path, make_store(), now=NOW)
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == [b"first", b"second"]


def test_future_version_is_kept_aside(tmp_path, caplog):
    path = tmp_path / "s.snap"
    data = bytearray(encode(Snapshot(NOW, {ih(1): 5})))
    data[4] = snapshot.VERSION + 1
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="wsgi_tracker.sync.snapshot"):
        assert snapshot.load(path, make_store(), now=NOW) is None
    assert f"version {snapshot.VERSION + 1}" in caplog.records[0].getMessage()
    (aside,) = tmp_path.iterdir()
    assert aside.read_bytes() == bytes(data)


def test_unwritable_or_unreadable_paths_are_one_error_at_start(tmp_path):
    with pytest.raises(snapshot.SnapshotPathError, match="cannot write in"):
        snapshot.check_writable(tmp_path / "absent-dir" / "s.snap")
    with pytest.raises(snapshot.SnapshotPathError, match="is a directory"):
        snapshot.check_writable(tmp_path)
    unreadable = tmp_path / "dir.snap"
    unreadable.mkdir()
    with pytest.raises(snapshot.SnapshotPathError, match="cannot read"):
        snapshot.load(unreadable, make_store(), now=NOW)


def test_truncated_real_snapshot_is_kept_aside(tmp_path, caplog):
    path = tmp_path / "s.snap"
    snapshot.save(populated_store(), path, now=NOW)
    cut = path.read_bytes()[:-7]
    path.write_bytes(cut)
    store = make_store()
    with caplog.at_level(logging.WARNING, logger="wsgi_tracker.sync.snapshot"):
        assert snapshot.load(path, store, now=NOW) is None
    assert len(store) == 0
    assert "truncated" in caplog.records[0].getMessage()
    assert [p.read_bytes() for p in tmp_path.iterdir()] == [cut]


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "s.snap"
    snapshot.save(populated_store(), path, now=NOW)
    first = path.read_bytes()
    snapshot.save(make_store(), path, now=NOW + 1)
    assert path.read_bytes() != first
    assert os.listdir(tmp_path) == ["s.snap"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_failed_save_keeps_the_previous_snapshot(tmp_path):
    path = tmp_path / "s.snap"
    snapshot.save(populated_store(), path, now=NOW)
    before = path.read_bytes()
    bad = make_store()
    # An info_hash too long for its record: encoding fails before any file is touched.
    bad.apply(PeerChange(b"x" * 21, pid(1), v4(1), False, EVENT_STARTED, NOW))
    with pytest.raises(SnapshotError):
        snapshot.save(bad, path, now=NOW)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.snap"]


def test_taking_a_snapshot_does_not_change_which_torrent_is_evicted_next():
    now = [NOW]
    store = SwarmStore(peer_ttl=TTL, max_torrents=3, clock=lambda: now[0])
    for n in (1, 2, 3):
        store.apply(PeerChange(ih(n), pid(n), v4(n), False, EVENT_STARTED, NOW))
    now[0] += store.sweep_every  # a use refreshes a torrent at most once a sweep period
    store.get(ih(1))  # torrent 1 is in use again: torrent 2 is now the stalest
    snapshot.capture(store, now[0])  # reads every torrent, oldest first
    store.apply(PeerChange(ih(4), pid(4), v4(4), False, EVENT_STARTED, now[0]))
    assert sorted(store.torrents.keys()) == [ih(1), ih(3), ih(4)]


def _v1_file(saved_at: float, downloaded: dict[bytes, int], peers: list[PeerChange]) -> bytes:
    """A snapshot as the first release wrote it (format version 1), built by hand."""
    rows = [struct.pack(">I", len(downloaded))]
    rows += [struct.pack(">20sQ", ih, n) for ih, n in downloaded.items()]
    for width in (6, 18):
        family = [p for p in peers if len(p.endpoint) == width]
        rows.append(struct.pack(">I", len(family)))
        rows += [
            struct.pack(f">20s20sB{width}sd", p.info_hash, p.peer_id, p.seeder, p.endpoint,
                        p.timestamp)
            for p in family
        ]  # fmt: skip
    raw = b"".join(rows)
    body = zlib.compress(raw)
    header = struct.Struct(">4sBxxxdQQI")
    fields = (b"WTSN", 1, saved_at, len(body), len(raw))
    crc = zlib.crc32(body, zlib.crc32(header.pack(*fields, 0)))
    return header.pack(*fields, crc) + body


def test_an_upgrade_reads_the_first_release_snapshot_and_keeps_its_counts():
    peers = [
        PeerChange(
            b"a" * 20, b"p" * 20, bytes([127, 0, 0, 1, 0x1A, 0xE1]), True, EVENT_NONE, 900.5
        ),
        PeerChange(b"b" * 20, b"q" * 20, bytes(15) + b"\x01" + b"\x1a\xe2", False, EVENT_NONE, 901),
    ]
    old = _v1_file(1000.0, {b"a" * 20: 7, b"b" * 20: 3}, peers)
    got = decode(old)
    assert got.saved_at == 1000.0
    assert got.downloaded == {b"a" * 20: 7, b"b" * 20: 3}
    assert got.peers == peers
    for cut in (10, len(old) - 1):
        with pytest.raises(SnapshotError):
            decode(old[:cut])
