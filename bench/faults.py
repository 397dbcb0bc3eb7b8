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
   seconds from connect to a complete replica, and the torrents it holds then;
4. ``serve``: the real thing, ``wsgi-tracker serve --workers W`` (default 1)
   started from the same snapshot: the start (the hub restores, a worker
   joins), then ``kill -9`` of a worker while an HTTP scrape probe runs: the
   seconds until the new worker answers the last torrent the hub walks with its
   full counts, how many answers were 0/0/0 meanwhile, any drop for silence;
   then SIGTERM and the stop's seconds, and whether the final save was logged.
   With one worker every answer after the kill is the new worker's.

Prints one line per figure and a final ``FAULTS_RESULT`` line (key=value).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import bencodepy

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
    p.add_argument("--workers", type=int, default=1, help="serve's workers (the serve part)")
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
    if "serve" in parts:
        with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
            run_serve(Path(tmp), args, result)
    print("FAULTS_RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))


def prepare_snapshot(snap: Path, args: argparse.Namespace) -> None:
    """``snap`` holds ``--torrents`` torrents: a copy of ``--snapshot``, else made here."""
    started = time.monotonic()
    if args.snapshot and Path(args.snapshot).exists():
        shutil.copyfile(args.snapshot, snap)
    else:
        make_snapshot(snap, args.torrents)
        print(f"snapshot of {args.torrents} torrents written in {time.monotonic() - started:.1f} s")
        if args.snapshot:
            shutil.copyfile(snap, args.snapshot)


def run_sidecar(tmp: Path, args: argparse.Namespace, parts: set[str], result: dict) -> None:
    snap = tmp / "swarms.snap"
    prepare_snapshot(snap, args)
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


def expected(n: int) -> tuple[int, int, int]:
    """(complete, downloaded, incomplete) of ``make_snapshot``'s torrent ``n``."""
    return (1, 1 + n % 7, 0) if n % 2 == 0 else (0, 1 + n % 7, 1)


class ScrapeProbe:
    """HTTP scrapes of two of ``make_snapshot``'s torrents, one after another, each on a
    fresh connection (so gunicorn hands it to any worker), in a thread until ``stop``."""

    def __init__(self, port: int, torrents: int) -> None:
        self.port = port
        self.numbers = (0, torrents - 1)  # the first and the last torrent the hub walks
        hashes = b"".join(
            b"&info_hash=" + urllib.parse.quote_from_bytes(n.to_bytes(20, "big")).encode()
            for n in self.numbers
        )
        self.target = "/scrape?" + hashes[1:].decode()
        self.answers: list[tuple[float, float, bool, bool]] = []  # (sent, got, full, empty)
        self.failures: list[tuple[float, str]] = []  # (sent, what)
        self.refusals: list[tuple[float, str]] = []  # (sent, failure reason)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ScrapeProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(90)

    def _run(self) -> None:
        want = {n.to_bytes(20, "big"): expected(n) for n in self.numbers}
        while not self._stop.is_set():
            sent = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                conn.request("GET", self.target)
                reply = bencodepy.decode(conn.getresponse().read())
            except (OSError, bencodepy.BencodeDecodeError, http.client.HTTPException) as exc:
                self.failures.append((sent, f"{exc!r} after {time.monotonic() - sent:.1f} s"))
                time.sleep(0.05)
                continue
            finally:
                conn.close()
            if b"failure reason" in reply:  # still joining past its wait: told to retry
                self.refusals.append((sent, reply[b"failure reason"].decode()))
                continue
            files = reply.get(b"files", {})
            got = {
                ih: tuple(
                    files.get(ih, {}).get(k, 0) for k in (b"complete", b"downloaded", b"incomplete")
                )
                for ih in want
            }
            full = got == want
            empty = any(g == (0, 0, 0) for g in got.values())
            self.answers.append((sent, time.monotonic(), full, empty))
            time.sleep(0.02)

    def first_full_after(self, moment: float, within: float) -> float | None:
        """When the first full answer to a scrape sent after ``moment`` arrived."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for sent, got, full, _ in list(self.answers):
                if sent > moment and full:
                    return got
            time.sleep(0.05)
        return None

    def not_full_after(self, moment: float) -> tuple[int, int]:
        """(answers not full, of them 0/0/0) to scrapes sent after ``moment``."""
        late = [a for a in self.answers if a[0] > moment and not a[2]]
        return len(late), sum(1 for a in late if a[3])


def run_serve(tmp: Path, args: argparse.Namespace, result: dict) -> None:
    """``wsgi-tracker serve`` from a ``--torrents`` snapshot: start, kill -9 a worker, stop."""
    snap = tmp / "swarms.snap"
    prepare_snapshot(snap, args)
    http_port, udp_port = procs.free_port(), procs.free_port()
    conf = tmp / "t.toml"
    sock = tmp / "hub" / "sync.sock"
    conf.write_text(
        f'udp_bind = ["127.0.0.1"]\nsnapshot_path = "{snap}"\nsnapshot_interval = 3600\n'
        f'sync_socket = "{sock}"\n'
    )
    log = tmp / "serve.log"
    cmd = [sys.executable, "-m", "wsgi_tracker.running.cli", "serve", "--config", str(conf)]
    cmd += ["--bind", f"127.0.0.1:{http_port}", "--workers", str(args.workers)]
    cmd += ["--udp-port", str(udp_port)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
    text = lambda: log.read_text(errors="replace")  # noqa: E731
    try:
        with ScrapeProbe(http_port, args.torrents) as probe:
            started = time.monotonic()
            up = probe.first_full_after(started, 300)
            if up is None:
                raise SystemExit(f"serve never answered in full: {text()[-3000:]}")
            result["serve_start_seconds"] = up - started
            print(
                f"serve start (restore {args.torrents} torrents, {args.workers} worker(s) "
                f"join): full answers after {up - started:.1f} s"
            )
            master = next(
                p
                for p in procs.children(proc.pid)
                if b"gunicorn" in Path(f"/proc/{p}/cmdline").read_bytes()
            )
            victim = min(procs.children(master))
            sidecar_cpu = sum(procs.cpu_seconds(p) for p in procs.children(proc.pid) if p != master)
            time.sleep(1.0)
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            full = probe.first_full_after(killed, 120)
            sidecar_cpu = (
                sum(procs.cpu_seconds(p) for p in procs.children(proc.pid) if p != master)
                - sidecar_cpu
            )
            new = [p for p in procs.children(master) if p != victim]
            joiner_cpu = sum(procs.cpu_seconds(p) for p in new)
            time.sleep(1.0)
        partial, empty = probe.not_full_after(killed)
        failed = [what for sent, what in probe.failures if sent > killed]
        refused = [why for sent, why in probe.refusals if sent > killed]
        after = text()[text().find(f"pid {victim}") :]
        silent = after.count("silent for")
        connects = len(re.findall(r"sync hub: worker pid \d+ connected", after))
        result.update(
            rejoin_seconds=(full - killed) if full else float("nan"),
            rejoin_partial_answers=partial,
            rejoin_empty_answers=empty,
            rejoin_silence_drops=silent,
            rejoin_cpu_worker=joiner_cpu,
            rejoin_cpu_sidecar=sidecar_cpu,
        )
        print(
            f"kill -9 of worker {victim}: full answers after "
            f"{result['rejoin_seconds']:.2f} s; {partial} answers not full ({empty} 0/0/0), "
            f"{len(failed)} failed, {len(refused)} told to retry, {silent} drops for silence, "
            f"{connects} connects "
            f"(CPU: new worker {joiner_cpu:.2f} s, sidecar {sidecar_cpu:.2f} s)"
        )
        result["rejoin_failed_requests"] = len(failed)
        result["rejoin_refused_requests"] = len(refused)
        for failure in sorted(set(failed))[:5]:
            print(f"  a scrape failed: {failure}")
        if os.environ.get("BENCH_FAULTS_LOG"):
            print(after[-6000:])
    finally:
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            for pid in procs.descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        stop = time.monotonic() - stopping
        saved = "before exit" in text()
        result.update(serve_stop_seconds=stop, serve_final_save=float(saved))
        print(f"serve stop: {stop:.1f} s (exit {proc.returncode}), final save logged: {saved}")
        for line in text().splitlines()[-40:]:
            if re.search(r"stopp|saved|exited|did not stop", line):
                print("  " + line)


if __name__ == "__main__":
    main()
