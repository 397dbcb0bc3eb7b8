"""Processes under test: start pinned, wait until ready, read their CPU and memory, stop.

Every server runs in its own session so stopping it reaches its workers too,
and every wait has a deadline: a benchmark that hangs is worse than one that fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


# Scheduling priority of everything the bench starts (``--nice``; 0 = unchanged).
# On a machine shared with other work, a negative value keeps the pinned server
# and load from sharing their cores with unrelated processes.
NICE = 0


def pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    """``cmd`` under ``taskset -c cpus`` (unpinned when cpus is empty), at priority NICE."""
    out = ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)
    return ["nice", "-n", str(NICE), *out] if NICE else out


def prioritise_session(pid: int | str = "self") -> None:
    """Give ``pid``'s whole session the NICE priority.

    With the kernel's autogroup scheduling (``sched_autogroup_enabled``) CPU is
    first shared fairly between sessions, and a process's nice value only counts
    inside its own session: without this, ``--nice`` changes nothing against
    other users' sessions.
    """
    if NICE:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(NICE))


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (trackers serve both on one port)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both TCP and UDP")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in kB (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine, all cores (from /proc/stat)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's workers)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            kids += [int(x) for x in task.read_text().split()]
    return kids


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (``wsgi-tracker serve``: sidecar, gunicorn, its workers)."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


@dataclass
class Server:
    """A server process started by the bench; ``pids`` are the processes doing the work."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    pids: list[int]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the server's own session, then SIGKILL it if it has not gone in 10 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def rss_kb(self) -> int:
        return sum(status_kb(p, "VmRSS") for p in self.pids)

    def hwm_kb(self) -> int:
        """Peak RSS of the largest working process (one worker's figure, as the issue asks)."""
        return max((status_kb(p, "VmHWM") for p in self.pids), default=0)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)


# The load generators play every client from 127.0.0.1: lift the tracker's per-address caps
# (16 peers of one address per torrent, 100,000 over all), or the runs would measure their
# refusals (the bench workloads hold 100,000 peers; the distinct mix grows past it).
CROWD_BOUND = 100_000_000
# The same bounds for a store made in the bench's own process (``SwarmStore(**STORE_CROWD)``).
STORE_CROWD = {"max_peers_per_address": CROWD_BOUND, "max_peers_per_host": CROWD_BOUND}
LOOPBACK_CROWD = {f"WSGI_TRACKER_{k.upper()}": str(v) for k, v in STORE_CROWD.items()}


def start(
    name: str,
    cmd: Sequence[str],
    *,
    cpus: str | None,
    log: Path,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    workers: int = 0,
    tree: bool = False,
    timeout: float = 30.0,
) -> Server:
    """Start ``cmd`` pinned to ``cpus`` and return once ``ready()`` holds.

    ``workers`` > 0: the work is done by that many children (gunicorn workers),
    which are then the processes measured. ``tree``: the process and all its
    descendants are measured (a supervisor and what it runs, idle ones included).
    """
    out = log.open("wb")
    proc = subprocess.Popen(
        pinned(cmd, cpus),
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **LOOPBACK_CROWD, **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    prioritise_session(proc.pid)
    server = Server(name, proc, log, [proc.pid])
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f}s: {_tail(log)}")
            kids = children(proc.pid) if workers else []
            if len(kids) >= workers and ready():
                if workers:
                    server.pids = kids
                if tree:
                    server.pids = [proc.pid, *descendants(proc.pid)]
                    for pid in server.pids[1:]:  # serve starts each child in a session of its own
                        prioritise_session(pid)
                return server
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-600:]
    except OSError:
        return ""
