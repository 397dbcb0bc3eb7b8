"""udp-sidecar with several UDP processes on one port (``udp_processes``, SO_REUSEPORT).

Real processes throughout: ``udp-sidecar --udp-processes 2`` (the hub's
process and one more, a sync client of it), and ``wsgi-tracker serve`` with
two workers on top. The kernel spreads datagrams over the processes by a hash
of the source address and port, so the tests send from many sockets (ports)
at once, and tell which process answered from the per-process counters every
process publishes through the hub (the STATS payload, read here as a sync
tool reads it). Waits poll with a bound and check the state reached, never
how fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bencodepy
import pytest
import servers
from servers import Server, alive, children, http_get, serve, sidecar, wait_until

from udp_sidecar.protocol import build_announce_request, build_connect_request
from udp_sidecar.steering import owner
from wsgi_tracker.sync import frames

pytestmark = pytest.mark.integration

SENDERS = 48  # source ports: all on one process has odds 2**-47
WITHIN = 20.0  # a bound on every wait, not a figure under test
HOST = "127.0.0.1"


def ih(tag: str) -> bytes:
    return tag.encode().ljust(20, b".")


def owned(tag: str, index: int, processes: int = 2) -> bytes:
    """A torrent whose announces go to the ``index``-th process (the hub's is 0): with
    ``udp_steering`` (the default) a torrent's announces all reach one process."""
    torrent = (index.to_bytes(4, "big") + tag.encode()).ljust(20, b".")
    assert owner(torrent, processes) == index
    return torrent


def both(tag: str) -> list[bytes]:
    """A torrent of each of the two processes."""
    return [owned(tag, 0), owned(tag, 1)]


def peer_id(n: int) -> bytes:
    return f"-UP0001-{n:012d}".encode()


class Senders:
    """``count`` UDP sockets on distinct source ports of one address, each connected."""

    def __init__(self, port: int, count: int = SENDERS, host: str = HOST) -> None:
        self.port = port
        self.socks = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            s.connect((host, port))
            s.settimeout(0.5)
            self.socks.append(s)
        self.ids = [self.connect(s) for s in self.socks]

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def exchange(self, sock: socket.socket, packet: bytes, tid: int) -> bytes:
        """Send until the reply for ``tid`` comes (bounded): a datagram queued on a process
        that was just killed is lost, and a BEP 15 client would retry the same way."""
        deadline = time.monotonic() + WITHIN
        while time.monotonic() < deadline:
            sock.send(packet)
            with contextlib.suppress(TimeoutError):
                while True:
                    reply = sock.recv(2048)
                    if len(reply) >= 8 and struct.unpack_from(">I", reply, 4)[0] == tid:
                        return reply
        raise AssertionError(f"no reply for transaction {tid} within {WITHIN} s")

    def connect(self, sock: socket.socket) -> bytes:
        tid = secrets.randbits(32)
        reply = self.exchange(sock, build_connect_request(tid), tid)
        assert struct.unpack_from(">I", reply)[0] == 0, reply
        return reply[8:16]

    def announce(self, n: int, info_hash: bytes, *, cid: bytes | None = None, **kw: int) -> bytes:
        """Peer ``n`` announces from socket ``n`` (with socket n's id unless ``cid``)."""
        sock = self.socks[n]
        tid = secrets.randbits(32)
        packet = build_announce_request(
            self.ids[n] if cid is None else cid,
            tid,
            info_hash,
            peer_id(n),
            20000 + n,
            num_want=200,
            **kw,
        )
        return self.exchange(sock, packet, tid)

    def scrape(self, n: int, info_hash: bytes) -> tuple[int, int, int]:
        tid = secrets.randbits(32)
        packet = struct.pack(">8sII", self.ids[n], 2, tid) + info_hash
        reply = self.exchange(self.socks[n], packet, tid)
        assert struct.unpack_from(">I", reply)[0] == 2, reply
        return struct.unpack_from(">III", reply, 8)


def peer_ports(reply: bytes) -> set[int]:
    """The ports of an IPv4 announce reply's peer list."""
    assert struct.unpack_from(">I", reply)[0] == 1, reply
    return servers.ports(reply[20:])


def udp_reports(path: str, done: Callable[[dict[str, dict]], bool]) -> dict[str, dict]:
    """The per-process reports the hub hands out (id "udp:<pid>" -> report), read as a
    sync tool reads them, until ``done`` holds or the bound passes (then the last seen)."""
    reports: dict[str, dict] = {}
    deadline = time.monotonic() + WITHIN
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(
            frames.encode(frames.Hello(frames.ROLE_TOOL, os.getpid()))
            + frames.encode(frames.SnapshotDone())
        )
        s.settimeout(0.5)
        decoder = frames.FrameDecoder()
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                data = s.recv(1 << 16)
                if not data:
                    break
                for frame in decoder.feed(data):
                    if isinstance(frame, frames.Stats):
                        reports = {
                            r["id"]: r for r in map(json.loads, (e.payload for e in frame.entries))
                        }
                        if done(reports):
                            return reports
    return reports


def udp_pids(reports: dict[str, dict]) -> set[int]:
    """The pids of the UDP processes among ``reports`` that answered announces."""
    return {
        int(rid.partition(":")[2])
        for rid, r in reports.items()
        if rid.startswith("udp:") and r["announces"]["udp"] > 0
    }


def others(hub: Server) -> list[int]:
    """The hub process's UDP children (live ones)."""
    return [p for p in children(hub.proc.pid) if alive(p) and b"udp_sidecar" in servers.cmdline(p)]


@contextlib.contextmanager
def two_processes(
    tmp_path: Path, extra: tuple[str, ...] = (), binds: tuple[str, ...] = (HOST,)
) -> Iterator[Server]:
    sock = servers.short_tempdir("udpp-") + "/sync.sock"
    args = ["--udp-processes", "2", *extra]
    with sidecar(sync_socket=sock, binds=binds, extra_args=args) as hub:
        assert wait_until(lambda: len(others(hub)) == 1, WITHIN), hub.stderr()
        assert wait_until(lambda: "UDP process serving" in hub.stderr(), WITHIN), hub.stderr()
        yield hub


def test_both_processes_answer_and_hand_out_each_others_peers(tmp_path: Path) -> None:
    with two_processes(tmp_path) as hub:
        senders = Senders(hub.port)
        try:
            torrents = both("shared")
            for torrent in torrents:
                for n in range(SENDERS):
                    senders.announce(n, torrent, left=1000, event=2)
            everyone = {20000 + n for n in range(SENDERS)}

            def all_see_all() -> bool:
                return all(
                    peer_ports(senders.announce(n, torrent, left=1000)) == everyone - {20000 + n}
                    and senders.scrape(n, torrent) == (0, 0, SENDERS)  # any process
                    for torrent in torrents
                    for n in range(SENDERS)
                )

            # Every sender, whichever process the kernel gave it, gets every other peer:
            # what one process was told, the other hands out.
            assert wait_until(all_see_all, WITHIN)
            child = others(hub)[0]
            reports = udp_reports(hub.sync_socket, lambda r: len(udp_pids(r)) == 2)
            assert udp_pids(reports) == {hub.proc.pid, child}, reports
            # One key for every process: an id from any socket works on every other one,
            # so some of these cross from one process to the other.
            for n in range(SENDERS):
                cid = senders.ids[(n + 1) % SENDERS]
                reply = senders.announce(n, torrents[n % 2], cid=cid, left=1000)
                assert struct.unpack_from(">I", reply)[0] == 1, reply
        finally:
            senders.close()


def test_a_killed_udp_process_is_restarted_and_the_counts_stay(tmp_path: Path) -> None:
    with two_processes(tmp_path) as hub:
        senders = Senders(hub.port)
        try:
            torrent = ih("killed")
            for n in range(SENDERS):
                senders.announce(n, torrent, left=0, event=1)  # a completion each
            assert wait_until(
                lambda: all(senders.scrape(n, torrent)[1] == SENDERS for n in range(SENDERS)),
                WITHIN,
            )
            (victim,) = others(hub)
            os.kill(victim, signal.SIGKILL)
            assert wait_until(lambda: others(hub) and others(hub) != [victim], WITHIN)
            assert wait_until(lambda: "restarted (pid" in hub.stderr(), WITHIN)
            assert re.search(
                rf"udp process 1 \(pid {victim}\) killed by SIGKILL; restarting", hub.stderr()
            )
            (new,) = others(hub)
            # Binds once it holds the hub's snapshot; until then the hub's process serves alone.
            assert wait_until(lambda: hub.stderr().count("UDP process serving") == 2, WITHIN)
            # Service goes on from every socket (whichever process has it now) and the
            # restarted process has the hub's counts.
            assert wait_until(
                lambda: all(
                    senders.scrape(n, torrent) == (SENDERS, SENDERS, 0) for n in range(SENDERS)
                ),
                WITHIN,
            )
            for torrent in both("after"):
                for n in range(SENDERS):
                    senders.announce(n, torrent, left=5, event=2)
            reports = udp_reports(hub.sync_socket, lambda r: udp_pids(r) == {hub.proc.pid, new})
            assert udp_pids(reports) == {hub.proc.pid, new}, reports
        finally:
            senders.close()


def test_sigterm_flushes_every_process_before_the_hub_saves(tmp_path: Path) -> None:
    snap = str(tmp_path / "swarms.snap")
    args = ("--snapshot-path", snap, "--snapshot-interval", "3600")
    with two_processes(tmp_path, args) as hub:
        senders = Senders(hub.port)
        try:
            for n in range(SENDERS):
                senders.announce(n, ih("saved"), left=0, event=1)
        finally:
            senders.close()
        child = others(hub)[0]
        hub.proc.send_signal(signal.SIGTERM)
        assert hub.proc.wait(WITHIN) == 0, hub.stderr()
        assert not alive(child)
    # At once after the last reply, no wait for sync: the stop itself must flush.
    with sidecar(extra_args=["--snapshot-path", snap]) as again:
        assert servers.udp_scrape(HOST, again.port, ih("saved"))[0][1] == SENDERS


def test_under_serve_http_workers_hand_out_what_both_udp_processes_were_told(
    tmp_path: Path,
) -> None:
    config = 'udp_processes = 2\nstats_path = "/stats"\n'
    with serve(tmp_path, workers=2, config=config) as stack:
        hub = stack.sidecar_pid()
        assert hub is not None
        assert wait_until(lambda: "UDP process serving" in stack.log(), WITHIN), stack.log()
        senders = Senders(stack.udp.port)
        try:
            torrents = both("served")
            for torrent in torrents:
                for n in range(SENDERS):
                    senders.announce(n, torrent, left=1000, event=2)
            everyone = {20000 + n for n in range(SENDERS)}

            def http_sees_all() -> bool:
                for torrent in torrents:
                    url = servers.announce_url(
                        stack.http.url + "/announce",
                        torrent,
                        b"-HT0001-000000000001",
                        7000,
                        1000,
                        numwant=200,
                    )
                    status, body = http_get(url)
                    peers = servers.ports(bencodepy.decode(body)[b"peers"])
                    if status != 200 or not peers >= everyone:
                        return False
                return True

            assert wait_until(http_sees_all, WITHIN)

            def two_udp_answered() -> bool:
                status, body = http_get(stack.http.url + "/stats")
                by = json.loads(body)["by_process"]
                udp = [
                    i for i, totals in by.items() if i.startswith("udp:") and totals["announces"]
                ]
                return status == 200 and len(udp) == 2

            assert wait_until(two_udp_answered, WITHIN)
        finally:
            senders.close()


def test_a_second_sidecar_on_the_same_port_is_refused(tmp_path: Path) -> None:
    with two_processes(tmp_path) as hub:
        sock = servers.short_tempdir("udpp-") + "/sync.sock"
        env = servers._child_env({}, None)
        done = subprocess.run(
            [sys.executable, "-m", "udp_sidecar", "--udp-bind", HOST, "--udp-port", str(hub.port),
             "--sync-socket", sock, "--udp-processes", "2"],
            env=env, capture_output=True, text=True, timeout=WITHIN, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"cannot bind {HOST}:{hub.port}: address already in use" in done.stderr


def test_several_processes_need_the_hub() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "udp_sidecar", "--udp-bind", HOST, "--udp-port", "1",
         "--sync-socket", "off", "--udp-processes", "2"],
        env=servers._child_env({}, None), capture_output=True, text=True, timeout=WITHIN,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "udp-sidecar: udp_processes = 2 needs the sync hub (the processes share their swarms "
        "through it); sync_socket is 'off'"
    )


def test_under_serve_the_hub_process_dying_restarts_the_whole_sidecar(tmp_path: Path) -> None:
    with serve(tmp_path, workers=1, config="udp_processes = 2\n") as stack:
        hub = stack.sidecar_pid()
        assert hub is not None
        assert wait_until(lambda: len([p for p in children(hub) if alive(p)]) == 1, WITHIN)
        assert wait_until(lambda: stack.log().count("UDP process serving") == 1, WITHIN)
        (child,) = [p for p in children(hub) if alive(p)]
        os.kill(hub, signal.SIGKILL)
        # Its other process goes with it (nobody left to flush to), so the port is free
        # for the sidecar serve starts again, which has two processes again.
        assert wait_until(lambda: not alive(child), WITHIN)
        assert wait_until(lambda: stack.sidecar_pid() not in (None, hub), WITHIN), stack.log()
        again = stack.sidecar_pid()
        assert again is not None
        assert wait_until(lambda: len([p for p in children(again) if alive(p)]) == 1, WITHIN)
        assert wait_until(lambda: stack.log().count("UDP process serving") == 2, WITHIN), (
            stack.log()
        )
        senders = Senders(stack.udp.port)
        try:
            for n in range(SENDERS):
                senders.announce(n, ih("again"), left=1, event=2)
        finally:
            senders.close()
        assert "udp-sidecar (pid" in stack.log() and "killed by SIGKILL" in stack.log()


@pytest.mark.parametrize("cores", [1, 2])
def test_zero_processes_means_one_per_core_it_may_run_on(cores: int) -> None:
    allowed = os.sched_getaffinity(0)
    if len(allowed) < cores:
        pytest.skip(f"needs {cores} cores")
    sock = servers.short_tempdir("udpp-") + "/sync.sock"
    with contextlib.ExitStack() as stack:
        os.sched_setaffinity(0, set(sorted(allowed)[:cores]))  # what the sidecar inherits
        try:
            hub = stack.enter_context(
                sidecar(sync_socket=sock, extra_args=["--udp-processes", "0"])
            )
        finally:
            os.sched_setaffinity(0, allowed)
        assert wait_until(lambda: "udp-sidecar listening on" in hub.stderr(), WITHIN)
        assert ("with 2 processes" in hub.stderr()) == (cores == 2), hub.stderr()
        assert wait_until(lambda: len(others(hub)) == cores - 1, WITHIN)


def test_once_a_reply_is_in_hand_every_process_has_the_announce(tmp_path: Path) -> None:
    """Read-your-writes across the UDP processes: each announce is followed at once, with
    no wait, by a scrape from the next socket, which the kernel gives to the other process
    about half the time (the first test shows both serve)."""
    with two_processes(tmp_path) as hub:
        senders = Senders(hub.port)
        try:
            torrent = ih("in-hand")
            for n in range(SENDERS):
                senders.announce(n, torrent, left=1000, event=2)
                assert senders.scrape((n + 1) % SENDERS, torrent) == (0, 0, n + 1), n
            for n in range(SENDERS):
                senders.announce(n, torrent, left=0, event=1)  # completed
                seeders, completed, leechers = senders.scrape((n + 1) % SENDERS, torrent)
                assert (seeders, completed, leechers) == (n + 1, n + 1, SENDERS - n - 1), n
        finally:
            senders.close()


@pytest.mark.skipif(not servers.has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_is_shared_by_both_processes_too(tmp_path: Path) -> None:
    with two_processes(tmp_path, binds=(HOST, "::1")) as hub:
        senders = Senders(hub.port, host="::1")
        try:
            for torrent in both("six"):
                for n in range(SENDERS):
                    reply = senders.announce(n, torrent, left=1, event=2)
                    assert struct.unpack_from(">I", reply)[0] == 1, reply
        finally:
            senders.close()
        reports = udp_reports(hub.sync_socket, lambda r: len(udp_pids(r)) == 2)
        assert udp_pids(reports) == {hub.proc.pid, *others(hub)}, reports


def announces_by_process(reports: dict[str, dict]) -> dict[int, int]:
    return {
        int(rid.partition(":")[2]): r["announces"]["udp"]
        for rid, r in reports.items()
        if rid.startswith("udp:")
    }


def test_a_torrents_announces_all_reach_its_process_and_every_process_sees_them(
    tmp_path: Path,
) -> None:
    """Steering (the default): from every source port, a torrent's announces reach one
    process, the hub's (index 0) or the other (index 1); connects and scrapes are still
    answered by both, and each process's scrape counts the other's announces."""
    with two_processes(tmp_path) as hub:
        (child,) = others(hub)
        senders = Senders(hub.port)  # connects from every port: both processes answer them
        try:
            expected = {hub.proc.pid: 0, child: 0}
            for index, pid in enumerate((hub.proc.pid, child)):
                for torrent in (owned(f"steered{k}", index) for k in range(3)):
                    for n in range(SENDERS):
                        senders.announce(n, torrent, left=1000, event=2)
                    expected[pid] += SENDERS
                    assert all(
                        senders.scrape(n, torrent) == (0, 0, SENDERS) for n in range(SENDERS)
                    )
            reports = udp_reports(hub.sync_socket, lambda r: announces_by_process(r) == expected)
            assert announces_by_process(reports) == expected, reports
            scrapes = {
                int(rid.partition(":")[2]): r["scrapes"]["udp"]
                for rid, r in reports.items()
                if rid.startswith("udp:")
            }
            assert all(scrapes.values()), reports  # by the kernel's hash: both answer some
        finally:
            senders.close()


def test_without_steering_one_torrents_announces_reach_both_processes(tmp_path: Path) -> None:
    with two_processes(tmp_path, ("--no-udp-steering",)) as hub:
        senders = Senders(hub.port)
        try:
            for n in range(SENDERS):
                senders.announce(n, ih("spread"), left=1000, event=2)
            reports = udp_reports(hub.sync_socket, lambda r: len(udp_pids(r)) == 2)
            assert udp_pids(reports) == {hub.proc.pid, *others(hub)}, reports
        finally:
            senders.close()
