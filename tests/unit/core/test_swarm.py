"""SwarmStore: expiry, events, counters, sampling and bounds, on a hand-driven clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.core import swarm as swarm_module
from wsgi_tracker.core.swarm import PeerList, SwarmFull, SwarmStore
from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STARTED,
    EVENT_STOPPED,
    IPV4_WIDTH,
    IPV6_WIDTH,
    PeerChange,
)

TTL = 3900
IH = b"i" * 20


def pid(n: int) -> bytes:
    return b"-PEER-%014d" % n


def v4(n: int, port: int = 6881) -> bytes:
    return bytes([10, 0, n >> 8 & 255, n & 255]) + port.to_bytes(2, "big")


def v6(n: int, port: int = 6881) -> bytes:
    return b"\xfd" + bytes(13) + n.to_bytes(2, "big") + port.to_bytes(2, "big")


@pytest.fixture
def store(clock) -> SwarmStore:
    return SwarmStore(peer_ttl=TTL, clock=clock)


def announce(store, n, *, seeder=False, event=EVENT_NONE, ih=IH, ep=None, count=True):
    change = PeerChange(ih, pid(n), ep or v4(n), seeder, event, store.clock())
    return store.apply(change, count_download=count)


def check_invariants(pl: PeerList) -> None:
    """The layout every operation must keep: parallel arrays, a true index, seeders first."""
    n = len(pl.ids)
    assert len(pl.addrs) == n * pl.width
    assert len(pl.expires) == n
    assert 0 <= pl.seeders <= n
    assert len(set(pl.ids)) == n
    assert all(pl.slot(p) == slot for slot, p in enumerate(pl.ids))
    if pl.index is not None:
        assert pl.index == {p: slot for slot, p in enumerate(pl.ids)}


# --- expiry ------------------------------------------------------------------------------


def test_peer_that_stops_announcing_expires_after_its_ttl(store, clock):
    announce(store, 1, seeder=True)
    announce(store, 2)
    clock.advance(TTL - 1)
    store.expire()
    assert store.scrape(IH) == (1, 0, 1)
    clock.advance(store.sweep_every)  # a peer outlives its TTL by at most one sweep period
    announce(store, 3)  # the lazy sweep on the next announce drops the two stale peers
    assert store.scrape(IH) == (0, 0, 1)
    assert store.get(IH).v4.ids == [pid(3)]


def test_reannounce_keeps_a_peer_alive(store, clock):
    announce(store, 1)
    clock.advance(TTL - 10)
    announce(store, 1)
    clock.advance(TTL - 10)
    store.expire()
    assert store.scrape(IH) == (0, 0, 1)


def test_stale_peers_expire_while_only_the_other_family_announces(store, clock):
    announce(store, 1, ep=v4(1))
    for _ in range(3):  # an IPv6 peer keeps the torrent alive, long past peer 1's TTL
        announce(store, 2, ep=v6(2))
        clock.advance(TTL // 2)
    announce(store, 2, ep=v6(2))
    assert store.scrape(IH) == (0, 0, 1)
    assert len(store.get(IH).v4) == 0


def test_expired_peers_do_not_hold_places_in_a_full_torrent(clock):
    store = SwarmStore(peer_ttl=TTL, max_peers_per_torrent=2, clock=clock)
    announce(store, 1, ep=v4(1))
    clock.advance(TTL // 2)
    announce(store, 2, ep=v6(2))
    clock.advance(TTL // 2 + 1)  # peer 1 has expired; peer 2 and the torrent live on
    announce(store, 3, ep=v4(3))
    assert store.scrape(IH) == (0, 0, 2)


def test_torrent_nobody_announces_to_disappears_with_its_counter(store, clock):
    announce(store, 1, event=EVENT_STARTED)
    announce(store, 1, seeder=True, event=EVENT_COMPLETED)
    assert store.scrape(IH) == (1, 1, 0)
    clock.advance(TTL + store.sweep_every)  # the torrent outlives its last peer by a sweep
    assert store.get(IH) is None
    assert store.scrape(IH) == (0, 0, 0)
    store.expire()
    assert len(store) == 0
    assert list(store.peers()) == []


def test_replicated_change_expires_from_its_own_timestamp(store, clock):
    old = PeerChange(IH, pid(1), v4(1), False, EVENT_NONE, clock() - TTL + 5)
    store.apply(old, count_download=False)
    assert store.scrape(IH) == (0, 0, 1)
    clock.advance(5)
    store.expire()
    assert store.scrape(IH) == (0, 0, 0)


# --- events and counters -----------------------------------------------------------------


def test_reannounce_refreshes_address_and_seeder_state(store):
    announce(store, 1, ep=v4(1, 1000))
    announce(store, 1, seeder=True, ep=v4(9, 2000))
    pl = store.get(IH).v4
    assert (pl.seeders, len(pl)) == (1, 1)
    assert bytes(pl.addrs) == v4(9, 2000)
    assert store.scrape(IH) == (1, 0, 0)
    announce(store, 1, seeder=False)
    assert store.scrape(IH) == (0, 0, 1)


def test_stopped_removes_the_peer_where_it_announced_from(store):
    announce(store, 1, ep=v4(1, 1000))
    announce(store, 1, ep=v6(1))  # the same client, dual-stack
    announce(store, 2)
    swarm, slot, counted = announce(store, 1, event=EVENT_STOPPED, ep=v4(1, 2000))
    assert (slot, counted) == (-1, False)
    assert pid(1) not in swarm.v4 and pid(1) in swarm.v6  # each family stops on its own
    announce(store, 1, event=EVENT_STOPPED, ep=v6(1))
    assert pid(1) not in swarm.v6
    assert store.scrape(IH) == (0, 0, 1)


def test_stop_from_another_host_cannot_remove_a_peer(store):
    """Peer ids are public (non-compact replies, handshakes): an id alone proves nothing."""
    announce(store, 1, ep=v4(1))
    announce(store, 1, ep=v6(1))
    announce(store, 1, event=EVENT_STOPPED, ep=v4(66))
    announce(store, 1, event=EVENT_STOPPED, ep=v6(66))
    swarm = store.get(IH)
    assert pid(1) in swarm.v4 and pid(1) in swarm.v6
    assert store.scrape(IH) == (0, 0, 2)


def test_stopped_for_unknown_torrent_creates_nothing(store):
    swarm, slot, _ = announce(store, 1, event=EVENT_STOPPED)
    assert (swarm, slot, len(store)) == (None, -1, 0)


def test_completed_counts_one_download_per_peer(store):
    announce(store, 1, event=EVENT_STARTED)
    assert announce(store, 1, seeder=True, event=EVENT_COMPLETED)[2] is True
    assert announce(store, 1, seeder=True, event=EVENT_COMPLETED)[2] is False
    announce(store, 1, seeder=True)
    assert store.scrape(IH) == (1, 1, 0)


def test_peer_that_starts_as_seeder_is_no_download(store):
    announce(store, 1, seeder=True, event=EVENT_STARTED)
    assert announce(store, 1, seeder=True, event=EVENT_COMPLETED)[2] is False
    assert store.scrape(IH) == (1, 0, 0)


def test_replicas_do_not_count_downloads_but_add_increments(store):
    announce(store, 1)
    assert announce(store, 1, seeder=True, event=EVENT_COMPLETED, count=False)[2] is False
    store.add_downloaded(IH, 2)
    assert store.scrape(IH) == (1, 2, 0)
    store.set_downloaded(IH, 7)
    assert store.scrape(IH)[1] == 7
    store.add_downloaded(b"n" * 20, 1)
    assert store.scrape(b"n" * 20) == (0, 1, 0)


def test_ipv4_and_ipv6_peers_are_kept_apart(store):
    announce(store, 1, ep=v4(1))
    announce(store, 2, seeder=True, ep=v6(2))
    swarm = store.get(IH)
    assert bytes(swarm.v4.addrs) == v4(1) and bytes(swarm.v6.addrs) == v6(2)
    assert (swarm.v4.width, swarm.v6.width) == (IPV4_WIDTH, IPV6_WIDTH)
    assert store.scrape(IH) == (1, 0, 1)


def test_peers_lists_every_live_peer_with_its_last_seen_time(store, clock):
    announce(store, 1, ep=v4(1))
    clock.advance(10)
    announce(store, 2, seeder=True, ep=v6(2))
    got = sorted(store.peers(), key=lambda c: c.peer_id)
    assert got == [
        PeerChange(IH, pid(1), v4(1), False, EVENT_NONE, clock() - 10),
        PeerChange(IH, pid(2), v6(2), True, EVENT_NONE, clock()),
    ]
    assert store.totals() == (1, 1, 1)


# --- sampling ----------------------------------------------------------------------------


def filled(seeders: int, leechers: int) -> PeerList:
    pl = PeerList(IPV4_WIDTH)
    order = [True] * seeders + [False] * leechers
    random.Random(seeders * 7919 + leechers).shuffle(order)
    for n, is_seeder in enumerate(order):
        pl.upsert(pid(n), v4(n), is_seeder, 10**6)
    return pl


def sampled_slots(pl: PeerList, runs: list[tuple[int, int]]) -> list[int]:
    assert all(0 <= a < b <= len(pl) for a, b in runs)
    return [s for a, b in runs for s in range(a, b)]


def check_sample(pl: PeerList, want: int, for_seeder: bool, exclude: int, rng) -> list[int]:
    runs = pl.sample(want, for_seeder, exclude, rng)
    slots = sampled_slots(pl, runs)
    assert len(slots) == len(set(slots)), "a peer was handed out twice"
    assert exclude not in slots, "a peer was handed itself"
    seeders = [s for s in range(pl.seeders) if s != exclude]
    leechers = [s for s in range(pl.seeders, len(pl)) if s != exclude]
    if for_seeder:
        assert all(s >= pl.seeders for s in slots), "a seeder was sent a seeder"
        assert len(slots) == min(want, len(leechers))
    else:
        assert len(slots) == min(want, len(seeders) + len(leechers))
        got_seeders = sum(s < pl.seeders for s in slots)
        assert got_seeders == min(want, len(seeders)), "a leecher must get seeders first"
    w = pl.width
    assert pl.compact(runs) == b"".join(bytes(pl.addrs[s * w : s * w + w]) for s in slots)
    assert pl.peer_ids(runs) == [pl.ids[s] for s in slots]
    return slots


@given(
    seeders=st.integers(0, 30),
    leechers=st.integers(0, 30),
    want=st.integers(0, 70),
    for_seeder=st.booleans(),
    exclude=st.integers(-1, 60),
    seed=st.integers(0, 2**32),
)
def test_sample_never_returns_self_or_duplicates_and_honours_roles(
    seeders, leechers, want, for_seeder, exclude, seed
):
    pl = filled(seeders, leechers)
    exclude = exclude if exclude < len(pl) else -1
    check_sample(pl, want, for_seeder, exclude, random.Random(seed))


def test_sample_of_a_big_swarm_is_a_few_slices_of_numwant_peers():
    pl = filled(20_000, 80_000)
    rng = random.Random(1)
    for exclude in (-1, 0, 19_999, 20_000, 50_000, 99_999):
        for for_seeder in (False, True):
            runs = pl.sample(50, for_seeder, exclude, rng)
            # At most: a window that wraps (2 runs), split around ``exclude`` (1 more).
            assert len(runs) <= 3
            assert len(check_sample(pl, 50, for_seeder, exclude, rng)) == 50


def test_sample_windows_reach_every_peer():
    pl = filled(0, 1000)
    rng = random.Random(2)
    seen: set[int] = set()
    for _ in range(2000):
        seen.update(sampled_slots(pl, pl.sample(50, False, 500, rng)))
    assert seen == set(range(1000)) - {500}


# --- bounds ------------------------------------------------------------------------------


def test_max_torrents_evicts_the_stalest_torrent(clock):
    store = SwarmStore(peer_ttl=TTL, max_torrents=3, clock=clock)
    hashes = [bytes([n]) * 20 for n in range(4)]
    for n, ih in enumerate(hashes[:3]):
        announce(store, n, ih=ih)
        clock.advance(1)
    announce(store, 9, ih=hashes[0])  # torrent 0 is fresh again; torrent 1 is now stalest
    announce(store, 3, ih=hashes[3])
    assert len(store) == 3
    assert store.get(hashes[1]) is None
    assert all(store.get(ih) is not None for ih in (hashes[0], hashes[2], hashes[3]))


def test_full_torrent_refuses_new_peers_but_known_peers_reannounce(clock):
    store = SwarmStore(peer_ttl=TTL, max_peers_per_torrent=3, clock=clock)
    for n in range(3):
        announce(store, n)
    before = store.scrape(IH)
    with pytest.raises(SwarmFull):
        announce(store, 3)
    with pytest.raises(SwarmFull):
        announce(store, 4, ep=v6(4))
    assert store.scrape(IH) == before
    assert pid(3) not in store.get(IH).v4
    announce(store, 1, seeder=True, event=EVENT_COMPLETED)
    assert store.scrape(IH) == (1, 1, 2)
    announce(store, 0, event=EVENT_STOPPED)
    announce(store, 3)  # room again once a peer left
    assert store.scrape(IH) == (1, 1, 2)


# --- random operation sequences against a plain model ------------------------------------

HASHES = [bytes([n]) * 20 for n in range(3)]
SWEEP = SwarmStore().sweep_every
MAX_PEERS = 6

operation = st.one_of(
    st.tuples(
        st.just("announce"),
        st.sampled_from(HASHES),
        st.integers(0, 9),  # peer
        st.sampled_from([IPV4_WIDTH, IPV6_WIDTH]),
        st.booleans(),  # seeder
        st.sampled_from([EVENT_NONE, EVENT_STARTED, EVENT_COMPLETED, EVENT_STOPPED]),
        st.booleans(),  # count_download
    ),
    st.tuples(st.just("tick"), st.integers(1, TTL)),
    st.tuples(st.just("add"), st.sampled_from(HASHES), st.integers(1, 3)),
    st.tuples(
        st.just("stop"),
        st.sampled_from(HASHES),
        st.integers(0, 9),  # peer
        st.integers(0, 9),  # the host the stop comes from
        st.sampled_from([IPV4_WIDTH, IPV6_WIDTH]),
    ),
)


class Model:
    """What the store should hold: plain dicts, recomputed from scratch."""

    def __init__(self) -> None:
        self.peers: dict[tuple[bytes, int], dict[bytes, tuple[bytes, bool, int]]] = {}
        self.downloaded: dict[bytes, int] = {}
        # When the store's torrent cache drops each torrent, and when it last refreshed it
        # (-1: never by an announce): the cache is refreshed at most once a sweep period.
        self.expiry: dict[bytes, float] = {}
        self.refreshed: dict[bytes, float] = {}

    def family(self, ih: bytes, width: int) -> dict[bytes, tuple[bytes, bool, int]]:
        return self.peers.setdefault((ih, width), {})

    def size(self, ih: bytes) -> int:
        return sum(len(self.family(ih, w)) for w in (IPV4_WIDTH, IPV6_WIDTH))

    def counts(self, ih: bytes) -> tuple[int, int, int]:
        members = [p for w in (IPV4_WIDTH, IPV6_WIDTH) for p in self.family(ih, w).values()]
        seeders = sum(1 for _, s, _ in members if s)
        return seeders, self.downloaded.get(ih, 0), len(members) - seeders

    def drop(self, ih: bytes) -> None:
        self.expiry.pop(ih, None)
        self.refreshed.pop(ih, None)
        self.downloaded.pop(ih, None)
        for w in (IPV4_WIDTH, IPV6_WIDTH):
            self.peers.pop((ih, w), None)


@pytest.mark.parametrize("small_list", [swarm_module.SMALL_LIST, 2])
@given(st.lists(operation, max_size=60))
def test_random_operations_match_a_simple_model(small_list, ops):
    """Both peer lookups: linear search of small lists and the index of larger ones."""
    saved, swarm_module.SMALL_LIST = swarm_module.SMALL_LIST, small_list
    try:
        _check_random_operations(ops)
    finally:
        swarm_module.SMALL_LIST = saved


def _check_random_operations(ops):
    clock_now = [1_000_000]
    store = SwarmStore(peer_ttl=TTL, max_peers_per_torrent=MAX_PEERS, clock=lambda: clock_now[0])
    model = Model()
    for op in ops:
        _compare(store, model)  # the state the previous operation left
        now = clock_now[0]
        if op[0] == "tick":
            clock_now[0] = now = now + op[1]
            store.expire()
            for ih, expiry in list(model.expiry.items()):
                if expiry <= now:
                    model.drop(ih)
            for fam in model.peers.values():
                for p, (_, _, exp) in list(fam.items()):
                    if exp <= now:
                        del fam[p]
        elif op[0] == "add":
            _, ih, n = op
            store.add_downloaded(ih, n)
            if ih not in model.expiry:
                model.expiry[ih], model.refreshed[ih] = now + TTL + SWEEP, -1
            model.downloaded[ih] = model.downloaded.get(ih, 0) + n
        elif op[0] == "stop":
            _, ih, peer, host, width = op
            ep = (v4 if width == IPV4_WIDTH else v6)(host)
            store.apply(PeerChange(ih, pid(peer), ep, False, EVENT_STOPPED, now))
            if host == peer:  # anyone else's stop for this peer id changes nothing
                model.family(ih, width).pop(pid(peer), None)
        else:
            _, ih, peer, width, seeder, event, count = op
            ep = (v4 if width == IPV4_WIDTH else v6)(peer)
            change = PeerChange(ih, pid(peer), ep, seeder, event, now)
            if event == EVENT_STOPPED:  # sent from the peer's own host, in one family
                store.apply(change, count)
                model.family(ih, width).pop(pid(peer), None)
                continue
            fam = model.family(ih, width)
            if pid(peer) not in fam and model.size(ih) >= MAX_PEERS:
                with pytest.raises(SwarmFull):
                    store.apply(change, count)
                continue
            swarm, slot, counted = store.apply(change, count)
            was_seeder = any(
                model.family(ih, w).get(pid(peer), (b"", False, 0))[1]
                for w in (IPV4_WIDTH, IPV6_WIDTH)
            )
            expect_count = count and event == EVENT_COMPLETED and not was_seeder
            assert counted == expect_count
            model.downloaded[ih] = model.downloaded.get(ih, 0) + expect_count
            if ih not in model.expiry:
                model.expiry[ih], model.refreshed[ih] = now + TTL + SWEEP, -1
            if now - model.refreshed[ih] >= SWEEP:
                model.expiry[ih], model.refreshed[ih] = now + TTL + SWEEP, now
            fam[pid(peer)] = (ep, seeder, now + TTL)
            pl = swarm.family(width, create=False)
            assert pl.ids[slot] == pid(peer)
            assert (slot < pl.seeders) == seeder
    _compare(store, model)


def _compare(store: SwarmStore, model: Model) -> None:
    for ih in HASHES:
        assert store.scrape(ih) == model.counts(ih)
        swarm = store.get(ih)
        if swarm is None:
            continue
        for pl in swarm.lists():
            check_invariants(pl)
            want = model.family(ih, pl.width)
            assert set(pl.ids) == set(want)
            for slot, p in enumerate(pl.ids):
                ep, seeder, exp = want[p]
                assert bytes(pl.addrs[slot * pl.width : (slot + 1) * pl.width]) == ep
                assert (slot < pl.seeders) == seeder
                assert pl.expires[slot] == exp
            for exclude in (-1, *range(len(pl))):
                for for_seeder in (False, True):
                    check_sample(pl, 3, for_seeder, exclude, random.Random(exclude))


# --- late copies through sync ----------------------------------------------------------


def test_late_copy_of_an_announce_does_not_revive_a_stopped_peer(store, clock):
    now = clock()
    store.apply(PeerChange(IH, pid(1), v4(1), False, EVENT_STOPPED, now))
    late = PeerChange(IH, pid(1), v4(1), False, EVENT_STARTED, now - 0.005)
    assert store.apply(late, count_download=False)[1] == -1
    assert store.scrape(IH) == (0, 0, 0)
    again = PeerChange(IH, pid(1), v4(1), False, EVENT_STARTED, now + 0.005)
    assert store.apply(again, count_download=False)[1] >= 0
    assert store.scrape(IH) == (0, 0, 1)


def test_stop_memory_is_bounded_in_time(store, clock):
    store.apply(PeerChange(IH, pid(1), v4(1), False, EVENT_STOPPED, clock()))
    clock.advance(swarm_module.STOP_MEMORY + 1)
    store.apply(PeerChange(IH, pid(2), v4(2), False, EVENT_STOPPED, clock()))
    assert list(store._stops) == [IH + pid(2)]


def test_two_announces_in_one_second_keep_their_order(store, clock):
    from wsgi_tracker.sync.replica import apply_remote

    t = clock()
    store.apply(PeerChange(IH, pid(1), v4(1), True, EVENT_NONE, t + 0.7))
    older = PeerChange(IH, pid(1), v4(1), False, EVENT_NONE, t + 0.2)
    assert not apply_remote(store, older)
    assert store.scrape(IH) == (1, 0, 0)


def test_apply_reads_the_torrent_cache_own_dict_and_lru_order(clock):
    """``apply`` bypasses TTLCache.__getitem__ (SwarmStore.__init__ says why); this
    fails if a cachetools release keeps its entries or LRU order elsewhere."""
    store = SwarmStore(peer_ttl=TTL, max_torrents=3, clock=clock)
    announce(store, 1, ih=b"a" * 20)
    announce(store, 2, ih=b"b" * 20)
    assert store._held is vars(store.torrents)["_Cache__data"]
    assert list(store._held) == [b"a" * 20, b"b" * 20]
    assert list(store._lru) == [b"a" * 20, b"b" * 20]
    announce(store, 3, ih=b"a" * 20)
    assert list(store._lru) == [b"b" * 20, b"a" * 20]
