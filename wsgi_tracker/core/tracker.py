"""The protocol-neutral tracker: announce and scrape policy, written once.

HTTP (``middleware``) and UDP (``udp_sidecar``) parse their own wire formats
into ``Announce`` and call ``TrackerCore.announce`` / ``TrackerCore.scrape``; every
rule (numwant clamp, seeders get leechers, intervals, events, counters,
bounds) lives here, so the two protocols cannot disagree.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from wsgi_tracker.access.hooks import AnnounceHook, OnAnnounce
from wsgi_tracker.access.policy import AccessDenied, AccessPolicy, Authenticator, ClientList
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.accounting import Accounting
from wsgi_tracker.core.addresses import endpoint, pack_ip
from wsgi_tracker.core.counters import Counters
from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.core.locks import OwnLock, ReadGate
from wsgi_tracker.core.swarm import AnyList, PeerRefused, SwarmStore
from wsgi_tracker.core.types import (
    EVENT_NONE,
    EVENT_STOPPED,
    IPV4_WIDTH,
    Announce,
    AnnounceReport,
    AnnounceResult,
    PeerChange,
    ScrapeEntry,
)
from wsgi_tracker.core.ws_swarm import WsSwarms

# ``PeerChange(...)`` runs the NamedTuple's ``__new__``, a Python function (~0.6 us); the
# same tuple made in C costs ~0.25 us, once per announce. The fields in PeerChange's order
# (tests/unit/core/test_tracker.py checks the listeners get a true PeerChange).
_new_change = tuple.__new__

# Told every change this process makes (a re-announce inside the store's
# ``refresh_grain`` makes none), whether it counted a download, and the peer's
# expiry before the change when it only refreshed a known peer (no event; same endpoint,
# seeder flag and key: nothing a reply or scrape shows moved), else 0.0: sync holds such
# a refresh back (docs/SYNC.md, "Shipping").
ChangeListener = Callable[[PeerChange, bool, float], None]


@dataclass
class TrackerCore:
    """Announce/scrape policy over one ``SwarmStore``.

    ``listeners`` are told every change this process makes (sync sends them to
    the hub); changes that arrive from the hub go straight to ``store.apply``.
    """

    config: TrackerConfig = field(default_factory=TrackerConfig)
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    listeners: list[ChangeListener] = field(default_factory=list)
    # Host-app callables (else config.authenticate / config.announce_hook); docs/ACCESS.md.
    authenticate: Authenticator | None = None
    on_announce: OnAnnounce | None = None
    counters: Counters = field(default_factory=Counters)
    store: SwarmStore = field(init=False)  # built from the config
    # WebSocket (WebTorrent) peers: a swarm of their own kind, see core/ws_swarm.py.
    ws: WsSwarms = field(init=False)
    # Serialises the store for threaded WSGI servers; uncontended under gevent. Made
    # in the process that uses it, so it is gevent's where gevent runs (locks.py). A
    # ReadGate: with sync on, taking it first applies what the hub has already sent. An
    # attribute read through ``lock``, not a ProcessLock descriptor: the compiled build
    # makes this a native class, which has no __dict__ for a descriptor to keep it in.
    _lock: OwnLock = field(
        default_factory=lambda: OwnLock(gate=True), init=False, repr=False, compare=False
    )

    @property
    def lock(self) -> ReadGate:
        """This process's lock of the store (a ``ReadGate``)."""
        return self._lock.get()

    def __post_init__(self) -> None:
        # None when public and hookless: the hot path then pays one ``is None`` test each.
        self.access = AccessPolicy.from_config(self.config, self.authenticate)
        self.clients = ClientList.from_config(self.config)
        self.hook = AnnounceHook.from_config(self.config, self.on_announce)
        self.store = SwarmStore(
            peer_ttl=self.config.peer_ttl,
            max_torrents=self.config.max_torrents,
            max_peers_per_torrent=self.config.max_peers_per_torrent,
            max_peers_per_address=self.config.max_peers_per_address,
            max_peers_per_host=self.config.max_peers_per_host,
            max_peers=self.config.max_peers,
            clock=self.clock,
        )
        self.ws = WsSwarms(
            self.config.ws_peer_ttl, self.config.max_torrents, self.config.max_peers_per_torrent
        )
        self.accounting = (
            None if self.hook is None else Accounting(self.hook, self.config.peer_ttl, self.clock)
        )

    def start(self) -> None:
        """Start this process's background work (the hook's delivery), outside any lock.

        Starting a thread yields under gevent, so it never happens on the
        announce path, where the caller holds ``lock``.
        """
        if self.hook is not None:
            self.hook.start()

    def describe_access(self) -> str:
        """``access: public`` or what the policy checks, with its counts (logged at start)."""
        return "access: " + (self.access.describe() if self.access is not None else "public")

    # Long on purpose: the whole announce policy in the order it is applied, on every announce's
    # path; helper calls would add per-announce cost (docs/BENCHMARKS.md).
    def announce(
        self,
        req: Announce,
        client_ip: bytes,
        *,
        both_families: bool = True,
        with_ids: bool = False,
        protocol: str = "http",
    ) -> AnnounceResult:
        """Record the announce and pick its peers.

        ``client_ip`` is the packed address the request came from. UDP passes
        ``both_families=False``: a datagram reply carries one family only.
        ``protocol`` ("http" or "udp") is for the statistics.
        """
        cfg = self.config
        store = self.store
        now = self.clock()
        user: Hashable = req.passkey
        if self.access is not None:
            try:
                user = self.access.admit(req.info_hash, req.passkey, now)
            except AccessDenied as exc:
                self.counters.error(protocol, exc.kind)
                raise TrackerError(str(exc)) from None
        if self.clients is not None:
            try:
                self.clients.check(req.peer_id)
            except AccessDenied as exc:
                self.counters.error(protocol, exc.kind)
                raise TrackerError(str(exc)) from None
        if cfg.allow_ip_param and req.ip:
            client_ip = pack_ip(req.ip)
        ep = endpoint(client_ip, req.port)
        if cfg.min_interval_enforced and req.event == EVENT_NONE:
            wait = self._wait_left(req.info_hash, req.peer_id, len(ep), now)
            if wait:
                self.counters.error(protocol, "announce_too_soon")
                raise TrackerError(
                    f"announce too soon: the min interval is {cfg.min_interval} s, "
                    f"wait {wait} s more"
                )
        seeder = req.left == 0
        change = _new_change(
            PeerChange, (req.info_hash, req.peer_id, ep, seeder, req.event, now, req.key)
        )
        try:
            swarm, slot, counted = store.apply(change, grain=store.refresh_grain)
        except PeerRefused as refused:  # not ``exc``: mypyc gives one name one type per function
            self.counters.error(protocol, refused.kind)
            raise TrackerError(str(refused)) from None
        self.counters.announces[protocol] += 1
        if not store.unchanged:  # a re-announce inside the grain: nothing to tell anyone
            refreshed = store.refreshed
            for listener in self.listeners:
                listener(change, counted, refreshed)
        if self.accounting is not None:
            self.accounting.record(
                AnnounceReport(
                    req.info_hash,
                    req.peer_id,
                    user,
                    ep,
                    protocol,
                    req.uploaded,
                    req.downloaded,
                    req.left,
                    req.event,
                    now,
                )
            )

        jitter = cfg.interval_jitter
        interval = cfg.interval + (int(self.rng.random() * (jitter + 1)) if jitter else 0)
        if swarm is None:
            return AnnounceResult(interval, cfg.min_interval, 0, 0)
        complete = swarm.complete
        result = AnnounceResult(interval, cfg.min_interval, complete, len(swarm) - complete)
        if req.event == EVENT_STOPPED:
            return result
        want = cfg.numwant_default if req.numwant is None else min(req.numwant, cfg.numwant_max)
        if want <= 0:
            return result
        # numwant bounds the whole reply; the requester's own family is served first.
        # A dual-stack client may sit in the other family's list too: never hand it itself.
        own, other = (swarm.v4, swarm.v6) if len(ep) == IPV4_WIDTH else (swarm.v6, swarm.v4)
        if own is not None:
            want -= self._fill(result, own, own.sample(want, seeder, slot, self.rng), with_ids)
        if both_families and other is not None and want > 0:
            runs = other.sample(want, seeder, other.slot(req.peer_id), self.rng)
            self._fill(result, other, runs, with_ids)
        return result

    def _wait_left(self, info_hash: bytes, peer_id: bytes, width: int, now: float) -> int:
        """Whole seconds until this peer may make a regular announce again (0: now).

        Its previous announce is read off its expiry in this replica, which sync
        keeps the same everywhere, so an early announce is refused whichever
        process or protocol the previous one used.
        """
        store = self.store
        swarm = store.peek(info_hash)
        pl = None if swarm is None else swarm.family(width, create=False)
        slot = -1 if pl is None else pl.slot(peer_id)
        if pl is None or slot < 0:
            return 0
        since = now - (pl.expires[slot] - store.peer_ttl)
        return max(0, math.ceil(self.config.min_interval - since))

    @staticmethod
    def _fill(
        result: AnnounceResult, pl: AnyList, runs: list[tuple[int, int]], with_ids: bool
    ) -> int:
        """Put the sampled peers in the result; returns how many."""
        if not runs:
            return 0
        if pl.width == IPV4_WIDTH:
            result.peers = pl.compact(runs)
            if with_ids:
                result.peer_ids = pl.peer_ids(runs)
        else:
            result.peers6 = pl.compact(runs)
            if with_ids:
                result.peer_ids6 = pl.peer_ids(runs)
        return len(result.peers if pl.width == IPV4_WIDTH else result.peers6) // pl.width

    def scrape(
        self, info_hashes: Iterable[bytes], *, passkey: str | None = None, protocol: str = "http"
    ) -> list[ScrapeEntry]:
        """Counts per torrent; unknown torrents count zero (BEP 48 lists them anyway).

        A torrent the access list refuses also counts zero, so a scrape never
        tells more than an announce would; a private tracker wants a passkey.
        """
        store = self.store
        access = self.access
        allowed = None
        if access is not None:
            try:
                access.admit_scrape(passkey, self.clock())
            except AccessDenied as exc:
                self.counters.error(protocol, exc.kind)
                raise TrackerError(str(exc)) from None
            if access.torrents is not None:
                allowed = access.torrent_allowed
        self.counters.scrapes[protocol] += 1
        return [
            ScrapeEntry(ih, *store.scrape(ih))
            if allowed is None or allowed(ih)
            else ScrapeEntry(ih, 0, 0, 0)
            for ih in info_hashes
        ]

    def full_scrape(
        self, *, passkey: str | None = None, protocol: str = "http"
    ) -> list[ScrapeEntry]:
        if not self.config.full_scrape:
            self.counters.error(protocol, "full_scrape_disabled")
            raise TrackerError("full scrape is disabled: give at least one info_hash")
        store = self.store
        allowed = self.access.torrent_allowed if self.access and self.access.torrents else None
        hashes = [ih for ih in store.torrents if allowed is None or allowed(ih)]
        return self.scrape(hashes, passkey=passkey, protocol=protocol)
