"""One process's request counters: plain ints the core bumps under its lock.

They live in the core (not in stats) because the core counts as it answers;
the stats layer only reads them.
"""

from __future__ import annotations

PROTOCOLS = ("http", "udp")


class Counters:
    """One process's request counters, by protocol; errors by (protocol, kind)."""

    __slots__ = ("announces", "errors", "scrapes")

    def __init__(self) -> None:
        self.announces = dict.fromkeys(PROTOCOLS, 0)
        self.scrapes = dict.fromkeys(PROTOCOLS, 0)
        self.errors: dict[tuple[str, str], int] = {}

    def error(self, protocol: str, kind: str) -> None:
        key = (protocol, kind)
        self.errors[key] = self.errors.get(key, 0) + 1
