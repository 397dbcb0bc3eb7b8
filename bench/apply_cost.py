"""What keeping in step costs an idle worker: ``python -m bench.apply_cost``.

The real stack on loopback: ``udp-sidecar`` as the hub and ``gunicorn`` with
``--workers`` TrackerWorker workers syncing through it. A paced BEP 15 load
goes into the sidecar at ``--rate``; the workers get no request at all, so
every CPU second they spend (read from /proc over the load) is the price of
applying the changes the sidecar made. The figure is that CPU divided by the
announces the sidecar answered: microseconds per remote change, per worker
(issue 16, target 1: at most 1.5 us).

Two mixes (``--mix``): ``bench`` is sync_lag's 5000 clients announcing over and
over (most announces refresh a known peer); ``distinct`` makes every announce
a new peer in one of 100,000 torrents, as a real crowd looks within seconds.
Each run starts a fresh stack; the median of ``--runs`` is quoted. Prints one
line per run, a summary per mix and an ``APPLY_RESULT`` line for scripts.

Each run first sends the same load unmeasured for ``--warmup`` seconds; by
default long enough that a lazy replica's stash is past its bound
(``MAX_PENDING`` records) before the measuring starts, in either mode, so both
are measured in their steady state. Without it a lazy worker only stashes what a
short run brings and folds it after the run (session 14, bench mix: 0.61 us over
5 s from a cold start, 4.83 us in the steady state, where eager pays 2.30 us).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file: python bench/apply_cost.py
    sys.path.insert(0, str(REPO))

from bench import procs  # noqa: E402
from bench.procs import cpu_seconds  # noqa: E402
from bench.sync_lag import tracker, udp_sender  # noqa: E402
from wsgi_tracker.config import TrackerConfig  # noqa: E402
from wsgi_tracker.core.pending import MAX_PENDING  # noqa: E402

SETTLE = 2.0  # seconds after start-up before measuring: the workers' joins are done
MIXES = ("bench", "distinct")


def send(ctx, port: int, rate: float, seconds: float, distinct: bool, answered=None) -> int:  # type: ignore[no-untyped-def]
    """Run the paced UDP sender for ``seconds``; how many it sent."""
    done = ctx.Queue()
    sender = ctx.Process(
        target=udp_sender,
        args=(port, rate, seconds, done),
        kwargs={"distinct": distinct, "answered": answered},
    )
    sender.start()
    sent = done.get(timeout=seconds + 30)
    sender.join(10)
    return sent


def one_run(
    workers: int, rate: float, seconds: float, distinct: bool, warmup: float
) -> dict[str, float]:
    """A fresh stack under one UDP load; CPU per answered announce, per idle worker.

    ``warmup`` seconds of the same load go first, unmeasured, so that in the
    bench mix most announces are refreshes of peers every replica knows.
    """
    ctx = multiprocessing.get_context("fork")
    with (
        tempfile.TemporaryDirectory(prefix="apply-cost-") as tmp,
        tracker(Path(tmp), workers, True, None) as ports,
    ):
        time.sleep(SETTLE)
        sidecar, *worker_pids = ports["pids"]
        idle = [cpu_seconds(p) for p in worker_pids]
        time.sleep(1.0)  # what an idle worker costs with no load (heartbeats)
        spent = [b - a for a, b in zip(idle, map(cpu_seconds, worker_pids), strict=True)]
        baseline = statistics.fmean(spent) if spent else 0.0
        if warmup:
            send(ctx, ports["udp"], rate, warmup, distinct)
            time.sleep(SETTLE)  # the held refreshes and any backlog are out
        before = [cpu_seconds(p) for p in worker_pids]
        sidecar_before = cpu_seconds(sidecar)
        answered = ctx.Value("q", 0)
        sent = send(ctx, ports["udp"], rate, seconds, distinct, answered)
        time.sleep(0.5)  # the last changes reach the workers
        after = [cpu_seconds(p) for p in worker_pids]
        sidecar_cpu = cpu_seconds(sidecar) - sidecar_before
    got = max(answered.value, 1)
    per_worker = [
        (b - a - baseline * (seconds + 0.5)) / got * 1e6 for a, b in zip(before, after, strict=True)
    ]
    return {
        "sent": sent / seconds,
        "answered": got / seconds,
        "worker_us": statistics.fmean(per_worker) if per_worker else 0.0,
        "sidecar_us": sidecar_cpu / got * 1e6,
        "idle_cpu_pct": baseline * 100,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apply_cost", description=__doc__)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="idle gunicorn workers (2; 0: the hub alone, what its clients cost it shows apart)",
    )
    parser.add_argument("--rate", type=float, default=30_000, help="UDP announces/s (30,000)")
    parser.add_argument("--seconds", type=float, default=8, help="length of each run (8)")
    parser.add_argument("--runs", type=int, default=3, help="runs per mix; median quoted (3)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of unmeasured load first (default: what fills a lazy stash past "
        "MAX_PENDING at --rate, plus 2 s)",
    )
    parser.add_argument(
        "--lazy-apply", action="store_true", help="the workers with the lazy_apply setting on"
    )
    parser.add_argument(
        "--mix",
        default="bench,distinct",
        help="bench, distinct, or both as bench,distinct (the default)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="priority of the whole run (e.g. -10 as root on a busy shared machine)",
    )
    args = parser.parse_args(argv)
    if args.lazy_apply:
        os.environ["WSGI_TRACKER_LAZY_APPLY"] = "true"
    if args.warmup is None:
        args.warmup = MAX_PENDING / args.rate + 2.0
    lazy = TrackerConfig.load().lazy_apply  # as the stack started here reads it
    print(f"lazy_apply: {'on' if lazy else 'off'}, warmup {args.warmup:.1f} s per run")
    procs.NICE = args.nice
    procs.prioritise_session()
    mixes = args.mix.split(",")
    if set(mixes) - set(MIXES):
        parser.error(f"unknown --mix: {', '.join(sorted(set(mixes) - set(MIXES)))}")
    results: dict[str, float] = {}
    for mix in mixes:
        runs = []
        for n in range(args.runs):
            run = one_run(args.workers, args.rate, args.seconds, mix == "distinct", args.warmup)
            runs.append(run)
            print(
                f"{mix} run {n + 1}: {run['answered']:,.0f} of {run['sent']:,.0f} UDP "
                f"announces/s answered; idle worker {run['worker_us']:.2f} us of CPU per "
                f"remote change (idle alone {run['idle_cpu_pct']:.2f}% CPU), sidecar "
                f"{run['sidecar_us']:.2f} us per announce"
            )
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"{mix}: median {median['worker_us']:.2f} us of idle-worker CPU per remote change "
            f"at {median['answered']:,.0f} announces/s ({args.runs} runs, {args.workers} workers)"
        )
        results.update({f"{mix}_{k}": v for k, v in median.items()})
    print("APPLY_RESULT " + " ".join(f"{k}={v:.2f}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
