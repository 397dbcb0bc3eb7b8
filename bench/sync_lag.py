"""What sync costs and how far behind the other processes are: ``python -m bench.sync_lag``.

Runs on loopback, each with its own processes:

1. in this process, the cost per change of the listener every announce calls,
   of encoding, and of a replica decoding and applying it;
2. HTTP announces/s of ``gunicorn -w W`` with sync off, then with
   ``udp-sidecar`` as the hub and every worker syncing through it (wrk,
   keep-alive, no pacing);
3. sync alone at ``--rate`` (default 10,000 announces/s): two publisher
   processes, each a real ``TrackerCore`` with a real ``SyncClient`` (what a
   worker runs, minus HTTP), announce at half the rate each through the hub;
4. end to end at ``--rate``: half HTTP (wrk, paced) into the workers, half UDP
   (a paced BEP 15 sender) into the sidecar.

In 3 and 4 an observer process joins the hub as a client, exactly as a worker
does, and for every delta it receives records ``receive time - announce
time`` (both wall clock, one machine): the delta lag from one process to
another, by origin. Prints one line per figure and a final ``SYNC_RESULT``
line (key=value) for scripts. Needs ``wrk`` (Debian package).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file: python bench/sync_lag.py
    sys.path.insert(0, str(REPO))

from bench.procs import LOOPBACK_CROWD, STORE_CROWD  # noqa: E402
from wsgi_tracker.sync import frames  # noqa: E402

UDP_PROTOCOL_ID = 0x41727101980
# Who made a delta, by its peer_id: wrk's "-WK", the UDP sender's "-UD", a publisher's "-P".
ORIGINS = {b"-U": "udp", b"-P": "core", b"-W": "http"}
WARMUP = 1.0  # seconds of each run not measured

# Every request a realistic announce; a client's peer_id and port stay the same,
# so the swarms settle at CLIENTS peers. DELAY_MS paces each connection.
WRK_SCRIPT = r"""
local clients = tonumber(os.getenv("CLIENTS") or "5000")
local torrents = tonumber(os.getenv("TORRENTS") or "1000")
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
local function pct(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end
function init(args) math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1e6)) end
function request()
  local c = math.random(0, clients - 1)
  local t = (c * 7 + math.random(0, 19)) % torrents
  local left = (c % 5 == 0) and "0" or "1000"
  return wrk.format("GET", "/announce?info_hash=" .. pct(string.format("%020d", t))
    .. "&peer_id=" .. pct(string.format("-WK0001-%012d", c))
    .. "&port=" .. (1025 + c % 30000) .. "&left=" .. left .. "&compact=1&numwant=50")
end
if delay_ms > 0 then
  function delay() return math.random() * 2 * delay_ms end
end
"""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(probe, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if probe():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def tracker(tmp: Path, workers: int, sync: bool, worker_class: str | None) -> Iterator[dict]:
    """gunicorn (none if ``workers`` is 0) and, with sync, udp-sidecar as the hub;
    yields their ports and the socket."""
    sock = str(tmp / "hub" / "sync.sock")
    env = dict(os.environ, **LOOPBACK_CROWD, WSGI_TRACKER_SYNC_SOCKET=sock if sync else "off")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    http_port, udp_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    pids: list[int] = []
    with contextlib.ExitStack() as stack:
        if sync:
            sidecar = stack.enter_context(
                process(
                    [sys.executable, "-m", "udp_sidecar", "--udp-bind", "127.0.0.1",
                     "--udp-port", str(udp_port), "--sync-socket", sock, "--log-level", "WARNING"],
                    env, tmp / "sidecar.log",
                )
            )  # fmt: skip
            wait_for(lambda: _unix_answers(sock), "the sync hub")
            pids.append(sidecar.pid)
        conf = str(REPO / "wsgi_tracker/running/gunicorn_conf.py")
        cmd = [sys.executable, "-m", "gunicorn", "-c", conf,
               "--workers", str(workers), "--bind", f"127.0.0.1:{http_port}"]  # fmt: skip
        if worker_class:
            cmd += ["--worker-class", worker_class]
        if workers:
            app = [*cmd, "wsgi_tracker.wsgi:app"]
            master = stack.enter_context(process(app, env, tmp / "gunicorn.log"))
            wait_for(lambda: _http_answers(http_port), "gunicorn")
            pids.extend(children(master.pid))
        yield {"http": http_port, "udp": udp_port, "sock": sock, "pids": pids}


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's workers), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.isdigit() and int(_stat(int(entry))[1]) == pid:
                found.append(int(entry))
    return found


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat fields after the command name (state is [0], ppid [1])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used: what a figure costs, whatever else runs."""
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f[11]) + int(f[12]) for f in map(_stat, pids)) / ticks


def _unix_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
    return True


def _http_answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"GET /scrape HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.recv(16).startswith(b"HTTP/1.")


def wrk(port: int, seconds: float, connections: int, delay_ms: float, tmp: Path) -> float:
    """Announces/s wrk got answered (it also warms every worker's swarms)."""
    return wrk_run(port, seconds, connections, delay_ms, tmp)[0]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_run(
    port: int, seconds: float, connections: int, delay_ms: float, tmp: Path
) -> tuple[float, float, float]:
    """(announces/s, p50 ms, p99 ms) of one wrk run: the latency a client sees, which is
    where read-your-writes' wait for the hub's ack shows."""
    script = tmp / "announce.lua"
    script.write_text(WRK_SCRIPT)
    env = dict(os.environ, DELAY_MS=str(delay_ms))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not match:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    pct = {
        q: float(v) * _UNITS[unit]
        for q, v, unit in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    return float(match.group(1)), pct.get("50", float("nan")), pct.get("99", float("nan"))


def udp_sender(
    port: int,
    rate: float,
    seconds: float,
    done: multiprocessing.Queue,
    tag: bytes = b"-UD",
    distinct: bool = False,
    answered: Any = None,
) -> None:
    """Paced BEP 15 announces from 5000 simulated peers (peer ids start with ``tag``);
    puts the count sent.

    ``distinct``: every announce from a new peer in one of 100,000 torrents (no peer
    repeats), as a real crowd looks within seconds, rather than 5000 peers over and over.
    ``answered`` (a ``multiprocessing.Value``) is set to the replies received.
    """
    socks = []
    for _ in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # replies wait while we pace
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
        s.send(struct.pack(">QII", UDP_PROTOCOL_ID, 0, 1))
        socks.append((s, s.recv(16)[8:16]))
        s.setblocking(False)
    sent = replies = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        for _ in range(int(elapsed * rate) - sent):
            c = sent if distinct else secrets.randbelow(5000)
            sock, cid = socks[c % 4]
            if distinct:
                ih, peer_id = b"%020d" % secrets.randbelow(100_000), tag + b"%017d" % c
                port = 1024 + c % 60000
            else:
                ih = b"%020d" % ((c * 7 + secrets.randbelow(20)) % 1000)
                peer_id, port = tag + b"0001-%012d" % c, 40000 + c
            packet = struct.pack(
                ">8sII20s20sQQQIIIiH", cid, 1, sent, ih, peer_id,
                0, 0 if c % 5 == 0 else 1000, 0, 0, 0, 0, 50, port,
            )  # fmt: skip
            with contextlib.suppress(OSError):
                sock.send(packet)
            sent += 1
        for sock, _ in socks:  # count and drop the replies
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    replies += 1
        time.sleep(0.001)
    if answered is not None:
        deadline = time.monotonic() + 0.5  # the last replies still on their way
        while time.monotonic() < deadline:
            for sock, _ in socks:
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        replies += 1
            time.sleep(0.01)
        answered.value = replies
    done.put(sent)


def publish(path: str, rate: float, seconds: float, tag: int) -> int:
    """A worker minus HTTP: paced announces into a real core with a real sync client.

    Runs in a process of its own that gevent has patched first, as gunicorn's
    gevent worker does (see ``publisher``); returns how many it made.
    """
    import gevent

    from wsgi_tracker.core.tracker import TrackerCore
    from wsgi_tracker.core.types import Announce
    from wsgi_tracker.sync.client import SyncClient

    core = TrackerCore()
    client = SyncClient(core, path, role=frames.ROLE_TOOL)
    client.start()
    client.wait_ready(10)
    loopback = socket.inet_aton("127.0.0.1")
    sent = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        for _ in range(int(elapsed * rate) - sent):
            c = secrets.randbelow(5000)
            ih = b"%020d" % ((c * 7 + secrets.randbelow(20)) % 1000)
            req = Announce(ih, b"-P%d0001-%012d" % (tag, c), 20000 + c, left=c % 5 and 1000)
            with core.lock:
                core.announce(req, loopback)
            sent += 1
            gevent.idle()  # as a request greenlet waits on its socket between requests
        time.sleep(0.001)
    client.stop()
    return sent


def publisher(
    path: str, rate: float, seconds: float, tag: int, done: multiprocessing.Queue
) -> None:
    """``publish`` in a fresh interpreter patched by gevent before any import."""
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import bench.sync_lag as b\n"
        f"print(b.publish({path!r}, {rate!r}, {seconds!r}, {tag!r}))"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    done.put(int(out.stdout.strip() or 0))


def observer(
    path: str, seconds: float, done: multiprocessing.Queue, origins: dict[bytes, str] = ORIGINS
) -> None:
    """A sync client that only listens: lag of every delta it receives, by origin
    (``origins`` maps a peer id's first two bytes to a name; others count as http).

    A refresh of a peer it already holds (same endpoint and seeder flag, no
    event: what the hub holds back up to its refresh window, docs/SYNC.md) is
    counted apart, under "refresh", so the lag of what readers see stays apart.
    """
    from wsgi_tracker.core.swarm import SwarmStore
    from wsgi_tracker.sync.hub import is_refresh
    from wsgi_tracker.sync.replica import apply_remote

    lags: dict[str, list[float]] = {name: [] for name in (*origins.values(), "http", "refresh")}
    store = SwarmStore(**STORE_CROWD)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(frames.encode(frames.Hello(frames.ROLE_TOOL, os.getpid())))
    sock.settimeout(0.5)
    decoder = frames.FrameDecoder()
    start = time.monotonic()
    beat = frames.encode(frames.Heartbeat())
    last_beat = start
    while (now_m := time.monotonic()) - start < seconds:
        if now_m - last_beat > 1:
            sock.sendall(beat)
            last_beat = now_m
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        now = time.time()
        if not data:
            break
        for frame in decoder.feed(data):
            if isinstance(frame, frames.Deltas):
                for p in frame.peers:
                    kind = "refresh" if is_refresh(store, p, 0.0) else None
                    apply_remote(store, p)
                    if now_m - start > WARMUP:
                        lags[kind or origins.get(p.peer_id[:2], "http")].append(now - p.timestamp)
    sock.close()
    done.put(lags)


def per_change_costs() -> dict[str, float]:
    """Microseconds per change, in this process: the listener the core calls per
    announce (plus taking the batch), encoding, and a replica decoding + applying it."""
    import threading
    import timeit

    from wsgi_tracker.core.swarm import SwarmStore
    from wsgi_tracker.core.types import PeerChange
    from wsgi_tracker.sync.replica import ChangeBuffer, merge

    buffer = ChangeBuffer(threading.Lock(), threading.Event().set)
    n = frames.RECORDS_PER_FRAME
    changes = [
        PeerChange(
            (i % 1000).to_bytes(20, "big"), i.to_bytes(20, "big"), b"\x7f\0\0\1\x1a\xe1",
            i % 3 == 0, 0, time.time(),
        )
        for i in range(n)
    ]  # fmt: skip
    wire = frames.encode(frames.Deltas(changes))
    store = SwarmStore()

    def listen() -> None:
        for c in changes:
            buffer(c, False)
        buffer.take()

    def receive() -> None:
        for frame in frames.FrameDecoder().feed(wire):
            merge(store, frame.peers)  # type: ignore[union-attr]

    def best(fn) -> float:  # type: ignore[no-untyped-def]
        return min(timeit.repeat(fn, number=5, repeat=5)) / 5 / n * 1e6

    return {
        "listener_us": best(listen),
        "encode_us": best(lambda: frames.encode(frames.Deltas(changes))),
        "apply_us": best(receive),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def watch_while(ctx, path, seconds, loads, foreground=None):  # type: ignore[no-untyped-def]
    """Run the observer and each (function, args) load in its own process for
    ``seconds`` (and ``foreground()`` here); returns the lags and what each load
    put, then the foreground's result."""
    queue = ctx.Queue()
    watch = ctx.Process(target=observer, args=(path, seconds + 1, queue))
    watch.start()
    time.sleep(0.5)
    procs = [ctx.Process(target=fn, args=(*fn_args, queue)) for fn, fn_args in loads]
    for proc in procs:
        proc.start()
    extra = [foreground()] if foreground else []
    outputs = [queue.get(timeout=60) for _ in range(len(procs) + 1)]
    for proc in [*procs, watch]:
        proc.join(10)
    lags = next(o for o in outputs if isinstance(o, dict))
    return lags, [o for o in outputs if not isinstance(o, dict)] + extra


def report(results: dict[str, float], key: str, label: str, values: list[float]) -> None:
    p50, p99 = percentile(values, 0.50) * 1000, percentile(values, 0.99) * 1000
    worst = max(values, default=float("nan")) * 1000
    results[f"{key}_p50_ms"], results[f"{key}_p99_ms"] = p50, p99
    print(
        f"  delta lag {label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms "
        f"({len(values):,} deltas; mean {statistics.fmean(values or [0]) * 1000:.2f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_lag", description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--seconds", type=float, default=10, help="length of each run")
    parser.add_argument("--rate", type=float, default=10_000, help="announces/s for the lag run")
    parser.add_argument("--http-share", type=float, default=0.5, help="HTTP part of --rate")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--worker-class", help="gunicorn worker class (default: the project's)")
    parser.add_argument(
        "--parts",
        default="costs,http,core,e2e",
        help="which runs, comma-separated (default all: costs,http,core,e2e); "
        "e.g. --parts core to repeat only the sync-alone lag",
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - {"costs", "http", "core", "e2e"}:
        parser.error(
            f"unknown --parts: {', '.join(sorted(parts - {'costs', 'http', 'core', 'e2e'}))}"
        )
    if not shutil.which("wrk"):
        print("bench.sync_lag: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("fork")
    results: dict[str, float] = {}
    if "costs" in parts:
        results = per_change_costs()
        print(
            f"per change: listener + batch {results['listener_us']:.2f} us, "
            f"encode {results['encode_us']:.2f} us, "
            f"decode + apply at a replica {results['apply_us']:.2f} us"
        )
    with tempfile.TemporaryDirectory(prefix="sync-lag-") as tmp_name:
        tmp = Path(tmp_name)
        for sync in (False, True) if "http" in parts else ():
            with tracker(tmp, args.workers, sync, args.worker_class) as ports:
                cpu = cpu_seconds(ports["pids"])
                rps, p50, p99 = wrk_run(ports["http"], args.seconds, args.connections, 0, tmp)
                cpu_us = (cpu_seconds(ports["pids"]) - cpu) / (rps * args.seconds) * 1e6
            key = "hub" if sync else "alone"
            results[f"http_rps_{key}"], results[f"cpu_us_{key}"] = rps, cpu_us
            results[f"http_p50_ms_{key}"], results[f"http_p99_ms_{key}"] = p50, p99
            print(
                f"HTTP, {args.workers} workers, {'with' if sync else 'no'} hub: "
                f"{rps:,.0f} announces/s, {cpu_us:.0f} us of CPU per announce "
                f"(workers{' + sidecar' if sync else ''}), latency p50 {p50:.2f} ms, "
                f"p99 {p99:.2f} ms"
            )

        if "core" in parts:
            sync_alone(ctx, tmp, args, results)
        if "e2e" in parts:
            end_to_end(ctx, tmp, args, results)
    print("SYNC_RESULT " + " ".join(f"{k}={v:.2f}" for k, v in results.items()))
    return 0


def sync_alone(
    ctx: multiprocessing.context.BaseContext,
    tmp: Path,
    args: argparse.Namespace,
    results: dict[str, float],
) -> None:
    """Two publishers through the hub at ``args.rate``, one observer."""
    with tracker(tmp, 0, True, None) as ports:
        lags, counts = watch_while(
            ctx, ports["sock"], args.seconds,
            [(publisher, (ports["sock"], args.rate / 2, args.seconds, tag)) for tag in (1, 2)],
        )  # fmt: skip
    results["core_rate"] = sum(counts) / args.seconds
    print(f"sync alone: 2 publishers, {results['core_rate']:,.0f} announces/s")
    report(results, "core", "publisher -> other process", lags["core"])
    report(results, "refresh", "of refreshes (held back on purpose)", lags["refresh"])


def end_to_end(
    ctx: multiprocessing.context.BaseContext,
    tmp: Path,
    args: argparse.Namespace,
    results: dict[str, float],
) -> None:
    """Half HTTP (paced wrk) into the workers, half UDP into the sidecar, one observer."""
    http_rate = args.rate * args.http_share
    with tracker(tmp, args.workers, True, args.worker_class) as ports:
        # Each connection waits ~delay between requests: connections / delay = rate.
        delay_ms = args.connections * 1000 / http_rate if http_rate else 0
        udp_load = (udp_sender, (ports["udp"], args.rate - http_rate, args.seconds))
        lags, counts = watch_while(
            ctx, ports["sock"], args.seconds, [udp_load],
            lambda: wrk_run(ports["http"], args.seconds, args.connections, delay_ms, tmp),
        )  # fmt: skip
    (got_http, p50, p99), sent_udp = counts[-1], counts[0] / args.seconds
    results["e2e_rate_http"], results["e2e_rate_udp"] = got_http, sent_udp
    results["e2e_http_p50_ms"], results["e2e_http_p99_ms"] = p50, p99
    print(
        f"end to end: {got_http:,.0f} HTTP + {sent_udp:,.0f} UDP announces/s; "
        f"HTTP latency (paced) p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    report(results, "http", "worker -> other process", lags["http"])
    report(results, "udp", "sidecar -> other process", lags["udp"])
    report(results, "refresh", "of refreshes (held back on purpose)", lags["refresh"])


if __name__ == "__main__":
    sys.exit(main())
