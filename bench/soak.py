"""Soak: mixed valid and invalid HTTP + UDP load for a set time, checking every answer.

    python -m bench.soak --duration 60 [--workers 2] [--clients 2] [--invalid 0.25]

Starts its own tracker (udp-sidecar as the sync hub, with a snapshot file, and
gunicorn joined to it, all in a temporary directory), then runs client threads
until the duration is up. Each client owns its peers and walks each one through
started -> announces -> completed -> seeding -> stopped, over HTTP or UDP at
random, mixing in malformed requests. Every answer is checked:

* a malformed request gets a failure (HTTP: a bencoded ``failure reason`` and
  nothing else; UDP: an error packet with our transaction id, never longer than
  the request) and never peers;
* a valid announce gets no failure, and only peers this soak put in that
  torrent, never the asker itself, at most numwant of them;
* at the end (once sync has settled) every process's scrape must equal the
  soak's own tally exactly: completed counts, seeders and leechers.

It prints requests/s, transport errors, wrong answers and the RSS of every
process over time, and exits 1 if any answer was wrong. Not a test: it runs as
long as it is told to.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import os
import random
import secrets
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes

import bencodepy

from bench import procs

PROTOCOL_ID = 0x41727101980
LOOPBACK = socket.inet_aton("127.0.0.1")
TORRENTS = 40
NUMWANT = 30
SETTLE_SECONDS = 15.0

# (query, start of the failure reason); the announce ones name a real torrent.
BASE = "/announce?info_hash={ih}&peer_id=-SK0001-000000000000"
BAD_HTTP = [
    ("/announce", "missing parameter: info_hash"),
    ("/announce?info_hash=short&peer_id=-SK0001-000000000000&port=1&left=0", "invalid info_hash"),
    ("/announce?info_hash={ih}&peer_id=x&port=1&left=0", "invalid peer_id"),
    (BASE + "&port=0&left=0", "invalid port"),
    (BASE + "&port=1&left=-1", "invalid left"),
    (BASE + "&port=1&left=0&event=go", "invalid event"),
    (BASE + "&port=1&left=0&port=2", "repeated"),
    (BASE + "&port=1&left=0&x=" + "y" * 900, "parameter"),
    ("/announce?" + "a=b&" * 600, "request too long"),
    ("/scrape?info_hash=abc", "invalid info_hash"),
]


def torrent(n: int) -> bytes:
    return f"soak-{n}".encode().ljust(20, b".")


@dataclass
class Peer:
    """One simulated client: its id, port, torrent and where it is in its life."""

    pid: bytes
    port: int
    ih: bytes
    stage: int = 0  # 0 new, 1..3 leeching, 4 completed (seeding), 5..6 seeding, 7 stopped


@dataclass
class Tally:
    """What the soak did, to compare the tracker's counts with at the end (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    completed: Counter = field(default_factory=Counter)
    seeders: dict[bytes, set[bytes]] = field(default_factory=dict)
    leechers: dict[bytes, set[bytes]] = field(default_factory=dict)
    ports: dict[bytes, set[int]] = field(default_factory=dict)  # every port ever in a torrent
    requests: Counter = field(default_factory=Counter)
    transport_errors: int = 0
    wrong: list[str] = field(default_factory=list)

    def wrong_answer(self, what: str) -> None:
        with self.lock:
            if len(self.wrong) < 50:
                self.wrong.append(what)
            else:
                self.wrong[-1] = f"... and more, last: {what}"


# --- one client -----------------------------------------------------------------------------


class Client(threading.Thread):
    def __init__(self, n: int, http_port: int, udp_port: int, tally: Tally, args) -> None:
        super().__init__(daemon=True, name=f"soak-{n}")
        self.n = n
        self.http_port = http_port
        self.udp_addr = ("127.0.0.1", udp_port)
        self.tally = tally
        self.args = args
        self.rng = random.Random(n)
        self.deadline = 0.0
        self.conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)
        self.sock.connect(self.udp_addr)
        self.cid = b""
        self.cid_at = 0.0
        self.made = 0
        self.peers: list[Peer] = []
        # Ports unique among live peers (disjoint per client): "never itself" is checkable.
        self.free_ports = collections.deque(range(10000 + 2000 * n, 12000 + 2000 * n))

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                if self.rng.random() < self.args.invalid:
                    self.bad_http() if self.rng.random() < 0.5 else self.bad_udp()
                else:
                    self.step(self.pick_peer())
            except (OSError, http.client.HTTPException) as exc:
                with self.tally.lock:
                    self.tally.transport_errors += 1
                self.conn.close()
                if self.tally.transport_errors < 5:
                    print(f"transport error: {exc!r}", file=sys.stderr)

    def pick_peer(self) -> Peer:
        if len(self.peers) < 60 or (self.rng.random() < 0.05 and len(self.peers) < 1000):
            self.made += 1
            pid = f"-SK0001-{self.n:02d}{self.made:010d}".encode()
            port = self.free_ports.popleft()
            self.peers.append(Peer(pid, port, torrent(self.rng.randrange(TORRENTS))))
        return self.rng.choice(self.peers)

    # --- valid traffic ---------------------------------------------------------------------

    def step(self, p: Peer) -> None:
        """Move ``p`` one stage on, announcing over HTTP or UDP; check the answer."""
        p.stage += 1
        event = {1: "started", 4: "completed", 7: "stopped"}.get(p.stage, "")
        left = 0 if p.stage >= 4 else 1000
        if event == "started":  # recorded first: a reply may list it to another client
            with self.tally.lock:
                self.tally.ports.setdefault(p.ih, set()).add(p.port)
        use_udp = self.rng.random() < 0.5
        if use_udp:
            ok, peers = self.udp_announce(p, left, event)
        else:
            ok, peers = self.http_announce(p, left, event)
        if not ok:
            p.stage -= 1  # not applied; try again later
            return
        t = self.tally
        with t.lock:
            t.requests["udp" if use_udp else "http"] += 1
            seeders = t.seeders.setdefault(p.ih, set())
            leechers = t.leechers.setdefault(p.ih, set())
            if event == "stopped":
                seeders.discard(p.pid)
                leechers.discard(p.pid)
            elif left == 0:
                leechers.discard(p.pid)
                seeders.add(p.pid)
            else:
                leechers.add(p.pid)
            if event == "completed":
                t.completed[p.ih] += 1
            known = t.ports.get(p.ih, set())
        if event != "stopped":
            strangers = peers - known
            if strangers or p.port in peers or len(peers) > NUMWANT:
                self.tally.wrong_answer(
                    f"{p.pid!r} on {p.ih!r}: peers {sorted(peers)[:10]} "
                    f"(strangers {sorted(strangers)[:5]}, self {p.port in peers})"
                )
        if p.stage >= 7:
            self.peers.remove(p)
            self.free_ports.append(p.port)

    def http_get(self, target: str) -> bytes:
        for attempt in range(2):
            try:
                self.conn.request("GET", target)
                return self.conn.getresponse().read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def http_announce(self, p: Peer, left: int, event: str) -> tuple[bool, set[int]]:
        q = quote_from_bytes
        target = (
            f"/announce?info_hash={q(p.ih, safe='')}&peer_id={q(p.pid, safe='')}"
            f"&port={p.port}&left={left}&numwant={NUMWANT}" + (f"&event={event}" if event else "")
        )
        reply = bencodepy.decode(self.http_get(target))
        if b"failure reason" in reply:
            self.tally.wrong_answer(f"valid HTTP announce refused: {reply[b'failure reason']!r}")
            return False, set()
        return True, ports(reply.get(b"peers", b""))

    def connection_id(self) -> bytes:
        if not self.cid or time.monotonic() - self.cid_at > 60:
            tid = secrets.randbits(32)
            reply = self.udp_ask(struct.pack(">QII", PROTOCOL_ID, 0, tid))
            self.cid, self.cid_at = reply[8:16], time.monotonic()
        return self.cid

    def udp_ask(self, packet: bytes) -> bytes:
        self.sock.send(packet)
        for _ in range(50):  # a late reply to an earlier question is skipped by its tid
            reply = self.sock.recv(4096)
            if reply[4:8] == packet[12:16]:
                return reply
        raise OSError("no UDP reply with our transaction id")

    def udp_announce(self, p: Peer, left: int, event: str) -> tuple[bool, set[int]]:
        code = {"": 0, "completed": 1, "started": 2, "stopped": 3}[event]
        tid = secrets.randbits(32)
        body = struct.pack(">20s20sqqqIIIiH", p.ih, p.pid, 0, left, 0, code, 0, 0, NUMWANT, p.port)
        reply = self.udp_ask(struct.pack(">8sII", self.connection_id(), 1, tid) + body)
        action, _tid = struct.unpack_from(">II", reply)
        if action != 1:
            self.tally.wrong_answer(f"valid UDP announce refused: {reply[8:]!r}")
            return False, set()
        return True, ports(reply[20:])

    # --- invalid traffic -------------------------------------------------------------------

    def bad_http(self) -> None:
        query, reason = self.rng.choice(BAD_HTTP)
        target = query.format(ih=quote_from_bytes(torrent(self.rng.randrange(TORRENTS)), safe=""))
        body = self.http_get(target)
        with self.tally.lock:
            self.tally.requests["http-bad"] += 1
        try:
            reply = bencodepy.decode(body)
        except bencodepy.BencodeDecodeError:
            reply = {}
        if list(reply) != [b"failure reason"] or not reply[b"failure reason"].startswith(
            reason.encode()
        ):
            self.tally.wrong_answer(f"bad HTTP {target[:60]!r} answered {body[:120]!r}")

    def bad_udp(self) -> None:
        tid = secrets.randbits(32)
        ih = torrent(self.rng.randrange(TORRENTS))
        cid = self.connection_id()
        packet = self.rng.choice(
            [
                struct.pack(">8sII", b"\x13" * 8, 1, tid) + ih + bytes(78),  # forged id
                struct.pack(">8sII", cid, 1, tid) + ih,  # announce cut short
                struct.pack(">8sII", cid, 2, tid) + ih[:7],  # partial hash
                struct.pack(">8sII", cid, 9, tid),  # unknown action
                struct.pack(">8sII", cid, 1, tid) + ih + bytes(44) + b"\x00\x00\x00\x07"
                + bytes(14),  # event 7
                struct.pack(">8sII", os.urandom(8), 2, tid) + ih,  # forged id, scrape
            ]
        )  # fmt: skip
        reply = self.udp_ask(packet)
        with self.tally.lock:
            self.tally.requests["udp-bad"] += 1
        action = struct.unpack_from(">I", reply)[0]
        proven = packet[:8] == cid
        if action != 3 or (not proven and len(reply) > len(packet)):
            self.tally.wrong_answer(f"bad UDP packet answered {reply[:40]!r}")
        if self.rng.random() < 0.3:  # and some that must be dropped: not waited for
            self.sock.send(os.urandom(self.rng.randrange(16)))


def ports(compact: bytes) -> set[int]:
    return {
        int.from_bytes(compact[i + 4 : i + 6], "big")
        for i in range(0, len(compact), 6)
        if compact[i : i + 4] == LOOPBACK
    }


# --- the tracker, the run, the report ---------------------------------------------------------


def udp_ready(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(struct.pack(">QII", PROTOCOL_ID, 0, 1), ("127.0.0.1", port))
            return len(s.recv(64)) == 16
        except OSError:
            return False


def http_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def scrape_all(http_port: int, udp_port: int, hashes: list[bytes], tries: int) -> list[dict]:
    """Counts from ``tries`` fresh HTTP connections (several workers) and from the sidecar."""
    answers = []
    q = "&".join("info_hash=" + quote_from_bytes(h, safe="") for h in hashes)
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        try:
            conn.request("GET", "/scrape?" + q)
            files = bencodepy.decode(conn.getresponse().read())[b"files"]
        finally:
            conn.close()
        answers.append(
            {
                h: (files[h][b"complete"], files[h][b"downloaded"], files[h][b"incomplete"])
                for h in hashes
            }
        )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.connect(("127.0.0.1", udp_port))
        s.send(struct.pack(">QII", PROTOCOL_ID, 0, 7))
        cid = s.recv(64)[8:16]
        s.send(struct.pack(">8sII", cid, 2, 8) + b"".join(hashes))
        reply = s.recv(4096)
    answers.append({h: struct.unpack_from(">III", reply, 8 + 12 * i) for i, h in enumerate(hashes)})
    return answers


def rss_line(servers: list[procs.Server]) -> str:
    parts = []
    for server in servers:
        for pid in server.pids:
            parts.append(f"{server.name}[{pid}] {procs.status_kb(pid, 'VmRSS') / 1024:.1f}")
    return "RSS MB " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--clients", type=int, default=2, help="client threads (default 2)")
    parser.add_argument("--invalid", type=float, default=0.25, help="share of malformed requests")
    parser.add_argument("--report-every", type=float, default=10, help="seconds between lines")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        sync = str(Path(tmp) / "hub" / "sync.sock")
        env = {
            "WSGI_TRACKER_SYNC_SOCKET": sync,
            "WSGI_TRACKER_SNAPSHOT_PATH": str(Path(tmp) / "swarms.snap"),
            "WSGI_TRACKER_SNAPSHOT_INTERVAL": "10",
        }
        http_port, udp_port = procs.free_port(), procs.free_port()
        py = sys.executable
        sidecar = procs.start(
            "udp-sidecar",
            [py, "-m", "udp_sidecar", "--udp-bind", "127.0.0.1", "--udp-port", str(udp_port)],
            cpus=None, log=Path(tmp) / "sidecar.log", env=env, ready=lambda: udp_ready(udp_port),
        )  # fmt: skip
        servers = [sidecar]
        try:
            conf = str(Path(__file__).parents[1] / "wsgi_tracker/running/gunicorn_conf.py")
            servers.append(
                procs.start(
                    "worker",
                    [py, "-m", "gunicorn", "-c", conf, "--bind", f"127.0.0.1:{http_port}",
                     "--workers", str(args.workers), "wsgi_tracker.wsgi:app"],
                    cpus=None, log=Path(tmp) / "gunicorn.log", env=env,
                    ready=lambda: http_ready(http_port), workers=args.workers,
                )
            )  # fmt: skip
            return soak(args, servers, http_port, udp_port)
        finally:
            for server in reversed(servers):  # workers first: they flush to the hub
                server.stop()


def soak(args, servers: list[procs.Server], http_port: int, udp_port: int) -> int:
    tally = Tally()
    clients = [Client(n, http_port, udp_port, tally, args) for n in range(args.clients)]
    start = time.monotonic()
    for c in clients:
        c.deadline = start + args.duration
        c.start()
    print(f"soak: {args.duration:.0f} s, {args.workers} workers + udp-sidecar, "
          f"{args.clients} clients, {args.invalid:.0%} malformed")  # fmt: skip
    print(rss_line(servers))
    last, last_count = start, 0
    while any(c.is_alive() for c in clients):
        time.sleep(min(args.report_every, max(0.1, start + args.duration - time.monotonic())))
        now = time.monotonic()
        with tally.lock:
            count = sum(tally.requests.values())
            line = (
                f"{now - start:6.1f} s  {(count - last_count) / (now - last):7.0f} req/s  "
                f"{dict(tally.requests)}  transport errors {tally.transport_errors}  "
                f"wrong {len(tally.wrong)}"
            )
        print(line)
        print("         " + rss_line(servers))
        last, last_count = now, count
    for c in clients:
        c.join()

    hashes = [torrent(n) for n in range(TORRENTS)]
    with tally.lock:
        expect = {
            h: (len(tally.seeders.get(h, ())), tally.completed[h], len(tally.leechers.get(h, ())))
            for h in hashes
        }
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        answers = scrape_all(http_port, udp_port, hashes, tries=3 * args.workers)
        if all(a == expect for a in answers) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for n, answer in enumerate(answers):
        where = "udp-sidecar" if n == len(answers) - 1 else f"HTTP scrape {n}"
        for h in hashes:
            if answer[h] != expect[h]:
                tally.wrong_answer(f"{where}: {h!r} is {answer[h]}, the soak made {expect[h]}")
    total = sum(tally.requests.values())
    print(
        f"done: {total} requests in {args.duration:.0f} s ({total / args.duration:.0f}/s), "
        f"{sum(tally.completed.values())} completions, transport errors "
        f"{tally.transport_errors}, wrong answers {len(tally.wrong)}"
    )
    print("final " + rss_line(servers))
    for what in tally.wrong:
        print("WRONG: " + what)
    return 1 if tally.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
