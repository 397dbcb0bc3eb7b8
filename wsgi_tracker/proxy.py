"""The client's address when the tracker sits behind reverse proxies the operator trusts.

A tracker hands every caller's address to other peers, so a forged address
aims the swarm at a third party. ``X-Forwarded-For`` is therefore believed only
when the direct peer is a proxy listed in ``trusted_proxies``; anyone else's
header is ignored. This is werkzeug's ``ProxyFix`` rule (trust the right-most
entries a proxy you know appended) stated with addresses instead of a hop
count, so it stays right when a request reaches gunicorn without passing nginx.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from .config import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The ``trusted_proxies`` entry that trusts peers on a Unix socket (their REMOTE_ADDR is empty).
UNIX_SOCKET = "unix"


def parse_networks(entries: Iterable[str]) -> tuple[tuple[IPNetwork, ...], bool]:
    """(networks, trust Unix-socket peers) from ``trusted_proxies``; ConfigError names a bad one."""
    networks: list[IPNetwork] = []
    unix = False
    for entry in entries:
        if entry.strip().lower() == UNIX_SOCKET:
            unix = True
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"trusted_proxies: {entry!r} is not an IP address, a network or {UNIX_SOCKET!r}"
            ) from None
    return tuple(networks), unix


class ClientAddress:
    """``ClientAddress(trusted)(remote_addr, forwarded_for)``: the address to record.

    - The header counts only when ``remote_addr`` is a trusted proxy.
    - Its entries are walked from the right, skipping trusted proxies; the
      first untrusted address is the client. When every entry is trusted, the
      left-most one is (an internal client behind the proxies).
    - An entry that is not an IP address means the chain cannot be read:
      ``remote_addr`` is returned. Nothing here raises on request input.

    Addresses are returned in canonical text (IPv4-mapped IPv6 as plain IPv4).
    Verdicts are cached per address text, so the common case is a dict hit.
    """

    __slots__ = ("_classify", "_networks", "_unix")

    def __init__(self, trusted: Iterable[str], cache_size: int = 4096) -> None:
        self._networks, self._unix = parse_networks(trusted)
        self._classify = lru_cache(maxsize=cache_size)(self._classify_uncached)

    def _classify_uncached(self, text: str) -> tuple[str, bool] | None:
        """(canonical address, trusted?), or None when ``text`` is not an IP address."""
        try:
            ip = ipaddress.ip_address(text.strip())
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return str(ip), any(ip in net for net in self._networks)

    def is_trusted(self, remote_addr: str) -> bool:
        """Whether the direct peer may speak for the client."""
        verdict = self._classify(remote_addr)
        if verdict is None:
            return self._unix and not remote_addr
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
