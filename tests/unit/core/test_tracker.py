"""TrackerCore: the announce/scrape policy both protocols share."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.addresses import pack_ip
from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STARTED,
    EVENT_STOPPED,
    Announce,
    PeerChange,
    ScrapeEntry,
)

IH = b"t" * 20
V4_CLIENT = pack_ip("127.0.0.1")
V6_CLIENT = pack_ip("::1")


def pid(n: int) -> bytes:
    return b"-CORE--%013d" % n


def v4ip(n: int) -> bytes:
    return bytes([10, 1, n >> 8 & 255, n & 255])


def v6ip(n: int) -> bytes:
    """A host in its own /64: a /64 is one address to the per-address limit."""
    return b"\xfd" + bytes(5) + n.to_bytes(2, "big") + bytes(7) + b"\x01"


@pytest.fixture
def core(clock) -> TrackerCore:
    return TrackerCore(TrackerConfig(), clock=clock, rng=random.Random(7))


def join(core, n, ip=None, *, left=1, event=EVENT_NONE, numwant=None, ih=IH, **kw):
    req = Announce(
        ih, pid(n), 6881, left=left, event=event, numwant=numwant, ip=kw.pop("ip_param", None)
    )
    return core.announce(req, ip or v4ip(n), **kw)


def entries(packed: bytes, width: int) -> list[bytes]:
    return [packed[i : i + width] for i in range(0, len(packed), width)]


def ports_of(packed: bytes, width: int) -> set[bytes]:
    return {e[:-2] for e in entries(packed, width)}


def test_numwant_defaults_to_50_and_is_capped_at_200(core):
    for n in range(300):
        join(core, n)
    assert len(join(core, 1000).peers) == 50 * 6
    assert len(join(core, 1000, numwant=1000).peers) == 200 * 6
    assert len(join(core, 1000, numwant=7).peers) == 7 * 6
    assert join(core, 1000, numwant=0).peers == b""


def test_reply_carries_both_families_within_numwant(core):
    for n in range(40):
        join(core, n, v4ip(n))
        join(core, 100 + n, v6ip(n))
    result = join(core, 1000, v4ip(999), numwant=60)
    assert result.peers and result.peers6
    assert len(result.peers) // 6 + len(result.peers6) // 18 == 60
    assert len(result.peers) // 6 == 40, "the requester's own family comes first"
    assert (result.complete, result.incomplete) == (0, 81)


def test_udp_reply_carries_only_the_requesters_family(core):
    join(core, 1, v4ip(1))
    join(core, 2, v6ip(2))
    result = join(core, 3, v6ip(3), both_families=False)
    assert result.peers == b""
    assert entries(result.peers6, 18) == [v6ip(2) + (6881).to_bytes(2, "big")]


def test_peer_is_never_handed_itself_in_either_family(core):
    join(core, 1, v4ip(1))
    join(core, 1, v6ip(1))  # the same client, dual-stack
    result = join(core, 1, v4ip(1))
    assert (result.peers, result.peers6) == (b"", b"")
    join(core, 2, v4ip(2))
    result = join(core, 1, v6ip(1))
    assert ports_of(result.peers, 6) == {v4ip(2)} and result.peers6 == b""


def test_seeder_gets_leechers_only(core):
    for n in range(5):
        join(core, n, left=0)
    for n in range(5, 8):
        join(core, n)
    result = join(core, 99, left=0)
    assert ports_of(result.peers, 6) == {v4ip(n) for n in range(5, 8)}


def test_leecher_gets_seeders_first(core):
    for n in range(10):
        join(core, n, left=0)
    for n in range(10, 100):
        join(core, n)
    result = join(core, 500, numwant=15)
    got = ports_of(result.peers, 6)
    assert {v4ip(n) for n in range(10)} <= got
    assert len(got) == 15


def test_peer_ids_come_with_the_peers_when_asked(core):
    for n in range(5):
        join(core, n)
    result = join(core, 9, with_ids=True)
    assert len(result.peer_ids) == 5
    by_ip = dict(zip(entries(result.peers, 6), result.peer_ids, strict=True))
    assert all(by_ip[v4ip(n) + (6881).to_bytes(2, "big")] == pid(n) for n in range(5))
    assert join(core, 9).peer_ids is None


def test_stopped_gets_counts_but_no_peers(core):
    join(core, 1, left=0)
    join(core, 2)
    result = join(core, 2, event=EVENT_STOPPED)
    assert (result.peers, result.peers6, result.complete, result.incomplete) == (b"", b"", 1, 0)


def test_stop_in_another_peers_name_is_refused(core):
    join(core, 1, v4ip(1))
    join(core, 66, v4ip(66), with_ids=True)  # learns peer 1's id from the reply...
    stop = Announce(IH, pid(1), 6881, left=1, event=EVENT_STOPPED)
    with pytest.raises(TrackerError, match="only the peer itself may stop it"):
        core.announce(stop, v4ip(66))  # ...and tries to stop it from its own address
    assert ports_of(join(core, 2).peers, 6) == {v4ip(1), v4ip(66)}
    assert core.counters.errors[("http", "peer_identity")] == 1


def test_interval_jitter_stays_within_its_bounds(clock):
    core = TrackerCore(
        TrackerConfig(interval=1000, interval_jitter=50, min_interval=500), clock=clock
    )
    seen = {join(core, n % 5).interval for n in range(2000)}
    assert min(seen) >= 1000 and max(seen) <= 1050
    assert len(seen) > 25, "the jitter should spread intervals out"
    result = join(core, 1)
    assert result.min_interval == 500
    steady = TrackerCore(TrackerConfig(interval_jitter=0), clock=clock)
    assert {join(steady, n).interval for n in range(20)} == {1800}


def test_completed_counts_once_and_listeners_hear_it(core):
    heard = []
    core.listeners.append(lambda change, counted, _: heard.append((change.event, counted)))
    join(core, 1, event=EVENT_STARTED)
    join(core, 1, left=0, event=EVENT_COMPLETED)
    join(core, 1, left=0, event=EVENT_COMPLETED)
    assert heard == [(EVENT_STARTED, False), (EVENT_COMPLETED, True), (EVENT_COMPLETED, False)]
    assert core.scrape([IH, b"u" * 20]) == [
        ScrapeEntry(IH, 1, 1, 0),
        ScrapeEntry(b"u" * 20, 0, 0, 0),
    ]


@pytest.mark.parametrize("crowd", [0, 20], ids=["one peer", "a listed torrent"])
def test_a_re_announce_inside_the_grain_changes_nothing_and_tells_nobody(clock, crowd):
    """A peer re-announcing sooner than ``refresh_grain`` after its expiry was last written
    is answered, and counted, but its expiry stays and no listener (sync) hears of it:
    what it would ship moves nothing a reader can see. Past the grain it is a refresh
    again; an event, a seeder flip or a new port inside it are changes as ever."""
    core = TrackerCore(TrackerConfig(), clock=clock, rng=random.Random(7))
    grain = core.store.refresh_grain
    assert grain == 30.0  # min(30 s, peer_ttl / 100) at the default peer_ttl
    for n in range(crowd):
        join(core, 100 + n)
    join(core, 1, event=EVENT_STARTED)
    heard: list[tuple[PeerChange, float]] = []
    core.listeners.append(lambda change, counted, refreshed: heard.append((change, refreshed)))

    def expiry() -> float:
        pl = core.store.peek(IH).v4
        return pl.expires[pl.slot(pid(1))]

    written = expiry()
    clock.advance(grain - 1)
    before = core.counters.announces["http"]
    result = join(core, 1)
    assert core.counters.announces["http"] == before + 1
    assert (result.complete, result.incomplete) == (0, crowd + 1)
    assert expiry() == written and core.store.unchanged
    assert not heard
    join(core, 1, left=0)  # a seeder flip inside the grain: a change
    assert core.store.peek(IH).complete == 1
    assert [c.seeder for c, _ in heard] == [True]
    written = expiry()
    clock.advance(grain)
    join(core, 1, left=0)  # a grain after the last write: a refresh, told
    assert expiry() == written + grain
    assert [r for _, r in heard] == [0.0, written]
    join(core, 1, left=0, event=EVENT_COMPLETED)  # an event inside the grain: told
    join(core, 1, left=0, event=EVENT_STOPPED)
    assert [c.event for c, _ in heard[2:]] == [EVENT_COMPLETED, EVENT_STOPPED]


def test_the_grain_is_a_hundredth_of_a_short_peer_ttl(clock):
    """A short ``peer_ttl`` (a test's, a private tracker's) keeps its slack: the grain is
    at most a hundredth of it, so re-announcing on the interval always refreshes."""
    core = TrackerCore(TrackerConfig(interval=10, min_interval=5, peer_ttl=20), clock=clock)
    assert core.store.refresh_grain == 0.2
    join(core, 1)
    for _ in range(5):
        clock.advance(10)
        join(core, 1)
    clock.advance(19)
    core.store.expire()
    assert ports_of(join(core, 2).peers, 6) == {v4ip(1)}


def test_listeners_get_a_peer_change_with_every_field_in_place(clock):
    """The core makes its PeerChange without the NamedTuple's __new__ (speed): it must
    still be a PeerChange whose fields read by name what the announce said."""
    heard = []
    core = TrackerCore(TrackerConfig(), clock=clock)
    core.listeners.append(lambda change, counted, _: heard.append(change))
    core.announce(Announce(IH, pid(7), 6881, left=0, event=EVENT_STARTED, key=0xBEEF), V4_CLIENT)
    (change,) = heard
    assert type(change) is PeerChange
    assert change == PeerChange(
        info_hash=IH,
        peer_id=pid(7),
        endpoint=V4_CLIENT + (6881).to_bytes(2, "big"),
        seeder=True,
        event=EVENT_STARTED,
        timestamp=clock(),
        key=0xBEEF,
    )
    assert change._fields == PeerChange._fields and change.key == 0xBEEF


def test_ip_parameter_is_ignored_unless_allowed(clock):
    strict = TrackerCore(TrackerConfig(), clock=clock)
    join(strict, 1, v4ip(1), ip_param="192.0.2.7")
    assert ports_of(join(strict, 2).peers, 6) == {v4ip(1)}
    trusting = TrackerCore(TrackerConfig(allow_ip_param=True), clock=clock)
    join(trusting, 1, v4ip(1), ip_param="192.0.2.7")
    assert ports_of(join(trusting, 2).peers, 6) == {pack_ip("192.0.2.7")}
    with pytest.raises(TrackerError, match="invalid ip"):
        join(trusting, 3, ip_param="not-an-ip")


def test_full_swarm_is_a_clean_tracker_error(clock):
    core = TrackerCore(TrackerConfig(max_peers_per_torrent=2), clock=clock)
    join(core, 1)
    join(core, 2)
    with pytest.raises(TrackerError, match="swarm is full"):
        join(core, 3)
    assert join(core, 1).incomplete == 2


def test_full_scrape_only_when_enabled(clock):
    core = TrackerCore(TrackerConfig(), clock=clock)
    join(core, 1)
    with pytest.raises(TrackerError, match="full scrape is disabled"):
        core.full_scrape()
    core = TrackerCore(TrackerConfig(full_scrape=True), clock=clock)
    join(core, 1, ih=b"a" * 20)
    join(core, 2, ih=b"b" * 20, left=0)
    assert sorted(core.full_scrape(), key=lambda e: e.info_hash) == [
        ScrapeEntry(b"a" * 20, 0, 0, 1),
        ScrapeEntry(b"b" * 20, 1, 0, 0),
    ]


def test_peers_expire_after_the_configured_ttl(clock):
    core = TrackerCore(TrackerConfig(interval=100, min_interval=50, peer_ttl=250), clock=clock)
    join(core, 1)
    clock.advance(249)
    assert len(join(core, 2).peers) == 6
    clock.advance(100)  # peer 1 last seen 349 s ago, peer 2 100 s ago
    core.store.expire()
    assert ports_of(join(core, 3).peers, 6) == {v4ip(2)}


def test_ipv6_client_is_stored_as_ipv6(core):
    join(core, 1, V6_CLIENT)
    assert core.store.get(IH).v6 is not None and core.store.get(IH).v4 is None


@given(
    st.lists(
        st.tuples(
            st.integers(0, 11),  # peer
            st.booleans(),  # IPv6 address
            st.booleans(),  # seeder (left == 0)
            st.sampled_from([EVENT_NONE, EVENT_STARTED, EVENT_COMPLETED, EVENT_STOPPED]),
            st.none() | st.integers(0, 15),  # numwant
            st.booleans(),  # both families (HTTP) or one (UDP)
        ),
        max_size=40,
    ),
    st.integers(0, 2**32),
)
def test_every_reply_obeys_the_policy(ops, seed):
    """Random announces: no reply hands out its requester, a duplicate, a seeder to a
    seeder, more than numwant peers, or a leecher before a seeder it could have had."""
    cfg = TrackerConfig(numwant_default=5, numwant_max=8)
    core = TrackerCore(cfg, rng=random.Random(seed))
    address = {}  # compact endpoint -> (peer, is seeder), as last announced
    for n, v6, seeder, event, numwant, both in ops:
        ip = v6ip(n) if v6 else v4ip(n)
        req = Announce(IH, pid(n), 6881, left=0 if seeder else 5, event=event, numwant=numwant)
        result = core.announce(req, ip, both_families=both)
        ep = ip + (6881).to_bytes(2, "big")
        if event == EVENT_STOPPED:  # gone from the family it stopped in
            address.pop(ep, None)
            assert (result.peers, result.peers6) == (b"", b"")
        else:
            address[ep] = (n, seeder)
        got = entries(result.peers, 6) + entries(result.peers6, 18)
        if not both:
            assert (result.peers if v6 else result.peers6) == b""
        assert len(got) == len(set(got)), "a peer twice in one reply"
        assert all(address[e][0] != n for e in got), "a peer handed itself"
        want = min(5 if numwant is None else numwant, 8)
        assert len(got) <= want
        if event == EVENT_STOPPED:
            continue
        if seeder:
            assert not any(address[e][1] for e in got), "a seeder sent a seeder"
        candidates = {
            e: s
            for e, (p, s) in address.items()
            if p != n and (both or len(e) == len(ep)) and not (seeder and s)
        }
        assert len(got) == min(want, len(candidates))
        own = [e for e in got if len(e) == len(ep)]
        own_seeders = sum(1 for e, s in candidates.items() if s and len(e) == len(ep))
        if not seeder:
            assert sum(address[e][1] for e in own) == min(len(own), own_seeders), (
                "a leecher is sent seeders first"
            )
    complete, _, incomplete = core.store.scrape(IH)
    assert complete == sum(s for _, s in address.values())
    assert incomplete == sum(not s for _, s in address.values())
