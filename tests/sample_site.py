"""A WSGI site exercising what a host site needs from the tracker's worker.

Served by gunicorn in tests/integration/test_worker.py; the tracker is mounted in front.
"""

from collections.abc import Iterable, Iterator
from typing import Any

from wsgi_tracker import TrackerConfig, TrackerMiddleware


def site(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/lines":
        lines = list(environ["wsgi.input"])
        body = b"%d" % len(lines)
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream()
    if path == "/big":  # one chunk far larger than any socket buffer
        start_response("200 OK", [("Content-Length", str(len(BIG)))])
        return [BIG]
    if path == "/fail":
        raise RuntimeError("the site failed on purpose")
    if path == "/fail-in-background":  # a greenlet and a thread that fail after the reply
        _fail_in_background()
    if path in MISFRAMED:  # responses that break HTTP framing, for the worker to contain
        headers, body = MISFRAMED[path]
        start_response("200 OK", headers)
        return [body]
    body = f"site {path} {environ['QUERY_STRING']}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


BIG = bytes(range(256)) * 65536  # 16 MiB

MISFRAMED: dict[str, tuple[list[tuple[str, str]], bytes]] = {
    "/long": ([("Content-Length", "2")], b"hello world"),
    "/short": ([("Content-Length", "20")], b"hi"),
    "/inject": ([("Set-Cookie", "a=1\r\nX-Injected: 1"), ("Content-Length", "2")], b"ok"),
    "/bad-name": ([("Bad Name", "1"), ("Content-Length", "2")], b"ok"),
}


def _fail_in_background() -> None:
    import threading

    import gevent  # only this path needs it: served by the gevent worker

    def fail(what: str) -> None:
        raise RuntimeError(f"{what} failed on purpose")

    gevent.spawn(fail, "the greenlet")
    threading.Thread(target=fail, args=("the thread",), name="failing-thread").start()


def _stream() -> Iterator[bytes]:
    for n in range(3):
        yield b"part%d;" % n


app = TrackerMiddleware(site, TrackerConfig(sync_socket="off"))
