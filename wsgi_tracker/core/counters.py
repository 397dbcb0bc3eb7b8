"""One process's request counters: plain ints the core bumps under its lock.

They live in the core (not in stats) because the core counts as it answers;
the stats layer only reads them.
"""

from __future__ import annotations

PROTOCOLS = ("http", "udp", "ws")
RELAYED = ("offer", "answer")  # what the WebSocket tracker passes between peers


class Counters:
    """One process's request counters, by protocol; errors by (protocol, kind); the
    WebSocket connections it holds and the offers and answers it relayed."""

    __slots__ = ("announces", "errors", "relayed", "scrapes", "ws_connections")

    def __init__(self) -> None:
        self.announces = dict.fromkeys(PROTOCOLS, 0)
        self.scrapes = dict.fromkeys(PROTOCOLS, 0)
        self.errors: dict[tuple[str, str], int] = {}
        self.ws_connections = 0
        self.relayed = dict.fromkeys(RELAYED, 0)

    def error(self, protocol: str, kind: str) -> None:
        key = (protocol, kind)
        self.errors[key] = self.errors.get(key, 0) + 1
