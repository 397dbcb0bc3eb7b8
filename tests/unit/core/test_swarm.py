"""SwarmStore: expiry, events, counters, sampling and bounds, on a hand-driven clock."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgi_tracker.core import swarm as swarm_module
from wsgi_tracker.core.swarm import (
    AddressFull,
    NotYourPeer,
    PeerList,
    StoreFull,
    SwarmFull,
    SwarmStore,
)
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


def v6(n: int, port: int = 6881, net: int = 0) -> bytes:
    """An address in the /64 ``net`` (the unit of IPv6 identity and limits)."""
    host = n.to_bytes(2, "big") + port.to_bytes(2, "big")
    return b"\xfd" + net.to_bytes(7, "big") + bytes(6) + host


@pytest.fixture
def store(clock) -> SwarmStore:
    return SwarmStore(peer_ttl=TTL, clock=clock)


def announce(store, n, *, seeder=False, event=EVENT_NONE, ih=IH, ep=None, count=True, key=0):
    change = PeerChange(ih, pid(n), ep or v4(n), seeder, event, store.clock(), key)
    return store.apply(change, count_download=count)


def check_invariants(pl: PeerList) -> None:
    """The layout every operation must keep: parallel arrays, a true index, seeders first."""
    n = len(pl.ids)
    assert len(pl.addrs) == n * pl.width
    assert len(pl.expires) == n
    assert len(pl.keys) == n
    assert 0 <= pl.seeders <= n
    assert len(set(pl.ids)) == n
    assert all(pl.slot(p) == slot for slot, p in enumerate(pl.ids))
    hosts: dict[bytes, int] = {}
    for at in range(0, len(pl.addrs), pl.width):
        host = bytes(pl.addrs[at : at + pl.host_width])
        hosts[host] = hosts.get(host, 0) + 1
    assert all(pl.host_count(h) == c for h, c in hosts.items())
    if pl.index is not None:  # every slot once, in a table at most half full
        assert sorted(s for s in pl.index if s >= 0) == list(range(n))
        assert len(pl.index) >= 2 * n
        assert pl.hosts == hosts


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
    assert store.get(IH).v4 is None  # an emptied list is dropped


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


def test_reannounce_refreshes_port_and_seeder_state(store):
    announce(store, 1, ep=v4(1, 1000))
    announce(store, 1, seeder=True, ep=v4(1, 2000))
    pl = store.get(IH).v4
    assert (pl.seeders, len(pl)) == (1, 1)
    assert bytes(pl.addrs) == v4(1, 2000)
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
    assert swarm.v6 is None  # its last peer gone, the list went with it
    assert store.scrape(IH) == (0, 0, 1)


def test_stop_from_another_host_cannot_remove_a_peer(store):
    """Peer ids are public (non-compact replies, handshakes): an id alone proves nothing."""
    announce(store, 1, ep=v4(1), key=7)
    announce(store, 1, ep=v6(1), key=7)
    for ep, key in ((v4(66), 0), (v6(66, net=1), 0), (v4(66), 8), (v6(66, net=1), 8)):
        with pytest.raises(NotYourPeer, match="only the peer itself may stop it"):
            announce(store, 1, event=EVENT_STOPPED, ep=ep, key=key)
    assert not store._stops  # a refused stop leaves no memory either
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
        pl.upsert(-1, pid(n), v4(n), is_seeder, 10**6, 0)
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
    """Within a sweep period too: an announce since its refresh is a second chance."""
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


# --- identity: only the peer itself moves, stops or changes it ---------------------------


def test_peer_cannot_be_moved_to_another_address_without_its_key(store):
    announce(store, 1, ep=v4(1), key=7)
    announce(store, 2, ep=v4(2))  # never sent a key: bound to its address for good
    for n, key in ((1, 0), (1, 8), (2, 0), (2, 5)):
        with pytest.raises(NotYourPeer, match="in use from another address"):
            announce(store, n, ep=v4(66), key=key, seeder=True)
    with pytest.raises(NotYourPeer):
        announce(store, 1, ep=v6(1), key=8)  # nor can another key add its other family
    pl = store.get(IH).v4
    assert bytes(pl.addrs) == v4(1) + v4(2)
    assert store.scrape(IH) == (0, 0, 2)


def test_peer_moves_with_the_key_it_first_sent(store):
    announce(store, 1, ep=v4(1), key=7)
    announce(store, 1, ep=v4(1), key=9)  # same address: accepted, the first key stays
    announce(store, 1, ep=v4(5, 7000), key=7, seeder=True)
    pl = store.get(IH).v4
    assert (bytes(pl.addrs), list(pl.keys), pl.seeders) == (v4(5, 7000), [7], 1)
    assert (pl.host_count(v4(1)[:4]), pl.host_count(v4(5)[:4])) == (0, 1)
    announce(store, 1, ep=v6(1), key=7)  # its other family, with the same key
    assert pid(1) in store.get(IH).v6


def test_keyless_peer_takes_the_first_key_it_sends_from_its_own_address(store):
    announce(store, 1, ep=v4(1))
    announce(store, 1, ep=v4(1, 9999), key=42)  # a new port at the same address
    assert list(store.get(IH).v4.keys) == [42]
    with pytest.raises(NotYourPeer):
        announce(store, 1, ep=v4(2), key=41)
    announce(store, 1, ep=v4(2), key=42)
    assert bytes(store.get(IH).v4.addrs) == v4(2)


def test_stop_with_the_key_from_another_address_removes_the_peer(store):
    announce(store, 1, ep=v4(1), key=7)
    announce(store, 1, event=EVENT_STOPPED, ep=v4(3), key=7)
    assert store.scrape(IH) == (0, 0, 0)
    assert store.peers_held == 0


def test_an_ipv6_peer_is_bound_to_its_64(store):
    """Privacy addresses rotate inside a /64: a keyless client still re-announces there."""
    announce(store, 1, ep=v6(1))
    announce(store, 1, ep=v6(77, 7000))  # the same /64, another interface id and port
    assert bytes(store.get(IH).v6.addrs) == v6(77, 7000)
    with pytest.raises(NotYourPeer):
        announce(store, 1, ep=v6(1, net=9))
    announce(store, 1, event=EVENT_STOPPED, ep=v6(5))  # the /64 may stop it too
    assert store.scrape(IH) == (0, 0, 0)


def test_replicas_refuse_a_move_through_sync_as_the_origin_would(store):
    from wsgi_tracker.sync.replica import apply_remote

    announce(store, 1, ep=v4(1), key=7)
    now = store.clock()
    assert not apply_remote(store, PeerChange(IH, pid(1), v4(66), True, EVENT_NONE, now + 1, 8))
    assert not apply_remote(store, PeerChange(IH, pid(1), v4(66), True, EVENT_NONE, now + 1))
    stop = PeerChange(IH, pid(1), v4(66), False, EVENT_STOPPED, now + 1)
    assert not apply_remote(store, stop)
    assert bytes(store.get(IH).v4.addrs) == v4(1)
    assert apply_remote(store, PeerChange(IH, pid(1), v4(5), True, EVENT_NONE, now + 2, 7))
    assert bytes(store.get(IH).v4.addrs) == v4(5)


def test_a_stale_copy_from_the_peers_address_still_brings_its_key(store):
    """The sidecar's snapshot file keeps no keys; the workers' re-sent replicas do."""
    from wsgi_tracker.sync.replica import apply_remote

    now = store.clock()
    announce(store, 1, ep=v4(1))
    resent = PeerChange(IH, pid(1), v4(1), False, EVENT_NONE, now - 5, 7)
    assert not apply_remote(store, resent, state=True)
    assert list(store.get(IH).v4.keys) == [7]
    elsewhere = PeerChange(IH, pid(1), v4(2), False, EVENT_NONE, now - 5, 9)
    apply_remote(store, elsewhere, state=True)
    assert list(store.get(IH).v4.keys) == [7]


# --- abuse bounds: per address, per replica ------------------------------------------------


@pytest.mark.parametrize("peers", [3, 40])  # a small list (searched) and an indexed one
def test_one_address_cannot_fill_a_swarm(clock, peers):
    store = SwarmStore(peer_ttl=TTL, max_peers_per_address=peers, clock=clock)
    for n in range(peers):
        announce(store, n, ep=v4(7, 1000 + n))
        announce(store, 100 + n, ep=v6(n, net=7))  # every address of one /64
    for ep in (v4(7, 2000), v6(999, net=7)):
        with pytest.raises(AddressFull, match=f"already has {peers} from it"):
            announce(store, 999, ep=ep)
    announce(store, 999, ep=v4(8))  # another address still gets in
    announce(store, 998, ep=v6(1, net=8))
    announce(store, 1, ep=v4(7, 5000))  # a member may still change its port
    announce(store, 0, event=EVENT_STOPPED, ep=v4(7, 1000))  # one leaves: one place frees
    announce(store, 996, ep=v4(7, 4000))
    assert store.scrape(IH) == (0, 0, 2 * peers + 2)
    check_invariants(store.get(IH).v4)


def test_a_peer_cannot_move_onto_a_full_address(clock):
    store = SwarmStore(peer_ttl=TTL, max_peers_per_address=2, clock=clock)
    announce(store, 1, ep=v4(7, 1))
    announce(store, 2, ep=v4(7, 2))
    announce(store, 3, ep=v4(3), key=9)
    with pytest.raises(AddressFull):
        announce(store, 3, ep=v4(7, 3), key=9)
    assert bytes(store.get(IH).v4.addrs[12:]) == v4(3)


def test_max_peers_bounds_the_whole_replica(clock):
    store = SwarmStore(peer_ttl=TTL, max_peers=6, max_torrents=2, clock=clock)
    hashes = [bytes([n]) * 20 for n in range(3)]
    for n in range(3):
        announce(store, n, ih=hashes[0])
    for n in range(3, 6):
        announce(store, n, ih=hashes[1])
    with pytest.raises(StoreFull, match="tracker is full"):
        announce(store, 6, ih=hashes[0])
    announce(store, 4, ih=hashes[1], seeder=True)  # known peers go on re-announcing
    clock.advance(1)
    announce(store, 0, ih=hashes[0])
    announce(store, 2, event=EVENT_STOPPED, ih=hashes[0])
    announce(store, 6, ih=hashes[2])  # a third torrent: the cache evicts the stalest
    assert store.get(hashes[1]) is None
    assert store.peers_held == 3  # the evicted torrent's three peers left the count
    clock.advance(TTL + store.sweep_every)
    store.expire()
    assert (store.peers_held, len(store)) == (0, 0)


def test_a_peer_id_that_is_not_20_bytes_is_refused_and_changes_nothing(store):
    announce(store, 1)
    with pytest.raises(ValueError, match="a peer id is 20 bytes, not 19"):
        store.apply(PeerChange(IH, pid(2)[:19], v4(2), False, EVENT_STARTED, store.clock()))
    assert store.scrape(IH) == (0, 0, 1)  # (complete, downloaded, incomplete)


@given(st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=12, unique=True))
def test_a_small_list_finds_ids_only_where_they_start(ids):
    """The packed ids are searched with ``find``: a match straddling two ids (the end of
    one and the start of the next) is no slot, so every id whose bytes also occur across
    a boundary is still found at its own slot, and such an id that is not held is not."""
    pl = PeerList(IPV4_WIDTH)
    for n, p in enumerate(ids):
        pl.upsert(-1, p, v4(n), False, 1.0, 0)
    packed = b"".join(ids)
    for at in range(1, len(packed) - 20):
        probe = packed[at : at + 20]
        assert pl.slot(probe) == (ids.index(probe) if probe in ids else -1)
    assert [pl.slot(p) for p in ids] == list(range(len(ids)))


list_op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 299), st.booleans()),
    st.tuples(st.just("remove"), st.integers(0, 299)),
    st.tuples(st.just("flip"), st.integers(0, 299)),
)


@pytest.mark.parametrize("small_list", [2, 40])
@given(st.lists(list_op, max_size=400))
def test_a_large_lists_index_finds_every_peer_through_growth_and_removal(small_list, ops):
    """The open-addressing index of a large list against a dict: adds that grow the table,
    removals that shift runs back, and seeder flips that swap slots."""
    saved, swarm_module.SMALL_LIST = swarm_module.SMALL_LIST, small_list
    try:
        pl = PeerList(IPV4_WIDTH)
        held: set[int] = set()
        for op in ops:
            n = op[1]
            slot = pl.slot(pid(n))
            assert (slot >= 0) == (n in held)
            if op[0] == "add" and slot < 0:
                pl.upsert(-1, pid(n), v4(n), op[2], 1.0, 0)
                held.add(n)
            elif op[0] == "remove" and slot >= 0:
                pl.remove_slot(slot)
                held.discard(n)
            elif op[0] == "flip" and slot >= 0:
                pl.upsert(slot, pid(n), v4(n), slot >= pl.seeders, 1.0, 0)
            check_invariants(pl)
        assert {p for p in pl.ids} == {pid(n) for n in held}
        assert all(pl.slot(pid(n)) == -1 for n in range(300, 320))
    finally:
        swarm_module.SMALL_LIST = saved


# --- random operation sequences against a plain model ------------------------------------

HASHES = [bytes([n]) * 20 for n in range(3)]
SWEEP = SwarmStore().sweep_every
MAX_PEERS = 6
MAX_PER_ADDRESS = 3
MAX_PER_HOST = 5  # over all torrents: reached with two torrents of three from one host
MAX_HELD = 14

operation = st.one_of(
    st.tuples(
        st.just("announce"),
        st.sampled_from(HASHES),
        st.integers(0, 9),  # peer
        st.integers(0, 3),  # the host it announces from
        st.sampled_from([IPV4_WIDTH, IPV6_WIDTH]),
        st.booleans(),  # seeder
        st.sampled_from([EVENT_NONE, EVENT_STARTED, EVENT_COMPLETED, EVENT_STOPPED]),
        st.booleans(),  # count_download
        st.integers(0, 2),  # key (0: none)
    ),
    st.tuples(st.just("tick"), st.integers(1, TTL)),
    st.tuples(st.just("add"), st.sampled_from(HASHES), st.integers(1, 3)),
)


def endpoint_of(width: int, host: int, peer: int) -> bytes:
    """The peer's endpoint from ``host``; its port tells peers apart. IPv6 hosts are /64s."""
    if width == IPV4_WIDTH:
        return v4(host, 1000 + peer)
    return b"\xfd" + bytes(6) + bytes([host]) + peer.to_bytes(8, "big") + (1000).to_bytes(2, "big")


class Model:
    """What the store should hold: plain dicts, recomputed from scratch."""

    def __init__(self) -> None:
        # (info_hash, width) -> peer_id -> (endpoint, seeder, expiry, key, host)
        self.peers: dict[tuple[bytes, int], dict[bytes, tuple[bytes, bool, int, int, int]]] = {}
        self.downloaded: dict[bytes, int] = {}
        # When the store's torrent cache drops each torrent, and when it last refreshed it
        # (-1: never by an announce): the cache is refreshed at most once a sweep period.
        self.expiry: dict[bytes, float] = {}
        self.refreshed: dict[bytes, float] = {}

    def family(self, ih: bytes, width: int) -> dict[bytes, tuple[bytes, bool, int, int, int]]:
        return self.peers.setdefault((ih, width), {})

    def size(self, ih: bytes) -> int:
        return sum(len(self.family(ih, w)) for w in (IPV4_WIDTH, IPV6_WIDTH))

    def held(self) -> int:
        return sum(len(fam) for fam in self.peers.values())

    def at_host(self, host: int, width: int) -> int:
        """The peers from ``host`` of one family (an address, or a /64) in every torrent."""
        families = [fam for (_, w), fam in self.peers.items() if w == width]
        return sum(1 for fam in families for m in fam.values() if m[4] == host)

    def counts(self, ih: bytes) -> tuple[int, int, int]:
        members = [p for w in (IPV4_WIDTH, IPV6_WIDTH) for p in self.family(ih, w).values()]
        seeders = sum(1 for m in members if m[1])
        return seeders, self.downloaded.get(ih, 0), len(members) - seeders

    def drop(self, ih: bytes) -> None:
        self.expiry.pop(ih, None)
        self.refreshed.pop(ih, None)
        self.downloaded.pop(ih, None)
        for w in (IPV4_WIDTH, IPV6_WIDTH):
            self.peers.pop((ih, w), None)

    def refusal(self, ih: bytes, peer: int, host: int, width: int, key: int, stop: bool):
        """The error the rules give this announce, or None: the rules, spelled out plainly."""
        fam = self.family(ih, width)
        known = fam.get(pid(peer))
        if known is not None:
            if known[4] == host:
                return None
            if not known[3] or known[3] != key:
                return NotYourPeer
            if stop:
                return None
            at_host = sum(1 for m in fam.values() if m[4] == host)
            if at_host >= MAX_PER_ADDRESS or self.at_host(host, width) >= MAX_PER_HOST:
                return AddressFull
            return None
        if stop:
            return None
        if self.held() >= MAX_HELD:
            return StoreFull
        if self.size(ih) >= MAX_PEERS:
            return SwarmFull
        if self.at_host(host, width) >= MAX_PER_HOST:
            return AddressFull
        if sum(1 for m in fam.values() if m[4] == host) >= MAX_PER_ADDRESS:
            return AddressFull
        twin = self.family(ih, IPV6_WIDTH if width == IPV4_WIDTH else IPV4_WIDTH).get(pid(peer))
        if twin is not None and twin[3] and twin[3] != key:
            return NotYourPeer
        return None


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
    store = SwarmStore(
        peer_ttl=TTL,
        max_peers_per_torrent=MAX_PEERS,
        max_peers_per_address=MAX_PER_ADDRESS,
        max_peers=MAX_HELD,
        max_peers_per_host=MAX_PER_HOST,
        clock=lambda: clock_now[0],
    )
    widths = (IPV4_WIDTH, IPV6_WIDTH)
    hosts = {swarm_module.host_bucket(endpoint_of(w, h, 0)) for w in widths for h in range(4)}
    assert len(hosts) == 8  # no two of the model's hosts share a bucket
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
                for p, m in list(fam.items()):
                    if m[2] <= now:
                        del fam[p]
        elif op[0] == "add":
            _, ih, n = op
            store.add_downloaded(ih, n)
            if ih not in model.expiry:
                model.expiry[ih], model.refreshed[ih] = now + TTL + SWEEP, -1
            model.downloaded[ih] = model.downloaded.get(ih, 0) + n
        else:
            _, ih, peer, host, width, seeder, event, count, key = op
            ep = endpoint_of(width, host, peer)
            change = PeerChange(ih, pid(peer), ep, seeder, event, now, key)
            fam = model.family(ih, width)
            refused = model.refusal(ih, peer, host, width, key, event == EVENT_STOPPED)
            if refused is not None:
                with pytest.raises(refused):
                    store.apply(change, count)
                continue
            if event == EVENT_STOPPED:
                store.apply(change, count)
                fam.pop(pid(peer), None)
                continue
            swarm, slot, counted = store.apply(change, count)
            was_seeder = any(
                model.family(ih, w).get(pid(peer), (b"", False))[1]
                for w in (IPV4_WIDTH, IPV6_WIDTH)
            )
            expect_count = count and event == EVENT_COMPLETED and not was_seeder
            assert counted == expect_count
            model.downloaded[ih] = model.downloaded.get(ih, 0) + expect_count
            if ih not in model.expiry:
                model.expiry[ih], model.refreshed[ih] = now + TTL + SWEEP, -1
            if now - model.refreshed[ih] >= SWEEP:
                model.expiry[ih], model.refreshed[ih] = now + TTL + SWEEP, now
            old_key = fam[pid(peer)][3] if pid(peer) in fam else 0
            fam[pid(peer)] = (ep, seeder, now + TTL, old_key or key, host)
            pl = swarm.family(width, create=False)
            assert pl.ids[slot] == pid(peer)
            assert (slot < pl.seeders) == seeder
    _compare(store, model)


def host_counts(store: SwarmStore) -> dict[int, int]:
    """The store's per-address counts (``host_peers``), and what its peers add up to."""
    counted = {b: n for b, n in enumerate(store.host_peers) if n}
    recount: dict[int, int] = {}
    for swarm in store.torrents.values():
        for pl in swarm.lists():
            for at in range(0, len(pl.addrs), pl.width):
                b = swarm_module.host_bucket(bytes(pl.addrs[at : at + pl.width]))
                recount[b] = recount.get(b, 0) + 1
    assert counted == recount
    return counted


def _compare(store: SwarmStore, model: Model) -> None:
    assert store.peers_held == model.held()
    host_counts(store)
    for ih in HASHES:
        assert store.scrape(ih) == model.counts(ih)
        swarm = store.peek(ih)  # ``get`` would refresh it, as only announces do in the model
        if swarm is None:
            continue
        for pl in swarm.lists():
            check_invariants(pl)
            want = model.family(ih, pl.width)
            assert set(pl.ids) == set(want)
            for slot, p in enumerate(pl.ids):
                ep, seeder, exp, key, _ = want[p]
                assert bytes(pl.addrs[slot * pl.width : (slot + 1) * pl.width]) == ep
                assert (slot < pl.seeders) == seeder
                assert pl.expires[slot] == exp
                assert pl.keys[slot] == key
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


def test_the_torrent_index_expires_and_evicts_in_refresh_order(clock, monkeypatch):
    """The stale end is lined up ``FRONT`` torrents at a time; refreshed ones leave it."""
    monkeypatch.setattr(swarm_module, "FRONT", 2)
    store = SwarmStore(peer_ttl=TTL, max_torrents=5, clock=clock)
    every = store.sweep_every
    hashes = [bytes([n]) * 20 for n in range(8)]
    for n in range(5):
        announce(store, n, ih=hashes[n])
        clock.advance(every)
    announce(store, 9, ih=hashes[1])  # refreshed: now the freshest
    assert list(store.torrents) == [hashes[n] for n in (0, 2, 3, 4, 1)]
    clock.advance(every)
    for n in (5, 6, 7):
        announce(store, n, ih=hashes[n])
    assert list(store.torrents) == [hashes[n] for n in (4, 1, 5, 6, 7)]
    assert store.peers_held == 6
    clock.advance(store.torrent_ttl - every)
    assert store.peek(hashes[1]) is None  # expired reads as absent before it is dropped
    store.expire()
    assert list(store.torrents) == [hashes[n] for n in (5, 6, 7)]
    assert store.peers_held == 0  # their peers expired; the torrents last a period longer


# --- merging remote changes in bulk ---------------------------------------------------

MERGE_ENDPOINTS = [v4(1), v4(1, 7000), v4(2), v4(3), v6(1), v6(2, net=9)]


def remote_changes(
    peers: int, endpoints: st.SearchStrategy, torrents: int = 3
) -> st.SearchStrategy:
    return st.tuples(
        st.integers(0, torrents - 1),
        st.integers(0, peers - 1),  # peer
        endpoints,
        st.booleans(),  # seeder
        st.sampled_from([EVENT_NONE, EVENT_NONE, EVENT_COMPLETED, EVENT_STARTED, EVENT_STOPPED]),
        st.sampled_from([-5.0, -1.0, 0.0, 0.0, 0.25, 1.0]),  # timestamp against the clock
        st.sampled_from([0, 0, 7, 9]),  # key
    )


def merge_steps(change: st.SearchStrategy, batch: int, least: int = 0) -> st.SearchStrategy:
    return st.lists(
        st.one_of(
            st.tuples(
                st.just("batch"), st.booleans(), st.lists(change, min_size=least, max_size=batch)
            ),
            st.tuples(st.just("local"), st.none(), st.lists(change, max_size=2)),
            st.tuples(
                st.just("advance"), st.sampled_from([0.5, 7.0, 30.0, 61.0, 200.0]), st.none()
            ),
            st.tuples(st.just("expire"), st.none(), st.none()),
        ),
        max_size=25,
    )


def store_state(store: SwarmStore) -> tuple:
    """Everything a merge may change, in the torrent cache's eviction order."""
    torrents = []
    for ih, swarm in store.torrents.items():  # expired ones too, not yet dropped
        lists = [
            (pl.width, pl.ids, bytes(pl.addrs), list(pl.expires), list(pl.keys), pl.seeders)
            for pl in swarm.lists()
        ]
        sweeps = [pl.sweep_at for pl in swarm.lists()]
        torrents.append((ih, swarm.downloaded, swarm.touched, lists, sweeps))
    return store.peers_held, host_counts(store), dict(store._stops), torrents


def bulk_against_one_by_one(steps: list, **bounds: int) -> None:
    """Run ``steps`` on two stores, one merging each batch with ``merge_many``, the other
    with ``merge`` change by change: the same changes applied, the same stores."""
    from tests.conftest import ManualClock
    from wsgi_tracker.sync.frames import peer_rows

    stores = [SwarmStore(peer_ttl=100, sweep_every=60, clock=ManualClock(), **bounds) for _ in "ab"]
    bulk, single = stores
    for what, arg, changes in steps:
        if what == "advance":
            for s in stores:
                s.clock.advance(arg)
            continue
        if what == "expire":
            for s in stores:
                s.expire()
            continue
        now = bulk.clock()
        batch = [
            PeerChange(b"%020d" % t, pid(p), ep, seeder, event, now + dt, key)
            for t, p, ep, seeder, event, dt, key in changes
        ]
        if what == "local":
            for s in stores:
                for change in batch:
                    with contextlib.suppress(swarm_module.PeerRefused):
                        s.apply(change)
            continue
        news: list = []
        applied = bulk.merge_many(peer_rows(batch), state=arg, news=news)
        one_by_one = [c for c in batch if single.merge(c, state=arg)]
        assert applied == len(one_by_one)
        assert [PeerChange(r[0], r[1], r[5], bool(r[3] & 1), r[4], r[2], r[6]) for r in news] == (
            one_by_one
        )
        assert store_state(bulk) == store_state(single)


@settings(max_examples=300)
@given(merge_steps(remote_changes(5, st.sampled_from(MERGE_ENDPOINTS)), 12))
def test_merging_in_bulk_gives_the_store_merging_one_by_one_gives(steps):
    """``merge_many``'s fast paths (a refresh, a newcomer, a change that is not newer)
    against the general ``merge`` of each change, with bounds small enough to refuse and
    evict."""
    bulk_against_one_by_one(
        steps,
        max_torrents=2,
        max_peers_per_torrent=3,
        max_peers_per_address=2,
        max_peers=5,
        max_peers_per_host=3,
    )


# Lists past SMALL_LIST (indexed), from a few addresses (the per-address bound counted).
# One family: a torrent with peers of both takes ``merge`` (the dual-stack identity rule).
CROWD_ENDPOINTS = st.builds(v4, st.integers(1, 3), st.sampled_from([6881, 7000]))


@settings(max_examples=200)
@given(merge_steps(remote_changes(40, CROWD_ENDPOINTS, torrents=2), 80, least=20))
def test_merging_in_bulk_into_large_lists_gives_what_one_by_one_gives(steps):
    """The same, through lists that grow past ``SMALL_LIST`` and up to the bounds."""
    bulk_against_one_by_one(
        steps,
        max_torrents=3,
        max_peers_per_torrent=30,
        max_peers_per_address=20,
        max_peers=70,
        max_peers_per_host=30,
    )


def test_one_address_cannot_fill_the_store(clock):
    """16 peers in each of many made-up torrents from one address filled ``max_peers``
    and every other client's newcomer was refused (an attack pass): the address's peers
    over all torrents are bounded (``max_peers_per_host``), by announce and by sync."""
    from wsgi_tracker.sync.frames import peer_rows

    store = SwarmStore(max_peers=100, max_peers_per_host=20, clock=clock)
    torrents = [bytes([n]) * 20 for n in range(5)]
    for ih in torrents[:4]:
        for n in range(5):
            store.apply(PeerChange(ih, pid(n), v4(9, 1000 + n), False, EVENT_NONE, clock()))
    with pytest.raises(AddressFull, match="over all torrents"):
        store.apply(PeerChange(torrents[4], pid(0), v4(9, 2000), False, EVENT_NONE, clock()))
    # ... nor by sync: a remote change past the bound is refused as a local one is
    late = PeerChange(torrents[4], pid(1), v4(9, 2001), False, EVENT_NONE, clock())
    assert store.merge_many(peer_rows([late])) == 0
    # ... nor by moving there with its key: the address it leaves gets the place back
    store.apply(PeerChange(torrents[4], pid(7), v4(8), False, EVENT_NONE, clock(), key=5))
    with pytest.raises(AddressFull, match="over all torrents"):
        store.apply(PeerChange(torrents[4], pid(7), v4(9, 3000), False, EVENT_NONE, clock(), 5))
    # Everyone else is served; a stop frees the address a place.
    store.apply(PeerChange(torrents[4], pid(8), v4(10), False, EVENT_NONE, clock()))
    store.apply(PeerChange(torrents[0], pid(0), v4(9, 1000), False, EVENT_STOPPED, clock()))
    store.apply(PeerChange(torrents[4], pid(0), v4(9, 2000), False, EVENT_NONE, clock()))
    assert host_counts(store)[swarm_module.host_bucket(v4(9))] == 20
    assert store.peers_held == 22


def test_merge_many_takes_a_slice(store, clock):
    from wsgi_tracker.sync.frames import peer_rows

    now = clock()
    rows = peer_rows([PeerChange(IH, pid(n), v4(n), False, EVENT_NONE, now) for n in range(5)])
    assert store.merge_many(rows, 1, 3) == 2
    assert store.get(IH).v4.ids == [pid(1), pid(2)]
    assert store.merge_many(rows, 3) == 2
    assert len(store.get(IH)) == 4
