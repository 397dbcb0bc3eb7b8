"""WebSocket (WebTorrent) tracker load: announces per second, and memory per held connection.

    python -m bench.ws_load [--connections 32] [--seconds 5] [--held 1500] [--bittorrent-tracker]

*Announces/s*: ``--connections`` sockets, each one peer, announce in a closed
loop (send, wait for the reply, again) for ``--seconds``, spread over 100
torrents, no offers (the relay is an extra send per offer). The client is one
Python process on wsproto and ``selectors``; the figure is the server's only
while the server's CPU is at ~100% (printed beside it).

*Memory per connection*: ``--held`` sockets are opened and each announces
once, then the serving process's RSS is compared with its RSS before them.

Ours is gunicorn with one ``TrackerWorker`` (sync off); ``--bittorrent-tracker``
also runs the npm ``bittorrent-tracker`` server with its WebSocket server on
(bench/bt_ws_server.mjs, the bench kit's npm project).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import selectors
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from bench import loads, procs, trackers
from bench.workload import http_ready

ROOT = Path(__file__).resolve().parent.parent
TORRENTS = 100


def announce(n: int, info_hash: str) -> str:
    peer = f"-WL0001-{n:012d}"
    return json.dumps(
        {
            "action": "announce",
            "info_hash": info_hash,
            "peer_id": peer,
            "left": 1000,
            "numwant": 0,
            "uploaded": 0,
            "downloaded": 0,
        }
    )


class Client:
    """One WebSocket connection announcing one peer.

    The handshake goes through wsproto; after it the client resends one
    pre-encoded (masked) frame and counts reply frames by their length bytes,
    so the load generator costs a fraction of the server it measures.
    """

    def __init__(self, port: int, n: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target="/announce")))
        accepted = False
        while not accepted:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the tracker refused the upgrade")
            ws.receive_data(data)
            accepted = any(isinstance(e, AcceptConnection) for e in ws.events())
        self.frame = ws.send(TextMessage(announce(n, f"{n % TORRENTS:020d}")))
        self.buf = b""
        self.sock.setblocking(False)

    def send(self) -> None:
        self.sock.send(self.frame)

    def replies(self) -> int:
        """Whole server frames (unmasked, so 2 or 4 header bytes here) read so far."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the tracker closed a connection")
        buf = self.buf + data
        count = pos = 0
        while len(buf) - pos >= 2:
            size = buf[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if len(buf) - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            if len(buf) - pos < head + size:
                break
            pos += head + size
            count += 1
        self.buf = buf[pos:]
        return count


def closed_loop(port: int, connections: int, seconds: float) -> float:
    """Announces answered per second by ``connections`` sockets in a closed loop."""
    clients = [Client(port, n) for n in range(connections)]
    sel = selectors.DefaultSelector()
    for c in clients:
        sel.register(c.sock, selectors.EVENT_READ, c)
        c.send()
    done = 0
    start = time.perf_counter()
    end = start + seconds
    while (now := time.perf_counter()) < end:
        for key, _ in sel.select(timeout=1.0):
            client: Client = key.data
            got = client.replies()
            if got:
                done += got
                client.send()
    elapsed = now - start
    for c in clients:
        c.sock.close()
    return done / elapsed


def held_memory(port: int, held: int, rss: Callable[[], int]) -> tuple[float, int]:
    """(bytes per held connection, connections held) after each announced once."""
    before = rss()
    clients = []
    for n in range(held):
        c = Client(port, 10_000 + n)
        c.send()
        clients.append(c)
    deadline = time.monotonic() + 60
    pending = set(range(held))
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            try:
                if clients[i].replies():
                    pending.discard(i)
            except BlockingIOError:
                pass
        time.sleep(0.01)
    time.sleep(1.0)
    after = rss()
    for c in clients:
        c.sock.close()
    return (after - before) * 1024 / held, held - len(pending)


def ours(port: int, outdir: Path, cpus: str | None) -> procs.Server:
    cmd = [
        sys.executable, "-m", "gunicorn", "-c", str(ROOT / "wsgi_tracker/running/gunicorn_conf.py"),
        "-w", "1", "--bind", f"127.0.0.1:{port}", "wsgi_tracker.wsgi:app",
    ]  # fmt: skip
    return procs.start(
        "ours-ws",
        cmd,
        cpus=cpus,
        log=outdir / f"gunicorn-ws-{port}.log",
        ready=lambda: http_ready(port, b"\0" * 20),
        # One client address holds every socket here: lift the per-address cap.
        env={"WSGI_TRACKER_SYNC_SOCKET": "off", "WSGI_TRACKER_HTTP_CONNECTIONS_PER_ADDRESS": "0"},
        cwd=str(ROOT),
        workers=1,
    )


def bittorrent_tracker(port: int, outdir: Path, cpus: str | None) -> procs.Server | None:
    npm = trackers.bittorrent_tracker_dir(loads.CACHE)
    if npm is None:
        return None
    script = npm / "bt_ws_server.mjs"
    script.write_text((ROOT / "bench" / "bt_ws_server.mjs").read_text())
    return procs.start(
        "bittorrent-tracker-ws",
        ["node", str(script), str(port), "127.0.0.1"],
        cpus=cpus,
        log=outdir / f"bittorrent-tracker-ws-{port}.log",
        ready=lambda: http_ready(port, b"\0" * 20),
        cwd=str(npm),
    )


def measure(server: procs.Server, port: int, args: argparse.Namespace) -> dict[str, float]:
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    rate = closed_loop(port, args.connections, args.seconds)
    cpu = (server.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
    per_conn, held = held_memory(port, args.held, server.rss_kb)
    return {
        "announces_per_s": round(rate),
        "server_cpu": round(cpu, 2),
        "bytes_per_connection": round(per_conn),
        "held": held,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_load", description=__doc__)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--held", type=int, default=1500)
    parser.add_argument("--server-cpu", default="0", help="taskset CPUs for the server")
    parser.add_argument("--bittorrent-tracker", action="store_true")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.held + 1000)), hard))
    outdir = loads.CACHE / "ws"
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()} {sys.executable} {platform.python_version()}")
    starts = [("ours", ours)]
    if args.bittorrent_tracker:
        starts.append(("bittorrent-tracker", bittorrent_tracker))
    for name, start in starts:
        port = procs.free_port()
        server = start(port, outdir, args.server_cpu or None)
        if server is None:
            print(f"{name}: skipped (npm or node missing)")
            continue
        try:
            print(name, json.dumps(measure(server, port, args)), flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
