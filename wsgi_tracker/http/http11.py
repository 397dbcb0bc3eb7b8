"""Sans-IO HTTP/1.1 request heads and response heads for the tracker's gunicorn worker.

Only what a WSGI server needs: the request line and header fields in, a WSGI
environ out; a status and header list in, response head bytes out. Bodies,
keep-alive and sockets belong to ``worker.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

MAX_HEADERS = 100
MAX_FIELD_BYTES = 8190
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")  # controls and spaces (RFC 9112 3.2)
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class HttpError(Exception):
    """A request the server refuses before the app sees it; ``status`` is the reply."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str
    version: str  # "HTTP/1.0" or "HTTP/1.1"
    headers: list[tuple[str, str]]  # names upper-cased with '-' -> '_', as WSGI spells them
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool


def parse_request_head(head: bytes, max_line: int) -> RequestHead:
    """Parse everything before the blank line that ends a request head."""
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) > max_line:
        raise HttpError("414 URI Too Long", f"request line over {max_line} bytes")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError("400 Bad Request", "malformed request line")
    method, target, version = parts
    if not method or not _TOKEN_CHARS.issuperset(method):
        raise HttpError("400 Bad Request", "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError("505 HTTP Version Not Supported", "only HTTP/1.0 and 1.1")
    if not target or _BAD_TARGET.search(target):
        raise HttpError("400 Bad Request", "malformed request target")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError("431 Request Header Fields Too Large", "too many header fields")
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    chunked = False
    connection = b""
    expect = False
    for raw in lines[1:]:
        if len(raw) > MAX_FIELD_BYTES:
            raise HttpError("431 Request Header Fields Too Large", "header field too long")
        name, sep, value = raw.partition(b":")
        if not sep or not name or not _TOKEN_CHARS.issuperset(name):
            raise HttpError("400 Bad Request", "malformed header field")
        value = value.strip(b" \t")
        low = name.lower()
        if low == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise HttpError("400 Bad Request", "invalid Content-Length")
            content_length = int(value)
        elif low == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
            if not chunked:
                raise HttpError("501 Not Implemented", "unsupported Transfer-Encoding")
        elif low == b"connection":
            connection = value.lower()
        elif low == b"expect":
            expect = value.lower() == b"100-continue"
        headers.append(
            (name.upper().replace(b"-", b"_").decode("latin-1"), value.decode("latin-1"))
        )
    if chunked and content_length is not None:
        raise HttpError("400 Bad Request", "both Content-Length and Transfer-Encoding")
    if version == b"HTTP/1.1":
        keep_alive = b"close" not in connection
    else:
        keep_alive = b"keep-alive" in connection
    return RequestHead(
        method.decode("ascii"),
        target.decode("latin-1"),
        version.decode("ascii"),
        headers,
        content_length,
        chunked,
        keep_alive,
        expect,
    )


def environ_for(req: RequestHead, base: dict[str, Any]) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of a parsed request, over the server's ``base``."""
    env = dict(base)
    target = req.target
    path, _, query = target.partition("?")
    if path.startswith(("http://", "https://")):  # absolute-form: keep only the path
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    env["REQUEST_METHOD"] = req.method
    env["PATH_INFO"] = unquote(path, "latin-1") if "%" in path else path
    env["QUERY_STRING"] = query
    env["RAW_URI"] = target
    env["SERVER_PROTOCOL"] = req.version
    for name, value in req.headers:
        if name == "CONTENT_TYPE" or name == "CONTENT_LENGTH":
            env[name] = value
            continue
        key = "HTTP_" + name
        if key in env:  # repeated fields combine into one list (RFC 9110 5.3)
            env[key] += "," + value
        else:
            env[key] = value
    return env


def response_head(
    status: str, headers: list[tuple[str, str]], keep_alive: bool, chunked: bool, date: bytes
) -> bytes:
    """Status line and header block; the server adds Date and the framing headers."""
    out = [b"HTTP/1.1 ", status.encode("latin-1"), b"\r\nDate: ", date]
    for name, value in headers:
        out += (b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1"))
    if chunked:
        out.append(b"\r\nTransfer-Encoding: chunked")
    if not keep_alive:
        out.append(b"\r\nConnection: close")
    out.append(b"\r\n\r\n")
    return b"".join(out)
