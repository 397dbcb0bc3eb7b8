"""The WebTorrent tracker over real WebSocket connections to ``wsgi-tracker serve``.

Two gunicorn workers and udp-sidecar as the sync hub, as operators run it.
Which worker holds a connection is read from /proc (the server end of the
client's TCP connection is an fd of exactly one worker), so the cross-worker
relay is tested on purpose, not by luck. Every wait is bounded; nothing is
asserted about speed.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import websocket
from servers import Serve, Server, gunicorn, http_get, serve
from servers import ws_announce as announce
from servers import ws_answer as answer_to
from servers import ws_closed_with as closed_with
from servers import ws_connect as connect
from servers import ws_connect_in as connect_in
from servers import ws_eventually_scrape as eventually_scrape
from servers import ws_holder as holder
from servers import ws_offer as offer
from servers import ws_recv as recv
from servers import ws_scrape as scrape
from servers import ws_send as send

pytestmark = pytest.mark.integration

WITHIN = 15.0  # seconds: a bound on every wait, not a figure under test
IH = "w" * 20  # servers.ws_* default torrent
ABNF = websocket.ABNF


def pid(n: int) -> str:
    return f"-WW0001-{n:012d}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    # The default ws_idle_timeout (180 s): a connection a test holds while a loaded machine
    # finds it a partner in the other worker is never closed under it as idle.
    settings = 'stats_path = "/stats"\nmetrics_path = "/metrics"\n'
    with serve(tmp_path_factory.mktemp("ws"), workers=2, config=settings) as s:
        yield s


@pytest.fixture(scope="module")
def server(stack: Serve) -> Server:
    return stack.http


@pytest.fixture(scope="module")
def workers(stack: Serve) -> set[int]:
    """The two gunicorn workers (the sidecar's own children, a snapshot writer, are not)."""
    pids = stack.worker_pids()
    assert len(pids) == 2, pids
    return pids


def in_each_worker(
    server: Server, workers: set[int]
) -> tuple[websocket.WebSocket, websocket.WebSocket]:
    """Two connections held by different workers."""
    a, b = sorted(workers)
    return connect_in(server, a, workers), connect_in(server, b, workers)


# --- relaying ----------------------------------------------------------------------------


@pytest.mark.parametrize("across", [False, True], ids=["same worker", "different workers"])
def test_an_offer_reaches_a_peer_and_its_answer_comes_back(
    server: Server, workers: set[int], across: bool
) -> None:
    ih = ("X" if across else "S") * 20
    a, b = in_each_worker(server, workers)
    if not across:
        b.close()
        b = connect_in(server, holder(server, a, workers), workers)
    try:
        announce(a, pid(1), ih)
        # The seeder's worker must know the leecher before it picks offer targets.
        assert eventually_scrape(b, ih, {"complete": 0, "incomplete": 1, "downloaded": 0})
        reply = announce(b, pid(2), ih, left=0, numwant=3, offers=[offer(1), offer(2)])
        assert (reply["complete"], reply["incomplete"]) == (1, 1)
        got = recv(a)
        assert got == {
            "action": "announce",
            "info_hash": ih,
            "peer_id": pid(2),
            "offer_id": offer(1)["offer_id"],
            "offer": offer(1)["offer"],
        }
        answer_to(a, pid(1), got, ih)
        assert recv(b) == {
            "action": "announce",
            "info_hash": ih,
            "peer_id": pid(1),
            "offer_id": offer(1)["offer_id"],
            "answer": {"type": "answer", "sdp": f"answer from {pid(1)}"},
        }
    finally:
        a.close()
        b.close()


def test_scrape_counts_websocket_peers_of_every_worker(server: Server, workers: set[int]) -> None:
    ih = "C" * 20
    a, b = in_each_worker(server, workers)
    try:
        announce(a, pid(1), ih, left=0)
        announce(b, pid(2), ih)
        assert eventually_scrape(a, ih, {"complete": 1, "incomplete": 1, "downloaded": 0}) == {
            "complete": 1,
            "incomplete": 1,
            "downloaded": 0,
        }
        assert eventually_scrape(b, ih, {"complete": 1, "incomplete": 1, "downloaded": 0})
        send(b, action="announce", info_hash=ih, peer_id=pid(2), left=0, event="completed")
        recv(b)
        want = {"complete": 2, "incomplete": 0, "downloaded": 1}
        assert eventually_scrape(a, ih, want) == want
        send(a, action="scrape", info_hash=[ih, "u" * 20])
        files = recv(a)["files"]
        assert files["u" * 20] == {"complete": 0, "incomplete": 0, "downloaded": 0}
    finally:
        a.close()
        b.close()


def test_a_closed_connection_leaves_the_swarm_in_every_worker(
    server: Server, workers: set[int]
) -> None:
    ih = "L" * 20
    a, b = in_each_worker(server, workers)
    try:
        announce(a, pid(1), ih)
        assert eventually_scrape(b, ih, {"complete": 0, "incomplete": 1, "downloaded": 0})
        a.close()
        want = {"complete": 0, "incomplete": 0, "downloaded": 0}
        assert eventually_scrape(b, ih, want) == want
    finally:
        b.close()


def test_stats_and_metrics_count_websocket_peers_and_connections(
    server: Server, workers: set[int]
) -> None:
    ih = "M" * 20
    a, b = in_each_worker(server, workers)
    try:
        announce(a, pid(1), ih)
        assert eventually_scrape(b, ih, {"complete": 0, "incomplete": 1, "downloaded": 0})
        announce(b, pid(2), ih, offers=[offer(3)])
        recv(a)  # the offer

        def counted(stats: dict) -> bool:
            ws = stats["websocket"]
            return (
                ws["connections"] >= 2
                and ws["peers"] >= 2
                and ws["offer"] >= 1
                and stats["announces"]["ws"] >= 2
            )

        deadline = time.monotonic() + WITHIN
        while time.monotonic() < deadline:
            status, body = http_get(server.url + "/stats")
            assert status == 200, (status, body)
            stats = json.loads(body)
            if counted(stats):
                break
            time.sleep(0.2)
        assert counted(stats), stats
        metrics = http_get(server.url + "/metrics")[1].decode()
        assert "wsgi_tracker_websocket_peers " in metrics
        assert 'wsgi_tracker_websocket_relayed_total{kind="offer"}' in metrics
        assert 'wsgi_tracker_announces_total{protocol="ws"}' in metrics
    finally:
        a.close()
        b.close()


# --- bad input: a clear reason, no state changed -------------------------------------------


def test_not_json_closes_with_1007_and_a_reason(server: Server) -> None:
    ws = connect(server)
    ws.send("hello")
    code, reason = closed_with(ws)
    assert code == 1007 and "not JSON" in reason
    ws.close()


def test_a_binary_message_closes_with_1003(server: Server) -> None:
    ws = connect(server)
    ws.send_binary(b'{"action": "scrape"}')
    assert closed_with(ws) == (1003, "binary message: this protocol is JSON text")
    ws.close()


def test_an_oversized_frame_closes_with_1009_before_it_is_all_read(server: Server) -> None:
    ws = connect(server)
    ws.send(json.dumps({"action": "scrape", "pad": "x" * 20_000}))
    code, reason = closed_with(ws)
    assert code == 1009 and "frame over 16384 bytes" in reason
    ws.close()


def test_an_idle_connection_is_closed() -> None:
    # A server of its own: a short idle timeout on the shared stack would close the
    # connections other tests hold while they wait for the other worker.
    with gunicorn(env={"WSGI_TRACKER_WS_IDLE_TIMEOUT": "2"}) as alone:
        ws = connect(alone)
        assert closed_with(ws) == (1000, "idle for 2 s")
        ws.close()


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({"action": "connect"}, "unknown action 'connect'"),
        ({"action": "announce", "info_hash": "B" * 20, "peer_id": 5}, "peer_id must be a 20"),
        ({"action": "announce", "info_hash": "B" * 20, "peer_id": pid(5), "left": "x"}, "left"),
        (
            {
                "action": "announce",
                "info_hash": "B" * 20,
                "peer_id": pid(5),
                "offers": [offer(n) for n in range(11)],
            },
            "too many offers: 11, at most 10",
        ),
        (
            {
                "action": "announce",
                "info_hash": "B" * 20,
                "peer_id": pid(5),
                "to_peer_id": pid(6),
                "offer_id": "o" * 20,
                "answer": {"type": "answer", "sdp": ""},
            },
            "has not announced",
        ),
    ],
)
def test_a_bad_message_is_refused_and_changes_nothing(
    server: Server, msg: dict, reason: str
) -> None:
    ws = connect(server)
    try:
        send(ws, **msg)
        reply = recv(ws)
        failure = reply["failure reason"]
        assert reason in failure and "nothing was changed" in failure
        assert scrape(ws, "B" * 20) == {"complete": 0, "incomplete": 0, "downloaded": 0}
        send(ws, action="scrape", info_hash="B" * 20)  # the connection is still open
        assert recv(ws)["action"] == "scrape"
    finally:
        ws.close()


def test_an_answer_to_an_unknown_peer_is_refused(server: Server) -> None:
    ws = connect(server)
    try:
        announce(ws, pid(7), "U" * 20)
        answer_to(ws, pid(7), {"peer_id": pid(8), "offer_id": "o" * 20}, "U" * 20)
        reply = recv(ws)
        assert "answer to an unknown peer" in reply["failure reason"]
        assert reply["info_hash"] == "U" * 20
        assert scrape(ws, "U" * 20) == {"complete": 0, "incomplete": 1, "downloaded": 0}
    finally:
        ws.close()


def test_a_peer_id_in_use_elsewhere_is_refused(server: Server, workers: set[int]) -> None:
    a, b = in_each_worker(server, workers)
    try:
        announce(a, pid(9), "H" * 20)
        want = {"complete": 0, "incomplete": 1, "downloaded": 0}
        assert eventually_scrape(b, "H" * 20, want) == want
        send(b, action="announce", info_hash="H" * 20, peer_id=pid(9), left=0, event="stopped")
        assert "in use on another connection" in recv(b)["failure reason"]
        assert scrape(a, "H" * 20) == want
    finally:
        a.close()
        b.close()


def test_a_bad_upgrade_gets_an_http_error_with_the_reason(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=WITHIN) as s:
        s.sendall(
            b"GET /announce HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bad\r\n\r\n"
        )
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"Sec-WebSocket-Key is not 16 bytes of base64" in reply


def test_the_upgrade_works_under_a_mount_prefix() -> None:
    with gunicorn("tests.mounted_app:app") as mounted:
        url = f"ws://127.0.0.1:{mounted.port}/tracker/announce"
        ws = websocket.create_connection(url, timeout=WITHIN)
        try:
            assert announce(ws, pid(1), "P" * 20)["incomplete"] == 1
        finally:
            ws.close()
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(f"ws://127.0.0.1:{mounted.port}/announce", timeout=WITHIN)


def test_held_websockets_count_against_the_per_address_cap() -> None:
    """No greenlet holds an idle WebSocket, but the worker still counts it as its
    address's connection until it closes: with a cap of 3, three held sockets make the
    next connection from that address a 503; closing one frees the slot."""
    env = {"WSGI_TRACKER_HTTP_CONNECTIONS_PER_ADDRESS": "3"}
    with gunicorn("wsgi_tracker.wsgi:app", env=env) as srv:
        held = [connect(srv) for _ in range(3)]
        try:
            for n, ws in enumerate(held):
                assert announce(ws, pid(100 + n), "Q" * 20)["action"] == "announce"
            status, body = http_get(srv.url + "/announce")
            assert status == 503 and b"more than 3 connections" in body
            held.pop().close()
            for _ in range(100):  # the server sees the close within moments; bounded
                status, _ = http_get(srv.url + "/announce")
                if status == 200:
                    break
                time.sleep(0.05)
            assert status == 200
        finally:
            for ws in held:
                ws.close()
