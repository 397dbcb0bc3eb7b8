"""Announce accounting: the delta rule, the ledger, and the Reports frame that carries it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.access.hooks import EVENT_EXPIRED, AnnounceEvent
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.accounting import Ledger, counter_delta
from wsgi_tracker.core.addresses import endpoint, pack_ip
from wsgi_tracker.core.tracker import Announce, TrackerCore
from wsgi_tracker.core.types import EVENT_COMPLETED, EVENT_STARTED, EVENT_STOPPED, AnnounceReport
from wsgi_tracker.sync import frames as f

IH = bytes.fromhex("77" * 20)
PEER = b"-LT2110-accounting01"
HOME = endpoint(pack_ip("127.0.0.1"), 6881)
ELSEWHERE = endpoint(pack_ip("127.0.0.9"), 6881)


def report(
    t: float, up: int = 0, down: int = 0, left: int = 100, event: int = 0, **kw
) -> AnnounceReport:
    fields = {"user": "alice", "endpoint": HOME, "protocol": "http", "peer_id": PEER}
    fields.update(kw)
    return AnnounceReport(
        IH, fields["peer_id"], fields["user"], fields["endpoint"], fields["protocol"],
        up, down, left, event, t,
    )  # fmt: skip


@pytest.fixture
def ledger() -> tuple[Ledger, list[AnnounceEvent]]:
    events: list[AnnounceEvent] = []
    return Ledger(events.append, peer_ttl=100), events


def feed(led: Ledger, r: AnnounceReport) -> None:
    """One report, accounted at once (as if it arrived long after it was made)."""
    led.record(r)
    led.settle(float("inf"))


def credits(events: list[AnnounceEvent]) -> list[tuple]:
    return [
        (e.event, e.uploaded_delta, e.downloaded_delta, e.seeding_seconds, e.leeching_seconds)
        for e in events
    ]


def test_counter_delta_credits_growth_only():
    assert counter_delta(100, 250) == 150
    assert counter_delta(100, 100) == 0
    assert counter_delta(100, 40) == 0  # a restarted client: nothing, and 40 is the new base


def test_deltas_and_time_since_the_previous_announce_split_by_what_the_peer_was(ledger):
    led, events = ledger
    feed(led, report(1000.0, event=EVENT_STARTED))
    feed(led, report(1030.0, up=500, down=4000, left=60))
    feed(led, report(1040.0, up=900, down=10_000, left=0, event=EVENT_COMPLETED))
    feed(led, report(1100.0, up=5000, down=10_000, left=0))
    feed(led, report(1110.0, up=5100, down=10_000, left=0, event=EVENT_STOPPED))
    assert credits(events) == [
        (EVENT_STARTED, 0, 0, 0.0, 0.0),
        (0, 500, 4000, 0.0, 30.0),
        (EVENT_COMPLETED, 400, 6000, 0.0, 10.0),
        (0, 4100, 0, 60.0, 0.0),
        (EVENT_STOPPED, 100, 0, 10.0, 0.0),
    ]
    assert len(led) == 0  # stopped: the session is over
    assert (events[0].ip, events[0].port, events[0].protocol) == ("127.0.0.1", 6881, "http")


def test_a_counter_that_goes_backwards_credits_nothing_and_is_the_new_baseline(ledger):
    led, events = ledger
    feed(led, report(1.0, up=1000, down=1000))
    feed(led, report(2.0, up=50, down=2000))  # the client restarted its upload count
    feed(led, report(3.0, up=80, down=2500))
    assert [(e.uploaded_delta, e.downloaded_delta) for e in events] == [
        (0, 0),
        (0, 1000),
        (30, 500),
    ]


def test_after_a_stop_the_next_announce_is_a_first_one(ledger):
    led, events = ledger
    feed(led, report(1.0, up=10))
    feed(led, report(2.0, up=20, event=EVENT_STOPPED))
    feed(led, report(3.0, up=500, event=EVENT_STARTED))
    assert [e.uploaded_delta for e in events] == [0, 10, 0]


def test_a_silent_peer_expires_with_its_last_figures(ledger):
    led, events = ledger
    feed(led, report(1000.0, up=10, left=0))
    feed(led, report(1050.0, up=20, left=0, peer_id=b"-LT2110-accounting02"))
    assert led.expire(1099.0) == 0
    assert led.expire(1101.0) == 1  # the first peer's TTL (100 s) has run out
    expired = events[-1]
    assert (expired.event, expired.peer_id, expired.uploaded, expired.timestamp) == (
        EVENT_EXPIRED, PEER, 10, 1100.0,
    )  # fmt: skip
    assert (expired.uploaded_delta, expired.seeding_seconds) == (0, 0.0)
    assert len(led) == 1


def test_the_same_announce_twice_counts_once_and_a_late_one_credits_nothing(ledger):
    led, events = ledger
    feed(led, report(10.0, up=100))
    feed(led, report(20.0, up=300))
    feed(led, report(20.0, up=300))  # a batch re-sent after a lost connection
    feed(led, report(15.0, up=200))  # arrived late from another process
    feed(led, report(30.0, up=400))
    assert [(e.timestamp, e.uploaded_delta) for e in events] == [
        (10.0, 0), (20.0, 200), (15.0, 0), (30.0, 100),
    ]  # fmt: skip
    assert led.duplicates == 1


def test_reports_are_accounted_in_the_order_they_were_made_not_received(ledger):
    led, events = ledger
    feed(led, report(10.0, up=100))
    led.record(report(30.002, up=80, event=EVENT_STOPPED))  # the sidecar's, at once
    led.record(report(30.0, up=50))  # a worker's, 2 ms behind: the client had restarted
    led.settle(30.5)  # within the reorder window: nothing yet
    assert len(events) == 1
    led.settle(32.0)
    assert [(e.timestamp, e.uploaded_delta) for e in events] == [
        (10.0, 0), (30.0, 0), (30.002, 30),
    ]  # fmt: skip
    led.record(report(25.0, up=60))  # far too late, after the stop: no ghost session
    led.settle(100.0)
    assert events[-1].uploaded_delta == 0 and len(led) == 0


def test_another_users_announce_for_the_peer_starts_afresh(ledger):
    led, events = ledger
    feed(led, report(1.0, up=100))
    feed(led, report(2.0, up=10_000, user="mallory"))
    assert [e.uploaded_delta for e in events] == [0, 0]


def test_a_stop_from_another_host_does_not_end_the_session(ledger):
    led, events = ledger
    feed(led, report(1.0, up=100))
    feed(led, report(2.0, up=100, event=EVENT_STOPPED, endpoint=ELSEWHERE))
    feed(led, report(3.0, up=150))
    assert [e.uploaded_delta for e in events] == [0, 0, 50]


def test_past_its_bound_the_ledger_expires_the_oldest_peer():
    events: list[AnnounceEvent] = []
    led = Ledger(events.append, peer_ttl=100, max_peers=2)
    for n in range(3):
        feed(led, report(float(n), peer_id=b"-LT2110-accounting%02d" % n))
    assert len(led) == 2
    assert (events[-1].event, events[-1].peer_id) == (EVENT_EXPIRED, b"-LT2110-accounting00")


@given(st.lists(st.lists(st.integers(0, 2**40), min_size=1, max_size=8), min_size=1, max_size=5))
def test_credit_is_the_growth_within_each_client_session(sessions):
    """Each session counts up from its own start; a restart only ever loses nothing
    already credited and credits nothing twice."""
    events: list[AnnounceEvent] = []
    led = Ledger(events.append, peer_ttl=10**9)
    t = 0.0
    expected = 0
    previous_last = None
    for session in sessions:
        counts = sorted(session)
        if previous_last is not None and counts[0] >= previous_last:
            expected += counts[0] - previous_last  # no visible restart: it is growth
        expected += counts[-1] - counts[0]
        for c in counts:
            t += 1.0
            feed(led, report(t, up=c))
        previous_last = counts[-1]
    assert sum(e.uploaded_delta for e in events) == expected


def test_a_standalone_core_accounts_http_and_udp_alike(clock):
    events: list[AnnounceEvent] = []
    core = TrackerCore(TrackerConfig(), clock=clock, on_announce=events.extend)
    client = pack_ip("127.0.0.1")
    core.announce(Announce(IH, PEER, 6881, uploaded=5, left=9, event=EVENT_STARTED), client)
    clock.advance(60)
    core.announce(Announce(IH, PEER, 6881, uploaded=905, left=9), client, protocol="udp")
    core.hook.close()
    assert [(e.protocol, e.uploaded_delta, e.leeching_seconds) for e in events] == [
        ("http", 0, 0.0),
        ("udp", 900, 60.0),
    ]


# --- the Reports frame ----------------------------------------------------------------------

users = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=40))
endpoints = st.one_of(st.binary(min_size=6, max_size=6), st.binary(min_size=18, max_size=18))
reports = st.builds(
    AnnounceReport,
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
    users,
    endpoints,
    st.sampled_from(["http", "udp"]),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),
    st.integers(0, 3),
    st.floats(0, 2**31, allow_nan=False),
)


@given(st.lists(reports, max_size=20))
def test_reports_frames_round_trip(batch):
    assert f.decode_all(f.encode(f.Reports(batch))) == ([f.Reports(batch)] if batch else [])


@given(st.binary(max_size=300))
def test_a_bad_reports_body_is_a_frame_error_naming_the_field(body):
    wire = f._frame(f.KIND_REPORTS, body)
    try:
        f.decode_all(wire)
    except f.FrameError as exc:
        assert "report" in str(exc)


def test_a_user_id_that_is_not_an_int_or_text_crosses_as_text_and_long_ones_are_refused():
    odd = report(1.0, user=("team", 7))
    (frame,) = f.decode_all(f.encode(f.Reports([odd])))
    assert frame.reports[0].user == "('team', 7)"
    assert not f.fits_the_wire("x" * (f.MAX_USER_BYTES + 1))
