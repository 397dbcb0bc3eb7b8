"""How to start each tracker the bench compares: ours (HTTP, UDP) and the anchors.

Each function returns a started, ready ``procs.Server`` pinned to ``cpus``;
the caller stops it (``Server.stop``) in a ``finally``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from . import procs
from .workload import Workload, http_ready, udp_ready

ROOT = Path(__file__).resolve().parent.parent


def udp_sidecar_available() -> bool:
    return (ROOT / "udp_sidecar" / "__main__.py").exists()


def sync_available() -> bool:
    return importlib.util.find_spec("wsgi_tracker.sync.client") is not None


def ours_http(
    port: int,
    workload: Workload,
    outdir: Path,
    cpus: str | None,
    *,
    worker_class: str = "gevent",
    workers: int = 1,
    sync_socket: str = "off",
    app: str = "wsgi_tracker.wsgi:app",
    env: dict[str, str] | None = None,
) -> procs.Server:
    """gunicorn serving ``app`` (default the tracker alone), sync off unless a socket is given;
    ``env``: more settings (``WSGI_TRACKER_*``).

    With the project's gunicorn settings (``wsgi-tracker serve`` uses them): its
    ``post_worker_init`` joins the sync hub; the command line picks the worker class.
    """
    cmd = [
        sys.executable, "-m", "gunicorn", "-c", str(ROOT / "wsgi_tracker/running/gunicorn_conf.py"),
        "-k", worker_class, "-w", str(workers), "--bind", f"127.0.0.1:{port}", app,
    ]  # fmt: skip
    first = workload.hashes()[0]
    return procs.start(
        f"ours-http[{worker_class}]",
        cmd,
        cpus=cpus,
        log=outdir / f"gunicorn-{worker_class}-{port}.log",
        ready=lambda: http_ready(port, first),
        env={"WSGI_TRACKER_SYNC_SOCKET": sync_socket, **(env or {})},
        cwd=str(ROOT),
        workers=workers,
    )


def ours_udp(
    port: int, outdir: Path, cpus: str | None, *, sync_socket: str | None = None
) -> procs.Server:
    """udp-sidecar on 127.0.0.1 (IPv4 only: the load generator speaks IPv4)."""
    cmd = [sys.executable, "-m", "udp_sidecar", "--udp-bind", "127.0.0.1", "--udp-port", str(port)]
    if sync_socket:
        cmd += ["--sync-socket", sync_socket]
    return procs.start(
        "ours-udp",
        cmd,
        cpus=cpus,
        log=outdir / f"udp-sidecar-{port}.log",
        ready=lambda: udp_ready(port),
        env={"WSGI_TRACKER_SYNC_SOCKET": sync_socket or "off"},
        cwd=str(ROOT),
    )


def ours_serve(
    http_port: int,
    udp_port: int,
    workload: Workload,
    outdir: Path,
    cpus: str | None,
    *,
    sync_socket: str,
    workers: int = 1,
) -> procs.Server:
    """The whole stack as ``wsgi-tracker serve`` runs it: udp-sidecar (UDP and the sync
    hub) and gunicorn with ``workers`` TrackerWorkers, every setting at its default but
    the addresses and the sync socket (a private one, so a run never joins another hub).

    The measured processes are serve and everything below it (the idle supervisor and
    gunicorn master included), all pinned to ``cpus`` by inheritance.
    """
    cmd = [
        sys.executable, "-m", "wsgi_tracker.running.cli", "serve",
        "--workers", str(workers), "--bind", f"127.0.0.1:{http_port}",
        "--udp-bind", "127.0.0.1", "--udp-port", str(udp_port), "--sync-socket", sync_socket,
    ]  # fmt: skip
    first = workload.hashes()[0]
    return procs.start(
        f"ours-serve[{workers}w]",
        cmd,
        cpus=cpus,
        log=outdir / f"serve-{http_port}.log",
        ready=lambda: http_ready(http_port, first) and udp_ready(udp_port),
        cwd=str(ROOT),
        tree=True,
    )


def serve_parts(server: procs.Server) -> dict[str, list[int]]:
    """name -> pid of what ``ours_serve`` runs: ``sidecar`` and ``worker0``.. (gunicorn's)."""
    out = {}
    for pid in procs.children(server.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"udp_sidecar" in cmdline:
            out["sidecar"] = [pid]
        else:  # gunicorn's master
            out.update({f"worker{n}": [w] for n, w in enumerate(procs.children(pid))})
    return out


def opentracker(port: int, workload: Workload, outdir: Path, cpus: str | None) -> procs.Server:
    """Debian's opentracker serving HTTP and UDP on ``port``, whitelisting the pool.

    Debian's build serves whitelisted hashes only, chroots into ``-d`` (so the
    whitelist path is relative) and drops to ``nobody`` when started as root.
    """
    binary = shutil.which("opentracker")
    if not binary:
        raise RuntimeError("opentracker missing: apt-get install -y opentracker")
    rundir = outdir / f"opentracker-{port}"
    rundir.mkdir(parents=True, exist_ok=True)
    rundir.chmod(0o755)
    shutil.copy(workload.pool, rundir / "whitelist.txt")
    (rundir / "whitelist.txt").chmod(0o644)
    (rundir / "opentracker.conf").write_text(
        f"listen.tcp_udp 127.0.0.1:{port}\naccess.whitelist whitelist.txt\naccess.stats 127.0.0.1\n"
    )
    first = workload.hashes()[0]
    return procs.start(
        "opentracker",
        [binary, "-f", str(rundir / "opentracker.conf"), "-d", str(rundir)],
        cpus=cpus,
        log=outdir / f"opentracker-{port}.log",
        ready=lambda: http_ready(port, first) and udp_ready(port),
    )


BT_KIT = Path("/work/shared/bench-kit")


def bittorrent_tracker_dir(cache: Path) -> Path | None:
    """A private copy of the kit's npm project with its dependencies, or None if npm fails.

    ``--ignore-scripts``: a client-side WebRTC addon fails to build and the server does
    not need it.
    """
    if not shutil.which("node") or not (BT_KIT / "package-lock.json").exists():
        return None
    target = cache / "bittorrent-tracker"
    if not (target / "node_modules" / "bittorrent-tracker").exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json", "bt_server.mjs"):
            shutil.copy(BT_KIT / name, target / name)
        done = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=target,
            capture_output=True,
            timeout=300,
        )
        if done.returncode:
            return None
    return target


def bittorrent_tracker(
    port: int, workload: Workload, outdir: Path, cpus: str | None, npm_dir: Path
) -> procs.Server:
    first = workload.hashes()[0]
    return procs.start(
        "bittorrent-tracker",
        ["node", str(npm_dir / "bt_server.mjs"), str(port), "127.0.0.1"],
        cpus=cpus,
        log=outdir / f"bittorrent-tracker-{port}.log",
        ready=lambda: http_ready(port, first) and udp_ready(port),
        cwd=str(npm_dir),
    )
