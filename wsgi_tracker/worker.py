"""``wsgi_tracker.worker.TrackerWorker``: a stable public path for the gunicorn worker.

gunicorn loads a worker class by dotted path (``-k wsgi_tracker.worker.TrackerWorker``),
operators' configs carry that path, and the first release documented it; the
worker itself lives in the HTTP layer (``wsgi_tracker.http.worker``).
"""

from wsgi_tracker.http.worker import TrackerWorker

__all__ = ["TrackerWorker"]
