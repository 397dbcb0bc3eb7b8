"""The UDP-serving processes beside the hub's own (``udp_processes``): started, restarted, stopped.

The hub's process (the one ``wsgi-tracker serve`` or the operator started)
runs ``udp_processes - 1`` more copies of ``python -m udp_sidecar``, each
serving the same port through ``SO_REUSEPORT`` and joining the hub as a sync
client (role ``udp``), exactly as a gunicorn worker does. They are supervised
the way ``serve`` supervises its children, with the same ``Child`` (backoff,
crash window, the death signal): one that dies is restarted with one log line
while the others go on serving; its datagrams meanwhile go to the others,
since the kernel hashes over the sockets still open, and their connection ids
are valid there too (one key for all, see :func:`key_pipe`).

They run in their own session, so a Ctrl-C at a terminal reaches the hub's
process alone and it stops them in order: they flush to the hub, then the hub
saves. If the hub's process dies, the kernel kills them (SIGKILL as the death
signal: with the hub gone there is nobody to flush to, and their sockets must
be closed before the restarted sidecar binds the port again).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

import gevent

from wsgi_tracker.running.supervisor import (
    MAX_RESTARTS,
    RESTART_WINDOW,
    START_ERRORS,
    Child,
    describe,
)

log = logging.getLogger("udp_sidecar")

# The hidden flag of ``python -m udp_sidecar`` that makes it one of these processes: the fd
# of a pipe holding the connection-id key.
KEY_FD_FLAG = "--udp-process-key-fd"
KEY_BYTES = 32
STOP_TIMEOUT = 20.0  # its last flush to the hub, then the UDP loops' own stop


def key_pipe(key: bytes) -> int:
    """The read end of a pipe holding ``key``, for a child to inherit.

    The key never appears in an argument list or environment (both readable in
    /proc by the same user, and kept in process listings and crash reports); a
    pipe's contents are readable only through the fd, once.
    """
    read, write = os.pipe()
    try:
        os.write(write, key)  # 32 bytes: far below any pipe buffer, never blocks
    finally:
        os.close(write)
    return read


def read_key(fd: int) -> bytes:
    """The key the hub's process wrote to ``fd`` (ValueError if it is not whole)."""
    try:
        key = b""
        while len(key) < KEY_BYTES:
            chunk = os.read(fd, KEY_BYTES - len(key))
            if not chunk:
                break
            key += chunk
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise ValueError(f"{KEY_FD_FLAG} {fd}: expected a {KEY_BYTES}-byte key, got {len(key)}")
    return key


class UdpProcesses:
    """``count`` UDP-serving children of this process, kept running until :meth:`stop`."""

    def __init__(self, count: int, env: Mapping[str, str], key: bytes) -> None:
        self.key = key
        self.children = [
            Child(f"udp process {n}", [], env, STOP_TIMEOUT, death_signal=signal.SIGKILL)
            for n in range(1, count + 1)
        ]
        self._stopping = False
        self._watchers: list[gevent.Greenlet] = []

    @property
    def pids(self) -> list[int]:
        """The running children's pids."""
        return [c.proc.pid for c in self.children if c.proc is not None and c.proc.poll() is None]

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)
        self._watchers = [gevent.spawn(self._watch, child) for child in self.children]

    def _spawn(self, child: Child) -> subprocess.Popen[bytes]:
        fd = key_pipe(self.key)
        child.argv = [sys.executable, "-m", "udp_sidecar", KEY_FD_FLAG, str(fd)]
        child.pass_fds = (fd,)
        try:
            return child.start()
        finally:
            os.close(fd)

    def _watch(self, child: Child) -> None:
        """Restart ``child`` whenever it dies, until stopping or it cannot be cured."""
        while child.proc is not None:
            code = child.proc.wait()
            if self._stopping:
                return
            pid = child.proc.pid
            if code in START_ERRORS:
                log.error(
                    "udp-sidecar: %s (pid %d) %s, a start-up error; not restarting it, "
                    "the other processes serve on",
                    child.name,
                    pid,
                    describe(code),
                )
                return
            delay = child.next_delay(time.monotonic())
            if delay is None:
                log.error(
                    "udp-sidecar: %s (pid %d) %s, its %dth crash in %.0f s; not restarting it, "
                    "the other processes serve on",
                    child.name,
                    pid,
                    describe(code),
                    MAX_RESTARTS + 1,
                    RESTART_WINDOW,
                )
                return
            log.warning(
                "udp-sidecar: %s (pid %d) %s; restarting in %.1f s",
                child.name,
                pid,
                describe(code),
                delay,
            )
            gevent.sleep(delay)
            if self._stopping:
                return
            proc = self._spawn(child)
            log.info("udp-sidecar: %s restarted (pid %d)", child.name, proc.pid)

    def signal(self, signum: int) -> None:
        """Pass ``signum`` (SIGHUP) on to every running child."""
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM every child at once (each flushes to the hub and exits), then wait for all.

        One that outlives its deadline is killed; what it had not flushed is lost,
        as for a worker that does not stop.
        """
        self._stopping = True
        gevent.killall(self._watchers)
        self._watchers.clear()
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(child.stop_timeout)
            except subprocess.TimeoutExpired:
                log.error(
                    "udp-sidecar: %s did not stop within %.0f s; killing it",
                    child.name,
                    child.stop_timeout,
                )
                child.proc.kill()
                child.proc.wait()
