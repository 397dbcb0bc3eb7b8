"""WebTorrent across machines: two whole ``wsgi-tracker serve`` stacks joined through Redis.

Each node is ``serve`` with two workers and its own hub (udp-sidecar as the
cluster node); Debian's ``redis-server`` is this module's own process on a
free loopback port in a temp dir. Browser-protocol clients on node A and
node B meet only through the cluster: node A's swarm lists node B's peer, an
offer made on A reaches B's socket (B's inbox stream), B's answer comes back
to A. Every wait is bounded; nothing is asserted about speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import (
    Serve,
    kill_all,
    redis_server,
    serve,
    ws_announce,
    ws_answer,
    ws_connect,
    ws_eventually_scrape,
    ws_offer,
    ws_recv,
    ws_scrape,
    ws_send,
)

pytestmark = pytest.mark.integration

WITHIN = 20.0  # seconds: a bound on every wait, not a figure under test


def node_config(url: str, name: str) -> str:
    return f'redis_url = "{url}"\ncluster_node = "{name}"\nstats_path = "/stats"\n'


@dataclass
class Nodes:
    a: Serve
    b: Serve
    redis_url: str


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    tmp = tmp_path_factory.mktemp("ws-cluster")
    with redis_server(tmp / "redis") as server, contextlib.ExitStack() as stack:
        a = stack.enter_context(serve(tmp / "a", workers=2, config=node_config(server.url, "a")))
        b = stack.enter_context(serve(tmp / "b", workers=2, config=node_config(server.url, "b")))
        yield Nodes(a, b, server.url)


def torrent(tag: str) -> str:
    return f"wscluster-{tag}".ljust(20, ".")


def peer(tag: str) -> str:
    return f"-WC0001-{tag}".ljust(20, "_")[:20]


@contextlib.contextmanager
def connection(node: Serve) -> Iterator[Any]:
    ws = ws_connect(node.http)
    try:
        yield ws
    finally:
        ws.close()


def test_an_offer_made_on_one_node_reaches_a_socket_on_the_other_and_the_answer_returns(
    nodes: Nodes,
) -> None:
    a, b = nodes.a, nodes.b
    ih = torrent("relay")
    on_a, on_b = peer("a-relay"), peer("b-relay")
    with connection(a) as ws_a, connection(b) as ws_b:
        ws_announce(ws_b, on_b, ih)
        # Node A's swarm lists node B's browser peer (WsPeers crossed through the stream).
        want = {"complete": 0, "incomplete": 1, "downloaded": 0}
        assert ws_eventually_scrape(ws_a, ih, want, WITHIN) == want
        reply = ws_announce(ws_a, on_a, ih, offers=[ws_offer(1)], numwant=1)
        assert reply["incomplete"] == 2, reply
        got = ws_recv(ws_b)  # the offer, through node B's inbox
        assert got["peer_id"] == on_a and got["offer_id"] == ws_offer(1)["offer_id"], got
        assert got["offer"] == ws_offer(1)["offer"], got
        ws_answer(ws_b, on_b, got, ih)
        back = ws_recv(ws_a)  # the answer, through node A's inbox
        assert back == {
            "action": "announce",
            "info_hash": ih,
            "peer_id": on_b,
            "offer_id": got["offer_id"],
            "answer": {"type": "answer", "sdp": f"answer from {on_b}"},
        }, back


def test_a_closed_socket_on_one_node_leaves_the_other_nodes_swarm(
    nodes: Nodes,
) -> None:
    a, b = nodes.a, nodes.b
    ih = torrent("close")
    with connection(a) as ws_a:
        with connection(b) as ws_b:
            ws_announce(ws_b, peer("b-close"), ih, left=0)
            want = {"complete": 1, "incomplete": 0, "downloaded": 0}
            assert ws_eventually_scrape(ws_a, ih, want, WITHIN) == want
        gone = {"complete": 0, "incomplete": 0, "downloaded": 0}
        assert ws_eventually_scrape(ws_a, ih, gone, WITHIN) == gone


def test_an_answer_to_a_peer_of_a_node_that_is_gone_is_refused(
    tmp_path: Path, nodes: Nodes
) -> None:
    """A third node killed -9 leaves the listing; its browser peers stop on the others
    (rather than lingering until their TTL, with every offer to them lost)."""
    a, url = nodes.a, nodes.redis_url
    ih = torrent("gone")
    with (
        serve(tmp_path / "c", workers=1, config=node_config(url, "c")) as c,
        connection(a) as ws_a,
    ):
        ws_c = ws_connect(c.http)
        ws_announce(ws_c, peer("c-gone"), ih, left=0)
        want = {"complete": 1, "incomplete": 0, "downloaded": 0}
        assert ws_eventually_scrape(ws_a, ih, want, WITHIN) == want
        kill_all(c.proc.pid)
        c.proc.wait()
        ws_c.close()
        # The listing drops a node whose report is 10 s old; bounded at twice that.
        gone = {"complete": 0, "incomplete": 0, "downloaded": 0}
        assert ws_eventually_scrape(ws_a, ih, gone, 2 * WITHIN) == gone
        ws_announce(ws_a, peer("a-gone"), ih)
        ws_send(
            ws_a,
            action="announce",
            info_hash=ih,
            peer_id=peer("a-gone"),
            to_peer_id=peer("c-gone"),
            offer_id="x" * 20,
            answer={"type": "answer", "sdp": "late"},
        )
        refused = ws_recv(ws_a)
        assert "answer to an unknown peer" in refused["failure reason"], refused
        assert ws_scrape(ws_a, ih)["incomplete"] == 1
