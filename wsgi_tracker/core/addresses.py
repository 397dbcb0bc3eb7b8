"""Peer addresses as the wire carries them: packed IP bytes plus a big-endian port."""

from __future__ import annotations

import ipaddress
import socket

from wsgi_tracker.core.errors import TrackerError

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def parse_ip(text: str) -> bytes | None:
    """Packed 4- or 16-byte address, or None when ``text`` is not an IP address.

    An IPv4-mapped IPv6 address becomes plain IPv4: dual-stack sockets report
    IPv4 clients as ::ffff:a.b.c.d, and storing those as IPv4 keeps one peer in
    one family and hands it to IPv4 peers. A %scope suffix is dropped.
    """
    try:
        if ":" not in text:
            return socket.inet_pton(socket.AF_INET, text)
        packed = socket.inet_pton(socket.AF_INET6, text.partition("%")[0])
    except (OSError, ValueError):
        return None
    return packed[12:] if packed.startswith(_V4_MAPPED) else packed


def pack_ip(text: str) -> bytes:
    """``parse_ip`` for addresses a client sent: an invalid one is the client's error."""
    packed = parse_ip(text)
    if packed is None:
        raise TrackerError(f"invalid ip: {text[:64]!r} is not an IP address")
    return packed


def endpoint(packed_ip: bytes, port: int) -> bytes:
    """The compact peer entry (BEP 23 / BEP 7): address then port, network order."""
    return packed_ip + port.to_bytes(2, "big")


def split_endpoint(entry: bytes) -> tuple[str, int]:
    """(ip text, port) of a compact entry, for non-compact replies and logs."""
    ip = ipaddress.ip_address(entry[:-2])
    return str(ip), int.from_bytes(entry[-2:], "big")
