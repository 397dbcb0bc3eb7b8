"""What private trackers ask for: a client allow/deny list, and min interval enforced.

Both are core policy, so HTTP and UDP refuse alike, with a failure reason
that says what to do; started, completed and stopped always pass the
interval check (a client must be able to say it finished or left).
"""

from __future__ import annotations

import pytest

from wsgi_tracker.config import ConfigError, TrackerConfig
from wsgi_tracker.core.addresses import pack_ip
from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.core.tracker import Announce, TrackerCore
from wsgi_tracker.core.types import EVENT_COMPLETED, EVENT_STARTED, EVENT_STOPPED

IH = bytes.fromhex("6c" * 20)
CLIENT = pack_ip("127.0.0.1")
QBIT = b"-qB4630-123456789012"
USE_ONE_OF = "client not allowed: use one of these clients: -qB, -LT"
OLD_QBIT = b"-qB4100-123456789012"
STRANGER = b"-XX0001-123456789012"


def core_with(clock, **settings) -> TrackerCore:
    return TrackerCore(TrackerConfig(**settings), clock=clock)


def announce(core: TrackerCore, peer_id: bytes, event: int = 0, **kw):
    return core.announce(Announce(IH, peer_id, 6881, left=10, event=event), CLIENT, **kw)


def test_clients_not_on_the_allow_list_or_on_the_deny_list_are_refused_and_counted(clock):
    core = core_with(clock, client_allow=("-qB", "-LT"), client_deny=("-qB41",))
    announce(core, QBIT)
    with pytest.raises(
        TrackerError, match=r"client not allowed: use one of these clients: -qB, -LT"
    ):
        announce(core, STRANGER)
    with pytest.raises(TrackerError, match=r"client not allowed: peer_id -qB41\.\.\. is banned"):
        announce(core, OLD_QBIT, protocol="udp")
    assert core.counters.errors == {
        ("http", "client_not_allowed"): 1,
        ("udp", "client_not_allowed"): 1,
    }
    assert core.store.scrape(IH)[2] == 1  # only the allowed client is in the swarm


def test_a_deny_list_alone_admits_everyone_else(clock):
    core = core_with(clock, client_deny=("-XX",))
    announce(core, QBIT)
    with pytest.raises(TrackerError, match="banned"):
        announce(core, STRANGER)


def test_an_empty_prefix_is_a_configuration_error():
    with pytest.raises(ConfigError, match="client_allow must be 1-20 latin-1 characters"):
        TrackerConfig(client_allow=("",))


def test_an_early_regular_announce_is_refused_with_the_wait_and_events_always_pass(clock):
    core = core_with(clock, interval=600, min_interval=300, min_interval_enforced=True)
    announce(core, QBIT, EVENT_STARTED)
    clock.advance(10)
    with pytest.raises(
        TrackerError, match=r"announce too soon: the min interval is 300 s, wait 290 s"
    ):
        announce(core, QBIT)
    announce(core, QBIT, EVENT_COMPLETED)  # events are never too soon
    clock.advance(299.5)
    with pytest.raises(TrackerError, match="wait 1 s more"):
        announce(core, QBIT)
    clock.advance(0.5)
    announce(core, QBIT)  # 300 s after the completed announce
    announce(core, QBIT, EVENT_STOPPED)
    announce(core, QBIT)  # a peer the swarm does not hold has nothing to wait for
    assert core.counters.errors == {("http", "announce_too_soon"): 2}


def test_without_enforcement_early_announces_are_answered(clock):
    core = core_with(clock, interval=600, min_interval=300)
    announce(core, QBIT, EVENT_STARTED)
    announce(core, QBIT)
    assert not core.counters.errors
