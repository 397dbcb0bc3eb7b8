"""The load generators: wrk with announce.lua (HTTP announces) or page.lua (a host site's
page), and udp_load (BEP 15, C, built here).

Each run is bounded by its own duration plus a margin, and returns the
generator's ``KEY=value`` result line as a dict of numbers.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import pinned
from .workload import Workload

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wsgi-tracker-bench"


@dataclass
class LoadRun:
    """One generator run: its result line and the CPU it used itself."""

    result: dict[str, float]
    cpu_seconds: float
    wall_seconds: float
    output: str

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


def udp_load_binary() -> Path:
    """Compile udp_load.c with gcc into the cache (again only when the source is newer)."""
    source, binary = HERE / "udp_load.c", CACHE / "udp_load"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        if not shutil.which("gcc"):
            raise RuntimeError(
                "gcc missing: apt-get install -y gcc (builds the UDP load generator)"
            )
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def parse_fields(line: str) -> dict[str, float]:
    """The numbers of a ``TAG key=value ...`` result line."""
    out = {}
    for item in line.split()[1:]:
        key, _, value = item.partition("=")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def _parse(output: str, tag: str) -> dict[str, float]:
    for line in reversed(output.splitlines()):
        if line.startswith(tag + " "):
            return parse_fields(line)
    raise RuntimeError(f"no {tag} line in the generator's output:\n{output[-800:]}")


def _run(
    cmd: list[str], env: dict[str, str], limit: float, tag: str, until: str | None = None
) -> LoadRun:
    """Run a generator to its end (killed after ``limit`` s).

    ``until``: a line the generator prints when its work is done; it is then
    interrupted with SIGINT, on which wrk stops and still prints its results.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if until and line.startswith(until):
                proc.send_signal(signal.SIGINT)
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = "".join(lines)
    return LoadRun(_parse(output, tag), cpu, wall, output)


def wrk(
    port: int,
    workload: Workload,
    seconds: float,
    *,
    cpus: str | None,
    conns: int = 50,
    threads: int = 1,
    close: bool = False,
    prefill: bool = False,
    numwant: int = 50,
    new_peers: bool = False,
) -> LoadRun:
    """wrk + announce.lua for ``seconds`` (prefill: until every pair announced, at most that;
    ``new_peers``: every announce from a peer new to the tracker instead of a known one's
    re-announce)."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk missing: apt-get install -y wrk")
    env = {
        **workload.env(),
        "NUMWANT": str(numwant),
        "CLOSE": "1" if close else "0",
        "PREFILL": "1" if prefill else "0",
        "NEW_PEERS": "1" if new_peers else "0",
    }
    cmd = pinned(
        [
            "wrk", f"-t{1 if prefill else threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s",
            "--timeout", "5s", "-s", str(HERE / "announce.lua"), f"http://127.0.0.1:{port}/",
        ],
        cpus,
    )  # fmt: skip
    return _run(cmd, env, seconds + 30, "WRK_RESULT", until="PREFILL_DONE" if prefill else None)


def wrk_page(port: int, path: str, seconds: float, *, cpus: str | None, conns: int = 4) -> LoadRun:
    """wrk + page.lua: ``conns`` visitors asking for the host site's ``path`` back to back
    for ``seconds`` (a few, so the figure is a page's latency, not a queue of them)."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk missing: apt-get install -y wrk")
    cmd = pinned(
        [
            "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
            "-s", str(HERE / "page.lua"), f"http://127.0.0.1:{port}/",
        ],
        cpus,
    )  # fmt: skip
    return _run(cmd, {"PAGE": path}, seconds + 30, "WRK_RESULT")


def udp_load(
    port: int,
    workload: Workload,
    seconds: float,
    *,
    cpus: str | None,
    mode: str = "announce",
    inflight: int = 64,
    socks: int = 8,
    scrape_hashes: int = 1,
    prefill: bool = False,
    numwant: int = 50,
    rate: float = 0,
    stable_keys: bool = False,
) -> LoadRun:
    """udp_load for ``seconds`` (prefill: every (client, torrent) pair once, in order).

    ``rate`` > 0 paces the requests (open loop) instead of keeping the window full.
    ``stable_keys``: every run sends the same key per client (udp_load ``-K``), so a
    run after a pre-fill re-announces as real clients do (pure refreshes); without it
    each run draws new keys and every announce is a change other processes must see.
    """
    cmd = [
        str(udp_load_binary()), "-H", "127.0.0.1", "-p", str(port), "-f", str(workload.pool),
        "-n", str(workload.clients), "-g", str(workload.tpc), "-w", str(inflight),
        "-P", str(socks), "-t", str(seconds), "-m", mode, "-s", str(scrape_hashes),
        "-N", str(numwant), "-R", str(rate),
    ]  # fmt: skip
    if prefill:
        cmd += ["-q", "-x", str(workload.peers)]
    if stable_keys:
        cmd.append("-K")
    return _run(pinned(cmd, cpus), {}, seconds + 30, "UDP_RESULT")
