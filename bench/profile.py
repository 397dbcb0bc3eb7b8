"""``python -m bench.profile http|udp``: where our server's time goes under the bench load.

Starts ours (pinned like the bench), fills it, runs the load while py-spy
samples the server process, and prints the top functions by own time and by
inclusive time as percentages of all samples, plus a flame graph (SVG).
``--stack``: the whole stack as ``wsgi-tracker serve`` runs it (the bench's
``stack`` scenario, sync on), every serving process (the worker and the
sidecar) sampled at once, so what the protocol's load costs the process that
does not answer it shows too. ``--native``: C frames too, so the compiled
modules' functions show by name (without it their time is one empty frame).
py-spy must be installed (``pip install py-spy``); it runs on the load's core.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import loads, procs, trackers
from .procs import Server, free_port, pinned
from .workload import Workload, make_workload


def record(
    pid: int, seconds: float, out: Path, cpus: str | None, fmt: str, native: bool = False
) -> None:
    cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds))]
    cmd += ["--rate", "250", "--format", fmt, "--output", str(out)]
    # --native: the compiled modules' C frames too (else they show as one empty frame);
    # py-spy must pause the process for those, so not --nonblocking then.
    cmd.append("--native" if native else "--nonblocking")
    subprocess.run(pinned(cmd, cpus), check=True, capture_output=True, timeout=seconds + 60)


def top(collapsed: Path, n: int) -> str:
    """Own and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    out = [f"{total} samples", "own time:"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(n)]
    out.append("inclusive time:")
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(n)]
    return "\n".join(out)


def _short(frame: str) -> str:
    """'announce (core/tracker.py:123)' -> 'announce (core/tracker.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "wsgi_tracker/", "udp_sidecar/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("protocol", choices=["http", "udp"])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--worker-class", default="wsgi_tracker.http.worker.TrackerWorker")
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--load-cpu", default="0")
    p.add_argument("--out", type=Path, default=Path("/tmp/wsgi-tracker-profile"))
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--nice", type=int, default=0, help="priority of server and load")
    p.add_argument("--stack", action="store_true", help="wsgi-tracker serve, sync on (1 worker)")
    p.add_argument(
        "--native", action="store_true", help="C frames too: what the compiled modules do"
    )
    a = p.parse_args()
    procs.NICE = a.nice
    procs.prioritise_session()
    if not shutil.which("py-spy"):
        raise SystemExit("py-spy missing: pip install py-spy")
    a.out.mkdir(parents=True, exist_ok=True)
    wl = make_workload(a.out, 1000, 5000, 20)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as sockdir:
        udp_port = port
        if a.stack:
            udp_port = free_port()
            server = trackers.ours_serve(
                port, udp_port, wl, a.out, a.server_cpu, sync_socket=f"{sockdir}/sync.sock"
            )
        elif a.protocol == "http":
            server = trackers.ours_http(port, wl, a.out, a.server_cpu, worker_class=a.worker_class)
        else:
            server = trackers.ours_udp(port, a.out, a.server_cpu)
        try:
            _profile(a, server, wl, port if a.protocol == "http" else udp_port, udp_port)
        finally:
            server.stop()


def _profile(a: argparse.Namespace, server: Server, wl: Workload, port: int, fill: int) -> None:
    if a.protocol == "http" and not a.stack:
        loads.wrk(port, wl, 120, cpus=a.load_cpu, prefill=True)
    else:
        loads.udp_load(fill, wl, 120, cpus=a.load_cpu, prefill=True)
    stamp = time.strftime("%H%M%S")
    # The load runs while py-spy samples; it lasts a little longer than the recording.
    load = threading.Thread(
        target=(
            (lambda: loads.wrk(port, wl, 2 * a.seconds + 5, cpus=a.load_cpu))
            if a.protocol == "http"
            else (lambda: loads.udp_load(port, wl, 2 * a.seconds + 5, cpus=a.load_cpu))
        )
    )
    load.start()
    time.sleep(1)
    targets = (
        {pids[0]: name for name, pids in trackers.serve_parts(server).items()}
        if a.stack
        else {server.pids[0]: server.name}
    )
    files = {}
    with ThreadPoolExecutor(2 * len(targets)) as pool:
        for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
            jobs = []
            for pid, name in targets.items():
                out = a.out / f"{a.protocol}{'-stack' if a.stack else ''}-{name}-{stamp}.{ext}"
                files.setdefault(pid, []).append(out)
                job = pool.submit(record, pid, a.seconds, out, a.load_cpu, fmt, a.native)
                jobs.append(job)
            for job in jobs:
                job.result()
    load.join()
    for pid, name in targets.items():
        raw, svg = files[pid]
        print(f"{a.protocol} profile of pid {pid} ({name}, {server.name}); flame graph {svg}")
        print(top(raw, a.top))


if __name__ == "__main__":
    main()
