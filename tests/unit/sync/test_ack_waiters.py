"""Read-your-writes waiting (``SyncClient.wait_for``): an ack wakes the replies of the
batches it covers, and no other; losing the hub releases every reply.

Real threads wait; the acks are what the reader calls when an Ack frame arrives.
No hub is needed for this part, so none is started.
"""

from __future__ import annotations

import threading

from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.sync.client import SyncClient

WAIT = 30.0  # only an unacked wait would take it; every wait here is acked or released


def waiting_client() -> SyncClient:
    client = SyncClient(TrackerCore(), "/nonexistent/sync.sock")
    client.connected = True  # as after a join: replies wait for acks
    return client


def start_waiting(client: SyncClient, tokens: list[int]) -> tuple[list[threading.Thread], dict]:
    results: dict[int, list[bool]] = {t: [] for t in tokens}
    threads = []
    for token in tokens:
        thread = threading.Thread(
            target=lambda t=token: results[t].append(client.wait_for(t, WAIT)), daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads, results


def until_registered(client: SyncClient, tokens: set[int]) -> None:
    for _ in range(10_000):
        if tokens <= set(client._waiters):
            return
        threading.Event().wait(0.001)
    raise AssertionError(f"waiters never registered: {sorted(tokens - set(client._waiters))}")


def test_an_ack_wakes_the_batches_it_covers_and_no_other():
    client = waiting_client()
    threads, results = start_waiting(client, [1, 2, 2, 3])
    until_registered(client, {1, 2, 3})
    assert sorted(client._tokens) == [1, 2, 3]  # one event per batch, shared by its replies
    client._acknowledged(2)
    for thread in threads[:3]:
        thread.join(WAIT)
    assert results[1] == [True] and results[2] == [True, True]
    assert set(client._waiters) == {3} and not client._waiters[3].acked.is_set()
    assert threads[3].is_alive()
    client._acknowledged(3)
    threads[3].join(WAIT)
    assert results[3] == [True]
    assert client._waiters == {} and client._tokens == []
    assert client.ack_waits == 4 and client.ack_timeouts == 0


def test_a_batch_acked_before_the_wait_returns_at_once():
    client = waiting_client()
    client._acknowledged(5)
    assert client.wait_for(4, WAIT) and client.wait_for(5, WAIT)
    assert client._waiters == {} and client.ack_waits == 0


def test_losing_the_hub_releases_every_reply_unacked():
    client = waiting_client()
    threads, results = start_waiting(client, [7, 8])
    until_registered(client, {7, 8})
    client.connected = False
    client._wake_waiters()
    for thread in threads:
        thread.join(WAIT)
    assert results == {7: [False], 8: [False]}
    assert client.ack_timeouts == 2 and client._waiters == {}
    assert client.wait_for(9, WAIT) is False  # away: no wait at all


def test_a_batch_has_one_timer_its_first_plain_reply_holds_and_a_completion_outlasts_it():
    client = waiting_client()
    results: dict[str, list[bool]] = {"first": [], "later": [], "completion": []}

    def wait(name: str, timeout: float, patient: bool = False) -> threading.Thread:
        def run() -> None:
            results[name].append(client.wait_for(4, timeout, patient=patient))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    first = wait("first", 0.05)  # holds the batch's timer, and times out
    until_registered(client, {4})
    for _ in range(10_000):  # the first reply has taken the timer
        if client._waiters[4].timer_deadline is not None:
            break
        threading.Event().wait(0.001)
    completion = wait("completion", WAIT, patient=True)
    later = wait("later", WAIT)  # no timer of its own: released with the first
    first.join(WAIT)
    later.join(WAIT)
    assert results["first"] == [False] and results["later"] == [False]
    assert completion.is_alive()  # a completion waits for the ack itself
    client._acknowledged(4)
    completion.join(WAIT)
    assert results["completion"] == [True]
    assert client.ack_waits == 3 and client.ack_timeouts == 2
