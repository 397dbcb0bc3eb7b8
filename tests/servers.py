"""Process fixtures for the integration tests: real gunicorn, real udp-sidecar.

Each server runs as its own child process on a free loopback port, is waited
for with a bounded readiness probe, and is always stopped (SIGTERM, then
SIGKILL) when the ``with`` block ends. A server that fails to start raises
with its captured stderr, so a broken import shows up as the error it is.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO_ROOT / "wsgi_tracker" / "running" / "gunicorn_conf.py"
START_TIMEOUT = 30.0  # generous: CI runners share two busy cores
STOP_TIMEOUT = 10.0
UDP_CONNECT_MAGIC = 0x41727101980


def free_port(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out on loopback (bind port 0, then release it)."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (tests over IPv6 skip where it cannot)."""
    try:
        free_port(socket.AF_INET6)
    except OSError:
        return False
    return True


@dataclass
class Server:
    """A running child server; ``url`` is its HTTP base (no trailing slash)."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stderr_path: Path
    sync_socket: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _child_env(env: Mapping[str, str] | None, config_file: str | None) -> dict[str, str]:
    merged = dict(os.environ)
    merged.setdefault("PYTHONUNBUFFERED", "1")
    merged.update(env or {})
    merged.setdefault("WSGI_TRACKER_SYNC_SOCKET", "off")
    if config_file is not None:
        merged["WSGI_TRACKER_CONFIG"] = str(config_file)
    # The repo root first, so `examples.*` and the working tree's packages import.
    merged["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), merged.get("PYTHONPATH", "")) if p
    )
    return merged


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def _run(
    cmd: list[str], env: dict[str, str], name: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        stderr_path = Path(tmp) / "stderr.log"
        with stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        try:
            yield proc, stderr_path
        finally:
            _stop(proc)


def _wait_ready(
    proc: subprocess.Popen[bytes], stderr_path: Path, name: str, probe: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode} before it was ready:\n"
                + stderr_path.read_text(errors="replace")
            )
        if probe():
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{name} not ready within {START_TIMEOUT:.0f} s:\n"
        + stderr_path.read_text(errors="replace")
    )


def _http_answers(host: str, port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=1)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
        finally:
            conn.close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def gunicorn(
    app: str = "wsgi_tracker.wsgi:app",
    *,
    workers: int = 1,
    worker_class: str = "wsgi_tracker.http.worker.TrackerWorker",
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    bind_host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
) -> Iterator[Server]:
    """A real gunicorn serving ``app`` with the project's gunicorn settings.

    ``config_file`` is the tracker's TOML file (passed as WSGI_TRACKER_CONFIG);
    sync is off unless ``env`` sets WSGI_TRACKER_SYNC_SOCKET.
    """
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    port = free_port(family)
    bind = f"[{bind_host}]:{port}" if family == socket.AF_INET6 else f"{bind_host}:{port}"
    cmd = [
        sys.executable, "-m", "gunicorn",
        "-c", str(GUNICORN_CONF),
        "--worker-class", worker_class,
        "--workers", str(workers),
        "--bind", bind,
        *extra_args,
        app,
    ]  # fmt: skip
    with _run(cmd, _child_env(env, config_file), "gunicorn") as (proc, stderr_path):
        _wait_ready(proc, stderr_path, "gunicorn", lambda: _http_answers(bind_host, port))
        yield Server(proc, bind_host, port, stderr_path)


def udp_connect_packet(transaction_id: int) -> bytes:
    """A BEP 15 connect request."""
    return struct.pack("!QII", UDP_CONNECT_MAGIC, 0, transaction_id)


def _udp_answers(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    tid = secrets.randbits(32)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(udp_connect_packet(tid), (host, port))
            reply = s.recv(2048)
        except OSError:
            return False
    return len(reply) == 16 and struct.unpack("!II", reply[:8]) == (0, tid)


@contextlib.contextmanager
def sidecar(
    *,
    port: int | None = None,
    binds: Sequence[str] = ("127.0.0.1",),
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    sync_socket: str | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Server]:
    """A real ``udp-sidecar`` on ``binds``; ready once a BEP 15 connect is answered."""
    family = socket.AF_INET6 if ":" in binds[0] else socket.AF_INET
    port = port or free_port(family, socket.SOCK_DGRAM)
    cmd = [sys.executable, "-m", "udp_sidecar"]
    for host in binds:
        cmd += ["--udp-bind", host]
    cmd += ["--udp-port", str(port)]
    if sync_socket is not None:
        cmd += ["--sync-socket", sync_socket]
    if config_file is not None:
        cmd += ["--config", str(config_file)]
    cmd += list(extra_args)
    with _run(cmd, _child_env(env, config_file), "udp-sidecar") as (proc, stderr_path):
        _wait_ready(proc, stderr_path, "udp-sidecar", lambda: _udp_answers(binds[0], port))
        yield Server(proc, binds[0], port, stderr_path, sync_socket)


# --- small client helpers ------------------------------------------------------------------


def udp_scrape(
    host: str, port: int, *info_hashes: bytes, timeout: float = 5
) -> list[tuple[int, int, int]]:
    """(seeders, completed, leechers) per hash, by a plain BEP 15 connect + scrape."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        tid = secrets.randbits(32)
        s.send(udp_connect_packet(tid))
        action, got_tid, connection_id = struct.unpack("!IIQ", s.recv(2048)[:16])
        assert (action, got_tid) == (0, tid), "bad connect reply"
        s.send(struct.pack("!QII", connection_id, 2, tid) + b"".join(info_hashes))
        reply = s.recv(2048)
    action, got_tid = struct.unpack("!II", reply[:8])
    if action != 2 or got_tid != tid:
        raise RuntimeError(f"scrape refused: {reply[8:]!r}")
    body = reply[8:]
    return [struct.unpack("!III", body[i : i + 12]) for i in range(0, len(body), 12)]


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body) of one GET; the URL's query is sent exactly as given (raw bytes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn.request("GET", target)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def announce_url(
    base: str,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    left: int,
    **extra: object,
) -> str:
    """``base`` (http://host:port/announce) plus an announce query; raw bytes percent-encoded."""
    params: list[tuple[str, object]] = [
        ("info_hash", info_hash),
        ("peer_id", peer_id),
        ("port", port),
        ("left", left),
        *extra.items(),
    ]
    return base + "?" + _query(params)


def scrape_url(base: str, *info_hashes: bytes) -> str:
    """``base`` (e.g. http://host:port/scrape) asking for each of ``info_hashes``."""
    return base + "?" + _query([("info_hash", ih) for ih in info_hashes])


def _query(params: Sequence[tuple[str, object]]) -> str:
    def enc(value: object) -> str:
        raw = value if isinstance(value, bytes) else str(value).encode()
        return quote_from_bytes(raw, safe="")

    return "&".join(f"{k}={enc(v)}" for k, v in params)
