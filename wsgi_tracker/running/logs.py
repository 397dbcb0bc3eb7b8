"""One logging configuration for every tracker process: serve, gunicorn's master and
workers, udp-sidecar.

The ``log_level`` and ``log_format`` settings decide it; every line carries its
time, level, process id and logger, as text or as one JSON object. A library
does not configure logging in its host's process, so a Flask or Django site
mounting the tracker (``flask run``, ``runserver``) keeps its own; only the
tracker's own entry points call :func:`configure`, and the project's gunicorn
config hands gunicorn :func:`gunicorn_logconfig`. Both also route the errors that
end a background greenlet or thread into logging (:func:`log_background_errors`).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
background = logging.getLogger("wsgi_tracker.background")


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
    log_background_errors()


def log_background_errors() -> None:
    """An error that ends a background greenlet or thread becomes an ERROR record.

    Left alone, gevent's hub (``Hub.print_exception``, for ``gevent.spawn``) and
    ``threading.excepthook`` (for threads, greenlets under gevent's patching)
    write the traceback straight to stderr: no time, level, pid or logger, not
    JSON under ``log_format = "json"``, so a log pipeline filtering by level or
    parsing lines misses exactly the errors nobody else reports. Call after
    gevent is imported (in a gunicorn worker: post_worker_init); without gevent
    only the thread hook is set.
    """
    threading.excepthook = _thread_failed
    hub = sys.modules.get("gevent.hub")
    if hub is not None:
        hub.Hub.print_exception = _greenlet_failed


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``'s replacement: the same facts, as a log record."""
    if args.exc_type is SystemExit:  # threading's own hook is silent about it too
        return
    name = args.thread.name if args.thread is not None else "a thread"
    _log_failure(name, args.exc_type, args.exc_value, args.exc_traceback)


def _greenlet_failed(
    hub: Any, context: object, kind: type[BaseException], value: object, tb: TracebackType | None
) -> None:
    """``Hub.print_exception``'s replacement: the same facts, as a log record."""
    if context is None or isinstance(context, str):
        where = context or "the gevent hub"
    else:
        try:
            where = hub.format_context(context)
        except Exception:  # a repr that raises must not hide the error itself
            where = repr(context)
    _log_failure(where, kind, value, tb)


def _log_failure(
    where: str, kind: type[BaseException], value: object, tb: TracebackType | None
) -> None:
    if isinstance(value, BaseException):
        background.error("%s failed with %s", where, kind.__name__, exc_info=(kind, value, tb))
    else:  # gevent may hand over a type alone, or a plain value
        background.error("%s failed with %s: %r", where, kind.__name__, value)


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
