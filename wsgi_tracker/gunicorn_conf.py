"""gunicorn settings for the tracker: gevent workers, one per core.

``wsgi-tracker serve`` runs gunicorn with this file; ``deploy/gunicorn.conf.py``
imports it so operators start from the same settings.
"""

from __future__ import annotations

import multiprocessing
import os

bind = os.environ.get("WSGI_TRACKER_BIND", "0.0.0.0:6969")
workers = int(os.environ.get("WSGI_TRACKER_WORKERS", multiprocessing.cpu_count()))
# Our lean HTTP/1.1 loop on gunicorn's gevent worker (see wsgi_tracker/worker.py for why).
worker_class = "wsgi_tracker.worker.TrackerWorker"
worker_connections = 2000
keepalive = 30
# Announces are tiny: refuse oversized request lines and headers early.
limit_request_line = 4094
limit_request_fields = 50
graceful_timeout = 10
accesslog = None
