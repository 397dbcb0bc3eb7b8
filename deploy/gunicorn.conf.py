"""gunicorn settings for operators: ``gunicorn -c /etc/wsgi-tracker/gunicorn.conf.py``.

Starts from the project's own settings (``wsgi_tracker/running/gunicorn_conf.py``: the
gevent-based ``TrackerWorker``, one worker per CPU, small request limits, the
sync-client hook) and adds what a deployment behind nginx needs. Every value can
still be overridden on the command line or in ``GUNICORN_CMD_ARGS``.
"""

import os

from wsgi_tracker.running.gunicorn_conf import *  # noqa: F403

# What to serve: the tracker alone, or your site with the tracker mounted
# (e.g. "mysite.wsgi:application"; docs/EMBEDDING.md). An app named on the command line wins.
wsgi_app = os.environ.get("WSGI_TRACKER_APP", "wsgi_tracker.wsgi:app")

# Loopback only: nginx is the edge, and this is its upstream (deploy/nginx.conf's __UPSTREAM__).
# A Unix socket works too ("unix:/run/wsgi-tracker-http/gunicorn.sock"); then the tracker's
# trusted_proxies must list "unix".
bind = os.environ.get("WSGI_TRACKER_BIND", "127.0.0.1:8000")

# keepalive (30 s, from the defaults) outlasts nginx's upstream keepalive_timeout (20 s), so
# nginx, not gunicorn, closes idle connections and never reuses one that is being closed.

proc_name = "wsgi-tracker"

# Under systemd (RuntimeDirectory=wsgi-tracker sets RUNTIME_DIRECTORY), gunicorn's control
# socket for `gunicornc` (gunicorn >= 25.1; older versions ignore the name) goes beside the
# sync socket instead of under $HOME, which the hardened unit does not let it write.
if os.environ.get("RUNTIME_DIRECTORY"):
    control_socket_disable = False
    control_socket = os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "gunicorn.ctl")
