"""UDP on more cores (issue 16 t5): ``udp-sidecar`` with 1 process on 1 core against 2 on 2.

    python -m bench.udp_cores [--dur 10] [--reps 3] [--nice -10]

The load generator needs a core too, and this machine has two, so each run
gives two figures:

* **capacity**: announces per CPU-second of the server (every one of its
  processes, the sync traffic between them included), so 2 processes on 2
  cores can answer ``2 x`` their announces per CPU-second. This is the
  figure the target is read from: it does not depend on where the generator
  runs, and it charges the second process's whole cost (applying every
  change made in the other one) to the two-process setup.
* **throughput** as measured: 1 process pinned to cpu1 with the generator on
  cpu0; 2 processes pinned one per core with the generator free to run on
  either, so it takes its CPU from them (an understatement of 2 cores).

* **the cost of sharing the state**: the one process is measured once more,
  paced at the rate each of the two had (half their total), since CPU per
  announce rises as a process gets less busy (smaller batches per wake-up);
  what the two processes spend per announce beyond that is what sync costs
  them (applying the other's changes, sending their own), and the last line
  projects the gain with each process as busy as the one alone.

Both setups run with the sync hub on (as ``serve`` runs the sidecar), on one
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
        f"{processes}p", cmd, cpus=",".join(map(str, cores)), log=log,
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
    rate: float = 0,
) -> Sample:
    """One measured run against ``setup`` (closed loop, or paced at ``rate``), printed."""
    server, port, load_cpu = setup
    before = [procs.cpu_seconds(pid) for pid in server.pids]
    sample = measure(
        [server],
        lambda: loads.udp_load(
            port, wl, args.dur, cpus=load_cpu or None, inflight=args.inflight,
            socks=args.socks, rate=rate,
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
    args = p.parse_args()
    procs.NICE = args.nice
    procs.prioritise_session()
    outdir = Path(tempfile.mkdtemp(prefix="udp-cores-"))
    wl = make_workload(outdir, args.k, args.clients, args.tpc)
    # 1 process on cpu1, the generator on cpu0; 2 processes one per core, the generator free.
    setups = {"1 process": (1, [1], "0"), "2 processes": (2, [1, 0], "")}
    print(f"machine: {os.uname().release}, {sys.executable} {sys.version.split()[0]}")
    print(f"load average before: {os.getloadavg()}", flush=True)
    with ExitStack() as stack:
        running = []
        for name, (n, cores, load_cpu) in setups.items():
            port = procs.free_port()
            server = sidecar(port, n, outdir, cores)
            stack.callback(server.stop)
            run = loads.udp_load(
                port, wl, 120, cpus=load_cpu or None, prefill=True, inflight=args.inflight,
                socks=args.socks,
            )  # fmt: skip
            print(f"{name}: pids {server.pids}, prefill {run.result.get('responses', 0):.0f}")
            running.append((server, port, load_cpu))
        one, two, matched = [], [], []
        for _ in range(args.reps):
            one.append(run("1 process", running[0], args, wl))
            two.append(run("2 processes", running[1], args, wl))
            # The one process again at the rate each of the two had: what it costs there
            # alone, so the difference is what sharing the state costs, apart from batching.
            matched.append(run("1 process at half that", running[0], args, wl, two[-1].rps / 2))

    def med(xs: list[Sample], key: str) -> float:
        return statistics.median(getattr(s, key) for s in xs)

    us = {
        name: 1e6 / med(xs, "rps_per_core") for name, xs in (("1", one), ("2", two), ("m", matched))
    }
    sharing = us["2"] - us["m"]
    print(
        f"median: 1 process {med(one, 'rps'):.0f}/s, {us['1']:.1f} us CPU each; "
        f"2 processes {med(two, 'rps'):.0f}/s, {us['2']:.1f} us CPU each (both processes); "
        f"1 process at half the 2-process rate {us['m']:.1f} us\n"
        f"capacity 2 cores / 1 core (2 x CPU per announce of 1 / of 2): "
        f"{2 * us['1'] / us['2']:.2f}x\n"
        f"sharing the state costs {sharing:.1f} us per announce; with each process as busy as "
        f"the one alone: {2 * us['1'] / (us['1'] + sharing):.2f}x\n"
        f"throughput as measured (the generator on the 2 cores too): "
        f"{med(two, 'rps') / med(one, 'rps'):.2f}x"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
