"""Mounting the tracker in someone else's site: under a SCRIPT_NAME prefix, and in Flask.

The in-process tests drive the real WSGI stack (werkzeug's test client, which
builds environs the way a server does); the last one runs the example Flask
site under a real gunicorn with gevent workers. The Flask extension's own
conventions are tested in test_flask_ext.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import bencodepy
import pytest
from servers import announce_url, gunicorn, http_get, scrape_url
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from wsgi_tracker import TrackerConfig, TrackerMiddleware

OFFLINE = TrackerConfig(sync_socket="off")
IH = b"mounted-torrent-0001"


class Site:
    """A host app that records exactly what reached it and answers with its own iterable."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Any]] = []
        self.bodies: list[Iterable[bytes]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.calls.append((environ, start_response))
        start_response("201 Created", [("X-Site", "yes")])
        body = iter([b"site:", environ.get("SCRIPT_NAME", "").encode(), b"|",
                     environ.get("PATH_INFO", "").encode(), b"?",
                     environ.get("QUERY_STRING", "").encode(), b"|",
                     environ["wsgi.input"].read()])  # fmt: skip
        self.bodies.append(body)
        return body


def tracker_get(client: Client, path: str) -> dict:
    response = client.get(path)
    assert response.status_code == 200
    return bencodepy.decode(response.data)


def test_middleware_under_script_name_prefix_serves_its_paths():
    site = Site()
    mounted = DispatcherMiddleware(Site(), {"/tracker": TrackerMiddleware(site, OFFLINE)})
    client = Client(mounted)
    url = announce_url("/tracker/announce", IH, b"p" * 20, 6881, 0)
    assert tracker_get(client, url)[b"complete"] == 1
    files = tracker_get(client, scrape_url("/tracker/scrape", IH))[b"files"]
    assert files[IH][b"complete"] == 1
    assert site.calls == []


def test_middleware_passes_other_paths_through_untouched():
    site = Site()
    middleware = TrackerMiddleware(site, OFFLINE)
    client = Client(DispatcherMiddleware(Site(), {"/tracker": middleware}))
    response = client.post("/tracker/announcements/page?x=%ff&y=2", data=b"form=1")
    assert response.status_code == 201
    assert response.headers["X-Site"] == "yes"
    assert response.data == b"site:/tracker|/announcements/page?x=%ff&y=2|form=1"
    assert len(site.calls) == 1

    # Called directly: the same environ, start_response and body iterable reach the caller.
    environ = {"PATH_INFO": "/scrapes", "SCRIPT_NAME": "/t", "wsgi.input": _Empty()}

    def start_response(status, headers, exc_info=None):
        return None

    body = middleware(environ, start_response)
    assert site.calls[-1][0] is environ and site.calls[-1][1] is start_response
    assert body is site.bodies[-1]
    assert environ == {
        "PATH_INFO": "/scrapes",
        "SCRIPT_NAME": "/t",
        "wsgi.input": environ["wsgi.input"],
    }


class _Empty:
    def read(self, *_: object) -> bytes:
        return b""


@pytest.mark.integration
def test_example_flask_site_under_gunicorn_gevent_serves_pages_and_tracker():
    with gunicorn("examples.flask_site.app:app", worker_class="gevent") as srv:
        assert http_get(srv.url + "/")[0] == 200
        ih = os.urandom(20)
        for n in range(2):
            status, body = http_get(
                announce_url(srv.url + "/announce", ih, b"%020d" % n, 6000 + n, n)
            )
            assert status == 200 and b"failure reason" not in body
        assert len(bencodepy.decode(body)[b"peers"]) == 6
        status, body = http_get(scrape_url(srv.url + "/scrape", ih))
        assert bencodepy.decode(body)[b"files"][ih] == {
            b"complete": 1,
            b"downloaded": 0,
            b"incomplete": 1,
        }
        status, body = http_get(srv.url + "/torrents")
        assert status == 200 and b"<table>" in body
