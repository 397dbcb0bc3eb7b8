"""An existing Flask site, a small torrent index, that also runs its own BitTorrent tracker.

Built the way Flask sites are: an extension object at module level, an app
factory that configures and initialises it, views in a blueprint. The lines
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

from flask import Blueprint, Flask, render_template_string, request, url_for
from markupsafe import Markup

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


LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title></head>
<body><nav><a href="/">Home</a> | <a href="/torrents">Torrents</a></nav>
<h1>{{ title }}</h1>
{{ body }}
</body></html>
"""

HOME = """<p>Free and open downloads, shared over BitTorrent. This site's tracker:</p>
<ul><li><code>{{ http_url }}</code></li><li><code>{{ udp_url }}</code></li></ul>
<p>See <a href="/torrents">what is being shared</a>.</p>"""

TORRENTS = """<table>
<tr><th>Name</th><th>Info-hash</th><th>Seeders</th><th>Leechers</th><th>Downloads</th></tr>
{% for torrent, counts in rows %}<tr><td>{{ torrent.name }}</td>
<td><code>{{ torrent.info_hash.hex() }}</code></td><td>{{ counts.complete }}</td>
<td>{{ counts.incomplete }}</td><td>{{ counts.downloaded }}</td></tr>
{% endfor %}</table>"""


def page(title: str, template: str, **values: object) -> str:
    body = Markup(render_template_string(template, **values))  # already escaped
    return render_template_string(LAYOUT, title=title, body=body)


@site.get("/")
def home() -> str:
    host = urlsplit(request.host_url).hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    return page(
        "Example torrent site",
        HOME,
        http_url=url_for("wsgi_tracker.announce", _external=True),
        udp_url=f"udp://{host}:{current_tracker.config.udp_port}/announce",
    )


# Browser peers (WebTorrent) meet through the same tracker, over WebSocket on the
# announce path. ?seed=1 shares a small generated file and shows its magnet link;
# ?magnet=... downloads it and shows its SHA-256 (docs/WEBTORRENT.md).
WEBTORRENT = """<p id="status">starting</p><pre id="result"></pre>
<script type="module">
import WebTorrent from "/static/webtorrent/webtorrent.min.js";
const tracker = location.origin.replace(/^http/, "ws") + {{ announce_path|tojson }};
const params = new URLSearchParams(location.search);
const state = (window.wt = { tracker, error: null });
const show = (status) => { document.getElementById("status").textContent = status; };
const client = new WebTorrent({ dht: false, lsd: false, utPex: false });
client.on("error", (err) => { state.error = String(err); show("error: " + err); });
if (params.get("seed")) {
  const data = new Uint8Array(Number(params.get("size") || 65536));
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 8)) % 251;
  const file = new File([data], "sample.bin");
  client.seed(file, { announce: [tracker], private: false }, (torrent) => {
    state.magnet = torrent.magnetURI;
    state.infoHash = torrent.infoHash;
    torrent.on("wire", () => { state.wires = torrent.numPeers; });
    show("seeding " + torrent.infoHash);
  });
} else if (params.get("magnet")) {
  client.add(params.get("magnet"), { announce: [tracker] }, (torrent) => {
    show("downloading " + torrent.infoHash);
    torrent.on("done", async () => {
      const buffer = await torrent.files[0].arrayBuffer();
      const digest = await crypto.subtle.digest("SHA-256", buffer);
      const hex = (b) => b.toString(16).padStart(2, "0");
      state.sha256 = [...new Uint8Array(digest)].map(hex).join("");
      state.length = buffer.byteLength;
      show("done");
      document.getElementById("result").textContent = state.sha256;
    });
  });
}
</script>"""


@site.get("/webtorrent")
def webtorrent() -> str:
    return page(
        "Share in the browser", WEBTORRENT, announce_path=current_tracker.config.announce_path
    )


@site.get("/torrents")
def torrents() -> str:
    counts = live_counts(current_tracker.core, CATALOGUE)
    return page("Torrents", TORRENTS, rows=list(zip(CATALOGUE, counts, strict=True)))


app = create_app()  # what gunicorn and flask run serve
