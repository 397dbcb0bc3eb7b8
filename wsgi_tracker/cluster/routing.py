"""Which node holds a WebSocket peer's socket: holder numbers for the other nodes' processes.

A WebSocket peer's holder is the pid of the process holding its socket
(core/ws_swarm.py), and a pid names a process on one machine only: node B's
worker 4242 and node A's worker 4242 are different processes. So a node hands
its hub and workers the other nodes' peers with each holder rewritten to an
*alias*, a number at or above ``ALIAS_BASE`` that no pid reaches (Linux's
``pid_max`` is at most 2**22). A relay to an alias finds no local process, so
the hub passes it to ``relay_elsewhere``; the node turns the alias back into
(node, pid) and addresses that node's inbox with the pid it knows.

Sans-IO: no Redis; the clock is passed in. The table holds one entry per
(node, pid) seen, and a node that has left the cluster is forgotten
(``departed``, ``forget``), so it stays the size of the live cluster's
worker count.
"""

from __future__ import annotations

from wsgi_tracker.sync import frames as f

ALIAS_BASE = 1 << 31
MAX_ALIASES = 1 << 20  # (node, pid) pairs: far more than any cluster has workers


class HolderAliases:
    """(node id, pid) <-> alias, both ways, for the WebSocket peers of other nodes."""

    def __init__(self) -> None:
        self._aliases: dict[tuple[str, int], int] = {}
        self._targets: dict[int, tuple[str, int]] = {}
        self._first_seen: dict[str, float] = {}
        self._next = ALIAS_BASE

    def alias(self, node: str, pid: int, now: float) -> int:
        """This node's number for ``pid`` on ``node`` (made on first sight)."""
        key = (node, pid)
        alias = self._aliases.get(key)
        if alias is None:
            self._first_seen.setdefault(node, now)
            if len(self._aliases) >= MAX_ALIASES:
                raise f.FrameError(f"more than {MAX_ALIASES} remote WebSocket holders")
            alias = self._next
            self._next += 1
            self._aliases[key] = alias
            self._targets[alias] = key
        return alias

    def target(self, alias: int) -> tuple[str, int] | None:
        """(node id, pid) an alias stands for; None for a pid of this machine or one forgotten."""
        return self._targets.get(alias)

    def departed(self, listed: set[str], now: float, after: float) -> list[str]:
        """Nodes with aliases that are not ``listed`` (the live nodes) and were first
        seen over ``after`` seconds ago: a node that just started may not be listed yet."""
        return [n for n, t in self._first_seen.items() if n not in listed and now - t > after]

    def forget(self, node: str) -> list[int]:
        """Drop every alias of a node that left; returns them (their peers are to stop)."""
        self._first_seen.pop(node, None)
        gone = [alias for (n, _), alias in self._aliases.items() if n == node]
        for alias in gone:
            del self._aliases[self._targets.pop(alias)]
        return gone

    def localize(self, node: str, frame: f.WsPeers, now: float) -> f.WsPeers:
        """``node``'s WebSocket peers with their holders as this node's aliases."""
        return f.WsPeers(
            [c._replace(holder=self.alias(node, c.holder, now)) for c in frame.changes]
        )
