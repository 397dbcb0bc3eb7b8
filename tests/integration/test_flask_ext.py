"""The Flask extension as Flask sites use it.

App factories (one ``Tracker()``, several apps, state in ``app.extensions``),
flat ``TRACKER_*`` keys, a warning for site routes the tracker shadows, the
tracker's routes in ``flask routes`` and ``url_for``, ``current_tracker`` in
views. In-process tests use werkzeug's test client (the real WSGI stack); the
route listing runs the real ``flask`` command, and the shadow warning is read
from a real gunicorn's log.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import bencodepy
import pytest
from flask import Flask, url_for
from servers import REPO_ROOT, announce_url, gunicorn, scrape_url, wait_until
from werkzeug.test import EnvironBuilder

from wsgi_tracker import ConfigError, TrackerConfig
from wsgi_tracker.flask import Tracker, current_tracker

IH = b"flask-ext-torrent-01"


def make_app(name: str, **config: object) -> Flask:
    app = Flask(name)
    app.config["TRACKER_SYNC_SOCKET"] = "off"
    app.config.update(config)
    return app


def announce(app: Flask, peer: int, **extra: object) -> dict:
    url = announce_url("/announce", IH, b"%020d" % peer, 7000 + peer, 5, **extra)
    response = app.test_client().get(url)
    assert response.status_code == 200
    return bencodepy.decode(response.data)


def complete_and_incomplete(app: Flask) -> tuple[int, int]:
    files = bencodepy.decode(app.test_client().get(scrape_url("/scrape", IH)).data)[b"files"]
    return files[IH][b"complete"], files[IH][b"incomplete"]


def test_one_tracker_initialised_on_two_apps_keeps_both():
    tracker = Tracker()
    first, second = make_app("first"), make_app("second", TRACKER_NUMWANT_MAX=7)
    one, two = tracker.init_app(first), tracker.init_app(second)
    assert first.extensions["wsgi_tracker"] is one and second.extensions["wsgi_tracker"] is two
    assert one is not two and one.core is not two.core
    announce(first, 1)
    announce(first, 2)
    announce(second, 3)
    # Each app serves from its own tracker: the first app's middleware was not replaced.
    assert complete_and_incomplete(first) == (0, 2)
    assert complete_and_incomplete(second) == (0, 1)
    with first.app_context():
        assert current_tracker.config.numwant_max == 200
    with second.app_context():
        assert current_tracker.config.numwant_max == 7
        assert tracker.middleware_for() is two


def test_flat_tracker_keys_are_read():
    # 60 peers from the test client's one address: past the per-address bound's default.
    app = make_app(
        "flat",
        TRACKER_NUMWANT_MAX=55,
        TRACKER_NUMWANT_DEFAULT="20",
        TRACKER_MAX_PEERS_PER_ADDRESS=64,
    )
    Tracker(app)
    for peer in range(60):
        announce(app, peer)
    assert len(announce(app, 99, numwant=100)[b"peers"]) == 55 * 6
    assert len(announce(app, 98)[b"peers"]) == 20 * 6  # text from the environment converts
    with app.app_context():
        assert (current_tracker.config.numwant_max, current_tracker.config.numwant_default) == (
            55,
            20,
        )


def test_nested_tracker_dict_still_works_and_flat_keys_win():
    app = make_app("nested", TRACKER={"numwant_max": 10, "interval": 600}, TRACKER_NUMWANT_MAX=12)
    Tracker(app)
    with app.app_context():
        config = current_tracker.config
    assert (config.numwant_max, config.interval, config.min_interval) == (12, 600, 300)


def test_unknown_tracker_key_is_an_error_with_a_suggestion():
    app = make_app("typo", TRACKER_NUMWANT_MX=55)
    with pytest.raises(ConfigError) as info:
        Tracker(app)
    assert str(info.value) == (
        "app.config['TRACKER_NUMWANT_MX']: unknown setting (did you mean TRACKER_NUMWANT_MAX?)"
    )
    app = make_app("typo2", TRACKER={"intervl": 5})
    with pytest.raises(ConfigError, match=r"unknown setting 'intervl' .*did you mean interval"):
        Tracker(app)
    app = make_app("notadict", TRACKER="interval=5")
    with pytest.raises(ConfigError) as info:
        Tracker(app)
    assert str(info.value) == "app.config['TRACKER'] must be a dict of settings, got str"


def test_shadowed_site_routes_are_warned_about(caplog):
    app = make_app("shadow", TRACKER_STATS_PATH="/stats")

    @app.get("/scrape")
    def site_scrape() -> str:
        return "the site's scrape page"

    caplog.set_level(logging.WARNING, logger="wsgi_tracker.flask")
    tracker = Tracker()
    tracker.init_app(app)
    assert [r.getMessage() for r in caplog.records] == [
        "app 'shadow': the site route /scrape is shadowed, the tracker answers /scrape first; "
        "move the route, or the tracker (announce_path, scrape_path, stats_path)"
    ]

    # A route added after init_app (as factories register blueprints) is caught at the
    # first request, and nothing is warned twice.
    @app.get("/stats.html")
    def site_stats() -> str:
        return "the site's stats page"

    caplog.clear()
    app.test_client().get("/")
    app.test_client().get("/")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "site route /stats.html is shadowed" in messages[0]


def test_a_site_without_collisions_gets_no_warning(caplog):
    app = make_app("quiet")

    @app.get("/announcements")
    def news() -> str:
        return "news"

    caplog.set_level(logging.WARNING, logger="wsgi_tracker.flask")
    Tracker(app)
    assert app.test_client().get("/announcements").data == b"news"
    assert caplog.records == []


def test_tracker_routes_are_flask_routes_and_build_with_url_for():
    app = make_app("routes", TRACKER_METRICS_PATH="/metrics")
    Tracker(app)
    rules = {r.endpoint: r.rule for r in app.url_map.iter_rules()}
    assert rules["wsgi_tracker.announce"] == "/announce"
    assert rules["wsgi_tracker.announce_passkey"] == "/announce/<passkey>"
    assert rules["wsgi_tracker.scrape"] == "/scrape"
    assert rules["wsgi_tracker.metrics"] == "/metrics"
    with app.test_request_context():
        assert url_for("wsgi_tracker.announce_passkey", passkey="k1") == "/announce/k1"
        assert url_for("wsgi_tracker.announce", _external=True) == "http://localhost/announce"


@pytest.mark.parametrize("path", ["//announce", "///announce", "//announce/key1", "//scrape"])
def test_a_doubled_slash_before_a_tracker_path_is_answered_by_the_tracker(path):
    """werkzeug's router merges slashes, so Flask matched ``//announce`` to the tracker's
    rule: its view handed the path back to the middleware, which handed it to Flask
    again, until Python's recursion limit (a 500 and a 10 KB traceback per request)."""
    app = make_app("slashes")
    Tracker(app)
    env = EnvironBuilder(path="/", query_string=announce_url("", IH, b"%020d" % 1, 7001, 5)[1:])
    environ = env.get_environ()
    environ["PATH_INFO"] = path
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status == ["200 OK"], body[:200]
    reply = bencodepy.decode(body)
    assert b"files" in reply if "scrape" in path else b"interval" in reply, reply


def test_explicit_config_and_moved_paths_leave_the_sites_own_announce_page():
    tracker = Tracker(
        config=TrackerConfig(sync_socket="off", announce_path="/bt/announce", scrape_path="/bt/s")
    )
    app = Flask("moved")

    @app.get("/announce")
    def site_announce() -> str:
        return "the site's own page"

    tracker.init_app(app)
    client = app.test_client()
    assert client.get("/announce").data == b"the site's own page"
    assert b"interval" in client.get(announce_url("/bt/announce", IH, b"q" * 20, 9, 0)).data


def test_flask_routes_command_lists_the_tracker():
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "examples.flask_site.app", "routes"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert ["wsgi_tracker.announce", "GET", "/announce"] in lines
    assert ["wsgi_tracker.announce_passkey", "GET", "/announce/<passkey>"] in lines
    assert ["site.torrents", "GET", "/torrents"] in lines


@pytest.mark.integration
def test_the_shadow_warning_is_a_logged_warning_under_gunicorn():
    warning = re.compile(
        r"^\d{4}-\d\d-\d\d [\d:,]+ WARNING \[\d+\] wsgi_tracker.flask: app 'shadowed': "
        r"the site route /scrape is shadowed",
        re.M,
    )
    tests = str(REPO_ROOT / "tests")
    with gunicorn("flask_shadowed_site:app", extra_args=("--pythonpath", tests)) as srv:
        assert wait_until(lambda: warning.search(srv.stderr()) is not None), "the shadow warning"
