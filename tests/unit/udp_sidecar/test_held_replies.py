"""A UDP socket's replies held for their batch's changes to settle (``_HeldReplies``):
in order, each after its own wait, and never further ahead than ``HELD_BATCHES``.

No sockets: ``sendto`` is a list's append and each batch's waiter an Event.
"""

from __future__ import annotations

import gevent
from gevent.event import Event

from udp_sidecar.server import HELD_BATCHES, _HeldReplies

ADDR = ("127.0.0.1", 6881)


def held_with_log() -> tuple[_HeldReplies, list[bytes], gevent.Greenlet]:
    sent: list[bytes] = []
    held = _HeldReplies(lambda reply, _addr: sent.append(reply))
    return held, sent, gevent.spawn(held.run)


def test_replies_wait_for_their_batch_and_keep_their_order() -> None:
    held, sent, runner = held_with_log()
    try:
        first, second = Event(), Event()
        held.add(first.wait, [(b"a1", ADDR), (b"a2", ADDR)])
        held.add(second.wait, [(b"b1", ADDR)])
        held.add(None, [(b"c1", ADDR)])  # settled already, but behind the others
        gevent.sleep(0.01)
        assert sent == []
        second.set()  # a later batch settling first still waits its turn
        gevent.sleep(0.01)
        assert sent == []
        first.set()
        gevent.sleep(0.01)
        assert sent == [b"a1", b"a2", b"b1", b"c1"]
        assert not held.batches
    finally:
        runner.kill()


def test_the_loop_waits_once_held_batches_are_that_many() -> None:
    held, sent, runner = held_with_log()
    gate = Event()
    added: list[int] = []

    def loop() -> None:
        for n in range(HELD_BATCHES + 4):
            held.add(gate.wait, [(b"%d" % n, ADDR)])
            added.append(n)

    producer = gevent.spawn(loop)
    try:
        gevent.sleep(0.01)
        assert len(added) == HELD_BATCHES - 1  # the next add waits for room
        assert sent == []
        gate.set()
        producer.join(timeout=5)
        gevent.sleep(0.01)
        assert sent == [b"%d" % n for n in range(HELD_BATCHES + 4)]
    finally:
        producer.kill()
        runner.kill()


def test_a_full_send_buffer_drops_that_reply_only() -> None:
    sent: list[bytes] = []

    def sendto(reply: bytes, _addr: tuple) -> None:
        if reply == b"x":
            raise BlockingIOError
        sent.append(reply)

    held = _HeldReplies(sendto)
    runner = gevent.spawn(held.run)
    try:
        held.add(None, [(b"x", ADDR), (b"y", ADDR)])
        gevent.sleep(0.01)
        assert sent == [b"y"]
    finally:
        runner.kill()


def test_a_wait_that_raises_still_lets_the_replies_go(caplog) -> None:
    held, sent, runner = held_with_log()

    def broken() -> None:
        raise RuntimeError("a bug in a waiter")

    try:
        held.add(broken, [(b"a", ADDR)])
        held.add(None, [(b"b", ADDR)])
        gevent.sleep(0.01)
        assert sent == [b"a", b"b"]
        assert "bug: waiting for a batch's changes to settle raised" in caplog.text
    finally:
        runner.kill()
