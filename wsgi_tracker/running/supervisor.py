"""``wsgi-tracker serve``'s supervisor: keep udp-sidecar and gunicorn running, stop them in order.

Modelled on gunicorn's arbiter and systemd's ``Restart=on-failure``:

* a child that dies is restarted after a backoff (0.1 s, doubling to 10 s)
  with one log line, and the other keeps serving: a dead sidecar does not take
  HTTP down (the workers serve from their replicas and the restarted hub
  rebuilds from them); a dead gunicorn master does not lose the HTTP port
  (``serve`` holds the listening socket and hands the same one to every
  gunicorn it starts, so connections wait in its backlog meanwhile);
* a child that exits with a start-up error (2: bad settings, 3/4: gunicorn
  could not load the app) is not restarted: ``serve`` stops with that code,
  as it does after ``MAX_RESTARTS`` crashes within ``RESTART_WINDOW``;
* SIGHUP is passed on (gunicorn replaces its workers gracefully, udp-sidecar
  re-reads access lists and passkeys) and stops nothing;
* SIGTERM and SIGINT stop the children in reverse start order, each gone
  before the next: the workers hand the hub their last changes, then the hub
  saves. The children run in their own session, so a Ctrl-C at a terminal
  reaches ``serve`` alone instead of every process at once;
* if ``serve`` itself is killed, the kernel signals each child
  (PR_SET_PDEATHSIG): gunicorn gets SIGTERM, udp-sidecar its ``ORPHANED``
  signal, on which it keeps serving until the workers have left, then saves.
"""

from __future__ import annotations

import collections
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
MAX_RESTARTS = 5  # crashes within RESTART_WINDOW before serve gives up
RESTART_WINDOW = 30.0
# Exit codes a restart cannot cure: bad settings (2), gunicorn's worker boot and
# app load errors (3, 4).
START_ERRORS = frozenset({2, 3, 4})
POLL = 0.1
log = logging.getLogger("wsgi_tracker.serve")


@dataclass
class Child:
    """One supervised process and how to start, signal and stop it."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    stop_timeout: float
    death_signal: int = signal.SIGTERM
    pass_fds: Sequence[int] = ()
    # Called after the first start with the process; waits (bounded) until it serves,
    # so the next child finds it (gunicorn's workers join a listening hub).
    ready: Callable[[subprocess.Popen[bytes]], None] | None = None
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float = 0.0
    crashes: collections.deque[float] = field(default_factory=collections.deque)

    def start(self, first: bool = False) -> subprocess.Popen[bytes]:
        signum = self.death_signal
        proc = self.proc = subprocess.Popen(
            self.argv,
            env=dict(self.env),
            pass_fds=tuple(self.pass_fds),
            start_new_session=True,
            preexec_fn=lambda: _die_with_parent(signum),
        )
        if first and self.ready is not None:
            self.ready(proc)
        return proc

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the restart, or None: it crashes too often to go on."""
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - RESTART_WINDOW:
            self.crashes.popleft()
        if len(self.crashes) > MAX_RESTARTS:
            return None
        return min(BACKOFF_FIRST * 2 ** (len(self.crashes) - 1), BACKOFF_MAX)


def _die_with_parent(signum: int) -> None:
    """In the child (Linux): have the kernel send ``signum`` when ``serve`` dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signum)


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with {returncode}"


def say(message: str, level: int = logging.INFO) -> None:
    log.log(level, message)


class Supervisor:
    """Start ``children`` in order, keep them running, stop them in reverse order."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self._stop_signal: int | None = None
        self._reload = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        code = 0
        try:
            for child in self.children:
                proc = child.start(first=True)
                exited = proc.poll()
                if self._stop_signal is None and exited is not None:
                    code = self._failed_start(child, exited)
                    break
            else:
                code = self._watch()
        finally:
            self._stop_all()
        return code

    def _on_stop(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self._reload = True

    def _failed_start(self, child: Child, code: int) -> int:
        """The one message for a child that could not start: it exited during its first
        start, or later with a start-up error's code (a restart cannot cure either)."""
        say(f"{child.name} {describe(code)} while starting; stopping", logging.ERROR)
        return code or 1

    def _watch(self) -> int:
        """Restart whatever dies until told to stop; the exit status of ``serve``."""
        while self._stop_signal is None:
            if self._reload:
                self._reload = False
                say("SIGHUP: reloading (gunicorn replaces its workers, udp-sidecar re-reads lists)")
                for child in self.children:
                    if child.proc is not None and child.proc.poll() is None:
                        child.proc.send_signal(signal.SIGHUP)
            now = time.monotonic()
            for child in self.children:
                if child.proc is None:
                    if now >= child.restart_at:
                        proc = child.start()
                        say(f"{child.name} restarted (pid {proc.pid})")
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                if code in START_ERRORS:
                    return self._failed_start(child, code)
                delay = child.next_delay(now)
                if delay is None:
                    say(
                        f"{child.name} {describe(code)}, its {MAX_RESTARTS + 1}th crash in "
                        f"{RESTART_WINDOW:.0f} s; stopping",
                        logging.ERROR,
                    )
                    return 1
                say(
                    f"{child.name} (pid {child.proc.pid}) {describe(code)}; "
                    f"restarting in {delay:.1f} s",
                    logging.WARNING,
                )
                child.proc = None
                child.restart_at = now + delay
            time.sleep(POLL)
        name = signal.Signals(self._stop_signal).name
        say(f"{name}: stopping {', then '.join(c.name for c in reversed(self.children))}")
        return 0

    def _stop_all(self) -> None:
        """In reverse start order, each gone (or killed at its deadline) before the next."""
        for child in reversed(self.children):
            proc = child.proc
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(child.stop_timeout)
            except subprocess.TimeoutExpired:
                say(
                    f"{child.name} did not stop within {child.stop_timeout:.0f} s; killing it",
                    logging.ERROR,
                )
                proc.kill()
                proc.wait()
