"""``wsgi_tracker.django`` in a real Django project (examples/django_site).

Under Django's own ``runserver`` and under gunicorn with two TrackerWorkers and
udp-sidecar (sync on): the site's pages answer beside the tracker, pages read
the tracker and reverse its URLs, and settings.TRACKER is read and checked.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

import bencodepy
import pytest
from servers import (
    REPO_ROOT,
    announce_url,
    django_runserver,
    gunicorn,
    http_get,
    read_to_close,
    short_tempdir,
    sidecar,
    udp_scrape,
    wait_until,
)

from examples.catalogue import CATALOGUE

pytestmark = pytest.mark.integration

MANAGE = REPO_ROOT / "examples" / "django_site" / "manage.py"
APP = "examples.django_site.wsgi:application"
TESTS = str(REPO_ROOT / "tests")


def torrents_row(base: str) -> bytes:
    page = http_get(base + "/torrents")[1].replace(b"\n", b"")
    start = page.index(CATALOGUE[0].info_hash.hex().encode())
    return page[start : page.index(b"</tr>", start)]


def test_runserver_serves_the_site_and_the_tracker():
    with django_runserver(MANAGE) as srv:
        status, home = http_get(srv.url + "/")
        assert status == 200 and f"{srv.url}/announce".encode() in home  # reverse()
        ih = CATALOGUE[0].info_hash
        for n, left in enumerate((0, 10, 10)):
            status, body = http_get(
                announce_url(srv.url + "/announce", ih, b"%020d" % n, 6000, left)
            )
            assert status == 200 and b"failure reason" not in body
        assert bencodepy.decode(body)[b"complete"] == 1
        assert torrents_row(srv.url).endswith(b"<td>1</td><td>2</td><td>0</td>")
        assert http_get(srv.url + "/no-such-page")[0] == 404  # Django's own 404


def test_gunicorn_workers_and_sidecar_share_the_django_sites_swarms():
    sock = os.path.join(short_tempdir("dj-"), "sync.sock")
    env = {"WSGI_TRACKER_SYNC_SOCKET": sock}
    with sidecar(sync_socket=sock, env=env) as udp, gunicorn(APP, workers=2, env=env) as web:
        joined = "joined the sync hub"
        assert wait_until(lambda: web.stderr().count(joined) == 2), "both workers joined the hub"
        ih = CATALOGUE[0].info_hash
        for n in range(4):
            url = announce_url(web.url + "/announce", ih, b"dj-peer-%012d" % n, 6000 + n, 5)
            assert b"failure reason" not in http_get(url)[1]
        assert wait_until(lambda: udp_scrape("127.0.0.1", udp.port, ih) == [(0, 0, 4)]), (
            "hub has 4 peers"
        )
        # Every worker renders the page from a replica that holds all four.
        for _ in range(6):
            assert torrents_row(web.url).endswith(b"<td>0</td><td>4</td><td>0</td>")


def manage(*args: str, settings: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": TESTS, "WSGI_TRACKER_SYNC_SOCKET": "off"}
    return subprocess.run(
        [sys.executable, str(MANAGE), *args, "--settings", settings],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_a_mistyped_setting_stops_django_naming_it():
    done = manage("check", settings="django_settings_typo")
    assert done.returncode != 0
    assert (
        "ImproperlyConfigured: unknown setting 'numwant_mx' in settings.TRACKER['numwant_mx'] "
        "(did you mean numwant_max?)"
    ) in done.stderr


def test_a_site_url_the_tracker_shadows_is_a_system_check_warning():
    done = manage("check", settings="django_settings_shadow")
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "(wsgi_tracker.W001) the site's URL 'scrape' (mine) is shadowed" in output
    assert manage("check", settings="examples.django_site.settings").returncode == 0


def test_a_body_django_cannot_read_is_the_clients_error_with_no_traceback():
    """A slow body raised the worker's BodyError inside request.body: Django logged
    'Internal Server Error' with a traceback (and sent got_request_exception, which error
    trackers report). Now it is Django's BadRequest: the worker answers the body's 408 and
    logs one line; a whole body read after it is answered as before."""
    env = {
        "PYTHONPATH": TESTS,
        "DJANGO_SETTINGS_MODULE": "django_settings_upload",
        "WSGI_TRACKER_HTTP_HEAD_TIMEOUT": "1",
    }
    with gunicorn(APP, env=env) as web:
        with socket.create_connection(("127.0.0.1", web.port), timeout=20) as sock:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789"
            )
            reply = read_to_close(sock)  # silent past the grace: 408
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"request body slower than 500 bytes/s" in reply
        with socket.create_connection(("127.0.0.1", web.port), timeout=20) as sock:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Content-Length: 1000\r\n\r\n" + b"x" * 1000
            )
            reply = read_to_close(sock)
        digest = hashlib.sha1(b"x" * 1000).hexdigest().encode()
        assert reply.startswith(b"HTTP/1.1 200") and b"\r\n1000 " + digest + b"\r\n" in reply
        logged = web.stderr()
        assert "Bad request body for /upload" in logged
        assert "Traceback" not in logged and "Internal Server Error" not in logged, logged
