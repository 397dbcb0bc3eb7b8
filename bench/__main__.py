"""``python -m bench [scenario ...]``: the benchmark runner (docs/BENCHMARKS.md).

Scenarios: http, udp, udp-scrape, full, host-page, ryw, stack, http-cores, huge-swarm,
memory, sync-lag (default: all).
Tracker on --server-cpu, load on --load-cpu, loopback only, every run bounded;
figures are medians over --reps runs, printed as SUMMARY / RATIO lines, merged
into bench/results.json, and drawn into docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path

from . import procs, ryw, scenarios
from .report import CHART, RESULTS, Results, draw_chart, machine, markdown

SCENARIOS = (
    "http", "udp", "udp-scrape", "full", "host-page", "ryw", "stack", "http-cores",
    "huge-swarm", "memory", "sync-lag",
)  # fmt: skip


def parse_args() -> tuple[list[str], scenarios.Knobs, bool]:
    d = scenarios.Knobs(outdir=Path())
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("scenario", nargs="*", choices=[*SCENARIOS, []], help="default: all")
    p.add_argument("--out", type=Path, help="raw logs (default /tmp/wsgi-tracker-bench/<time>)")
    p.add_argument("--dur", type=float, default=d.dur, help="seconds per measured run")
    p.add_argument("--reps", type=int, default=d.reps, help="runs per figure (median quoted)")
    p.add_argument("--warmup", type=float, default=d.warmup, help="HTTP warm-up seconds")
    p.add_argument("--k", type=int, default=d.k, help="torrents in the pool")
    p.add_argument("--clients", type=int, default=d.clients, help="simulated clients")
    p.add_argument("--tpc", type=int, default=d.tpc, help="torrents per client")
    p.add_argument("--conns", type=int, default=d.conns, help="wrk connections")
    p.add_argument("--wrk-threads", type=int, default=d.wrk_threads)
    p.add_argument("--inflight", type=int, default=d.inflight, help="UDP requests in flight")
    p.add_argument("--socks", type=int, default=d.socks, help="UDP client sockets")
    p.add_argument("--scrape-hashes", type=int, default=d.scrape_hashes)
    p.add_argument("--server-cpu", default=d.server_cpu, help="taskset list; '' = unpinned")
    p.add_argument("--load-cpu", default=d.load_cpu, help="taskset list; '' = unpinned")
    p.add_argument(
        "--worker-class",
        action="append",
        dest="worker_classes",
        help="gunicorn worker class for ours (repeatable; default gevent and gevent_pywsgi)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="priority of servers and loads (e.g. -10 as root on a busy shared machine)",
    )
    p.add_argument("--no-anchors", action="store_true", help="do not start opentracker")
    p.add_argument(
        "--bittorrent-tracker",
        action="store_true",
        help="also run the npm bittorrent-tracker (npm ci into the cache on first use)",
    )
    p.add_argument(
        "--full-workers", type=int, default=d.full_workers, help="full, host-page: workers"
    )
    p.add_argument("--page", default=d.page, help="host-page: the example site's page to ask for")
    p.add_argument(
        "--page-conns",
        type=int,
        default=d.page_conns,
        help="host-page: visitors at once (default 1: a page's latency, not a queue)",
    )
    p.add_argument(
        "--ryw-conns",
        type=lambda v: tuple(int(n) for n in v.split(",")),
        default=d.ryw_conns,
        help="ryw: wrk connection counts, comma-separated (default 1,50,120)",
    )
    p.add_argument(
        "--stack-workers", type=int, default=d.stack_workers, help="serve's workers in stack"
    )
    p.add_argument(
        "--cores-workers", type=int, default=d.cores_workers, help="http-cores: N workers"
    )
    p.add_argument(
        "--no-stack-parts",
        action="store_true",
        help="stack: do not also run each part alone (sync off) for comparison",
    )
    p.add_argument("--huge-peers", type=int, default=d.huge_peers)
    p.add_argument("--small-peers", type=int, default=d.small_peers)
    p.add_argument("--mem-torrents", type=int, default=d.mem_torrents)
    p.add_argument("--mem-peers", type=int, default=d.mem_peers)
    p.add_argument(
        "--mem-wire-http-peers",
        type=int,
        default=d.mem_wire_http_peers,
        help="peers filled over HTTP for the wire memory figure (HTTP fills are slow)",
    )
    p.add_argument("--no-save", action="store_true", help="do not touch results.json or the chart")
    p.add_argument(
        "--from-runs",
        type=Path,
        metavar="RUNS_JSONL",
        help="summarise an earlier run's runs.jsonl again and merge it into results.json",
    )
    p.add_argument(
        "--table",
        action="store_true",
        help="print bench/results.json as markdown tables (and redraw the chart); run nothing",
    )
    a = p.parse_args()
    out = a.out or Path("/tmp/wsgi-tracker-bench") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    knobs = scenarios.Knobs(
        outdir=out.resolve(),
        dur=a.dur,
        reps=a.reps,
        warmup=a.warmup,
        k=a.k,
        clients=a.clients,
        tpc=a.tpc,
        conns=a.conns,
        wrk_threads=a.wrk_threads,
        inflight=a.inflight,
        socks=a.socks,
        scrape_hashes=a.scrape_hashes,
        server_cpu=a.server_cpu or None,
        load_cpu=a.load_cpu or None,
        worker_classes=tuple(a.worker_classes or d.worker_classes),
        anchors=not a.no_anchors,
        bittorrent_tracker=a.bittorrent_tracker,
        full_workers=a.full_workers,
        page=a.page,
        page_conns=a.page_conns,
        stack_workers=a.stack_workers,
        cores_workers=a.cores_workers,
        stack_parts=not a.no_stack_parts,
        huge_peers=a.huge_peers,
        small_peers=a.small_peers,
        mem_torrents=a.mem_torrents,
        mem_peers=a.mem_peers,
        mem_wire_http_peers=a.mem_wire_http_peers,
        ryw_conns=a.ryw_conns,
    )
    procs.NICE = a.nice
    if a.from_runs:
        results = Results.from_runs(a.from_runs)
        for scenario in sorted({k[0] for k in results.samples}):
            results.print_summaries(scenario)
        draw_chart(results.save())
        sys.exit(0)
    if a.table:
        data = json.loads(RESULTS.read_text())
        draw_chart(data)
        print(markdown(data))
        sys.exit(0)
    return a.scenario or list(SCENARIOS), knobs, not a.no_save


def _exit_on_signal(signum: int, _frame: object) -> None:
    # Unwinds through every ExitStack, so the servers this run started are stopped.
    raise SystemExit(128 + signum)


def main() -> None:
    # Explicit handlers: a runner started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGINT, _exit_on_signal)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    chosen, knobs, save = parse_args()
    procs.prioritise_session()  # the load generators run in the runner's session
    settings = {k: v for k, v in dataclasses.asdict(knobs).items() if k != "outdir"}
    settings["nice"] = procs.NICE
    print(f"bench: {' '.join(chosen)}; raw logs in {knobs.outdir}")
    print(f"machine: {machine()}")
    print(f"settings: {settings}", flush=True)
    results = Results(runs_log=knobs.outdir / "runs.jsonl")
    udp_modes = tuple(m for s, m in (("udp", "announce"), ("udp-scrape", "scrape")) if s in chosen)
    try:
        for name in chosen:
            print(f"=== {name} ({time.strftime('%H:%M:%S')})", flush=True)
            if name == "http":
                scenarios.http(knobs, results)
            elif name in ("udp", "udp-scrape"):
                if name == next(s for s in chosen if s in ("udp", "udp-scrape")):
                    scenarios.udp(knobs, results, udp_modes)
            elif name == "full":
                scenarios.full(knobs, results)
            elif name == "host-page":
                scenarios.host_page(knobs, results)
            elif name == "ryw":
                ryw.ryw(knobs, results)
            elif name == "stack":
                scenarios.stack(knobs, results)
            elif name == "http-cores":
                scenarios.http_cores(knobs, results)
            elif name == "huge-swarm":
                scenarios.huge_swarm(knobs, results)
            elif name == "memory":
                scenarios.memory(knobs, results)
            elif name == "sync-lag":
                scenarios.sync_lag(knobs, results)
    finally:
        if save and (results.samples or results.figures):
            data = results.save()
            chart = draw_chart(data)
            print(f"results merged into {RESULTS}" + (f"; chart {CHART}" if chart else ""))


if __name__ == "__main__":
    main()
