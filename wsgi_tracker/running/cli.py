"""``wsgi-tracker``: run the whole tracker (gunicorn + gevent workers, and udp-sidecar)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from wsgi_tracker.config import ConfigError, TrackerConfig

GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wsgi-tracker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP tracker under gunicorn, plus udp-sidecar")
    serve.add_argument(
        "--bind", default="0.0.0.0:6969", help="HTTP HOST:PORT (default %(default)s)"
    )
    serve.add_argument("--workers", type=int, default=None, help="gevent workers (default: cores)")
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument(
        "--app",
        default="wsgi_tracker.wsgi:app",
        help="WSGI app to serve, MODULE:NAME (default %(default)s)",
    )
    serve.add_argument("--udp-port", type=int, default=None, help="UDP port (default 6969)")
    serve.add_argument("--no-udp", action="store_true", help="run HTTP alone, no udp-sidecar")
    sub.add_parser("config", help="print every setting with its default and meaning")
    args = parser.parse_args(argv)
    if args.command == "config":
        from wsgi_tracker.config import describe

        print(describe())
        return 0
    return serve_command(args)


def serve_command(args: argparse.Namespace) -> int:
    try:
        config = TrackerConfig.load(args.config)
        if args.udp_port is not None:
            config = config.replace(udp_port=args.udp_port)
    except ConfigError as exc:
        print(f"wsgi-tracker: {exc}", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"wsgi-tracker: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.config:
        env["WSGI_TRACKER_CONFIG"] = str(Path(args.config).resolve())
    # Both children get the socket path spelled out, so they cannot disagree on it.
    sync_socket = None if args.no_udp else config.sync_socket_path
    env["WSGI_TRACKER_SYNC_SOCKET"] = sync_socket or "off"
    children: list[subprocess.Popen[bytes]] = []
    if not args.no_udp:
        cmd = [sys.executable, "-m", "udp_sidecar", "--port", str(config.udp_port)]
        if args.config:
            cmd += ["--config", args.config]
        children.append(subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent))
        if sync_socket:
            _wait_for_hub(sync_socket, children[0])
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--bind", args.bind]
    if args.workers:
        gunicorn += ["--workers", str(args.workers)]
    children.append(subprocess.Popen([*gunicorn, args.app], env=env, preexec_fn=_die_with_parent))
    return _supervise(children)


def _wait_for_hub(path: str, sidecar: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Start the workers once the hub listens, so they join it rather than warn."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sidecar.poll() is None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()


def _die_with_parent() -> None:
    """In each child (Linux): SIGTERM it if ``serve`` itself is killed, so none is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _supervise(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait until a child exits or we are told to stop; then stop every child."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while not stopping:
        exited = [c for c in children if c.poll() is not None]
        if exited:
            code = exited[0].returncode or 1
            print(f"wsgi-tracker: {exited[0].args[2]} exited ({code}); stopping", file=sys.stderr)
            break
        time.sleep(0.2)
    # In reverse start order, each gone before the next: gunicorn's workers hand the
    # hub their last announces, then udp-sidecar (the hub) writes its snapshot.
    deadline = time.monotonic() + 15
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0 if stopping else code


if __name__ == "__main__":
    sys.exit(main())
