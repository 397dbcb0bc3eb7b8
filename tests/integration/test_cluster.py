"""Three machines, one swarm view: three whole ``wsgi-tracker serve`` stacks joined through Redis.

Each node is a whole stack (udp-sidecar as hub and cluster node, gunicorn with
one worker), with its own ports, sync socket and snapshot file; Debian's
``redis-server`` is this module's own process on a free loopback port, with no
persistence, so restarting it is a Redis that lost everything. Every wait polls
with a bound, and no bound is a figure under test: a node with an empty disk
gets the full state from Redis (nothing re-announces in the test, and waiting
for re-announces would take half an hour), which is what is checked, not how
soon (the issue's 10 s is a speed, and speed lives in bench/; a loaded runner
must not fail it). Cross-node lag is measured by ``python -m bench.cluster_lag``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import bencodepy
import pytest
import redis
from servers import (
    REPO_ROOT,
    RedisServer,
    Serve,
    announce_url,
    http_get,
    kill_all,
    ports,
    redis_server,
    scrape_url,
    serve,
)
from servers import udp_announce as udp_announce_reply
from servers import udp_scrape as udp_scrape_hashes

pytestmark = pytest.mark.integration

NODES = 3
WITHIN = 20.0  # seconds: a bound on every wait, not a figure under test
REJOIN_WITHIN = 60.0  # a bound on the rejoin's waits (the issue asks for 10 s: bench/)
EVENT_COMPLETED = 1
T = TypeVar("T")


@dataclass
class Cluster:
    tmp: Path
    redis: RedisServer
    nodes: list[Serve] = field(default_factory=list)
    stops: list[contextlib.ExitStack] = field(default_factory=list)

    def directory(self, i: int) -> Path:
        return self.tmp / f"node{i}"

    def start(self, i: int) -> None:
        """Node ``i``: a whole ``serve`` stack with one worker (stopped by ``stop_all``)."""
        disk = self.directory(i) / "disk"
        disk.mkdir(parents=True, exist_ok=True)
        config = (
            f'redis_url = "{self.redis.url}"\ncluster_node = "node{i}"\n'
            f'cluster_snapshot_interval = 2\nsnapshot_path = "{disk / "swarms.snap"}"\n'
            'stats_path = "/stats"\nmetrics_path = "/metrics"\n'
        )
        stop = contextlib.ExitStack()
        node = stop.enter_context(serve(self.directory(i), workers=1, config=config))
        if i < len(self.nodes):
            self.nodes[i], self.stops[i] = node, stop
        else:
            self.nodes.append(node)
            self.stops.append(stop)

    def kill(self, i: int) -> None:
        """kill -9 every process of node ``i``."""
        kill_all(self.nodes[i].proc.pid)
        self.nodes[i].proc.wait()
        self.stops[i].close()

    def stop_all(self) -> None:
        for stop in self.stops:
            stop.close()

    def totals(self, ih: bytes) -> int:
        client = redis.Redis.from_url(self.redis.url)
        try:
            return int(client.hget(b"{wsgi-tracker}:downloaded", ih) or 0)
        finally:
            client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    with redis_server(tmp / "redis") as server:
        c = Cluster(tmp, server)
        try:
            for i in range(NODES):
                c.start(i)
            yield c
        finally:
            c.stop_all()


# --- clients -----------------------------------------------------------------------------


def torrent(tag: str) -> bytes:
    return f"cluster-{tag}".encode().ljust(20, b".")


def peer(tag: str, i: int) -> bytes:
    return f"-CL0001-{tag}{i}".encode().ljust(20, b"_")[:20]


def http_announce(
    stack: Serve, ih: bytes, pid: bytes, port: int, left: int, event: str = ""
) -> set[int]:
    extra = {"event": event} if event else {}
    url = announce_url(stack.http.url + "/announce", ih, pid, port, left, numwant=200, **extra)
    status, body = http_get(url)
    reply = bencodepy.decode(body)
    assert status == 200 and b"failure reason" not in reply, reply
    return ports(reply.get(b"peers", b""))


def udp_announce(
    stack: Serve, ih: bytes, pid: bytes, port: int, left: int, event: int = 0
) -> set[int]:
    return ports(
        udp_announce_reply(stack.udp.host, stack.udp.port, ih, pid, port, left, event)[20:]
    )


def http_scrape(stack: Serve, ih: bytes) -> tuple[int, int, int]:
    """(seeders, downloaded, leechers), in UDP's order."""
    _, body = http_get(scrape_url(stack.http.url + "/scrape", ih))
    files = bencodepy.decode(body)[b"files"]
    got = files.get(ih, {})
    return got.get(b"complete", 0), got.get(b"downloaded", 0), got.get(b"incomplete", 0)


def udp_scrape(stack: Serve, ih: bytes) -> tuple[int, int, int]:
    (got,) = udp_scrape_hashes(stack.udp.host, stack.udp.port, ih)
    return got


def eventually(ask: Callable[[], T], ok: Callable[[T], bool], within: float = WITHIN) -> T:
    """Ask until the answer is ok or ``within`` seconds pass; the last answer."""
    deadline = time.monotonic() + within
    got = ask()
    while not ok(got) and time.monotonic() < deadline:
        time.sleep(0.05)
        got = ask()
    return got


def every_node_hands_out(c: Cluster, ih: bytes, want: set[int], tag: str) -> dict[str, set[int]]:
    """What a fresh leecher gets from each node over each protocol, once all hold ``want``."""
    seen: dict[str, set[int]] = {}
    for i, stack in enumerate(c.nodes):
        for proto, announce in (("http", http_announce), ("udp", udp_announce)):
            probe = 30_000 + 10 * i + (proto == "udp")
            seen[f"node{i}/{proto}"] = eventually(
                lambda a=announce, s=stack, p=probe, name=f"{proto}{i}": a(
                    s, ih, peer(tag + name, 0), p, 1000
                ),
                lambda got: want <= got,
            )
    return seen


def every_node_scrapes(c: Cluster, ih: bytes, want: tuple[int, int, int]) -> dict[str, tuple]:
    seen: dict[str, tuple] = {}
    for i, stack in enumerate(c.nodes):
        seen[f"node{i}/http"] = eventually(lambda s=stack: http_scrape(s, ih), want.__eq__)
        seen[f"node{i}/udp"] = eventually(lambda s=stack: udp_scrape(s, ih), want.__eq__)
    return seen


# --- the tests ---------------------------------------------------------------------------


def test_a_peer_announced_on_one_node_is_handed_out_by_every_node(cluster: Cluster) -> None:
    ih = torrent("spread")
    http_announce(cluster.nodes[0], ih, peer("s", 0), 20_001, 1000)
    udp_announce(cluster.nodes[1], ih, peer("s", 1), 20_002, 0)
    seen = every_node_hands_out(cluster, ih, {20_001, 20_002}, "spread")
    assert all({20_001, 20_002} <= got for got in seen.values()), seen


def test_completions_spread_over_nodes_give_one_exact_count_everywhere(cluster: Cluster) -> None:
    ih = torrent("done")
    for k in range(9):
        stack = cluster.nodes[k % NODES]
        if k % 2:
            udp_announce(stack, ih, peer("d", k), 21_000 + k, 0, EVENT_COMPLETED)
        else:
            http_announce(stack, ih, peer("d", k), 21_000 + k, 0, "completed")
    seen = every_node_scrapes(cluster, ih, (9, 9, 0))
    assert set(seen.values()) == {(9, 9, 0)}, seen
    assert cluster.totals(ih) == 9
    # Re-announcing as seeders is no new download anywhere.
    http_announce(cluster.nodes[2], ih, peer("d", 0), 21_000, 0, "completed")
    seen = every_node_scrapes(cluster, ih, (9, 9, 0))
    assert set(seen.values()) == {(9, 9, 0)}, seen


def test_stats_sum_the_whole_cluster_and_list_its_nodes(cluster: Cluster) -> None:
    def stats() -> dict:
        return json.loads(http_get(cluster.nodes[1].http.url + "/stats")[1])

    got = eventually(
        stats, lambda s: s["processes"] == 2 * NODES and len(s["cluster"]["nodes"]) == NODES
    )
    assert got["processes"] == 2 * NODES, got  # each node: one worker and its sidecar
    nodes = {n["node"].split("#")[0]: n for n in got["cluster"]["nodes"]}
    assert sorted(nodes) == [f"node{i}" for i in range(NODES)], got["cluster"]
    assert nodes["node1"]["self"] and got["cluster"]["connected"]
    metrics = http_get(cluster.nodes[1].http.url + "/metrics")[1].decode()
    assert f"wsgi_tracker_cluster_nodes {NODES}.0" in metrics


def test_a_killed_node_with_its_disk_gone_rejoins_with_the_full_state(cluster: Cluster) -> None:
    ih = torrent("rejoin")
    http_announce(cluster.nodes[0], ih, peer("r", 0), 22_000, 1000)
    udp_announce(cluster.nodes[1], ih, peer("r", 1), 22_001, 0, EVENT_COMPLETED)
    http_announce(cluster.nodes[2], ih, peer("r", 2), 22_002, 0, "completed")
    every_node_scrapes(cluster, ih, (2, 2, 1))
    cluster.kill(2)
    shutil.rmtree(cluster.directory(2) / "disk")
    cluster.start(2)
    stack = cluster.nodes[2]
    started = time.monotonic()
    scraped = eventually(lambda: http_scrape(stack, ih), (2, 2, 1).__eq__, REJOIN_WITHIN)
    handed = eventually(
        lambda: http_announce(stack, ih, peer("rprobe", 0), 22_010, 1000),
        lambda got: {22_000, 22_001, 22_002} <= got,
        max(0.0, REJOIN_WITHIN - (time.monotonic() - started)),
    )
    assert scraped == (2, 2, 1), stack.log()
    assert {22_000, 22_001, 22_002} <= handed, stack.log()
    # The sidecar's replica too, with the probe as a new leecher.
    assert eventually(lambda: udp_scrape(stack, ih), (2, 2, 2).__eq__) == (2, 2, 2)


def test_after_redis_restarts_empty_the_nodes_converge_and_lose_nothing(cluster: Cluster) -> None:
    ih = torrent("outage")
    http_announce(cluster.nodes[0], ih, peer("o", 0), 23_000, 0, "completed")
    every_node_scrapes(cluster, ih, (1, 1, 0))
    logs = [len(stack.log()) for stack in cluster.nodes]
    cluster.redis.stop()
    for stack, start in zip(cluster.nodes, logs, strict=True):
        eventually(lambda s=stack, n=start: s.log()[n:], lambda log: " lost (" in log)
    # While Redis is away every node serves from its own replica.
    http_announce(cluster.nodes[0], ih, peer("o", 1), 23_001, 1000)
    udp_announce(cluster.nodes[1], ih, peer("o", 2), 23_002, 0, EVENT_COMPLETED)
    http_announce(cluster.nodes[2], ih, peer("o", 3), 23_003, 1000)
    assert udp_scrape(cluster.nodes[1], ih) == (2, 2, 0)
    cluster.redis.start()
    seen = every_node_scrapes(cluster, ih, (2, 2, 2))
    assert set(seen.values()) == {(2, 2, 2)}, seen
    handed = every_node_hands_out(cluster, ih, {23_000, 23_001, 23_002, 23_003}, "outage")
    assert all({23_000, 23_001, 23_002, 23_003} <= got for got in handed.values()), handed
    assert cluster.totals(ih) == 2
    for stack, start in zip(cluster.nodes, logs, strict=True):
        log = stack.log()[start:]
        assert log.count("cluster: Redis at") == 2, log  # lost once, back once
        assert "lost" in log and "back after" in log, log


def test_a_malformed_entry_is_skipped_with_a_warning_and_nothing_else_stops(
    cluster: Cluster,
) -> None:
    """Whoever can write to Redis can write garbage: it is refused entry by entry."""
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        client.xadd(
            b"{wsgi-tracker}:changes", {b"n": b"rogue#1", b"t": b"1", b"f": b"\0\0\0\2\5xx"}
        )
        client.xadd(b"{wsgi-tracker}:changes", {b"t": b"1"})
    finally:
        client.close()
    ih = torrent("garbage")
    http_announce(cluster.nodes[0], ih, peer("g", 0), 24_000, 0)
    every_node_scrapes(cluster, ih, (1, 0, 0))
    for stack in cluster.nodes:
        log = eventually(stack.log, lambda text: "skipping entry" in text)
        assert "of node rogue#1: peer record truncated" in log, log
        assert "lacks field b'n'" in log, log


def test_garbage_statistics_and_totals_in_redis_stop_no_node(cluster: Cluster) -> None:
    """A stats field nested past the JSON parser's depth, and totals that are no download
    count (text, past a Counts frame's u32): each is skipped with a WARNING. The nodes go
    on sharing statistics, a completion of such a torrent is counted from 0, and every
    node rejoins (its join reads every total) and replicates after."""
    stats_key, totals_key = b"{wsgi-tracker}:stats", b"{wsgi-tracker}:downloaded"
    ih, text, huge = torrent("badtotal"), torrent("texttotal"), torrent("hugetotal")
    client = redis.Redis.from_url(cluster.redis.url)
    joins = [stack.log().count(" joined at ") for stack in cluster.nodes]
    try:
        client.hset(stats_key, b"evil#2", b"[" * 100_000)
        client.hset(totals_key, mapping={ih: b"not-a-number", text: b"xyz", huge: 2**32 + 5})
        http_announce(cluster.nodes[0], ih, peer("b", 0), 25_000, 0, "completed")
        every_node_scrapes(cluster, ih, (1, 1, 0))
        assert cluster.totals(ih) == 1
        time.sleep(3)  # a few rounds of every node's statistics with the bad field in

        def fresh(c: dict) -> bool:
            return len(c["nodes"]) == NODES and all(n["stats_age_seconds"] < 3 for n in c["nodes"])

        got = eventually(
            lambda: json.loads(http_get(cluster.nodes[2].http.url + "/stats")[1])["cluster"], fresh
        )
        assert fresh(got), got
        client.client_kill_filter(_type="normal")  # every node's link: each joins again
        for stack, before in zip(cluster.nodes, joins, strict=True):
            eventually(stack.log, lambda log, n=before: log.count(" joined at ") > n)
        http_announce(cluster.nodes[1], ih, peer("b", 1), 25_001, 1000)
        every_node_scrapes(cluster, ih, (1, 1, 1))
    finally:
        client.hdel(stats_key, b"evil#2")
        client.hdel(totals_key, text, huge)
        client.close()
    for stack in cluster.nodes:
        log = stack.log()
        assert "RecursionError" not in log and "housekeeping failed" not in log, log
        assert "statistics of node 'evil#2'" in log, log
        assert "not a download count" in log, log


def test_a_node_whose_clock_runs_behind_is_listed_while_it_reports(cluster: Cluster) -> None:
    """A report's age is judged by the reading node's clock (when it first read that
    report), not by the time the report says: a node 30 s behind was never listed, its
    statistics were deleted every second, and its WebSocket peers dropped as departed."""
    client = redis.Redis.from_url(cluster.redis.url)
    key, name = b"{wsgi-tracker}:stats", "skewed#1"
    listed = []
    try:
        for i in range(16):  # a live node's reports, one every 0.5 s, 30 s behind
            doc = {"node": name, "time": time.time() - 30 + i / 2, "reports": []}
            client.hset(key, name, json.dumps(doc))
            time.sleep(0.5)
            got = json.loads(http_get(cluster.nodes[0].http.url + "/stats")[1])["cluster"]
            listed.append(any(n["node"] == name for n in got["nodes"]))
    finally:
        client.hdel(key, name)
        client.close()
    assert all(listed[-6:]), listed  # listed once its reports were read, and on
    assert eventually(
        lambda: json.loads(http_get(cluster.nodes[0].http.url + "/stats")[1])["cluster"],
        lambda c: all(n["node"] != name for n in c["nodes"]),
    )


def test_redis_url_without_the_sync_hub_is_a_one_line_error(tmp_path: Path) -> None:
    env = {"WSGI_TRACKER_REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "udp_sidecar", "--udp-bind", "127.0.0.1", "--sync-socket", "off"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "udp-sidecar: redis_url needs the sync hub (it is the cluster node); sync_socket is 'off'"
    )
