"""One logging configuration for every tracker process: serve, gunicorn's master and
workers, udp-sidecar.

The ``log_level`` and ``log_format`` settings decide it; every line carries its
time, level, process id and logger, as text or as one JSON object. A library
does not configure logging in its host's process, so a Flask or Django site
mounting the tracker (``flask run``, ``runserver``) keeps its own; only the
tracker's own entry points call :func:`configure`, and the project's gunicorn
config hands gunicorn :func:`gunicorn_logconfig`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, pid, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(config: Any) -> None:
    """Send every logger's records to stderr in the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(config.log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())


def gunicorn_logconfig(config: Any) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its own loggers and the tracker's share one handler."""
    level = config.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tracker": {"()": f"{__name__}.formatter", "log_format": config.log_format}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "tracker",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["console"]},
        # gunicorn.access is left to gunicorn's own accesslog settings: configured here, it
        # would print every request to stderr and send --access-logfile's lines there too.
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["console"], "propagate": False}
        },
    }
