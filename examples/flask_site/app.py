"""An ordinary Flask site that also runs a BitTorrent tracker.

The tracker takes three lines (the import, ``Tracker(app)``, and nothing else);
every page of the site keeps working.
"""

from flask import Flask

from wsgi_tracker.flask import Tracker

app = Flask(__name__)
tracker = Tracker(app)


@app.get("/")
def home() -> str:
    return (
        "<h1>Example site</h1><p>This site runs a BitTorrent tracker at "
        "<code>/announce</code> (HTTP) and <code>udp://this-host:6969/announce</code>.</p>"
        '<p><a href="/torrents">Torrents</a></p>'
    )


@app.get("/torrents")
def torrents() -> str:
    middleware = tracker.middleware
    assert middleware is not None
    rows = "".join(
        f"<li><code>{e.info_hash.hex()}</code>: {e.complete} seeders, {e.incomplete} leechers,"
        f" {e.downloaded} downloads</li>"
        for e in middleware.core.scrape(list(middleware.core.store.torrents.keys())[:100])
    )
    return f"<h1>Torrents</h1><ul>{rows or '<li>none yet</li>'}</ul>"
