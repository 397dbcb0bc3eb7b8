"""Shared test settings and fixtures.

Hypothesis runs without its per-example deadline: CI machines have two busy
cores, and no test here may fail on a timing. ``clock`` is a hand-driven clock
for anything that takes ``clock=`` (SwarmStore, TrackerCore).

The developer's own ``WSGI_TRACKER_*`` settings are dropped before any test runs,
so neither in-process trackers nor the servers the tests start (they inherit
this environment) depend on the shell the suite was started from.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "wsgi-tracker", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("wsgi-tracker")

for _name in [n for n in os.environ if n.startswith("WSGI_TRACKER_")]:
    del os.environ[_name]


class ManualClock:
    """A clock that moves only when told to; call it for the current time."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
