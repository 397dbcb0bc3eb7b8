"""udp-sidecar: the BEP 15 UDP tracker, and (with sync) the hub of every tracker process."""

# Patch before anything imports socket, threading or time-based waits.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from udp_sidecar import ORPHANED  # noqa: E402
from udp_sidecar.processes import KEY_BYTES, KEY_FD_FLAG, UdpProcesses, read_key  # noqa: E402
from udp_sidecar.server import BindError, UdpServer, settle_visible  # noqa: E402
from wsgi_tracker.cluster import ClusterNode  # noqa: E402
from wsgi_tracker.config import ConfigError, TrackerConfig, load_with_sources  # noqa: E402
from wsgi_tracker.core.gc_tuning import YOUNG_UDP, tune_gc  # noqa: E402
from wsgi_tracker.core.tracker import TrackerCore  # noqa: E402
from wsgi_tracker.running import logs  # noqa: E402
from wsgi_tracker.running.flags import add_setting_flags, flag_layer, layer_env  # noqa: E402
from wsgi_tracker.stats.collect import TrackerStats  # noqa: E402
from wsgi_tracker.sync import frames, snapshot  # noqa: E402
from wsgi_tracker.sync.client import SyncClient  # noqa: E402
from wsgi_tracker.sync.hub import HubError, SyncHub  # noqa: E402
from wsgi_tracker.sync.journal import JournalError  # noqa: E402

log = logging.getLogger("udp_sidecar")
PROG = "udp-sidecar"
ORPHAN_WAIT = 30.0  # gunicorn's graceful_timeout (10 s) and then some
# How long a UDP process waits for the hub's snapshot before it serves anyway: a hub walking
# a million torrents takes seconds, and a process answering before it has them hands out
# partial peer lists.
JOIN_WAIT = 60.0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=PROG,
        description="The BEP 15 UDP tracker, and (with sync) the hub of every tracker process.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {version('wsgi-tracker')}")
    top.add_argument("--config", metavar="FILE", help="TOML config file")
    add_setting_flags(top)
    # Internal: what the hub's process starts its other UDP processes with (udp_processes).
    top.add_argument(KEY_FD_FLAG, dest="key_fd", type=int, help=argparse.SUPPRESS)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        layer = flag_layer(args)
        config, _ = load_with_sources(args.config, layers=[layer])
    except ConfigError as exc:
        return _fail(str(exc))
    logs.configure(config)
    tune_gc(YOUNG_UDP)
    if args.key_fd is not None:
        try:
            key = read_key(args.key_fd)
        except (OSError, ValueError) as exc:
            return _fail(str(exc))
        return serve_for_hub(config, key)
    # The other UDP processes get this one's settings as serve hands them to its children.
    env = {**os.environ, **layer_env(layer)}
    if args.config:
        env["WSGI_TRACKER_CONFIG"] = str(Path(args.config).resolve())
    binds = _usable(config.udp_bind)
    return run(config, binds, config.udp_port, config.sync_socket_path, env)


def process_count(config: TrackerConfig) -> int:
    """``udp_processes``, with 0 read as the cores this process may run on (taskset counts)."""
    return config.udp_processes or len(os.sched_getaffinity(0))


# Long on purpose: start-up and the ordered stop side by side, so the order of each is read in one
# place.
def run(
    config: TrackerConfig,
    binds: Sequence[str],
    port: int,
    sync_socket: str | None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then stop everything and return the exit status.

    ``sync_socket`` is where the sync hub will listen (None: sync off); the
    hub is started and stopped here, next to this process's UDP server.
    With ``redis_url`` the hub is also a cluster node, which joins (bounded)
    before the hub listens, so the first workers get the cluster's state.
    With ``udp_processes`` above 1, the other UDP processes start once the hub
    listens (with ``env``, default this process's) and stop before it.
    """
    if config.redis_url and not sync_socket:
        return _fail("redis_url needs the sync hub (it is the cluster node); sync_socket is 'off'")
    processes = process_count(config)
    if processes > 1 and not sync_socket:
        return _fail(
            f"udp_processes = {processes} needs the sync hub (the processes share their "
            "swarms through it); sync_socket is 'off'"
        )
    try:  # settings that only the core checks (access lists, passkeys, hooks)
        core = TrackerCore(config)
    except ConfigError as exc:
        return _fail(str(exc))
    saver = journal = None
    if config.snapshot_path:  # restore before serving, so the hub's first snapshot has it
        try:
            journal = snapshot.open_store_files(config.snapshot_path, core.store)
        except (snapshot.SnapshotPathError, JournalError) as exc:
            return _fail(str(exc))
        # First among the listeners: a UDP completion is journaled before it is answered.
        core.listeners.insert(0, journal.listener)
        saver = snapshot.Saver(core.store, config.snapshot_path, config.snapshot_interval, journal)
    # One connection-id key for every UDP process: the kernel may move a client to another.
    key = os.urandom(KEY_BYTES)
    steer = processes if processes > 1 and config.udp_steering else 0
    server = UdpServer(core, binds, port, key=key, reuse_port=processes > 1, steer=steer)
    try:
        server.start()
    except BindError as exc:
        return _fail(str(exc))
    hub = None
    if sync_socket:
        hub = SyncHub(core, sync_socket, on_counts=journal.append if journal else None)
    node = None
    if hub is not None and config.redis_url:
        node = ClusterNode(
            hub,
            config.redis_url,
            name=config.cluster_name,
            node=config.cluster_node,
            maxlen=config.cluster_stream_maxlen,
            snapshot_interval=config.cluster_snapshot_interval,
        )
        node.start()
    if hub is not None:
        try:
            hub.start()
        except HubError as exc:
            server.stop()
            if node is not None:
                node.stop()
            return _fail(str(exc))
        server.settle = hub.settle  # a batch's replies go once its changes reached every worker
        # The sidecar's UDP counters join every worker's in the whole-tracker /stats; its
        # report also carries the cluster's node list.
        stats = TrackerStats(
            core,
            role="udp",
            extra=lambda: {
                "hub": hub.status(),
                **({} if node is None else {"cluster": node.status()}),
            },
        )
        stats.share(hub.publish_stats, lambda: [entry.payload for entry in hub.cluster_stats])
    others = None
    if processes > 1 and sync_socket:
        overrides = {
            "WSGI_TRACKER_UDP_PORT": str(port),
            "WSGI_TRACKER_UDP_BIND": ",".join(binds),
            "WSGI_TRACKER_SYNC_SOCKET": sync_socket,
        }
        others = UdpProcesses(processes - 1, {**(env or os.environ), **overrides}, key)
        others.start()
    stopping = Event()
    orphaned = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    gevent.signal_handler(ORPHANED, orphaned.set)
    gevent.signal_handler(signal.SIGHUP, lambda: reload(core, others))
    log.info(core.describe_access())
    log.info(
        "udp-sidecar listening on %s%s",
        _shown(server.addresses),
        f" with {processes} processes (pids {os.getpid()}, {', '.join(map(str, others.pids))})"
        if others is not None
        else "",
    )
    if saver is not None:
        saver.start()
    core.start()
    gevent.wait([stopping, orphaned], count=1)
    if orphaned.is_set() and not stopping.is_set() and hub is not None:
        _wait_for_workers_to_leave(hub, stopping)
    log.info("udp-sidecar stopping")
    if others is not None:  # first: each flushes its last changes to the hub
        others.stop()
    server.stop()
    if hub is not None:
        stats.stop_sharing()
        hub.stop()
    if node is not None:  # after the hub: the workers' last changes go up too
        node.stop()
    if saver is not None:  # last: after the final UDP announces and workers' deltas
        saver.stop()
    return 0


def serve_for_hub(config: TrackerConfig, key: bytes) -> int:
    """One of the hub's other UDP processes: a sync client (role ``udp``) serving UDP.

    It joins the hub as a gunicorn worker does and serves once it holds the
    hub's snapshot; on SIGTERM or SIGINT it stops serving, flushes its last
    changes to the hub and exits. Its settings come from the hub's process
    (environment), its connection-id key through an inherited pipe.
    """
    path = config.sync_socket_path
    if path is None:
        return _fail("a UDP process of the hub needs its sync socket; sync_socket is 'off'")
    try:
        core = TrackerCore(config)
    except ConfigError as exc:
        return _fail(str(exc))
    client = SyncClient(core, path, role=frames.ROLE_UDP)
    client.start()
    if not client.wait_ready(JOIN_WAIT):
        log.warning("udp-sidecar: no snapshot from the hub within %.0f s; serving", JOIN_WAIT)
    server = UdpServer(core, config.udp_bind, config.udp_port, key=key, reuse_port=True, join=True)
    # Read-your-writes as in a worker: what the hub sent is applied as a batch takes
    # core.lock (the client's ReadGate), and the batch's replies go once the hub has its
    # changes where every process reads (a batch of pure refreshes needs no wait).
    server.settle = settle_visible(core, client.settle)
    try:
        server.start()
    except BindError as exc:
        client.stop()
        return _fail(str(exc))
    stats = TrackerStats(core, role="udp")
    stats.share(
        client.publish_stats,
        lambda: [entry.payload for entry in client.cluster_stats],
        client.status,
    )
    stopping = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    gevent.signal_handler(signal.SIGHUP, lambda: reload(core))
    log.info("udp-sidecar: UDP process serving %s beside the hub", _shown(server.addresses))
    core.start()
    stopping.wait()
    server.stop()  # no new changes, then the last of them to the hub
    stats.stop_sharing()
    client.stop()
    return 0


def reload(core: TrackerCore, others: UdpProcesses | None = None) -> None:
    """SIGHUP: re-read the access lists and passkeys at once (every UDP process); nothing stops."""
    log.info("udp-sidecar: SIGHUP, reloading access lists and passkeys")
    if core.access is not None:
        core.access.reload_soon()
    if others is not None:
        others.signal(signal.SIGHUP)


def _wait_for_workers_to_leave(hub: SyncHub, stopping: Event) -> None:
    """``serve`` is gone, so gunicorn got its SIGTERM at the same moment we got ours:
    keep serving until its workers have handed us their last changes and left."""
    log.info("udp-sidecar: wsgi-tracker serve is gone; stopping once the workers have left")
    deadline = time.monotonic() + ORPHAN_WAIT
    while hub.workers and time.monotonic() < deadline and not stopping.is_set():
        gevent.sleep(0.05)
    if hub.workers:
        log.warning("udp-sidecar: %d workers still connected; stopping anyway", hub.workers)


def _shown(addresses: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)


def _usable(binds: Sequence[str]) -> list[str]:
    """The configured binds, less the IPv6 ones on a host without IPv6 (with a warning)."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        log.warning("no IPv6 on this host: serving IPv4 only")
        return [b for b in binds if ":" not in b]
    return list(binds)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
