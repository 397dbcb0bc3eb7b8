"""The join conversation is a table: every frame in a wrong phase is a named error."""

from __future__ import annotations

import pytest

from wsgi_tracker.core.types import PeerChange
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.session import FROM_CLIENT, FROM_HUB, Conversation, Phase, SyncStateError

PEER = PeerChange(bytes(20), bytes(20), bytes(6), False, 0, 1.0)
ONE_OF_EACH: list[f.Frame] = [
    f.Hello(f.ROLE_WORKER, 1),
    f.Snapshot([PEER]),
    f.Totals([(bytes(20), 1)]),
    f.SnapshotDone(),
    f.Deltas([PEER]),
    f.Counts([(bytes(20), 1)]),
    f.Heartbeat(),
    f.Stats([]),
    f.WsPeers([]),
    f.WsRelay(1, bytes(20), bytes(20), "{}"),
]


def run(table, frames):
    talk = Conversation(table, "peer")
    return [talk.receive(frame) for frame in frames]


def test_a_worker_joining_a_hub_follows_both_tables():
    # What the hub sends a joining worker, deltas of others interleaved.
    hub_says = [f.Hello(f.ROLE_HUB, 1), f.Snapshot([PEER]), f.Deltas([PEER]), f.Totals([])]
    hub_says += [f.Counts([]), f.Heartbeat(), f.SnapshotDone(), f.Deltas([PEER]), f.Stats([])]
    assert run(FROM_HUB, hub_says)[-1] is Phase.LIVE
    # What the worker sends: hello, silence, its claims and replica, then its changes.
    worker_says = [f.Hello(f.ROLE_WORKER, 2), f.Heartbeat(), f.Totals([]), f.Snapshot([PEER])]
    worker_says += [f.SnapshotDone(), f.Deltas([PEER]), f.Counts([]), f.Stats([])]
    assert run(FROM_CLIENT, worker_says) == [
        Phase.JOINING,
        Phase.JOINING,
        Phase.RESENDING,
        Phase.RESENDING,
        Phase.LIVE,
        Phase.LIVE,
        Phase.LIVE,
        Phase.LIVE,
    ]


def test_a_fresh_worker_with_nothing_to_resend_goes_live_on_its_snapshot_done():
    assert run(FROM_CLIENT, [f.Hello(f.ROLE_WORKER, 2), f.SnapshotDone()])[-1] is Phase.LIVE


def test_a_live_worker_sends_its_announce_reports_to_the_hub_only():
    live = [f.Hello(f.ROLE_WORKER, 2), f.SnapshotDone(), f.Reports([])]
    assert run(FROM_CLIENT, live)[-1] is Phase.LIVE


@pytest.mark.parametrize(
    ("table", "before", "frame", "message"),
    [
        (
            FROM_CLIENT,
            [f.Hello(f.ROLE_WORKER, 2)],
            f.Deltas([PEER]),
            "Deltas frame from peer while joining",
        ),
        (FROM_CLIENT, [], f.Deltas([PEER]), "while waiting for hello"),
        (FROM_CLIENT, [f.Hello(f.ROLE_WORKER, 2)], f.Hello(f.ROLE_WORKER, 2), "Hello frame"),
        (FROM_HUB, [f.Hello(f.ROLE_HUB, 1), f.SnapshotDone()], f.Totals([]), "Totals frame"),
        (FROM_HUB, [f.Hello(f.ROLE_HUB, 1), f.SnapshotDone()], f.SnapshotDone(), "while live"),
        (FROM_CLIENT, [f.Hello(f.ROLE_WORKER, 2)], f.Reports([]), "Reports frame from peer while"),
        (FROM_HUB, [f.Hello(f.ROLE_HUB, 1), f.SnapshotDone()], f.Reports([]), "Reports frame"),
    ],
)
def test_a_frame_out_of_place_is_named(table, before, frame, message):
    talk = Conversation(table, "peer")
    for earlier in before:
        talk.receive(earlier)
    with pytest.raises(SyncStateError, match=message):
        talk.receive(frame)


@pytest.mark.parametrize("table", [FROM_HUB, FROM_CLIENT], ids=["from-hub", "from-client"])
def test_every_pair_outside_the_table_is_refused(table):
    for phase, allowed in table.items():
        for frame in ONE_OF_EACH:
            talk = Conversation(table, "peer")
            talk.phase = phase
            if type(frame) in allowed:
                assert talk.receive(frame) is allowed[type(frame)]
            else:
                with pytest.raises(SyncStateError):
                    talk.receive(frame)
