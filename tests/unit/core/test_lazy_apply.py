"""Lazy application (SwarmStore.stash): a replica that stashes remote changes and folds
each torrent's in when it is read answers every read as one that applies them at once."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ManualClock
from tests.unit.core.test_swarm import MERGE_ENDPOINTS, pid, v4
from wsgi_tracker.core import pending
from wsgi_tracker.core.pending import HARD_PER_TORRENT, MAX_PER_TORRENT
from wsgi_tracker.core.swarm import PENDING_SKEW, PeerRefused, SwarmStore
from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STARTED,
    EVENT_STOPPED,
    PeerChange,
)
from wsgi_tracker.sync import frames
from wsgi_tracker.sync.replica import stash

TORRENTS = [b"%020d" % t for t in range(3)]

change = st.tuples(
    st.integers(0, len(TORRENTS) - 1),
    st.integers(0, 4),  # peer
    st.sampled_from(MERGE_ENDPOINTS),
    st.booleans(),  # seeder
    st.sampled_from([EVENT_NONE, EVENT_NONE, EVENT_COMPLETED, EVENT_STARTED, EVENT_STOPPED]),
    st.sampled_from([-5.0, -1.0, 0.0, 0.0, 0.25, 1.0]),  # timestamp against the clock
    st.sampled_from([0, 0, 7, 9]),  # key
)
torrent = st.integers(0, len(TORRENTS) - 1)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("deltas"), st.lists(change, max_size=10)),
        st.tuples(st.just("snapshot"), st.lists(change, max_size=4)),
        st.tuples(st.just("local"), st.lists(change, max_size=2)),
        st.tuples(st.just("count"), torrent),
        st.tuples(st.just("total"), torrent),
        st.tuples(st.just("read"), torrent),
        st.tuples(st.just("use"), torrent),
        st.tuples(st.just("walk"), st.none()),
        st.tuples(st.just("expire"), st.none()),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 7.0, 30.0, 61.0, 200.0, 900.0])),
    ),
    max_size=30,
)


def view(store: SwarmStore, ih: bytes) -> tuple | None:
    """What a read shows of a torrent: its counts and every peer (as a reply samples them)."""
    swarm = store.peek(ih)
    if swarm is None:
        return None
    lists = []
    for pl in swarm.lists():
        w = pl.width
        peers = []
        for i, peer in enumerate(pl.ids):
            endpoint = bytes(pl.addrs[i * w : i * w + w])
            peers.append((peer, endpoint, i < pl.seeders, pl.expires[i], pl.keys[i]))
        lists.append(sorted(peers))
    return swarm.complete, swarm.incomplete, swarm.downloaded, lists


def wire_records(batch: list[PeerChange]) -> frames.PeerRecords:
    """The records as a client decodes them off the wire."""
    (frame,) = frames.decode_all(frames.encode(frames.Deltas(batch)))
    assert isinstance(frame, frames.Deltas) and isinstance(frame.peers, frames.PeerRecords)
    return frame.peers


def run(script: list, **bounds: int) -> tuple[SwarmStore, SwarmStore]:
    clock = ManualClock()
    eager, lazy = (SwarmStore(peer_ttl=100, sweep_every=60, clock=clock, **bounds) for _ in "el")
    both = (eager, lazy)
    for what, arg in script:
        now = clock()
        if what == "advance":
            clock.advance(arg)
        elif what in ("deltas", "snapshot", "local"):
            batch = [
                PeerChange(TORRENTS[t], pid(p), ep, seeder, event, now + dt, key)
                for t, p, ep, seeder, event, dt, key in arg
            ]
            if what == "deltas":
                eager.merge_many(frames.peer_rows(batch))
                if batch:
                    stash(lazy, wire_records(batch), 0, len(batch))
            elif what == "snapshot":
                for store in both:
                    store.merge_many(frames.peer_rows(batch), state=True)
            else:
                for c in batch:
                    outcomes = []
                    for store in both:
                        try:
                            swarm, _slot, counted = store.apply(c)
                            outcomes.append((counted, store.refreshed, swarm is None))
                        except PeerRefused as exc:
                            outcomes.append((type(exc),))
                    assert outcomes[0] == outcomes[1]
        elif what == "count":
            for store in both:
                store.add_downloaded(TORRENTS[arg], 2)
        elif what == "total":
            for store in both:
                store.set_downloaded(TORRENTS[arg], 5)
        elif what == "read":
            ih = TORRENTS[arg]
            assert view(lazy, ih) == view(eager, ih)
            assert lazy.scrape(ih) == eager.scrape(ih)
        elif what == "use":
            assert (eager.get(TORRENTS[arg]) is None) == (lazy.get(TORRENTS[arg]) is None)
        elif what == "walk":
            assert lazy.totals() == eager.totals()
            assert sorted(lazy.peers()) == sorted(eager.peers())
        else:
            for store in both:
                store.expire()
    for ih in TORRENTS:
        assert view(lazy, ih) == view(eager, ih)
    return eager, lazy


@settings(max_examples=400, deadline=None)
@given(steps)
def test_a_lazy_replica_answers_every_read_as_an_eager_one(script):
    """Any mix of remote deltas (stashed by one store, applied at once by the other),
    snapshots, local announces, counters, reads, walks and clock moves: every read of
    peers, counts and scrape is the same, with per-torrent bounds small enough to refuse."""
    run(script, max_peers_per_torrent=3, max_peers_per_address=2)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_a_lazy_replica_answers_as_an_eager_one_at_the_per_host_bound(script):
    """The same with ``max_peers_per_host`` small enough to refuse: which newcomer of a
    host at its bound is refused would depend on the order of folds, so near it the
    lazy store applies at once (``host_peak``)."""
    run(script, max_peers_per_torrent=3, max_peers_per_address=2, max_peers_per_host=3)


def test_reads_fold_a_torrents_changes_as_of_the_second_they_arrived():
    clock = ManualClock()
    store = SwarmStore(peer_ttl=100, sweep_every=60, clock=clock)
    ih = TORRENTS[0]
    first = PeerChange(ih, pid(1), v4(1), False, EVENT_NONE, clock())
    stash(store, wire_records([first]), 0, 1)
    assert store.pending.records == 1 and not store._held  # nothing applied yet
    clock.advance(30.0)
    swarm = store.peek(ih)
    assert swarm is not None and swarm.v4 is not None
    assert swarm.v4.expires == (first.timestamp + 100,)
    assert swarm.touched == int(first.timestamp)  # placed as of its arrival, not the read
    assert store.pending.records == 0


def test_stashed_changes_nobody_reads_expire_unapplied():
    clock = ManualClock()
    store = SwarmStore(peer_ttl=100, sweep_every=60, clock=clock)
    batch = [PeerChange(ih, pid(1), v4(1), False, EVENT_NONE, clock()) for ih in TORRENTS]
    stash(store, wire_records(batch), 0, len(batch))
    assert store.pending.records == 3
    clock.advance(store.torrent_ttl + PENDING_SKEW)
    other = b"%020d" % 99
    stash(store, wire_records([PeerChange(other, pid(2), v4(2), False, 0, clock())]), 0, 1)
    # The first three went without being applied; the new one waits for its read.
    assert store.pending.records == 1 and store.peers_held == 0
    assert all(store.peek(ih) is None for ih in TORRENTS)
    assert store.peek(other).v4.ids == [pid(2)]


def test_a_torrent_still_receiving_keeps_its_old_changes_to_fold_in_order():
    clock = ManualClock()
    store = SwarmStore(peer_ttl=100, sweep_every=60, clock=clock)
    ih = TORRENTS[0]
    stash(store, wire_records([PeerChange(ih, pid(1), v4(1), False, 0, clock())]), 0, 1)
    clock.advance(store.torrent_ttl + PENDING_SKEW)
    stop = PeerChange(ih, pid(1), v4(1), False, EVENT_STOPPED, clock())
    stash(store, wire_records([stop]), 0, 1)
    assert store.pending.records == 2
    assert store.peek(ih) is None  # the peer came and stopped (and had expired anyway)


def test_past_max_pending_the_oldest_torrents_are_folded_in_slices():
    clock = ManualClock()
    store = SwarmStore(peer_ttl=100, sweep_every=60, clock=clock, max_pending=10)
    for n in range(30):
        ih = b"%020d" % n
        stash(store, wire_records([PeerChange(ih, pid(n), v4(n), False, 0, clock())]), 0, 1)
        assert store.pending.records <= 10
    assert store.peers_held + store.pending.records == 30
    assert len(store.torrents) == 30 and store.pending.records == 0


def test_an_even_flood_past_max_pending_is_folded_a_slice_per_batch():
    """Every torrent has records in the oldest batch, so freeing it folds nearly all:
    spread over the batches that follow (about twice each one's records), within twice
    the bound, not in the one batch that crossed it."""
    clock = ManualClock()
    bound = 2000
    store = SwarmStore(peer_ttl=100, sweep_every=60, clock=clock, max_pending=bound)
    hashes = [b"%020d" % t for t in range(100)]
    most = 0
    for round_ in range(60):
        before = store.pending.records
        stash_each(store, hashes, 1, first=round_)
        most = max(most, before + len(hashes) - store.pending.records)
        assert store.pending.retained <= 2 * bound
    assert store.pending.records < bound  # the old batches went
    assert most <= 2 * len(hashes) + MAX_PER_TORRENT  # a torrent may run past the budget
    assert store.peers_held + store.pending.records == 60 * len(hashes)


def test_near_a_global_bound_changes_are_applied_at_once():
    clock = ManualClock()
    store = SwarmStore(peer_ttl=100, sweep_every=60, clock=clock, max_torrents=3)
    batch = [PeerChange(ih, pid(1), v4(1), False, 0, clock()) for ih in TORRENTS]
    stash(store, wire_records(batch[:1]), 0, 1)
    assert store.pending.records == 1
    stash(store, wire_records(batch[1:]), 0, 2)  # 1 pending + 2 reach max_torrents: at once
    assert store.pending.records == 0 and store.peers_held == 3


@settings(max_examples=100, deadline=None)
@given(steps)
def test_near_the_global_bounds_the_lazy_replica_goes_eager_and_keeps_the_rules(script):
    """With max_torrents and max_peers within reach, nothing may be refused or evicted
    by when a change was applied: the lazy store applies everything at once there, and
    every bound still holds."""
    eager, lazy = run_bounded(script)
    for store in (eager, lazy):
        assert len(store._held) <= 2
        assert store.peers_held <= 4


def run_bounded(script: list) -> tuple[SwarmStore, SwarmStore]:
    """``run`` without comparing (which newcomer a full replica refuses depends on order)."""
    clock = ManualClock()
    stores = [
        SwarmStore(peer_ttl=100, sweep_every=60, clock=clock, max_torrents=2, max_peers=4)
        for _ in "el"
    ]
    eager, lazy = stores
    for what, arg in script:
        now = clock()
        if what == "advance":
            clock.advance(arg)
        elif what in ("deltas", "local") and arg:
            batch = [
                PeerChange(TORRENTS[t], pid(p), ep, seeder, event, now + dt, key)
                for t, p, ep, seeder, event, dt, key in arg
            ]
            if what == "deltas":
                eager.merge_many(frames.peer_rows(batch))
                stash(lazy, wire_records(batch), 0, len(batch))
            else:
                for store in stores:
                    for c in batch:
                        with contextlib.suppress(PeerRefused):
                            store.apply(c)
        elif what == "read":
            for store in stores:
                store.peek(TORRENTS[arg])
    return eager, lazy


def stash_each(store: SwarmStore, hashes: list[bytes], per: int, first: int = 0) -> None:
    """``per`` records of new peers for each torrent, in one batch (one frame's worth)."""
    now = store.clock()
    batch = [
        PeerChange(ih, pid(first + n), v4(first + n), False, 0, now)
        for ih in hashes
        for n in range(per)
    ]
    stash(store, wire_records(batch), 0, len(batch))


def test_a_torrent_that_reaches_max_per_torrent_stashed_is_folded_with_the_next_batch():
    """So the read that folds a torrent seldom pays for more than that many."""
    clock = ManualClock()
    store = SwarmStore(peer_ttl=100, sweep_every=60, clock=clock, max_peers_per_address=10**6)
    ih = TORRENTS[0]
    stash_each(store, [ih], MAX_PER_TORRENT - 1)
    assert store.pending.records == MAX_PER_TORRENT - 1 and store.peers_held == 0
    stash_each(store, [ih], 1, first=MAX_PER_TORRENT - 1)
    assert store.pending.records == 0 and store.peers_held == MAX_PER_TORRENT
    assert len(store.peek(ih).v4.ids) == MAX_PER_TORRENT


def test_torrents_that_come_due_together_are_folded_a_few_per_batch_oldest_first():
    """An even flood brings every stash to the limit at once: folding them all in the
    batch that tipped them would hold up every request behind it."""
    clock = ManualClock()
    store = SwarmStore(peer_ttl=100, sweep_every=60, clock=clock, max_peers_per_address=10**6)
    hashes = [b"%020d" % t for t in range(20)]
    for ih in hashes:
        stash_each(store, [ih], MAX_PER_TORRENT - 1)
    stash_each(store, hashes, 1, first=MAX_PER_TORRENT)  # all 20 due; room for one fold
    assert hashes[0] not in store.pending and all(ih in store.pending for ih in hashes[1:])
    # 256 more for the last one: it reaches the hard limit and is folded at once, ahead of
    # the queue, which this batch's budget (twice its records) then takes two more from.
    stash_each(store, hashes[-1:], HARD_PER_TORRENT - MAX_PER_TORRENT, first=1000)
    assert [ih in store.pending for ih in hashes] == [False] * 3 + [True] * 16 + [False]
    assert store.pending.records == 16 * MAX_PER_TORRENT
    while store.pending.due:  # a record apiece for a torrent nobody holds
        stash_each(store, [b"x" * 20], 1, first=store.peers_held)
    assert store.pending.by_torrent.keys() == {b"x" * 20}
    assert all(len(store.peek(ih).v4.ids) == MAX_PER_TORRENT for ih in hashes[:-1])
    assert len(store.peek(hashes[-1]).v4.ids) == HARD_PER_TORRENT


@pytest.mark.parametrize("compact_after", [2, pending._COMPACT_AFTER])
@pytest.mark.parametrize("bound", [10**9, 40])
@pytest.mark.parametrize("seed", range(8))
def test_long_runs_of_batches_fold_expire_and_let_go_as_an_eager_replica_would(
    seed, bound, compact_after, monkeypatch
):
    """Hundreds of batches, so a torrent's records chain through many of them, the
    store lets go of the dead ones at the front (and cuts its lists, after as few as
    two), and some expire unread while others still receive; with a small
    ``max_pending`` the oldest fold."""
    monkeypatch.setattr(pending, "_COMPACT_AFTER", compact_after)
    rnd = random.Random(seed)
    script: list = []
    for _ in range(600):
        roll = rnd.random()
        if roll < 0.7:
            batch = [
                (rnd.randrange(3), rnd.randrange(5), MERGE_ENDPOINTS[0], rnd.random() < 0.3,
                 rnd.choice([EVENT_NONE, EVENT_NONE, EVENT_STOPPED]), 0.0, 0)
                for _ in range(rnd.randrange(1, 6))
            ]  # fmt: skip
            script.append(("deltas", batch))
        elif roll < 0.8:
            script.append(("read", rnd.randrange(3)))
        elif roll < 0.97:
            script.append(("advance", rnd.choice([1.0, 7.0, 61.0])))
        else:
            script.append(("advance", 2000.0))  # past every TTL: stashes expire unread
    _, lazy = run(script, max_pending=bound)
    assert lazy.pending.retained <= 2 * bound
