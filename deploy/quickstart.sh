#!/usr/bin/env bash
# Runs the tracker as the README's quick start: the example Flask site with the
# tracker mounted, under gunicorn (gevent workers) on :6969, plus udp-sidecar on udp/6969.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/wsgi-tracker serve --app examples.flask_site.app:app "$@"
