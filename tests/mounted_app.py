"""A host site with the tracker mounted under ``/tracker`` (werkzeug's DispatcherMiddleware).

The WebSocket tests run it under gunicorn: the upgrade must work under the
prefix, ``ws://host/tracker/announce``, as plain announces do.
"""

from __future__ import annotations

from werkzeug.middleware.dispatcher import DispatcherMiddleware

from wsgi_tracker.http.middleware import make_app, not_found

app = DispatcherMiddleware(not_found, {"/tracker": make_app()})
