"""What faults and durability cost at scale: ``python -m bench.faults``.

Short runs on loopback, each with its own udp-sidecar:

1. ``journal``: the counter journal's cost per completion, in this process
   (one ``Journal.listener`` call, i.e. one ``os.write`` of a 34-byte record),
   and what the once-a-second fsync costs;
2. ``save``: a sidecar restored from a snapshot of ``--torrents`` torrents
   (one peer each; default 1M, the default ``max_torrents``), saving every
   ``--interval`` seconds in a forked child, while a paced BEP 15 sender
   announces at ``--rate``: UDP latency p50 / p99 / max over the run and inside
   the save windows (from the sidecar's own log), and the fork's time;
3. ``join``: against the same sidecar, a fresh process joins the hub as a
   worker does (a real ``TrackerCore`` and ``SyncClient`` under gevent): the
   seconds from connect to a complete replica, and the torrents it holds then.

Prints one line per figure and a final ``FAULTS_RESULT`` line (key=value).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from udp_sidecar.protocol import build_announce_request, build_connect_request

from . import procs

ROOT = Path(__file__).resolve().parent.parent


def journal_cost(n: int = 200_000) -> dict[str, float]:
    from wsgi_tracker.core.swarm import EVENT_COMPLETED, PeerChange
    from wsgi_tracker.sync.journal import Journal

    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "s.snap")
        journal.open(0)
        change = PeerChange(bytes(20), bytes(20), bytes(6), True, EVENT_COMPLETED, time.time())
        started = time.perf_counter()
        for _ in range(n):
            journal.listener(change, True)
        per = (time.perf_counter() - started) / n
        started = time.perf_counter()
        journal.fsync()
        fsync = time.perf_counter() - started
        journal.close()
    return {"journal_us_per_completion": per * 1e6, "journal_fsync_ms": fsync * 1000}


def make_snapshot(path: Path, torrents: int) -> None:
    from wsgi_tracker.core.swarm import EVENT_NONE, PeerChange
    from wsgi_tracker.sync import snapshot

    now = time.time()
    peers = [
        PeerChange(
            n.to_bytes(20, "big"),
            b"-BF0001-" + n.to_bytes(12, "big"),
            bytes([10, n >> 16 & 255, n >> 8 & 255, n & 255, 26, 225]),
            n % 2 == 0,
            EVENT_NONE,
            now,
        )
        for n in range(torrents)
    ]
    downloaded = {n.to_bytes(20, "big"): 1 + n % 7 for n in range(torrents)}
    snapshot.write(path, snapshot.encode(snapshot.Snapshot(now, downloaded, peers)))


def udp_probe(port: int, seconds: float, rate: float) -> list[tuple[float, float]]:
    """(send time, latency) of paced announces, one in flight; a lost one counts 1 s."""
    out: list[tuple[float, float]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.connect(("127.0.0.1", port))
        s.send(build_connect_request(1))
        cid = s.recv(64)[8:16]
        end = time.time() + seconds
        gap = 1.0 / rate
        n = 0
        while time.time() < end:
            n += 1
            tid = secrets.randbits(32)
            ih = (n % 1000).to_bytes(20, "big")
            packet = build_announce_request(
                cid, tid, ih, secrets.token_bytes(20), 6881, left=1, event=0, num_want=10
            )
            sent = time.time()
            s.send(packet)
            try:
                while int.from_bytes(s.recv(2048)[4:8], "big") != tid:
                    pass
                out.append((sent, time.time() - sent))
            except TimeoutError:
                out.append((sent, 1.0))
            time.sleep(max(0.0, sent + gap - time.time()))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


SAVE_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG .*saved in a child process in (\d+) ms"
)


def save_windows(log: str) -> list[tuple[float, float]]:
    windows = []
    for stamp, ms in SAVE_LINE.findall(log):
        end = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1000
        windows.append((end - int(ms) / 1000, end))
    return windows


def join_time(sync_socket: str, timeout: float = 120) -> tuple[float, int, float]:
    """(seconds to a complete replica, torrents in it, the joiner's CPU seconds)."""
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import sys, time\n"
        "from wsgi_tracker.core.tracker import TrackerCore\n"
        "from wsgi_tracker.sync.client import SyncClient\n"
        "core = TrackerCore()\n"
        "client = SyncClient(core, sys.argv[1])\n"
        "c = time.process_time(); t = time.monotonic(); client.start()\n"
        "ok = client.wait_ready(float(sys.argv[2]))\n"
        "print(ok, time.monotonic() - t, len(core.store), time.process_time() - c)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sync_socket, str(timeout)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    if done.stderr.strip():
        print("joining process said:\n" + done.stderr[-3000:])
    out = done.stdout.split()
    return float(out[1]), int(out[2]), float(out[3])


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    p.add_argument("--parts", default="journal,save,join")
    p.add_argument("--torrents", type=int, default=1_000_000)
    p.add_argument("--interval", type=int, default=8, help="seconds between saves")
    p.add_argument("--seconds", type=float, default=25, help="length of the UDP probe")
    p.add_argument("--rate", type=float, default=1000, help="UDP announces/s of the probe")
    p.add_argument(
        "--snapshot",
        metavar="FILE",
        help="start the sidecar from a copy of this snapshot (made there first if missing)",
    )
    args = p.parse_args()
    parts = set(args.parts.split(","))
    result: dict[str, float] = {}
    if "journal" in parts:
        result.update(journal_cost())
        print(
            f"journal: {result['journal_us_per_completion']:.2f} us per completion, "
            f"fsync {result['journal_fsync_ms']:.1f} ms"
        )
    if parts & {"save", "join"}:
        with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
            run_sidecar(Path(tmp), args, parts, result)
    print("FAULTS_RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))


def run_sidecar(tmp: Path, args: argparse.Namespace, parts: set[str], result: dict) -> None:
    snap = tmp / "swarms.snap"
    started = time.monotonic()
    if args.snapshot and Path(args.snapshot).exists():
        shutil.copyfile(args.snapshot, snap)
    else:
        make_snapshot(snap, args.torrents)
        print(f"snapshot of {args.torrents} torrents written in {time.monotonic() - started:.1f} s")
        if args.snapshot:
            shutil.copyfile(snap, args.snapshot)
    sock = str(tmp / "hub" / "sync.sock")
    port = procs.free_port()
    conf = tmp / "t.toml"
    # Without the save part, no periodic save: a child saving 1M torrents takes a core.
    interval = args.interval if "save" in parts else 3600
    conf.write_text(
        f'snapshot_path = "{snap}"\nsnapshot_interval = {interval}\nsync_socket = "{sock}"\n'
    )
    log = tmp / "sidecar.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "udp_sidecar", "--udp-bind", "127.0.0.1", "--udp-port", str(port)]
    cmd += ["--config", str(conf), "--log-level", "debug"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        started = time.monotonic()
        deadline = started + 300
        while "listening on 127.0.0.1" not in log.read_text() and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"udp-sidecar exited: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        print(f"sidecar restored {args.torrents} torrents in {time.monotonic() - started:.1f} s")
        if "join" in parts:
            hub_cpu = procs.cpu_seconds(proc.pid)
            seconds, held, cpu = join_time(sock)
            hub_cpu = procs.cpu_seconds(proc.pid) - hub_cpu
            result.update(
                join_seconds=seconds, join_torrents=held, join_cpu_joiner=cpu, join_cpu_hub=hub_cpu
            )
            print(
                f"join: {seconds:.2f} s to a complete replica of {held} torrents "
                f"(CPU: joiner {cpu:.2f} s, sidecar {hub_cpu:.2f} s)"
            )
        if "save" in parts:
            samples = udp_probe(port, args.seconds, args.rate)
            windows = save_windows(log.read_text())
            inside = [lat for t, lat in samples if any(a <= t <= b for a, b in windows)]
            every = [lat for _, lat in samples]
            result.update(
                udp_p50_ms=pct(every, 0.5) * 1000,
                udp_p99_ms=pct(every, 0.99) * 1000,
                udp_max_ms=max(every) * 1000,
                udp_p99_saving_ms=pct(inside, 0.99) * 1000,
                udp_max_saving_ms=max(inside, default=float("nan")) * 1000,
                saves=len(windows),
                save_ms=sum(b - a for a, b in windows) / max(1, len(windows)) * 1000,
            )
            print(
                f"UDP at {args.rate:.0f}/s over {args.seconds:.0f} s with {len(windows)} saves "
                f"(each {result['save_ms']:.0f} ms in the child): p50 "
                f"{result['udp_p50_ms']:.2f} ms, p99 {result['udp_p99_ms']:.2f} ms, max "
                f"{result['udp_max_ms']:.1f} ms; during saves ({len(inside)} requests) p99 "
                f"{result['udp_p99_saving_ms']:.2f} ms, max {result['udp_max_saving_ms']:.1f} ms"
            )
        rss = procs.status_kb(proc.pid, "VmRSS")
        result["sidecar_rss_mb"] = rss / 1024
    finally:
        proc.terminate()
        started = time.monotonic()
        proc.wait(120)
        stop = time.monotonic() - started
        result["stop_seconds"] = stop
        final = "before exit" in log.read_text()
        print(f"stop: {stop:.1f} s, final save logged: {final}")


if __name__ == "__main__":
    main()
