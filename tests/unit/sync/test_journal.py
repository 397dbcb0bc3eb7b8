"""The counter journal and the forked save: increments survive, the journal stays bounded."""

from __future__ import annotations

import gevent
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.core.swarm import SwarmStore
from wsgi_tracker.core.types import EVENT_COMPLETED, PeerChange
from wsgi_tracker.sync import journal as j
from wsgi_tracker.sync import snapshot

NOW = 1_800_000_000.0


def ih(n: int) -> bytes:
    return n.to_bytes(20, "big")


def journal_bytes(*batches: list[tuple[bytes, int]]) -> bytes:
    return j.HEADER.pack(j.MAGIC, j.VERSION) + b"".join(j.record(b) for b in batches)


def test_records_round_trip_in_order():
    data = journal_bytes([(ih(1), 1)], [(ih(2), 3), (ih(1), 2)])
    assert j.parse(data) == ([(ih(1), 1), (ih(2), 3), (ih(1), 2)], None)


def test_a_torn_last_record_keeps_every_whole_one_before_it():
    data = journal_bytes([(ih(1), 1)], [(ih(2), 5)])
    whole = len(journal_bytes([(ih(1), 1)]))
    for cut in range(whole, len(data)):
        counts, problem = j.parse(data[:cut])
        assert counts == [(ih(1), 1)]
        assert cut == whole or "torn record" in problem


def test_a_flipped_byte_stops_the_replay_at_its_record():
    data = bytearray(journal_bytes([(ih(1), 1)], [(ih(2), 5)]))
    data[-3] ^= 0x10
    counts, problem = j.parse(bytes(data))
    assert counts == [(ih(1), 1)] and "checksum" in problem


def test_foreign_and_future_files_are_named_not_read():
    assert j.parse(b"\x80\x04garbage")[1].startswith("not a wsgi-tracker journal")
    assert "version 9" in j.parse(j.HEADER.pack(j.MAGIC, 9))[1]


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_named(data):
    counts, problem = j.parse(j.HEADER.pack(j.MAGIC, j.VERSION) + data)
    assert all(len(h) == 20 and n >= 0 for h, n in counts)
    assert problem is None or isinstance(problem, str)


def test_replay_applies_the_generations_a_snapshot_lacks_and_deletes_older(tmp_path):
    path = tmp_path / "s.snap"
    journal = j.Journal(path)
    for generation, n in ((3, 1), (4, 10), (5, 100)):
        journal.open(generation)
        journal.append([(ih(1), n)])
    journal.close()
    store = SwarmStore()
    assert journal.replay(4, store.add_downloaded) == 110
    assert store.scrape(ih(1))[1] == 110
    assert [g for g, _ in journal.files()] == [4, 5]
    assert journal.next_generation() == 6


def test_listener_journals_only_counted_completions(tmp_path):
    journal = j.Journal(tmp_path / "s.snap")
    journal.open(0)
    change = PeerChange(ih(7), b"p" * 20, bytes(6), True, EVENT_COMPLETED, NOW)
    journal.listener(change, True)
    journal.listener(change, False)
    journal.close()
    ((_, path),) = journal.files()
    assert path.read_bytes() == j.HEADER.pack(j.MAGIC, j.VERSION) + j.record([(ih(7), 1)])


def test_forked_save_folds_the_journal_in_and_the_parent_keeps_serving(tmp_path):
    path = tmp_path / "s.snap"
    store = SwarmStore()
    journal = snapshot.open_store_files(str(path), store)
    for n in range(50):
        store.add_downloaded(ih(n), n + 1)
        journal.append([(ih(n), n + 1)])
    saver = snapshot.Saver(store, path, 3600, journal)
    assert gevent.spawn(saver.save_in_background).get(timeout=60)
    saved = snapshot.decode(path.read_bytes())
    assert saved.downloaded == {ih(n): n + 1 for n in range(50)}
    assert [g for g, _ in journal.files()] == [saved.generation]  # the older one is folded
    # After the fork: journaled, not in that snapshot, and replayed on the next start.
    store.add_downloaded(ih(0), 1000)
    journal.append([(ih(0), 1000)])
    journal.close()
    again = SwarmStore()
    snapshot.open_store_files(str(path), again)
    assert again.scrape(ih(0))[1] == 1001
    assert again.scrape(ih(49))[1] == 50


def test_final_save_leaves_one_snapshot_and_an_empty_journal(tmp_path):
    path = tmp_path / "s.snap"
    store = SwarmStore()
    journal = snapshot.open_store_files(str(path), store)
    store.add_downloaded(ih(1), 4)
    journal.append([(ih(1), 4)])
    assert snapshot.Saver(store, path, 3600, journal).stop()
    assert snapshot.decode(path.read_bytes()).downloaded == {ih(1): 4}
    ((generation, only),) = journal.files()
    assert generation == snapshot.decode(path.read_bytes()).generation
    assert j.parse(only.read_bytes()) == ([], None)
