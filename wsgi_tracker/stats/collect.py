"""Statistics for the whole tracker: counters, rates, and their three renderings.

Each process counts its own requests in ``Counters`` (plain ints bumped under
``TrackerCore.lock``: no clock, no extra lock on the hot path). A *report* is
one process's counters plus its recent rates, as JSON bytes: this is what the
process publishes to the sync hub, and the hub hands every process the latest
report of every other, so any worker can answer for the whole tracker by
summing them. Torrent and peer counts come from the local replica, which sync
keeps equal to everyone else's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from wsgi_tracker.core.counters import PROTOCOLS, RELAYED, Counters

if TYPE_CHECKING:
    from wsgi_tracker.core.tracker import TrackerCore

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 1.0  # how often a process sends its report to the hub
RATE_WINDOW = 10.0  # seconds over which "per second" is averaged
TOTALS_MAX_AGE = 2.0  # a replica walk costs O(torrents): reuse it this long
TOTALS_CHUNK = 2000  # torrents read between two yields to the announces
TOTALS_PAUSE = 0.001  # seconds of each yield
TOTALS_WAIT = 30.0  # the longest a request waits for another's walk before it shows older totals


@dataclass
class RateMeter:
    """Requests per second over the last RATE_WINDOW, from samples taken when asked."""

    clock: Callable[[], float] = time.monotonic
    samples: deque[tuple[float, dict[str, int], dict[str, int]]] = field(default_factory=deque)

    def rates(self, counters: Counters) -> tuple[dict[str, float], dict[str, float]]:
        now = self.clock()
        samples = self.samples
        if not samples or now - samples[-1][0] >= 1.0:
            samples.append((now, dict(counters.announces), dict(counters.scrapes)))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        then, announces, scrapes = samples[0]
        span = now - then
        if span < 0.5:
            zero = dict.fromkeys(PROTOCOLS, 0.0)
            return zero, dict(zero)
        return (
            {p: (counters.announces[p] - announces[p]) / span for p in PROTOCOLS},
            {p: (counters.scrapes[p] - scrapes[p]) / span for p in PROTOCOLS},
        )


def process_report(core: TrackerCore, meter: RateMeter, role: str) -> dict[str, Any]:
    """This process's counters and rates, as published to the other processes."""
    c = core.counters
    announce_rate, scrape_rate = meter.rates(c)
    report: dict[str, Any] = {
        "id": f"{role}:{os.getpid()}",
        "announces": dict(c.announces),
        "scrapes": dict(c.scrapes),
        "errors": [[p, k, n] for (p, k), n in c.errors.items()],
        "announce_rate": announce_rate,
        "scrape_rate": scrape_rate,
        "websocket": {"connections": c.ws_connections, **c.relayed},
    }
    if core.hook is not None:
        h = core.hook
        report["hook"] = {
            "delivered": h.delivered,
            "dropped": h.dropped,
            "failed_batches": h.failed_batches,
        }
    return report


def encode_report(report: dict[str, Any]) -> bytes:
    return json.dumps(report, separators=(",", ":")).encode()


def decode_report(payload: bytes) -> dict[str, Any] | None:
    """A peer's report, or None if it is not one (never trust a payload's shape)."""
    try:
        report = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    ok = (
        isinstance(report, dict)
        and isinstance(report.get("id"), str)
        and all(isinstance(report.get(k), dict) for k in ("announces", "scrapes"))
        and isinstance(report.get("errors"), list)
    )
    return report if ok else None


def merge_reports(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counters and rates of several processes' reports."""
    total: dict[str, Any] = {
        "processes": 0,
        "announces": dict.fromkeys(PROTOCOLS, 0),
        "scrapes": dict.fromkeys(PROTOCOLS, 0),
        "announce_rate": dict.fromkeys(PROTOCOLS, 0.0),
        "scrape_rate": dict.fromkeys(PROTOCOLS, 0.0),
        "errors": {p: {} for p in PROTOCOLS},
    }
    hook: dict[str, int] = {}
    ws = dict.fromkeys(("connections", *RELAYED), 0)
    for r in reports:
        total["processes"] += 1
        for key, n in r.get("websocket", {}).items():
            if key in ws and isinstance(n, int):
                ws[key] += n
        for key in ("announces", "scrapes", "announce_rate", "scrape_rate"):
            for p in PROTOCOLS:
                total[key][p] += r.get(key, {}).get(p, 0)
        for entry in r["errors"]:
            if len(entry) == 3 and entry[0] in PROTOCOLS and isinstance(entry[2], int):
                kinds = total["errors"][entry[0]]
                kinds[entry[1]] = kinds.get(entry[1], 0) + entry[2]
        for key, n in r.get("hook", {}).items():
            hook[key] = hook.get(key, 0) + n
    for key in ("announce_rate", "scrape_rate"):
        total[key] = {p: round(v, 2) for p, v in total[key].items()}
    for key in ("announces", "scrapes", "announce_rate", "scrape_rate"):
        total[key]["total"] = round(sum(total[key][p] for p in PROTOCOLS), 2)
    if hook:
        total["hook"] = hook
    total["websocket"] = ws
    return total


# The sync hub's counters (SyncHub.status) that /metrics exports, with their help text.
HUB_COUNTERS = {
    "acks_past_laggers": "Acks and UDP replies that did not wait for a lagging process.",
    "settle_timeouts": "UDP batches whose replies went before their changes reached every "
    "process (the wait was bounded).",
}


class TrackerStats:
    """Everything /stats, /metrics and /stats.html show, for one process to serve.

    ``peer_reports`` returns the latest reports of the *other* processes (from
    sync); ``sync_status`` whatever the sync layer says about itself (lag,
    connection). Both are optional: without them the numbers are this
    process's alone, and ``scope`` says so.
    """

    def __init__(
        self,
        core: TrackerCore,
        role: str = "http",
        peer_reports: Callable[[], Iterable[bytes]] | None = None,
        sync_status: Callable[[], dict[str, Any] | None] | None = None,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.core = core
        self.role = role
        self.extra = extra  # more keys for this process's report (the cluster node's list)
        self.peer_reports = peer_reports
        self.sync_status = sync_status
        self.meter = RateMeter()
        self._stop_sharing: threading.Event | None = None
        self._totals: tuple[float, tuple[int, int, int]] = (-TOTALS_MAX_AGE, (0, 0, 0))
        self._walking = False  # a request is walking the replica for new totals

    def share(
        self,
        publish: Callable[[bytes], None],
        cluster: Callable[[], Iterable[bytes]],
        status: Callable[[], dict[str, Any] | None] | None = None,
        every: float = PUBLISH_SECONDS,
    ) -> None:
        """Join the whole-tracker view: publish this process's report every ``every``
        seconds (a thread; a greenlet under gevent) and read the others' from ``cluster``.
        """
        self.peer_reports = cluster
        self.sync_status = status
        self._stop_sharing = stop = threading.Event()
        threading.Thread(
            target=self._publish_loop,
            args=(publish, every, stop),
            name="stats-publish",
            daemon=True,
        ).start()

    def stop_sharing(self) -> None:
        if self._stop_sharing is not None:
            self._stop_sharing.set()

    def _publish_loop(
        self, publish: Callable[[bytes], None], every: float, stop: threading.Event
    ) -> None:
        while True:
            try:
                publish(self.payload())
            except Exception:
                log.exception("publishing statistics failed")
            if stop.wait(every):
                return

    def report(self) -> dict[str, Any]:
        # The lock itself, not its gate: counters only, nothing of the replica, so no
        # drain (the publisher's once a second would make an idle process look busy).
        with self.core.lock.raw:
            report = process_report(self.core, self.meter, self.role)
        if self.extra is not None:
            report.update(self.extra())
        return report

    def payload(self) -> bytes:
        """This process's report as sync's opaque STATS payload."""
        return encode_report(self.report())

    def _replica_totals(self) -> tuple[int, int, int]:
        """The replica's totals, walked at most once per TOTALS_MAX_AGE and by one request
        at a time: the others wait for its totals instead of walking too (each /stats of
        a burst started its own walk, a copy of every key and seconds of CPU at 1M
        torrents). A flag, not a lock: the walk yields, and no lock is held across a yield."""
        at, totals = self._totals
        if time.monotonic() - at < TOTALS_MAX_AGE:
            return totals
        if self._walking:
            deadline = time.monotonic() + TOTALS_WAIT
            while self._walking and time.monotonic() < deadline:
                time.sleep(TOTALS_PAUSE * 10)
            return self._totals[1]
        self._walking = True
        try:
            totals = replica_totals(self.core)
            self._totals = (time.monotonic(), totals)
        finally:
            self._walking = False
        return totals

    def snapshot(self) -> dict[str, Any]:
        """The /stats document."""
        own = self.report()
        reports = [own]
        if self.peer_reports is not None:
            for payload in self.peer_reports():
                r = decode_report(payload)
                if r is not None and r["id"] != own["id"]:
                    reports.append(r)
        merged = merge_reports(reports)
        merged["by_process"] = per_process(reports)
        # Only this machine's hub names the cluster's nodes (other nodes' reports come
        # without it), so at most one report has it.
        cluster = next((r["cluster"] for r in reports if isinstance(r.get("cluster"), dict)), None)
        hub = next((r["hub"] for r in reports if isinstance(r.get("hub"), dict)), None)
        torrents, seeders, leechers = self._replica_totals()
        with self.core.lock:
            ws_torrents, ws_seeders, ws_leechers = self.core.ws.totals()
        merged["websocket"].update(
            torrents=ws_torrents,
            peers=ws_seeders + ws_leechers,
            seeders=ws_seeders,
            leechers=ws_leechers,
        )
        sync = self.sync_status() if self.sync_status is not None else None
        # Cut off from the hub, the others' reports are stale: say it is one process's view.
        whole = self.peer_reports is not None and (sync is None or bool(sync.get("connected")))
        return {
            "scope": "tracker" if whole else "process",
            "served_by": own["id"],
            "time": round(time.time(), 3),
            "torrents": torrents,
            "peers": seeders + leechers,
            "seeders": seeders,
            "leechers": leechers,
            **merged,
            "sync": sync,
            "hub": hub,
            "cluster": cluster,
        }


def per_process(reports: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each process's own totals by its id (``role:pid``), to see how the load is spread
    (over the UDP processes sharing a port, the HTTP workers sharing a socket)."""
    shown: dict[str, dict[str, float]] = {}
    for r in reports:
        shown[r["id"]] = {
            key: round(sum(n for n in r.get(key, {}).values() if isinstance(n, int | float)), 2)
            for key in ("announces", "scrapes", "announce_rate")
        }
    return dict(sorted(shown.items()))


def replica_totals(core: TrackerCore) -> tuple[int, int, int]:
    """(torrents, seeders, leechers) of the replica, without stalling announces.

    ``SwarmStore.totals()`` walks every torrent under the lock: a second or
    more for a million torrents, during which a gevent worker answers nothing.
    Here only the keys are copied under the lock, and the swarms are read a
    chunk at a time outside it (``peek``: no reordering, expired ones skipped),
    yielding in between; counts that move meanwhile are the announces of that
    instant.
    """
    store = core.store
    with core.lock:
        keys = store.names()  # the stashed changes are folded chunk by chunk, by peek
    torrents = seeders = peers = 0
    for start in range(0, len(keys), TOTALS_CHUNK):
        if start:
            # A real (if short) sleep: under gevent, sleep(0) would run other greenlets
            # without polling sockets, so waiting announces would stay unread.
            time.sleep(TOTALS_PAUSE)
        for key in keys[start : start + TOTALS_CHUNK]:
            swarm = store.peek(key)
            if swarm is None:  # gone (or expired) since the keys were copied
                continue
            torrents += 1
            seeders += swarm.complete
            peers += len(swarm)
    return torrents, seeders, peers - seeders


# --- renderings ----------------------------------------------------------------------------


def render_json(snapshot: dict[str, Any]) -> bytes:
    return json.dumps(snapshot, separators=(",", ":"), sort_keys=True).encode()


class _SnapshotCollector:
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    # Long on purpose: a flat list of metric families, one after the other, read as a table.
    def collect(self) -> Iterable[Any]:
        s = self.snapshot
        for name, doc in (
            ("announces", "Announces answered, by protocol."),
            ("scrapes", "Scrapes answered, by protocol."),
        ):
            family = CounterMetricFamily(f"wsgi_tracker_{name}", doc, labels=["protocol"])
            for p in PROTOCOLS:
                family.add_metric([p], s[name][p])
            yield family
        errors = CounterMetricFamily(
            "wsgi_tracker_errors",
            "Requests refused, by protocol and kind.",
            labels=["protocol", "kind"],
        )
        for p in PROTOCOLS:
            for kind, n in sorted(s["errors"][p].items()):
                errors.add_metric([p, kind], n)
        yield errors
        for name, doc in (
            ("torrents", "Torrents with live peers."),
            ("peers", "Live peers."),
            ("seeders", "Live seeders."),
            ("leechers", "Live leechers."),
            ("processes", "Processes whose counters are included."),
        ):
            yield GaugeMetricFamily(f"wsgi_tracker_{name}", doc, value=s[name])
        ws = s["websocket"]
        for name, doc in (
            ("connections", "WebSocket connections held."),
            ("torrents", "Torrents with live WebSocket peers."),
            ("peers", "Live WebSocket (WebTorrent) peers."),
            ("seeders", "Live WebSocket seeders."),
        ):
            yield GaugeMetricFamily(f"wsgi_tracker_websocket_{name}", doc, value=ws[name])
        for name, doc in (
            ("announces", "Announces answered by each process (id role:pid)."),
            ("scrapes", "Scrapes answered by each process (id role:pid)."),
        ):
            family = CounterMetricFamily(f"wsgi_tracker_process_{name}", doc, labels=["process"])
            for process, totals in s.get("by_process", {}).items():
                family.add_metric([process], totals[name])
            yield family
        relayed = CounterMetricFamily(
            "wsgi_tracker_websocket_relayed",
            "WebRTC offers and answers relayed between WebSocket peers.",
            labels=["kind"],
        )
        for kind in RELAYED:
            relayed.add_metric([kind], ws[kind])
        yield relayed
        if s.get("hook"):
            hook = CounterMetricFamily(
                "wsgi_tracker_hook_events", "Announce-hook events, by outcome.", labels=["outcome"]
            )
            hook.add_metric(["delivered"], s["hook"].get("delivered", 0))
            hook.add_metric(["dropped"], s["hook"].get("dropped", 0))
            yield hook
        cluster = s.get("cluster") or {}
        if cluster.get("nodes"):
            yield GaugeMetricFamily(
                "wsgi_tracker_cluster_nodes",
                "Nodes of the cluster heard from.",
                len(cluster["nodes"]),
            )
            node_lag = GaugeMetricFamily(
                "wsgi_tracker_cluster_lag_seconds",
                "Send-to-apply time of the latest batch from each other node.",
                labels=["node"],
            )
            for n in cluster["nodes"]:
                if isinstance(n.get("lag_seconds"), int | float):
                    node_lag.add_metric([str(n.get("node"))], n["lag_seconds"])
            yield node_lag
        hub = s.get("hub") or {}
        for key, doc in HUB_COUNTERS.items():
            if isinstance(hub.get(key), int):
                yield CounterMetricFamily(f"wsgi_tracker_hub_{key}", doc, hub[key])
        lag = (s.get("sync") or {}).get("lag_seconds")
        if isinstance(lag, int | float):
            yield GaugeMetricFamily(
                "wsgi_tracker_sync_lag_seconds", "Age of the newest sync data received.", lag
            )


def render_prometheus(snapshot: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))  # type: ignore[arg-type]
    return generate_latest(registry)


PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
