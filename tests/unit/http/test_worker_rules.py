"""TrackerWorker's pure rules: what its per-address cap counts, which gunicorn settings it names."""

from __future__ import annotations

from gunicorn.config import Config

from wsgi_tracker.http.worker import address_key, settings_not_applied


def test_the_cap_counts_ipv4_addresses_and_ipv6_slash_64s() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"  # a dual-stack socket's IPv4 peer
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")


def test_gunicorn_hooks_the_worker_does_not_run_are_named() -> None:
    cfg = Config()
    assert settings_not_applied(cfg) == []  # gunicorn's defaults: nothing to warn about
    cfg.set("post_request", lambda worker, req, environ, resp: None)
    cfg.set("proxy_protocol", True)
    assert settings_not_applied(cfg) == ["post_request", "proxy_protocol"]
