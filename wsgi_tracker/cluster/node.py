"""A cluster node: this machine's sync hub, joined to the other machines' through Redis.

Runs inside udp-sidecar, under gevent (redis-py's sockets are gevent's once
the sidecar has patched). Three greenlets:

* the reader joins (snapshot, totals, then the stream from the snapshot's
  position), then applies every other node's entries as ``XREAD BLOCK``
  returns them, handing them to the hub, which applies them to its replica
  and fans them out to its workers. It alone decides whether Redis is up,
  and logs the loss and the recovery, once each;
* the publisher sends this node's changes (from the hub: its workers' and its
  own UDP) in batches, one stream entry each, through a script that also adds
  the batch's completed downloads to the cluster's totals and drops a batch it
  has already added (a retry after a lost reply), so every download counts
  exactly once;
* housekeeping shares this node's statistics and reads the others' every
  second, and writes the cluster snapshot when it holds the lease for it.

WebSocket (WebTorrent) peers travel in the same entries, their holders
rewritten on arrival to this node's aliases (``routing.py``); an offer or
answer for a socket another node holds goes to that node's own stream, its
inbox, which its reader reads in the same ``XREAD`` as the changes.

While Redis is away the node serves from its replica and buffers its changes
(bounded); on rejoin it re-sends its whole replica if the buffer overflowed
or Redis lost its data (a new epoch), and claims the totals it knew, so a
restarted, empty Redis is rebuilt from the nodes. docs/CLUSTER.md has the
guarantees.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
import redis
from gevent.event import Event

from wsgi_tracker.cluster.entries import (
    ORIGIN,
    RELAY_KINDS,
    ClusterSnapshot,
    EntryError,
    Keys,
    StreamId,
    decode_entry,
    decode_snapshot,
    encode_batch,
    encode_snapshot,
    format_id,
    parse_id,
    split_frames,
    total_of,
)
from wsgi_tracker.cluster.routing import ALIAS_BASE, HolderAliases
from wsgi_tracker.core.types import EVENT_STOPPED, PeerChange, WsChange
from wsgi_tracker.sync import frames as f
from wsgi_tracker.sync.hub import SyncHub
from wsgi_tracker.sync.replica import walk

log = logging.getLogger("wsgi_tracker.cluster")

FLUSH_DELAY = 0.002  # a batch a node: at 10k announces/s, ~20 changes an entry
FLUSH_RECORDS = 1024  # sent at once rather than after the delay
MAX_BUFFERED = 200_000  # changes held while Redis is away; past it the replica is re-sent
READ_BLOCK_MS = 1000
READ_COUNT = 256
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
STATS_EVERY = 1.0
NODE_GONE_AFTER = 10.0  # a node whose statistics are this old is no longer listed
MAX_BAD_STATS = 1024  # unreadable statistics fields remembered (each is warned about once)
SEQUENCE_TTL = 86_400  # a node's last batch number outlives any retry
MAX_RELAYS = 10_000  # offers and answers waiting to go to other nodes' inboxes
INBOX_MAXLEN = 10_000  # relays kept in a node's inbox (it reads them within a second)
INBOX_TTL = 3_600  # a stopped node's inbox goes after an hour

# A total as the scripts read it: a count a Counts frame can carry (u32), else nil. A
# field someone else wrote that is not one is garbage: the scripts start it again from 0
# (the nodes' claims raise it back at their next join) rather than fail on it.
TOTAL_OF = """
local function total_of(v)
  if not v then return 0 end
  if #v > 10 or not string.match(v, '^%d+$') or tonumber(v) > 4294967295 then return nil end
  return tonumber(v)
end
"""

# Adds one batch: skipped if this node's batch number is not new (a retry of a batch
# whose reply was lost), else the completed downloads go into the totals and the
# batch into the stream, in one step, so no reader sees one without the other. Every
# check comes before the first write, and the batch number is written last: Redis keeps
# a script's writes made before an error, so a batch that failed halfway would have
# been taken for sent and its retry dropped.
# KEYS: stream, totals, the node's sequence. ARGV: node, batch number, sent at,
# frames, maxlen, sequence TTL, then info_hash/count pairs.
PUBLISH = (
    TOTAL_OF
    + """
local seq = tonumber(ARGV[2])
if seq <= tonumber(redis.call('GET', KEYS[3]) or '-1') then return false end
for k, want in pairs({[KEYS[1]] = 'stream', [KEYS[2]] = 'hash'}) do
  local t = redis.call('TYPE', k)['ok']
  if t ~= 'none' and t ~= want then return redis.error_reply(k .. ' is a ' .. t) end
end
for i = 7, #ARGV, 2 do
  if not total_of(redis.call('HGET', KEYS[2], ARGV[i])) then
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*',
                      'n', ARGV[1], 't', ARGV[3], 'f', ARGV[4])
for i = 7, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[6])
return id
"""
)

# A (re)joining node's totals and where the stream ends, read in one step. Its claims
# (the totals it last knew) above Redis's are added, and announced to the others as a
# Counts entry: that happens only when Redis lost its data. KEYS: stream, totals.
# ARGV: node, sent at, maxlen, then info_hash/claim pairs.
JOIN = (
    TOTAL_OF
    + """
local raised = {}
for i = 4, #ARGV, 2 do
  local held = total_of(redis.call('HGET', KEYS[2], ARGV[i]))
  if not held then
    redis.call('HDEL', KEYS[2], ARGV[i])
    held = 0
  end
  local more = tonumber(ARGV[i + 1]) - held
  if more > 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[i], more)
    raised[#raised + 1] = ARGV[i] .. struct.pack('>I4', more)
  end
end
if #raised > 0 then
  local body = table.concat(raised)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'n', ARGV[1], 't', ARGV[2],
             'f', struct.pack('>I4B', #body, 6) .. body)
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {redis.call('HGETALL', KEYS[2]), last[1] and last[1][1] or '0-0'}
"""
)


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class ClusterNode:
    """Join ``hub``'s machine to the cluster in the Redis at ``url``."""

    def __init__(
        self,
        hub: SyncHub,
        url: str,
        *,
        name: str = "wsgi-tracker",
        node: str = "",
        maxlen: int = 100_000,
        snapshot_interval: int = 30,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.hub = hub
        self.keys = Keys(name)
        # New on every start: after a restart, the node's own earlier entries are
        # news to it (its disk may be gone), so it must not skip them as its own.
        self.node_id = f"{node or socket.gethostname()}#{secrets.token_hex(3)}"
        self.url = redacted(url)
        self.maxlen = maxlen
        self.snapshot_interval = snapshot_interval
        # Any: redis-py types its replies as unions over its sync and async clients.
        self.redis: Any = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, protocol=2, health_check_interval=5
        )
        self._publish = self.redis.register_script(PUBLISH)
        self._join_script = self.redis.register_script(JOIN)
        self.up = False
        self.ready = Event()  # joined once, or the first attempt failed
        self.position: StreamId = ORIGIN  # the last entry read
        self._counted_to: StreamId = ORIGIN  # totals adopted include every entry up to here
        self._epoch: bytes | None = None
        self._deltas: collections.deque[PeerChange] = collections.deque()
        self._state: collections.deque[PeerChange] = collections.deque()
        self._counts: dict[bytes, int] = {}
        self._ws: collections.deque[WsChange] = collections.deque()
        # Offers and answers for other nodes' sockets: (node id, WsRelay frame bytes).
        self._relays: collections.deque[tuple[str, bytes]] = collections.deque()
        self.aliases = HolderAliases()
        self.inbox = self.keys.inbox(self.node_id)
        self._inbox_position: StreamId = ORIGIN
        self._max_buffered = max_buffered
        self._overflowed = False
        self._seq = 0
        self._inflight: list[Any] | None = None  # a batch sent but not known to be added
        self._wake = Event()
        self._lag: dict[str, tuple[float, float]] = {}  # node -> (lag, when seen)
        self._bad_stats: set[str] = set()  # fields of the stats hash warned about once
        # node -> (the "time" its last report said, when this node first read that report
        # here): a report's age is judged by this machine's clock, so a node whose clock
        # runs behind (or ahead) is neither taken for gone nor kept when it has stopped.
        self._reports_seen: dict[str, tuple[float, float]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self._down_since: float | None = None
        self._greenlets: list[gevent.Greenlet] = []

    # --- lifecycle -------------------------------------------------------------------

    def start(self, wait: float = 5.0) -> None:
        """Join in the background; wait (bounded) for the first join, so the hub's
        workers get the cluster's state in their first snapshot."""
        self.hub.uplink = self.local
        self.hub.relay_elsewhere = self.relay
        self._greenlets = [
            gevent.spawn(self._reader),
            gevent.spawn(self._publisher),
            gevent.spawn(self._housekeeping),
        ]
        self.ready.wait(wait)

    def stop(self) -> None:
        """Send what is buffered (if Redis answers), then leave the listing."""
        self.hub.uplink = None
        self.hub.relay_elsewhere = None
        gevent.killall(self._greenlets, timeout=2)
        if self.up:
            try:
                while self._unsent():
                    self._send_batch()
                self.redis.hdel(self.keys.stats, self.node_id)
            except redis.RedisError as exc:
                log.warning("cluster: last changes not sent to %s: %s", self.url, exc)
        self.redis.close()

    # --- changes out -----------------------------------------------------------------

    def local(self, frames: Sequence[f.Frame]) -> None:
        """The hub's uplink: changes made on this machine, to publish. Never blocks."""
        for frame in frames:
            if isinstance(frame, f.Deltas):
                self._deltas.extend(frame.peers)
            elif isinstance(frame, f.Snapshot):
                self._state.extend(frame.peers)
            elif isinstance(frame, f.Counts):
                for ih, n in frame.counts:
                    self._counts[ih] = self._counts.get(ih, 0) + n
            elif isinstance(frame, f.WsPeers):
                self._ws.extend(frame.changes)
        if len(self._deltas) + len(self._state) + len(self._ws) > self._max_buffered:
            # The oldest go; the whole replica is re-sent when Redis is back.
            self._overflowed = True
            for queue in (self._deltas, self._state, self._ws):
                while len(queue) > self._max_buffered // 3:
                    queue.popleft()
        self._wake.set()

    def relay(self, relay: f.WsRelay, wire: bytes) -> bool:
        """The hub's ``relay_elsewhere``: an offer or answer for a socket another node
        holds, to that node's inbox, as the pid that node knows. Never blocks; False
        (undeliverable) for a holder no node is known to have, or while Redis is away
        (a relay is a moment's message: the browser offers again at its next announce)."""
        target = self.aliases.target(relay.holder)
        if target is None or not self.up or len(self._relays) >= MAX_RELAYS:
            return False
        node, pid = target
        self._relays.append((node, f.encode(dataclasses.replace(relay, holder=pid))))
        self._wake.set()
        return True

    def _unsent(self) -> bool:
        return bool(self._inflight or self._deltas or self._state or self._counts or self._ws)

    def _pending(self, ih: bytes) -> int:
        """Downloads counted here and not known to be in Redis's totals."""
        n = self._counts.get(ih, 0)
        if self._inflight is not None:
            pairs = self._inflight[6:]
            for i in range(0, len(pairs), 2):
                if pairs[i] == ih:
                    n += int(pairs[i + 1])
        return n

    def _next_batch(self) -> list[Any]:
        step = f.RECORDS_PER_FRAME
        deltas = [self._deltas.popleft() for _ in range(min(step, len(self._deltas)))]
        state = [self._state.popleft() for _ in range(min(step, len(self._state)))]
        ws = [self._ws.popleft() for _ in range(min(step, len(self._ws)))]
        counts = []
        for ih in list(self._counts)[:step]:
            counts.append((ih, self._counts.pop(ih)))
        self._seq += 1
        args: list[Any] = [
            self.node_id,
            self._seq,
            repr(time.time()),
            encode_batch(deltas, state, counts, ws),
            self.maxlen,
            SEQUENCE_TTL,
        ]
        for ih, n in counts:
            args += [ih, n]
        return args

    def _send_batch(self) -> None:
        """Send the batch in flight (or the next one); RedisError leaves it in flight."""
        if self._inflight is None:
            self._inflight = self._next_batch()
        keys = [self.keys.stream, self.keys.downloaded, self.keys.sequence(self.node_id)]
        self._publish(keys=keys, args=self._inflight)
        self._inflight = None

    def _send_relays(self) -> None:
        """Every waiting relay, one inbox entry per node; sent after the changes before
        them, so a node reading a relay has read the offerer's announce too (Redis
        serves an XREAD of both streams after both XADDs). Lost if Redis fails here."""
        by_node: dict[str, list[bytes]] = {}
        while self._relays:
            node, frame = self._relays.popleft()
            by_node.setdefault(node, []).append(frame)
        now = repr(time.time())
        pipe = self.redis.pipeline(transaction=False)
        for node, frames in by_node.items():
            key = self.keys.inbox(node)
            fields = {"n": self.node_id, "t": now, "f": b"".join(frames)}
            pipe.xadd(key, fields, maxlen=INBOX_MAXLEN, approximate=True)
            pipe.expire(key, INBOX_TTL)
        pipe.execute()

    def _publisher(self) -> None:
        last = 0.0
        failures = 0
        while True:
            self._wake.wait()
            self._wake.clear()
            if not self.up:
                continue  # the reader wakes us once it has rejoined
            wait = last + FLUSH_DELAY - time.monotonic()
            if wait > 0 and len(self._deltas) < FLUSH_RECORDS and not self._relays:
                gevent.sleep(wait)
            last = time.monotonic()
            try:
                while self.up and self._unsent():
                    self._send_batch()
                if self.up and self._relays:
                    self._send_relays()
                failures = 0
            except redis.RedisError as exc:
                # The reader notices a lost Redis and logs it; this is for the rest
                # (a full Redis, a refused script), said once until it works again.
                if failures == 0:
                    log.warning("cluster: publishing to %s failed: %s; retrying", self.url, exc)
                failures += 1
                gevent.sleep(min(BACKOFF_FIRST * 2**failures, BACKOFF_MAX))
                self._wake.set()

    # --- joining and changes in ------------------------------------------------------

    def _reader(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                self._join()
                backoff = BACKOFF_FIRST
                self._read_loop()
            except redis.RedisError as exc:
                self._lost(exc)
            except Exception:  # a bug must not end the cluster link for good
                log.exception("cluster: reader failed; rejoining")
                self.up = False
            self.ready.set()
            gevent.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _lost(self, exc: Exception) -> None:
        if self._down_since is None:
            log.warning(
                "cluster: Redis at %s %s (%s); serving from this node's replica, "
                "buffering its changes",
                self.url,
                "lost" if self.up or self._epoch else "not reachable",
                exc,
            )
            self._down_since = time.monotonic()
        self.up = False
        self.hub.set_remote_stats([])

    def _join(self) -> None:
        """Catch up with the cluster, then let the publisher run."""
        r = self.redis
        # A Redis without an epoch is new or has lost its data: whatever this node
        # holds (a replica kept through the outage, or restored from its disk) is news.
        fresh = bool(r.set(self.keys.epoch, secrets.token_hex(8), nx=True))
        epoch = r.get(self.keys.epoch)
        redis_lost = fresh or (self._epoch is not None and epoch != self._epoch)
        self._epoch = epoch
        if self._inflight is not None:
            self._send_batch()  # before any new batch number, or the retry would be dropped
        first = r.xrange(self.keys.stream, "-", "+", 1)
        oldest = parse_id(first[0][0]) if first else ORIGIN
        start = self.position
        if start == ORIGIN or redis_lost or oldest > start:
            start = self._load_snapshot(oldest)
        if redis_lost or self._overflowed:
            self._overflowed = False
            self._resend_replica()
        self._adopt_totals()
        self.position = start
        self.up = True
        self._wake.set()
        if self._down_since is not None:
            log.info(
                "cluster: Redis at %s back after %.1f s%s",
                self.url,
                time.monotonic() - self._down_since,
                "; it had lost its data, re-sent this node's replica" if redis_lost else "",
            )
            self._down_since = None
        log.info("cluster: node %s joined at %s", self.node_id, format_id(start).decode())
        self.ready.set()

    def _load_snapshot(self, oldest: StreamId) -> StreamId:
        """Merge the cluster snapshot; the stream position to read from.

        ``oldest`` is the stream's oldest entry: a snapshot from before it
        leaves a gap (the entries trimmed since), which only re-announces fill.
        """
        blob = self.redis.get(self.keys.snapshot)
        snap = None
        if blob is not None:
            try:
                snap = decode_snapshot(blob, self.hub.core.store.max_peers)
            except EntryError as exc:
                log.warning("cluster: snapshot in %s ignored: %s", self.url, exc)
        if snap is None:
            return ORIGIN  # the stream from its oldest entry is all there is
        step = f.RECORDS_PER_FRAME
        for i in range(0, len(snap.peers), step):
            self.hub.merge_state(snap.peers[i : i + step])
            gevent.sleep(0)
        if ORIGIN < snap.position < oldest:
            log.warning(
                "cluster: the snapshot (%s) is older than the stream's oldest entry; "
                "peers announced in between reappear at their next announce",
                format_id(snap.position).decode(),
            )
        log.info(
            "cluster: snapshot by %s, %.0f s old: %d peers",
            snap.node,
            max(0.0, time.time() - snap.saved_at),
            len(snap.peers),
        )
        return snap.position

    def _resend_replica(self) -> None:
        """Every live peer this node holds, as state entries (the others take only news)."""
        core = self.hub.core
        sent = 0
        for chunk, _totals in walk(core.store, list(core.store.torrents), core.lock):
            self._state.extendleft(reversed(chunk))
            sent += len(chunk)
            while self._state:
                self._send_batch()
        with self.hub.core.lock:
            # WebSocket peers whose sockets this machine holds (not the other nodes').
            self._ws.extendleft(c for c in self.hub.core.ws.peers() if c.holder < ALIAS_BASE)
        while self._state or self._ws:
            self._send_batch()
        log.info("cluster: re-sent %d peers", sent)

    def _adopt_totals(self) -> None:
        """Claim the totals we knew, take Redis's, and note where they were read.

        Counts in entries up to that position are in the totals taken, so the
        reader skips them; later ones are added as they come.
        """
        store = self.hub.core.store
        claims: dict[bytes, int] = {}
        for ih in list(store.torrents.keys()):
            swarm = store.peek(ih)
            if swarm is not None and swarm.downloaded:
                claims[ih] = swarm.downloaded - self._pending(ih)
        args: list[Any] = [self.node_id, repr(time.time()), self.maxlen]
        for ih, n in claims.items():
            if n > 0:
                args += [ih, n]
        totals, last = self._join_script(keys=[self.keys.stream, self.keys.downloaded], args=args)
        more = []
        for i in range(0, len(totals), 2):
            ih, total = totals[i], total_of(totals[i + 1])
            if total is None or len(ih) != 20:
                log.warning(
                    "cluster: total %r of %r in %s skipped: not a download count",
                    totals[i + 1][:40],
                    ih[:40],
                    self.url,
                )
                continue
            if total > claims.get(ih, 0):
                more.append((ih, total - claims.get(ih, 0)))
        self._counted_to = parse_id(last)
        if more:
            self.hub.receive([self._raw(f.Counts(more))])

    @staticmethod
    def _raw(frame: f.Frame) -> tuple[f.RawFrame, f.Frame]:
        wire = f.encode(frame)
        return f.RawFrame(wire[4], wire), frame

    def _read_loop(self) -> None:
        r = self.redis
        stream, inbox = self.keys.stream, self.inbox
        while True:
            # Changes first: Redis answers with the streams in the order asked, so a
            # relay's offerer (announced before its offer was relayed) is known here.
            reply = r.xread(
                {stream: format_id(self.position), inbox: format_id(self._inbox_position)},
                count=READ_COUNT,
                block=READ_BLOCK_MS,
            )
            for key, entries in reply or ():
                take = self._take if key == stream else self._take_relays
                for raw_id, fields in entries:
                    take(raw_id, fields)
                if len(entries) == READ_COUNT:
                    gevent.idle()  # let UDP and the workers' frames in between

    def _take(self, raw_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            entry = decode_entry(raw_id, fields)
        except EntryError as exc:
            log.warning("cluster: skipping an entry: %s", exc)
            self.position = parse_id(raw_id)
            return
        self.position = entry.id
        if entry.node == self.node_id:
            return
        try:
            received = split_frames(entry.frames)
        except f.FrameError as exc:
            log.warning("cluster: skipping entry %s of node %s: %s", raw_id, entry.node, exc)
            return
        if entry.id <= self._counted_to:
            received = [(raw, fr) for raw, fr in received if not isinstance(fr, f.Counts)]
        try:
            received = [
                self._raw(self.aliases.localize(entry.node, fr, time.monotonic()))
                if isinstance(fr, f.WsPeers)
                else (raw, fr)
                for raw, fr in received
            ]
        except f.FrameError as exc:
            log.warning("cluster: skipping entry %s of node %s: %s", raw_id, entry.node, exc)
            return
        self.hub.receive(received)
        now = time.time()
        self._lag[entry.node] = (max(0.0, now - entry.sent_at), now)

    def _take_relays(self, raw_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Offers and answers another node sent to this node's sockets: to the hub's routing."""
        try:
            self._inbox_position = parse_id(raw_id)
            received = split_frames(decode_entry(raw_id, fields).frames, RELAY_KINDS)
        except (EntryError, f.FrameError) as exc:
            log.warning("cluster: skipping an inbox entry: %s", exc)
            return
        for raw, frame in received:
            assert isinstance(frame, f.WsRelay)
            self.hub.route(frame, raw.wire)

    def _forget(self, node: str) -> None:
        """A node that left the listing: its WebSocket peers stop here (their sockets
        are gone with it, or it comes back under a new id with their re-announces)."""
        aliases = set(self.aliases.forget(node))
        core = self.hub.core
        with core.lock:
            stops = [
                c._replace(event=EVENT_STOPPED) for c in core.ws.peers() if c.holder in aliases
            ]
        if stops:
            log.info("cluster: node %s left; its %d WebSocket peers stop", node, len(stops))
            self.hub.receive([self._raw(f.WsPeers(stops))])

    # --- statistics and the snapshot -------------------------------------------------

    def _housekeeping(self) -> None:
        next_snapshot = 0.0
        while True:
            gevent.sleep(STATS_EVERY)
            if not self.up:
                continue
            try:
                self._share_stats()
                if time.monotonic() >= next_snapshot:
                    next_snapshot = time.monotonic() + self.snapshot_interval
                    if self.redis.set(
                        self.keys.snapshot_lease, self.node_id, nx=True, ex=self.snapshot_interval
                    ):
                        self.write_snapshot()
            except redis.RedisError as exc:
                log.debug("cluster: housekeeping: %s", exc)
            except Exception:  # one bad input must not end the statistics and snapshots
                log.exception("cluster: housekeeping failed; trying again")

    def write_snapshot(self) -> int:
        """Every live peer of the replica, with the position it covers; returns its size."""
        core = self.hub.core
        position = self.position  # taken first: what is applied meanwhile is in it too
        peers: list[PeerChange] = []
        for chunk, _totals in walk(core.store, list(core.store.torrents), core.lock):
            peers.extend(chunk)
            gevent.sleep(0)  # between chunks: requests and sync run while it walks
        snap = ClusterSnapshot(position, time.time(), self.node_id, peers)
        blob = gevent.get_hub().threadpool.apply(encode_snapshot, (snap,))
        self.redis.set(self.keys.snapshot, blob)
        log.debug("cluster: snapshot of %d peers at %s, %d bytes", len(peers), position, len(blob))
        return len(blob)

    def _share_stats(self) -> None:
        now = time.time()
        here = time.monotonic()
        local = [e.payload for e in self.hub.local_stats]
        doc = b"".join(
            [
                json.dumps({"node": self.node_id, "time": now})[:-1].encode(),
                b',"reports":[',
                b",".join(local),
                b"]}",
            ]
        )
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.stats, self.node_id, doc)
        pipe.hgetall(self.keys.stats)
        _, docs = pipe.execute()
        entries: list[f.StatsEntry] = []
        nodes: dict[str, dict[str, Any]] = {}
        gone = []
        for raw_node, raw in docs.items():
            node = raw_node.decode(errors="replace")
            try:
                got = json.loads(raw)
                sent = float(got["time"])
                reports = list(got["reports"])
            except (ValueError, KeyError, TypeError, RecursionError):
                if node not in self._bad_stats:
                    if len(self._bad_stats) >= MAX_BAD_STATS:
                        self._bad_stats.clear()
                    self._bad_stats.add(node)
                    log.warning(
                        "cluster: statistics of node %r in %s skipped: not a node's report",
                        node[:64],
                        self.url,
                    )
                continue
            seen = self._reports_seen.get(node)
            if seen is None or seen[0] != sent:
                seen = self._reports_seen[node] = (sent, here)
            age = here - seen[1]
            if age > NODE_GONE_AFTER:
                gone.append(raw_node)
                continue
            lag = self._lag.get(node)
            nodes[node] = {
                "processes": len(reports),
                "stats_age_seconds": round(max(0.0, age), 3),
                "lag_seconds": None if lag is None else round(lag[0], 4),
                "self": node == self.node_id,
            }
            if node == self.node_id:
                continue
            for report in reports:
                if isinstance(report, dict) and isinstance(report.get("id"), str):
                    report["id"] = f"{node}/{report['id']}"
                    report.pop("cluster", None)  # this node's own hub says these two
                    report.pop("hub", None)
                    with contextlib.suppress(ValueError, TypeError, RecursionError):
                        entries.append(f.StatsEntry(0, f.ROLE_HUB, json.dumps(report).encode()))
        if gone:
            self.redis.hdel(self.keys.stats, *gone)
        for node in self.aliases.departed(set(nodes), time.monotonic(), NODE_GONE_AFTER):
            self._forget(node)
        self.nodes = nodes
        self._lag = {node: lag for node, lag in self._lag.items() if node in nodes}
        self._reports_seen = {n: s for n, s in self._reports_seen.items() if n in nodes}
        self.hub.set_remote_stats(entries)

    def status(self) -> dict[str, Any]:
        """What /stats says about the cluster (the sidecar's report carries it)."""
        return {
            "node": self.node_id,
            "redis": self.url,
            "connected": self.up,
            "position": format_id(self.position).decode(),
            "buffered": len(self._deltas) + len(self._state) + len(self._ws),
            "nodes": [{"node": n, **info} for n, info in sorted(self.nodes.items())],
        }
