"""Development and test processes never join a live hub; production processes do.

A real udp-sidecar runs as the hub at the per-user default socket (what a
developer's machine with the tracker installed has). ``flask run``,
``manage.py runserver`` and Flask's test client serve announces from their own
replica and never reach it; gunicorn with the project's config joins it, as
does any process whose sync_socket names the hub. TrackerWorker without the
project's config (no hub hooks) warns when several workers would not sync.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servers import (
    REPO_ROOT,
    Server,
    announce_url,
    django_runserver,
    flask_run,
    gunicorn,
    http_get,
    short_tempdir,
    sidecar,
    udp_scrape,
    wait_until,
)

from examples.flask_site.app import create_app

pytestmark = pytest.mark.integration

FLASK_APP = "examples.flask_site.app"
MANAGE = REPO_ROOT / "examples" / "django_site" / "manage.py"
NO_HOOKS_WARNING = "TrackerWorker runs without the project's gunicorn config"


@pytest.fixture
def live_hub() -> Iterator[tuple[Server, dict[str, str]]]:
    """udp-sidecar as the hub at the default socket; the env that makes it the default."""
    env = {"XDG_RUNTIME_DIR": short_tempdir("xdg-"), "WSGI_TRACKER_SYNC_SOCKET": ""}
    with sidecar(env=env) as hub:
        yield hub, env


def announce(base: str, ih: bytes) -> None:
    status, body = http_get(announce_url(base + "/announce", ih, b"d" * 20, 6881, 5))
    assert status == 200 and b"failure reason" not in body


def hub_counts(hub: Server, ih: bytes) -> tuple[int, int, int]:
    return udp_scrape("127.0.0.1", hub.port, ih)[0]


def test_flask_run_and_the_test_client_stay_off_the_live_hub(live_hub, monkeypatch):
    hub, env = live_hub
    dev_ih, client_ih, prod_ih = os.urandom(20), os.urandom(20), os.urandom(20)
    with flask_run(FLASK_APP, env=env) as dev:
        announce(dev.url, dev_ih)
        monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
        app = create_app({"TESTING": True})
        response = app.test_client().get(announce_url("/announce", client_ih, b"t" * 20, 6881, 5))
        assert response.status_code == 200
        assert app.extensions["wsgi_tracker"].sync is None
        # The production layout on the same machine does join, so the hub is live:
        with gunicorn(f"{FLASK_APP}:app", env=env) as prod:
            announce(prod.url, prod_ih)
            assert wait_until(lambda: hub_counts(hub, prod_ih) == (0, 0, 1)), (
                "gunicorn's peer at the hub"
            )
            assert "joined the sync hub" in prod.stderr()
        assert hub_counts(hub, dev_ih) == (0, 0, 0)
        assert hub_counts(hub, client_ih) == (0, 0, 0)
        assert "sync hub" not in dev.stderr()


def test_runserver_stays_off_the_live_hub(live_hub):
    hub, env = live_hub
    dev_ih, prod_ih = os.urandom(20), os.urandom(20)
    with django_runserver(MANAGE, env=env) as dev:
        announce(dev.url, dev_ih)
        with gunicorn("examples.django_site.wsgi:application", env=env) as prod:
            announce(prod.url, prod_ih)
            assert wait_until(lambda: hub_counts(hub, prod_ih) == (0, 0, 1)), (
                "gunicorn's peer at the hub"
            )
        assert hub_counts(hub, dev_ih) == (0, 0, 0)
        assert "sync hub" not in dev.stderr()


def test_an_explicit_sync_socket_makes_flask_run_join(live_hub):
    hub, env = live_hub
    explicit = {
        **env,
        "WSGI_TRACKER_SYNC_SOCKET": f"{env['XDG_RUNTIME_DIR']}/wsgi-tracker/sync.sock",
    }
    ih = os.urandom(20)
    with flask_run(FLASK_APP, env=explicit) as dev:
        announce(dev.url, ih)
        assert wait_until(lambda: hub_counts(hub, ih) == (0, 0, 1)), "flask run's peer at the hub"


def test_tracker_worker_without_the_projects_config_warns_with_several_workers():
    with gunicorn(workers=2, conf=None) as several:
        assert wait_until(lambda: NO_HOOKS_WARNING in several.stderr()), "the no-hub-hooks warning"
    with gunicorn(workers=1, conf=None) as one:
        assert http_get(one.url + "/")[0] == 404  # the worker is serving: it checked already
        assert NO_HOOKS_WARNING not in one.stderr()
    with gunicorn(workers=2) as configured:  # the project's config warns in its own words
        assert wait_until(lambda: "sync is off" in configured.stderr()), "the config's warning"
        assert NO_HOOKS_WARNING not in configured.stderr()
