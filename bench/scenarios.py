"""The scenarios of ``python -m bench``: each starts its trackers, fills them, measures, stops.

All trackers of a scenario run at once (idle ones cost nothing) and the
repetitions are interleaved tracker by tracker, so a disturbance on the machine
spreads over every tracker instead of biasing one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from . import loads, trackers
from .measure import Sample, measure, measure_together
from .procs import Server, free_port, pinned
from .report import Results
from .workload import Workload, make_workload


@dataclass(frozen=True)
class Knobs:
    """Every setting of a run (``python -m bench --help`` documents them)."""

    outdir: Path
    dur: float = 10
    reps: int = 3
    warmup: float = 3
    k: int = 1000
    clients: int = 5000
    tpc: int = 20
    conns: int = 50
    wrk_threads: int = 1
    inflight: int = 64
    socks: int = 8
    scrape_hashes: int = 10
    server_cpu: str | None = "1"
    load_cpu: str | None = "0"
    worker_classes: tuple[str, ...] = (
        "gevent",
        "gevent_pywsgi",
        "wsgi_tracker.http.worker.TrackerWorker",
    )
    anchors: bool = True
    bittorrent_tracker: bool = False
    full_workers: int = 2
    page: str = "/torrents"
    page_conns: int = 1
    stack_workers: int = 1
    cores_workers: int = 2
    stack_parts: bool = True
    huge_peers: int = 50_000
    small_peers: int = 100
    mem_torrents: int = 100_000
    mem_peers: int = 1_000_000
    mem_wire_http_peers: int = 200_000
    ryw_conns: tuple[int, ...] = (1, 50, 120)


Starter = Callable[[int], Server]


def _ours(worker_class: str) -> str:
    """ours[gevent], ours[TrackerWorker]: the worker class without its module path."""
    return f"ours[{worker_class.rsplit('.', 1)[-1]}]"


def _start_all(stack: ExitStack, starters: dict[str, Starter]) -> dict[str, tuple[Server, int]]:
    running = {}
    for name, start in starters.items():
        port = free_port()
        server = start(port)
        stack.callback(server.stop)
        running[name] = (server, port)
        print(f"started {name} pid={server.proc.pid} workers={server.pids} port={port}", flush=True)
    return running


def prefill(kn: Knobs, name: str, port: int, wl: Workload, over_udp: bool) -> None:
    """Announce every (client, torrent) pair once so every measured reply is full."""
    limit = max(60.0, wl.peers / 1000)
    if over_udp:
        run = loads.udp_load(
            port, wl, limit, cpus=kn.load_cpu, prefill=True, inflight=_inflight(kn, wl)
        )
        done = run.result.get("responses", 0)
    else:
        run = loads.wrk(port, wl, limit, cpus=kn.load_cpu, conns=kn.conns, prefill=True)
        done = run.result.get("ok", 0)
    how = "UDP" if over_udp else "HTTP"
    print(
        f"prefill {name} over {how}: {done:.0f}/{wl.peers} announces "
        f"in {run.wall_seconds:.1f}s ({done / run.wall_seconds:.0f}/s)",
        flush=True,
    )
    if done < wl.peers:
        print(f"WARNING: prefill of {name} incomplete: replies will carry fewer peers")


def _inflight(kn: Knobs, wl: Workload) -> int:
    return max(1, min(kn.inflight, wl.clients // 2))


def _anchor_starters(kn: Knobs, wl: Workload) -> dict[str, Starter]:
    out: dict[str, Starter] = {}
    if kn.anchors:
        out["opentracker"] = lambda p: trackers.opentracker(p, wl, kn.outdir, kn.server_cpu)
    if kn.bittorrent_tracker:
        npm = trackers.bittorrent_tracker_dir(loads.CACHE)
        if npm is None:
            print("bittorrent-tracker skipped: npm ci failed or node missing")
        else:
            out["bittorrent-tracker"] = lambda p: trackers.bittorrent_tracker(
                p, wl, kn.outdir, kn.server_cpu, npm
            )
    return out


def http(kn: Knobs, results: Results) -> None:
    """wrk announces over keep-alive and Connection: close; ours per gunicorn worker class."""
    wl = make_workload(kn.outdir, kn.k, kn.clients, kn.tpc)
    starters: dict[str, Starter] = {
        _ours(wc): (
            lambda p, wc=wc: trackers.ours_http(p, wl, kn.outdir, kn.server_cpu, worker_class=wc)
        )
        for wc in kn.worker_classes
    }
    starters.update(_anchor_starters(kn, wl))
    with ExitStack() as stack:
        running = _start_all(stack, starters)
        for name, (_server, port) in running.items():
            prefill(kn, name, port, wl, over_udp=not name.startswith("ours"))
            if kn.warmup:
                loads.wrk(port, wl, kn.warmup, cpus=kn.load_cpu, conns=kn.conns)
        for _rep in range(kn.reps):
            for name, (server, port) in running.items():
                for mode in ("keepalive", "close"):
                    sample = measure(
                        [server],
                        lambda port=port, mode=mode: loads.wrk(
                            port,
                            wl,
                            kn.dur,
                            cpus=kn.load_cpu,
                            conns=kn.conns,
                            threads=kn.wrk_threads,
                            close=mode == "close",
                        ),
                    )
                    results.add("http", mode, name, sample)
    results.print_summaries("http")


def udp(kn: Knobs, results: Results, modes: tuple[str, ...]) -> None:
    """udp_load announces and scrapes against the sidecar and the anchors."""
    wl = make_workload(kn.outdir, kn.k, kn.clients, kn.tpc)
    starters = _anchor_starters(kn, wl)
    if trackers.udp_sidecar_available():
        starters = {"ours": lambda p: trackers.ours_udp(p, kn.outdir, kn.server_cpu), **starters}
    else:
        print("udp: udp_sidecar is not in the tree yet; measuring the anchors only")
    with ExitStack() as stack:
        running = _start_all(stack, starters)
        for name, (_server, port) in running.items():
            prefill(kn, name, port, wl, over_udp=True)
        for _rep in range(kn.reps):
            for name, (server, port) in running.items():
                for mode in modes:
                    sample = measure(
                        [server],
                        lambda port=port, mode=mode: loads.udp_load(
                            port,
                            wl,
                            kn.dur,
                            cpus=kn.load_cpu,
                            mode=mode,
                            inflight=kn.inflight,
                            socks=kn.socks,
                            scrape_hashes=kn.scrape_hashes,
                        ),
                    )
                    results.add("udp", mode, name, sample)
        if "announce" in modes:
            _udp_half_rate(kn, results, running, wl)
    results.print_summaries("udp")
    _generator_headroom(results, modes)


def _udp_half_rate(
    kn: Knobs, results: Results, running: dict[str, tuple[Server, int]], wl: Workload
) -> None:
    """Latency at half each tracker's peak announce rate (the issue's UDP latency target)."""
    for _rep in range(kn.reps):
        for name, (server, port) in running.items():
            peak = results.summary("udp", "announce", name)
            if not peak:
                continue
            sample = measure(
                [server],
                lambda port=port, rate=peak["rps"] / 2: loads.udp_load(
                    port,
                    wl,
                    kn.dur,
                    cpus=kn.load_cpu,
                    inflight=kn.inflight,
                    socks=kn.socks,
                    rate=rate,
                ),
            )
            results.add("udp", "announce-half-rate", name, sample)


def _generator_headroom(results: Results, modes: tuple[str, ...]) -> None:
    """The generator drove opentracker at X/s: if X is well above ours, it is not our limit."""
    for mode in modes:
        ot, ours = results.summary("udp", mode, "opentracker"), results.summary("udp", mode, "ours")
        if not ot or not ours:
            continue
        headroom = ot["rps"] / ours["rps"]
        verdict = "not the bottleneck" if headroom >= 1.5 else "MAY BE THE BOTTLENECK"
        print(
            f"GENERATOR udp/{mode}: udp_load drove opentracker at {ot['rps']:.0f}/s, "
            f"{headroom:.1f}x what ours took: the generator is {verdict} for ours"
        )


def huge_swarm(kn: Knobs, results: Results) -> None:
    """Announce cost into one 50k-peer swarm against one 100-peer swarm."""
    inproc = _inproc(
        kn, "huge", "--peers", kn.huge_peers, "--small", kn.small_peers, "--reps", kn.reps
    )
    results.figures["huge-swarm/in-process"] = inproc
    print(
        f"HUGE in-process: {inproc['small_us']:.1f}us per announce at {kn.small_peers} peers, "
        f"{inproc['huge_us']:.1f}us at {kn.huge_peers}: cost ratio {inproc['cost_ratio']:.2f}x "
        f"(target <= 1.5x); one sweep of the {kn.huge_peers}-peer list: "
        f"{inproc['huge_sweep_ms']:.1f}ms",
        flush=True,
    )
    big = make_workload(kn.outdir, 1, kn.huge_peers, 1, name="huge")
    small = make_workload(kn.outdir, 1, kn.small_peers, 1, name="small")
    both = Workload(kn.outdir / "huge_and_small.txt", 0, 0)
    both.pool.write_text(big.pool.read_text() + small.pool.read_text())
    wc = kn.worker_classes[-1]
    starters: dict[str, Starter] = {
        _ours(wc): lambda p: trackers.ours_http(p, big, kn.outdir, kn.server_cpu, worker_class=wc)
    }
    protocols = {_ours(wc): ("http",)}
    if trackers.udp_sidecar_available():
        starters["ours"] = lambda p: trackers.ours_udp(p, kn.outdir, kn.server_cpu)
        protocols["ours"] = ("udp",)
    if kn.anchors:
        starters["opentracker"] = lambda p: trackers.opentracker(p, both, kn.outdir, kn.server_cpu)
        protocols["opentracker"] = ("http", "udp")
    sizes = ((f"{kn.small_peers}-peers", small), (f"{kn.huge_peers}-peers", big))
    with ExitStack() as stack:
        running = _start_all(stack, starters)
        for name, (_server, port) in running.items():
            for wl in (big, small):
                prefill(kn, name, port, wl, over_udp=protocols[name] != ("http",))
        for _rep in range(kn.reps):
            for name, (server, port) in running.items():
                for proto in protocols[name]:
                    for label, wl in sizes:
                        sample = measure([server], _swarm_load(kn, proto, port, wl))
                        results.add("huge-swarm", f"{proto}-{label}", name, sample)
    results.print_summaries("huge-swarm")
    for name, protos in protocols.items():
        for proto in protos:
            s = results.summary("huge-swarm", f"{proto}-{sizes[0][0]}", name)
            b = results.summary("huge-swarm", f"{proto}-{sizes[1][0]}", name)
            if s and b:
                ratio = s["rps_per_core"] / b["rps_per_core"]
                results.figures[f"huge-swarm/{proto}/{name}"] = {"cost_ratio": ratio}
                print(
                    f"HUGE {proto} {name}: announce cost (server CPU per announce) "
                    f"{kn.huge_peers}-peer/{kn.small_peers}-peer swarm = {ratio:.2f}x "
                    "(target <= 1.5x)"
                )


def _swarm_load(kn: Knobs, proto: str, port: int, wl: Workload) -> Callable[[], loads.LoadRun]:
    if proto == "http":
        return lambda: loads.wrk(port, wl, kn.dur, cpus=kn.load_cpu, conns=kn.conns)
    return lambda: loads.udp_load(port, wl, kn.dur, cpus=kn.load_cpu, inflight=_inflight(kn, wl))


def memory(kn: Knobs, results: Results) -> None:
    """Bytes per peer: in-process at full size, and over the wire (RSS growth / peers)."""
    inproc = _inproc(kn, "memory", "--torrents", kn.mem_torrents, "--peers", kn.mem_peers)
    results.figures["memory/in-process"] = inproc
    print(
        f"MEMORY in-process: {inproc['peers']:.0f} peers in {inproc['torrents']:.0f} torrents: "
        f"{inproc['bytes_per_peer']:.0f} bytes/peer (target <= 200); "
        f"{inproc['new_peer_announces_per_s']:.0f} new-peer announces/s in the core alone",
        flush=True,
    )
    tpc = 20
    full = make_workload(kn.outdir, kn.mem_torrents, kn.mem_peers // tpc, tpc, name="mem")
    http_peers = min(kn.mem_wire_http_peers, kn.mem_peers)
    part = make_workload(
        kn.outdir, max(1, http_peers * kn.mem_torrents // kn.mem_peers), http_peers // tpc, tpc,
        name="mem_http",
    )  # fmt: skip
    wc = kn.worker_classes[-1]
    cases: dict[str, tuple[Starter, Workload, bool]] = {
        _ours(wc): (
            lambda p: trackers.ours_http(p, part, kn.outdir, kn.server_cpu, worker_class=wc),
            part,
            False,
        )
    }
    if trackers.udp_sidecar_available():
        cases["ours-udp"] = (lambda p: trackers.ours_udp(p, kn.outdir, kn.server_cpu), full, True)
    if kn.anchors:
        cases["opentracker"] = (
            lambda p: trackers.opentracker(p, full, kn.outdir, kn.server_cpu),
            full,
            True,
        )
    for name, (start, wl, over_udp) in cases.items():
        with ExitStack() as stack:
            (server, port) = _start_all(stack, {name: start})[name]
            before = server.rss_kb()
            prefill(kn, name, port, wl, over_udp)
            after = server.rss_kb()
            fig = {
                "peers": wl.peers,
                "torrents": len(wl.hashes()),
                "rss_before_mb": before / 1024,
                "rss_after_mb": after / 1024,
                "peak_rss_mb": server.hwm_kb() / 1024,
                "bytes_per_peer": (after - before) * 1024 / wl.peers,
            }
            results.figures[f"memory/wire/{name}"] = fig
            print(
                f"MEMORY wire {name}: {wl.peers} peers in {fig['torrents']} torrents: RSS "
                f"{fig['rss_before_mb']:.1f} -> {fig['rss_after_mb']:.1f} MB = "
                f"{fig['bytes_per_peer']:.0f} bytes/peer",
                flush=True,
            )


# The worker `wsgi-tracker serve` runs, so what an operator's site is served by.
TRACKER_WORKER = "wsgi_tracker.http.worker.TrackerWorker"
# The example Flask site (examples/flask_site), whose pages the host-page scenario asks for.
FLASK_SITE = "examples.flask_site.app:create_app()"
# Issue 16 target 2: under overload HTTP keeps this share of its solo rate, at this p99,
# and a UDP flood never raises a host page's p99 above it.
FAIR_SHARE = 0.3
FAIR_P99_MS = 50.0


def start_hub(stack: ExitStack, kn: Knobs) -> tuple[Server, int, str]:
    """udp-sidecar (the sync hub) on the server core, in a session of its own as ``serve``
    starts it. Returns (sidecar, its UDP port, its sync socket)."""
    sockdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sync-")))
    sockdir.chmod(0o700)
    sock = str(sockdir / "sync.sock")
    udp_port = free_port()
    sidecar = trackers.ours_udp(udp_port, kn.outdir, kn.server_cpu, sync_socket=sock)
    stack.callback(sidecar.stop)
    return sidecar, udp_port, sock


def start_joined_workers(
    stack: ExitStack,
    kn: Knobs,
    wl: Workload,
    sock: str,
    app: str = "wsgi_tracker.wsgi:app",
    env: dict[str, str] | None = None,
) -> tuple[Server, int]:
    """gunicorn with ``full_workers`` TrackerWorkers serving ``app``, joined to the hub at
    ``sock``, on the server core (``env``: settings of its own). Returns (it, its port)."""
    http_port = free_port()
    workers = trackers.ours_http(
        http_port, wl, kn.outdir, kn.server_cpu,
        worker_class=TRACKER_WORKER, workers=kn.full_workers, sync_socket=sock, app=app, env=env,
    )  # fmt: skip
    stack.callback(workers.stop)
    return workers, http_port


def _synced_stack(
    stack: ExitStack, kn: Knobs, wl: Workload, app: str = "wsgi_tracker.wsgi:app"
) -> tuple[Server, int, Server, int]:
    """The hub and ``full_workers`` TrackerWorkers serving ``app`` joined to it, filled over
    UDP (the hub fans the fill out to the workers). Returns (sidecar, its UDP port,
    gunicorn, its HTTP port)."""
    sidecar, udp_port, sock = start_hub(stack, kn)
    workers, http_port = start_joined_workers(stack, kn, wl, sock, app)
    print(f"started sidecar pid={sidecar.proc.pid}, workers {workers.pids}", flush=True)
    prefill(kn, "ours-full", udp_port, wl, over_udp=True)
    return sidecar, udp_port, workers, http_port


def _flood(kn: Knobs, port: int, wl: Workload) -> Callable[[], loads.LoadRun]:
    """UDP announces as fast as the sidecar answers (closed loop, ``inflight`` in flight)."""
    return lambda: loads.udp_load(
        port, wl, kn.dur, cpus=kn.load_cpu, inflight=kn.inflight, socks=kn.socks
    )


def full(kn: Knobs, results: Results) -> None:
    """udp-sidecar + ``full_workers`` TrackerWorkers with sync on the server core: HTTP
    alone, UDP alone, then both at once, closed loop (issue 16 target 2: with both, HTTP
    keeps >= 30% of its solo rate with p99 <= 50 ms). Each process's CPU share is
    reported (``cpu_pct[sidecar]``, ``cpu_pct[workers]``)."""
    if not trackers.udp_sidecar_available() or not trackers.sync_available():
        print("full: skipped, udp_sidecar or wsgi_tracker.sync is not in the tree")
        return
    wl = make_workload(kn.outdir, kn.k, kn.clients, kn.tpc)
    with ExitStack() as stack:
        sidecar, udp_port, workers, http_port = _synced_stack(stack, kn, wl)
        servers = [sidecar, workers]
        parts = {"sidecar": sidecar.pids, "workers": workers.pids}

        def http_load() -> loads.LoadRun:
            return loads.wrk(http_port, wl, kn.dur, cpus=kn.load_cpu, conns=kn.conns)

        if kn.warmup:
            loads.wrk(http_port, wl, kn.warmup, cpus=kn.load_cpu, conns=kn.conns)
        for _rep in range(kn.reps):
            results.add("full", "http-solo", "ours", measure(servers, http_load, parts))
            results.add(
                "full", "udp-solo", "ours", measure(servers, _flood(kn, udp_port, wl), parts)
            )
            both = {"http": http_load, "udp": _flood(kn, udp_port, wl)}
            for proto, sample in measure_together(servers, both, parts).items():
                results.add("full", proto, "ours", sample)
    results.print_summaries("full")
    h, u, solo = (results.summary("full", m, "ours") for m in ("http", "udp", "http-solo"))
    if h and u and solo:
        share = h["rps"] / solo["rps"]
        results.figures["full/combined"] = {
            "announces_per_s": h["rps"] + u["rps"],
            "processes": kn.full_workers + 1,
            "http_share_of_solo": share,
            "http_p99_ms": h["p99_ms"],
        }
        met = share >= FAIR_SHARE and h["p99_ms"] <= FAIR_P99_MS
        print(
            f"FULL combined: {h['rps'] + u['rps']:.0f} announces/s (HTTP {h['rps']:.0f} + UDP "
            f"{u['rps']:.0f}) served by {kn.full_workers} workers + the sidecar, each applying "
            f"every announce; HTTP {share:.2f}x its solo rate ({solo['rps']:.0f}/s), p99 "
            f"{h['p99_ms']:.1f} ms (solo {solo['p99_ms']:.1f} ms; target >= {FAIR_SHARE}x, "
            f"<= {FAIR_P99_MS:.0f} ms: {'met' if met else 'NOT met'})",
            flush=True,
        )


def host_page(kn: Knobs, results: Results) -> None:
    """The example Flask site's ``--page`` (it reads the tracker's counts), served by the
    same TrackerWorkers, asked for by ``--page-conns`` visitors back to back: alone, then
    while a closed-loop UDP flood hits the sidecar, in each repetition (issue 16 target 2:
    the flood never raises the page's p99 above 50 ms). One visitor by default: the page
    costs ~4 ms of CPU, so a few visitors back to back saturate the workers on their own
    and the p99 is then their queue, not what the flood does to a page."""
    if not trackers.udp_sidecar_available() or not trackers.sync_available():
        print("host-page: skipped, udp_sidecar or wsgi_tracker.sync is not in the tree")
        return
    wl = make_workload(kn.outdir, kn.k, kn.clients, kn.tpc)
    with ExitStack() as stack:
        sidecar, udp_port, workers, http_port = _synced_stack(stack, kn, wl, app=FLASK_SITE)
        servers = [sidecar, workers]
        parts = {"sidecar": sidecar.pids, "workers": workers.pids}

        def page_load() -> loads.LoadRun:
            return loads.wrk_page(http_port, kn.page, kn.dur, cpus=kn.load_cpu, conns=kn.page_conns)

        page_load()  # warm up: the site's first requests compile its templates
        for _rep in range(kn.reps):
            results.add("host-page", "page-quiet", "ours", measure(servers, page_load, parts))
            flooded = {"page": page_load, "udp": _flood(kn, udp_port, wl)}
            for what, sample in measure_together(servers, flooded, parts).items():
                results.add("host-page", f"{what}-flood", "ours", sample)
    results.print_summaries("host-page")
    quiet, flood = (results.summary("host-page", m, "ours") for m in ("page-quiet", "page-flood"))
    udp = results.summary("host-page", "udp-flood", "ours")
    if quiet and flood and udp:
        results.figures["host-page"] = {
            "page": kn.page,
            "quiet_p50_ms": quiet["p50_ms"],
            "quiet_p99_ms": quiet["p99_ms"],
            "flood_p50_ms": flood["p50_ms"],
            "flood_p99_ms": flood["p99_ms"],
            "flood_udp_per_s": udp["rps"],
        }
        met = flood["p99_ms"] <= FAIR_P99_MS
        print(
            f"HOST-PAGE {kn.page}: quiet p50 {quiet['p50_ms']:.1f} ms p99 "
            f"{quiet['p99_ms']:.1f} ms ({quiet['rps']:.0f} pages/s); under a UDP flood of "
            f"{udp['rps']:.0f}/s p50 {flood['p50_ms']:.1f} ms p99 {flood['p99_ms']:.1f} ms "
            f"({flood['rps']:.0f} pages/s; target p99 <= {FAIR_P99_MS:.0f} ms: "
            f"{'met' if met else 'NOT met'})",
            flush=True,
        )


def stack(kn: Knobs, results: Results) -> None:
    """The whole stack on one core, as ``wsgi-tracker serve`` runs it, against opentracker.

    ``ours-serve``: serve with ``--stack-workers`` workers + udp-sidecar, sync on, all on the
    server core; HTTP and UDP loads in turn. ``ours-http-alone`` / ``ours-udp-alone``: each
    part alone (sync off) in the same run, so the cost of running together is read off
    within one run. Every announce over one protocol is applied by the other processes
    too, and that CPU is on the same core.
    """
    if not trackers.udp_sidecar_available() or not trackers.sync_available():
        print("stack: skipped, udp_sidecar or wsgi_tracker.sync is not in the tree")
        return
    wl = make_workload(kn.outdir, kn.k, kn.clients, kn.tpc)
    wc = "wsgi_tracker.http.worker.TrackerWorker"
    with ExitStack() as stack_:
        sockdir = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="bench-stack-")))
        sockdir.chmod(0o700)
        udp_port = free_port()

        def serve(p: int) -> Server:
            return trackers.ours_serve(
                p, udp_port, wl, kn.outdir, kn.server_cpu,
                sync_socket=str(sockdir / "sync.sock"), workers=kn.stack_workers,
            )  # fmt: skip

        starters: dict[str, Starter] = {"ours-serve": serve}
        if kn.stack_parts:
            starters["ours-http-alone"] = lambda p: trackers.ours_http(
                p, wl, kn.outdir, kn.server_cpu, worker_class=wc
            )
            starters["ours-udp-alone"] = lambda p: trackers.ours_udp(p, kn.outdir, kn.server_cpu)
        starters.update(_anchor_starters(kn, wl))
        running = _start_all(stack_, starters)
        ports = {name: {"http": port, "udp": port} for name, (_s, port) in running.items()}
        ports["ours-serve"]["udp"] = udp_port
        alone = {"ours-http-alone": ("http",), "ours-udp-alone": ("udp",)}
        protocols = {name: alone.get(name, ("http", "udp")) for name in running}
        for name in running:
            # One UDP fill reaches every process of serve through the hub.
            over_udp = "udp" in protocols[name]
            prefill(kn, name, ports[name]["udp" if over_udp else "http"], wl, over_udp)
            if kn.warmup and "http" in protocols[name]:
                loads.wrk(ports[name]["http"], wl, kn.warmup, cpus=kn.load_cpu, conns=kn.conns)
        parts = {"ours-serve": trackers.serve_parts(running["ours-serve"][0])}
        for _rep in range(kn.reps):
            for name, (server, _port) in running.items():
                for proto in protocols[name]:
                    load = _swarm_load(kn, proto, ports[name][proto], wl)
                    tracker = "ours-alone" if name.endswith("-alone") else name
                    sample = measure([server], load, parts.get(name))
                    results.add("stack", proto, tracker, sample)
    results.print_summaries("stack")
    _stack_figures(results)


def _stack_figures(results: Results) -> None:
    """The stack's ratios to opentracker (the issue's target 4) and to its parts alone."""
    for proto, target in (("udp", 0.4), ("http", 0.5)):
        ours, ot = (results.summary("stack", proto, t) for t in ("ours-serve", "opentracker"))
        part = results.summary("stack", proto, "ours-alone")
        if not ours:
            continue
        fig: dict[str, object] = {"rps": ours["rps"], "rps_per_core": ours["rps_per_core"]}
        line = f"STACK {proto}: serve {ours['rps']:.0f}/s"
        if ot:
            fig["vs_opentracker"] = ours["rps"] / ot["rps"]
            line += (
                f" = {fig['vs_opentracker']:.2f}x opentracker ({ot['rps']:.0f}/s; "
                f"target >= {target}x)"
            )
        if part:
            fig["vs_alone"] = ours["rps"] / part["rps"]
            line += f"; the part alone {part['rps']:.0f}/s, serve = {fig['vs_alone']:.2f}x of it"
            if ot:
                line += f", alone = {part['rps'] / ot['rps']:.2f}x opentracker"
        fig.update(_us_per_announce(results.samples[("stack", proto, "ours-serve")]))
        results.figures[f"stack/{proto}"] = fig
        print(line, flush=True)
        costs = ", ".join(f"{k[3:]} {v:.1f} us" for k, v in fig.items() if k.startswith("us_"))
        print(f"STACK {proto}: CPU per announce answered: {costs}", flush=True)


def _us_per_announce(samples: list[Sample]) -> dict[str, float]:
    """Median CPU microseconds per announce, per process of serve (``us_sidecar``, ...)."""
    names = sorted({k for s in samples for k in s.extra if k.startswith("cpu_pct[")})
    return {
        f"us_{name[8:-1]}": statistics.median(
            s.extra.get(name, 0) * 1e4 / s.rps for s in samples if s.rps
        )
        for name in names
    } | {"us_all": statistics.median(1e6 / s.rps_per_core for s in samples if s.rps_per_core)}


def http_cores(kn: Knobs, results: Results) -> None:
    """HTTP over more cores (issue 16 target 5): serve with 1 worker on the server core
    against serve with N workers on N cores, sync on, the same HTTP load.

    On a machine with no spare core the load generator shares the N cores with the
    N workers, so the raw announces/s understate N cores. Two projections avoid it:
    N workers sharing the one server core (saturated, as the one worker is, so every
    cost of keeping N replicas in step is paid there): N cores serve at most N times
    that (``projected_shared``); and the servers' CPU per answered announce
    (``projected_cpu``: N / CPU per announce, which understates a process that is
    less than saturated, as its batches are smaller).
    """
    if not trackers.udp_sidecar_available() or not trackers.sync_available():
        print("http-cores: skipped, udp_sidecar or wsgi_tracker.sync is not in the tree")
        return
    n = kn.cores_workers
    many = ",".join(str(c) for c in range(n))
    wl = make_workload(kn.outdir, kn.k, kn.clients, kn.tpc)
    configs = {  # name -> workers, server cores, load cores, wrk connections
        "1w-1core": (1, kn.server_cpu, kn.load_cpu, kn.conns),
        f"{n}w-1core": (n, kn.server_cpu, kn.load_cpu, kn.conns * n),
        f"{n}w-{n}cores": (n, many, many, kn.conns * n),
    }
    with ExitStack() as stack_:
        running = {}
        for name, (workers, cpus, _load, _conns) in configs.items():
            sockdir = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="bench-cores-")))
            sockdir.chmod(0o700)
            http_port, udp_port = free_port(), free_port()
            server = trackers.ours_serve(
                http_port, udp_port, wl, kn.outdir, cpus,
                sync_socket=str(sockdir / "sync.sock"), workers=workers,
            )  # fmt: skip
            stack_.callback(server.stop)
            print(f"started {name} pid={server.proc.pid} pids={server.pids}", flush=True)
            prefill(kn, name, udp_port, wl, over_udp=True)
            running[name] = (server, http_port)
        for _rep in range(kn.reps):
            for name, (server, port) in running.items():
                _workers, _cpus, load_cpus, conns = configs[name]
                sample = measure(
                    [server],
                    lambda port=port, load_cpus=load_cpus, conns=conns: loads.wrk(
                        port, wl, kn.dur, cpus=load_cpus, conns=conns, threads=kn.wrk_threads
                    ),
                    trackers.serve_parts(server),
                )
                results.add("http-cores", name, "ours-serve", sample)
    results.print_summaries("http-cores")
    one, shared, more = (
        results.summary("http-cores", mode, "ours-serve")
        for mode in ("1w-1core", f"{n}w-1core", f"{n}w-{n}cores")
    )
    if one and shared and more:
        fig = {
            "raw_ratio": more["rps"] / one["rps"],
            "projected_shared": n * shared["rps"] / one["rps"],
            "projected_cpu": n * more["rps_per_core"] / one["rps_per_core"],
            "us_per_announce_1w": 1e6 / one["rps_per_core"],
            f"us_per_announce_{n}w_1core": 1e6 / shared["rps_per_core"],
            f"us_per_announce_{n}w": 1e6 / more["rps_per_core"],
        }
        results.figures["http-cores"] = fig
        print(
            f"CORES http: {n} workers on {n} cores {more['rps']:.0f}/s with the generator "
            f"sharing them = {fig['raw_ratio']:.2f}x one worker on one core ({one['rps']:.0f}/s); "
            f"{n} workers sharing its core {shared['rps']:.0f}/s: projected {n} cores = "
            f"{fig['projected_shared']:.2f}x one (target >= 1.8x); by the servers' CPU per "
            f"announce ({fig['us_per_announce_1w']:.0f} us with 1 worker, "
            f"{fig[f'us_per_announce_{n}w_1core']:.0f} us with {n} on one core, "
            f"{fig[f'us_per_announce_{n}w']:.0f} us on {n} cores) {fig['projected_cpu']:.2f}x",
            flush=True,
        )


def sync_lag(kn: Knobs, results: Results) -> None:
    """Delegates to ``python -m bench.sync_lag`` (the sync engineer's), when it exists."""
    script = Path(__file__).with_name("sync_lag.py")
    if not script.exists():
        print("sync-lag: skipped, bench/sync_lag.py is not in the tree yet")
        return
    done = subprocess.run(
        [sys.executable, "-m", "bench.sync_lag", "--seconds", str(kn.dur)],
        cwd=str(trackers.ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout + done.stderr)
    for line in done.stdout.splitlines():
        if line.startswith("SYNC_RESULT "):
            results.figures["sync-lag"] = loads.parse_fields(line)


def _inproc(kn: Knobs, *args: object) -> dict[str, float]:
    cmd = pinned([sys.executable, "-m", "bench.inproc", *map(str, args)], kn.server_cpu)
    done = subprocess.run(
        cmd, cwd=str(trackers.ROOT), capture_output=True, text=True, timeout=900, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])
