"""Statistics: counters, rates, merging processes' reports, and the three endpoints."""

from __future__ import annotations

import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import announce_url, gunicorn, http_get, scrape_url, sidecar, udp_scrape
from test_access import udp_announce

from wsgi_tracker.config import ConfigError, TrackerConfig
from wsgi_tracker.core.addresses import pack_ip
from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import Announce, PeerChange
from wsgi_tracker.http.middleware import TrackerMiddleware
from wsgi_tracker.stats.collect import (
    TOTALS_CHUNK,
    Counters,
    RateMeter,
    TrackerStats,
    decode_report,
    encode_report,
    merge_reports,
    render_prometheus,
    replica_totals,
)
from wsgi_tracker.sync.replica import stash

IH = bytes.fromhex("44" * 20)
CLIENT = pack_ip("127.0.0.1")


def pid(n: int) -> bytes:
    return b"-STATS--%012d" % n


def test_core_counts_announces_scrapes_and_errors_by_protocol(clock):
    core = TrackerCore(TrackerConfig(max_peers_per_torrent=2), clock=clock)
    for n in range(2):
        core.announce(Announce(IH, pid(n), 6881, left=1), CLIENT)
    core.announce(Announce(IH, pid(0), 6881, left=1), CLIENT, protocol="udp")
    with pytest.raises(TrackerError, match="swarm is full"):
        core.announce(Announce(IH, pid(9), 6881, left=1), CLIENT, protocol="udp")
    core.scrape([IH], protocol="udp")
    with pytest.raises(TrackerError, match="full scrape"):
        core.full_scrape()
    c = core.counters
    assert c.announces == {"http": 2, "udp": 1, "ws": 0}
    assert c.scrapes == {"http": 0, "udp": 1, "ws": 0}
    assert c.errors == {("udp", "swarm_full"): 1, ("http", "full_scrape_disabled"): 1}


def test_rate_is_averaged_over_the_last_ten_seconds(clock):
    counters = Counters()
    meter = RateMeter(clock=clock)
    assert meter.rates(counters)[0] == {"http": 0.0, "udp": 0.0, "ws": 0.0}
    for _ in range(20):
        clock.advance(1.0)
        counters.announces["http"] += 100
        counters.announces["udp"] += 10
        announce_rate, scrape_rate = meter.rates(counters)
    assert announce_rate == {"http": 100.0, "udp": 10.0, "ws": 0.0}
    assert scrape_rate == {"http": 0.0, "udp": 0.0, "ws": 0.0}
    assert len(meter.samples) <= 12


def report(id_: str, http: int, udp: int, errors=()) -> dict:
    return {
        "id": id_,
        "announces": {"http": http, "udp": udp, "ws": 0},
        "scrapes": {"http": 1, "udp": 0, "ws": 0},
        "announce_rate": {"http": 1.5, "udp": 0.0, "ws": 0.0},
        "scrape_rate": {"http": 0.0, "udp": 0.0, "ws": 0.0},
        "errors": [list(e) for e in errors],
    }


def test_reports_of_several_processes_sum_up():
    merged = merge_reports(
        [
            report("http:1", 10, 0, [("http", "malformed", 2)]),
            report("http:2", 5, 0, [("http", "malformed", 1), ("http", "torrent_not_allowed", 4)]),
            report("udp:3", 0, 7, [("udp", "connection_id", 3)]),
        ]
    )
    assert merged["processes"] == 3
    assert merged["announces"] == {"http": 15, "udp": 7, "ws": 0, "total": 22}
    assert merged["scrapes"]["total"] == 3
    assert merged["announce_rate"]["total"] == 4.5
    assert merged["errors"] == {
        "http": {"malformed": 3, "torrent_not_allowed": 4},
        "udp": {"connection_id": 3},
        "ws": {},
    }


def test_malformed_reports_from_the_wire_are_ignored():
    good = report("http:1", 1, 0)
    assert decode_report(encode_report(good)) == good
    for bad in (b"", b"\xff", b"[]", b'{"id": 3}', json.dumps({**good, "errors": {}}).encode()):
        assert decode_report(bad) is None


def test_whole_tracker_view_counts_this_process_live_and_others_from_their_reports(clock):
    core = TrackerCore(TrackerConfig(), clock=clock)
    own_id = f"http:{os.getpid()}"
    published = [
        encode_report(report("udp:42", 0, 5)),
        b"garbage",
        encode_report(report(own_id, 999, 999)),  # our own, stale: the live counters win
    ]
    stats = TrackerStats(core, peer_reports=lambda: published)
    core.announce(Announce(IH, pid(1), 6881, left=0), CLIENT)
    core.announce(Announce(IH, pid(2), 6881, left=5), CLIENT)
    snap = stats.snapshot()
    assert (snap["scope"], snap["served_by"], snap["processes"]) == ("tracker", own_id, 2)
    assert snap["announces"] == {"http": 2, "udp": 5, "ws": 0, "total": 7}
    assert (snap["torrents"], snap["peers"], snap["seeders"], snap["leechers"]) == (1, 2, 1, 1)


def test_replica_count_read_in_chunks_matches_the_store(clock):
    core = TrackerCore(TrackerConfig(), clock=clock)
    for n in range(3 * TOTALS_CHUNK + 7):  # several chunks
        ih = n.to_bytes(20, "big")
        core.announce(Announce(ih, pid(n), 6881, left=n % 3), CLIENT)
        if n % 5 == 0:
            core.announce(Announce(ih, pid(n + 10**6), 6881, left=0), CLIENT)
    assert replica_totals(core) == core.store.totals()


def test_prometheus_text_carries_every_counter_and_gauge(clock):
    core = TrackerCore(TrackerConfig(), clock=clock)
    core.announce(Announce(IH, pid(1), 6881, left=0), CLIENT)
    core.counters.error("udp", "connection_id")
    text = render_prometheus(TrackerStats(core).snapshot()).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("wsgi_tracker_announces_total", (("protocol", "http"),))] == 1
    assert samples[("wsgi_tracker_announces_total", (("protocol", "udp"),))] == 0
    key = ("wsgi_tracker_errors_total", (("kind", "connection_id"), ("protocol", "udp")))
    assert samples[key] == 1
    assert samples[("wsgi_tracker_seeders", ())] == 1
    assert samples[("wsgi_tracker_torrents", ())] == 1


# --- the WSGI endpoints ------------------------------------------------------------------


def call(app: TrackerMiddleware, path: str, query: str = "", **headers: str):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        **{"HTTP_" + k.upper(): v for k, v in headers.items()},
    }
    got: list = []
    body = b"".join(app(environ, lambda status, hdrs: got.extend([status, dict(hdrs)])))
    return got[0], got[1], body


def test_statistics_are_off_unless_configured():
    app = TrackerMiddleware(None, TrackerConfig(sync_socket="off"))
    for path in ("/stats", "/metrics", "/stats.html"):
        assert call(app, path)[0].startswith("404")


def test_statistics_paths_are_configurable_and_token_guarded():
    config = TrackerConfig(
        stats_path="/ops/s", metrics_path="/ops/m", stats_token="sekrit", sync_socket="off"
    )
    app = TrackerMiddleware(None, config)
    for path in ("/ops/s", "/ops/s.html", "/ops/m"):
        assert call(app, path)[0] == "403 Forbidden"
        assert call(app, path, "token=wrong")[0] == "403 Forbidden"
        assert call(app, path, "token=sekrit")[0] == "200 OK"
        assert call(app, path, Authorization="Bearer sekrit")[0] == "200 OK"
    _, headers, body = call(app, "/ops/s", "token=sekrit")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["scope"] == "process"
    assert call(app, "/ops/m", "token=sekrit")[1]["Content-Type"].startswith("text/plain")
    assert b'data-stats-url="s"' in call(app, "/ops/s.html", "token=sekrit")[2]
    with pytest.raises(ConfigError, match="stats_path"):
        TrackerConfig(stats_path="stats")


def test_stats_count_what_clients_did_over_http():
    config = TrackerConfig(stats_path="/stats", sync_socket="off", max_peers_per_address=100)
    app = TrackerMiddleware(None, config)
    for n in range(40):
        q = announce_url("", IH, pid(n), 6881, n % 2)[1:]
        assert b"failure" not in call(app, "/announce", q)[2]
    call(app, "/announce", announce_url("", IH, pid(0), 6881, 0, event="stopped")[1:])
    call(app, "/announce", "info_hash=short")
    call(app, "/scrape", scrape_url("", IH)[1:])
    snap = json.loads(call(app, "/stats")[2])
    assert snap["announces"] == {"http": 41, "udp": 0, "ws": 0, "total": 41}
    assert snap["scrapes"]["http"] == 1
    assert snap["errors"]["http"] == {"malformed": 1}
    assert (snap["peers"], snap["seeders"], snap["leechers"]) == (39, 19, 20)


def test_stats_page_is_self_contained():
    app = TrackerMiddleware(None, TrackerConfig(stats_path="/stats", sync_socket="off"))
    _, headers, body = call(app, "/stats.html")
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "<script" in page and "<svg" in page
    for external in ("src=", "href=", "http://", "https://", "//cdn"):
        assert external not in page


def test_stats_endpoint_answers_over_real_http():
    env = {"WSGI_TRACKER_STATS_PATH": "/stats", "WSGI_TRACKER_METRICS_PATH": "/metrics"}
    with gunicorn(env=env) as web:
        for n in range(5):
            http_get(announce_url(web.url + "/announce", IH, pid(n), 6881, n))
        snap = json.loads(http_get(web.url + "/stats")[1])
        assert snap["announces"]["http"] == 5
        assert (snap["seeders"], snap["leechers"]) == (1, 4)
        status, text = http_get(web.url + "/metrics")
        assert status == 200
        assert b'wsgi_tracker_announces_total{protocol="http"} 5.0' in text


# --- the whole tracker: gunicorn -w 3 + udp-sidecar over sync ------------------------------

WHOLE_WORKERS = 3
CONVERGE_WITHIN = 30.0  # a bound on the wait, not a figure under test


def test_every_worker_reports_exact_whole_tracker_totals(tmp_path):
    sock = str(tmp_path / "hub" / "sync.sock")
    env = {
        "WSGI_TRACKER_SYNC_SOCKET": sock,
        "WSGI_TRACKER_STATS_PATH": "/stats",
        "WSGI_TRACKER_METRICS_PATH": "/metrics",
    }
    http_n, udp_n, http_scrapes, udp_scrapes, malformed = 60, 25, 7, 4, 3
    with sidecar(sync_socket=sock, env=env) as udp, gunicorn(env=env, workers=WHOLE_WORKERS) as web:
        for n in range(http_n):  # a fresh connection each: spread over the workers
            http_get(announce_url(web.url + "/announce", IH, pid(n), 6881, n % 2))
        for n in range(udp_n):
            assert udp_announce(udp.port, IH, 1000 + n) is None
        for _ in range(http_scrapes):
            http_get(scrape_url(web.url + "/scrape", IH))
        for _ in range(udp_scrapes):
            udp_scrape("127.0.0.1", udp.port, IH)
        for _ in range(malformed):
            http_get(web.url + "/announce?info_hash=short")
        expected = {
            "announces": {"http": http_n, "udp": udp_n, "ws": 0, "total": http_n + udp_n},
            "scrapes": {"http": http_scrapes, "udp": udp_scrapes, "ws": 0, "total": 11},
            "errors": {"http": {"malformed": malformed}, "udp": {}, "ws": {}},
            "processes": WHOLE_WORKERS + 1,
            "peers": http_n + udp_n,
            "scope": "tracker",
        }
        exact: set[str] = set()
        last: dict = {}
        deadline = time.monotonic() + CONVERGE_WITHIN
        while len(exact) < WHOLE_WORKERS and time.monotonic() < deadline:
            last = json.loads(http_get(web.url + "/stats")[1])
            if {k: last[k] for k in expected} == expected:
                exact.add(last["served_by"])
            else:
                time.sleep(0.05)
        assert len(exact) == WHOLE_WORKERS, (exact, last)
        assert last["sync"]["connected"] is True
        metrics = http_get(web.url + "/metrics")[1]
        assert b'wsgi_tracker_announces_total{protocol="udp"} 25.0' in metrics
        # A worker that joined after the announces had them in its snapshot and knows
        # no lag yet; one more UDP announce is a delta every worker receives.
        assert udp_announce(udp.port, IH, 2000) is None
        lags: dict[str, float] = {}
        while len(lags) < WHOLE_WORKERS and time.monotonic() < deadline + CONVERGE_WITHIN:
            last = json.loads(http_get(web.url + "/stats")[1])
            if last["sync"]["lag_seconds"] is not None:
                lags[last["served_by"]] = last["sync"]["lag_seconds"]
        assert len(lags) == WHOLE_WORKERS and min(lags.values()) >= 0, (lags, last)
        assert b"wsgi_tracker_sync_lag_seconds " in http_get(web.url + "/metrics")[1]
        # The hub's own counters, from the sidecar's report (its clients: the workers).
        while (last["hub"] or {}).get("clients") != WHOLE_WORKERS:
            assert time.monotonic() < deadline + 2 * CONVERGE_WITHIN, last["hub"]
            time.sleep(0.05)
            last = json.loads(http_get(web.url + "/stats")[1])
        assert last["hub"]["lagging"] == 0 and last["hub"]["acks_past_laggers"] >= 0, last
        assert b"wsgi_tracker_hub_settle_timeouts_total " in http_get(web.url + "/metrics")[1]


def test_replica_count_of_a_lazy_replica_folds_chunk_by_chunk(clock):
    """A worker's replica holds other processes' changes stashed (core/pending.py): the
    count sees them all, and copying the names under the lock applies none of them (all
    at once would stall every announce for as long as applying them takes)."""
    core = TrackerCore(TrackerConfig(), clock=clock)
    changes = [
        PeerChange(
            n.to_bytes(20, "big"), pid(n), bytes([127, 0, 0, 1, 26, 225]), n % 3 == 0, 0, clock()
        )
        for n in range(2 * TOTALS_CHUNK + 3)
    ]
    stash(core.store, changes, 0, len(changes))
    assert len(core.store.names()) == len(changes) and core.store.pending.records == len(changes)
    seeders = (len(changes) + 2) // 3
    assert replica_totals(core) == (len(changes), seeders, len(changes) - seeders)
    assert core.store.pending.records == 0
