"""SwarmStore: one process's replica of every swarm.

Layout, chosen for the benchmark targets (<= 200 B/peer, O(numwant) replies):

* Torrents live in a ``cachetools.TTLCache`` keyed by info_hash: a torrent that
  nobody announces to for ``peer_ttl`` disappears by itself, and past
  ``max_torrents`` the stalest one is evicted.
* Inside a torrent, each address family has a ``PeerList``: the peers' compact
  endpoints (6 or 18 bytes) packed back to back in one ``bytearray``, with the
  peer ids and expiry times in parallel arrays and a dict peer_id -> slot.
  Seeders occupy the slots before ``seeders``, leechers the rest, so the counts
  are read, never recomputed, and a reply is one or two slices of the packed
  bytes: the compact peer string is built without touching each peer.
* A peer expires individually: each list is swept at most every
  ``sweep_every`` seconds when its torrent is announced to, and sampling skips nothing,
  so a peer may outlive its TTL by at most that sweep period.
"""

from __future__ import annotations

import random
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from cachetools import Cache, TTLCache

from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STOPPED,
    IPV4_WIDTH,
    IPV6_WIDTH,
    ROW_SEEDER,
    PeerChange,
    PeerRow,
)


class PeerRefused(Exception):
    """An announce the store will not apply; nothing changed.

    The message is the client's failure reason; ``kind`` names the rule for
    the error counters.
    """

    kind = "refused"


class SwarmFull(PeerRefused):
    """A new peer was refused because its torrent already holds the maximum."""

    kind = "swarm_full"


class AddressFull(PeerRefused):
    """A new (or moving) peer was refused: its address already has the most peers allowed."""

    kind = "address_full"


class StoreFull(PeerRefused):
    """A new peer was refused: this process holds the most peers allowed in all."""

    kind = "store_full"


class NotYourPeer(PeerRefused):
    """The peer_id is held from another address, and the announce does not carry its key."""

    kind = "peer_identity"


STOP_MEMORY = 30.0  # seconds a stop outranks older announces (sync lag is milliseconds)
MAX_STOPS_REMEMBERED = 100_000  # bounds that memory under a flood of stops
SMALL_LIST = 16  # up to this many peers a list is searched instead of indexed
# The part of an endpoint that is "the address" for identity and per-address limits: an
# IPv4 address, or an IPv6 /64 (one host's or household's prefix: privacy addresses rotate
# inside it, and anyone can pick any of its 2^64 addresses).
HOST_WIDTH = {IPV4_WIDTH: 4, IPV6_WIDTH: 8}


class PeerList:
    """The peers of one address family in one torrent, seeders first.

    Most torrents are small, and a dict costs ~350 bytes even for ten peers
    (35 B/peer at 100k torrents x 10 peers, against a 200 B/peer budget), so a
    list of up to ``SMALL_LIST`` peers finds a peer id by a linear search of
    ``ids`` (C-speed, a few hundred ns) and only a larger one keeps ``index``,
    and ``hosts`` (peers per address, for the per-address cap) likewise: a small
    list counts an address by searching ``addrs``.
    """

    __slots__ = (
        "addrs",
        "expires",
        "host_width",
        "hosts",
        "ids",
        "index",
        "keys",
        "seeders",
        "sweep_at",
        "width",
    )

    def __init__(self, width: int) -> None:
        self.width = width
        self.host_width = HOST_WIDTH[width]
        self.addrs = bytearray()
        self.ids: list[bytes] = []
        # Absolute expiry to the microsecond, so two announces of one peer in the same
        # second still order (sync keeps the newer); 8 bytes a peer.
        self.expires = array("d")
        self.keys = array("I")  # each peer's BEP 3 key as 32 bits, 0 for none; 4 bytes a peer
        self.index: dict[bytes, int] | None = None
        self.hosts: dict[bytes, int] | None = None
        self.seeders = 0
        self.sweep_at = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, peer_id: bytes) -> bool:
        return self.slot(peer_id) >= 0

    def slot(self, peer_id: bytes) -> int:
        """The peer's slot, or -1."""
        if self.index is not None:
            return self.index.get(peer_id, -1)
        try:
            return self.ids.index(peer_id)
        except ValueError:
            return -1

    def host_count(self, host: bytes) -> int:
        """How many peers of this list announce from ``host`` (``host_width`` bytes).

        O(1) for an indexed list; a small one searches its at most ``SMALL_LIST``
        packed entries in C (``find``), skipping matches that straddle two entries.
        """
        hosts = self.hosts
        if hosts is not None:
            return hosts.get(host, 0)
        addrs, w = self.addrs, self.width
        n = 0
        pos = addrs.find(host)
        while pos >= 0:
            if pos % w:
                pos = addrs.find(host, pos + 1)
            else:
                n += 1
                pos = addrs.find(host, pos + w)
        return n

    def rehost(self, slot: int, endpoint: bytes) -> None:
        """Move the peer in ``slot`` to another address (its key was checked)."""
        hosts = self.hosts
        if hosts is not None:
            at, hw = slot * self.width, self.host_width
            old = bytes(self.addrs[at : at + hw])
            if hosts[old] == 1:
                del hosts[old]
            else:
                hosts[old] -= 1
            new = endpoint[:hw]
            hosts[new] = hosts.get(new, 0) + 1
        self.addrs[slot * self.width : (slot + 1) * self.width] = endpoint

    def _swap(self, i: int, j: int) -> None:
        if i == j:
            return
        w = self.width
        a, ids, exp, keys = self.addrs, self.ids, self.expires, self.keys
        a[i * w : i * w + w], a[j * w : j * w + w] = a[j * w : j * w + w], a[i * w : i * w + w]
        ids[i], ids[j] = ids[j], ids[i]
        exp[i], exp[j] = exp[j], exp[i]
        keys[i], keys[j] = keys[j], keys[i]
        if self.index is not None:
            self.index[ids[i]] = i
            self.index[ids[j]] = j

    def upsert(
        self, slot: int, peer_id: bytes, endpoint: bytes, seeder: bool, expires: float, key: int
    ) -> int:
        """Add (``slot`` -1) or refresh the peer; returns its slot.

        The caller found the slot and checked capacity and identity first; a
        refresh keeps the address (``rehost`` moves it) but may change the port.
        """
        w = self.width
        if slot < 0:
            slot = len(self.ids)
            self.ids.append(peer_id)
            self.addrs += endpoint
            self.expires.append(expires)
            self.keys.append(key)
            if self.index is not None:
                self.index[peer_id] = slot
                counts = self.hosts
                assert counts is not None  # kept whenever the index is
                host = endpoint[: self.host_width]
                counts[host] = counts.get(host, 0) + 1
            elif slot >= SMALL_LIST:
                self.index = {pid: n for n, pid in enumerate(self.ids)}
                hw = self.host_width
                hosts: dict[bytes, int] = {}
                for at in range(0, len(self.addrs), w):
                    host = bytes(self.addrs[at : at + hw])
                    hosts[host] = hosts.get(host, 0) + 1
                self.hosts = hosts
            if seeder:
                self._swap(slot, self.seeders)
                slot = self.seeders
                self.seeders += 1
            return slot
        self.addrs[slot * w : slot * w + w] = endpoint
        self.expires[slot] = expires
        if seeder and slot >= self.seeders:
            self._swap(slot, self.seeders)
            slot = self.seeders
            self.seeders += 1
        elif not seeder and slot < self.seeders:
            self.seeders -= 1
            self._swap(slot, self.seeders)
            slot = self.seeders
        return slot

    def remove_slot(self, slot: int) -> None:
        if slot < self.seeders:
            self.seeders -= 1
            self._swap(slot, self.seeders)
            slot = self.seeders
        last = len(self.ids) - 1
        self._swap(slot, last)
        if self.index is not None:
            del self.index[self.ids[last]]
            hosts = self.hosts
            assert hosts is not None
            at = last * self.width
            host = bytes(self.addrs[at : at + self.host_width])
            if hosts[host] == 1:
                del hosts[host]
            else:
                hosts[host] -= 1
        self.ids.pop()
        self.expires.pop()
        self.keys.pop()
        del self.addrs[last * self.width :]

    def is_seeder(self, peer_id: bytes) -> bool:
        return 0 <= self.slot(peer_id) < self.seeders

    def sweep(self, now: float) -> int:
        """Drop expired peers; walking backwards keeps every swapped-in peer checked."""
        exp = self.expires
        dropped = 0
        for slot in range(len(exp) - 1, -1, -1):
            if exp[slot] <= now:
                self.remove_slot(slot)
                dropped += 1
        return dropped

    def sample(
        self, want: int, for_seeder: bool, exclude: int, rng: random.Random
    ) -> list[tuple[int, int]]:
        """Slot runs [a, b) holding up to ``want`` peers, never ``exclude``.

        A seeder gets leechers only; a leecher gets seeders first, then
        leechers. Within a partition the peers are in no particular order, so a
        contiguous window from a random start is a fair sample, and costs
        O(want) rather than O(swarm).
        """
        runs: list[tuple[int, int]] = []
        if want <= 0:
            return runs
        seeders = self.seeders
        if not for_seeder and seeders:
            want -= _window(runs, 0, seeders, want, exclude, rng)
        n = len(self.ids)
        if want > 0 and n > seeders:
            _window(runs, seeders, n, want, exclude, rng)
        return runs

    def compact(self, runs: list[tuple[int, int]]) -> bytes:
        w = self.width
        addrs = self.addrs
        if len(runs) == 1:
            a, b = runs[0]
            return bytes(addrs[a * w : b * w])
        return b"".join([addrs[a * w : b * w] for a, b in runs])

    def peer_ids(self, runs: list[tuple[int, int]]) -> list[bytes]:
        out: list[bytes] = []
        for a, b in runs:
            out.extend(self.ids[a:b])
        return out


def _window(
    runs: list[tuple[int, int]], lo: int, hi: int, want: int, exclude: int, rng: random.Random
) -> int:
    """Append the runs of up to ``want`` slots of [lo, hi), skipping ``exclude``; how many.

    The slots are a ring: a window from a random start wraps past ``hi`` to
    ``lo``, so every slot is equally likely to be chosen. A window that covers
    ``exclude`` is one slot longer and split around it. Plain arithmetic on one
    or two runs: this is on every announce's path.
    """
    span = hi - lo
    inside = lo <= exclude < hi
    pieces: tuple[tuple[int, int], ...]
    if span - inside <= want:  # the whole partition
        pieces, taken = ((lo, hi),), span - inside
    else:
        start = lo + int(rng.random() * span)
        end = start + want
        if inside and (exclude - start) % span < want:
            end += 1
        pieces = ((start, end),) if end <= hi else ((start, hi), (lo, end - span))
        taken = want
    for a, b in pieces:
        if a <= exclude < b:
            if a < exclude:
                runs.append((a, exclude))
            if exclude + 1 < b:
                runs.append((exclude + 1, b))
        else:
            runs.append((a, b))
    return taken


class Swarm:
    """One torrent: its peers by family and its completed-download counter."""

    __slots__ = ("downloaded", "touched", "v4", "v6")

    def __init__(self) -> None:
        self.v4: PeerList | None = None
        self.v6: PeerList | None = None
        self.downloaded = 0
        self.touched = -1  # when the torrent cache's TTL was last refreshed

    def lists(self) -> Iterator[PeerList]:
        if self.v4 is not None:
            yield self.v4
        if self.v6 is not None:
            yield self.v6

    # The counts are read on every announce: plain attribute arithmetic, no generators.
    @property
    def complete(self) -> int:
        v4, v6 = self.v4, self.v6
        return (0 if v4 is None else v4.seeders) + (0 if v6 is None else v6.seeders)

    @property
    def incomplete(self) -> int:
        return len(self) - self.complete

    def __len__(self) -> int:
        v4, v6 = self.v4, self.v6
        return (0 if v4 is None else len(v4.ids)) + (0 if v6 is None else len(v6.ids))

    def family(self, width: int, create: bool) -> PeerList | None:
        if width == IPV4_WIDTH:
            if self.v4 is None and create:
                self.v4 = PeerList(IPV4_WIDTH)
            return self.v4
        if self.v6 is None and create:
            self.v6 = PeerList(IPV6_WIDTH)
        return self.v6


class _Torrents(TTLCache[bytes, Swarm]):
    """The torrent cache, telling the store how many peers leave with a dropped torrent.

    ``SwarmStore.peers_held`` bounds the whole replica, so it must see the peers
    of every torrent the cache expires or evicts. Re-inserting a torrent (the
    TTL refresh) may first expire that same entry: its peers stay, so they are
    not counted out.
    """

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float], store: SwarmStore):
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self._store = store
        self._keeping: Swarm | None = None

    def __setitem__(self, key: bytes, value: Swarm) -> None:  # type: ignore[override]
        self._keeping = value
        try:
            super().__setitem__(key, value)
        finally:
            self._keeping = None

    def expire(self, time: float | None = None) -> list[tuple[bytes, Swarm]]:  # type: ignore[override]
        expired = list(super().expire(time))
        for _, swarm in expired:
            if swarm is not self._keeping:
                self._store.peers_held -= len(swarm)
        return expired

    def popitem(self) -> tuple[bytes, Swarm]:
        key, swarm = super().popitem()
        self._store.peers_held -= len(swarm)
        return key, swarm


class SwarmStore:
    """This process's replica of every swarm. Single-threaded: call from one greenlet.

    Bounds (each refuses a newcomer with its own ``PeerRefused``, and keeps the
    peers it has): ``max_peers_per_torrent``, ``max_peers_per_address`` (in one
    torrent, per IPv4 address or IPv6 /64) and ``max_peers`` over the whole
    replica; ``max_torrents`` evicts the stalest torrent instead.
    """

    def __init__(
        self,
        *,
        peer_ttl: int = 3900,
        max_torrents: int = 1_000_000,
        max_peers_per_torrent: int = 200_000,
        max_peers_per_address: int = 16,
        max_peers: int = 5_000_000,
        sweep_every: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.peer_ttl = peer_ttl
        self.max_peers_per_torrent = max_peers_per_torrent
        self.max_peers_per_address = max_peers_per_address
        self.max_peers = max_peers
        self.peers_held = 0  # every peer entry in the replica, expired but unswept included
        self.sweep_every = sweep_every
        self.clock = clock
        # A torrent's TTL is refreshed at most once per sweep period (re-inserting into
        # the TTLCache on every announce was ~9% of a UDP announce), so the cache keeps it
        # one period longer: it never expires before its last peer.
        self._stops: dict[bytes, float] = {}  # info_hash + peer_id -> time of its stop
        self.torrents: TTLCache[bytes, Swarm] = _Torrents(
            max_torrents, peer_ttl + sweep_every, clock, self
        )
        # ``apply`` reads the cache's own dict and LRU order directly: TTLCache.__getitem__
        # is ~2 us of Python (a timer call, an expiry check, then the same LRU move) on
        # every announce, ~5% of a UDP announce (py-spy). The expiry check is not needed:
        # a torrent held past its TTL has only expired peers, which ``apply`` sweeps
        # before it re-inserts the torrent. tests/unit/core/test_swarm.py checks that these are the
        # cache's own, so a cachetools that keeps them elsewhere fails there, not here.
        cache = vars(self.torrents)
        self._held: dict[bytes, Swarm] = cache["_Cache__data"]
        self._lru: OrderedDict[bytes, object] = cache["_TTLCache__links"]

    def __len__(self) -> int:
        return len(self.torrents)

    def get(self, info_hash: bytes) -> Swarm | None:
        return self.torrents.get(info_hash)

    def peek(self, info_hash: bytes) -> Swarm | None:
        """The torrent, leaving its place in the eviction order alone.

        ``get`` counts as use: it moves the torrent to the fresh end of the LRU
        order. Readers that walk every torrent (snapshots, sync, full scrape)
        would reset that order to insertion order, making the oldest torrents
        the next evicted however busy they are. Expired reads as absent.
        """
        torrents = self.torrents
        if info_hash not in torrents:  # TTLCache.__contains__: no reordering
            return None
        return Cache.__getitem__(torrents, info_hash)

    # Long on purpose: every announce and every synced change runs it; split into calls it costs
    # more per announce (see docs/BENCHMARKS.md, 'Where the time goes').
    def apply(
        self, change: PeerChange, count_download: bool = True
    ) -> tuple[Swarm | None, int, bool]:
        """Apply one announce (local or replicated).

        Returns (swarm, slot of the peer or -1, whether it counted a download).
        Idempotent but for the download counter: only the process that received
        the announce counts it (``count_download``); replicas learn the count
        from sync's counter increments (``add_downloaded``).
        Raises a ``PeerRefused`` (nothing changes then) for a peer held from
        another address without its key (``NotYourPeer``), and for a newcomer
        past a bound (``SwarmFull``, ``AddressFull``, ``StoreFull``). The same
        rules run for local announces and replicated ones, so every replica
        refuses what one refuses.
        """
        ih = change.info_hash
        swarm = self._held.get(ih)
        if swarm is not None:
            self._lru.move_to_end(ih)
        if change.event == EVENT_STOPPED:
            self._stop(swarm, change)
            return swarm, -1, False
        stops = self._stops
        if stops and stops.get(ih + change.peer_id, -1.0) > change.timestamp:
            return swarm, -1, False  # a late copy of an announce the peer has since stopped
        if swarm is None:
            swarm = Swarm()
        endpoint = change.endpoint
        v4, v6 = swarm.v4, swarm.v6
        pl = v4 if len(endpoint) == IPV4_WIDTH else v6
        if pl is None:
            pl = swarm.family(len(endpoint), create=True)
            assert pl is not None
        # Sweep both families first: a list nobody of its family announces to must still
        # expire (its peers are handed to the other family), and dead peers hold no places.
        now = int(self.clock())
        for due in (v4, v6):
            if due is not None and now >= due.sweep_at:
                due.sweep_at = now + self.sweep_every
                self.peers_held -= due.sweep(now)
        peer_id = change.peer_id
        index = pl.index  # slot() inlined for the common, indexed case
        slot = index.get(peer_id, -1) if index is not None else pl.slot(peer_id)
        if slot < 0:
            self._admit(swarm, pl, change)
        else:
            w = pl.width
            at = slot * w
            if pl.addrs[at : at + w] != endpoint:
                self._move(pl, slot, change)
            elif change.key and not pl.keys[slot]:
                pl.keys[slot] = change.key  # a keyless peer takes the first key it sends
        counted = False
        if (
            count_download
            and change.event == EVENT_COMPLETED
            and not any(p.is_seeder(peer_id) for p in swarm.lists())
        ):
            swarm.downloaded += 1
            counted = True
        if slot < 0:
            self.peers_held += 1
        slot = pl.upsert(
            slot, peer_id, endpoint, change.seeder, change.timestamp + self.peer_ttl, change.key
        )
        if now - swarm.touched >= self.sweep_every:
            # Re-inserting refreshes the torrent's TTL and its place in the LRU order.
            swarm.touched = now
            self.torrents[ih] = swarm
        return swarm, slot, counted

    def newer(self, change: PeerChange) -> int:
        """1 if ``change`` is newer than what the store holds for the peer (or the peer is
        unknown), 0 if it is from the same instant, -1 if older.

        Each peer's expiry is kept to the microsecond, so a tie is the same
        announce seen twice; ``merge`` breaks it by what the change is.
        """
        swarm = self.get(change.info_hash)
        if swarm is None:
            return 1
        pl = swarm.family(len(change.endpoint), create=False)
        if pl is None or (slot := pl.slot(change.peer_id)) < 0:
            return 1
        expires = change.timestamp + self.peer_ttl
        held = pl.expires[slot]
        return (expires > held) - (expires < held)

    def merge(self, change: PeerChange, state: bool = False) -> bool:
        """Merge a change another process made; an older one never undoes a newer one.

        A delta (an announce as it happened, ``state`` False) wins a tie: deltas
        from one process arrive in order, so the later one is the truth. A state
        record (a snapshot or re-sent replica, ``state`` True) loses a tie: it
        may be older than what we hold within the same second. Downloads are
        never counted here (they arrive as counter increments). A change that
        loses still teaches its key (``learn_key``). Returns whether it was
        applied: the rules refuse here what they refuse locally (a full swarm, a
        peer held from another address without its key).
        """
        if self.newer(change) < (1 if state else 0):
            if change.key:
                self.learn_key(change)
            return False
        try:
            self.apply(change, count_download=False)
        except PeerRefused:
            return False
        return True

    # Long on purpose: the one loop every synced change runs through; each call it saved is
    # ~0.1 us of the <= 1.5 us a remote change may cost (docs/BENCHMARKS.md, "core").
    def merge_many(
        self,
        rows: Sequence[PeerRow],
        start: int = 0,
        stop: int | None = None,
        state: bool = False,
        news: list[PeerRow] | None = None,
    ) -> int:
        """``merge`` each of ``rows[start:stop]`` in turn; how many were applied (``news``
        gets those rows).

        The same store as one ``merge`` per row (tests/unit/core/test_swarm.py
        checks it on random sequences), at a fraction of the cost: no PeerChange
        per row, one lookup of the torrent and the peer for both the age check
        and the write, and for the commonest change, a known peer re-announcing
        from the same endpoint with the same seeder flag, only its expiry moves.
        Anything else (a newcomer, a move, a stop, a list due for its sweep, a
        torrent due for its TTL refresh) takes ``merge``. One clock reading
        serves the whole slice: callers bound the slice, so it is milliseconds.
        """
        held, lru, stops = self._held, self._lru, self._stops
        ttl, every = self.peer_ttl, self.sweep_every
        now = int(self.clock())
        applied = 0
        for i in range(start, len(rows) if stop is None else stop):
            row = rows[i]
            ih, pid, ts, flags, event, endpoint, key = row
            swarm = held.get(ih)
            # A torrent not due for its TTL refresh is not expired either (its TTL runs a
            # sweep period past the refresh), so ``get`` would find it too.
            if swarm is not None and now - swarm.touched < every:
                v4, v6 = swarm.v4, swarm.v6
                pl = v4 if len(endpoint) == IPV4_WIDTH else v6
                if pl is not None:
                    index = pl.index
                    slot = index.get(pid, -1) if index is not None else pl.slot(pid)
                    if slot >= 0:
                        expires = ts + ttl
                        held_at = pl.expires[slot]
                        w = pl.width
                        at = slot * w
                        if expires < held_at or (state and expires == held_at):
                            lru.move_to_end(ih)  # not newer: ``newer``'s lookup, ``learn_key``
                            if key and not pl.keys[slot]:
                                hw = pl.host_width
                                if pl.addrs[at : at + hw] == endpoint[:hw]:
                                    pl.keys[slot] = key
                            continue
                        if (
                            event != EVENT_STOPPED
                            and (flags & ROW_SEEDER) == (slot < pl.seeders)
                            and (v4 is None or now < v4.sweep_at)
                            and (v6 is None or now < v6.sweep_at)
                            and pl.addrs[at : at + w] == endpoint
                        ):
                            lru.move_to_end(ih)
                            if not stops or stops.get(ih + pid, -1.0) <= ts:
                                pl.expires[slot] = expires
                                if key and not pl.keys[slot]:
                                    pl.keys[slot] = key
                            applied += 1
                            if news is not None:
                                news.append(row)
                            continue
            change = PeerChange(ih, pid, endpoint, bool(flags & ROW_SEEDER), event, ts, key)
            if self.merge(change, state):
                applied += 1
                if news is not None:
                    news.append(row)
        return applied

    def _admit(self, swarm: Swarm, pl: PeerList, change: PeerChange) -> None:
        """Raise unless a new peer may join: the bounds, and the peer's other family.

        A dual-stack client is one peer_id in both families' lists. When the
        other family holds it with a key, only that key may add this family's
        entry: otherwise anyone who read the peer_id could take the place the
        client's own second announce will need, and keep it.
        """
        if self.peers_held >= self.max_peers:
            raise StoreFull(
                f"tracker is full: {self.peers_held} peers held, the most allowed; retry later"
            )
        if len(swarm) >= self.max_peers_per_torrent:
            raise SwarmFull("swarm is full: this torrent has the most peers allowed")
        host = change.endpoint[: pl.host_width]
        if pl.host_count(host) >= self.max_peers_per_address:
            raise AddressFull(
                f"too many peers from your address: this torrent already has "
                f"{self.max_peers_per_address} from it"
            )
        other = swarm.v6 if pl is swarm.v4 else swarm.v4
        if other is not None:
            oslot = other.slot(change.peer_id)
            if oslot >= 0 and other.keys[oslot] and other.keys[oslot] != change.key:
                raise NotYourPeer(
                    "peer_id is in use by another client in this torrent: send the key "
                    "it announced with, or use a peer_id of your own"
                )

    def _move(self, pl: PeerList, slot: int, change: PeerChange) -> None:
        """A known peer announces another endpoint: a new port, or (with its key) a new address.

        Peer ids are no secret (non-compact replies and every handshake show
        them), so an address change is taken only with the key the peer first
        sent; a peer that never sent one stays where it is until it expires.
        """
        hw = pl.host_width
        at = slot * pl.width
        if pl.addrs[at : at + hw] == change.endpoint[:hw]:
            if change.key and not pl.keys[slot]:
                pl.keys[slot] = change.key
            return
        held = pl.keys[slot]
        if not held or held != change.key:
            raise NotYourPeer(
                "peer_id is in use from another address: announce from that address, "
                "or send the key it first announced with"
            )
        if pl.host_count(change.endpoint[:hw]) >= self.max_peers_per_address:
            raise AddressFull(
                f"too many peers from your address: this torrent already has "
                f"{self.max_peers_per_address} from it"
            )
        pl.rehost(slot, change.endpoint)

    def learn_key(self, change: PeerChange) -> None:
        """Give a keyless peer the key of a stale copy of it from its own address.

        A replica restored from the sidecar's snapshot file holds its peers
        without keys; the workers' re-sent replicas carry them but are no newer,
        so they are not applied. Their keys still are: the record is the same
        peer at the same address, which is all the identity rule asks.
        """
        swarm = self._held.get(change.info_hash)
        pl = None if swarm is None else swarm.family(len(change.endpoint), create=False)
        if pl is None:
            return
        slot = pl.slot(change.peer_id)
        if slot < 0 or pl.keys[slot]:
            return
        at, hw = slot * pl.width, pl.host_width
        if pl.addrs[at : at + hw] == change.endpoint[:hw]:
            pl.keys[slot] = change.key

    def _stop(self, swarm: Swarm | None, change: PeerChange) -> None:
        """Remove a stopped peer, and remember the stop for ``STOP_MEMORY`` seconds.

        Only the peer itself may stop it: from its own address, or from
        another with its key (``_move``'s rule); anything else raises
        ``NotYourPeer`` and changes nothing. The memory keeps a copy of an
        earlier announce, arriving late from another process through sync, from
        bringing the peer back as a ghost.
        """
        width = len(change.endpoint)
        if swarm is not None:
            pl = swarm.family(width, create=False)
            if pl is not None and (slot := pl.slot(change.peer_id)) >= 0:
                hw = pl.host_width
                at = slot * width
                if pl.addrs[at : at + hw] != change.endpoint[:hw] and (
                    not pl.keys[slot] or pl.keys[slot] != change.key
                ):
                    raise NotYourPeer(
                        "peer_id is in use from another address: only the peer itself "
                        "may stop it (from its address, or with the key it announced with)"
                    )
                pl.remove_slot(slot)
                self.peers_held -= 1
        stops = self._stops
        key = change.info_hash + change.peer_id
        stops.pop(key, None)  # re-inserted at the young end: the dict stays in time order
        stops[key] = change.timestamp
        horizon = self.clock() - STOP_MEMORY
        while stops:
            oldest = next(iter(stops))
            if stops[oldest] > horizon and len(stops) <= MAX_STOPS_REMEMBERED:
                break
            del stops[oldest]

    def scrape(self, info_hash: bytes) -> tuple[int, int, int]:
        """(complete, downloaded, incomplete) as BEP 48 orders them; only announces keep a
        torrent fresh, so a scrape peeks."""
        swarm = self.peek(info_hash)
        if swarm is None:
            return 0, 0, 0
        return swarm.complete, swarm.downloaded, swarm.incomplete

    def add_downloaded(self, info_hash: bytes, count: int) -> None:
        """A download counted by another process (a sync counter increment)."""
        swarm = self.torrents.get(info_hash)
        if swarm is None:
            swarm = Swarm()
            self.torrents[info_hash] = swarm
        swarm.downloaded += count

    def set_downloaded(self, info_hash: bytes, total: int) -> None:
        """Adopt the hub's authoritative completed count (counters are summed, not merged)."""
        swarm = self.torrents.get(info_hash)
        if swarm is None:
            swarm = Swarm()
            self.torrents[info_hash] = swarm
        swarm.downloaded = total

    def expire(self) -> None:
        """Drop expired torrents and peers everywhere (the periodic housekeeping)."""
        self.torrents.expire()
        now = int(self.clock())
        for swarm in list(self.torrents.values()):
            for pl in swarm.lists():
                self.peers_held -= pl.sweep(now)
                pl.sweep_at = now + self.sweep_every

    def peers(self) -> Iterator[PeerChange]:
        """Every live peer as a change, with the time it was last seen (for snapshots)."""
        for ih in list(self.torrents.keys()):
            yield from self.swarm_peers(ih)

    def swarm_peers(self, info_hash: bytes) -> list[PeerChange]:
        """One torrent's peers, taken in one go: sync sends a swarm between other work."""
        swarm = self.peek(info_hash)
        if swarm is None:
            return []
        ttl = self.peer_ttl
        out: list[PeerChange] = []
        for pl in swarm.lists():
            w = pl.width
            addrs, expires, seeders, keys = pl.addrs, pl.expires, pl.seeders, pl.keys
            for slot, pid in enumerate(pl.ids):
                out.append(
                    PeerChange(
                        info_hash,
                        pid,
                        bytes(addrs[slot * w : slot * w + w]),
                        slot < seeders,
                        EVENT_NONE,
                        float(expires[slot] - ttl),
                        keys[slot],
                    )
                )
        return out

    def totals(self) -> tuple[int, int, int]:
        """(torrents, seeders, leechers) across the replica."""
        seeders = leechers = 0
        for swarm in self.torrents.values():
            s = swarm.complete
            seeders += s
            leechers += len(swarm) - s
        return len(self.torrents), seeders, leechers
