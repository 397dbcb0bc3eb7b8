"""Sans-IO request bodies: the bytes after a head in, the body's bytes out.

A WSGI server must read a body exactly to its end, whatever the app reads of
it: what follows is the next request on a kept-alive connection, so a body
read one byte short or long is a smuggled request. The worker feeds each read
from the socket to one of these decoders and hands the app only what they
return; ``done`` and ``rest`` say where the body ended and what came after it.

``ChunkedBody`` is RFC 9112 7.1 with h11's grammar (a chunk size of hex digits,
extensions after ``;`` that are read and dropped, trailer fields that are checked
and dropped: WSGI has no place for them), held to the same stricter rules as a
head (``http11.STRICTER_THAN_H11``: no bare LF or CR, no control byte, no
obs-fold) plus one of its own, a chunk size of at most 16 hex digits, so a size
is never a number too big to mean anything. The differential test holds it to
h11 on generated bodies.
"""

from __future__ import annotations

from collections.abc import Callable

from wsgi_tracker.http.http11 import (
    BAD_REQUEST,
    MAX_HEAD_BYTES,
    HeadLimits,
    HttpError,
    RequestHead,
    check_field_bytes,
    check_fields,
)

MAX_SIZE_DIGITS = 16
MAX_SIZE_LINE = 4096  # a chunk-size line with its extensions (h11: 16 KB, as for any line)
_HEX = b"0123456789abcdefABCDEF"
_OWS = b" \t"
_FIELD_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))  # as in a field value

#: The refusals in which this decoder is stricter than h11 (the message's start),
#: beside those of a head (http11.STRICTER_THAN_H11), which also apply to trailers.
STRICTER_THAN_H11 = ("chunk size over", "chunk size line over")

CONTENT_TOO_LARGE = "413 Content Too Large"  # RFC 9110 15.5.14


class BodyError(HttpError):
    """A request body that breaks its framing (or comes too slowly): the connection cannot
    be read past it."""

    def __init__(self, message: str, status: str = BAD_REQUEST) -> None:
        super().__init__(status, message)


def framing_for(
    req: RequestHead, limits: HeadLimits, max_body: int = 0
) -> LengthBody | ChunkedBody:
    """How a request's body ends, as its head declares (RFC 9112 6.3).

    ``max_body`` (0: none) bounds the body: a Content-Length over it is refused
    here, before the app runs; a chunked body at the chunk that would pass it.
    """
    if req.chunked:
        return ChunkedBody(limits, max_body)
    length = req.content_length or 0
    if max_body and length > max_body:
        raise BodyError(
            f"request body of {length} bytes is over the limit of {max_body}", CONTENT_TOO_LARGE
        )
    return LengthBody(length)


class LengthBody:
    """A body of Content-Length bytes (0 for a request without one)."""

    __slots__ = ("left", "rest")

    def __init__(self, length: int) -> None:
        self.left = length  # body bytes still to come
        self.rest = b""  # what came after the body (valid once done)

    @property
    def done(self) -> bool:
        return self.left == 0

    def wire_left(self) -> int | None:
        """Bytes known to be still on the wire (None: unknown until they are read)."""
        return self.left

    def feed(self, data: bytes) -> bytes:
        if self.left >= len(data):
            self.left -= len(data)
            return data
        body, self.rest = data[: self.left], data[self.left :]
        self.left = 0
        return body


class ChunkedBody:
    """A ``Transfer-Encoding: chunked`` body, decoded as its bytes arrive."""

    __slots__ = (
        "_buf", "_checked", "_in_chunk", "_left", "_limits", "_max", "_state", "_trailer", "rest"
    )  # fmt: skip

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)

    def __init__(self, limits: HeadLimits, max_body: int = 0) -> None:
        self._limits = limits  # bound the trailer fields as a head's fields are bounded
        self._max = max_body  # 0: no bound on the body's length
        self._left = max_body  # data bytes the chunks still to come may carry
        self._buf = b""  # undecoded bytes: a partial size line, chunk end or trailer
        self._state = self._SIZE
        self._in_chunk = 0  # data bytes left in the current chunk
        self._trailer = bytearray()  # the trailer section so far (state _TRAILER)
        self._checked = 0  # how much of it has passed check_field_bytes
        self.rest = b""

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def wire_left(self) -> int | None:
        return 0 if self._state == self._DONE else None

    # Long on purpose: one state machine, each state's rule beside the others.
    def feed(self, data: bytes) -> bytes:
        """The body bytes in ``data`` (and what was held back from earlier feeds);
        BodyError if the framing breaks. Bytes past the end go to ``rest``."""
        if self._state == self._DONE:
            self.rest += data
            return b""
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out: list[bytes] = []
        pos = 0
        while pos < len(buf):
            state = self._state
            if state == self._DATA:
                take = min(self._in_chunk, len(buf) - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._in_chunk -= take
                if not self._in_chunk:
                    self._state = self._DATA_END
                continue
            if state == self._DATA_END:
                crlf = buf[pos : pos + 2]
                if crlf != b"\r\n"[: len(crlf)]:
                    raise BodyError(f"chunk data not followed by CRLF: {crlf!r}")
                if len(crlf) < 2:
                    break
                pos += 2
                self._state = self._SIZE
                continue
            if state == self._SIZE:
                line_end = buf.find(b"\r\n", pos)
                line = buf[pos:] if line_end < 0 else buf[pos:line_end]
                if len(line) > MAX_SIZE_LINE:
                    raise BodyError(f"chunk size line over {MAX_SIZE_LINE} bytes")
                if line_end < 0:
                    _check_size_start(line)
                    break
                pos = line_end + 2
                self._in_chunk = _chunk_size(line)
                if self._max:
                    self._left -= self._in_chunk
                    if self._left < 0:  # refused at its size line, before its data comes
                        raise BodyError(
                            f"chunked request body over the limit of {self._max} bytes",
                            CONTENT_TOO_LARGE,
                        )
                self._state = self._DATA if self._in_chunk else self._TRAILER
                continue
            self._feed_trailer(buf[pos:])
            pos = len(buf)
        self._buf = buf[pos:]
        return b"".join(out)

    def _feed_trailer(self, data: bytes) -> None:
        """The trailer section (field lines up to an empty line), held as it arrives.

        Each byte is checked once as it comes and the end is looked for only in the
        new bytes: a trailer trickled a byte a read would otherwise be scanned whole
        on each (quadratic: a 32 KB one cost 4 s of CPU). A trailing CR is held back
        from the check, so the check never splits a CRLF.
        """
        held = self._trailer
        start = len(held)
        held += data
        if held.startswith(b"\r\n"):
            end, block = 0, b""
        else:
            end = held.find(b"\r\n\r\n", max(0, start - 3))
            if (end if end >= 0 else len(held)) > MAX_HEAD_BYTES:
                raise BodyError(f"trailer section over {MAX_HEAD_BYTES} bytes")
            if end < 0:  # an early refusal where h11 would read LF alone as a line end
                new = bytes(held[self._checked :]).removesuffix(b"\r")
                try:
                    check_field_bytes(new)
                except HttpError:  # refused: checked again whole, to say where in it
                    _check_trailer(check_field_bytes, bytes(held).removesuffix(b"\r"))
                    raise
                self._checked += len(new)
                return
            block, end = bytes(held[:end]), end + 2
            _check_trailer(lambda b: check_fields(b, self._limits), block)
        self.rest = bytes(held[end + 2 :])
        self._trailer = bytearray()
        self._state = self._DONE


def _check_trailer(check: Callable[[bytes], None], block: bytes) -> None:
    try:
        check(block)
    except HttpError as exc:
        raise BodyError(f"trailer: {exc}") from None


def _check_size_start(line: bytes) -> None:
    """Refuse a partial size line at once if it can never become valid."""
    digits = len(line) - len(line.lstrip(_HEX))
    if line and not digits:
        raise BodyError(f"malformed chunk size: {line[:40]!r}")
    if digits > MAX_SIZE_DIGITS:
        raise BodyError(f"chunk size over {MAX_SIZE_DIGITS} hex digits")


def _chunk_size(line: bytes) -> int:
    """The size a chunk-size line states: HEXDIG+, then ``;`` extensions (dropped), OWS."""
    size = line.rstrip(_OWS)
    ext = b""
    semi = size.find(b";")
    if semi >= 0:
        size, ext = size[:semi], size[semi:]
    if not size or size.translate(None, _HEX):
        raise BodyError(f"malformed chunk size: {line[:40]!r}")
    if len(size) > MAX_SIZE_DIGITS:
        raise BodyError(f"chunk size over {MAX_SIZE_DIGITS} hex digits")
    if b"\n" in ext or b"\r" in ext:
        raise BodyError(f"bare LF or CR in a chunk extension: {line[:40]!r}")
    if ext.translate(None, _FIELD_BYTES):
        raise BodyError(f"control byte in a chunk extension: {line[:40]!r}")
    return int(size, 16)
