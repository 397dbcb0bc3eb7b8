"""The HTTP tracker under a real gunicorn with gevent workers, spoken to by a plain client.

Runs once with gunicorn's stock gevent worker (``-k gevent``) and once with the
worker the project ships (``gunicorn_conf.worker_class``). Every test uses its
own info_hashes, so one server per module serves them all.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import bencodepy
import pytest
from servers import (
    Server,
    announce_url,
    gunicorn,
    has_ipv6_loopback,
    http_get,
    scrape_url,
)

from wsgi_tracker.running import gunicorn_conf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["gevent", gunicorn_conf.worker_class])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with gunicorn(worker_class=request.param) as srv:
        yield srv


def announce(srv: Server, ih: bytes, peer: bytes, port: int, left: int = 100, path="/announce",
             **extra: object) -> dict:  # fmt: skip
    status, body = http_get(announce_url(srv.url + path, ih, peer, port, left, **extra))
    assert status == 200
    return bencodepy.decode(body)


def compact_peers(reply: dict, key: bytes = b"peers", width: int = 6) -> set[tuple[bytes, int]]:
    raw = reply[key]
    assert len(raw) % width == 0
    return {
        (raw[i : i + width - 2], int.from_bytes(raw[i + width - 2 : i + width], "big"))
        for i in range(0, len(raw), width)
    }


def peer(n: int) -> bytes:
    return b"-TEST01-%012d" % n


LOOPBACK = socket.inet_aton("127.0.0.1")


def test_peers_of_one_torrent_get_each_other_compact(server: Server) -> None:
    ih = os.urandom(20)
    ports = [7001, 7002, 7003]
    for n, port in enumerate(ports):
        reply = announce(server, ih, peer(n), port, event="started")
        assert compact_peers(reply) == {(LOOPBACK, p) for p in ports[:n]}
    reply = announce(server, ih, peer(0), ports[0])
    assert compact_peers(reply) == {(LOOPBACK, 7002), (LOOPBACK, 7003)}
    assert (reply[b"complete"], reply[b"incomplete"]) == (0, 3)
    assert reply[b"min interval"] == 900
    assert 1800 <= reply[b"interval"] <= 1800 + 120


def test_non_compact_reply_lists_peers_with_and_without_ids(server: Server) -> None:
    ih = os.urandom(20)
    announce(server, ih, peer(1), 7101, left=0)
    announce(server, ih, peer(2), 7102, left=0)
    reply = announce(server, ih, peer(3), 7103, compact=0)
    assert sorted(reply[b"peers"], key=lambda p: p[b"port"]) == [
        {b"ip": b"127.0.0.1", b"port": 7101, b"peer id": peer(1)},
        {b"ip": b"127.0.0.1", b"port": 7102, b"peer id": peer(2)},
    ]
    reply = announce(server, ih, peer(3), 7103, compact=0, no_peer_id=1)
    assert sorted(p[b"port"] for p in reply[b"peers"]) == [7101, 7102]
    assert all(set(p) == {b"ip", b"port"} for p in reply[b"peers"])


def test_seeder_is_sent_leechers_only(server: Server) -> None:
    ih = os.urandom(20)
    announce(server, ih, peer(1), 7201, left=0)
    announce(server, ih, peer(2), 7202, left=5)
    reply = announce(server, ih, peer(3), 7203, left=0)
    assert compact_peers(reply) == {(LOOPBACK, 7202)}


def test_stopped_peer_is_no_longer_handed_out(server: Server) -> None:
    ih = os.urandom(20)
    announce(server, ih, peer(1), 7301)
    stopped = announce(server, ih, peer(2), 7302, event="stopped")
    assert stopped[b"peers"] == b""
    reply = announce(server, ih, peer(3), 7303)
    assert compact_peers(reply) == {(LOOPBACK, 7301)}


def test_scrape_of_two_torrents_returns_both(server: Server) -> None:
    a, b, unknown = os.urandom(20), os.urandom(20), os.urandom(20)
    announce(server, a, peer(1), 7401, left=0)
    announce(server, a, peer(2), 7402, event="started")
    announce(server, a, peer(2), 7402, left=0, event="completed")
    announce(server, b, peer(3), 7403)
    status, body = http_get(scrape_url(server.url + "/scrape", a, b, unknown))
    assert status == 200
    assert bencodepy.decode(body) == {
        b"files": {
            a: {b"complete": 2, b"downloaded": 1, b"incomplete": 0},
            b: {b"complete": 0, b"downloaded": 0, b"incomplete": 1},
            unknown: {b"complete": 0, b"downloaded": 0, b"incomplete": 0},
        }
    }


def test_a_scrape_of_the_most_hashes_fully_percent_encoded_is_answered(server: Server) -> None:
    """``max_scrape_hashes`` (64) hashes whose every byte needs %XX fit every bound on
    the way (the query's, the request line's); one more is a bencoded refusal naming the
    bound, not the HTTP server's bare 414."""
    hashes = [bytes([0x80 + n] * 20) for n in range(65)]
    status, body = http_get(scrape_url(server.url + "/scrape", *hashes[:64]))
    assert status == 200
    assert sorted(bencodepy.decode(body)[b"files"]) == hashes[:64]
    status, body = http_get(scrape_url(server.url + "/scrape", *hashes))
    assert status == 200
    assert b"at most 64" in bencodepy.decode(body)[b"failure reason"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (
            "/announce?info_hash=%00%01&peer_id=01234567890123456789&port=1&left=0",
            b"invalid info_hash: expected 20 bytes, got 2",
        ),
        (
            "/announce?info_hash=01234567890123456789&peer_id=01234567890123456789&left=0",
            b"missing parameter: port",
        ),
        (
            "/announce?info_hash=01234567890123456789&peer_id=01234567890123456789"
            "&port=99999&left=0",
            b"invalid port: 99999 is outside 1-65535",
        ),
        ("/announce", b"missing parameter: info_hash"),
        ("/scrape?info_hash=short", b"invalid info_hash: expected 20 bytes, got 5"),
        ("/scrape", b"full scrape is disabled"),
        ("/announce?" + "x=1&" * 1500, b"request too long"),
    ],
)
def test_bad_request_gets_failure_reason_with_http_200(server: Server, path, reason) -> None:
    status, body = http_get(server.url + path)
    assert status == 200
    reply = bencodepy.decode(body)
    assert list(reply) == [b"failure reason"]
    assert reply[b"failure reason"].startswith(reason)


def test_bad_request_changes_nothing(server: Server) -> None:
    ih = os.urandom(20)
    announce(server, ih, peer(1), 7501)
    http_get(announce_url(server.url + "/announce", ih, peer(2), 0, 5))  # port 0: refused
    reply = announce(server, ih, peer(3), 7503)
    assert compact_peers(reply) == {(LOOPBACK, 7501)}
    assert reply[b"incomplete"] == 2


def test_concurrent_announces_all_land(server: Server) -> None:
    ih = os.urandom(20)
    peers = range(40)

    def run(n: int) -> list[int]:
        return [
            len(announce(server, ih, peer(n), 8000 + n, left=n % 2)[b"peers"]) for _ in range(5)
        ]

    with ThreadPoolExecutor(max_workers=20) as pool:
        sizes = [size for got in pool.map(run, peers) for size in got]
    assert all(size % 6 == 0 for size in sizes)
    body = http_get(scrape_url(server.url + "/scrape", ih))[1]
    assert bencodepy.decode(body)[b"files"][ih] == {
        b"complete": 20,
        b"downloaded": 0,
        b"incomplete": 20,
    }
    reply = announce(server, ih, peer(99), 9999, numwant=200)
    assert len(compact_peers(reply)) == 40


def test_other_paths_are_not_the_trackers(server: Server) -> None:
    status, _ = http_get(server.url + "/favicon.ico")
    assert status == 404


# --- IPv6 (BEP 7) ------------------------------------------------------------------------


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this machine")
def test_ipv6_clients_get_peers6() -> None:
    with gunicorn(bind_host="::1") as srv:
        ih = os.urandom(20)
        announce(srv, ih, peer(1), 7601)
        reply = announce(srv, ih, peer(2), 7602)
        assert reply[b"peers"] == b""
        assert compact_peers(reply, b"peers6", 18) == {
            (socket.inet_pton(socket.AF_INET6, "::1"), 7601)
        }
        reply = announce(srv, ih, peer(2), 7602, compact=0)
        assert reply[b"peers"] == [{b"ip": b"::1", b"port": 7601, b"peer id": peer(1)}]


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this machine")
def test_dual_stack_server_replies_with_both_families() -> None:
    """IPv4 clients reach a [::] socket as ::ffff:a.b.c.d; they must be stored as IPv4."""
    with gunicorn(bind_host="::") as srv:
        v4 = Server(srv.proc, "127.0.0.1", srv.port, srv.stderr_path)
        v6 = Server(srv.proc, "::1", srv.port, srv.stderr_path)
        ih = os.urandom(20)
        announce(v4, ih, peer(1), 7801, left=0)
        announce(v6, ih, peer(2), 7802, left=0)
        reply = announce(v4, ih, peer(3), 7803)
        assert compact_peers(reply) == {(LOOPBACK, 7801)}
        assert compact_peers(reply, b"peers6", 18) == {
            (socket.inet_pton(socket.AF_INET6, "::1"), 7802)
        }
        reply = announce(v6, ih, peer(3), 7803, compact=0, no_peer_id=1)
        assert sorted(reply[b"peers"], key=lambda p: p[b"port"]) == [
            {b"ip": b"127.0.0.1", b"port": 7801},
            {b"ip": b"::1", b"port": 7802},
        ]


# --- the tracker under a prefix ----------------------------------------------------------


@pytest.fixture(scope="module")
def prefixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    conf = tmp_path_factory.mktemp("prefixed") / "tracker.toml"
    conf.write_text(
        '[tracker]\nannounce_path = "/tracker/announce"\nscrape_path = "/tracker/scrape"\n'
    )
    with gunicorn(config_file=str(conf)) as srv:
        yield srv


def test_tracker_answers_under_a_configured_prefix(prefixed: Server) -> None:
    ih = os.urandom(20)
    announce(prefixed, ih, peer(1), 7701, path="/tracker/announce")
    reply = announce(prefixed, ih, peer(2), 7702, path="/tracker/announce")
    assert compact_peers(reply) == {(LOOPBACK, 7701)}
    assert http_get(scrape_url(prefixed.url + "/tracker/scrape", ih))[0] == 200
    body = http_get(scrape_url(prefixed.url + "/tracker/scrape", ih))[1]
    assert bencodepy.decode(body)[b"files"][ih][b"incomplete"] == 2
    assert http_get(announce_url(prefixed.url + "/announce", ih, peer(3), 7703, 0))[0] == 404
    assert http_get(scrape_url(prefixed.url + "/scrape", ih))[0] == 404
