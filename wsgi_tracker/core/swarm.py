"""SwarmStore: one process's replica of every swarm.

Layout, chosen for the benchmark targets (<= 200 B/peer, <= 300 B/torrent,
O(numwant) replies):

* Torrents live in one plain dict keyed by info_hash, in the order they were
  last refreshed (an announce refreshes a torrent at most once a sweep period),
  which is also the order they expire in: a torrent that nobody announces to
  for ``peer_ttl`` (plus a sweep period) disappears, and past ``max_torrents``
  the stalest one is evicted, both from the front of that order.
* Inside a torrent, each address family has a ``PeerList``: the peers' compact
  endpoints (6 or 18 bytes) packed back to back in one ``bytearray``, the peer
  ids likewise in another, expiry times and keys in parallel arrays, and for
  a large list an open-addressing table of slots over those packed ids.
  Seeders occupy the slots before ``seeders``, leechers the rest, so the counts
  are read, never recomputed, and a reply is one or two slices of the packed
  bytes: the compact peer string is built without touching each peer.
* A torrent of one peer keeps it as a ``OnePeer``, one packed bytes object
  with PeerList's reading interface; the second peer turns it into a PeerList.
* A peer expires individually: each list is swept at most every
  ``sweep_every`` seconds when its torrent is announced to, and sampling skips nothing,
  so a peer may outlive its TTL by at most that sweep period.
"""

from __future__ import annotations

import collections
import math
import random
import struct
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import ClassVar

from mypy_extensions import i64, mypyc_attr

from wsgi_tracker.core.pending import FOLD_PER_RECORD, MAX_PENDING, PendingChanges, Records
from wsgi_tracker.core.types import (
    EVENT_COMPLETED,
    EVENT_NONE,
    EVENT_STOPPED,
    IPV4_WIDTH,
    IPV6_WIDTH,
    ROW_SEEDER,
    PeerChange,
    PeerRow,
    row_change,
)


class PeerRefused(Exception):
    """An announce the store will not apply; nothing changed.

    The message is the client's failure reason; ``kind`` names the rule for
    the error counters.
    """

    kind: ClassVar[str] = "refused"


class SwarmFull(PeerRefused):
    """A new peer was refused because its torrent already holds the maximum."""

    kind: ClassVar[str] = "swarm_full"


class AddressFull(PeerRefused):
    """A new (or moving) peer was refused: its address already has the most peers allowed."""

    kind: ClassVar[str] = "address_full"


class StoreFull(PeerRefused):
    """A new peer was refused: this process holds the most peers allowed in all."""

    kind: ClassVar[str] = "store_full"


class NotYourPeer(PeerRefused):
    """The peer_id is held from another address, and the announce does not carry its key."""

    kind: ClassVar[str] = "peer_identity"


STOP_MEMORY = 30.0  # seconds a stop outranks older announces (sync lag is milliseconds)
# A local re-announce that would move a known peer's expiry by less than this (or a
# hundredth of ``peer_ttl``, if less) changes nothing: no write, and nothing for sync to
# ship, so a client re-announcing faster than it is asked to costs the one process it
# reached, not every replica. Its expiry is then at most this early, inside the minute
# ``peer_ttl`` keeps past two intervals. Clients on their interval are never this fast.
REFRESH_GRAIN = 30.0
MAX_STOPS_REMEMBERED = 100_000  # bounds that memory under a flood of stops
# Up to this many peers a list is searched instead of indexed: a ``find`` over 128 packed ids
# (2.5 KB) is a few hundred ns, and the index and the per-address dict cost ~190 B a peer
# (a torrent of 100 peers: 255 B a peer indexed at 16, 50 B searched; docs/BENCHMARKS.md).
SMALL_LIST = 128
_EMPTY = -1  # an empty position of a large list's index
_EMPTY_TABLE = (_EMPTY,) * 64
# Every peer id the store holds is this long (BEP 3): the HTTP and UDP parsers, the sync
# frames and the snapshot all check it, ``apply`` refuses others, and ``PeerList.pids``
# packs them at this width.
PEER_ID = 20
# The part of an endpoint that is "the address" for identity and per-address limits: an
# IPv4 address, or an IPv6 /64 (one host's or household's prefix: privacy addresses rotate
# inside it, and anyone can pick any of its 2^64 addresses).
HOST_WIDTH = {IPV4_WIDTH: 4, IPV6_WIDTH: 8}
# Each address's peers over all torrents (``max_peers_per_host``) are counted in one of
# this many buckets, by a hash of the address: the same in every process, so every replica
# refuses alike, and a fixed 512 KB that mostly stays in cache (2**18 of them missed it:
# 2% more per newcomer), where a dict of every address seen costs ~100 B each (a third of
# a single-peer torrent's budget). At a million addresses ~15 share a bucket's count.
HOST_BUCKETS = 1 << 16
_HOST_MASK = HOST_BUCKETS - 1


def host_bucket(endpoint: bytes) -> int:
    """The bucket of the address in a packed ``endpoint``: an IPv4 address, or an IPv6
    /64. Machine integers (``i64``: the products stay below 2**59, so nothing wraps):
    every newcomer pays it in every process, and with mypyc's arbitrary-precision ints
    each product checked for overflow (5% of an idle worker's merge of new peers)."""
    e = endpoint
    x: i64 = i64(e[0]) << 24 | i64(e[1]) << 16 | i64(e[2]) << 8 | i64(e[3])
    if len(e) != IPV4_WIDTH:
        x = _mix(x) ^ (i64(e[4]) << 24 | i64(e[5]) << 16 | i64(e[6]) << 8 | i64(e[7]))
    return int(_mix(x) & _HOST_MASK)


def _mix(x: i64) -> i64:
    """A 32-bit integer hash (in 64-bit arithmetic)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return x ^ (x >> 16)


# How many of the oldest torrents the store lines up at a time for expiry and eviction: a
# plain dict finds its oldest entry by walking past the holes earlier deletions left, so
# one walk serves this many.
FRONT = 4096


class PeerList:
    """The peers of one address family in one torrent, seeders first.

    Most torrents are small, and a dict costs ~350 bytes even for ten peers
    (35 B/peer at 100k torrents x 10 peers, against a 200 B/peer budget), so a
    list of up to ``SMALL_LIST`` peers finds a peer id by searching ``pids``
    and only a larger one keeps ``index`` (a table of slots, 8-16 B a peer, where a
    dict and its key objects were ~120), and ``hosts`` (peers per address, for
    the per-address cap) likewise: a small list counts an address by searching
    ``addrs``. The ids are packed back to back in one ``bytearray``, not a list
    of bytes objects: a search is one ``find`` over a cache line or two, where
    the list compared an object per peer, each a cache miss of its own (12% of
    an idle worker's merge of new peers), and a peer costs 20 bytes, not 61.
    """

    __slots__ = (
        "addrs",
        "expires",
        "host_width",
        "hosts",
        "index",
        "keys",
        "pids",
        "seeders",
        "sweep_at",
        "width",
    )

    def __init__(self, width: int) -> None:
        self.width = width
        self.host_width = HOST_WIDTH[width]
        self.addrs = bytearray()
        self.pids = bytearray()  # PEER_ID bytes a peer, in slot order
        # Absolute expiry to the microsecond, so two announces of one peer in the same
        # second still order (sync keeps the newer); 8 bytes a peer.
        self.expires = array("d")
        self.keys = array("I")  # each peer's BEP 3 key as 32 bits, 0 for none; 4 bytes a peer
        # A large list's index: an open-addressing table of slots (``_EMPTY`` where none),
        # placed by ``hash(peer_id)`` and probed linearly, at most half full. A dict cost
        # ~120 B a peer (its entry and a bytes object for each key); this is 8-16 B, its
        # keys being the packed ids themselves.
        self.index: array[int] | None = None
        self.hosts: dict[bytes, int] | None = None
        self.seeders = 0
        self.sweep_at = 0

    def __len__(self) -> int:
        return len(self.expires)

    def __contains__(self, peer_id: bytes) -> bool:
        return self.slot(peer_id) >= 0

    @property
    def ids(self) -> list[bytes]:
        """The peer ids in slot order, as objects: for readers that walk the list."""
        return [self.peer_id(slot) for slot in range(len(self.expires))]

    def peer_id(self, slot: int) -> bytes:
        return bytes(self.pids[slot * PEER_ID : (slot + 1) * PEER_ID])

    def slot(self, peer_id: bytes) -> int:
        """The peer's slot, or -1."""
        index = self.index
        if index is not None:
            at = self._probe(index, peer_id)
            return index[at] if at >= 0 else -1
        pids = self.pids
        pos = pids.find(peer_id)
        while pos % PEER_ID:  # a match straddling two ids (-1 % PEER_ID is not 0 either)
            if pos < 0:
                return -1
            pos = pids.find(peer_id, pos + 1)
        return pos // PEER_ID

    def _probe(self, index: array[int], peer_id: bytes) -> int:
        """The table position holding ``peer_id``'s slot, or -1 - the empty position
        where it would go. Python's ``hash`` is seeded per process, so nobody outside
        can aim ids at one run of the table."""
        mask = len(index) - 1
        at = hash(peer_id) & mask
        pids = self.pids
        while True:
            slot = index[at]
            if slot == _EMPTY:
                return -1 - at
            start = slot * PEER_ID
            if pids[start : start + PEER_ID] == peer_id:  # a slice: startswith's args cost more
                return at
            at = (at + 1) & mask

    def _index_all(self) -> None:
        """(Re)build the table for every peer, at most a third full (it grows again at half)."""
        n = len(self.expires)
        size = len(_EMPTY_TABLE)
        while size <= 3 * n:
            size *= 2
        index = array("i", _EMPTY_TABLE) * (size // len(_EMPTY_TABLE))
        self.index = index
        for slot in range(n):
            index[-1 - self._probe(index, self.peer_id(slot))] = slot

    def _unindex(self, index: array[int], at: int) -> None:
        """Empty position ``at``, then move back each later entry of its run that may
        no longer be found past the gap (backward-shift deletion: no tombstones)."""
        mask = len(index) - 1
        index[at] = _EMPTY
        gap, at = at, (at + 1) & mask
        while (slot := index[at]) != _EMPTY:
            home = hash(self.peer_id(slot)) & mask
            if ((at - home) & mask) >= ((at - gap) & mask):
                index[gap] = slot
                index[at] = _EMPTY
                gap = at
            at = (at + 1) & mask

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
        index = self.index
        if index is not None:  # found by the ids where they are now, before they move
            at_i, at_j = self._probe(index, self.peer_id(i)), self._probe(index, self.peer_id(j))
            index[at_i], index[at_j] = j, i
        w, n = self.width, PEER_ID
        a, p, exp, keys = self.addrs, self.pids, self.expires, self.keys
        a[i * w : i * w + w], a[j * w : j * w + w] = a[j * w : j * w + w], a[i * w : i * w + w]
        p[i * n : i * n + n], p[j * n : j * n + n] = p[j * n : j * n + n], p[i * n : i * n + n]
        exp[i], exp[j] = exp[j], exp[i]
        keys[i], keys[j] = keys[j], keys[i]

    def upsert(
        self, slot: int, peer_id: bytes, endpoint: bytes, seeder: bool, expires: float, key: int
    ) -> int:
        """Add (``slot`` -1) or refresh the peer; returns its slot.

        The caller found the slot and checked capacity and identity first; a
        refresh keeps the address (``rehost`` moves it) but may change the port.
        """
        w = self.width
        if slot < 0:
            slot = len(self.expires)
            self.pids += peer_id
            self.addrs += endpoint
            self.expires.append(expires)
            self.keys.append(key)
            index = self.index
            if index is not None:
                if 2 * len(self.expires) > len(index):
                    self._index_all()
                else:
                    index[-1 - self._probe(index, peer_id)] = slot
                counts = self.hosts
                assert counts is not None  # kept whenever the index is
                host = endpoint[: self.host_width]
                counts[host] = counts.get(host, 0) + 1
            elif slot >= SMALL_LIST:
                self._index_all()
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
        last = len(self.expires) - 1
        self._swap(slot, last)
        index = self.index
        if index is not None:
            self._unindex(index, self._probe(index, self.peer_id(last)))
            hosts = self.hosts
            assert hosts is not None
            at = last * self.width
            host = bytes(self.addrs[at : at + self.host_width])
            if hosts[host] == 1:
                del hosts[host]
            else:
                hosts[host] -= 1
        del self.pids[last * PEER_ID :]
        self.expires.pop()
        self.keys.pop()
        del self.addrs[last * self.width :]

    def is_seeder(self, peer_id: bytes) -> bool:
        return 0 <= self.slot(peer_id) < self.seeders

    def sweep(self, now: float) -> list[bytes]:
        """Drop expired peers; their endpoints. Walking backwards keeps every swapped-in
        peer checked."""
        exp, w = self.expires, self.width
        dropped: list[bytes] = []
        for slot in range(len(exp) - 1, -1, -1):
            if exp[slot] <= now:
                dropped.append(bytes(self.addrs[slot * w : slot * w + w]))
                self.remove_slot(slot)
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
        n = len(self.expires)
        if want > 0 and n > seeders:
            _window(runs, seeders, n, want, exclude, rng)
        return runs

    def compact(self, runs: list[tuple[int, int]]) -> bytes:
        w = self.width
        addrs = self.addrs
        if len(runs) == 1:
            a, b = runs[0]
            return bytes(addrs[a * w : b * w])
        if len(runs) == 2:  # a window that wrapped, or one split around the asker: ~half the
            (a, b), (c, d) = runs  # time of the general join, whose list is a function call
            return b"".join((addrs[a * w : b * w], addrs[c * w : d * w]))
        return b"".join([addrs[a * w : b * w] for a, b in runs])

    def peer_ids(self, runs: list[tuple[int, int]]) -> list[bytes]:
        return [self.peer_id(slot) for a, b in runs for slot in range(a, b)]


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


# Stashed changes of a torrent nobody reads are dropped unapplied this long past the torrent
# TTL after they arrived: margin for a change stamped ahead of this process's clock.
PENDING_SKEW = 600


# OnePeer's record: peer_id, expiry, key, seeder, next sweep; then the endpoint.
_ONE = struct.Struct("<20sdIBq")
_ONE_HEAD = _ONE.size


# mypyc compiles no subclass of bytes into a native class: this one stays a Python class.
@mypyc_attr(native_class=False)
class OnePeer(bytes):
    """A list of exactly one peer, packed in one bytes object, read like a ``PeerList``.

    Most torrents have one peer (at 1M single-peer torrents a PeerList was
    ~500 of the ~970 bytes each cost); this is ~96. It is immutable: the store
    replaces it to change it, and turns it into a PeerList for a second peer
    or anything but the peer's own re-announce from the same endpoint.
    """

    __slots__ = ()
    # PeerList's: a OnePeer needs no index (shadowing bytes.index, which nothing here calls).
    index = None  # type: ignore[assignment]
    hosts = None

    def __len__(self) -> int:
        return 1

    def __contains__(self, peer_id: object) -> bool:
        return self[:20] == peer_id

    def __repr__(self) -> str:
        return f"OnePeer({self.ids[0]!r}, {self.addrs!r})"

    def fields(self) -> tuple[bytes, float, int, int, int]:
        """(peer_id, expires, key, seeder, sweep_at)."""
        return _ONE.unpack_from(self)  # type: ignore[return-value]

    def changed(
        self, *, expires: float | None = None, key: int | None = None, sweep_at: int | None = None
    ) -> OnePeer:
        pid, exp, k, seeder, sweep = _ONE.unpack_from(self)
        return one_peer(
            pid,
            self.addrs,
            bool(seeder),
            exp if expires is None else expires,
            k if key is None else key,
            sweep if sweep_at is None else sweep_at,
        )

    @property
    def width(self) -> int:
        return bytes.__len__(self) - _ONE_HEAD

    @property
    def host_width(self) -> int:
        return HOST_WIDTH[self.width]

    @property
    def ids(self) -> list[bytes]:
        return [self[:20]]

    @property
    def addrs(self) -> bytes:
        return self[_ONE_HEAD:]

    @property
    def expires(self) -> tuple[float]:
        return (_ONE.unpack_from(self)[1],)

    @property
    def keys(self) -> tuple[int]:
        return (_ONE.unpack_from(self)[2],)

    @property
    def seeders(self) -> int:
        return self[32]

    @property
    def sweep_at(self) -> int:
        return _ONE.unpack_from(self)[4]  # type: ignore[no-any-return]

    def slot(self, peer_id: bytes) -> int:
        return one_slot(self, peer_id)

    def host_count(self, host: bytes) -> int:
        return 1 if self[_ONE_HEAD : _ONE_HEAD + len(host)] == host else 0

    def is_seeder(self, peer_id: bytes) -> bool:
        return bool(self[32]) and self[:20] == peer_id

    def sample(
        self, want: int, for_seeder: bool, exclude: int, rng: random.Random
    ) -> list[tuple[int, int]]:
        """PeerList.sample for one peer: it, unless it is ``exclude`` or a seeder to a seeder."""
        if want <= 0 or exclude == 0 or (for_seeder and self[32]):
            return []
        return [(0, 1)]

    def compact(self, runs: list[tuple[int, int]]) -> bytes:
        return self[_ONE_HEAD:] if runs else b""

    def peer_ids(self, runs: list[tuple[int, int]]) -> list[bytes]:
        return [self[:20]] if runs else []


# What makes and reads a OnePeer on the paths every newcomer takes are module functions, not
# methods: mypyc calls those directly, where a method of this Python class is looked up by
# name and called through the interpreter's protocol (``promote`` and ``of`` as methods were
# 12% of an idle worker's merge of new peers).
def one_peer(
    peer_id: bytes, endpoint: bytes, seeder: bool, expires: float, key: int, sweep_at: int
) -> OnePeer:
    return OnePeer(_ONE.pack(peer_id, expires, key, seeder, sweep_at) + endpoint)


def one_slot(one: bytes, peer_id: bytes) -> int:
    """``OnePeer.slot``."""
    return 0 if one[:PEER_ID] == peer_id else -1


def promoted(one: OnePeer) -> PeerList:
    """The same peer in a PeerList, for the rules that change lists in place."""
    pid, expires, key, seeder, sweep_at = _ONE.unpack_from(one)
    endpoint = one[_ONE_HEAD:]
    pl = PeerList(len(endpoint))
    pl.upsert(-1, pid, endpoint, bool(seeder), expires, key)
    pl.sweep_at = sweep_at
    return pl


# Lists that are never written: what ``_admit`` checks a torrent's first peer against.
_NO_PEERS = {IPV4_WIDTH: PeerList(IPV4_WIDTH), IPV6_WIDTH: PeerList(IPV6_WIDTH)}
AnyList = PeerList | OnePeer


class Swarm:
    """One torrent: its peers by family and its completed-download counter."""

    __slots__ = ("downloaded", "touched", "v4", "v6")

    def __init__(self) -> None:
        self.v4: AnyList | None = None
        self.v6: AnyList | None = None
        self.downloaded = 0
        # The second an announce last refreshed the torrent's place and TTL; for one a
        # counter placed, -1 - that second (so the next announce refreshes it). The
        # store shares one int object among the torrents of each second: an int apiece
        # was 32 of the 300 bytes a torrent may cost.
        self.touched = -1

    def lists(self) -> Iterator[AnyList]:
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
        return (0 if v4 is None else len(v4)) + (0 if v6 is None else len(v6))

    def family(self, width: int, create: bool) -> AnyList | None:
        if width == IPV4_WIDTH:
            if self.v4 is None and create:
                self.v4 = PeerList(IPV4_WIDTH)
            return self.v4
        if self.v6 is None and create:
            self.v6 = PeerList(IPV6_WIDTH)
        return self.v6

    def put(self, width: int, pl: AnyList | None) -> None:
        """Set (or with None, drop) the list of one family."""
        if width == IPV4_WIDTH:
            self.v4 = pl
        else:
            self.v6 = pl

    def promote(self) -> None:
        """Turn a OnePeer into a PeerList, before a rule that changes lists in place."""
        v4, v6 = self.v4, self.v6
        if type(v4) is OnePeer:
            self.v4 = promoted(v4)
        elif type(v6) is OnePeer:
            self.v6 = promoted(v6)


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
        max_peers_per_host: int = 100_000,
        sweep_every: int = 60,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.peer_ttl = peer_ttl
        self.refresh_grain = min(REFRESH_GRAIN, peer_ttl / 100)
        self.max_peers_per_torrent = max_peers_per_torrent
        self.max_peers_per_address = max_peers_per_address
        self.max_peers = max_peers
        self.peers_held = 0  # every peer entry in the replica, expired but unswept included
        self.max_peers_per_host = max_peers_per_host
        # The peers held per address bucket (``host_bucket``), counted with ``peers_held``.
        # A list, whose items mypyc reads and writes natively (an array's go through the
        # generic protocol: a newcomer's two were ~0.2 us); small counts are shared ints.
        # Made by repetition, not from a 1 MB bytes: freeing that raised glibc's mmap
        # threshold, and the heap it then kept cost ~1 B a torrent at a million.
        self.host_peers: list[int] = [0] * HOST_BUCKETS
        # The most any bucket has held (never lowered): what a stash checks the bound by.
        self.host_peak = 0
        self.sweep_every = sweep_every
        self.clock = clock
        self.max_torrents = max_torrents
        # A torrent's TTL is refreshed at most once per sweep period (moving it in the
        # order on every announce costs more, and churns the dict), so it is kept one
        # period longer: it never expires before its last peer.
        self.torrent_ttl = peer_ttl + sweep_every
        self._stops: dict[bytes, float] = {}  # info_hash + peer_id -> time of its stop
        # The torrent index (docs/ARCHITECTURE.md, "The swarm store"): a plain dict in
        # refresh order, which is expiry order. cachetools' TTLCache cost ~250 B a torrent
        # in its links and OrderedDict, most of the 300 B a single-peer torrent may cost.
        # Readers iterate it through ``torrents``; only the store changes it. It may hold
        # expired torrents until the next insert or ``expire`` drops them: ``peek`` hides them.
        self._held: dict[bytes, Swarm] = {}
        # Remote changes stashed and not yet applied (``stash``): every read or change of
        # a torrent folds its own in first, so nothing outside the store can tell.
        self.pending = PendingChanges()
        self.max_pending = max_pending
        # The oldest torrents, (info_hash, swarm, touched) in order, as of when they were
        # lined up; one that has moved since (refreshed or dropped) is skipped.
        self._front: collections.deque[tuple[bytes, Swarm, int, float]] = collections.deque()
        # The info_hashes lined up there; a torrent that moves leaves the line.
        self._lined: set[bytes] = set()
        self._stamps: dict[int, int] = {}
        # What the last ``apply`` did, for the core's listeners (sync sorts by it): the
        # peer's expiry before it, when the change only refreshed a known peer (no event;
        # same endpoint, seeder flag and key), else 0.0; and whether it changed nothing (a
        # re-announce inside ``apply``'s ``grain``).
        self.refreshed = 0.0
        self.unchanged = False

    def __len__(self) -> int:
        return len(self.torrents)

    @property
    def torrents(self) -> dict[bytes, Swarm]:
        """Every torrent held, in refresh order, with every stashed change applied: what a
        reader that walks them all (a snapshot, a full scrape, the stats) must see."""
        if self.pending:
            self.fold_all()
        return self._held

    def names(self) -> list[bytes]:
        """Every torrent held or with changes stashed, folding nothing: for a reader that
        then reads them a chunk at a time (``peek`` folds each), where ``torrents``
        would apply every stashed change at once under the caller's lock."""
        names = list(self._held)
        if self.pending:
            held = self._held
            names.extend(ih for ih in self.pending.by_torrent if ih not in held)
        return names

    def get(self, info_hash: bytes) -> Swarm | None:
        """The torrent, as a use: one not refreshed for a sweep period is (``peek`` says why)."""
        swarm = self.peek(info_hash)
        if swarm is not None:
            now = int(self.clock())
            if now - swarm.touched >= self.sweep_every:
                swarm.touched = self._second(now)
                self._place(info_hash, swarm)
        return swarm

    def peek(self, info_hash: bytes) -> Swarm | None:
        """The torrent, leaving its place in the eviction order alone.

        ``get`` counts as use: it refreshes the torrent (its place in the
        order and its TTL) as an announce does. Readers that walk every torrent
        (snapshots, sync, full scrape) would reset that order to insertion order,
        making the oldest torrents the next evicted however busy they are.
        Expired reads as absent.
        """
        stashed = self.pending.by_torrent
        if stashed and info_hash in stashed:
            self._fold(info_hash)
        swarm = self._held.get(info_hash)
        if swarm is None or self._expiry(swarm) <= self.clock():
            return None
        return swarm

    def _expiry(self, swarm: Swarm) -> int:
        placed = swarm.touched
        return (placed if placed >= 0 else -1 - placed) + self.torrent_ttl

    def _second(self, stamp: int) -> int:
        """``stamp`` (a ``Swarm.touched``), as the one int object the torrents stamped
        in its second share."""
        stamps = self._stamps
        shared = stamps.get(stamp)
        if shared is None:
            if len(stamps) > 4:
                stamps.clear()
            shared = stamps[stamp] = stamp
        return shared

    def _place(self, info_hash: bytes, swarm: Swarm) -> None:
        """Put the torrent at the fresh end of the order with a full TTL.

        As the TTL cache did on every insert: expire what is due first, and
        make room past ``max_torrents`` by evicting the stalest torrent, whose
        peers leave ``peers_held`` with it.
        """
        held = self._held
        self._lined.discard(info_hash)
        now = self.clock() - self.torrent_ttl  # a torrent placed at or before this is expired
        old = held.pop(info_hash, None)
        if old is not None and old is not swarm:
            self._leave_all(old)  # an expired torrent made anew
        known = old is not None
        pending = self.pending.by_torrent
        moved: set[bytes] | None = None
        while (oldest := self._oldest()) is not None:
            placed = oldest[1].touched
            if (placed if placed >= 0 else -1 - placed) > now:
                break
            if pending and oldest[0] in pending:
                # Its stashed changes would have refreshed it (or found it gone, which
                # ``apply`` sees by its expiry when they are folded): not dropped here.
                if moved is None:
                    moved = set()
                elif oldest[0] in moved:
                    break
                moved.add(oldest[0])
                self._use(oldest[0], oldest[1])
                continue
            self._drop(oldest[0], oldest[1])
        if not known:
            while len(held) >= self.max_torrents and (oldest := self._oldest()) is not None:
                stale, candidate, lined_last = oldest
                if pending and stale in pending:
                    self._fold(stale)  # evicted (or kept) as it stands with them applied
                    continue
                last = self._last_announce(candidate)
                if last > lined_last or int(last) > candidate.touched:
                    # A second chance (as the CLOCK algorithm gives): announced since it
                    # was placed, so it goes to the fresh end as of that announce. Else a
                    # flood of new torrents, faster than a sweep period, would evict
                    # the busy ones between their refreshes.
                    del held[stale]
                    self._lined.discard(stale)
                    candidate.touched = self._second(int(last))
                    held[stale] = candidate
                    continue
                self._drop(stale, candidate)
        held[info_hash] = swarm

    def _last_announce(self, swarm: Swarm) -> float:
        """When the torrent's latest announce still held was made (-1: none), read off
        its peers' expiry."""
        latest = -1.0
        for pl in swarm.lists():
            latest = max(latest, max(pl.expires, default=-1.0))
        return -1.0 if latest < 0 else latest - self.peer_ttl

    def _oldest(self) -> tuple[bytes, Swarm, float] | None:
        """The torrent at the stale end of the order, and its latest announce when it was
        lined up (an announce since is a second chance)."""
        front, held, lined = self._front, self._held, self._lined
        while True:
            while front:
                ih, swarm, touched, last = front[0]
                if ih in lined and held.get(ih) is swarm and swarm.touched == touched:
                    return ih, swarm, last
                front.popleft()
            if not held:
                return None
            batch = list(islice(held.items(), FRONT))
            front.extend((ih, sw, sw.touched, self._last_announce(sw)) for ih, sw in batch)
            lined.clear()  # in place: merge_many holds it
            lined.update(ih for ih, _ in batch)

    def _drop(self, info_hash: bytes, swarm: Swarm) -> None:
        del self._held[info_hash]
        self._leave_all(swarm)

    def _leave_all(self, swarm: Swarm) -> None:
        """Every peer of a torrent leaves the store (it expired or was evicted)."""
        self.peers_held -= len(swarm)
        counts = self.host_peers
        for pl in swarm.lists():
            addrs, w = pl.addrs, pl.width
            for at in range(0, len(addrs), w):
                counts[host_bucket(bytes(addrs[at : at + w]))] -= 1

    def _leave(self, endpoint: bytes) -> None:
        self.peers_held -= 1
        self.host_peers[host_bucket(endpoint)] -= 1

    def _enter(self, bucket: int) -> None:
        """A newcomer joins (``bucket``: its address's, as ``_admit`` returned it)."""
        self.peers_held += 1
        self._host_enter(bucket)

    def _host_enter(self, bucket: int) -> None:
        held = self.host_peers[bucket] + 1
        self.host_peers[bucket] = held
        if held > self.host_peak:
            self.host_peak = held

    # Long on purpose: every announce and every synced change runs it; split into calls it costs
    # more per announce (see docs/BENCHMARKS.md, 'Where the time goes').
    def apply(
        self, change: PeerChange, count_download: bool = True, grain: float = 0.0
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
        refuses what one refuses. A peer id that is not ``PEER_ID`` bytes raises
        ``ValueError``: every parser checks it, so only a caller's bug gets here.
        ``refreshed`` says afterwards whether the change only moved a known peer's
        expiry (and from when). With ``grain`` (a local announce: ``refresh_grain``),
        such a change that would move the expiry by less than ``grain`` is not
        written, and ``unchanged`` says so: the torrent still counts it as a use.
        """
        ih = change.info_hash
        if len(change.peer_id) != PEER_ID:
            raise ValueError(f"a peer id is {PEER_ID} bytes, not {len(change.peer_id)}")
        pending = self.pending.by_torrent
        if pending and ih in pending:
            self._fold(ih)
        swarm = self._held.get(ih)
        now = int(self.clock())
        if (
            swarm is not None
            and now - swarm.touched >= self.sweep_every
            and self._expiry(swarm) <= now
        ):
            # Expired is gone, whether or not the front of the order has been dropped
            # yet: a torrent is never revived with its old counter.
            self._drop(ih, swarm)
            swarm = None
        self.refreshed = 0.0  # set again below for a refresh, once the rules have passed
        self.unchanged = False
        if change.event == EVENT_STOPPED:
            self._stop(swarm, change)
            return swarm, -1, False
        stops = self._stops  # ``stopped_since``, inlined: every announce asks it
        if stops and stops.get(ih + change.peer_id, -1.0) > change.timestamp:
            return swarm, -1, False  # a late copy of an announce the peer has since stopped
        if swarm is None:
            swarm = Swarm()
        endpoint = change.endpoint
        width = len(endpoint)
        # Sweep both families first: a list nobody of its family announces to must still
        # expire (its peers are handed to the other family), and dead peers hold no places.
        v4, v6 = swarm.v4, swarm.v6
        if v4 is not None and now >= v4.sweep_at:
            self._sweep(swarm, v4, now)
            v4 = swarm.v4
        if v6 is not None and now >= v6.sweep_at:
            self._sweep(swarm, v6, now)
            v6 = swarm.v6
        peer_id = change.peer_id
        expires = change.timestamp + self.peer_ttl
        one = v4 if type(v4) is OnePeer else v6 if type(v6) is OnePeer else None
        if v4 is None and v6 is None:  # a torrent's first peer is a OnePeer
            bucket = self._admit(swarm, _NO_PEERS[width], change)
            counted = count_download and change.event == EVENT_COMPLETED
            swarm.downloaded += counted
            self._enter(bucket)
            swarm.put(
                width,
                one_peer(
                    peer_id,
                    endpoint,
                    change.seeder,
                    expires,
                    change.key,
                    now + self.sweep_every,
                ),
            )
            slot = 0
        elif one is not None and one.addrs == endpoint and one[:20] == peer_id:
            # The one peer re-announcing from where it is: only its record changes.
            _, held_until, key, seeder, sweep_at = one.fields()
            counted = count_download and change.event == EVENT_COMPLETED and not seeder
            swarm.downloaded += counted
            if (
                change.event == EVENT_NONE
                and seeder == change.seeder
                and (not change.key or change.key == key)
            ):
                self.refreshed = held_until
                self.unchanged = grain > 0 and expires < held_until + grain
            if not self.unchanged:
                swarm.put(
                    width,
                    one_peer(
                        peer_id, endpoint, change.seeder, expires, key or change.key, sweep_at
                    ),
                )
            slot = 0
        else:
            if one is not None:
                swarm.promote()
                v4, v6 = swarm.v4, swarm.v6
            pl = v4 if width == IPV4_WIDTH else v6
            if pl is None:
                pl = swarm.family(width, create=True)
            assert type(pl) is PeerList
            slot = pl.slot(peer_id)
            bucket = -1
            if slot < 0:
                bucket = self._admit(swarm, pl, change)
            else:
                w = pl.width
                at = slot * w
                if pl.addrs[at : at + w] != endpoint:
                    self._move(pl, slot, change)
                elif change.key and not pl.keys[slot]:
                    pl.keys[slot] = change.key  # a keyless peer takes the first key it sends
                elif (
                    change.event == EVENT_NONE
                    and (slot < pl.seeders) == change.seeder
                    and (not change.key or change.key == pl.keys[slot])
                ):
                    held_at = pl.expires[slot]
                    self.refreshed = held_at
                    self.unchanged = grain > 0 and expires < held_at + grain
            counted = False
            if (
                count_download
                and change.event == EVENT_COMPLETED
                and not any(p.is_seeder(peer_id) for p in swarm.lists())
            ):
                swarm.downloaded += 1
                counted = True
            if slot < 0:
                self._enter(bucket)
            if not self.unchanged:
                slot = pl.upsert(slot, peer_id, endpoint, change.seeder, expires, change.key)
        if now - swarm.touched >= self.sweep_every:
            # Refreshes the torrent's TTL and its place in the order.
            swarm.touched = self._second(now)
            self._place(ih, swarm)
        else:
            self._use(ih, swarm)
        return swarm, slot, counted

    def _use(self, info_hash: bytes, swarm: Swarm) -> None:
        """Move the torrent to the fresh end (an announce is a use; eviction takes the
        least recently used), leaving its TTL: a dict move, as OrderedDict's was."""
        held = self._held
        del held[info_hash]
        held[info_hash] = swarm
        self._lined.discard(info_hash)

    def _sweep(self, swarm: Swarm, pl: AnyList, now: int) -> None:
        """Drop the list's expired peers, and the list once it is empty; next sweep in a period."""
        if type(pl) is OnePeer:
            if pl.expires[0] <= now:
                swarm.put(pl.width, None)
                self._leave(pl.addrs)
            else:
                swarm.put(pl.width, pl.changed(sweep_at=now + self.sweep_every))
            return
        assert type(pl) is PeerList
        pl.sweep_at = now + self.sweep_every
        for endpoint in pl.sweep(now):
            self._leave(endpoint)
        if not pl.expires:
            swarm.put(pl.width, None)

    def stopped_since(self, change: PeerChange) -> bool:
        """Whether the peer stopped after ``change`` was made: then it is a late copy,
        which ``apply`` leaves unapplied (``STOP_MEMORY``)."""
        stops = self._stops
        return bool(stops) and stops.get(change.info_hash + change.peer_id, -1.0) > change.timestamp

    def newer(self, change: PeerChange) -> int:
        """1 if ``change`` is newer than what the store holds for the peer (or the peer is
        unknown), 0 if it is from the same instant, -1 if older.

        Each peer's expiry is kept to the microsecond, so a tie is the same
        announce seen twice; ``merge`` breaks it by what the change is.
        """
        swarm = self.peek(change.info_hash)
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
        refreshes: list[PeerRow] | None = None,
        ahead: float = 0.0,
    ) -> int:
        """``merge`` each of ``rows[start:stop]`` in turn; how many were applied (``news``
        gets those rows; with ``refreshes``, the applied rows that only refreshed a
        known peer whose expiry was more than ``ahead`` seconds past the row's time go
        there instead: what ``SwarmStore.refreshed`` tells the core's listeners).

        The same store as one ``merge`` per row (tests/unit/core/test_swarm.py
        checks it on random sequences), at a fraction of the cost: no PeerChange
        per row, one lookup of the torrent and the peer for both the age check
        and the write. Three changes take a short path: a known peer
        re-announcing from the same endpoint with the same seeder flag (only
        its expiry moves), a newcomer to a torrent's list of one family (most
        of what the hub ships at once: it holds mere refreshes back), and a
        torrent's first peer (what a joining replica gets for every torrent: a
        OnePeer, no bounds to count). Anything else (a move, a stop, a list due
        for its sweep, a dual-stack torrent's newcomer, a bound reached, a known
        torrent due for its TTL refresh) takes ``merge``. One clock reading
        serves the whole slice: callers bound the slice, so it is milliseconds.
        """
        held, stops, hosts = self._held, self._stops, self.host_peers
        pending = self.pending.by_torrent  # a dict: a record's check is C, no method call
        ttl, every = self.peer_ttl, self.sweep_every
        now = int(self.clock())
        roomy = self.max_peers_per_torrent > 0 and self.max_peers_per_address > 0
        applied = 0
        for i in range(start, len(rows) if stop is None else stop):
            row = rows[i]
            ih, pid, ts, flags, event, endpoint, key = row
            if pending and ih in pending:
                self._fold(ih)
            swarm = held.get(ih)
            if swarm is not None and now - swarm.touched >= every and self._expiry(swarm) <= now:
                self._drop(ih, swarm)  # as ``apply`` does: expired is gone
                swarm = None
            # A torrent not due for its refresh is not expired either (its TTL runs a
            # sweep period past the refresh), so ``get`` would find it, and leave it be.
            if swarm is not None and now - swarm.touched < every:
                v4, v6 = swarm.v4, swarm.v6
                pl = v4 if len(endpoint) == IPV4_WIDTH else v6
                if pl is not None:
                    if type(pl) is OnePeer:
                        slot = one_slot(pl, pid)
                    else:
                        assert type(pl) is PeerList
                        slot = pl.slot(pid)
                    if slot < 0:
                        # A newcomer to a list (what most of a live stream is: the hub
                        # holds mere refreshes back). ``apply``'s rules for it, inlined:
                        # no sweep due, not stopped, room in every bound, no other family
                        # whose key would have to be checked. A OnePeer is promoted
                        # first, so the checks read a native list (if one fails, the
                        # copy is dropped and ``merge`` takes the row).
                        if type(pl) is OnePeer:
                            grown = promoted(pl)
                        else:
                            assert type(pl) is PeerList
                            grown = pl
                        bucket = host_bucket(endpoint)
                        if (
                            event != EVENT_STOPPED
                            and (v6 if pl is v4 else v4) is None
                            and now < grown.sweep_at
                            and self.peers_held < self.max_peers
                            and len(grown) < self.max_peers_per_torrent
                            and (
                                len(grown) < self.max_peers_per_address
                                or grown.host_count(endpoint[: grown.host_width])
                                < self.max_peers_per_address
                            )
                            and hosts[bucket] < self.max_peers_per_host
                        ):
                            if not stops or stops.get(ih + pid, -1.0) <= ts:
                                if grown is not pl:
                                    swarm.put(len(endpoint), grown)
                                seeder = bool(flags & ROW_SEEDER)
                                grown.upsert(-1, pid, endpoint, seeder, ts + ttl, key)
                                self._enter(bucket)
                                self._use(ih, swarm)
                            applied += 1
                            if news is not None:
                                news.append(row)
                            continue
                    else:
                        expires = ts + ttl
                        held_at = pl.expires[slot]
                        w = pl.width
                        at = slot * w
                        if expires < held_at or (state and expires == held_at):
                            # Not newer: only ``learn_key`` may apply.
                            if key and not pl.keys[slot]:
                                hw = pl.host_width
                                if pl.addrs[at : at + hw] == endpoint[:hw]:
                                    self._set_key(swarm, pl, slot, key)
                            continue
                        if (
                            event != EVENT_STOPPED
                            and (flags & ROW_SEEDER) == (slot < pl.seeders)
                            and (v4 is None or now < v4.sweep_at)
                            and (v6 is None or now < v6.sweep_at)
                            and pl.addrs[at : at + w] == endpoint
                        ):
                            quiet = (
                                refreshes is not None
                                and event == EVENT_NONE
                                and held_at > ts + ahead
                                and (not key or key == pl.keys[slot])
                            )
                            if not stops or stops.get(ih + pid, -1.0) <= ts:
                                self._use(ih, swarm)
                                if isinstance(pl, OnePeer):
                                    swarm.put(w, pl.changed(expires=expires, key=pl.keys[0] or key))
                                else:
                                    pl.expires[slot] = expires
                                    if key and not pl.keys[slot]:
                                        pl.keys[slot] = key
                            else:
                                quiet = False  # a late copy of a peer since stopped: news
                            applied += 1
                            if quiet:
                                refreshes.append(row)  # type: ignore[union-attr]
                            elif news is not None:
                                news.append(row)
                            continue
            elif (
                (swarm is None or (swarm.v4 is None and swarm.v6 is None))
                and event != EVENT_STOPPED
                and len(pid) == PEER_ID
                and self.peers_held < self.max_peers
                and roomy
                and hosts[bucket := host_bucket(endpoint)] < self.max_peers_per_host
            ):
                # A torrent's first peer (a joining replica's every torrent): a OnePeer.
                if not stops or stops.get(ih + pid, -1.0) <= ts:
                    if swarm is None:
                        swarm = Swarm()
                    swarm.put(
                        len(endpoint),
                        one_peer(
                            pid, endpoint, bool(flags & ROW_SEEDER), ts + ttl, key, now + every
                        ),
                    )
                    self._enter(bucket)
                    if now - swarm.touched >= every:
                        swarm.touched = self._second(now)
                        self._place(ih, swarm)
                    else:
                        self._use(ih, swarm)
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

    def load_state(self, rows: Sequence[PeerRow], start: int = 0, stop: int | None = None) -> int:
        """``merge_many(rows, start, stop, state=True)``, cheaper where a row is the first
        news of a torrent the store lacks: what a joining replica gets for every torrent.

        Such a torrent is made in one step, as ``merge_many``'s first-peer path makes
        it (a OnePeer), with ``_place``'s checks done once per run of them: while the
        store is under ``max_torrents`` and ``max_peers`` and its oldest torrent is
        live, placing a new torrent only appends it. Every other row (a torrent
        held, stashed, or named by the row before; a stop; a stopped peer's older
        announce) goes to ``merge_many``, in order, so the result is the same store
        (tests/unit/core/test_load_state.py checks it on random snapshots). Returns
        how many rows were applied, as ``merge_many`` counts them.
        """
        held, stops, lined, hosts = self._held, self._stops, self._lined, self.host_peers
        pending = self.pending.by_torrent
        ttl, every, per_host = self.peer_ttl, self.sweep_every, self.max_peers_per_host
        stop = len(rows) if stop is None else stop
        now = int(self.clock())
        sweep_at = now + every
        roomy = self.max_peers_per_torrent > 0 and self.max_peers_per_address > 0
        applied = room = made = 0
        stamp = now
        stashed = True  # whether ``pending`` may hold anything (it only shrinks here)
        run = start  # rows[run:i] are left to merge_many
        last = b""  # the info_hash of the row before
        i = start
        while i < stop:
            ih, pid, ts, flags, event, endpoint, key = rows[i]
            if (
                ih == last
                or ih in held
                or event == EVENT_STOPPED
                or len(pid) != PEER_ID
                or (stashed and ih in pending)
                or (stops and stops.get(ih + pid, -1.0) > ts)
                or hosts[bucket := host_bucket(endpoint)] >= per_host
            ):
                last = ih
                i += 1
                continue
            if run < i or made >= room:
                self.peers_held += made
                applied += made
                room = made = 0
                if run < i:
                    applied += self.merge_many(rows, run, i, True)
                    run = i
                oldest = self._oldest()
                if roomy and (oldest is None or self._expiry(oldest[1]) > self.clock()):
                    room = min(self.max_torrents - len(held), self.max_peers - self.peers_held)
                if room <= 0:
                    break  # _place has work to do: merge_many does it, row by row
                stamp = self._second(now)
                stashed = bool(pending)
                continue  # held may have ih now
            last = ih
            swarm = Swarm()
            one = one_peer(pid, endpoint, bool(flags & ROW_SEEDER), ts + ttl, key, sweep_at)
            if len(endpoint) == IPV4_WIDTH:
                swarm.v4 = one
            else:
                swarm.v6 = one
            swarm.touched = stamp
            if lined:
                lined.discard(ih)
            held[ih] = swarm
            self._host_enter(bucket)
            made += 1
            i += 1
            run = i
        self.peers_held += made
        applied += made
        if run < stop:
            applied += self.merge_many(rows, run, stop, True)
        return applied

    def set_totals(self, totals: Iterable[tuple[bytes, int]]) -> None:
        """``set_downloaded`` of each (info_hash, total), in order: one clock reading and
        no call for a torrent held (a joining replica's million totals)."""
        held, pending, ttl = self._held, self.pending.by_torrent, self.torrent_ttl
        now = self.clock()
        for ih, total in totals:
            swarm = held.get(ih)
            if swarm is not None and not (pending and ih in pending):
                placed = swarm.touched
                if (placed if placed >= 0 else -1 - placed) + ttl > now:
                    swarm.downloaded = total
                    continue
            self.set_downloaded(ih, total)

    # --- lazy application (docs/SYNC.md, "Applying lazily") ------------------------------

    def stash(self, records: Records, second: int) -> None:
        """Take remote changes (deltas, in order, arrived in ``second``) to be applied when
        their torrent is next read or changed, with exactly ``merge_many``'s rules and as
        of that second.

        Every read of a torrent folds its stashed changes in first (``_fold``), so
        answers are the ones applying each change at once would give. Near a global
        bound (``max_peers``, ``max_torrents``, or ``max_peers_per_host`` for the fullest
        bucket there has been, ``host_peak``), where which newcomer is refused or which
        torrent evicted would depend on when each change was applied, it applies
        everything at once instead. Stashed changes of a torrent nobody reads go
        unapplied once they have expired (``PendingChanges.drop_expired``); past
        ``max_pending`` the caller folds the oldest a slice at a time (``fold_some``,
        ``replica.stash``). Torrents whose stash reached ``MAX_PER_TORRENT`` are folded
        here, in the order they reached it, about twice this batch's records each call
        (``_fold_due``), and one that reaches ``HARD_PER_TORRENT`` at once.

        A torrent already held with nothing stashed (this process has read it, or
        announced to it) is applied at once, in one ``merge_many`` for the batch: it
        is likely read again soon, and folding a record or two per read costs about
        twice what the batch's merge does (``bench full``: HTTP beside a UDP flood
        fell to 0.13-0.32x of its solo rate when every change was stashed).
        """
        n = len(records)
        if not n:
            return
        pending = self.pending
        held = self._held
        if (
            self.peers_held + pending.records + n >= self.max_peers
            or len(held) + len(pending) + n >= self.max_torrents
            or self.host_peak + pending.records + n >= self.max_peers_per_host
        ):
            self.fold_all()
            self.merge_many(records.rows)
            return
        hashes = records.info_hashes()
        if held:
            stashed = pending.by_torrent
            hot: list[PeerRow] = []
            for i, ih in enumerate(hashes):
                if ih in held and ih not in stashed:
                    hot.append(records.row(i))
                    hashes[i] = None
            if hot:
                self.merge_many(hot)
                if len(hot) == n:
                    return
        for full in pending.add(records, hashes, second):
            self._fold(full)
        if pending.due:
            self._fold_due(FOLD_PER_RECORD * n)
        pending.drop_expired(second, self.torrent_ttl + PENDING_SKEW)

    def _fold_due(self, budget: int) -> None:
        """Fold the torrents due (``PendingChanges.due``), oldest first, until about
        ``budget`` records are folded (``FOLD_PER_RECORD`` times what the batch added)."""
        pending = self.pending
        due = pending.due
        done = 0
        while due and done < budget:
            ih = due.popleft()
            if pending.is_due(ih):
                done += self._fold(ih)

    def fold_some(self, budget: int) -> int:
        """Fold the torrents whose stashed changes are oldest, about ``budget`` changes
        (whole torrents); how many were folded."""
        pending = self.pending
        done = 0
        for ih in pending.oldest():
            done += self._fold(ih)
            if done >= budget:
                break
        return done

    def fold_all(self) -> None:
        """Apply every stashed change (a reader is about to walk every torrent)."""
        pending = self.pending
        for ih in list(pending.by_torrent):
            self._fold(ih)
        pending.clear()

    def _fold(self, info_hash: bytes) -> int:
        """Apply the torrent's stashed changes in order, each second's with the clock
        read as that second (what ``merge_many`` would have done on arrival: the same
        sweeps, refreshes and expiries); how many there were."""
        groups = self.pending.take(info_hash)
        if not groups:
            return 0
        clock = self.clock
        done = 0
        try:
            for second, rows in groups:
                self.clock = float(second).__float__  # read as that second, for this group
                self.merge_many(rows)
                done += len(rows)
        finally:
            self.clock = clock
        return done

    def _admit(self, swarm: Swarm, pl: PeerList, change: PeerChange) -> int:
        """Raise unless a new peer may join: the bounds, and the peer's other family;
        its address's bucket (``host_bucket``) if it may.

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
        bucket = self._host_room(change.endpoint)
        host = change.endpoint[: pl.host_width]
        # A list shorter than the bound cannot hold that many from one address.
        if (
            len(pl) >= self.max_peers_per_address
            and pl.host_count(host) >= self.max_peers_per_address
        ):
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
        return bucket

    def _host_room(self, endpoint: bytes) -> int:
        """The address's bucket; raise unless it may hold one more peer over all torrents:
        else one address could fill ``max_peers`` (16 peers in each of 312,500 made-up
        torrents) and every other client's newcomer would be refused until they expired."""
        bucket = host_bucket(endpoint)
        if self.host_peers[bucket] >= self.max_peers_per_host:
            raise AddressFull(
                f"too many peers from your address: it holds the most allowed over all "
                f"torrents ({self.max_peers_per_host})"
            )
        return bucket

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
        bucket = self._host_room(change.endpoint)
        self.host_peers[host_bucket(bytes(pl.addrs[at : at + pl.width]))] -= 1
        self._host_enter(bucket)
        pl.rehost(slot, change.endpoint)

    def learn_key(self, change: PeerChange) -> None:
        """Give a keyless peer the key of a stale copy of it from its own address.

        A replica restored from the sidecar's snapshot file holds its peers
        without keys; the workers' re-sent replicas carry them but are no newer,
        so they are not applied. Their keys still are: the record is the same
        peer at the same address, which is all the identity rule asks.
        """
        swarm = self.peek(change.info_hash)
        if swarm is None:
            return
        pl = swarm.family(len(change.endpoint), create=False)
        if pl is None:
            return
        slot = pl.slot(change.peer_id)
        if slot < 0 or pl.keys[slot]:
            return
        at, hw = slot * pl.width, pl.host_width
        if pl.addrs[at : at + hw] == change.endpoint[:hw]:
            self._set_key(swarm, pl, slot, change.key)

    @staticmethod
    def _set_key(swarm: Swarm, pl: AnyList, slot: int, key: int) -> None:
        if type(pl) is OnePeer:
            swarm.put(pl.width, pl.changed(key=key))
        else:
            assert type(pl) is PeerList
            pl.keys[slot] = key

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
                self._leave(bytes(pl.addrs[at : at + width]))
                if type(pl) is OnePeer or len(pl) == 1:
                    swarm.put(width, None)
                else:
                    assert type(pl) is PeerList
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
        self._counted(info_hash).downloaded += count

    def set_downloaded(self, info_hash: bytes, total: int) -> None:
        """Adopt the hub's authoritative completed count (counters are summed, not merged)."""
        self._counted(info_hash).downloaded = total

    def _counted(self, info_hash: bytes) -> Swarm:
        """The torrent a counter is for, made (without peers) if there is none; a count
        is no use of the torrent (its announce, if any, is)."""
        swarm = self.peek(info_hash)
        if swarm is None:
            swarm = Swarm()
            swarm.touched = self._second(-1 - int(self.clock()))
            self._place(info_hash, swarm)
        return swarm

    def expire(self) -> None:
        """Drop expired torrents and peers everywhere (the periodic housekeeping)."""
        now = self.clock()
        while (oldest := self._oldest()) is not None and self._expiry(oldest[1]) <= now:
            self._drop(oldest[0], oldest[1])
        second = int(now)
        for swarm in list(self.torrents.values()):
            for pl in list(swarm.lists()):
                self._sweep(swarm, pl, second)

    def peers(self) -> Iterator[PeerChange]:
        """Every live peer as a change, with the time it was last seen."""
        rows, _totals, _end = self.state_rows(list(self.torrents.keys()))
        return map(row_change, rows)

    def state_rows(
        self,
        names: Sequence[bytes],
        start: int = 0,
        budget: int | None = None,
        less: Mapping[bytes, int] | None = None,
        totals: bool = True,
    ) -> tuple[list[PeerRow], list[tuple[bytes, int]], int]:
        """The live state of ``names[start:]``, torrent by torrent, until about ``budget``
        records: (peer rows, (info_hash, total) pairs, the index after the last torrent
        taken). What sync sends of a replica and the snapshot file holds.

        A peer's row is its last announce: the time it was last seen (its expiry
        less the TTL), no event. Each torrent's total is sent less what ``less`` holds
        for it (counts the caller will send anyway), none if that leaves 0 or
        ``totals`` is false. Expired torrents are left out, and no torrent's place in
        the eviction order moves (as ``peek``). Rows, not a PeerChange apiece: that
        was ~0.4 us of a walk's ~3.7 us a torrent at 1M.
        """
        held, pending = self._held, self.pending.by_torrent
        ttl, torrent_ttl = self.peer_ttl, self.torrent_ttl
        now = self.clock()
        rows: list[PeerRow] = []
        pairs: list[tuple[bytes, int]] = []
        append = rows.append
        i, end = start, len(names)
        limit = math.inf if budget is None else budget
        while i < end and len(rows) + len(pairs) < limit:
            ih = names[i]
            i += 1
            if pending and ih in pending:
                self._fold(ih)
            swarm = held.get(ih)
            if swarm is None:
                continue
            placed = swarm.touched
            if (placed if placed >= 0 else -1 - placed) + torrent_ttl <= now:
                continue
            for pl in (swarm.v4, swarm.v6):
                if pl is None:
                    continue
                if type(pl) is OnePeer:
                    pid, expires, key, seeder, _ = _ONE.unpack_from(pl)
                    append((ih, pid, expires - ttl, seeder, EVENT_NONE, pl[_ONE_HEAD:], key))
                    continue
                assert type(pl) is PeerList
                w, addrs, exps, seeders, keys = pl.width, pl.addrs, pl.expires, pl.seeders, pl.keys
                for slot, pid in enumerate(pl.ids):
                    at = slot * w
                    append(
                        (
                            ih,
                            pid,
                            exps[slot] - ttl,
                            ROW_SEEDER if slot < seeders else 0,
                            EVENT_NONE,
                            bytes(addrs[at : at + w]),
                            keys[slot],
                        )
                    )
            count = swarm.downloaded if totals else 0
            if count and less:
                count -= less.get(ih, 0)
            if count:
                pairs.append((ih, count))
        return rows, pairs, i

    def totals(self) -> tuple[int, int, int]:
        """(torrents, seeders, leechers) across the replica; expired torrents not yet
        dropped count for nothing (``peek`` hides them)."""
        torrents = seeders = leechers = 0
        now = self.clock()
        for swarm in self.torrents.values():
            if self._expiry(swarm) <= now:
                continue
            torrents += 1
            s = swarm.complete
            seeders += s
            leechers += len(swarm) - s
        return torrents, seeders, leechers
