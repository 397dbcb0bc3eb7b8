"""Process fixtures for the integration tests: real gunicorn, real udp-sidecar.

Each server runs as its own child process on a free loopback port, is waited
for with a bounded readiness probe, and is always stopped (SIGTERM, then
SIGKILL) when the ``with`` block ends. A server that fails to start raises
with its captured stderr, so a broken import shows up as the error it is.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
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
from typing import Any
from urllib.parse import quote_from_bytes, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO_ROOT / "wsgi_tracker" / "running" / "gunicorn_conf.py"
# A start ends when the server answers or its process exits; this bound only catches a
# start that hangs. Generous: a loaded 2-core runner (load ~10) took over 30 s to start
# serve's three processes, and waiting longer costs nothing when the start succeeds.
START_TIMEOUT = 180.0
# The default bound of ``wait_until``: a condition that holds on a quiet machine within
# a second or two, given room for a loaded one.
CONDITION_WITHIN = 60.0
STOP_TIMEOUT = 10.0
UDP_CONNECT_MAGIC = 0x41727101980
# Debian's chromium, headless as root (shared/NOTES.md): without the networking flags it
# tries hosts it cannot reach from here.
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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
    # The tests play whole swarms from 127.0.0.1: lift the per-address cap (16) unless the
    # test sets it; the tests of the cap itself do, from 127.0.0.2 and 127.0.0.3.
    merged.setdefault("WSGI_TRACKER_MAX_PEERS_PER_ADDRESS", "1000000")
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
    """Until ``probe()`` holds; raises at once if the process exits first, and only after
    ``START_TIMEOUT`` if it neither answers nor exits (a hung start)."""
    began = time.monotonic()
    while time.monotonic() - began < START_TIMEOUT:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode} before it was ready:\n"
                + stderr_path.read_text(errors="replace")
            )
        if probe():
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{name} neither answered nor exited within {START_TIMEOUT:.0f} s (hung):\n"
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
    conf: Path | None = GUNICORN_CONF,
) -> Iterator[Server]:
    """A real gunicorn serving ``app`` with the project's gunicorn settings.

    ``config_file`` is the tracker's TOML file (passed as WSGI_TRACKER_CONFIG);
    sync is off unless ``env`` sets WSGI_TRACKER_SYNC_SOCKET. ``conf=None`` runs
    gunicorn without the project's config (no hub hooks), as a user might.
    """
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    port = free_port(family)
    bind = f"[{bind_host}]:{port}" if family == socket.AF_INET6 else f"{bind_host}:{port}"
    cmd = [
        sys.executable, "-m", "gunicorn",
        *(["-c", str(conf)] if conf is not None else []),
        "--worker-class", worker_class,
        "--workers", str(workers),
        "--bind", bind,
        *extra_args,
        app,
    ]  # fmt: skip
    with _run(cmd, _child_env(env, config_file), "gunicorn") as (proc, stderr_path):
        _wait_ready(proc, stderr_path, "gunicorn", lambda: _http_answers(bind_host, port))
        yield Server(proc, bind_host, port, stderr_path)


@contextlib.contextmanager
def dev_server(
    cmd: Sequence[str], port: int, *, env: Mapping[str, str] | None = None, name: str = "dev"
) -> Iterator[Server]:
    """A framework's development server (``flask run``, ``manage.py runserver``) on ``port``.

    ``cmd`` must make it listen on 127.0.0.1:``port`` without its reloader, so the
    pid stopped is the one serving.
    """
    with _run([sys.executable, *cmd], _child_env(env, None), name) as (proc, stderr_path):
        _wait_ready(proc, stderr_path, name, lambda: _http_answers("127.0.0.1", port))
        yield Server(proc, "127.0.0.1", port, stderr_path)


def flask_run(
    app: str, *, env: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[Server]:
    """A real ``flask --app APP run`` (werkzeug's development server, no reloader)."""
    port = free_port()
    cmd = ["-m", "flask", "--app", app, "run", "--host", "127.0.0.1", "--port", str(port)]
    return dev_server([*cmd, "--no-reload"], port, env=env, name="flask-run")


def django_runserver(
    manage: Path, *, env: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[Server]:
    """A real ``manage.py runserver`` (Django's development server, no autoreloader)."""
    port = free_port()
    cmd = [str(manage), "runserver", "--noreload", f"127.0.0.1:{port}"]
    return dev_server(cmd, port, env=env, name="runserver")


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


@dataclass
class Serve:
    """A running ``wsgi-tracker serve``: HTTP on ``http.port``, UDP on ``udp_port``."""

    proc: subprocess.Popen[bytes]
    http: Server
    udp: Server
    log_path: Path
    tag: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sidecar_pid(self) -> int | None:
        return next(
            (p for p in children(self.proc.pid) if b"-m\0udp_sidecar\0" in cmdline(p)), None
        )

    def master_pid(self) -> int | None:
        return next((p for p in children(self.proc.pid) if b"-m\0gunicorn\0" in cmdline(p)), None)

    def worker_pids(self) -> set[int]:
        master = self.master_pid()
        return set(children(master)) if master else set()

    def kill_everything(self) -> None:
        """SIGKILL every process of this stack at once, children first (a power cut)."""
        for pid in [*tagged(self.tag), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (zombies included)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry))
    return kids


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def tagged(tag: str) -> list[int]:
    """Live processes whose environment holds ``tag`` (NAME=VALUE)."""
    needle = tag.encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/environ").read_bytes() and alive(int(entry)):
                    found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate: Callable[[], object], within: float = CONDITION_WITHIN) -> bool:
    """Poll ``predicate`` (bounded) until it is true; returns whether it became so."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@contextlib.contextmanager
def serve(
    tmp: Path,
    *,
    workers: int = 2,
    config: str = "",
    http_port: int | None = None,
    udp_port: int | None = None,
    env: Mapping[str, str] | None = None,
    app: str | None = None,
    default_socket: bool = False,
) -> Iterator[Serve]:
    """The whole stack as an operator runs it: ``wsgi-tracker serve`` with sync on.

    ``config`` is appended to a TOML file that binds UDP to loopback and puts
    the sync socket in ``tmp`` (``default_socket``: where the tracker puts it by
    default, which ``env`` decides); ``app`` is serve's ``--app`` (default: the
    tracker alone). Ready once HTTP and UDP answer and every worker joined the
    hub. On exit: SIGTERM to serve, and every process it started is killed by
    pid if it outlives the stop.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "tracker.toml"
    sock = "" if default_socket else f'sync_socket = "{tmp / "hub" / "sync.sock"}"\n'
    conf.write_text(f'udp_bind = ["127.0.0.1"]\n{sock}{config}')
    http_port = http_port or free_port()
    udp_port = udp_port or free_port(socket.AF_INET, socket.SOCK_DGRAM)
    cmd = [
        sys.executable, "-m", "wsgi_tracker.running.cli", "serve", "--config", str(conf),
        "--bind", f"127.0.0.1:{http_port}", "--workers", str(workers),
        "--udp-port", str(udp_port), *(["--app", app] if app else []),
    ]  # fmt: skip
    log = tmp / f"serve-{http_port}.log"
    # Every process serve starts inherits the tag, so the test finds (and stops) them
    # by pid even after serve itself died and they were re-parented.
    tag_value = secrets.token_hex(8)
    tag = f"TRACKER_TEST_RUN={tag_value}"
    child_env = _child_env({**(env or {}), "TRACKER_TEST_RUN": tag_value}, None)
    child_env.pop("WSGI_TRACKER_SYNC_SOCKET")  # serve names it from the config file
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=child_env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    started = Serve(
        proc,
        Server(proc, "127.0.0.1", http_port, log),
        Server(proc, "127.0.0.1", udp_port, log),
        log,
        tag,
    )
    try:
        _wait_ready(
            proc,
            log,
            "wsgi-tracker serve",
            lambda: (
                _http_answers("127.0.0.1", http_port)
                and _udp_answers("127.0.0.1", udp_port)
                and len(re.findall(r"sync hub: worker pid \d+ connected", started.log())) >= workers
            ),
        )
        yield started
    finally:
        _stop(proc)
        # Whatever outlived serve (a test that killed serve -9, a failure midway).
        wait_until(lambda: not tagged(tag), STOP_TIMEOUT * 3)
        for pid in tagged(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- small client helpers ------------------------------------------------------------------


def read_to_close(sock: socket.socket, reads: int = 10_000) -> bytes:
    """Everything the server sends until it closes (or resets) the connection, in at
    most ``reads`` reads; the socket's own timeout bounds each."""
    chunks = []
    for _ in range(reads):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def short_tempdir(prefix: str) -> str:
    """A 0700 directory with a short path, for Unix sockets (at most 107 bytes).

    pytest's ``tmp_path`` is too deep for a socket path under long test names,
    so this is a plain ``mkdtemp``; it is removed when the test run ends, or
    every run would leave its sockets' directories in /tmp.
    """
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


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


def udp_announce(
    host: str, port: int, info_hash: bytes, peer_id: bytes, peer_port: int, left: int, event: int
) -> bytes:
    """One BEP 15 connect + announce (event: 0 none, 1 completed, 2 started, 3 stopped);
    returns the announce reply, raising if it is not one."""
    from udp_sidecar.protocol import build_announce_request, build_connect_request

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.connect((host, port))
        tid = secrets.randbits(32)
        s.send(build_connect_request(tid))
        cid = s.recv(64)[8:16]
        s.send(
            build_announce_request(
                cid, tid, info_hash, peer_id, peer_port, left=left, event=event, num_want=200
            )
        )
        reply = s.recv(2048)
    if struct.unpack_from(">II", reply) != (1, tid):
        raise RuntimeError(f"announce refused: {reply!r}")
    return reply


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


def ports(compact: bytes) -> set[int]:
    """The ports of the 127.0.0.1 peers in a compact IPv4 peer list."""
    return {
        int.from_bytes(compact[i + 4 : i + 6], "big")
        for i in range(0, len(compact), 6)
        if compact[i : i + 4] == socket.inet_aton("127.0.0.1")
    }


# --- a machine that dies, and redis-server ----------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children before their own children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def kill_all(pid: int) -> None:
    """SIGKILL ``pid`` and every process under it, as a machine that dies would."""
    pids = [pid, *descendants(pid)]
    for victim in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


class RedisServer:
    """Debian's redis-server as a test's own process: loopback, a temp dir, no persistence.

    ``stop`` and ``start`` again keep the port, so clients configured with ``url``
    reconnect to the new server (which starts empty: a Redis that lost its data).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / "redis.log"
        cmd = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _wait_ready(self.proc, log_path, "redis-server", self.answers)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- WebSocket (WebTorrent) clients, speaking the browser protocol over websocket-client -------

WS_WITHIN = 15.0  # seconds: a bound on every wait, not a figure under test
WS_IH = "w" * 20


def ws_connect(server: Server, path: str = "/announce") -> Any:
    import websocket  # the test extra's websocket-client; only these tests need it

    return websocket.create_connection(f"ws://127.0.0.1:{server.port}{path}", timeout=WS_WITHIN)


def ws_holder(server: Server, ws: Any, workers: set[int]) -> int:
    """The worker whose fd is the server end of ``ws``'s TCP connection (from /proc)."""
    want = f"0100007F:{ws.sock.getsockname()[1]:04X}"
    deadline = time.monotonic() + WS_WITHIN
    while time.monotonic() < deadline:
        sockets = {
            f"socket:[{fields[9]}]"
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if (fields := line.split())[2] == want and fields[1].endswith(f":{server.port:04X}")
        }
        for worker in workers:
            for fd in os.listdir(f"/proc/{worker}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{worker}/fd/{fd}") in sockets:
                        return worker
        time.sleep(0.05)
    raise AssertionError(f"no worker holds the server end of {want}")


def ws_connect_in(server: Server, worker: int, workers: set[int]) -> Any:
    """A connection held by ``worker``: the other workers are stopped (SIGSTOP) while it
    is made, so ``worker`` is the only one that can accept it. Connecting until the
    right worker happened to accept missed 40 times in a row on a 6.18 kernel, where one
    worker's accept won every race."""
    others = [w for w in workers if w != worker]
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        ws = ws_connect(server)
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)
    held = ws_holder(server, ws, workers)
    assert held == worker, f"worker {held} holds a connection made while only {worker} ran"
    return ws


def ws_send(ws: Any, **msg: object) -> None:
    ws.send(json.dumps(msg))


def ws_recv(ws: Any) -> dict:
    return json.loads(ws.recv())


def ws_announce(ws: Any, peer: str, ih: str = WS_IH, **extra: object) -> dict:
    fields = {"left": 100, "event": "started", **extra}
    ws_send(ws, action="announce", info_hash=ih, peer_id=peer, **fields)
    reply = ws_recv(ws)
    assert reply["action"] == "announce" and reply["info_hash"] == ih, reply
    return reply


def ws_offer(n: int) -> dict:
    return {"offer_id": f"offer-{n:014d}", "offer": {"type": "offer", "sdp": f"v=0 sdp {n}"}}


def ws_answer(ws: Any, me: str, got: dict, ih: str = WS_IH) -> None:
    """Answer the relayed offer ``got`` as peer ``me``."""
    ws_send(
        ws,
        action="announce",
        info_hash=ih,
        peer_id=me,
        to_peer_id=got["peer_id"],
        offer_id=got["offer_id"],
        answer={"type": "answer", "sdp": f"answer from {me}"},
    )


def ws_scrape(ws: Any, ih: str) -> dict:
    ws_send(ws, action="scrape", info_hash=ih)
    return ws_recv(ws)["files"][ih]


def ws_eventually_scrape(ws: Any, ih: str, want: dict, within: float = WS_WITHIN) -> dict:
    """Scrape until the counts are ``want`` (bounded); the last counts seen."""
    deadline = time.monotonic() + within
    got = ws_scrape(ws, ih)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = ws_scrape(ws, ih)
    return got


def ws_closed_with(ws: Any) -> tuple[int, str]:
    """The close frame the server sent: (code, reason)."""
    import websocket

    deadline = time.monotonic() + WS_WITHIN
    while time.monotonic() < deadline:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack(">H", data[:2])[0], data[2:].decode()
    raise AssertionError("no close frame")
