"""The WebSocket swarm and relay in one process, sockets replaced by what they were sent.

A ``Session`` only needs a callable for its outgoing text, so these tests use
the real ``WsTracker`` over a real ``TrackerCore`` with lists as sockets.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import EVENT_COMPLETED, EVENT_STOPPED, WsChange
from wsgi_tracker.core.ws_swarm import WsSwarmFull, WsSwarms
from wsgi_tracker.websocket.codec import CLOSE_INVALID, WsError
from wsgi_tracker.websocket.relay import Session, WsTracker

IH = "h" * 20


def pid(n: int) -> str:
    return f"-WW0001-{n:012d}"


class Peer:
    """A socket as the tracker sees it, and everything sent to it."""

    def __init__(self, tracker: WsTracker, n: int) -> None:
        self.tracker = tracker
        self.id = pid(n)
        self.inbox: list[dict] = []
        self.session = Session(lambda t: self.inbox.append(json.loads(t)))
        tracker.opened(self.session)

    def send(self, **msg: object) -> list[dict]:
        self.inbox.clear()
        self.tracker.handle(self.session, json.dumps(msg))
        return list(self.inbox)

    def announce(self, n_offers: int = 0, **extra: object) -> list[dict]:
        offers = [
            {"offer_id": f"{self.id[-10:]}{k:010d}", "offer": {"type": "offer", "sdp": f"{k}"}}
            for k in range(n_offers)
        ]
        fields = {"left": 10, "event": "started", "offers": offers, **extra}
        return self.send(action="announce", info_hash=IH, peer_id=self.id, **fields)


@pytest.fixture
def tracker() -> WsTracker:
    core = TrackerCore(TrackerConfig(sync_socket="off"), rng=random.Random(1))
    return WsTracker(core, rng=random.Random(2))


def scrape(peer: Peer) -> dict:
    (reply,) = peer.send(action="scrape", info_hash=IH)
    return reply["files"][IH]


def test_offers_go_to_distinct_other_peers_and_answers_come_back(tracker: WsTracker) -> None:
    peers = [Peer(tracker, n) for n in range(4)]
    for p in peers[:3]:
        assert p.announce()[0]["interval"] == 120
    for p in peers[:3]:
        p.inbox.clear()
    (reply,) = peers[3].announce(n_offers=5)
    assert (reply["complete"], reply["incomplete"]) == (0, 4)
    got = [m for p in peers[:3] for m in p.inbox]
    assert len(got) == 3  # five offers, three other peers: one each
    assert all(m["peer_id"] == peers[3].id and "offer" in m for m in got)
    receiver = next(p for p in peers[:3] if p.inbox)
    offer = receiver.inbox[0]
    peers[3].inbox.clear()
    assert (
        receiver.send(
            action="announce",
            info_hash=IH,
            peer_id=receiver.id,
            to_peer_id=peers[3].id,
            offer_id=offer["offer_id"],
            answer={"type": "answer", "sdp": "a"},
        )
        == []
    )
    assert peers[3].inbox == [
        {
            "action": "announce",
            "info_hash": IH,
            "peer_id": receiver.id,
            "offer_id": offer["offer_id"],
            "answer": {"type": "answer", "sdp": "a"},
        }
    ]
    assert tracker.counters.relayed == {"offer": 3, "answer": 1}


def test_a_seeder_offers_only_to_leechers(tracker: WsTracker) -> None:
    seeders = [Peer(tracker, n) for n in range(3)]
    leecher = Peer(tracker, 9)
    for s in seeders:
        s.announce(left=0)
    leecher.announce()
    for p in [*seeders, leecher]:
        p.inbox.clear()
    seeders[0].announce(n_offers=10, left=0)
    assert [m["peer_id"] for m in leecher.inbox] == [seeders[0].id]
    assert all(not s.inbox for s in seeders[1:])


def test_an_answer_to_an_unknown_peer_is_refused_and_changes_nothing(tracker: WsTracker) -> None:
    a = Peer(tracker, 1)
    a.announce()
    before = scrape(a)
    (reply,) = a.send(
        action="announce",
        info_hash=IH,
        peer_id=a.id,
        to_peer_id=pid(99),
        offer_id="o" * 20,
        answer={"type": "answer", "sdp": ""},
    )
    assert "answer to an unknown peer" in reply["failure reason"]
    assert scrape(a) == before
    assert tracker.counters.relayed["answer"] == 0


def test_an_answer_in_another_peers_name_is_refused(tracker: WsTracker) -> None:
    a, b = Peer(tracker, 1), Peer(tracker, 2)
    a.announce()
    b.announce()
    (reply,) = b.send(
        action="announce",
        info_hash=IH,
        peer_id=pid(3),
        to_peer_id=a.id,
        offer_id="o" * 20,
        answer={"type": "answer", "sdp": ""},
    )
    assert "has not announced" in reply["failure reason"]
    assert a.inbox == [{"action": "announce", "interval": 120, "info_hash": IH,
                        "complete": 0, "incomplete": 1}]  # fmt: skip


def test_a_peer_id_held_by_another_connection_is_refused(tracker: WsTracker) -> None:
    a, thief = Peer(tracker, 1), Peer(tracker, 2)
    a.announce()
    thief.id = a.id
    (reply,) = thief.announce(event="stopped")
    assert "in use on another connection" in reply["failure reason"]
    assert scrape(a)["incomplete"] == 1


def test_one_connection_cannot_announce_more_peers_than_its_bound() -> None:
    """One socket announcing torrent after torrent could fill the WebSocket swarms."""
    core = TrackerCore(TrackerConfig(sync_socket="off", ws_max_peers_per_connection=3))
    tracker = WsTracker(core, rng=random.Random(2))
    peer, other = Peer(tracker, 1), Peer(tracker, 2)

    def announce(who: Peer, n: int, event: str = "started") -> dict:
        (reply,) = who.send(
            action="announce", info_hash=f"{n:020d}", peer_id=who.id, left=1, event=event
        )
        return reply

    assert all("interval" in announce(peer, n) for n in range(3))
    assert announce(peer, 3)["failure reason"] == (
        "this connection holds 3 peers, the most allowed, nothing was changed"
    )
    assert core.ws.counts(f"{3:020d}".encode()) == (0, 0, 0)
    assert "interval" in announce(peer, 0)  # a known one re-announces
    announce(peer, 1, "stopped")
    assert "interval" in announce(peer, 3)  # a stop frees a place
    assert "interval" in announce(other, 4)  # the bound is per connection


def test_a_closed_socket_stops_its_peers_and_stopped_leaves_the_swarm(tracker: WsTracker) -> None:
    a, b = Peer(tracker, 1), Peer(tracker, 2)
    a.announce()
    b.announce()
    b.announce(event="stopped")
    assert scrape(a)["incomplete"] == 1
    tracker.closed(a.session)
    assert tracker.swarms.counts(IH.encode()) == (0, 0, 0)
    assert tracker.counters.ws_connections == 1


def test_completion_counts_one_download(tracker: WsTracker) -> None:
    a = Peer(tracker, 1)
    a.announce()
    a.announce(left=0, event="completed")
    a.announce(left=0, event="completed")
    assert scrape(a) == {"complete": 1, "incomplete": 0, "downloaded": 1}


def test_broken_json_raises_for_the_shell_to_close(tracker: WsTracker) -> None:
    a = Peer(tracker, 1)
    with pytest.raises(WsError) as info:
        tracker.handle(a.session, "{")
    assert info.value.close_code == CLOSE_INVALID
    assert tracker.core.counters.errors[("ws", "malformed")] == 1


def test_a_full_scrape_is_refused_unless_configured(tracker: WsTracker) -> None:
    a = Peer(tracker, 1)
    (reply,) = a.send(action="scrape")
    assert reply == {"action": "scrape", "failure reason": reply["failure reason"]}
    assert "full scrape is disabled" in reply["failure reason"]


# --- the swarm alone ---------------------------------------------------------------------


def change(n: int, ts: float, event: int = 0, seeder: bool = False, holder: int = 7) -> WsChange:
    return WsChange(b"t" * 20, pid(n).encode(), holder, seeder, event, ts)


def test_an_older_change_never_overrides_a_newer_one() -> None:
    swarms = WsSwarms(300, 10, 10)
    swarms.apply(change(1, 100.0, holder=1), 100.0)
    swarms.apply(change(1, 50.0, EVENT_STOPPED), 100.0)
    assert swarms.holder(b"t" * 20, pid(1).encode(), 101.0) == 1
    swarms.apply(change(1, 150.0, EVENT_STOPPED), 150.0)
    assert swarms.torrents == {}


def test_peers_expire_after_their_ttl() -> None:
    swarms = WsSwarms(300, 10, 10)
    swarms.apply(change(1, 100.0), 100.0)
    assert swarms.holder(b"t" * 20, pid(1).encode(), 399.0) == 7
    assert swarms.holder(b"t" * 20, pid(1).encode(), 400.0) is None
    assert swarms.targets(b"t" * 20, b"x" * 20, False, 5, random.Random(), 400.0) == []
    swarms.sweep_all(400.0)
    assert swarms.totals() == (0, 0, 0)


def test_bounds_refuse_new_peers_and_torrents_but_not_known_ones() -> None:
    swarms = WsSwarms(300, 1, 2)
    swarms.apply(change(1, 1.0), 1.0)
    swarms.apply(change(2, 1.0), 1.0)
    with pytest.raises(WsSwarmFull, match="swarm is full"):
        swarms.apply(change(3, 1.0), 1.0)
    swarms.apply(change(2, 2.0, EVENT_COMPLETED, seeder=True), 2.0)
    with pytest.raises(WsSwarmFull, match="too many torrents"):
        swarms.apply(WsChange(b"u" * 20, b"p" * 20, 1, False, 0, 1.0), 1.0)
    assert swarms.counts(b"t" * 20) == (1, 1, 1)


@given(
    st.lists(
        st.tuples(st.integers(0, 15), st.booleans(), st.sampled_from([0, 1, 2, 3])), max_size=60
    ),
    st.integers(0, 15),
    st.booleans(),
    st.integers(0, 12),
)
def test_targets_are_distinct_live_others_and_counts_match(
    ops: list[tuple[int, bool, int]], asker: int, seeder: bool, count: int
) -> None:
    swarms = WsSwarms(300, 10, 100)
    model: dict[bytes, bool] = {}
    for i, (n, is_seeder, event) in enumerate(ops):
        swarms.apply(change(n, float(i), event, is_seeder), float(i))
        if event == EVENT_STOPPED:
            model.pop(pid(n).encode(), None)
        else:
            model[pid(n).encode()] = is_seeder
    complete = sum(model.values())
    assert swarms.counts(b"t" * 20)[:2] == (complete, len(model) - complete)
    me = pid(asker).encode()
    got = swarms.targets(b"t" * 20, me, seeder, count, random.Random(0), float(len(ops)))
    ids = [peer_id for peer_id, _ in got]
    assert len(ids) == len(set(ids)) <= count
    assert me not in ids
    assert all(peer_id in model and not (seeder and model[peer_id]) for peer_id in ids)
    eligible = [p for p, s in model.items() if p != me and not (seeder and s)]
    if len(eligible) <= count:
        # Spare draws cover the asker and skipped seeders only when the swarm is small.
        assert len(ids) <= len(eligible)


def test_forget_others_keeps_own_and_known_peers_only() -> None:
    swarms = WsSwarms(peer_ttl=300, max_torrents=10, max_peers_per_torrent=10)
    ih, other = b"i" * 20, b"j" * 20
    for peer, holder, torrent in [
        (b"a" * 20, 1, ih),
        (b"b" * 20, 2, ih),
        (b"c" * 20, 2, ih),
        (b"d" * 20, 3, other),
    ]:
        swarms.apply(WsChange(torrent, peer, holder, False, 0, 10.0), 10.0)
    assert swarms.forget_others(1, {(ih, b"b" * 20)}) == 2
    assert sorted(c.peer_id for c in swarms.peers()) == [b"a" * 20, b"b" * 20]
    assert other not in swarms.torrents


def answer(frm: Peer, to: Peer, offer_id: str) -> list[dict]:
    return frm.send(
        action="announce",
        info_hash=IH,
        peer_id=frm.id,
        to_peer_id=to.id,
        offer_id=offer_id,
        answer={"type": "answer", "sdp": "a"},
    )


def test_an_answer_reaches_an_offerer_once_and_only_from_the_peer_offered(
    tracker: WsTracker,
) -> None:
    """Answers needed only a peer in the swarm: any socket could send the offerer answers
    at line rate, past its outbox, and so disconnect it."""
    offerer, target, other = Peer(tracker, 1), Peer(tracker, 2), Peer(tracker, 3)
    target.announce()
    offerer.announce(n_offers=1)
    offer = target.inbox[-1]
    assert "offer" in offer
    other.announce()  # after the offer: it got none
    refused = "answer to an unknown peer: to_peer_id is not in this swarm or made no such offer"
    offerer.inbox.clear()
    for who, offer_id in ((other, offer["offer_id"]), (target, "x" * 20)):
        (reply,) = answer(who, offerer, offer_id)
        assert reply["failure reason"].startswith(refused)
    assert offerer.inbox == []
    assert answer(target, offerer, offer["offer_id"]) == []
    assert [m["peer_id"] for m in offerer.inbox] == [target.id]
    (again,) = answer(target, offerer, offer["offer_id"])  # once
    assert again["failure reason"].startswith(refused)
    assert tracker.counters.relayed == {"offer": 1, "answer": 1}


def test_a_session_keeps_the_offers_of_its_last_two_announces() -> None:
    session = Session(lambda t: None)
    for n in range(25):
        session.offer_sent(b"%020d" % n, b"peer", kept=20)
    assert not session.answer_expected(b"%020d" % 4, b"peer")  # the oldest five are gone
    assert session.answer_expected(b"%020d" % 5, b"peer")
    assert not session.answer_expected(b"%020d" % 24, b"someone else")
    assert session.answer_expected(b"%020d" % 24, b"peer")
