"""The worker's documented dotted path keeps working for operators' gunicorn configs."""

from gunicorn.util import load_class

from wsgi_tracker.http.worker import TrackerWorker


def test_documented_worker_path_loads_the_tracker_worker():
    assert load_class("wsgi_tracker.worker.TrackerWorker") is TrackerWorker
