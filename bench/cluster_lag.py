"""Cross-node lag and what Redis costs: ``python -m bench.cluster_lag``.

Starts its own ``redis-server`` and ``--nodes`` cluster nodes on loopback, each
a ``udp-sidecar`` (its hub is the cluster node; no gunicorn, so the two cores
go to the nodes, Redis and the load: a worker's announce reaches its hub over
the Unix socket, as bench.sync_lag measures, and from the hub on its path is
the same as a UDP announce's). A paced BEP 15 sender per node announces at
``--rate`` / nodes (default 10,000 announces/s in all), peer ids tagged by
node. An observer joins node 0's hub as a worker does and records, for every
delta made on another node, ``receive time - announce time`` (wall clock, one
machine): announce on node X -> X's hub -> Redis -> node 0's hub -> a worker.

Redis's cost comes from INFO before and after the run: CPU (``used_cpu_user``
+ ``used_cpu_sys``), bytes on the wire (``total_net_input_bytes``,
``total_net_output_bytes``) and calls (``commandstats``), per 1,000
announces published (the changes in the stream's new entries, counted after
the run: a datagram a busy node dropped never reached Redis). Prints a final
``CLUSTER_RESULT`` line (key=value).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file: python bench/cluster_lag.py
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from bench.sync_lag import (  # noqa: E402
    free_port,
    observer,
    percentile,
    process,
    udp_sender,
    wait_for,
)
from wsgi_tracker.cluster.entries import Keys, split_frames  # noqa: E402
from wsgi_tracker.sync import frames as f  # noqa: E402


def _udp_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.sendto(b"\0\0\x04\x17\x27\x10\x19\x80" + bytes(8), ("127.0.0.1", port))
        return len(s.recv(64)) == 16


def redis_info(client: redis.Redis) -> dict[str, float]:
    info = client.info("all")
    out = {
        "cpu": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        "bytes_in": float(info["total_net_input_bytes"]),
        "bytes_out": float(info["total_net_output_bytes"]),
    }
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            out[key[len("cmdstat_") :]] = float(value["calls"])
    return out


@contextlib.contextmanager
def cluster(tmp: Path, count: int) -> Iterator[tuple[redis.Redis, list[tuple[int, str]]]]:
    """redis-server and ``count`` nodes: a Redis client and each node's (UDP port, socket)."""
    with contextlib.ExitStack() as stack:
        redis_port = free_port(socket.SOCK_STREAM)
        cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
        cmd += ["--dir", str(tmp), "--save", "", "--appendonly", "no"]
        stack.enter_context(process(cmd, dict(os.environ), tmp / "redis.log"))
        client = redis.Redis(port=redis_port)
        wait_for(client.ping, "redis-server")
        env = dict(os.environ, WSGI_TRACKER_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        nodes = []
        for i in range(count):
            sock = str(tmp / f"node{i}" / "sync.sock")
            port = free_port(socket.SOCK_DGRAM)
            node_env = dict(
                env, WSGI_TRACKER_CLUSTER_NODE=f"node{i}", WSGI_TRACKER_SYNC_SOCKET=sock
            )
            cmd = [
                sys.executable,
                "-m",
                "udp_sidecar",
                "--udp-bind",
                "127.0.0.1",
                "--udp-port",
                str(port),
            ]
            stack.enter_context(process(cmd, node_env, tmp / f"node{i}.log"))
            wait_for(lambda p=port: _udp_answers(p), f"node {i}")
            nodes.append((port, sock))
        yield client, nodes
        client.close()


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """One run: the load on every node, the observer on node 0, Redis's INFO around it."""
    ctx = multiprocessing.get_context("fork")
    tags = [b"-%c" % (ord("A") + i) for i in range(args.nodes)]
    with cluster(tmp, args.nodes) as (client, nodes):
        queue = ctx.Queue()
        origins = {tag: f"node{i}" for i, tag in enumerate(tags)}
        watch = ctx.Process(
            target=observer,
            args=(nodes[0][1], args.seconds + 1, queue),
            kwargs={"origins": origins},
        )
        watch.start()
        time.sleep(0.5)
        before, first = redis_info(client), last_id(client)
        loads = [
            ctx.Process(
                target=udp_sender,
                args=(port, args.rate / args.nodes, args.seconds, queue),
                kwargs={"tag": tag},
            )
            for (port, _), tag in zip(nodes, tags, strict=True)
        ]
        for load in loads:
            load.start()
        outputs = [queue.get(timeout=60 + args.seconds) for _ in range(len(loads) + 1)]
        after = redis_info(client)
        changes = published(client, first, last_id(client))
        for proc in [*loads, watch]:
            proc.join(10)
    lags = next(o for o in outputs if isinstance(o, dict))
    sent = sum(o for o in outputs if not isinstance(o, dict))
    remote = [v for name, values in lags.items() if name not in ("node0", "http") for v in values]
    results = {
        "rate": sent / args.seconds,
        "published_rate": changes / args.seconds,
        "deltas": float(len(remote)),
        "lag_p50_ms": percentile(remote, 0.50) * 1000,
        "lag_p99_ms": percentile(remote, 0.99) * 1000,
        "lag_max_ms": max(remote, default=float("nan")) * 1000,
    }
    for key in ("cpu", "bytes_in", "bytes_out", "evalsha", "xread"):
        results[f"redis_{key}_per_1k"] = (after.get(key, 0) - before.get(key, 0)) / (changes / 1000)
    return results


def published(client: redis.Redis, after: bytes, upto: bytes) -> int:
    """Changes in the stream's entries after ``after`` up to ``upto``: what Redis carried
    (a sender's datagram that a busy node dropped never got there)."""
    stream = Keys("wsgi-tracker").stream
    total = 0
    start = b"(" + after
    while entries := client.xrange(stream, start, upto, count=1000):
        for _, fields in entries:
            for _, frame in split_frames(fields[b"f"]):
                if isinstance(frame, f.Deltas):
                    total += len(frame.peers)
        start = b"(" + entries[-1][0]
    return total


def last_id(client: redis.Redis) -> bytes:
    last = client.xrevrange(Keys("wsgi-tracker").stream, count=1)
    return last[0][0] if last else b"0-0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_lag", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3, help="cluster nodes (default 3)")
    parser.add_argument("--rate", type=float, default=10_000, help="announces/s over all nodes")
    parser.add_argument("--seconds", type=float, default=6, help="length of the run")
    args = parser.parse_args(argv)
    if not shutil.which("redis-server"):
        print(
            "bench.cluster_lag: needs redis-server (apt-get install redis-server)", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="cluster-lag-") as tmp:
        r = measure(args, Path(tmp))
    print(
        f"{args.nodes} nodes, {r['rate']:,.0f} UDP announces/s sent in all, "
        f"{r['published_rate']:,.0f}/s reached Redis"
    )
    print(
        f"  cross-node lag (node 1..{args.nodes - 1} -> node 0's observer): "
        f"p50 {r['lag_p50_ms']:.2f} ms, p99 {r['lag_p99_ms']:.2f} ms, "
        f"max {r['lag_max_ms']:.2f} ms ({r['deltas']:,.0f} deltas)"
    )
    print(
        f"  Redis per 1,000 announces published: {r['redis_cpu_per_1k'] * 1000:.1f} ms CPU, "
        f"{r['redis_bytes_in_per_1k'] / 1024:.1f} KiB in, "
        f"{r['redis_bytes_out_per_1k'] / 1024:.1f} KiB out, "
        f"{r['redis_evalsha_per_1k']:.1f} EVALSHA (batches), "
        f"{r['redis_xread_per_1k']:.1f} XREAD"
    )
    print("CLUSTER_RESULT " + " ".join(f"{k}={v:.4g}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
