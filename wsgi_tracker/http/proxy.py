"""The client's address when the tracker sits behind reverse proxies the operator trusts.

A tracker hands every caller's address to other peers, so a forged address
aims the swarm at a third party. ``X-Forwarded-For`` is therefore believed only
when the direct peer is a proxy listed in ``trusted_proxies``; anyone else's
header is ignored. The rule is uvicorn's ``--forwarded-allow-ips`` (its
``ProxyHeadersMiddleware``): walk the entries from the right, skip the proxies
you trust, and the first other address is the client. werkzeug's ``ProxyFix``
counts hops instead (``x_for=1``), which is wrong as soon as a request reaches
gunicorn without passing nginx; addresses stay right either way.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from wsgi_tracker.config import ConfigError
from wsgi_tracker.core.addresses import parse_ip

#: The ``trusted_proxies`` entry that trusts peers on a Unix socket (their REMOTE_ADDR is empty).
UNIX_SOCKET = "unix"


class TrustedNetworks:
    """``trusted_proxies`` parsed once: single hosts as a set of packed addresses (the
    common case, one set lookup), wider networks as (value, mask) integers per family."""

    __slots__ = ("hosts", "unix", "v4", "v6")

    def __init__(self, entries: Iterable[str]) -> None:
        hosts: set[bytes] = set()
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        self.unix = False
        for entry in entries:
            if entry.strip().lower() == UNIX_SOCKET:
                self.unix = True
                continue
            try:
                net = ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ConfigError(
                    f"trusted_proxies: {entry!r} is not an IP address, a network or {UNIX_SOCKET!r}"
                ) from None
            if net.num_addresses == 1:
                hosts.add(net.network_address.packed)
            else:
                (v4 if net.version == 4 else v6).append(
                    (int(net.network_address), int(net.netmask))
                )
        self.hosts = frozenset(hosts)
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)

    def __contains__(self, packed: bytes) -> bool:
        if packed in self.hosts:
            return True
        networks = self.v4 if len(packed) == 4 else self.v6
        if networks:
            value = int.from_bytes(packed, "big")
            for net, mask in networks:
                if value & mask == net:
                    return True
        return False


class ClientAddress:
    """``ClientAddress(trusted)(remote_addr, forwarded_for)``: the address to record.

    - The header counts only when ``remote_addr`` is a trusted proxy.
    - Its entries are walked from the right, skipping trusted proxies; the
      first untrusted address is the client. When every entry is trusted, the
      left-most one is (an internal client behind the proxies).
    - An entry that is not an IP address means the chain cannot be read:
      ``remote_addr`` is returned. Nothing here raises on request input.

    A header entry comes back as sent (trimmed), except that an IPv4-mapped
    IPv6 address becomes plain IPv4. Nothing is cached: every client address
    is new to a tracker, so the check is made cheap instead.
    """

    __slots__ = ("_trusted",)

    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted = TrustedNetworks(trusted)

    def _classify(self, text: str) -> tuple[str, bool] | None:
        """(address, trusted?), or None when ``text`` is not an IP address."""
        text = text.strip()
        packed = parse_ip(text)
        if packed is None:
            return None
        if len(packed) == 4 and ":" in text:  # was IPv4-mapped
            text = socket.inet_ntop(socket.AF_INET, packed)
        return text, packed in self._trusted

    def is_trusted(self, remote_addr: str) -> bool:
        """Whether the direct peer may speak for the client."""
        verdict = self._classify(remote_addr)
        if verdict is None:
            return self._trusted.unix and not remote_addr
        return verdict[1]

    def __call__(self, remote_addr: str, forwarded_for: str | None) -> str:
        if not forwarded_for or not self.is_trusted(remote_addr):
            return remote_addr
        address = remote_addr
        for hop in reversed(forwarded_for.split(",")):
            verdict = self._classify(hop)
            if verdict is None:
                return remote_addr
            address, trusted = verdict
            if not trusted:
                return address
        return address
