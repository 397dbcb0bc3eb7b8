"""gunicorn config for operators: ``gunicorn -c deploy/gunicorn.conf.py wsgi_tracker.wsgi:app``."""

from wsgi_tracker.gunicorn_conf import *  # noqa: F403
