"""gunicorn settings for the tracker: gevent workers, one per core.

``wsgi-tracker serve`` runs gunicorn with this file; ``deploy/gunicorn.conf.py``
imports it so operators start from the same settings.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys

from wsgi_tracker.config import ConfigError, TrackerConfig
from wsgi_tracker.core.gc_tuning import tune_gc
from wsgi_tracker.running import logs

try:
    _settings = TrackerConfig.load()
except ConfigError as exc:  # one line, not gunicorn's "Failed to read config file" traceback
    sys.exit(f"wsgi-tracker: {exc}")

bind = os.environ.get("WSGI_TRACKER_BIND", "0.0.0.0:6969")
workers = int(os.environ.get("WSGI_TRACKER_WORKERS", multiprocessing.cpu_count()))
# Our lean HTTP/1.1 loop on gunicorn's gevent worker (see wsgi_tracker/http/worker.py for why).
worker_class = "wsgi_tracker.http.worker.TrackerWorker"
worker_connections = 2000
keepalive = 30
# Announces are tiny: refuse oversized request lines and headers early. The line is
# gunicorn's ceiling (its default is 4094), above what max_query_bytes lets through (a
# scrape of 64 hashes), so the tracker's bencoded "request too long" comes first, not a
# bare 414.
limit_request_line = 8190
limit_request_fields = 50
graceful_timeout = 10
accesslog = None
# gunicorn's own lines and the tracker's, in the master and every worker: one format and level.
logconfig_dict = logs.gunicorn_logconfig(_settings)
# gunicorn >= 25.1 opens a control socket at one fixed path under $HOME, so a second
# tracker (or a test's) on the same machine collides with the first; older versions
# ignore the name. deploy/gunicorn.conf.py turns it back on in the runtime directory.
control_socket_disable = True


def post_worker_init(worker) -> None:  # type: ignore[no-untyped-def]
    """Join the sync hub before serving (after gevent has patched), or warn loudly;
    errors ending a background greenlet or thread are logged from here on.

    With several workers and no hub each worker would see only part of every
    swarm; the tracker app (or a Flask app wrapping it) syncs here, so even the
    first request gets full peer lists.
    """
    from wsgi_tracker.sync.client import warn_if_alone

    logs.log_background_errors()  # gevent is imported and patched by now
    tune_gc()
    worker.hub_hooks = True  # TrackerWorker then does not warn that nothing syncs
    tracker = _tracker(worker)
    if tracker is not None:
        logging.getLogger("wsgi_tracker.access").info(tracker.core.describe_access())
        tracker.start_sync()
        client = tracker.sync
        warn_if_alone(
            tracker.config.sync_socket_path,
            worker.cfg.workers,
            connected=client is not None and client.connected,
        )
    else:
        warn_if_alone(_settings.sync_socket_path, worker.cfg.workers)


def worker_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """Hand the hub this worker's last buffered announces before the process ends.

    Runs in the worker after it stopped serving: on SIGTERM, on a graceful
    reload (SIGHUP), and on max_requests restarts.
    """
    tracker = _tracker(worker)
    if tracker is not None and tracker.sync is not None:
        tracker.sync.stop()


def _tracker(worker):  # type: ignore[no-untyped-def]
    """The worker's TrackerMiddleware: the app itself, or a Flask app's ``wsgi_app``."""
    from wsgi_tracker.http.middleware import find_tracker

    return find_tracker(getattr(worker, "wsgi", None))  # absent if the app failed to load
