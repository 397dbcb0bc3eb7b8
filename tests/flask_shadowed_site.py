"""A Flask site with its own /scrape page, which the tracker answers first (test_flask_ext.py)."""

from flask import Flask

from wsgi_tracker.flask import Tracker

app = Flask("shadowed")


@app.get("/scrape")
def site_scrape() -> str:
    return "the site's scrape page"


Tracker(app)
