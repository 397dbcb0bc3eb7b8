"""The standalone tracker, telling which worker answered (``X-Worker-Pid``).

The sync cluster test runs it under gunicorn with several workers: to prove
that *every* worker's replica converged, it must know whose answer it reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from wsgi_tracker.http.middleware import make_app

tracker = make_app()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    def with_pid(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
        return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], *exc)

    return tracker(environ, with_pid)
