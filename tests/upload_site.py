"""A Flask site taking uploads beside the tracker (``Tracker(app)``), as a private site
takes .torrent files: the request body may come chunked (test_worker.py)."""

from __future__ import annotations

import hashlib

from flask import Flask, request

from wsgi_tracker.flask import Tracker

app = Flask("uploads")


@app.post("/upload")
def upload() -> str:
    data = request.get_data()
    return f"{len(data)} {hashlib.sha1(data).hexdigest()}"


@app.post("/form")
def form() -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(request.form.items()))


Tracker(app)
