"""SwarmStore.load_state (a joining replica's bulk load) and set_totals: the same store as
merge_many(state=True) and set_downloaded one by one, whatever the snapshot and the store
it lands in (held torrents, stashed changes, remembered stops, every bound, expiry)."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ManualClock
from tests.unit.core.test_lazy_apply import view, wire_records
from tests.unit.core.test_swarm import MERGE_ENDPOINTS, pid, v4
from wsgi_tracker.core.swarm import OnePeer, PeerRefused, SwarmStore
from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STARTED,
    EVENT_STOPPED,
    PeerChange,
)
from wsgi_tracker.sync import frames
from wsgi_tracker.sync.replica import stash

TORRENTS = [b"%020d" % t for t in range(8)]

record = st.tuples(
    st.integers(0, len(TORRENTS) - 1),
    st.integers(0, 4),  # peer
    st.sampled_from(MERGE_ENDPOINTS),
    st.booleans(),  # seeder
    # A snapshot's records carry no event, but a re-sent replica's rows pass here too.
    st.sampled_from([EVENT_NONE, EVENT_NONE, EVENT_NONE, EVENT_COMPLETED, EVENT_STOPPED]),
    st.sampled_from([-5.0, -1.0, 0.0, 0.0, 0.25, 1.0, -200.0]),  # against the clock
    st.sampled_from([0, 0, 7, 9]),  # key
)
torrent = st.integers(0, len(TORRENTS) - 1)
steps = st.lists(
    st.one_of(
        # A snapshot as a hub's walk sends it: torrent by torrent (sorted), or in any order.
        st.tuples(st.just("snapshot"), st.lists(record, max_size=12), st.booleans()),
        st.tuples(st.just("deltas"), st.lists(record, max_size=6), st.booleans()),
        st.tuples(st.just("local"), st.lists(record, max_size=2), st.booleans()),
        st.tuples(st.just("totals"), st.lists(torrent, max_size=6), st.booleans()),
        st.tuples(st.just("count"), torrent, st.booleans()),
        st.tuples(st.just("expire"), st.none(), st.booleans()),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 7.0, 61.0, 200.0]), st.booleans()),
    ),
    max_size=12,
)


def state(store: SwarmStore) -> tuple:
    """Everything a reader or a later change can tell: the torrents in their eviction
    order with their stamps and their lists' kinds and next sweeps, each one's peers
    and counts, the peers held, and which torrent goes next."""
    oldest = store._oldest()
    return (
        [
            (ih, swarm.touched, [(type(pl), pl.sweep_at) for pl in swarm.lists()])
            for ih, swarm in store._held.items()
        ],
        [view(store, ih) for ih in TORRENTS],
        store.peers_held,
        None if oldest is None else oldest[0],
        sorted(store.pending.by_torrent),
    )


def changes(arg: list, now: float) -> list[PeerChange]:
    return [
        PeerChange(TORRENTS[t], pid(p), ep, seeder, event, now + dt, key)
        for t, p, ep, seeder, event, dt, key in arg
    ]


def run(script: list, **bounds: int) -> None:
    clock = ManualClock()
    merged, loaded = (SwarmStore(peer_ttl=100, sweep_every=60, clock=clock, **bounds) for _ in "ml")
    both = (merged, loaded)
    for what, arg, flag in script:
        now = clock()
        if what == "snapshot":
            batch = changes(sorted(arg) if flag else arg, now)
            rows = frames.peer_rows(batch)
            assert loaded.load_state(rows) == merged.merge_many(rows, state=True)
        elif what == "deltas":
            batch = changes(arg, now)
            for store in both:
                if flag and batch:  # stashed: a lazy replica's torrents wait to be folded
                    stash(store, wire_records(batch), 0, len(batch))
                else:
                    store.merge_many(frames.peer_rows(batch))
        elif what == "local":
            for c in changes(arg, now):
                for store in both:
                    with contextlib.suppress(PeerRefused):
                        store.apply(c, count_download=flag)
        elif what == "totals":
            totals = [(TORRENTS[t], 3 + t) for t in arg]
            loaded.set_totals(totals)
            for ih, n in totals:
                merged.set_downloaded(ih, n)
        elif what == "count":
            for store in both:
                store.add_downloaded(TORRENTS[arg], 2)
        elif what == "advance":
            clock.advance(arg)
        else:
            for store in both:
                store.expire()
        assert state(loaded) == state(merged)


@settings(max_examples=500, deadline=None)
@given(steps)
def test_a_bulk_loaded_store_equals_a_merged_one(script):
    """Default bounds: most snapshot rows take the bulk path."""
    run(script)


@settings(max_examples=500, deadline=None)
@given(steps)
def test_a_bulk_loaded_store_equals_a_merged_one_at_every_bound(script):
    """Bounds small enough that snapshots evict torrents and refuse peers midway."""
    run(
        script,
        max_torrents=4,
        max_peers=6,
        max_peers_per_torrent=3,
        max_peers_per_address=2,
        max_peers_per_host=3,
    )


def test_a_joining_replica_gets_one_peer_torrents_in_one_step():
    """What a 1M join is made of: each torrent the store lacks becomes a OnePeer at once,
    in the snapshot's order, and its total lands on it."""
    clock = ManualClock()
    store = SwarmStore(peer_ttl=100, sweep_every=60, clock=clock)
    batch = [
        PeerChange(ih, pid(1), v4(1), n % 2 == 0, EVENT_STARTED, clock())
        for n, ih in enumerate(TORRENTS)
    ]
    assert store.load_state(frames.peer_rows(batch)) == len(TORRENTS)
    store.set_totals([(ih, 5) for ih in TORRENTS])
    assert list(store._held) == TORRENTS
    assert all(type(store._held[ih].v4) is OnePeer for ih in TORRENTS)
    assert [store.scrape(ih) for ih in TORRENTS[:2]] == [(1, 5, 0), (0, 5, 1)]
    assert store.peers_held == len(TORRENTS)
