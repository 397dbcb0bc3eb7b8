"""What the hub holds back as a refresh: the core's report against the definition.

The hub sorts a change as it lands, from what the store says it did
(``SwarmStore.refreshed`` for its own announces, ``merge_many``'s
``refreshes`` for a client's), rather than looking the peer up again first.
``sync.hub.is_refresh`` is the definition, read off the store before the
change; these check the report against it on random sequences, with bounds
small enough to refuse, move, expire and evict.
"""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ManualClock
from wsgi_tracker.core.swarm import PeerRefused, SwarmStore
from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STARTED,
    EVENT_STOPPED,
    PeerChange,
)
from wsgi_tracker.sync.frames import peer_rows
from wsgi_tracker.sync.hub import is_refresh, refresh_ahead

WINDOW = 1.0
ENDPOINTS = [
    bytes([127, 0, 0, 1, 0x1A, 0xE1]),
    bytes([127, 0, 0, 1, 0x1B, 0x58]),  # the same address, another port
    bytes([127, 0, 0, 2, 0x1A, 0xE1]),
    bytes([0x20, 0x01, 0x0D, 0xB8] + [0] * 11 + [1, 0x1A, 0xE1]),
]
change_fields = st.tuples(
    st.integers(0, 1),  # torrent
    st.integers(0, 2),  # peer
    st.sampled_from(ENDPOINTS),
    st.booleans(),  # seeder
    st.sampled_from([EVENT_NONE] * 3 + [EVENT_COMPLETED, EVENT_STARTED, EVENT_STOPPED]),
    st.sampled_from([-5.0, -1.0, 0.0, 0.0, 0.25, 1.0]),  # timestamp against the clock
    st.sampled_from([0, 0, 7, 9]),  # key
    st.booleans(),  # made here (apply) or by another process (merge_many)
)
step = st.one_of(
    st.tuples(st.just("change"), change_fields),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 7.0, 61.0, 97.5, 200.0])),
    st.tuples(st.just("expire"), st.none()),
)


def small_store() -> SwarmStore:
    return SwarmStore(
        peer_ttl=100,
        max_torrents=2,
        max_peers_per_torrent=3,
        max_peers_per_address=2,
        max_peers=5,
        sweep_every=60,
        clock=ManualClock(),
    )


@settings(max_examples=400)
@given(st.lists(step, max_size=60))
def test_the_store_reports_a_refresh_exactly_when_is_refresh_says_so(steps):
    """A local announce (``apply``) is a refresh by the report exactly when it is by the
    definition; a merged one (``merge_many``) only ever when it is (its general path,
    taken once a sweep period, reports none: those ship at once, which is safe)."""
    store = small_store()
    ahead = refresh_ahead(WINDOW)
    for what, arg in steps:
        if what == "advance":
            store.clock.advance(arg)
            continue
        if what == "expire":
            store.expire()
            continue
        t, p, ep, seeder, event, dt, key, local = arg
        change = PeerChange(
            b"%020d" % t, b"-PEER-%014d" % p, ep, seeder, event, store.clock() + dt, key
        )
        expected = is_refresh(store, change, WINDOW)
        if local:
            with contextlib.suppress(PeerRefused):
                store.apply(change)
                assert (store.refreshed > change.timestamp + ahead) == expected
            continue
        news: list = []
        quiet: list = []
        store.merge_many(peer_rows([change]), news=news, refreshes=quiet, ahead=ahead)
        assert not (news and quiet)
        if quiet:
            assert expected, change


def test_a_refresh_is_reported_and_anything_else_is_not():
    store = small_store()
    now = store.clock()
    first = PeerChange(b"t" * 20, b"p" * 20, ENDPOINTS[0], False, EVENT_STARTED, now, 7)
    store.apply(first)
    assert store.refreshed == 0.0  # a new peer
    again = first._replace(event=EVENT_NONE, timestamp=now + 1)
    store.apply(again)
    assert store.refreshed == now + 100  # its expiry before: only that moved
    store.apply(again._replace(seeder=True, timestamp=now + 2))
    assert store.refreshed == 0.0  # a seeder flip shows in every reply
    other = PeerChange(b"t" * 20, b"q" * 20, ENDPOINTS[2], False, EVENT_NONE, now + 2)
    store.apply(other)  # a second peer: the torrent's peers are a PeerList now
    store.apply(other._replace(timestamp=now + 3))
    assert store.refreshed == now + 102
    store.apply(other._replace(timestamp=now + 4, key=9))
    assert store.refreshed == 0.0  # a key learnt: the identity rule changed
    store.apply(other._replace(timestamp=now + 4.5, key=7))
    assert store.refreshed == 0.0  # another key than it holds: is_refresh's rule
    assert not is_refresh(store, other._replace(timestamp=now + 4.6, key=7), WINDOW)
    store.apply(other._replace(event=EVENT_STOPPED, timestamp=now + 5, key=9))
    assert store.refreshed == 0.0
