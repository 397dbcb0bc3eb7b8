"""wsgi-tracker: run the whole tracker (gunicorn with gevent workers, and udp-sidecar), or
print its effective settings."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from udp_sidecar import ORPHANED
from wsgi_tracker.config import PROCESS_ENV, SETTINGS, ConfigError, TrackerConfig, load_with_sources
from wsgi_tracker.running import logs
from wsgi_tracker.running.flags import add_setting_flags, flag_layer, layer_env
from wsgi_tracker.running.supervisor import Child, Supervisor
from wsgi_tracker.settings import markdown
from wsgi_tracker.sync import snapshot
from wsgi_tracker.sync.socket_path import UnsafeSocketPath, check_private, why_no_hub

GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")
GUNICORN_STOP_TIMEOUT = 20.0  # its graceful_timeout (10 s), the workers' last flush, slack
# The sidecar's last save at 1M torrents takes ~8 s of CPU: 5.9-6.8 s at load 2, past 60 s
# at load 10-12 on 2 cores (bench.faults --parts serve), as long as its restore at start
# (HUB_START_WAIT). Killed, it loses no count (the journal has them) but the peers' state
# since the last periodic save.
SIDECAR_STOP_TIMEOUT = 120.0
# How long gunicorn waits for the hub to listen: the sidecar restores its snapshot first
# (~8 s at 1M torrents on a quiet machine, three times that under load).
HUB_START_WAIT = 120.0
PROG = "wsgi-tracker"
log = logging.getLogger("wsgi_tracker.serve")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description=__doc__)
    top.add_argument("--version", action="version", version=f"%(prog)s {version('wsgi-tracker')}")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the HTTP tracker under gunicorn, plus udp-sidecar",
        description="Run the HTTP tracker under gunicorn (TrackerWorker) and udp-sidecar "
        "(the UDP tracker and sync hub); stop both on SIGTERM or SIGINT.",
    )
    serve.add_argument(
        "--bind", default="0.0.0.0:6969", help="HTTP HOST:PORT (default %(default)s)"
    )
    serve.add_argument("--workers", type=int, default=None, help="gevent workers (default: cores)")
    serve.add_argument("--config", metavar="FILE", help="TOML config file")
    serve.add_argument(
        "--app",
        default="wsgi_tracker.wsgi:app",
        help="WSGI app to serve, MODULE:NAME (default %(default)s)",
    )
    serve.add_argument("--no-udp", action="store_true", help="run HTTP alone, no udp-sidecar")
    add_setting_flags(serve)
    show = sub.add_parser(
        "config",
        help="print the effective value of every setting and where it came from",
        description="Print every setting's effective value, as TOML, with where it came from "
        "(default, file, env or flag).",
    )
    show.add_argument("--config", metavar="FILE", help="TOML config file")
    show.add_argument(
        "--markdown", action="store_true", help="print the settings reference (docs/CONFIG.md)"
    )
    add_setting_flags(show)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        layer = flag_layer(args)
        config, sources = load_with_sources(args.config, layers=[layer])
    except ConfigError as exc:
        return _fail(str(exc))
    if args.command == "config":
        print(markdown(SETTINGS, PROCESS_ENV) if args.markdown else effective(config, sources))
        return 0
    logs.configure(config)
    return serve_command(args, config, layer_env(layer))


# Printed as "<hidden>" when set: `wsgi-tracker config` output lands in tickets and chats.
SECRET_SETTINGS = frozenset({"stats_token"})


def _shown(name: str, value: Any) -> Any:
    if name in SECRET_SETTINGS and value:
        return "<hidden>"
    if name == "redis_url" and value:
        parts = urlsplit(value)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.partition(":")[0]
            return urlunsplit(parts._replace(netloc=f"{user}:<hidden>@{hostport}"))
    return value


def effective(config: TrackerConfig, sources: dict[str, str]) -> str:
    """The settings as a TOML ``[tracker]`` table, each line saying where its value came from.

    Secrets (the stats token, a password in ``redis_url``) are shown as ``<hidden>``.
    """
    lines = ["[tracker]"]
    for s in SETTINGS:
        value = _shown(s.name, getattr(config, s.name))
        lines.append(f"{s.name} = {s.to_toml(value)}  # {sources[s.name]}")
    return "\n".join(lines)


def serve_command(
    args: argparse.Namespace, config: TrackerConfig, flags_env: dict[str, str]
) -> int:
    if args.workers is not None and args.workers < 1:
        return _fail(f"--workers must be at least 1, got {args.workers}")
    if args.no_udp and config.redis_url:
        return _fail(
            "--no-udp with redis_url set: the cluster link runs in udp-sidecar, so this "
            "machine would serve cut off from the others; drop one of the two"
        )
    try:
        listener = http_listener(args.bind)
        if config.snapshot_path and not args.no_udp:
            snapshot.check_writable(config.snapshot_path)
        _check_app(args.app)
    except (ConfigError, snapshot.SnapshotPathError) as exc:
        return _fail(str(exc))
    env = {**os.environ, **flags_env}
    if args.config:
        env["WSGI_TRACKER_CONFIG"] = str(Path(args.config).resolve())
    # Both children get the socket path spelled out, so they cannot disagree on it.
    sync_socket = None if args.no_udp else config.sync_socket_path
    if sync_socket:  # refuse a squatted directory in one line, before anything starts
        try:
            check_private(sync_socket, missing_ok=True)
        except UnsafeSocketPath as exc:
            print(f"wsgi-tracker: {exc}", file=sys.stderr)
            return 2
    env["WSGI_TRACKER_SYNC_SOCKET"] = sync_socket or "off"
    children: list[Child] = []
    if not args.no_udp:
        children.append(
            Child(
                "udp-sidecar",
                [sys.executable, "-m", "udp_sidecar"],
                env,
                stop_timeout=SIDECAR_STOP_TIMEOUT,
                death_signal=ORPHANED,
                ready=(lambda proc: _wait_for_hub(sync_socket, proc)) if sync_socket else None,
            )
        )
    bind = args.bind if listener is None else f"fd://{listener.fileno()}"
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--bind", bind]
    if args.workers:
        gunicorn += ["--workers", str(args.workers)]
    children.append(
        Child(
            "gunicorn",
            [*gunicorn, args.app],
            env,
            stop_timeout=GUNICORN_STOP_TIMEOUT,
            pass_fds=() if listener is None else (listener.fileno(),),
        )
    )
    return Supervisor(children).run()


def http_listener(bind: str) -> socket.socket | None:
    """The HTTP socket, bound here so that every gunicorn ``serve`` starts gets the same one.

    A gunicorn master that dies and is restarted then loses no connection: they
    wait in this socket's backlog. ``unix:`` and ``fd://`` binds are left to
    gunicorn (None). An address in use is a one-line ConfigError now, rather
    than gunicorn's retries later.
    """
    if bind.startswith(("unix:", "fd://")):
        return None
    host, _, port_text = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--bind {bind}: expected HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--bind {bind}: the port must be 0-65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
    try:
        sock.bind((host, port))
        sock.listen(2048)  # gunicorn's default backlog
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(f"cannot listen on {bind}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def _check_app(app: str) -> None:
    """Load ``app`` once in a throwaway process, so a bad --app is one line, not a traceback.

    A separate process: importing the site here would run its module-level code
    (and capture real locks) in the supervisor, before gevent has patched.
    """
    probe = (
        "import sys\n"
        "from gunicorn.util import import_app\n"
        "try:\n"
        "    import_app(sys.argv[1])\n"
        "except BaseException as exc:\n"
        "    print(f'{type(exc).__name__}: {exc}'.splitlines()[0], file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    env = {**os.environ, "WSGI_TRACKER_SYNC_SOCKET": "off"}
    done = subprocess.run(
        [sys.executable, "-c", probe, app], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["it exited with " + str(done.returncode)]
        raise ConfigError(f"--app {app} cannot be loaded: {lines[-1]}")


def _wait_for_hub(
    path: str, sidecar: subprocess.Popen[bytes], timeout: float = HUB_START_WAIT
) -> None:
    """Start the workers once the hub listens (or the sidecar has exited), so they join
    it rather than serve empty replicas, and a sidecar that cannot start is reported
    as such, however slowly it got there (it restores its snapshot first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sidecar.poll() is None:
        if why_no_hub(path) is None:
            return
        time.sleep(0.05)
    if sidecar.poll() is None:
        log.warning("no sync hub at %s after %.0f s; starting gunicorn anyway", path, timeout)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
