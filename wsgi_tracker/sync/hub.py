"""The sync hub, run inside udp-sidecar under gevent: one replica in, every replica out.

Each client (a gunicorn worker, a tool) connects to a Unix stream socket. The
hub sends it a snapshot of its own replica, then streams every change any
other process makes. Changes a client sends are applied here and forwarded,
byte for byte, to the other clients; the sidecar's own UDP announces reach
the clients through the same ``core.listeners`` path as a worker's.

What goes out is only what a reader needs (docs/SYNC.md, "Shipping"): the hub
applies a client's changes to its own replica first, in bounded slices that
let UDP run between them, and ships at once those that change what a reader
sees; a pure refresh of a known peer only moves its expiry, and waits up to
``refresh_window`` (coalesced per peer) before it goes out.

A client never slows the hub or the others: everything sent to it waits in
its own queue, drained by its own greenlet. A client more than
``max_queue_bytes`` behind is never dropped for it: its pending changes
coalesce per peer (the newest state of each, counts summed per torrent) and
go out as it drains, so what it is owed is bounded by the peers changed, not
by the announces. Only one that reads nothing for ``dead_after`` is dropped.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import logging
import os
import socket
import stat
import struct
import termios
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, TypeVar, overload

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from wsgi_tracker.core.swarm import SwarmStore
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import (
    EVENT_NONE,
    EVENT_STOPPED,
    PeerChange,
    PeerRow,
    WsChange,
    row_change,
)
from wsgi_tracker.core.ws_swarm import WsSwarmFull
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.replica import (
    DEAD_AFTER,
    FLUSH_DELAY,
    HEARTBEAT,
    JOIN_WAIT,
    RECV_BYTES,
    REFRESH_WINDOW,
    WRITE_CHUNK,
    ChangeBuffer,
    batch_wait,
    refresh_ahead,
    walk,
)
from wsgi_tracker.sync.session import FROM_CLIENT, Conversation, Phase
from wsgi_tracker.sync.socket_path import UnsafeSocketPath, check_private, why_no_hub

log = logging.getLogger("wsgi_tracker.sync.hub")
T = TypeVar("T")

# Past this many bytes queued to a client, what it is owed coalesces per peer (~500k peer
# records: seconds of full load) instead of queueing.
MAX_QUEUE_BYTES = 32 << 20
REFRESH_TICK = 0.05  # how often the held refreshes that are due go out
# A client's changes are applied in slices this large; after about SLICE_SECONDS of
# them, what they changed goes out and UDP (and everyone else) gets the loop.
SLICE_RECORDS = 128
SLICE_SECONDS = 0.002
# A client this far behind (bytes queued here, its socket full) is not waited for by
# acks and ``settle``: one lagging process must not hold every reply up. It reads its
# backlog before it answers anything newer (docs/SYNC.md, "Read-your-writes").
ACK_LAG_BYTES = 1 << 20
# How long udp-sidecar holds a batch's replies for its changes to reach the clients.
SETTLE_WAIT = 0.03
# For this long after the hub starts, it keeps the increments it counted itself, so the
# claim of a worker it has not met is held against what it restored, not against counts
# made since (``_claim``). A worker of an earlier hub reconnects within seconds (its backoff
# is at most 2 s) and claims once its join is done (at most JOIN_WAIT).
CLAIM_WINDOW = 2 * JOIN_WAIT

# The processes that count completions, so claim totals when they are back: a tool that
# connects and leaves (a probe, a filler) leaves no record to feed (``_left``).
CLAIMING_ROLES = frozenset((f.ROLE_WORKER, f.ROLE_UDP))

# Where the changes made on this machine also go (the cluster node, wsgi_tracker/cluster/):
# called with the decoded Deltas, Snapshot (news), Counts and WsPeers frames, never blocking.
Uplink = Callable[[Sequence[f.Frame]], None]


class HubError(Exception):
    """The hub cannot listen where it was told to; the message says why."""


class Parts(NamedTuple):
    """What a fan-out carries, decoded: a lagging client coalesces these, not the bytes."""

    deltas: Sequence[PeerChange] = ()
    state: Sequence[PeerChange] = ()
    counts: Sequence[tuple[bytes, int]] = ()
    ws: Sequence[WsChange] = ()


class Backlog:
    """What a lagging client is owed, one entry per peer: the newest change of each.

    Every replica keeps the newest change per peer and a stop outranks older
    announces (``STOP_MEMORY``), so sending only the newest of a run of changes
    ends in the same replica as sending them all; counts add, so they are summed
    per torrent. A delta wins a tie with state, as ``apply_remote`` has it.
    Anything that must keep its place (a snapshot, a relay) first takes the
    whole backlog out (``take`` with no limit): only runs of deltas and counts
    are ever merged.
    """

    def __init__(self) -> None:
        self.peers: OrderedDict[tuple[bytes, bytes, int], tuple[PeerChange, bool]] = OrderedDict()
        self.ws: OrderedDict[tuple[bytes, bytes], WsChange] = OrderedDict()
        self.counts: dict[bytes, int] = {}

    def __bool__(self) -> bool:
        return bool(self.peers or self.ws or self.counts)

    def add(self, parts: Parts) -> None:
        peers = self.peers
        for changes, state in ((parts.state, True), (parts.deltas, False)):
            for change in changes:
                key = (change.info_hash, change.peer_id, len(change.endpoint))
                held = peers.get(key)
                if held is not None:
                    old, old_state = held
                    if change.timestamp < old.timestamp or (
                        change.timestamp == old.timestamp and state and not old_state
                    ):
                        continue
                peers[key] = (change, state)
        for ws in parts.ws:
            key2 = (ws.info_hash, ws.peer_id)
            had = self.ws.get(key2)
            if had is None or ws.timestamp >= had.timestamp:
                self.ws[key2] = ws
        counts = self.counts
        for ih, n in parts.counts:
            counts[ih] = counts.get(ih, 0) + n

    def take(self, limit: int | None = None) -> bytes:
        """Up to ``limit`` peers' changes (all without one), encoded, oldest entries first."""
        deltas: list[PeerChange] = []
        state: list[PeerChange] = []
        peers = self.peers
        for _ in range(len(peers) if limit is None else min(limit, len(peers))):
            change, is_state = peers.popitem(last=False)[1]
            (state if is_state else deltas).append(change)
        ws = list(self.ws.values())
        self.ws.clear()
        counts, self.counts = self.counts, {}
        return (
            f.encode(f.Deltas(deltas))
            + f.encode(f.Snapshot(state))
            + f.encode(f.Counts(list(counts.items())))
            + f.encode(f.WsPeers(ws))
        )


def is_refresh(store: SwarmStore, change: PeerChange, window: float) -> bool:
    """Whether ``change`` only moves a known peer's expiry: what no reader sees.

    The definition, read off ``store`` before the change is applied; the hub
    itself is told it as the change lands (``SwarmStore.refreshed`` for its own
    announces, ``merge_many``'s ``refreshes`` for a client's), and
    tests/unit/sync/test_hub_refresh.py checks the two agree.

    True for an announce with no event from a peer ``store`` holds at the same
    endpoint, with the same seeder flag and key, whose current expiry is still
    well ahead (more than twice ``window`` plus a second), so a receiver that
    gets the refresh up to ``window`` late never lets the peer lapse meanwhile.
    Anything else (a new peer, a stop, a completion, a seeder flip, a move, a
    key learnt) changes what readers see or what the identity rule checks, and a
    late copy of an announce the peer has since stopped changes nothing at all.
    Call before the change is applied.
    """
    if change.event != EVENT_NONE or store.stopped_since(change):
        return False
    swarm = store.peek(change.info_hash)
    if swarm is None:
        return False
    width = len(change.endpoint)
    pl = swarm.family(width, create=False)
    if pl is None:
        return False
    slot = pl.slot(change.peer_id)
    if slot < 0:
        return False
    return (
        pl.expires[slot] > change.timestamp + refresh_ahead(window)
        and (slot < pl.seeders) == change.seeder
        and pl.addrs[slot * width : slot * width + width] == change.endpoint
        and (not change.key or pl.keys[slot] == change.key)
    )


class _Client:
    """One connected process: its socket and the bytes waiting to go to it."""

    def __init__(self, sock: socket.socket, number: int, lag_bytes: int = MAX_QUEUE_BYTES) -> None:
        self.sock = sock
        self.lag_bytes = lag_bytes
        # While it lags: what it is owed, coalesced per peer; drained after the queue.
        self.backlog: Backlog | None = None
        self.stats_owed = False  # a Stats frame skipped while it lagged
        self.name = f"client #{number}"
        self.pid = 0
        self.role = f.ROLE_TOOL
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.ready = Event()  # something to write, or closed
        self.writing = False  # the writer has bytes in flight: nothing may overtake them
        self.closed = False
        # It closed its end (EPIPE): nothing more goes to it, but what it sent before
        # leaving is still in our receive buffer, and its reader takes it to EOF.
        self.gone = False
        self.resynced = 0
        # Read-your-writes: bytes given to ``send`` and bytes the kernel took, both counted
        # from the connect; an ack waits until each other client's ``handed`` passes the
        # ``taken`` it had when the mark was read. Marks waiting: (seq, [(client, pos)]).
        self.taken = 0
        self.handed = 0
        self.acks: collections.deque[tuple[int, list[tuple[_Client, int]]]] = collections.deque()
        self.snapshot: gevent.Greenlet | None = None
        # Whether this client's claims can hold only earlier hubs' counts (SyncHub._claim).
        self.knows_only_earlier_hubs = False
        # For a process reconnecting to this hub: the increments counted here since its
        # last connection ended, until its claims arrive (SyncHub._claim).
        self.since_left: dict[bytes, int] | None = None
        self.since = time.monotonic()
        self.talk = Conversation(FROM_CLIENT, self.name)

    def send(self, data: bytes) -> None:
        """Write ``data`` now if the socket takes it, else queue it for the writer.

        The direct write saves the writer's greenlet switch, which only comes
        after the rest of the loop's turn: after the sender's frame is applied
        here, and in udp-sidecar after a batch of datagrams (up to 64, a few
        ms under load). Order is kept: only an idle client is written to here.
        """
        if self.gone:
            return
        self.taken += len(data)
        if self.backlog is not None:
            self._owe(self.backlog.take())  # what it is owed comes first
            self.backlog = None
        elif not self.queue and not self.writing and not self.closed:
            try:
                sent = self.sock.send(data, 0, timeout=0.0)  # type: ignore[call-arg]
            except OSError:
                sent = 0  # full (EAGAIN) or broken: the writer retries and finds out
            self.handed += sent
            if sent == len(data):
                return
            data = data[sent:]
        self._enqueue(data)

    def offer(self, data: bytes, parts: Parts) -> None:
        """``send`` deltas and counts (``data``, decoded as ``parts``), or, past
        ``lag_bytes`` queued, merge them into the backlog: never dropped for lag."""
        if self.gone or self.closed:
            return
        if self.backlog is None:
            if self.queued <= self.lag_bytes:
                self.send(data)
                return
            self.backlog = Backlog()
            log.info("sync hub: %s is %d bytes behind; coalescing per peer", self.name, self.queued)
        self.backlog.add(parts)
        self.ready.set()

    def holds(self, pos: int) -> bool:
        """Whether the first ``pos`` bytes sent to this client are in its socket (or it is
        gone, and nothing more will be)."""
        return self.handed >= pos or self.closed or self.gone

    def counts_for_acks(self) -> bool:
        """Joined (its snapshot is queued, so it answers nothing before reading what is
        queued now) and not lagging: past ``ACK_LAG_BYTES``, or with a backlog (what it
        is owed there is in no byte count yet)."""
        snapshot = self.snapshot
        joined = snapshot is not None and snapshot.dead and not self.closed and not self.gone
        lagging = self.backlog is not None or self.taken - self.handed > ACK_LAG_BYTES
        return joined and not lagging

    def refill(self) -> None:
        """The queue has drained: move the next part of the backlog into it."""
        backlog = self.backlog
        if backlog is None:
            return
        self._owe(backlog.take(f.RECORDS_PER_FRAME))
        if not backlog:
            self.backlog = None
            log.info("sync hub: %s has caught up", self.name)

    def _owe(self, data: bytes) -> None:
        """Queue bytes from the backlog (counted like any given to ``send``, for acks)."""
        self.taken += len(data)
        self._enqueue(data)

    def _enqueue(self, data: bytes) -> None:
        if data:
            self.queue.append(data)
            self.queued += len(data)
            self.ready.set()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.queue.clear()
        self.backlog = None
        self.ready.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _Joined(Sequence[T]):
    """Sequences read as one, never copied: what a fan-out carries is decoded (a
    PeerChange per record) only if a lagging client merges it into its backlog."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Sequence[T]]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __iter__(self) -> Iterator[T]:
        return itertools.chain.from_iterable(self.parts)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        return list(self)[index]  # nothing on the fan-out path indexes it


class _Outbox:
    """What one read from ``origin`` passes on, gathered for one write per other client."""

    def __init__(self, hub: SyncHub, origin: _Client) -> None:
        self.hub = hub
        self.origin = origin
        self._empty()

    def _empty(self) -> None:
        self.wire: list[bytes] = []
        self.deltas: list[Sequence[PeerChange]] = []
        self.counts: list[Sequence[tuple[bytes, int]]] = []
        self.ws: list[Sequence[WsChange]] = []
        self.up: list[f.Frame] = []

    def add(self, wire: bytes, parts: Parts, up: f.Frame | None) -> None:
        self.wire.append(wire)
        self.deltas.append(parts.deltas)
        self.counts.append(parts.counts)
        self.ws.append(parts.ws)
        if up is not None:
            self.up.append(up)

    def flush(self) -> None:
        if not self.wire:
            return
        hub = self.hub
        parts = Parts(_Joined(self.deltas), (), _Joined(self.counts), _Joined(self.ws))
        hub._fan_out(b"".join(self.wire), exclude=self.origin, parts=parts)
        if hub.uplink is not None and self.up:
            hub.uplink(self.up)
        self._empty()


class SyncHub:
    """Listen on ``path`` and keep ``core``'s replica and every client's the same."""

    def __init__(
        self,
        core: TrackerCore,
        path: str,
        *,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        flush_delay: float = FLUSH_DELAY,
        heartbeat: float = HEARTBEAT,
        dead_after: float = DEAD_AFTER,
        refresh_window: float = REFRESH_WINDOW,
        on_counts: Callable[[list[tuple[bytes, int]]], None] | None = None,
    ) -> None:
        """``on_counts`` sees every increment the hub applies from a client (the
        journal), before it is applied. ``refresh_window`` 0 ships every change
        at once."""
        self.core = core
        self.refresh_window = refresh_window
        # Refreshes waiting to go out, oldest first: peer -> (held since, newest
        # change, the client it came from, None for the sidecar or several).
        self._held: OrderedDict[tuple[bytes, bytes, int], tuple[float, PeerChange, _Client | None]]
        self._held = OrderedDict()
        self._ahead = refresh_ahead(refresh_window)
        self.on_counts = on_counts
        self.path = path
        self.max_queue_bytes = max_queue_bytes
        self.flush_delay = flush_delay
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.clients: set[_Client] = set()
        self._stats: dict[tuple[int, int], f.StatsEntry] = {}
        self._remote_stats: list[f.StatsEntry] = []
        self.uplink: Uplink | None = None
        self._stats_changed = False
        self._wake = Event()
        self._buffer = ChangeBuffer(core.lock, self._wake.set)
        self._listener: socket.socket | None = None
        self._inode = 0
        self._greenlets: list[gevent.Greenlet] = []
        self._accepted = 0
        # The seam for routing beyond this machine (Redis): called with a relay for a
        # holder pid no local client has, and its wire bytes; returns whether it went.
        self.relay_elsewhere: Callable[[f.WsRelay, bytes], bool] | None = None
        self.relays_undeliverable = 0
        self._warned_no_hook = False
        # Read-your-writes: marks waiting for slow clients' sockets, and the event the
        # writers set when bytes reach a socket while anyone waits.
        self._unacked = 0
        self._settling = 0
        self._handed = Event()
        self.acks_past_laggers = 0
        self.settle_timeouts = 0
        # Claims (``_claim``): while the window lasts, every increment this hub counted
        # since it started (its clients' Counts, its own completions), and the pids of the
        # clients it has greeted; None after CLAIM_WINDOW (then a claim meets the total).
        self._fresh: dict[bytes, int] | None = {}
        self._met: set[int] | None = set()
        self._claims_until = time.monotonic() + CLAIM_WINDOW
        # Processes whose connection ended, by pid, for CLAIM_WINDOW after: when it ended,
        # and every increment counted here since (a reconnect's claim is held against
        # the total less these: what the hub had when its belief was last fed).
        self._left: dict[int, tuple[float, dict[bytes, int]]] = {}
        self._rejoining: set[_Client] = set()  # back, with claims still to come

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (HubError if impossible), then serve in greenlets."""
        self._listener = listen_unix(self.path)
        self._inode = os.stat(self.path).st_ino
        self._claims_until = time.monotonic() + CLAIM_WINDOW
        self.core.listeners.append(self._own_change)
        self._greenlets = [
            gevent.spawn(self._accept_loop),
            gevent.spawn(self._flush_loop),
            gevent.spawn(self._heartbeat_loop),
            gevent.spawn(self._refresh_loop),
        ]
        log.info("sync hub listening on %s", self.path)

    def stop(self, drain: float = 5.0) -> None:
        """Stop accepting, apply what clients already sent (bounded by ``drain`` s), close.

        A worker that exited just before us (``serve`` stops gunicorn first) left
        its last deltas and counts in our socket buffer; under UDP load our reader
        may not have reached them yet, and dropping the connection unread lost
        them (0-4 completions in half the mixed HTTP + UDP stops).
        """
        with contextlib.suppress(ValueError):
            self.core.listeners.remove(self._own_change)
        if self._greenlets:
            self._greenlets[0].kill()  # the accept loop, before its socket closes
        if self._listener is not None:
            _unlink_if_ours(self.path, self._inode)
            self._listener.close()
            self._listener = None
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and any(_unread(c.sock) for c in self.clients):
            gevent.sleep(0.005)
        gevent.killall(self._greenlets, timeout=2)
        self._ship_held(float("inf"))
        for client in list(self.clients):
            self._drop(client, None)

    def status(self) -> dict[str, int]:
        """What /stats shows of the hub (the sidecar's report, ``hub``): its clients, how
        many lag (coalescing per peer), the refreshes held back, and the times
        read-your-writes did not wait for a process (docs/SYNC.md, "Read-your-writes")."""
        return {
            "clients": len(self.clients),
            "lagging": sum(1 for c in self.clients if c.backlog is not None),
            "held_refreshes": len(self._held),
            "acks_past_laggers": self.acks_past_laggers,
            "settle_timeouts": self.settle_timeouts,
            "relays_undeliverable": self.relays_undeliverable,
        }

    @property
    def workers(self) -> int:
        """Connected worker processes (``udp-sidecar`` waits for none to be left)."""
        return sum(1 for c in self.clients if c.role == f.ROLE_WORKER)

    # --- stats -----------------------------------------------------------------------

    def publish_stats(self, payload: bytes) -> None:
        """The sidecar's own stats payload, sent to clients with everyone else's."""
        self._set_stats(f.StatsEntry(os.getpid(), f.ROLE_HUB, payload))

    @property
    def cluster_stats(self) -> list[f.StatsEntry]:
        """The latest payload of every connected process, the hub's own included, and
        of every process on the other nodes of a cluster."""
        return [*self._stats.values(), *self._remote_stats]

    @property
    def local_stats(self) -> list[f.StatsEntry]:
        """The latest payload of every process on this machine (what a node shares)."""
        return list(self._stats.values())

    def set_remote_stats(self, entries: list[f.StatsEntry]) -> None:
        """The other nodes' processes' payloads, sent on to clients with the local ones."""
        if entries or self._remote_stats:
            self._remote_stats = entries
            self._stats_changed = True

    def _set_stats(self, entry: f.StatsEntry) -> None:
        self._stats[(entry.role, entry.pid)] = entry
        self._stats_changed = True

    # --- fan-out ---------------------------------------------------------------------

    def _fan_out(
        self, data: bytes, exclude: _Client | None = None, parts: Parts | None = None
    ) -> None:
        """``data`` to every client but ``exclude``; with ``parts`` (what ``data`` holds,
        decoded) a lagging client merges them into its backlog instead."""
        if not data:
            return
        for client in list(self.clients):
            if client is exclude:
                continue
            if parts is None:
                client.send(data)
            else:
                client.offer(data, parts)

    def _drop(self, client: _Client, reason: str | None) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        if self._stats.pop((client.role, client.pid), None) is not None:
            self._stats_changed = True
        if reason:
            log.warning("sync hub: dropping %s: %s", client.name, reason)
        client.close()
        client.acks.clear()
        self._progress()
        self._rejoining.discard(client)
        if client.pid and client.role in CLAIMING_ROLES:
            # A new epoch each time: a later one holds back less, so it never counts twice.
            self._left[client.pid] = (time.monotonic(), {})
        if client.role == f.ROLE_WORKER and client.pid and not self._connected(client.pid):
            self._stop_ws_peers(client.pid)

    def _connected(self, pid: int) -> bool:
        """Whether a worker of that pid is still connected: a client that said hello with a
        live worker's pid (this user only: the socket is 0600) stopped that worker's
        WebSocket peers everywhere when it left, its sockets still open."""
        return any(c.pid == pid and c.role == f.ROLE_WORKER for c in self.clients)

    def _stop_ws_peers(self, pid: int) -> None:
        """A worker is gone and its sockets with it: its WebSocket peers stop everywhere.

        Each stop carries the peer's own last timestamp, so the worker's re-sent
        replica (after a reconnect) brings them back rather than losing to it.
        """
        with self.core.lock:
            stops = [c._replace(event=EVENT_STOPPED) for c in self.core.ws.held_by(pid)]
            for change in stops:
                self.core.ws.apply(change, change.timestamp)
        if stops:
            self._fan_out(f.encode(f.WsPeers(stops)), parts=Parts(ws=stops))
            if self.uplink is not None:
                self.uplink([f.WsPeers(stops)])

    # --- greenlets -------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                log.warning("sync hub: accept failed: %s", exc)
                gevent.sleep(0.1)
                continue
            # Our hello goes out first and whatever happens next, so even a peer we
            # refuse learns which version we speak (a new socket's buffer is empty).
            try:
                sock.sendall(f.encode(f.Hello(f.ROLE_HUB, os.getpid())))
            except OSError:
                sock.close()
                continue
            self._accepted += 1
            client = _Client(sock, self._accepted, self.max_queue_bytes)
            self.clients.add(client)
            gevent.spawn(self._serve, client)

    def _serve(self, client: _Client) -> None:
        writer = gevent.spawn(self._write_loop, client)
        try:
            self._read_loop(client)
        finally:
            self._drop(client, None)
            if client.snapshot is not None:
                client.snapshot.kill()
            writer.join(timeout=1)
            writer.kill()
            client.sock.close()

    def _write_loop(self, client: _Client) -> None:
        sock = client.sock
        while not client.closed:
            if not client.queue:
                client.refill()
            if not client.queue:
                client.ready.wait()
                client.ready.clear()
                continue
            data = b"".join(client.queue)
            client.queue.clear()
            client.writing = True
            try:
                view = memoryview(data)
                for start in range(0, len(data), WRITE_CHUNK):
                    chunk = view[start : start + WRITE_CHUNK]
                    sock.sendall(chunk)
                    client.handed += len(chunk)
                    self._progress()
            except (BrokenPipeError, ConnectionResetError):
                # A worker that exited: a stop's last deltas and counts may still be
                # unread here. Closing now lost them; the reader ends at their EOF.
                client.gone = True
                client.queue.clear()
                client.queued = 0
                self._progress()
                return
            except OSError as exc:
                # A probe that connects and leaves (no hello) is not worth a warning.
                self._drop(client, f"send failed: {exc}" if client.pid else None)
                return
            finally:
                client.writing = False
            client.queued -= len(data)

    def _send_snapshot(self, client: _Client) -> None:
        """The replica, torrent by torrent; other greenlets run between chunks.

        A torrent's peers and its total are taken and queued without yielding,
        so every delta queued after them is newer than what they say. The total
        leaves out the sidecar's own completions not yet flushed: the flush
        brings them to this client too, which would count them twice.
        """
        store = self.core.store
        lock = self.core.lock
        low_water = self.max_queue_bytes // 4
        buffer = self._buffer
        # The lock taken once a chunk, not once a torrent (~0.7 us each of ~6 at 1M):
        # nothing here yields inside a chunk, so no one could take it between torrents.
        # Totals less our completions not flushed yet (the buffer's counts, read once a
        # chunk: mostly empty, so most torrents cost no lookup).
        chunks = walk(store, list(store.torrents.keys()), None, lambda: buffer.counts)
        while True:
            with lock:
                chunk = next(chunks, None)
            if chunk is None:
                break
            peers, totals = chunk
            client.send(f.encode(f.Snapshot(peers)) + f.encode(f.Totals(totals)))
            gevent.sleep(0)
            while client.queued > low_water and not client.closed:
                gevent.sleep(0.01)
            if client.closed:
                return
        with self.core.lock:
            ws_peers = list(self.core.ws.peers())
        client.send(
            f.encode(f.WsPeers(ws_peers))
            + f.encode(f.SnapshotDone())
            + (f.encode(f.Stats(self.cluster_stats)) if self._stats else b"")
        )

    def _read_loop(self, client: _Client) -> None:
        sock = client.sock
        sock.settimeout(self.dead_after)
        decoder = f.FrameDecoder()
        while not client.closed:
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError:
                joining = client.talk.phase in (Phase.HELLO, Phase.JOINING)
                if joining and time.monotonic() - client.since < JOIN_WAIT:
                    continue
                self._drop(client, f"silent for {self.dead_after:.0f} s")
                return
            except OSError:
                return
            if not data:
                return
            try:
                received: list[tuple[f.RawFrame, f.Frame]] = []
                for raw in decoder.feed_raw(data):
                    frame = raw.decode()
                    client.talk.receive(frame)  # SyncStateError if it has no place now
                    if isinstance(frame, f.Hello):
                        self._greet(client, frame)
                    else:
                        received.append((raw, frame))
                self._take_in(client, received)
            except f.FrameError as exc:
                log.error("sync hub: refusing %s: %s", client.name, exc)
                self._drop(client, None)
                return
            if len(data) == RECV_BYTES:
                # A socket with more data waiting never yields: let UDP and the others
                # run (idle, not sleep(0), which would not let the loop poll sockets
                # and timers). Small reads, the usual case, skip this loop turn.
                gevent.idle()

    def _greet(self, client: _Client, frame: f.Hello) -> None:
        """Name the client after its hello and start its snapshot."""
        client.pid, client.role = frame.pid, frame.role
        client.name = f"{f.ROLE_NAMES[frame.role]} pid {frame.pid}"
        met = self._met if self._claiming() else None
        # Its claims (sent once it has joined) were taken before it heard from us: only
        # an earlier hub's counts are in them, unless it was here before.
        client.knows_only_earlier_hubs = met is not None and frame.pid not in met
        if met is not None:
            met.add(frame.pid)
        left = self._left.pop(frame.pid, None)
        if left is not None and time.monotonic() - left[0] < CLAIM_WINDOW:
            client.since_left = left[1]
            self._rejoining.add(client)
        log.info("sync hub: %s connected", client.name)
        client.snapshot = gevent.spawn(self._send_snapshot, client)

    def _take_in(self, client: _Client, received: list[tuple[f.RawFrame, f.Frame]]) -> None:
        """Apply one read's frames here, in order, and pass on what readers need.

        Deltas are applied first, in slices of ``SLICE_RECORDS``: each change is
        sorted as it lands (``_merge``), and what is news and visible goes out,
        all of it in one write per other client, before the loop is given up
        (after ``SLICE_SECONDS`` of work, so a burst from the workers never holds
        UDP up longer), so nothing yields between applying a change and queueing
        it: a snapshot taken between slices is never newer than what was queued
        before it. Deltas the replica refuses, or already holds newer, are not
        sent; an unchanged frame still goes out byte for byte. Counts and
        WebSocket peers are passed on as they come; any other frame (a re-sent
        replica, totals, an ack) is handled after what came before it has gone.
        """
        out = _Outbox(self, client)
        deadline = time.monotonic() + SLICE_SECONDS
        for raw, frame in received:
            if isinstance(frame, f.Deltas):
                rows = f.peer_rows(frame.peers)
                for start in range(0, len(rows), SLICE_RECORDS):
                    stop = min(start + SLICE_RECORDS, len(rows))
                    shown = self._merge(rows, start, stop, client)
                    if len(shown) == len(rows):
                        out.add(raw.wire, Parts(deltas=shown), f.Deltas(shown))
                    elif shown:
                        out.add(f.encode(f.Deltas(shown)), Parts(deltas=shown), f.Deltas(shown))
                    if time.monotonic() > deadline:
                        out.flush()
                        gevent.idle()
                        deadline = time.monotonic() + SLICE_SECONDS
            elif isinstance(frame, f.Counts):
                self._apply(frame)
                self._count_fresh(frame.counts)
                out.add(raw.wire, Parts(counts=frame.counts), frame)
            elif isinstance(frame, f.WsPeers):
                out.add(raw.wire, Parts(ws=frame.changes), frame)
                self._handle(client, frame)
            else:
                out.flush()
                if isinstance(frame, f.WsRelay):
                    self.route(frame, raw.wire)
                else:
                    self._handle(client, frame)
        out.flush()

    def _merge(
        self, rows: Sequence[PeerRow], start: int, stop: int, origin: _Client | None
    ) -> f.PeerRecords:
        """Merge ``rows[start:stop]`` from ``origin`` in bulk; returns those to ship now
        (news a reader sees).

        A refresh is held instead (``_hold``); a visible change supersedes the
        peer's held refresh, which is dropped first, so a refresh of the peer
        later in the slice is still held (one earlier in it is shipped after the
        visible change, and loses to it everywhere: it is older).
        """
        if not self._passes_on(origin):
            # Nobody to pass them on to (a second UDP process alone with the hub): no news
            # to sort out and no refresh to hold. A client that joins later gets the
            # replica they are merged into in its snapshot.
            with self.core.lock:
                self.core.store.merge_many(rows, start, stop)
            return f.PeerRecords([])
        shown: list[PeerRow] = []
        quiet: list[PeerRow] | None = [] if self.refresh_window else None
        with self.core.lock:
            self.core.store.merge_many(
                rows, start, stop, news=shown, refreshes=quiet, ahead=self._ahead
            )
            held = self._held
            if held:
                for row in shown:
                    held.pop((row[0], row[1], len(row[5])), None)
            for row in quiet or ():
                self._hold(row_change(row), origin)
        return f.PeerRecords(shown)

    def _own_change(self, change: PeerChange, counted: bool, refreshed: float) -> None:
        """The listener for the sidecar's own announces: refreshes (the core says which)
        are held, the rest go with the next batch; with no client and no uplink, nothing
        is kept (a client that joins gets the replica in its snapshot).

        On every UDP announce's path, so ``_hold`` is inlined here (for the sidecar,
        the origin is always None) and a change is read by index, not by name."""
        held = self._held
        if counted:
            self._count_fresh(((change[0], 1),))  # the claim window's (``_claim``)
        if not self.clients and self.uplink is None:
            return  # nobody to tell (one process, no workers): a joiner's snapshot has it
        if not counted and refreshed > change[5] + self._ahead and self.refresh_window:
            key = (change[0], change[1], len(change[2]))
            had = held.get(key)
            held[key] = (time.monotonic() if had is None else had[0], change, None)
            return
        if held:
            held.pop((change[0], change[1], len(change[2])), None)
        self._buffer(change, counted)

    def _passes_on(self, origin: _Client | None) -> bool:
        """Whether what ``origin`` sent goes anywhere: another client, or the uplink."""
        return self.uplink is not None or any(c is not origin for c in self.clients)

    def _hold(self, change: PeerChange, origin: _Client | None) -> None:
        """Keep the newest refresh of a peer until it is due; its first one sets when."""
        key = (change.info_hash, change.peer_id, len(change.endpoint))
        had = self._held.get(key)
        if had is None:
            self._held[key] = (time.monotonic(), change, origin)
        else:
            self._held[key] = (had[0], change, origin if had[2] is origin else None)

    def _ship_held(self, due: float) -> None:
        """Send every held refresh held since ``due`` or earlier, in frames of
        ``RECORDS_PER_FRAME``, yielding between them."""
        held = self._held
        while held:
            batch: dict[_Client | None, list[PeerChange]] = {}
            with self.core.lock:
                for _ in range(f.RECORDS_PER_FRAME):
                    if not held:
                        break
                    key, entry = held.popitem(last=False)  # one C call a refresh
                    since, change, origin = entry
                    if since > due:
                        held[key] = entry  # not due: back in front, where it was
                        held.move_to_end(key, last=False)
                        break
                    batch.setdefault(origin, []).append(change)
            if not batch:
                return
            for origin, changes in batch.items():
                if origin is not None and origin not in self.clients:
                    origin = None
                self._fan_out(f.encode(f.Deltas(changes)), exclude=origin, parts=Parts(changes))
                if self.uplink is not None:
                    self.uplink([f.Deltas(changes)])
            if due != float("inf"):
                gevent.idle()

    def _refresh_loop(self) -> None:
        """Every ``REFRESH_TICK``, ship the refreshes held for ``refresh_window``."""
        while True:
            gevent.sleep(REFRESH_TICK)
            self._ship_held(time.monotonic() - self.refresh_window)

    def route(self, relay: f.WsRelay, wire: bytes) -> None:
        """An offer or answer goes to the one process holding its target's socket
        (from a client, or from another node, whose relay names a pid of this machine)."""
        for client in self.clients:
            if client.pid == relay.holder and client.role == f.ROLE_WORKER:
                client.send(wire)
                return
        if self.relay_elsewhere is None or not self.relay_elsewhere(relay, wire):
            self.relays_undeliverable += 1

    # --- the cluster's seam ----------------------------------------------------------

    def receive(self, received: list[tuple[f.RawFrame, f.Frame]]) -> None:
        """Frames from another node: applied here and passed on to every client (never
        back up the uplink). Deltas, counts and WebSocket peers (their holders already
        this node's aliases, cluster/routing.py) go on byte for byte, state as news only."""
        kinds = f.Deltas | f.Counts | f.WsPeers
        wire = [raw.wire for raw, frame in received if isinstance(frame, kinds)]
        if wire:
            deltas = [c for _, fr in received if isinstance(fr, f.Deltas) for c in fr.peers]
            counts = [n for _, fr in received if isinstance(fr, f.Counts) for n in fr.counts]
            ws = [c for _, fr in received if isinstance(fr, f.WsPeers) for c in fr.changes]
            self._fan_out(b"".join(wire), parts=Parts(deltas, (), counts, ws))
        for _, frame in received:
            if isinstance(frame, f.Snapshot):
                self.merge_state(frame.peers)
            elif isinstance(frame, f.WsPeers):
                self._apply_ws(frame)
            else:
                self._apply(frame)

    def merge_state(
        self, peers: Sequence[PeerChange], exclude: _Client | None = None
    ) -> Sequence[PeerChange]:
        """Merge re-sent or snapshot state; pass on to the clients (but ``exclude``) only
        what was news here, still as state, so it never overrides a same-second announce.
        Returns the news."""
        rows: list[PeerRow] = []
        with self.core.lock:
            self.core.store.merge_many(f.peer_rows(peers), state=True, news=rows)
        news = f.PeerRecords(rows)
        if rows:
            self._fan_out(f.encode(f.Snapshot(news)), exclude=exclude, parts=Parts(state=news))
        return news

    def _apply(self, frame: f.Frame) -> None:
        """Apply deltas or counts to this replica (forwarding is the caller's)."""
        core = self.core
        store = core.store
        if isinstance(frame, f.Deltas):
            with core.lock:
                store.merge_many(f.peer_rows(frame.peers))
        elif isinstance(frame, f.Counts):
            if self.on_counts is not None:
                self.on_counts(frame.counts)
            with core.lock:
                for ih, n in frame.counts:
                    store.add_downloaded(ih, n)

    def _apply_ws(self, frame: f.WsPeers) -> None:
        now = time.time()
        with self.core.lock:
            for ws_change in frame.changes:
                with contextlib.suppress(WsSwarmFull):
                    self.core.ws.apply(ws_change, now)

    # Long on purpose: one dispatch over every frame kind a client may send, so each kind's handling
    # is found here.
    def _handle(self, client: _Client, frame: f.Frame) -> None:
        """Apply one frame from ``client`` (deltas and counts were forwarded already)."""
        core = self.core
        if isinstance(frame, f.Deltas | f.Counts):
            self._apply(frame)
        elif isinstance(frame, f.Snapshot):
            # A client re-sending its replica: what was news here is news to the cluster.
            client.resynced += len(frame.peers)
            news = self.merge_state(frame.peers, exclude=client)
            if news and self.uplink is not None:
                self.uplink([f.Snapshot(news)])
        elif isinstance(frame, f.Totals):
            # The totals a client last knew: more than we knew means we lost some (a
            # restart); the difference goes to everyone, the sender too.
            raised = self._claim(client, frame.totals)
            if raised and self.on_counts is not None:
                self.on_counts(raised)
            # Not up the uplink: these were counted once already, and a cluster node
            # claims its totals (rather than adding them) when it joins.
            self._fan_out(f.encode(f.Counts(raised)), parts=Parts(counts=raised))
        elif isinstance(frame, f.WsPeers):
            self._apply_ws(frame)
        elif isinstance(frame, f.Reports):
            # The one ledger: every process's accepted announces meet here (docs/ACCESS.md).
            accounting = core.accounting
            if accounting is None:
                if not self._warned_no_hook:
                    self._warned_no_hook = True
                    log.warning(
                        "sync hub: %s sends announce reports but this process has no "
                        "announce_hook setting; they are dropped",
                        client.name,
                    )
            else:
                with core.lock:
                    for report in frame.reports:
                        accounting.record(report)
        elif isinstance(frame, f.Mark):
            self._ack(client, frame.seq)
        elif isinstance(frame, f.SnapshotDone):
            log.info("sync hub: %s re-sent %d peers", client.name, client.resynced)
        elif isinstance(frame, f.Stats):
            for entry in frame.entries[:1]:
                self._set_stats(f.StatsEntry(client.pid, client.role, entry.payload))

    def _claim(
        self, client: _Client, claims: Sequence[tuple[bytes, int]]
    ) -> list[tuple[bytes, int]]:
        """Raise totals to a client's claims (the totals it believed the hub had when it
        connected); returns the increments. More than we had means we lost some: a
        restart, or a connection that ended, with a batch of its counts unread in our
        socket (its claim counts a batch once written, its buffer no longer does).

        The claim is held against what fed the client's belief last. For a process
        back within CLAIM_WINDOW of its last connection here ending: the total less
        every increment counted since it ended (what we had then; a later epoch than
        its belief's only ever holds back less, so nothing counts twice). For one this
        hub never met, within CLAIM_WINDOW of the start: the total less the increments
        counted here since the start (its claims hold an earlier hub's counts only).
        Else the total. Held against the total alone, another worker's counts made
        meanwhile, reaching us first, hid the loss (one completion short in 5 of 5 runs
        of the sidecar-kill test under load, docs/HARDENING.md).
        """
        since = client.since_left
        if since is None and client.knows_only_earlier_hubs and self._claiming():
            since = self._fresh
        client.since_left = None  # one claim a connection
        self._rejoining.discard(client)
        store = self.core.store
        raised = []
        with self.core.lock:
            for ih, claim in claims:
                have = store.scrape(ih)[1]
                known = have if since is None else max(0, have - since.get(ih, 0))
                if claim > known:
                    store.add_downloaded(ih, claim - known)
                    raised.append((ih, claim - known))
        self._count_since_left(raised)
        return raised

    def _claiming(self) -> bool:
        """Whether the claim window is open (after it, the fresh counts are let go)."""
        if self._fresh is None:
            return False
        if time.monotonic() < self._claims_until:
            return True
        self._fresh = self._met = None
        return False

    def _count_fresh(self, counts: Sequence[tuple[bytes, int]]) -> None:
        """Increments counted here since the start (the claim window's)."""
        if self._claiming():
            fresh = self._fresh
            assert fresh is not None
            for ih, n in counts:
                fresh[ih] = fresh.get(ih, 0) + n
        self._count_since_left(counts)

    def _count_since_left(self, counts: Sequence[tuple[bytes, int]]) -> None:
        """Every increment (a raise by a claim too) for each process that left, until it
        is back and has claimed; a record older than CLAIM_WINDOW is let go."""
        if not counts:
            return
        trackers = [c.since_left for c in self._rejoining if c.since_left is not None]
        if self._left:
            now = time.monotonic()
            for pid, (at, _) in list(self._left.items()):
                if now - at >= CLAIM_WINDOW:
                    del self._left[pid]
            trackers.extend(since for _, since in self._left.values())
        for since in trackers:
            for ih, n in counts:
                since[ih] = since.get(ih, 0) + n

    def _flush_loop(self) -> None:
        """Send the sidecar's own changes (UDP announces) every few milliseconds."""
        last = 0.0
        while True:
            self._wake.wait()
            self._wake.clear()
            # At most one batch per flush_delay: a lone change goes at once, a stream
            # is batched.
            wait = batch_wait(last, time.monotonic(), len(self._buffer), self.flush_delay)
            if wait:
                gevent.sleep(wait)
            last = time.monotonic()
            self._send_own()

    def _send_own(self) -> None:
        """The sidecar's own buffered changes, to every client and up the uplink."""
        changes, counts = self._buffer.take()
        data = f.encode(f.Deltas(changes))
        if counts:  # mostly none: encoding an empty list costs ~2 us, on every UDP batch
            data += f.encode(f.Counts(counts))
        self._fan_out(data, parts=Parts(deltas=changes, counts=counts))
        if self.uplink is not None:
            self.uplink([f.Deltas(changes), f.Counts(counts)])

    # --- read-your-writes: acks and settle --------------------------------------------

    def _marks(self, exclude: _Client | None) -> list[tuple[_Client, int]]:
        """For each client an ack or a settle must wait for, the bytes it must hold."""
        marks = []
        for c in self.clients:
            if c is exclude or c.handed >= c.taken:
                continue
            if c.counts_for_acks():
                marks.append((c, c.taken))
            elif not c.closed and c.snapshot is not None and c.snapshot.dead:
                self.acks_past_laggers += 1
        return marks

    def _ack(self, client: _Client, seq: int) -> None:
        """Ack ``Mark(seq)``: everything ``client`` sent before it is applied here (frames
        are handled in order) and was forwarded; the ack goes once those bytes are in
        every other joined client's socket, so whichever process answers next reads
        them before it answers (it drains its socket first)."""
        marks = self._marks(client)
        if not marks and not client.acks:
            client.send(f.encode(f.Ack(seq)))
            return
        client.acks.append((seq, marks))
        self._unacked += 1

    def _progress(self) -> None:
        """Bytes reached a client's socket (or a client left): release what waited on it."""
        if self._settling:
            event, self._handed = self._handed, Event()
            event.set()
        if not self._unacked:
            return
        for client in list(self.clients):
            acks = client.acks
            released = 0
            while acks and all(c.holds(pos) for c, pos in acks[0][1]):
                released = acks.popleft()[0]
                self._unacked -= 1
            if released:
                client.send(f.encode(f.Ack(released)))  # an ack covers every mark before it

    def settle(self, timeout: float = SETTLE_WAIT) -> Callable[[], bool] | None:
        """Send the sidecar's own changes now. udp-sidecar calls it once a batch is
        answered, and sends the batch's replies when they are in every joined client's
        socket, so a UDP client's next request, to any process, sees its announce: None
        when they are already (nothing buffered, or every socket took the bytes: the
        usual case), else a wait (bounded by ``timeout``; whether they got there)."""
        if not len(self._buffer):
            return None
        self._send_own()
        marks = self._marks(None)
        if not marks:
            return None
        return lambda: self._reached(marks, timeout)

    def _reached(self, marks: list[tuple[_Client, int]], timeout: float) -> bool:
        """Wait, at most ``timeout``, until each client holds its mark's bytes."""
        deadline = time.monotonic() + timeout
        self._settling += 1
        try:
            while True:
                event = self._handed  # taken before the check: progress after it sets this one
                if all(c.holds(pos) for c, pos in marks):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    self.settle_timeouts += 1
                    return False
                event.wait(left)
        finally:
            self._settling -= 1
        return True

    def _heartbeat_loop(self) -> None:
        """A heartbeat (and the stats, when they changed) to every client; one that
        lags is busy reading and gets the stats once it has caught up."""
        beat = f.encode(f.Heartbeat())
        while True:
            gevent.sleep(self.heartbeat)
            changed, self._stats_changed = self._stats_changed, False
            stats = b""
            for client in list(self.clients):
                if client.backlog is not None:
                    client.stats_owed |= changed
                    continue
                if changed or client.stats_owed:
                    client.stats_owed = False
                    stats = stats or f.encode(f.Stats(self.cluster_stats))
                    client.send(beat + stats)
                else:
                    client.send(beat)


# --- the socket file -------------------------------------------------------------------


def listen_unix(path: str) -> socket.socket:
    """A listening socket at ``path``, mode 0600; its directory is made 0700 if missing.

    A stale socket file (nobody answers on it) is removed; a live one means
    another hub is running, and anything that is not a socket is left alone.
    """
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        mode = os.stat(directory).st_mode
    except OSError as exc:
        raise HubError(f"cannot create sync socket directory {directory}: {exc.strerror}") from None
    try:
        check_private(path)
    except UnsafeSocketPath as exc:
        raise HubError(str(exc)) from None
    if stat.S_IMODE(mode) & 0o077:
        log.warning(
            "sync socket directory %s is open to other users (mode %o); the socket itself is 0600",
            directory,
            stat.S_IMODE(mode),
        )
    _remove_stale(path)
    sock = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise HubError(f"cannot bind sync socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def _remove_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise HubError(f"{path} exists and is not a socket; not touching it")
    if why_no_hub(path) is not None:
        os.unlink(path)  # nobody listens: left behind by a hub that died
        return
    raise HubError(f"another sync hub is already listening on {path}")


def _unread(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive buffer (0 once closed)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(4)))[0]
    except (OSError, ValueError):
        return 0


def _unlink_if_ours(path: str, inode: int) -> None:
    """Remove the socket file unless another hub has replaced it since."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
