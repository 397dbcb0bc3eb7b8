"""The WebTorrent tracker protocol, sans-IO: JSON text in, messages out, and back.

As bittorrent-tracker's client and aquatic_ws speak it: every message is a
JSON object with an ``action``; ``info_hash``, ``peer_id``, ``offer_id`` and
``to_peer_id`` are 20-character strings, one character per byte (code points
0-255). Unknown keys are ignored (clients add their own, e.g. ``trackerid``);
a known key with the wrong type is refused with a reason naming it.

Two kinds of bad input: a frame that is not a JSON object at all (binary,
not UTF-8, not JSON, oversized) is a broken conversation and closes the
socket (``WsError.close_code``); a well-formed message that breaks a rule is
refused with a ``failure reason`` message and the socket stays open. Neither
changes any state: parsing happens before anything is applied.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wsgi_tracker.core.types import EVENT_COMPLETED, EVENT_NONE, EVENT_STARTED, EVENT_STOPPED

# RFC 6455 close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003  # a binary message: this protocol is text only
CLOSE_INVALID = 1007  # not UTF-8, not JSON, not an object
CLOSE_TOO_BIG = 1009

EVENTS = {
    None: EVENT_NONE,
    "": EVENT_NONE,
    "update": EVENT_NONE,
    "paused": EVENT_NONE,
    "started": EVENT_STARTED,
    "completed": EVENT_COMPLETED,
    "stopped": EVENT_STOPPED,
}
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NO_STATE = ", nothing was changed"


@dataclass(frozen=True, slots=True)
class Limits:
    """aquatic_ws's defaults: at most 10 offers, 64 KiB messages, 16 KiB frames."""

    max_offers: int = 10
    max_scrape_hashes: int = 64
    max_message_bytes: int = 64 << 10
    max_frame_bytes: int = 16 << 10


class WsError(Exception):
    """Bad input. ``close_code`` set: close the socket with it; None: reply with a failure."""

    def __init__(
        self,
        reason: str,
        close_code: int | None = None,
        action: str = "announce",
        info_hash: bytes | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code
        self.action = action
        self.info_hash = info_hash


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: bytes
    sdp: str


@dataclass(frozen=True, slots=True)
class WsAnnounce:
    info_hash: bytes
    peer_id: bytes
    event: int
    left: int | None  # None: unknown (no metadata yet), a leecher
    numwant: int | None
    offers: tuple[Offer, ...]

    @property
    def seeder(self) -> bool:
        return self.left == 0


@dataclass(frozen=True, slots=True)
class WsAnswer:
    info_hash: bytes
    peer_id: bytes
    to_peer_id: bytes
    offer_id: bytes
    sdp: str


@dataclass(frozen=True, slots=True)
class WsScrape:
    info_hashes: tuple[bytes, ...]  # empty: a full scrape


Message = WsAnnounce | WsAnswer | WsScrape


# --- parsing ---------------------------------------------------------------------------


def parse_message(text: str, limits: Limits) -> Message:
    """One text message; raises WsError saying what was wrong and what happens now."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WsError(f"message is not JSON ({exc.msg} at {exc.pos})", CLOSE_INVALID) from None
    except RecursionError:
        raise WsError("message is JSON nested too deeply", CLOSE_INVALID) from None
    except ValueError:  # the one left: an integer past sys.get_int_max_str_digits()
        raise WsError("message holds a JSON number too long to read", CLOSE_INVALID) from None
    if not isinstance(obj, dict):
        raise WsError(f"message is a JSON {type(obj).__name__}, not an object", CLOSE_INVALID)
    action = obj.get("action")
    if action == "scrape":
        return _parse_scrape(obj, limits)
    if action != "announce":
        raise WsError(
            f"unknown action {action!r}: expected 'announce' or 'scrape'{_NO_STATE}",
            action=action if isinstance(action, str) else "announce",
        )
    info_hash = _binary(obj.get("info_hash"), "info_hash")
    try:
        if "answer" in obj:
            return _parse_answer(obj, info_hash)
        return _parse_announce(obj, info_hash, limits)
    except WsError as exc:
        exc.info_hash = info_hash
        raise


def _refuse(reason: str, action: str = "announce") -> WsError:
    return WsError(reason + _NO_STATE, action=action)


def _binary(value: Any, where: str, action: str = "announce") -> bytes:
    if not isinstance(value, str) or len(value) != 20:
        got = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        raise _refuse(f"{where} must be a 20-character string, got {got}", action)
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise _refuse(
            f"{where} has a character above U+00FF: one character per byte", action
        ) from None


def _count(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _refuse(f"{key} must be a non-negative integer or null, got {value!r}")
    return value


def _sdp(obj: Mapping[str, Any], key: str, kind: str, where: str) -> str:
    value = obj.get(key)
    if (
        not isinstance(value, dict)
        or value.get("type") != kind
        or not isinstance(value.get("sdp"), str)
    ):
        raise _refuse(f"{where} must be an object {{type: '{kind}', sdp: string}}")
    return value["sdp"]


def _parse_announce(obj: dict[str, Any], info_hash: bytes, limits: Limits) -> WsAnnounce:
    peer_id = _binary(obj.get("peer_id"), "peer_id")
    event = obj.get("event")
    if not isinstance(event, str | None) or event not in EVENTS:
        raise _refuse(f"event {event!r} is not one of started, stopped, completed, update")
    for key in ("uploaded", "downloaded"):
        _count(obj, key)
    left = _count(obj, "left")
    numwant = _count(obj, "numwant")
    raw = obj.get("offers")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _refuse(f"offers must be a list, got {type(raw).__name__}")
    if len(raw) > limits.max_offers:
        raise _refuse(f"too many offers: {len(raw)}, at most {limits.max_offers}")
    offers = []
    for i, item in enumerate(raw):
        where = f"offers[{i}]"
        if not isinstance(item, dict):
            raise _refuse(f"{where} must be an object {{offer, offer_id}}")
        offer_id = _binary(item.get("offer_id"), f"{where}.offer_id")
        offers.append(Offer(offer_id, _sdp(item, "offer", "offer", f"{where}.offer")))
    return WsAnnounce(info_hash, peer_id, EVENTS[event], left, numwant, tuple(offers))


def _parse_answer(obj: dict[str, Any], info_hash: bytes) -> WsAnswer:
    return WsAnswer(
        info_hash,
        _binary(obj.get("peer_id"), "peer_id"),
        _binary(obj.get("to_peer_id"), "to_peer_id"),
        _binary(obj.get("offer_id"), "offer_id"),
        _sdp(obj, "answer", "answer", "answer"),
    )


def _parse_scrape(obj: dict[str, Any], limits: Limits) -> WsScrape:
    raw = obj.get("info_hash")
    if raw is None:
        return WsScrape(())
    items = raw if isinstance(raw, list) else [raw]
    if len(items) > limits.max_scrape_hashes:
        raise _refuse(
            f"too many info_hashes: {len(items)}, at most {limits.max_scrape_hashes}", "scrape"
        )
    where = "info_hash[{}]" if isinstance(raw, list) else "info_hash"
    hashes = tuple(_binary(item, where.format(i), "scrape") for i, item in enumerate(items))
    if not hashes:
        raise _refuse("info_hash is an empty list", "scrape")
    return WsScrape(hashes)


class MessageBuffer:
    """Assembles one message from frame fragments, enforcing the frame and message caps.

    The WebSocket engine hands over data as it arrives (part of a frame, end
    of frame, end of message); an oversized frame or message is refused as
    soon as it passes its cap, before it is all buffered. The pieces are held
    as UTF-8 in one bytearray: a list of the engine's strings cost ~55 bytes
    per piece, so a 64 KiB message sent as one-byte fragments held ~560 KB.
    """

    __slots__ = ("_frame", "_message", "limits")  # one per held connection

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._frame = 0
        self._message = bytearray()

    def add(self, data: str, frame_finished: bool, message_finished: bool) -> str | None:
        """Add a piece of text; the whole message once it is finished, else None."""
        raw = data.encode()
        self._frame += len(raw)
        if self._frame > self.limits.max_frame_bytes:
            raise WsError(f"frame over {self.limits.max_frame_bytes} bytes", CLOSE_TOO_BIG)
        if len(self._message) + len(raw) > self.limits.max_message_bytes:
            raise WsError(f"message over {self.limits.max_message_bytes} bytes", CLOSE_TOO_BIG)
        if frame_finished:
            self._frame = 0
        if not self._message and message_finished:
            return data  # the usual case: a message in one piece
        self._message += raw
        if not message_finished:
            return None
        text = self._message.decode()
        self._message = bytearray()
        return text


class FrameHeaders:
    """Reads the payload length each frame header claims, as its header arrives.

    The frame cap in ``MessageBuffer`` acts on payload bytes received, and
    wsproto does not show a header: a header claiming 2^63 bytes followed by a
    few held its socket until ``ws_idle_timeout`` of silence (longer with a byte
    every few minutes). This follows the raw stream from frame to frame (a
    skip count over payloads, at most a 13-byte partial header kept), so a
    claim over ``limit`` is refused when its header comes. No extension is
    ever negotiated, so the length on the wire is the payload's.
    """

    __slots__ = ("_head", "_skip", "limit")  # one per held connection

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._skip = 0  # payload bytes of the current frame still to come
        self._head = b""  # a header cut by the end of a read

    def feed(self, data: bytes) -> None:
        """Follow ``data``; raises WsError (1009) at a header claiming over ``limit``."""
        size = len(data)
        if self._skip >= size:
            self._skip -= size
            return
        pos = self._skip
        if self._head:  # (then _skip was 0)
            data = self._head + data
            size = len(data)
            self._head = b""
        while pos < size:
            if size - pos < 2:
                break
            second = data[pos + 1]
            code = second & 0x7F
            width = 2 if code == 126 else 8 if code == 127 else 0
            need = 2 + width + (4 if second & 0x80 else 0)
            if size - pos < need:
                break
            length = int.from_bytes(data[pos + 2 : pos + 2 + width], "big") if width else code
            if length > self.limit:
                raise WsError(
                    f"frame over {self.limit} bytes: its header claims {length}", CLOSE_TOO_BIG
                )
            pos += need + length
        else:
            self._skip = pos - size
            return
        self._head = data[pos:]
        self._skip = 0


# --- encoding --------------------------------------------------------------------------


def _text(data: bytes) -> str:
    return data.decode("latin-1")


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def encode_announce_reply(info_hash: bytes, interval: int, complete: int, incomplete: int) -> str:
    return _dump(
        {
            "action": "announce",
            "interval": interval,
            "info_hash": _text(info_hash),
            "complete": complete,
            "incomplete": incomplete,
        }
    )


def encode_offer(info_hash: bytes, from_peer_id: bytes, offer: Offer) -> str:
    """An offer relayed to one peer of the swarm, as if from ``from_peer_id``."""
    return _dump(
        {
            "action": "announce",
            "info_hash": _text(info_hash),
            "peer_id": _text(from_peer_id),
            "offer_id": _text(offer.offer_id),
            "offer": {"type": "offer", "sdp": offer.sdp},
        }
    )


def encode_answer(answer: WsAnswer) -> str:
    """An answer relayed back to the offerer (``answer.to_peer_id``)."""
    return _dump(
        {
            "action": "announce",
            "info_hash": _text(answer.info_hash),
            "peer_id": _text(answer.peer_id),
            "offer_id": _text(answer.offer_id),
            "answer": {"type": "answer", "sdp": answer.sdp},
        }
    )


def encode_scrape_reply(files: list[tuple[bytes, int, int, int]]) -> str:
    """``files`` as (info_hash, complete, incomplete, downloaded)."""
    return _dump(
        {
            "action": "scrape",
            "files": {
                _text(ih): {"complete": c, "incomplete": i, "downloaded": d}
                for ih, c, i, d in files
            },
        }
    )


def encode_failure(error: WsError) -> str:
    """The refusal clients show as a warning (bittorrent-tracker reads ``failure reason``)."""
    obj: dict[str, Any] = {"action": error.action, "failure reason": error.reason}
    if error.info_hash is not None:
        obj["info_hash"] = _text(error.info_hash)
    return _dump(obj)


# --- the opening handshake (RFC 6455 4.2) ----------------------------------------------


class HandshakeError(Exception):
    """An upgrade request we refuse; ``status`` is the HTTP reply, the message why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def wants_websocket(environ: Mapping[str, Any]) -> bool:
    return "websocket" in str(environ.get("HTTP_UPGRADE", "")).lower()


def accept_token(environ: Mapping[str, Any]) -> str:
    """The Sec-WebSocket-Accept value for a valid upgrade request in ``environ``."""
    if environ.get("REQUEST_METHOD") != "GET":
        raise HandshakeError("405 Method Not Allowed", "a WebSocket upgrade must be a GET")
    tokens = {t.strip().lower() for t in str(environ.get("HTTP_CONNECTION", "")).split(",")}
    if "upgrade" not in tokens:
        raise HandshakeError("400 Bad Request", "Connection header lacks 'Upgrade'")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13":
        raise HandshakeError("426 Upgrade Required", "only WebSocket version 13 is spoken")
    key = str(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")).strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise HandshakeError("400 Bad Request", "Sec-WebSocket-Key is not 16 bytes of base64")
    digest = hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def switching_protocols(token: str) -> bytes:
    """The 101 response that completes the handshake (no extensions, no subprotocol)."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + token.encode("ascii") + b"\r\n\r\n"
    )
