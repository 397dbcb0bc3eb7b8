"""``wsgi-tracker serve`` under faults: a crash is not an outage, and no acknowledged count is lost.

Real processes only: ``serve`` with two gevent workers and udp-sidecar (the
hub, with a snapshot file), real signals and ``kill -9``. A load of
completions over HTTP and UDP keeps its own tally of what the tracker
acknowledged; after each fault the tracker's counts are compared with that
tally. A request whose answer never came (the process it reached died) may or
may not have been counted, so it widens the allowed range instead of being
guessed. Every wait is bounded and asserts the state reached, never how fast.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import bencodepy
import pytest
from servers import (
    Serve,
    alive,
    announce_url,
    scrape_url,
    serve,
    udp_announce,
    udp_scrape,
    wait_until,
)

from udp_sidecar.protocol import build_announce_request, build_connect_request
from wsgi_tracker.sync import snapshot

pytestmark = pytest.mark.integration

WITHIN = 30.0  # seconds: a bound on every wait, not a figure under test
TORRENTS = [f"fault-{n}".encode().ljust(20, b".") for n in range(3)]


def peer_id() -> bytes:
    return b"-FT0001-" + secrets.token_bytes(12)


class Load:
    """Completions over HTTP and UDP from threads until ``stop``; tallies what was answered.

    ``acked`` counts completions the tracker answered; ``unsure`` those sent
    whose answer never came. ``http_errors`` counts HTTP requests that got no
    answer at all (each is retried on a fresh connection), ``http_failures`` says
    what each met. A request may take up to WITHIN: a worker that has just started
    answers once it joined the hub (bounded, docs/SYNC.md), and how long that takes
    on a loaded machine is no part of "nothing stops".
    """

    def __init__(self, s: Serve, http: bool = True, udp: bool = True) -> None:
        self.s = s
        self.acked: Counter[bytes] = Counter()
        self.unsure: Counter[bytes] = Counter()
        self.http_errors = 0
        self.http_failures: list[str] = []
        self.refused: list[bytes] = []  # failure replies: none is expected
        self.log: list[tuple[float, bytes, str]] = []  # (when, torrent, "http"/"udp") per ack
        self.http_answered = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._http, daemon=True)] if http else []
        if udp:
            self._threads.append(threading.Thread(target=self._udp, daemon=True))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(WITHIN)
        assert not self.refused, self.refused[:3]

    def _count(self, tally: Counter[bytes], torrent: bytes, via: str = "") -> None:
        with self._lock:
            tally[torrent] += 1
            if via:
                self.log.append((time.monotonic(), torrent, via))

    def _http(self) -> None:
        n = 0
        end = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < end:
            torrent = TORRENTS[n % len(TORRENTS)]
            n += 1
            url = announce_url("/announce", torrent, peer_id(), 6881, 0, event="completed")
            conn = http.client.HTTPConnection("127.0.0.1", self.s.http.port, timeout=WITHIN)
            started = time.monotonic()
            try:
                conn.request("GET", url)
                body = conn.getresponse().read()
            except OSError as exc:
                self._count(self.unsure, torrent)
                self.http_errors += 1
                self.http_failures.append(f"{exc!r} after {time.monotonic() - started:.1f} s")
                time.sleep(0.02)
                continue
            finally:
                conn.close()
            self.http_answered += 1
            if b"failure reason" in body:
                self.refused.append(body)
            else:
                self._count(self.acked, torrent, "http")

    def _udp(self) -> None:
        n = 0
        end = time.monotonic() + 120
        cid = None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1)
            sock.connect(("127.0.0.1", self.s.udp.port))
            while not self._stop.is_set() and time.monotonic() < end:
                tid = secrets.randbits(32)
                try:
                    if cid is None:
                        sock.send(build_connect_request(tid))
                        cid = sock.recv(64)[8:16]
                        continue
                except OSError:  # the sidecar is restarting
                    time.sleep(0.05)
                    continue
                torrent = TORRENTS[n % len(TORRENTS)]
                n += 1
                packet = build_announce_request(
                    cid, tid, torrent, peer_id(), 6881, left=0, event=1, num_want=0
                )
                try:
                    sock.send(packet)
                    reply = sock.recv(2048)
                except OSError:
                    self._count(self.unsure, torrent)
                    cid = None
                    continue
                if struct.unpack_from(">II", reply) == (1, tid):
                    self._count(self.acked, torrent, "udp")
                else:  # an error packet (a connection id from before a restart, say)
                    cid = None


def http_downloaded(s: Serve) -> dict[bytes, int]:
    conn = http.client.HTTPConnection("127.0.0.1", s.http.port, timeout=10)
    try:
        conn.request("GET", scrape_url("/scrape", *TORRENTS))
        files = bencodepy.decode(conn.getresponse().read())[b"files"]
    finally:
        conn.close()
    return {ih: files[ih][b"downloaded"] for ih in TORRENTS}


def udp_downloaded(s: Serve) -> dict[bytes, int]:
    rows = udp_scrape("127.0.0.1", s.udp.port, *TORRENTS)
    return {ih: row[1] for ih, row in zip(TORRENTS, rows, strict=True)}


def within(got: dict[bytes, int], load: Load, short: int = 0) -> bool:
    return all(
        load.acked[ih] - short <= got[ih] <= load.acked[ih] + load.unsure[ih] for ih in TORRENTS
    )


def assert_counts(s: Serve, load: Load, short: int = 0) -> None:
    """Every worker (several fresh connections) and the sidecar agree with the tally.

    ``short``: completions an answer may lack (a known, documented loss).
    """

    def answers() -> list[dict[bytes, int]]:
        try:
            return [udp_downloaded(s), *(http_downloaded(s) for _ in range(4))]
        except (OSError, RuntimeError):
            return []

    wait_until(lambda: (a := answers()) and all(within(x, load, short) for x in a), WITHIN)
    got = answers()
    assert got, "the tracker does not answer"
    want = {ih: (load.acked[ih] - short, load.acked[ih] + load.unsure[ih]) for ih in TORRENTS}
    for answer in got:
        assert within(answer, load, short), f"got {answer}, want between {want}\n{s.log()[-3000:]}"


def run_load(s: Serve, seconds: float, **kinds: bool) -> Load:
    load = Load(s, **kinds)
    with load:
        time.sleep(seconds)
    assert sum(load.acked.values()) > 0
    return load


def more(load: Load, extra: Load) -> Load:
    """Fold a second load's tally into the first."""
    load.acked += extra.acked
    load.unsure += extra.unsure
    return load


SNAPSHOT = 'snapshot_path = "{}"\nsnapshot_interval = 3600\n'


def config(tmp: Path, extra: str = "") -> str:
    return SNAPSHOT.format(tmp / "swarms.snap") + extra


# --- a child dies: it is restarted, the rest keeps serving --------------------------------------


def test_sidecar_killed_http_answers_throughout_and_udp_returns_with_full_counts(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, config=config(tmp_path)) as s:
        load = run_load(s, 1.0)
        assert_counts(s, load)
        old = s.sidecar_pid()
        assert old is not None
        # Killed under load: completions are in flight to the hub (a batch may be in its
        # socket, unread) and completions keep coming while it restarts and the workers
        # rejoin (docs/HARDENING.md, "Faults").
        with Load(s) as during:
            time.sleep(0.5)
            os.kill(old, signal.SIGKILL)
            assert wait_until(lambda: not alive(old), WITHIN)
            assert wait_until(lambda: s.sidecar_pid() not in (None, old), WITHIN), s.log()
            assert wait_until(
                lambda: s.log().rsplit("restarted", 1)[-1].count("re-sent") >= 2, WITHIN
            ), s.log()
            time.sleep(0.5)  # keep announcing once the workers have rejoined and re-sent
        assert during.http_errors == 0 and during.http_answered > 0, during.http_failures
        log = s.log()
        assert "udp-sidecar (pid" in log and "killed by SIGKILL; restarting in" in log
        more(load, during)
        # UDP answers again, with the counts of before and during, exactly: a completion
        # answered by a worker reached the hub, or is in its buffer, or its worker's claim
        # brings it back (the hub compares the claim of a worker it has not met with what
        # it restored, not with what it counted since).
        assert_counts(s, load)


def test_worker_killed_is_replaced_and_the_counts_stay(tmp_path: Path) -> None:
    with serve(tmp_path, config=config(tmp_path)) as s:
        load = run_load(s, 1.0)
        assert_counts(s, load)
        before = s.worker_pids()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: len(s.worker_pids() - before) == 1, WITHIN)
        more(load, run_load(s, 1.0))
        assert_counts(s, load)


def test_gunicorn_master_killed_http_answers_throughout(tmp_path: Path) -> None:
    with serve(tmp_path, config=config(tmp_path)) as s:
        load = run_load(s, 1.0)
        assert_counts(s, load)
        old = s.master_pid()
        assert old is not None
        with Load(s, udp=False) as during:
            os.kill(old, signal.SIGKILL)
            assert wait_until(lambda: s.master_pid() not in (None, old), WITHIN), s.log()
            assert wait_until(lambda: len(s.worker_pids()) == 2, WITHIN)
            time.sleep(1.0)
        assert during.http_errors == 0 and during.http_answered > 0, (during.http_failures, s.log())
        assert "gunicorn (pid" in s.log()
        more(load, during)
        assert_counts(s, load)


# --- serve is stopped, or killed: the children stop in order, counts stay exact ----------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_serve_under_mixed_load_keeps_every_count(tmp_path: Path, signum: int) -> None:
    with serve(tmp_path, config=config(tmp_path)) as s:
        with Load(s) as load:
            time.sleep(2.0)
            s.proc.send_signal(signum)
            s.proc.wait(WITHIN * 2)
        # Under SIGKILL the children outlive serve until they have stopped in order.
        sidecar_gone = wait_until(lambda: "saved" in s.log().rsplit("udp-sidecar stopping")[-1])
        assert sidecar_gone, s.log()
        log = s.log()
        if signum != signal.SIGKILL:
            assert s.proc.returncode == 0
        assert "Traceback" not in log, log
    # Exact: an HTTP completion's reply waits for the hub's ack (it is journaled and
    # applied there), a UDP one is journaled before it is answered.
    saved = snapshot.decode((tmp_path / "swarms.snap").read_bytes()).downloaded
    assert within({ih: saved.get(ih, 0) for ih in TORRENTS}, load), (saved, load.acked)
    with serve(tmp_path, config=config(tmp_path)) as s:
        assert_counts(s, load)


def test_every_process_killed_at_once_loses_at_most_the_last_second(tmp_path: Path) -> None:
    """A power cut, as near as a test gets: every process SIGKILLed in the same instant.

    No periodic save runs (interval one hour): the counts come back from the
    journal. A UDP completion is journaled before it is answered, so all of them
    come back; an HTTP one reaches the journal when its worker's flush reaches
    the hub (milliseconds), so those answered a second before the cut must too.
    """
    with serve(tmp_path, config=config(tmp_path)) as s:
        with Load(s) as load:
            time.sleep(2.5)
            cut = time.monotonic()
            s.kill_everything()
        assert not (tmp_path / "swarms.snap").exists()  # nothing was saved: all from the journal
    with serve(tmp_path, config=config(tmp_path)) as s:
        assert "replayed" in s.log()
        got = udp_downloaded(s)
        must = Counter(ih for t, ih, via in load.log if via == "udp" or t < cut - 1.0)
        for ih in TORRENTS:
            assert must[ih] <= got[ih] <= load.acked[ih] + load.unsure[ih], (ih, got, must)
        assert sum(must.values()) > 0


def test_sighup_reloads_lists_and_workers_and_stops_nothing(tmp_path: Path) -> None:
    blocked = b"blocked".ljust(20, b".")
    access = tmp_path / "blacklist.txt"
    access.write_text("")
    extra = f'access_mode = "blacklist"\naccess_list_file = "{access}"\n'
    with serve(tmp_path, config=config(tmp_path, extra)) as s:
        udp_announce("127.0.0.1", s.udp.port, blocked, peer_id(), 6881, 0, 2)
        sidecar, master, workers = s.sidecar_pid(), s.master_pid(), s.worker_pids()
        access.write_text(blocked.hex() + "\n")
        with Load(s) as load:
            s.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: not (s.worker_pids() & workers), WITHIN)
            assert wait_until(lambda: len(s.worker_pids()) == 2, WITHIN)
            time.sleep(0.5)
        assert load.http_errors == 0, (load.http_failures, s.log()[-3000:])
        assert (s.sidecar_pid(), s.master_pid()) == (sidecar, master)
        assert s.proc.poll() is None
        with pytest.raises(RuntimeError, match="not allowed"):
            udp_announce("127.0.0.1", s.udp.port, blocked, peer_id(), 6881, 0, 2)
        conn = http.client.HTTPConnection("127.0.0.1", s.http.port, timeout=10)
        conn.request("GET", announce_url("/announce", blocked, peer_id(), 6881, 0))
        assert b"not allowed" in conn.getresponse().read()
        conn.close()
        assert_counts(s, load)


def test_damaged_snapshot_is_kept_aside_and_serve_starts(tmp_path: Path) -> None:
    damaged = b"WTSN\x02 not a snapshot at all"
    (tmp_path / "swarms.snap").write_bytes(damaged)
    with serve(tmp_path, config=config(tmp_path)) as s:
        load = run_load(s, 0.5)
        assert_counts(s, load)
        (aside,) = tmp_path.glob("swarms.snap.damaged-*")
        assert aside.read_bytes() == damaged
        where = re.escape(str(tmp_path / "swarms.snap"))
        damage = rf"ERROR \[\d+\] wsgi_tracker.sync.snapshot: snapshot {where} is damaged"
        assert re.search(damage, s.log()), s.log()
    # the next save wrote a good file beside it, and the damaged copy is still there
    assert aside.read_bytes() == damaged
    assert snapshot.decode((tmp_path / "swarms.snap").read_bytes()).downloaded


def test_unwritable_snapshot_path_fails_at_start_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "swarms.snap"
    with (
        pytest.raises(RuntimeError, match="exited") as failure,
        serve(tmp_path, config=f'snapshot_path = "{missing}"\n'),
    ):
        pass
    # serve checks the path itself before starting a child: one line, exit status 2.
    text = str(failure.value)
    assert "exited with 2" in text
    output = text.split("\n", 1)[1].strip().splitlines()
    assert len(output) == 1 and output[0].startswith(
        f"wsgi-tracker: snapshot_path {missing}: cannot write in"
    ), text


def test_a_child_that_cannot_start_stops_serve_with_one_line(tmp_path: Path) -> None:
    """A start-up error is not retried forever: serve reports it and exits."""
    bad = 'access_mode = "whitelist"\naccess_list_file = "/nonexistent"\n'
    with pytest.raises(RuntimeError, match="exited") as failure, serve(tmp_path, config=bad):
        pass
    assert "udp-sidecar exited with 2 while starting; stopping" in str(failure.value)
    assert "Traceback" not in str(failure.value)


@pytest.mark.parametrize("seen", ["during its first start", "after serve moved on"])
def test_a_child_exiting_while_starting_is_one_line_wherever_serve_sees_it(seen: str) -> None:
    """serve had two messages for the same fault, picked by timing: a sidecar that took
    long to fail (a loaded machine) got the other one. A child that exits 2 is reported
    the same whether serve was still waiting for it to start or had gone on."""
    wait = "lambda proc: proc.wait()" if seen == "during its first start" else "None"
    code = (
        "import logging, sys\n"
        "from wsgi_tracker.running.supervisor import Child, Supervisor\n"
        "logging.basicConfig(format='%(message)s')\n"
        "late = [sys.executable, '-c', 'import sys, time; time.sleep(0.3); sys.exit(2)']\n"
        f"child = Child('udp-sidecar', late, {{}}, stop_timeout=5, ready={wait})\n"
        "sys.exit(Supervisor([child]).run())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["udp-sidecar exited with 2 while starting; stopping"]
