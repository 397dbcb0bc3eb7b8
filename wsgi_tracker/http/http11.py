"""Sans-IO HTTP/1.1 request heads and response heads for the tracker's gunicorn worker.

Only what a WSGI server needs: the request line and header fields in, a WSGI
environ out; a status and header list in, response head bytes and the body's
framing out. Bodies, keep-alive and sockets belong to ``worker.py``.

The request rules are h11's (RFC 9110/9112), so that no two parsers on the way
(a proxy, this one, the app) can read one request two ways. Where RFC 9112
leaves a choice we take the strict one, and so refuse a few heads h11 takes;
``STRICTER_THAN_H11`` names them, and the differential test in the suite holds
the two parsers to exactly that difference:

- a bare LF anywhere (h11 reads LF alone as a line end; a proxy that does not
  is how ``Host: x\\nContent-Length: 35`` smuggles a second request);
- obs-fold continuation lines (RFC 9112 5.2 lets a server refuse them);
- control bytes in a field value (h11 refuses only NUL, CR, LF, VT, FF);
- Content-Length together with Transfer-Encoding (RFC 9112 6.3: a smuggling
  sign, which a server may refuse);
- a version other than HTTP/1.x (505).

Checks run over whole byte strings with ``bytes.translate`` (a C loop) rather
than per-byte regular expressions: on a ~350-byte announce head a character-class
``re.search`` cost ~5 us, several times the translate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from mypy_extensions import mypyc_attr

# The environ key of an Upgrade request's socket hand-over, offered by TrackerWorker:
# the app calls ``environ[UPGRADE_KEY](handler)`` instead of answering, and once it
# returns the worker runs ``handler(socket, bytes_already_read, done)``; the connection
# is then the handler's, which calls ``done()`` once it has closed it (the WebSocket
# tracker uses it, see websocket/server.py).
UPGRADE_KEY = "wsgi_tracker.upgrade"

MAX_HEAD_BYTES = 65536  # a longer head is refused (431) whatever the limits say
MAX_REQUEST_LINE = 8190  # gunicorn's ceiling for limit_request_line
MAX_FIELDS = 32768  # gunicorn's ceiling for limit_request_fields
DEFAULT_FIELD_SIZE = 8190
CONTENT_LENGTH_MAX_DIGITS = 20  # h11's bound; a longer number is refused, never int()-ed

BAD_REQUEST = "400 Bad Request"
TOO_LARGE = "431 Request Header Fields Too Large"
SERVER_ERROR = "500 Internal Server Error"

_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VCHAR = bytes(range(0x21, 0x7F))
# field-value bytes (RFC 9110 5.5: VCHAR, obs-text) plus the SP and HTAB between them
_FIELD_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_FORBIDDEN = re.compile(rb"(?<!\r)\n|\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NO_BODY_STATUS = (b"1", b"204", b"304")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")  # h11's syntax; only 1.x is served

#: The refusals in which this parser is stricter than h11 (the message's start).
STRICTER_THAN_H11 = (
    "bare LF",
    "control byte",
    "obs-fold",
    "both Content-Length and Transfer-Encoding",
    "unsupported HTTP version",
)


@mypyc_attr(allow_interpreted_subclasses=True)  # chunked.BodyError, worker's errors
class HttpError(Exception):
    """A request the server refuses (or a response it will not send); ``status`` is the reply."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """gunicorn's ``limit_request_*`` settings; 0 means no limit for the line and field size."""

    line: int = 4094
    fields: int = 100
    field_size: int = DEFAULT_FIELD_SIZE

    @classmethod
    def from_gunicorn(cls, line: int, fields: int, field_size: int) -> HeadLimits:
        """The values as gunicorn's own parser reads them (its clamps, its defaults)."""
        return cls(
            line=MAX_REQUEST_LINE if line < 0 or line >= MAX_REQUEST_LINE else line,
            fields=MAX_FIELDS if fields <= 0 or fields > MAX_FIELDS else fields,
            field_size=DEFAULT_FIELD_SIZE if field_size < 0 else field_size,
        )


DEFAULT_LIMITS = HeadLimits()


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str
    version: str  # "HTTP/1.0", "HTTP/1.1" (or a later 1.x, read as 1.1: RFC 9110 2.5)
    headers: list[tuple[str, str]]  # names upper-cased with '-' -> '_', as WSGI spells them
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: list[tuple[str, str]],
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:  # compiled, unlike the one @dataclass writes (core/types.py)
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue


def parse_request_line(line: bytes, max_line: int) -> tuple[bytes, bytes, bytes]:
    """(method, target, version) of a request line, or HttpError.

    The worker also calls this on a first line that arrived without the rest of
    a head, so an HTTP/0.9 request (``GET /x`` and CRLF) is refused at once
    instead of waiting for a blank line that will never come.
    """
    if max_line and len(line) > max_line:
        raise HttpError("414 URI Too Long", f"request line over {max_line} bytes")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(BAD_REQUEST, f"malformed request line: {line[:80]!r}")
    method, target, version = parts
    if not method or method.translate(None, _TOKEN):
        raise HttpError(BAD_REQUEST, f"malformed method: {method[:40]!r}")
    if not target or target.translate(None, _VCHAR):
        raise HttpError(BAD_REQUEST, f"malformed request target: {target[:80]!r}")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if not _VERSION.fullmatch(version):
            raise HttpError(BAD_REQUEST, f"malformed HTTP version: {version[:20]!r}")
        if version[5] != ord("1"):  # HTTP/1.2-1.9 are read as 1.1 (RFC 9110 2.5)
            raise HttpError(
                "505 HTTP Version Not Supported",
                f"unsupported HTTP version {version.decode('ascii')}: only HTTP/1.x",
            )
    return method, target, version


def skip_empty_lines(data: bytes) -> bytes:
    """Drop CRLFs before a request line (RFC 9112 2.2: a server SHOULD ignore at least one).

    Counted first and cut once: cutting a pair at a time copied the rest each time, so a
    64 KiB read of CRLFs cost ~43 ms of CPU (quadratic in the read).
    """
    skip = 0
    while data.startswith(b"\r\n", skip):
        skip += 2
    return data[skip:] if skip else data


class PartialHead:
    """A request head that did not come in one read, checked as its bytes arrive.

    Without the early checks a request that can never end with CRLF CRLF (all-LF
    line ends, HTTP/0.9's bare ``GET /path``, a NUL) or whose first line is already
    too long would hold its connection until a timeout instead of getting its 400.
    Each read is checked once and the end is looked for only in the new bytes: a
    head trickled a byte a read was checked and searched whole on each, and copied
    whole to append it (quadratic: 3.3 s of CPU for a 29 KB head). A trailing CR is
    held back from the check, so no check splits a CRLF.
    """

    __slots__ = ("_checked", "_held", "_limits", "_line_done")

    def __init__(self, limits: HeadLimits = DEFAULT_LIMITS) -> None:
        self._held = bytearray()
        self._checked = 0  # how much of _held has passed the byte check
        self._line_done = False  # the request line has ended and passed
        self._limits = limits

    @property
    def data(self) -> bytes:
        """Everything held so far (the CRLFs before the request line dropped)."""
        return bytes(self._held)

    def feed(self, data: bytes) -> int:
        """Add the next bytes read: where the head's CRLF CRLF starts, or -1 until it has
        come; HttpError for what is already wrong."""
        held = self._held
        held += data
        if held[:2] == b"\r\n":  # only ever before the request line (RFC 9112 2.2)
            skip = 2
            while held.startswith(b"\r\n", skip):
                skip += 2
            del held[:skip]
            self._checked = 0
        checked = self._checked
        end = held.find(b"\r\n\r\n", max(0, checked - 3))
        if end >= 0:  # what follows may be the next request: parse_request_head checks the head
            if end > MAX_HEAD_BYTES:
                raise HttpError(TOO_LARGE, f"request head over {MAX_HEAD_BYTES} bytes")
            return end
        new = bytes(held[checked:]).removesuffix(b"\r")
        try:
            check_field_bytes(new)
        except HttpError:  # refused: say where in the whole head
            raise HttpError(BAD_REQUEST, _forbidden_byte(bytes(held))) from None
        self._checked = checked + len(new)
        limits = self._limits
        if not self._line_done:
            line_end = held.find(b"\r\n", max(0, checked - 1))
            if line_end >= 0:
                parse_request_line(bytes(held[:line_end]), limits.line)
                self._line_done = True
            elif limits.line and len(held) > limits.line:
                raise HttpError("414 URI Too Long", f"request line over {limits.line} bytes")
        if len(held) > MAX_HEAD_BYTES:
            raise HttpError(TOO_LARGE, f"request head over {MAX_HEAD_BYTES} bytes")
        return -1


def parse_request_head(head: bytes, limits: HeadLimits = DEFAULT_LIMITS) -> RequestHead:
    """Parse everything before the blank line (CRLF CRLF) that ends a request head."""
    breaks = head.count(b"\r\n")
    if head.translate(None, _FIELD_BYTES) != b"\r\n" * breaks:
        raise HttpError(BAD_REQUEST, _forbidden_byte(head))
    end = head.find(b"\r\n")
    method, target, version = parse_request_line(head if end < 0 else head[:end], limits.line)
    block = None if end < 0 else head[end + 2 :]  # None: a request line alone
    fields = _FIELDS.get(block)
    if fields is None or fields.limits is not limits:
        fields = _parse_fields(block, breaks, limits)
        if block is None or len(block) <= FIELDS_CACHE_BLOCK:
            if len(_FIELDS) >= FIELDS_CACHE_SIZE:
                _FIELDS.clear()
            _FIELDS[block] = fields
    if version == b"HTTP/1.0":
        # RFC 9112 6.1: a Transfer-Encoding in 1.0 means faulty framing: close after it
        keep_alive = b"keep-alive" in fields.connection and not fields.chunked
    else:
        if not fields.hosts and version == b"HTTP/1.1":  # h11's rule: 1.2+ are not held to it
            raise HttpError(BAD_REQUEST, "missing Host header (required in HTTP/1.1)")
        keep_alive = b"close" not in fields.connection
    return RequestHead(
        method.decode("ascii"),
        target.decode("ascii"),
        version.decode("ascii"),
        list(fields.headers),
        fields.content_length,
        fields.chunked,
        keep_alive,
        fields.expect,
    )


def check_fields(block: bytes, limits: HeadLimits) -> None:
    """Hold a block of field lines (a chunked body's trailer section) to a head's rules.

    The fields are dropped afterwards (WSGI has no place for trailers), but a
    block a head could not carry is refused the same way, so the two parsers on
    a proxy's either side cannot read the trailer as the start of a request.
    """
    check_field_bytes(block)
    _parse_fields(block, block.count(b"\r\n") + 1, limits)


def check_field_bytes(block: bytes) -> None:
    """Refuse a bare LF or CR or a control byte anywhere in field lines (or a part of them)."""
    if block.translate(None, _FIELD_BYTES) != b"\r\n" * block.count(b"\r\n"):
        raise HttpError(BAD_REQUEST, _forbidden_byte(block))


@dataclass(frozen=True, slots=True)
class _Fields:
    """What a head's header block says, whatever its request line."""

    limits: HeadLimits  # the limits it was checked against
    headers: tuple[tuple[str, str], ...]
    content_length: int | None
    chunked: bool
    hosts: int
    connection: bytes  # the Connection values, lower-cased, each after a ','
    expect: bool


# Header blocks already parsed: a client sends the same block with every request
# (wrk: one Host line; a BitTorrent client: its Host, User-Agent, Accept-Encoding), so
# only the request line is parsed again. Refused blocks are never kept; bounded, and
# so is the block kept: 512 of a client's 54 KB heads held ~55 MB in a worker (session
# 14's attack pass), where blocks of up to 2 KB (a browser's, cookies and all) hold ~3 MB.
_FIELDS: dict[bytes | None, _Fields] = {}
FIELDS_CACHE_SIZE = 512
FIELDS_CACHE_BLOCK = 2048


# Long on purpose: one pass over the fields, rule after rule in RFC 9112's order.
def _parse_fields(block: bytes | None, count: int, limits: HeadLimits) -> _Fields:
    """The header block of a head with ``count`` line breaks (its request line's included)."""
    if count > limits.fields:
        raise HttpError(TOO_LARGE, f"more than {limits.fields} header fields")
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    length_text = b""
    chunked = False
    hosts = 0
    connection = b""
    expect = False
    for raw in () if block is None else block.split(b"\r\n"):
        if limits.field_size and len(raw) > limits.field_size:
            raise HttpError(TOO_LARGE, f"header field over {limits.field_size} bytes")
        name, sep, value = raw.partition(b":")
        if not sep or not name or name.translate(None, _TOKEN):
            if raw[:1] in (b" ", b"\t"):
                raise HttpError(BAD_REQUEST, f"obs-fold line (RFC 9112 5.2): {raw[:40]!r}")
            raise HttpError(BAD_REQUEST, f"malformed header field: {raw[:40]!r}")
        value = value.strip(b" \t")
        low = name.lower()
        if low == b"host":
            hosts += 1
            if hosts > 1:
                raise HttpError(BAD_REQUEST, "more than one Host header")
        elif low == b"content-length":
            value = _content_length(value)
            if content_length is not None:
                if value != length_text:  # h11 compares the text: 5 and 05 conflict
                    raise HttpError(BAD_REQUEST, "conflicting Content-Length headers")
                continue  # an identical repeat: one field, as h11 keeps it
            length_text = value
            content_length = int(value)
        elif low == b"transfer-encoding":
            if chunked:
                raise HttpError("501 Not Implemented", "more than one Transfer-Encoding header")
            value = value.lower()
            if value != b"chunked":
                raise HttpError(
                    "501 Not Implemented", f"unsupported Transfer-Encoding: {value[:40]!r}"
                )
            chunked = True
        elif low == b"connection":
            connection += b"," + value.lower()
        elif low == b"expect":
            expect = value.lower() == b"100-continue"
        headers.append(
            (name.upper().replace(b"-", b"_").decode("latin-1"), value.decode("latin-1"))
        )
    if chunked and content_length is not None:
        raise HttpError(BAD_REQUEST, "both Content-Length and Transfer-Encoding")
    return _Fields(limits, tuple(headers), content_length, chunked, hosts, connection, expect)


def _content_length(value: bytes) -> bytes:
    """The one length a Content-Length value states ("5" or h11's "5, 5"), or HttpError."""
    if b"," in value:
        values = {part.strip(b" \t") for part in value.split(b",")}
        if len(values) != 1:
            raise HttpError(BAD_REQUEST, f"conflicting Content-Length values: {value[:40]!r}")
        value = values.pop()
    if not value.isdigit() or len(value) > CONTENT_LENGTH_MAX_DIGITS:
        raise HttpError(BAD_REQUEST, f"invalid Content-Length: {value[:40]!r}")
    return value


def _forbidden_byte(head: bytes) -> str:
    """Which byte broke the field-value rules, and where (the slow path of a refusal)."""
    match = _FORBIDDEN.search(head)
    if match is None:  # only reachable with a byte the translate table and regex disagree on
        return "control byte in the request head"
    found = match.group()
    where = f"at byte {match.start()}"
    if found == b"\n":
        return f"bare LF {where} (lines end with CRLF)"
    if found == b"\r":
        return f"bare CR {where}"
    return f"control byte {found[0]:#04x} {where}"


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


@dataclass(slots=True)
class ResponseHead:
    """A response head and how its body is framed, decided once from the app's headers."""

    data: bytes  # status line and header block, ready to send
    body: bool  # False for HEAD, 1xx, 204 and 304: whatever the app yields is not sent
    length: int | None  # the declared Content-Length: never more body bytes, nor fewer
    chunked: bool  # the body goes out in chunks (no length declared, HTTP/1.1)
    keep_alive: bool  # False: the connection closes after this response

    def __init__(
        self,
        data: bytes,
        body: bool,
        length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None:  # compiled, unlike the one @dataclass writes (core/types.py)
        self.data = data
        self.body = body
        self.length = length
        self.chunked = chunked
        self.keep_alive = keep_alive


# Statuses and header names already found valid: apps reuse a handful, so each is checked once.
_CHECKED_STATUSES: set[str] = set()
_CHECKED_NAMES: set[str] = set()


def _remember(checked: set[str], text: str) -> None:
    if len(checked) < 1024:  # bounded, whatever an app makes up
        checked.add(text)


def _check_name(name: str) -> None:
    """Refuse a response header name that is not an RFC 9110 token (500)."""
    raw = name.encode("latin-1")
    if not raw or raw.translate(None, _TOKEN):
        raise HttpError(SERVER_ERROR, f"invalid response header name from the app: {name[:40]!r}")
    _remember(_CHECKED_NAMES, name)


# Long on purpose: every framing rule for a response in one place, checked before a byte is sent.
def response_head(
    status: str,
    headers: list[tuple[str, str]],
    *,
    http10: bool,
    head_only: bool,
    keep_alive: bool,
    date: bytes,
) -> ResponseHead:
    """Validate an app's status and headers, frame its body, and encode the head.

    A CR or LF (or any control byte) in a status, header name or value would
    let the app's data split the response (``Set-Cookie`` injection), and a
    Content-Length that is not a number would leave the body unframed: both
    raise HttpError with a 500 instead, as gunicorn does.
    """
    try:
        status_b = status.encode("latin-1")
        out = [b"HTTP/1.1 ", status_b, b"\r\nDate: ", date]
        length: int | None = None
        for name, value in headers:
            if name not in _CHECKED_NAMES:
                _check_name(name)
            if not value.isprintable() and value.encode("latin-1").translate(None, _FIELD_BYTES):
                raise HttpError(
                    SERVER_ERROR, f"invalid response header from the app: {name}: {value[:60]!r}"
                )
            if name.lower() == "content-length":
                if (
                    not value.isdigit()
                    or not value.isascii()
                    or len(value) > CONTENT_LENGTH_MAX_DIGITS
                    or (length is not None and int(value) != length)
                ):
                    raise HttpError(SERVER_ERROR, f"invalid Content-Length from the app: {value!r}")
                length = int(value)
            out += (b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1"))
    except (AttributeError, TypeError, UnicodeEncodeError) as exc:
        raise HttpError(
            SERVER_ERROR, f"response status or header is not latin-1 text: {exc}"
        ) from None
    if status not in _CHECKED_STATUSES:
        if (
            not status_b[:3].isdigit()
            or status_b[3:4] not in (b"", b" ")
            or status_b.translate(None, _FIELD_BYTES)
        ):
            raise HttpError(SERVER_ERROR, f"invalid response status from the app: {status[:60]!r}")
        _remember(_CHECKED_STATUSES, status)
    chunked = False
    body = not head_only and not status_b.startswith(_NO_BODY_STATUS)
    if body and length is None:
        if http10:
            keep_alive = False  # the close marks the body's end
        else:
            chunked = True
            out.append(b"\r\nTransfer-Encoding: chunked")
    if not keep_alive:
        out.append(b"\r\nConnection: close")
    elif http10:
        out.append(b"\r\nConnection: keep-alive")
    out.append(b"\r\n\r\n")
    return ResponseHead(b"".join(out), body, length, chunked, keep_alive)
