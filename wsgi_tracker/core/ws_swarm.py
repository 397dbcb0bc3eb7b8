"""WebSocket (WebTorrent) peers: a swarm of their own kind per torrent.

Browser peers have no address another client could dial: what a peer needs
from the tracker is *which process holds its socket*, so offers and answers
can be relayed to it. A peer here is (peer_id -> holder pid, seeder, expiry).
Every process keeps a replica (sync carries ``WsChange`` records, newest
timestamp wins); only the holder ever writes a peer, so one peer's changes
arrive in the order they happened.

Sampling offer targets is O(offers), not O(swarm): peers sit in a list with
an index dict, removal swaps the last one in. Pure data: the clock is passed
in, nothing here touches a socket.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from wsgi_tracker.core.types import EVENT_COMPLETED, EVENT_STOPPED, WsChange

SWEEP_PERIOD = 60.0


class WsSwarmFull(Exception):
    """A new peer or torrent past the configured bounds."""


class _Torrent:
    __slots__ = ("complete", "downloaded", "ids", "index", "peers", "swept")

    def __init__(self) -> None:
        self.ids: list[bytes] = []
        self.peers: list[list] = []  # [holder, seeder, expires, timestamp], parallel to ids
        self.index: dict[bytes, int] = {}
        self.complete = 0
        self.downloaded = 0
        self.swept = 0.0

    def remove(self, peer_id: bytes) -> None:
        slot = self.index.pop(peer_id)
        if self.peers[slot][1]:
            self.complete -= 1
        last_id, last = self.ids.pop(), self.peers.pop()
        if slot < len(self.ids):
            self.ids[slot], self.peers[slot] = last_id, last
            self.index[last_id] = slot


class WsSwarms:
    """Every torrent's WebSocket peers, bounded, expiring ``peer_ttl`` after their last announce."""

    def __init__(self, peer_ttl: float, max_torrents: int, max_peers_per_torrent: int) -> None:
        self.peer_ttl = peer_ttl
        self.max_torrents = max_torrents
        self.max_peers = max_peers_per_torrent
        self.torrents: dict[bytes, _Torrent] = {}

    def apply(self, change: WsChange, now: float) -> bool:
        """Record ``change``; returns whether it counted a download (a leecher completing).

        Idempotent, and an older change than the one held is ignored. Raises
        WsSwarmFull for a new peer past the bounds (never for a known one).
        """
        torrent = self.torrents.get(change.info_hash)
        if torrent is None:
            if change.event == EVENT_STOPPED:
                return False
            if len(self.torrents) >= self.max_torrents:
                self.sweep_all(now)
            if len(self.torrents) >= self.max_torrents:
                raise WsSwarmFull("too many torrents: this tracker holds the most allowed")
            torrent = self.torrents[change.info_hash] = _Torrent()
        self._sweep(torrent, now)
        slot = torrent.index.get(change.peer_id)
        peer = None if slot is None else torrent.peers[slot]
        if peer is not None and change.timestamp < peer[3]:
            return False
        if change.event == EVENT_STOPPED:
            if peer is not None:
                torrent.remove(change.peer_id)
                if not torrent.ids:
                    del self.torrents[change.info_hash]
            return False
        expires = change.timestamp + self.peer_ttl
        if peer is None:
            if len(torrent.ids) >= self.max_peers:
                raise WsSwarmFull("swarm is full: this torrent has the most peers allowed")
            torrent.index[change.peer_id] = len(torrent.ids)
            torrent.ids.append(change.peer_id)
            torrent.peers.append([change.holder, change.seeder, expires, change.timestamp])
            torrent.complete += change.seeder
            return False
        counted = change.event == EVENT_COMPLETED and change.seeder and not peer[1]
        torrent.complete += change.seeder - peer[1]
        peer[:] = [change.holder, change.seeder, expires, change.timestamp]
        if counted:
            torrent.downloaded += 1
        return counted

    def holder(self, info_hash: bytes, peer_id: bytes, now: float) -> int | None:
        """The pid holding a live peer's socket, or None."""
        torrent = self.torrents.get(info_hash)
        slot = None if torrent is None else torrent.index.get(peer_id)
        if slot is None:
            return None
        holder, _, expires, _ = torrent.peers[slot]  # type: ignore[union-attr]
        return holder if expires > now else None

    def targets(
        self,
        info_hash: bytes,
        peer_id: bytes,
        seeder: bool,
        count: int,
        rng: random.Random,
        now: float,
    ) -> list[tuple[bytes, int]]:
        """Up to ``count`` distinct live peers (peer_id, holder) to send offers to.

        Never the asker itself; a seeder's offers go to leechers only (two
        seeders have nothing to trade).
        """
        torrent = self.torrents.get(info_hash)
        if torrent is None or count <= 0:
            return []
        n = len(torrent.ids)
        # A few spare draws cover the asker and the peers a seeder skips, still O(count).
        draws = rng.sample(range(n), min(n, count * 2 + 2))
        out: list[tuple[bytes, int]] = []
        for slot in draws:
            other = torrent.ids[slot]
            holder, other_seeder, expires, _ = torrent.peers[slot]
            if other == peer_id or expires <= now or (seeder and other_seeder):
                continue
            out.append((other, holder))
            if len(out) == count:
                break
        return out

    def counts(self, info_hash: bytes) -> tuple[int, int, int]:
        """(complete, incomplete, downloaded) of one torrent, zeros if unknown."""
        torrent = self.torrents.get(info_hash)
        if torrent is None:
            return 0, 0, 0
        return torrent.complete, len(torrent.ids) - torrent.complete, torrent.downloaded

    def totals(self) -> tuple[int, int, int]:
        """(torrents, seeders, leechers) over every torrent."""
        seeders = peers = 0
        for torrent in self.torrents.values():
            seeders += torrent.complete
            peers += len(torrent.ids)
        return len(self.torrents), seeders, peers - seeders

    def peers(self) -> Iterator[WsChange]:
        """Every live peer as the change that would recreate it (snapshots)."""
        for ih, torrent in self.torrents.items():
            for peer_id, (holder, seeder, _, timestamp) in zip(
                torrent.ids, torrent.peers, strict=True
            ):
                yield WsChange(ih, peer_id, holder, seeder, 0, timestamp)

    def held_by(self, holder: int) -> list[WsChange]:
        """The peers whose socket ``holder`` holds (to stop when it is gone)."""
        return [c for c in self.peers() if c.holder == holder]

    def forget_others(self, own: int, known: set[tuple[bytes, bytes]]) -> int:
        """Drop every peer not held by ``own`` and not in ``known``; returns how many.

        A process that rejoins the hub takes its snapshot as the truth about the
        others' peers: one that left while it was away would linger until its TTL.
        """
        gone = [
            (ih, peer_id)
            for ih, torrent in self.torrents.items()
            for peer_id, peer in zip(torrent.ids, torrent.peers, strict=True)
            if peer[0] != own and (ih, peer_id) not in known
        ]
        for ih, peer_id in gone:
            torrent = self.torrents[ih]
            torrent.remove(peer_id)
            if not torrent.ids:
                del self.torrents[ih]
        return len(gone)

    @staticmethod
    def _sweep(torrent: _Torrent, now: float) -> None:
        if now - torrent.swept < SWEEP_PERIOD:
            return
        torrent.swept = now
        for peer_id, peer in list(zip(torrent.ids, torrent.peers, strict=True)):
            if peer[2] <= now:
                torrent.remove(peer_id)

    def sweep_all(self, now: float) -> None:
        """Expire every torrent's stale peers and drop the torrents left empty."""
        for ih, torrent in list(self.torrents.items()):
            torrent.swept = -SWEEP_PERIOD
            self._sweep(torrent, now)
            if not torrent.ids:
                del self.torrents[ih]
