"""Trusted proxies: whose X-Forwarded-For is believed, and which entry is the client."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import quote_from_bytes

import bencodepy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker import ConfigError, TrackerConfig, TrackerMiddleware
from wsgi_tracker.core.addresses import pack_ip
from wsgi_tracker.http.proxy import ClientAddress

NGINX = "10.0.0.5"
NGINX_NET = "10.0.0.0/24"


@pytest.fixture(scope="module")
def behind_nginx() -> ClientAddress:
    return ClientAddress((NGINX_NET, "::1", "unix"))


def test_header_from_trusted_proxy_names_the_client(behind_nginx: ClientAddress) -> None:
    assert behind_nginx(NGINX, "203.0.113.7") == "203.0.113.7"


def test_header_from_untrusted_sender_is_ignored(behind_nginx: ClientAddress) -> None:
    assert behind_nginx("198.51.100.1", "203.0.113.7") == "198.51.100.1"


def test_no_header_leaves_the_direct_peer(behind_nginx: ClientAddress) -> None:
    assert behind_nginx(NGINX, None) == NGINX
    assert behind_nginx(NGINX, "") == NGINX


def test_rightmost_untrusted_entry_wins_over_client_supplied_ones(
    behind_nginx: ClientAddress,
) -> None:
    # A client wrote "6.6.6.6" itself; a proxy that appends added the real address after it.
    assert behind_nginx(NGINX, "6.6.6.6, 203.0.113.7") == "203.0.113.7"


def test_trusted_hops_are_skipped_from_the_right(behind_nginx: ClientAddress) -> None:
    assert behind_nginx(NGINX, "6.6.6.6, 203.0.113.7, 10.0.0.9, 10.0.0.8") == "203.0.113.7"


def test_all_hops_trusted_gives_the_leftmost(behind_nginx: ClientAddress) -> None:
    assert behind_nginx(NGINX, "10.0.0.77, 10.0.0.9") == "10.0.0.77"


@pytest.mark.parametrize(
    "header",
    ["garbage", "203.0.113.7, nonsense", "1.2.3.4:5678", "203.0.113.7,", ",", "999.1.1.1"],
)
def test_unreadable_header_falls_back_to_the_direct_peer(
    behind_nginx: ClientAddress, header: str
) -> None:
    assert behind_nginx(NGINX, header) == NGINX


def test_garbage_left_of_the_client_is_never_read(behind_nginx: ClientAddress) -> None:
    assert behind_nginx(NGINX, "garbage, 203.0.113.7") == "203.0.113.7"


def test_ipv6_and_mapped_addresses(behind_nginx: ClientAddress) -> None:
    assert behind_nginx("::1", "2001:db8::7") == "2001:db8::7"
    assert behind_nginx("::ffff:10.0.0.5", "::ffff:203.0.113.7") == "203.0.113.7"


def test_unix_socket_peer_is_trusted_only_when_listed(behind_nginx: ClientAddress) -> None:
    assert behind_nginx("", "203.0.113.7") == "203.0.113.7"
    assert ClientAddress(("127.0.0.1",))("", "203.0.113.7") == ""


def test_bad_trusted_proxies_entry_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"trusted_proxies: 'nginx\.local'"):
        ClientAddress(("127.0.0.1", "nginx.local"))


@given(st.text(max_size=200))
def test_any_header_text_gives_an_address_the_tracker_can_record(header: str) -> None:
    got = ClientAddress((NGINX_NET,))(NGINX, header)
    assert len(pack_ip(got)) in (4, 16)


@given(st.ip_addresses())
def test_every_address_is_read_back_as_the_same_address(ip: IPv4Address | IPv6Address) -> None:
    got = ClientAddress((NGINX_NET,))(NGINX, f" {ip} ")
    expected = ip.ipv4_mapped if isinstance(ip, IPv6Address) and ip.ipv4_mapped else ip
    assert ip_address(got) == expected


def test_scoped_link_local_address_is_kept(behind_nginx: ClientAddress) -> None:
    assert behind_nginx("::1", "fe80::7%eth0") == "fe80::7%eth0"


# --- through the WSGI middleware ---------------------------------------------------------


def _announce(app: TrackerMiddleware, remote: str, forwarded: str | None, peer: bytes) -> dict:
    query = (
        f"info_hash={quote_from_bytes(b'h' * 20)}&peer_id={quote_from_bytes(peer * 20)}"
        f"&port=6881&left={0 if peer == b'a' else 100}&compact=0"
    )
    environ = {"PATH_INFO": "/announce", "QUERY_STRING": query, "REMOTE_ADDR": remote}
    if forwarded is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded
    body = b"".join(app(environ, lambda status, headers: None))
    return bencodepy.decode(body)


def _recorded_ip(app: TrackerMiddleware, remote: str, forwarded: str | None) -> str:
    """Announce as seeder A, then read A's address from leecher B's non-compact reply."""
    _announce(app, remote, forwarded, b"a")
    reply = _announce(app, "192.0.2.200", None, b"b")
    (peer,) = [p for p in reply[b"peers"] if p[b"peer id"] == b"a" * 20]
    return peer[b"ip"].decode()


def test_middleware_ignores_forwarded_for_by_default() -> None:
    app = TrackerMiddleware(config=TrackerConfig())
    assert _recorded_ip(app, "198.51.100.1", "203.0.113.7") == "198.51.100.1"


def test_middleware_believes_a_listed_proxy_only() -> None:
    # A tracker each: seeder A may not move between the two addresses without its key.
    config = TrackerConfig(trusted_proxies=(NGINX,))
    assert _recorded_ip(TrackerMiddleware(config=config), NGINX, "203.0.113.7") == "203.0.113.7"
    from_elsewhere = _recorded_ip(TrackerMiddleware(config=config), "198.51.100.1", "203.0.113.8")
    assert from_elsewhere == "198.51.100.1"
