"""UDP on more cores (issue 16 t5): ``udp-sidecar`` with 1 process on 1 core against 2 on 2.

    python -m bench.udp_cores [--dur 10] [--reps 3] [--nice -10] [--stable-keys] [--lazy-apply]
        [--peer-ttl 100]

The load generator needs a core too, and this machine has two, so three
setups, each measured ``--reps`` times in turn:

* **1 process** on cpu1, the generator on cpu0: the baseline.
* **2 processes sharing cpu1**, the generator on cpu0: the same one core, now
  busy with both processes, so every cost of running two is paid here (each
  applies the other's changes and sends its own; they switch on the core)
  while the core stays saturated, as the baseline's is. Two such processes
  on two cores can do at most twice this, so ``2 x`` its rate over the
  baseline's is the capacity ratio of 2 cores to 1, read without the
  generator in the way. (CPU per announce at a lower load is no substitute:
  it rises steeply as a process gets less busy, with fewer datagrams per
  wake-up.)
* **2 processes on cpu1 and cpu0**, the generator free to run on either: the
  throughput as measured, which understates 2 cores by what the generator and
  the machine's other work take from them.

Every setup runs with the sync hub on (as ``serve`` runs the sidecar), on one
workload after one pre-fill, measured alternately, ``--reps`` times each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from . import loads, procs
from .measure import Sample, measure
from .procs import Server
from .workload import Workload, make_workload, udp_ready

ROOT = Path(__file__).resolve().parent.parent


def sidecar(port: int, processes: int, outdir: Path, cores: list[int]) -> Server:
    """udp-sidecar with ``processes`` UDP processes, the i-th pinned to ``cores[i]``."""
    sync = tempfile.mkdtemp(prefix="udpc-", dir="/tmp") + "/sync.sock"
    log = outdir / f"udp-sidecar-{processes}p-{port}.log"
    cmd = [
        sys.executable, "-m", "udp_sidecar", "--udp-bind", "127.0.0.1", "--udp-port", str(port),
        "--sync-socket", sync, "--udp-processes", str(processes),
    ]  # fmt: skip
    server = procs.start(
        f"{processes}p", cmd, cpus=",".join(map(str, sorted(set(cores)))), log=log,
        ready=lambda: udp_ready(port), env={"WSGI_TRACKER_SYNC_SOCKET": sync}, cwd=str(ROOT),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while log.read_text().count("UDP process serving") < processes - 1:
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{processes}p: not every UDP process serves; see {log}")
        time.sleep(0.1)
    server.pids = [server.proc.pid, *procs.children(server.proc.pid)]
    for pid, core in zip(server.pids, cores, strict=True):
        os.sched_setaffinity(pid, {core})
        # The other UDP processes run in sessions of their own (as serve's children do), so
        # each needs --nice for its own autogroup too, or it gets a share of what the first
        # one gets.
        procs.prioritise_session(pid)
    return server


def run(
    name: str,
    setup: tuple[Server, int, str],
    args: argparse.Namespace,
    wl: Workload,
) -> Sample:
    """One measured (closed-loop) run against ``setup``, printed."""
    server, port, load_cpu = setup
    before = [procs.cpu_seconds(pid) for pid in server.pids]
    sample = measure(
        [server],
        lambda: loads.udp_load(
            port, wl, args.dur, cpus=load_cpu or None, inflight=args.inflight,
            socks=args.socks, stable_keys=args.stable_keys,
        ),
    )  # fmt: skip
    after = [procs.cpu_seconds(pid) for pid in server.pids]
    shares = ", ".join(
        f"{(b1 - b0) / args.dur * 100:.0f}%" for b0, b1 in zip(before, after, strict=True)
    )
    print(
        f"{name}: {sample.rps:.0f}/s, server {sample.server_cpu_pct:.0f}% ({shares}), "
        f"{sample.rps_per_core:.0f} per core-second, generator {sample.load_cpu_pct:.0f}%, "
        f"other {sample.other_cpu_pct:.0f}%, p99 {sample.p99_ms:.1f} ms, "
        f"{sample.avg_peers:.0f} peers, bad {sample.bad}",
        flush=True,
    )
    return sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dur", type=float, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--k", type=int, default=1000, help="torrents")
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--tpc", type=int, default=20, help="torrents per client")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--socks", type=int, default=64, help="source ports: the kernel's hash")
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--lazy-apply", action="store_true", help="the lazy_apply setting on")
    p.add_argument(
        "--stable-keys",
        action="store_true",
        help="each client keeps its key across runs (udp_load -K): after the pre-fill "
        "every announce is a pure refresh, as real clients on their interval send; "
        "default: new keys, so every announce is a change the other processes must see",
    )
    p.add_argument(
        "--peer-ttl",
        type=int,
        default=None,
        help="the processes' peer_ttl (interval set below it): at 100 the store's "
        "refresh_grain is 1 s, so nearly every re-announce of the load (each pair every "
        "~1.4 s) is written and shipped as a refresh, as every announce of a real client "
        "on its interval is; default: the tracker's (a 30 s grain, inside which the "
        "load's re-announces ship nothing)",
    )
    args = p.parse_args()
    procs.NICE = args.nice
    if args.peer_ttl:
        os.environ["WSGI_TRACKER_PEER_TTL"] = str(args.peer_ttl)
        os.environ["WSGI_TRACKER_INTERVAL"] = str(max(1, (args.peer_ttl - 60) // 2))
        os.environ["WSGI_TRACKER_MIN_INTERVAL"] = "1"
    if args.lazy_apply:
        os.environ["WSGI_TRACKER_LAZY_APPLY"] = "true"  # the UDP processes' (the hub is eager)
    procs.prioritise_session()
    outdir = Path(tempfile.mkdtemp(prefix="udp-cores-"))
    wl = make_workload(outdir, args.k, args.clients, args.tpc)
    setups = {
        "1 process": (1, [1], "0"),
        "2 processes sharing cpu1": (2, [1, 1], "0"),
        "2 processes on cpu1+cpu0": (2, [1, 0], ""),
    }
    print(f"machine: {os.uname().release}, {sys.executable} {sys.version.split()[0]}")
    print(
        f"stable keys: {args.stable_keys}, lazy_apply: {args.lazy_apply}, "
        f"peer_ttl: {args.peer_ttl or 'default'}"
    )
    print(f"load average before: {os.getloadavg()}", flush=True)
    with ExitStack() as stack:
        running = []
        for name, (n, cores, load_cpu) in setups.items():
            port = procs.free_port()
            server = sidecar(port, n, outdir, cores)
            stack.callback(server.stop)
            fill = loads.udp_load(
                port, wl, 120, cpus=load_cpu or None, prefill=True, inflight=args.inflight,
                socks=args.socks, stable_keys=args.stable_keys,
            )  # fmt: skip
            print(f"{name}: pids {server.pids}, prefill {fill.result.get('responses', 0):.0f}")
            running.append((server, port, load_cpu))
        samples: list[list[Sample]] = [[] for _ in running]
        for _ in range(args.reps):
            for name, setup, got in zip(setups, running, samples, strict=True):
                got.append(run(name, setup, args, wl))
    one, shared, two = (statistics.median(s.rps for s in got) for got in samples)
    cpu = [1e6 / statistics.median(s.rps_per_core for s in got) for got in samples]
    print(
        f"median: 1 process {one:.0f}/s ({cpu[0]:.1f} us CPU per announce); 2 processes "
        f"sharing one core {shared:.0f}/s ({cpu[1]:.1f} us); 2 processes on 2 cores "
        f"{two:.0f}/s ({cpu[2]:.1f} us)\n"
        f"capacity 2 cores / 1 core (2 x sharing one core / 1 process): {2 * shared / one:.2f}x\n"
        f"throughput as measured, the generator on the 2 cores too: {two / one:.2f}x"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
