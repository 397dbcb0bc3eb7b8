"""The gevent shell around the sans-IO protocol: sockets in, ``TrackerCore`` calls, sockets out.

``DatagramHandler`` turns one datagram into its reply (or None) and touches no
socket, so it is tested directly. ``UdpServer`` owns the sockets: one per bind
address, each drained by one greenlet.

Why not gevent's DatagramServer: it spawns a greenlet per datagram, which in a
probe here served ~16k announces/s against ~25k for a plain loop. Here one
greenlet per socket reads the non-blocking socket until it is empty and only
then waits for readability on the hub, so a burst costs one hub switch, not
one per packet.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TypeAlias

import gevent
from gevent import monkey
from gevent.event import Event
from gevent.hub import get_hub

from udp_sidecar import steering
from udp_sidecar.connection_ids import ConnectionIds
from udp_sidecar.protocol import (
    MAX_PEERS_IPV4,
    MAX_PEERS_IPV6,
    MAX_SCRAPE_IPV4,
    MAX_SCRAPE_IPV6,
    AnnounceRequest,
    ConnectRequest,
    PacketError,
    build_announce,
    build_connect,
    build_error,
    build_scrape,
    parse_request,
    to_announce,
)
from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import PeerChange
from wsgi_tracker.sync.replica import refresh_ahead

log = logging.getLogger("udp_sidecar")

# Larger than any request we accept (a scrape of 122 hashes is 2456 bytes);
# the kernel cuts a longer datagram here and the parser then rejects the rest.
RECV_BYTES = 4096
# Datagrams handled back to back before letting other greenlets (the other
# socket, the sync hub) run; one switch per batch costs well under 1%.
BATCH = 64
RCVBUF = 4 << 20  # absorbs bursts; the kernel caps it at net.core.rmem_max
# Answered batches whose replies wait for their changes to reach the other processes, per
# socket; past this many the loop waits too, rather than answer ever further ahead.
HELD_BATCHES = 16

# What ``UdpServer.settle`` hands back for a batch whose changes are on their way to the
# other processes: called before the batch's replies go, it waits (bounded) until they
# are where every process reads.
Waiter: TypeAlias = Callable[[], object]

# The real socket class even after monkey-patching: gevent's cooperative
# socket wraps every recvfrom in Python-level retry code, which the loop below
# does not need because it waits for readability itself.
_RealSocket = monkey.get_original("socket", "socket")

_NOT_CONNECTED = "connection id expired or unknown: send a connect request first"


class DatagramHandler:
    """One socket's request -> reply logic over a shared core; no I/O."""

    def __init__(
        self,
        core: TrackerCore,
        ids: ConnectionIds,
        ipv6: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.ids = ids
        self.ipv6 = ipv6
        self.clock = clock
        self.family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.max_peers = MAX_PEERS_IPV6 if ipv6 else MAX_PEERS_IPV4
        self.max_scrape = MAX_SCRAPE_IPV6 if ipv6 else MAX_SCRAPE_IPV4

    def handle(self, data: bytes, addr: tuple) -> bytes | None:
        """The reply to send back to ``addr``, or None to drop the datagram.

        Call with ``core.lock`` held: the server loop takes it once per batch.
        """
        try:
            packed_ip = socket.inet_pton(self.family, addr[0])
        except OSError:  # a link-local IPv6 sender comes with a %scope suffix
            packed_ip = socket.inet_pton(self.family, addr[0].partition("%")[0])
        now = self.clock()
        try:
            req = parse_request(data, self.max_scrape)
        except PacketError as exc:
            self.core.counters.error("udp", "malformed")
            if exc.transaction_id is None:
                return None
            proven = exc.connection_id is not None and self.ids.valid(
                exc.connection_id, packed_ip, now
            )
            return build_error(exc.transaction_id, str(exc), None if proven else len(data))
        if isinstance(req, ConnectRequest):
            return build_connect(req.transaction_id, self.ids.issue(packed_ip, now))
        if not self.ids.valid(req.connection_id, packed_ip, now):
            self.core.counters.error("udp", "connection_id")
            return build_error(req.transaction_id, _NOT_CONNECTED, len(data))
        if isinstance(req, AnnounceRequest):
            return self._announce(req, packed_ip)
        try:
            entries = self.core.scrape(req.info_hashes, protocol="udp")
        except TrackerError as refused:  # not ``exc``: mypyc types a name once per function
            return build_error(req.transaction_id, str(refused))
        return build_scrape(req.transaction_id, entries)

    def _announce(self, req: AnnounceRequest, packed_ip: bytes) -> bytes:
        core = self.core
        config = core.config
        announce = to_announce(
            req, config.numwant_default, config.announce_path, self.max_peers, not self.ipv6
        )
        try:
            result = core.announce(announce, packed_ip, both_families=False, protocol="udp")
        except TrackerError as exc:
            return build_error(req.transaction_id, str(exc))
        return build_announce(
            req.transaction_id,
            result.interval,
            result.incomplete,
            result.complete,
            result.peers6 if self.ipv6 else result.peers,
        )


class VisibleChanges:
    """A core listener: whether this process made a change since the last ``take`` that a
    reply or scrape could show, i.e. anything but a pure refresh.

    A pure refresh (no event, a known peer at the same endpoint with the same seeder
    flag and key, its expiry more than ``ahead`` seconds past the change) moves only an
    expiry no reader sees, and the hub holds it back anyway (docs/SYNC.md, "Shipping"),
    so a batch of nothing else has no reply to hold for the hub's ack: the HTTP worker's
    rule (``SyncClient.write_token``), per batch. Most announces are such refreshes
    (a client on its interval); waiting a round trip to the hub for each of their
    batches kept the batches of a second UDP process at ~6 datagrams instead of ~40.
    """

    __slots__ = ("ahead", "seen")

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead
        self.seen = False

    def __call__(self, change: PeerChange, counted: bool, refreshed: float) -> None:
        if not refreshed > change[5] + self.ahead:  # by index: on every announce's path
            self.seen = True

    def take(self) -> bool:
        """Whether a visible change was made since the last call."""
        seen, self.seen = self.seen, False
        return seen


def settle_visible(
    core: TrackerCore, settle: Callable[[], Waiter | None]
) -> Callable[[], Waiter | None]:
    """``settle`` (a sync client's) for a ``UdpServer``, called only for a batch that made
    a visible change (``VisibleChanges``); a batch of pure refreshes goes at once, and its
    changes with the client's next flush (at most ``FLUSH_DELAY`` later)."""
    visible = VisibleChanges(refresh_ahead())
    core.listeners.append(visible)
    return lambda: settle() if visible.take() else None


class BindError(Exception):
    """A bind address is invalid or cannot be bound; the message names it and why."""


def _probe(family: int, host: str, port: int, ipv6: bool) -> None:
    """Bind and release (host, port) without SO_REUSEPORT: OSError if anything holds it."""
    with _RealSocket(family, socket.SOCK_DGRAM) as probe:
        if ipv6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))


class UdpServer:
    """The UDP tracker on one or more addresses sharing one ``TrackerCore``.

    IPv4 and IPv6 get separate sockets (IPV6_V6ONLY on the IPv6 one), so a
    reply always carries the peer entries of its socket's family.

    ``reuse_port``: the sockets take part in a ``SO_REUSEPORT`` group, which
    the kernel spreads datagrams over by a hash of the 4-tuple, so several
    processes of one udp-sidecar serve one port (``udp_processes``). The first
    of them (``join`` False) proves the port free first, with a plain bind
    that a socket already there refuses, so a second udp-sidecar of the same
    user fails with "address already in use" as it does without sharing,
    instead of silently taking part of the first one's traffic. The others
    ``join`` the group it made. All share one connection-id ``key``. With
    ``steer`` (the group's process count, 2 or more) the first also attaches the
    filter that sends each announce to its torrent's process (udp_sidecar/steering.py).
    """

    def __init__(
        self,
        core: TrackerCore,
        binds: Sequence[str],
        port: int,
        *,
        key: bytes | None = None,
        clock: Callable[[], float] = time.time,
        reuse_port: bool = False,
        join: bool = False,
        steer: int = 0,
    ) -> None:
        self.core = core
        self.binds = list(binds)
        self.port = port
        self.clock = clock
        self.reuse_port = reuse_port
        self.join = join
        self.steer = steer
        self.ids = ConnectionIds(key or os.urandom(32), core.config.connection_id_ttl)
        self.sockets: list[socket.socket] = []
        self._loops: list[gevent.Greenlet] = []
        # Called after a batch is answered (the sync hub's ``settle``, or a sync client's):
        # ships the batch's changes at once and returns None if they already reached every
        # other process, else a ``Waiter``. A reply leaves only once its batch's changes
        # did, so the client's next request anywhere sees them; meanwhile the loop answers
        # the next batches (their replies queue behind, in order).
        self.settle: Callable[[], Waiter | None] | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs, with the real port when 0 was asked for."""
        return [s.getsockname()[:2] for s in self.sockets]

    def start(self) -> None:
        """Bind every address, then serve; binds all or none (raises BindError)."""
        try:
            for host in self.binds:
                self.sockets.append(self._bind(host))
        except BindError:
            self._close()
            raise
        for sock in self.sockets:
            handler = DatagramHandler(
                self.core, self.ids, sock.family == socket.AF_INET6, self.clock
            )
            held = _HeldReplies(sock.sendto)
            self._loops.append(gevent.spawn(held.run))
            self._loops.append(gevent.spawn(self._serve, sock, handler, held))

    def _bind(self, host: str) -> socket.socket:
        try:
            ipv6 = ipaddress.ip_address(host.split("%", 1)[0]).version == 6
        except ValueError:
            raise BindError(f"invalid bind address {host!r}: not an IPv4 or IPv6 address") from None
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        sock = _RealSocket(family, socket.SOCK_DGRAM)
        try:
            if self.reuse_port and not self.join:
                _probe(family, host, self.port, ipv6)
            if ipv6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with contextlib.suppress(OSError):  # only a hint
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((host, self.port))
            if self.steer and not self.join:
                self._steer(sock, host)
        except OSError as exc:
            sock.close()
            shown = f"[{host}]" if ipv6 else host
            reason = (exc.strerror or str(exc)).lower()
            raise BindError(f"cannot bind {shown}:{self.port}: {reason}") from None
        sock.setblocking(False)
        return sock

    def _steer(self, sock: socket.socket, host: str) -> None:
        try:
            steering.steer(sock, self.steer)
        except OSError as exc:  # only where work lands: every process answers any torrent
            log.warning(
                "udp-sidecar: cannot steer announces by torrent on %s (%s); the kernel's "
                "hash spreads them",
                host,
                exc.strerror or exc,
            )

    # Long on purpose: the receive-answer-send loop for a batch of datagrams, on every UDP request's
    # path.
    def _serve(self, sock: socket.socket, handler: DatagramHandler, held: _HeldReplies) -> None:
        """Read a batch, answer it, send the answers back to back, and again.

        Sending a batch's replies together, rather than each as soon as it is
        made, matters on loopback and in VMs: a reply sent to a client that is
        asleep in poll() costs the sender its wake-up, and back-to-back replies
        find it still awake. Measured with bench/udp_load.c, median of 3 runs: 42.0k
        announces/s against 27.9k with each reply sent as soon as it was made.

        A batch whose changes are still on their way to the other processes
        (``settle`` gave a waiter) hands its replies to ``held``, and the loop
        reads the next batch meanwhile instead of idling for that round trip.
        """
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        handle = handler.handle
        hub = get_hub()
        readable = hub.loop.io(sock.fileno(), 1)
        # Taken once per batch: per packet, gevent's lock (Python code once
        # monkey-patched) was ~3-4% of a UDP announce in py-spy.
        lock = self.core.lock
        try:
            while True:
                batch = []
                try:
                    for _ in range(BATCH):
                        batch.append(recvfrom(RECV_BYTES))
                except BlockingIOError:
                    pass
                except OSError:
                    pass  # an ICMP error queued on the socket; the next read goes on
                if not batch:
                    hub.wait(readable)
                    continue
                replies = []
                # A process that is a sync client applies what the hub already sent as the
                # lock is taken (``ReadGate``), so the batch reads every change before it.
                with lock:
                    for data, addr in batch:
                        try:
                            reply = handle(data, addr)
                        except Exception:
                            log.exception("bug: datagram from %s raised; dropped", addr[0])
                            continue
                        if reply is not None:
                            replies.append((reply, addr))
                settle = self.settle
                waiter = settle() if settle is not None and replies else None
                if waiter is not None or held.batches:
                    held.add(waiter, replies)  # in order, behind those still waiting
                else:
                    _send_all(sendto, replies)
                if len(batch) == BATCH:
                    # idle(), not sleep(0): sleep(0) only runs callbacks, so under load
                    # timers and other sockets (the sync hub) waited ~50-90 ms; measured
                    # sync lag at 5k UDP announces/s went from p50 547 ms to 29 ms.
                    gevent.idle()
        finally:
            readable.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every loop, then close the sockets (never a watched fd while it is watched).
        Replies still waiting for their changes to settle are dropped, as UDP may."""
        gevent.killall(self._loops, timeout=timeout)
        self._loops.clear()
        self._close()

    def _close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def _send_all(sendto: Callable[[bytes, tuple], object], replies: list[tuple[bytes, tuple]]) -> None:
    for reply, addr in replies:
        # try/except, not contextlib.suppress: no object per packet here.
        try:  # noqa: SIM105
            sendto(reply, addr)
        except OSError:
            pass  # full send buffer or unroutable: UDP may drop, and so do we


class _HeldReplies:
    """One socket's answered batches whose changes are still on their way to the other
    processes; ``run`` (a greenlet) sends each batch's replies, in order, once its
    ``Waiter`` returns. Bounded: past ``HELD_BATCHES`` the receive loop waits in ``add``.

    A UDP process that is a sync client waits a round trip to the hub for each batch's
    ack; blocking its receive loop for it bounded the process at one batch per round
    trip (docs/SYNC.md, "Read-your-writes").
    """

    def __init__(self, sendto: Callable[[bytes, tuple], object]) -> None:
        self.sendto = sendto
        self.batches: collections.deque[tuple[Waiter | None, list[tuple[bytes, tuple]]]]
        self.batches = collections.deque()
        self._more = Event()
        self._room = Event()

    def add(self, waiter: Waiter | None, replies: list[tuple[bytes, tuple]]) -> None:
        batches = self.batches
        batches.append((waiter, replies))
        self._more.set()
        while len(batches) >= HELD_BATCHES:
            self._room.clear()
            self._room.wait()

    def run(self) -> None:
        batches = self.batches
        while True:
            while not batches:
                self._more.clear()
                self._more.wait()
            waiter, replies = batches[0]
            if waiter is not None:
                try:
                    waiter()  # bounded: a reply goes late rather than never
                except Exception:  # a dead sender would stop this socket's every reply
                    log.exception("bug: waiting for a batch's changes to settle raised")
            batches.popleft()
            self._room.set()
            _send_all(self.sendto, replies)
