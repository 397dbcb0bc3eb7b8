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
from collections.abc import Callable, Iterator

from cachetools import Cache, TTLCache

from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STOPPED,
    IPV4_WIDTH,
    IPV6_WIDTH,
    PeerChange,
)


class SwarmFull(Exception):
    """A new peer was refused because its torrent already holds the maximum."""


STOP_MEMORY = 30.0  # seconds a stop outranks older announces (sync lag is milliseconds)
MAX_STOPS_REMEMBERED = 100_000  # bounds that memory under a flood of stops
SMALL_LIST = 16  # up to this many peers a list is searched instead of indexed


class PeerList:
    """The peers of one address family in one torrent, seeders first.

    Most torrents are small, and a dict costs ~350 bytes even for ten peers
    (35 B/peer at 100k torrents x 10 peers, against a 200 B/peer budget), so a
    list of up to ``SMALL_LIST`` peers finds a peer id by a linear search of
    ``ids`` (C-speed, a few hundred ns) and only a larger one keeps ``index``.
    """

    __slots__ = ("addrs", "expires", "ids", "index", "seeders", "sweep_at", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.addrs = bytearray()
        self.ids: list[bytes] = []
        # Absolute expiry to the microsecond, so two announces of one peer in the same
        # second still order (sync keeps the newer); 8 bytes a peer.
        self.expires = array("d")
        self.index: dict[bytes, int] | None = None
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

    def _swap(self, i: int, j: int) -> None:
        if i == j:
            return
        w = self.width
        a, ids, exp = self.addrs, self.ids, self.expires
        a[i * w : i * w + w], a[j * w : j * w + w] = a[j * w : j * w + w], a[i * w : i * w + w]
        ids[i], ids[j] = ids[j], ids[i]
        exp[i], exp[j] = exp[j], exp[i]
        if self.index is not None:
            self.index[ids[i]] = i
            self.index[ids[j]] = j

    def upsert(self, peer_id: bytes, endpoint: bytes, seeder: bool, expires: float) -> int:
        """Add or refresh a peer; returns its slot. The caller checks capacity first."""
        index = self.index  # slot() inlined for the common, indexed case
        slot = index.get(peer_id, -1) if index is not None else self.slot(peer_id)
        w = self.width
        if slot < 0:
            slot = len(self.ids)
            self.ids.append(peer_id)
            self.addrs += endpoint
            self.expires.append(expires)
            if self.index is not None:
                self.index[peer_id] = slot
            elif slot >= SMALL_LIST:
                self.index = {pid: n for n, pid in enumerate(self.ids)}
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
        self.ids.pop()
        self.expires.pop()
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


class SwarmStore:
    """This process's replica of every swarm. Single-threaded: call from one greenlet."""

    def __init__(
        self,
        *,
        peer_ttl: int = 3900,
        max_torrents: int = 1_000_000,
        max_peers_per_torrent: int = 200_000,
        sweep_every: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.peer_ttl = peer_ttl
        self.max_peers_per_torrent = max_peers_per_torrent
        self.sweep_every = sweep_every
        self.clock = clock
        # A torrent's TTL is refreshed at most once per sweep period (re-inserting into
        # the TTLCache on every announce was ~9% of a UDP announce), so the cache keeps it
        # one period longer: it never expires before its last peer.
        self._stops: dict[bytes, float] = {}  # info_hash + peer_id -> time of its stop
        self.torrents: TTLCache[bytes, Swarm] = TTLCache(
            maxsize=max_torrents, ttl=peer_ttl + sweep_every, timer=clock
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

    def apply(
        self, change: PeerChange, count_download: bool = True
    ) -> tuple[Swarm | None, int, bool]:
        """Apply one announce (local or replicated).

        Returns (swarm, slot of the peer or -1, whether it counted a download).
        Idempotent but for the download counter: only the process that received
        the announce counts it (``count_download``); replicas learn the count
        from sync's counter increments (``add_downloaded``).
        Raises SwarmFull for a new peer in a full torrent; nothing changes then.
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
                due.sweep(now)
        peer_id = change.peer_id
        if len(swarm) >= self.max_peers_per_torrent and peer_id not in pl:
            raise SwarmFull(f"torrent {ih.hex()} already has {len(swarm)} peers")
        counted = False
        if (
            count_download
            and change.event == EVENT_COMPLETED
            and not any(p.is_seeder(peer_id) for p in swarm.lists())
        ):
            swarm.downloaded += 1
            counted = True
        slot = pl.upsert(peer_id, change.endpoint, change.seeder, change.timestamp + self.peer_ttl)
        if now - swarm.touched >= self.sweep_every:
            # Re-inserting refreshes the torrent's TTL and its place in the LRU order.
            swarm.touched = now
            self.torrents[ih] = swarm
        return swarm, slot, counted

    def _stop(self, swarm: Swarm | None, change: PeerChange) -> None:
        """Remove a stopped peer, and remember the stop for ``STOP_MEMORY`` seconds.

        Only the peer's own host may stop it: peer ids are no secret (non-compact
        replies and every handshake show them), the sender's address is proven.
        The memory keeps a copy of an earlier announce, arriving late from
        another process through sync, from bringing the peer back as a ghost.
        """
        width = len(change.endpoint)
        if swarm is not None:
            pl = swarm.family(width, create=False)
            if pl is not None and (slot := pl.slot(change.peer_id)) >= 0:
                if pl.addrs[slot * width : slot * width + width - 2] != change.endpoint[:-2]:
                    return
                pl.remove_slot(slot)
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
                pl.sweep(now)
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
            addrs, expires, seeders = pl.addrs, pl.expires, pl.seeders
            for slot, pid in enumerate(pl.ids):
                out.append(
                    PeerChange(
                        info_hash,
                        pid,
                        bytes(addrs[slot * w : slot * w + w]),
                        slot < seeders,
                        EVENT_NONE,
                        float(expires[slot] - ttl),
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
