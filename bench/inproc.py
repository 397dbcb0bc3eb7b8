"""In-process figures of the tracker core, without any server: memory, swarm-size cost,
merging remote changes, stashing them lazily (and how long one stash can take), and a join.

Run in a fresh interpreter (``python -m bench.inproc
memory|pending|huge|merge|stream|slices|join ...``, pinned by the runner) so RSS growth is the
store's alone; prints one JSON line.
Every peer id and info_hash is a fresh bytes object, as a parsed request
would give, so the store is charged for the objects it keeps. Times are this
process's CPU time (``time.process_time``), so a machine shared with other work
slows them less than it does wall time.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from pathlib import Path

from bench.procs import STORE_CROWD
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.gc_tuning import tune_gc
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import Announce


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def info_hash(t: int) -> bytes:
    return b"IH" + t.to_bytes(18, "big")


def peer_id(c: int) -> bytes:
    return b"-BM0001-" + c.to_bytes(12, "big")


def address(c: int) -> bytes:
    return (0x0A000000 + c).to_bytes(4, "big")


REANNOUNCES = 200_000


def memory(torrents: int, peers: int) -> dict[str, float]:
    """RSS growth per peer (and per torrent) for ``peers`` peers spread evenly over
    ``torrents`` torrents, then the cost of a known peer's re-announce (issue 16 t6:
    ``--torrents 1000000 --peers 1000000`` is the single-peer-torrent case)."""
    core = TrackerCore(TrackerConfig(max_torrents=max(torrents, 1)))
    gc.collect()
    before = rss_kb()
    start = time.process_time()
    for i in range(peers):
        t, c = i % torrents, i // torrents
        core.announce(
            Announce(info_hash(t), peer_id(c), 1025 + c % 60000, left=(i % 5) * 1000),
            address(i),  # each peer its own address: one in every torrent is past its bound
        )
    elapsed = time.process_time() - start
    gc.collect()
    after = rss_kb()
    torrents_held, seeders, leechers = core.store.totals()  # type: ignore[union-attr]
    # The same peers again (the commonest announce: a known peer, same endpoint), once
    # each for up to REANNOUNCES of them, in the order they came.
    again = [
        (
            Announce(info_hash(i % torrents), peer_id(i // torrents), 1025 + i // torrents % 60000,
                     left=(i % 5) * 1000),
            address(i),
        )
        for i in range(min(peers, REANNOUNCES))
    ]  # fmt: skip
    start = time.process_time()
    for req, ip in again:
        core.announce(req, ip)
    reannounce_us = (time.process_time() - start) / max(1, len(again)) * 1e6
    return {
        "torrents": torrents_held,
        "peers": seeders + leechers,
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "bytes_per_peer": (after - before) * 1024 / peers,
        "bytes_per_torrent": (after - before) * 1024 / max(1, torrents_held),
        "new_peer_announces_per_s": peers / elapsed,
        "reannounce_us": reannounce_us,
    }


def pending_memory(torrents: int, records: int) -> dict[str, float]:
    """RSS growth per record for ``records`` remote changes (new peers, one record shape)
    stashed by a lazy replica over ``torrents`` torrents, and the CPU to stash them and
    then to read every torrent once (which folds them all in). Compare the bytes with
    ``memory``'s for the same peers applied (RSS does not shrink once the stash is
    folded, so the two cannot be told apart in one process)."""
    from wsgi_tracker.core.swarm import SwarmStore
    from wsgi_tracker.core.types import PeerChange
    from wsgi_tracker.sync import frames
    from wsgi_tracker.sync.replica import stash

    now = time.time()
    store = SwarmStore(max_torrents=max(torrents, 1) * 2, max_pending=records + 1)
    step = frames.RECORDS_PER_FRAME
    wires = []
    for at in range(0, records, step):
        batch = [
            PeerChange(info_hash(i % torrents), peer_id(i), address(i) + b"\x1a\xe1", False, 0, now)
            for i in range(at, min(records, at + step))
        ]
        wires.append(frames.encode(frames.Deltas(batch)))
    gc.collect()
    before = rss_kb()
    start = time.process_time()
    for wire in wires:
        for frame in frames.decode_all(wire):
            stash(store, frame.peers, 0, len(frame.peers))  # type: ignore[union-attr]
    stashed_s = time.process_time() - start
    del wires, frame
    gc.collect()
    stashed = rss_kb()
    start = time.process_time()
    torrents_held, _seeders, leechers = store.totals()  # reads every torrent: folds all
    folded_s = time.process_time() - start
    return {
        "torrents": torrents_held,
        "peers": leechers,
        "pending_bytes_per_record": (stashed - before) * 1024 / records,
        "stash_us_per_record": stashed_s / records * 1e6,
        "fold_us_per_record": folded_s / records * 1e6,
    }


def announce_cost(size: int, calls: int, seed: int) -> tuple[float, float]:
    """(us per re-announce, ms for one sweep) in one torrent of ``size`` peers, numwant 50."""
    rng = random.Random(seed)
    core = TrackerCore(TrackerConfig(), rng=random.Random(seed))
    ih = info_hash(0)
    for c in range(size):
        core.announce(Announce(ih, peer_id(c), 1025 + c % 60000, left=c % 5), address(c))
    picks = [rng.randrange(size) for _ in range(calls)]
    batch = [
        (Announce(ih, peer_id(c), 1025 + c % 60000, left=c % 5, numwant=50), address(c))
        for c in picks
    ]
    gc.collect()
    start = time.process_time()
    for req, ip in batch:
        core.announce(req, ip)
    per_call = (time.process_time() - start) / calls * 1e6
    swarm = core.store.get(ih)  # type: ignore[union-attr]
    assert swarm is not None and swarm.v4 is not None
    start = time.process_time()
    swarm.v4.sweep(0)  # nothing has expired: the cost of the periodic pass itself
    sweep_ms = (time.process_time() - start) * 1000
    return per_call, sweep_ms


def huge(peers: int, small: int, calls: int, reps: int) -> dict[str, float]:
    """Re-announce cost in a ``peers`` swarm against a ``small`` one; medians of ``reps``."""
    big_us, small_us, sweeps = [], [], []
    for rep in range(reps):
        us, _ = announce_cost(small, calls, rep)
        small_us.append(us)
        us, sweep = announce_cost(peers, calls, rep)
        big_us.append(us)
        sweeps.append(sweep)
    return {
        "small_peers": small,
        "huge_peers": peers,
        "small_us": statistics.median(small_us),
        "huge_us": statistics.median(big_us),
        "cost_ratio": statistics.median(b / s for b, s in zip(big_us, small_us, strict=True)),
        "huge_sweep_ms": statistics.median(sweeps),
        "reps": reps,
    }


def merge_cost(reps: int) -> dict[str, float]:
    """CPU us per record to decode one full Deltas frame and merge it into a replica
    (``bench.sync_lag --parts costs``' apply_us, in CPU time): best of ``reps``."""
    import timeit

    from wsgi_tracker.core.swarm import SwarmStore
    from wsgi_tracker.core.types import PeerChange
    from wsgi_tracker.sync import frames
    from wsgi_tracker.sync.replica import merge

    n = frames.RECORDS_PER_FRAME
    now = time.time()
    changes = [
        PeerChange(info_hash(i % 1000), peer_id(i), address(i) + b"\x1a\xe1", i % 3 == 0, 0, now)
        for i in range(n)
    ]
    wire = frames.encode(frames.Deltas(changes))
    store = SwarmStore()

    def receive() -> None:
        for frame in frames.FrameDecoder().feed(wire):
            merge(store, frame.peers)  # type: ignore[union-attr]

    best = min(timeit.repeat(receive, number=5, repeat=reps, timer=time.process_time))
    return {"records": n, "merge_us": best / 5 / n * 1e6}


def stream_frames(
    mix: str, announces: int, rate: float, warmup: int, seed: int = 1
) -> tuple[list[bytes], list[bytes], dict[str, int]]:
    """The Deltas frames an idle worker gets while the sidecar answers ``bench.apply_cost``'s
    UDP ``mix`` at ``rate``/s: (the ``warmup`` announces' frames, the next ``announces``'
    frames, what the latter's records are).

    The hub is simulated as it ships (docs/SYNC.md, "Shipping"): what a reader sees (a
    new peer, a seeder flip) goes with the next batch, one per ``FLUSH_DELAY``; a mere
    refresh of a peer the hub holds waits ``REFRESH_WINDOW``, coalesced per peer, and one
    inside the store's ``refresh_grain`` is not shipped at all (TrackerCore's rule). Time
    is simulated, so the stream is the real one's without the machine's noise: every
    peer from 127.0.0.1 (as on loopback), 5000 clients over 20 torrents each in 1000
    (``bench``), or every announce a new peer in one of 100,000 torrents (``distinct``).
    """
    from wsgi_tracker.core.swarm import SwarmStore
    from wsgi_tracker.core.types import PeerChange
    from wsgi_tracker.sync import frames
    from wsgi_tracker.sync.replica import FLUSH_DELAY

    window = 0.95  # the hub's REFRESH_WINDOW
    rng = random.Random(seed)
    clock = [time.time()]
    hub = SwarmStore(**STORE_CROWD, clock=lambda: clock[0])
    loopback = bytes((127, 0, 0, 1))
    warm: list[bytes] = []
    out: list[bytes] = []
    batch: list[PeerChange] = []
    held: dict[tuple[bytes, bytes], tuple[float, PeerChange]] = {}
    last_flush = clock[0]
    kinds = {"visible": 0, "refresh": 0}
    for n in range(warmup + announces):
        clock[0] += 1 / rate
        if mix == "distinct":
            ih, pid = b"%020d" % rng.randrange(100_000), b"-UD" + b"%017d" % n
            port, seeder = 1024 + n % 60000, n % 5 == 0
        else:
            c = rng.randrange(5000)
            ih = b"%020d" % ((c * 7 + rng.randrange(20)) % 1000)
            pid, port, seeder = b"-UD0001-%012d" % c, 40000 + c, c % 5 == 0
        change = PeerChange(ih, pid, loopback + port.to_bytes(2, "big"), seeder, 0, clock[0])
        swarm = hub.peek(ih)
        pl = None if swarm is None else swarm.v4
        refresh = pl is not None and pl.slot(pid) >= 0 and pl.is_seeder(pid) == seeder
        hub.apply(change, count_download=False, grain=hub.refresh_grain)
        if hub.unchanged:
            pass  # nothing to ship (TrackerCore tells no listener)
        elif refresh:
            held[(ih, pid)] = (held.get((ih, pid), (clock[0],))[0], change)
        else:
            held.pop((ih, pid), None)
            batch.append(change)
        if clock[0] - last_flush >= FLUSH_DELAY:
            visible = len(batch)
            while held:
                key = next(iter(held))
                if clock[0] - held[key][0] < window:
                    break
                batch.append(held.pop(key)[1])
            if batch:
                (out if n >= warmup else warm).append(frames.encode(frames.Deltas(batch)))
                if n >= warmup:
                    kinds["visible"] += visible
                    kinds["refresh"] += len(batch) - visible
            batch, last_flush = [], clock[0]
    return warm, out, kinds


def stream_cost(
    mix: str, announces: int, rate: float, warmup: int, reps: int, apply: str = "lazy"
) -> dict:
    """CPU us per announce answered elsewhere (and per record received) for a replica to
    decode and take ``stream_frames``' frames as an idle worker does (``apply``: "lazy",
    stashed as the client does, then, timed apart, every torrent read once; "eager",
    merged at once as before): best of ``reps``."""
    from wsgi_tracker.core.swarm import SwarmStore
    from wsgi_tracker.sync import frames
    from wsgi_tracker.sync.replica import merge, stash

    def take(store: SwarmStore, peers) -> None:  # type: ignore[no-untyped-def]
        if apply == "lazy":
            stash(store, peers, 0, len(peers))
        else:
            merge(store, peers)

    warm, wire, kinds = stream_frames(mix, announces, rate, warmup)
    best = best_read = float("inf")
    for _ in range(reps):
        store = SwarmStore(**STORE_CROWD, max_pending=10**9)
        for data in warm:  # the warm-up, as the worker got it (not timed)
            for frame in frames.decode_all(data):
                take(store, frame.peers)  # type: ignore[union-attr]
        gc.collect()
        start = time.process_time()
        decoder = frames.FrameDecoder()
        for data in wire:
            for frame in decoder.feed(data):
                take(store, frame.peers)  # type: ignore[union-attr]
        best = min(best, time.process_time() - start)
        pending = list(store.pending.by_torrent)
        start = time.process_time()
        for ih in pending:  # what the reads pay: each torrent's first read folds it in
            store.peek(ih)
        best_read = min(best_read, time.process_time() - start)
    records = kinds["visible"] + kinds["refresh"]
    return {
        "mix": mix,
        "announces": announces,
        "warmup": warmup,
        "records": records,
        "visible": kinds["visible"],
        "refreshes": kinds["refresh"],
        "frames": len(wire),
        "us_per_announce": best / announces * 1e6,
        "us_per_record": best / max(1, records) * 1e6,
        "apply": apply,
        "torrents_read": len(pending),
        "fold_us_per_record": best_read / max(1, records) * 1e6,
    }


def stash_slices(torrents: int, records: int, batch: int) -> dict[str, float]:
    """How long one slice of a lazy replica's stashing takes (CPU ms per ``stash`` call of
    ``batch`` records) under an even flood: ``records`` announces, each a new peer of the
    next of ``torrents`` torrents in turn, past ``max_pending`` (250,000) and each
    torrent's ``MAX_PER_TORRENT``, as ``bench full``'s flood reaches a lazy worker. A
    request waits behind the longest (target 2: slices bounded)."""
    from wsgi_tracker.core.swarm import SwarmStore
    from wsgi_tracker.core.types import PeerChange
    from wsgi_tracker.sync import frames
    from wsgi_tracker.sync.replica import stash

    now = time.time()
    hashes = [info_hash(t) for t in range(torrents)]
    wire = []
    for first in range(0, records, batch):
        rows = [
            PeerChange(hashes[n % torrents], peer_id(n), address(n) + b"\x1a\xe1", False, 0, now)
            for n in range(first, min(records, first + batch))
        ]
        wire.append(frames.encode(frames.Deltas(rows)))
    decoded = [frame for data in wire for frame in frames.decode_all(data)]
    store = SwarmStore(**STORE_CROWD, clock=lambda: now)
    gc.collect()
    times = []
    for frame in decoded:
        peers = frame.peers  # type: ignore[union-attr]
        start = time.process_time()
        stash(store, peers, 0, len(peers))
        times.append(time.process_time() - start)
    times.sort()
    return {
        "torrents": torrents,
        "records": records,
        "calls": len(times),
        "median_ms": statistics.median(times) * 1e3,
        "p999_ms": times[int(len(times) * 0.999)] * 1e3,
        "max_ms": times[-1] * 1e3,
        "total_s": sum(times),
    }


def join_cost(torrents: int) -> dict[str, float]:
    """CPU us per torrent of a join, in process: the hub's walk and encoding of
    ``torrents`` single-peer torrents (a quarter with a completed count), then a
    fresh replica's decode and its merge of the Totals and Snapshot frames."""
    from wsgi_tracker.core.swarm import SwarmStore
    from wsgi_tracker.core.types import PeerChange
    from wsgi_tracker.sync import frames
    from wsgi_tracker.sync.replica import merge, walk

    now = time.time()
    hub = SwarmStore()
    for t in range(torrents):
        change = PeerChange(
            info_hash(t), peer_id(t), address(t) + b"\x1a\xe1", t % 3 == 0, 0, now, 7
        )
        hub.apply(change, count_download=False)
        if t % 4 == 0:
            hub.set_downloaded(info_hash(t), 3)
    start = time.process_time()
    data = b"".join(
        frames.encode(frames.Totals(totals)) + frames.encode(frames.Snapshot(peers))
        for peers, totals in walk(hub, list(hub.torrents))
    )
    walked = time.process_time()
    received = frames.decode_all(data)
    decoded = time.process_time()
    replica = SwarmStore()
    gc.disable()  # as a joining SyncClient does (_pause_gc)
    for frame in received:
        if isinstance(frame, frames.Totals):
            replica.set_totals(frame.totals)
        elif isinstance(frame, frames.Snapshot):
            merge(replica, frame.peers, state=True)  # SwarmStore.load_state, as a joiner's
    merged = time.process_time()
    gc.enable()
    assert len(replica) == torrents and replica.peers_held == torrents
    return {
        "torrents": torrents,
        "hub_walk_encode_us": (walked - start) / torrents * 1e6,
        "decode_us": (decoded - walked) / torrents * 1e6,
        "merge_us": (merged - decoded) / torrents * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    mem = sub.add_parser("memory", help="bytes per peer")
    mem.add_argument("--torrents", type=int, default=100_000)
    mem.add_argument("--peers", type=int, default=1_000_000)
    lazy = sub.add_parser("pending", help="bytes per stashed remote change, then folded")
    lazy.add_argument("--torrents", type=int, default=1_000_000)
    lazy.add_argument("--records", type=int, default=1_000_000)
    big = sub.add_parser("huge", help="announce cost in a huge swarm vs a small one")
    big.add_argument("--peers", type=int, default=50_000)
    big.add_argument("--small", type=int, default=100)
    big.add_argument("--calls", type=int, default=100_000)
    big.add_argument("--reps", type=int, default=3)
    cost = sub.add_parser("merge", help="decoding + merging one remote change (CPU us)")
    cost.add_argument("--reps", type=int, default=7)
    flow = sub.add_parser(
        "stream", help="an idle worker's decode + merge of apply_cost's stream (CPU us)"
    )
    flow.add_argument("--mix", choices=("bench", "distinct"), default="bench")
    flow.add_argument("--announces", type=int, default=100_000)
    flow.add_argument("--rate", type=float, default=20_000)
    flow.add_argument("--warmup", type=int, default=0, help="announces first, not timed")
    flow.add_argument("--reps", type=int, default=3)
    flow.add_argument(
        "--apply",
        choices=("lazy", "eager"),
        default="lazy",
        help="stash (the client's way) or merge",
    )
    cut = sub.add_parser("slices", help="the longest stash call under an even flood (CPU ms)")
    cut.add_argument("--torrents", type=int, default=1000)
    cut.add_argument("--records", type=int, default=600_000)
    cut.add_argument("--batch", type=int, default=500)
    join = sub.add_parser("join", help="a joining replica's CPU us per torrent, both ends")
    join.add_argument("--torrents", type=int, default=200_000)
    args = parser.parse_args()
    tune_gc()  # as every serving process runs
    if args.what == "memory":
        out = memory(args.torrents, args.peers)
    elif args.what == "pending":
        out = pending_memory(args.torrents, args.records)
    elif args.what == "merge":
        out = merge_cost(args.reps)
    elif args.what == "stream":
        out = stream_cost(args.mix, args.announces, args.rate, args.warmup, args.reps, args.apply)
    elif args.what == "slices":
        out = stash_slices(args.torrents, args.records, args.batch)
    elif args.what == "join":
        out = join_cost(args.torrents)
    else:
        out = huge(args.peers, args.small, args.calls, args.reps)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
