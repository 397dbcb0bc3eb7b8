"""An existing Flask site, a small torrent index, that also runs its own BitTorrent tracker.

Built the way Flask sites are: an extension object at module level, an app
factory that configures and initialises it, views in a blueprint, pages from
``templates/`` (``render_template`` compiles each once; a template string would be
compiled again on every request, and was half a worker's CPU under load). The lines
marked ``tracker`` are all it takes: ``/announce`` and ``/scrape`` answer beside
the site's pages, ``flask routes`` lists them, pages read the tracker as
``current_tracker`` and link to it with ``url_for``. Run it as
docs/EMBEDDING.md shows: under gunicorn with udp-sidecar beside it, or alone with
``flask --app examples.flask_site.app run``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, render_template, request, url_for

from examples.catalogue import CATALOGUE, live_counts
from wsgi_tracker.flask import Tracker, current_tracker  # tracker 1/3

tracker = Tracker()  # tracker 2/3
site = Blueprint("site", __name__)


def create_app(settings: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["TRACKER_NUMWANT_MAX"] = 100  # any setting, as TRACKER_<NAME> (docs/CONFIG.md)
    app.config.update(settings or {})
    tracker.init_app(app)  # tracker 3/3
    app.register_blueprint(site)
    return app


@site.get("/")
def home() -> str:
    host = urlsplit(request.host_url).hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    return render_template(
        "home.html",
        title="Example torrent site",
        http_url=url_for("wsgi_tracker.announce", _external=True),
        udp_url=f"udp://{host}:{current_tracker.config.udp_port}/announce",
    )


# Browser peers (WebTorrent) meet through the same tracker, over WebSocket on the
# announce path. ?seed=1 shares a small generated file and shows its magnet link;
# ?magnet=... downloads it and shows its SHA-256 (docs/WEBTORRENT.md).
@site.get("/webtorrent")
def webtorrent() -> str:
    return render_template(
        "webtorrent.html",
        title="Share in the browser",
        announce_path=current_tracker.config.announce_path,
    )


@site.get("/torrents")
def torrents() -> str:
    counts = live_counts(current_tracker.core, CATALOGUE)
    return render_template(
        "torrents.html", title="Torrents", rows=list(zip(CATALOGUE, counts, strict=True))
    )


app = create_app()  # what gunicorn and flask run serve
