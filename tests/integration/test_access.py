"""Access lists and passkeys: the policy in TrackerCore, then over real HTTP and UDP servers."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bencodepy
import pytest
from servers import announce_url, gunicorn, http_get, scrape_url, sidecar, udp_scrape

from udp_sidecar.protocol import build_announce_request, build_connect_request
from wsgi_tracker.access.policy import (
    PASSKEY_CACHE_SIZE,
    AccessDenied,
    parse_info_hash,
    parse_info_hash_list,
    parse_passkeys,
)
from wsgi_tracker.config import ConfigError, TrackerConfig
from wsgi_tracker.core.addresses import pack_ip
from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import Announce

ALLOWED = bytes.fromhex("11" * 20)
OTHER = bytes.fromhex("22" * 20)
CLIENT = pack_ip("127.0.0.1")


def pid(n: int) -> bytes:
    return b"-ACCESS-%012d" % n


def write(path: Path, text: str, mtime: float | None = None) -> None:
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def announce(core: TrackerCore, ih: bytes, n: int = 1, passkey: str | None = None, **kw):
    return core.announce(Announce(ih, pid(n), 6881, left=1, passkey=passkey), CLIENT, **kw)


# --- file formats --------------------------------------------------------------------------


def test_info_hash_reads_hex_and_base32_and_names_bad_tokens():
    assert parse_info_hash("11" * 20) == ALLOWED
    assert parse_info_hash("AB" * 20) == bytes.fromhex("ab" * 20)
    b32 = base64.b32encode(ALLOWED).decode()
    assert parse_info_hash(b32) == ALLOWED
    assert parse_info_hash(b32.lower()) == ALLOWED
    for bad in ("zz" * 20, "1" * 39, "!" * 32):
        with pytest.raises(ValueError, match=r"hex|base32"):
            parse_info_hash(bad)


def test_list_file_skips_comments_and_notes_and_names_the_bad_line():
    text = f"# torrents\n\n{'11' * 20}  ubuntu.iso\n  {base64.b32encode(OTHER).decode()} # note\n"
    assert parse_info_hash_list(text) == {ALLOWED, OTHER}
    with pytest.raises(ValueError, match=r"wl.txt:3: "):
        parse_info_hash_list(f"{'11' * 20}\n\nnot-a-hash\n", "wl.txt")


def test_passkey_file_maps_keys_to_users():
    assert parse_passkeys("k1 alice\nk2\n# k3\n") == {"k1": "alice", "k2": "k2"}
    with pytest.raises(ValueError, match="keys:1"):
        parse_passkeys("k1 alice extra\n", "keys")


def test_settings_that_cannot_work_are_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match="access_list_file"):
        TrackerConfig(access_mode="whitelist")
    with pytest.raises(ConfigError, match="access_mode"):
        TrackerConfig(access_mode="greylist")
    with pytest.raises(ConfigError, match="private needs"):
        TrackerCore(TrackerConfig(private=True))
    with pytest.raises(ConfigError, match="cannot read"):
        TrackerCore(TrackerConfig(access_mode="whitelist", access_list_file=str(tmp_path / "no")))
    with pytest.raises(ConfigError, match="authenticate: cannot import"):
        TrackerCore(TrackerConfig(private=True, authenticate="no_such_module:check"))
    with pytest.raises(ConfigError, match=r"announce_hook: .* is not callable"):
        TrackerCore(TrackerConfig(announce_hook="tests.access_app:USERS"))
    bad = tmp_path / "bad.txt"
    write(bad, "nonsense\n")
    with pytest.raises(ConfigError, match=r"bad\.txt:1"):
        TrackerCore(TrackerConfig(access_mode="blacklist", access_list_file=str(bad)))


# --- the policy in the core ----------------------------------------------------------------


@pytest.fixture
def listfile(tmp_path) -> Path:
    path = tmp_path / "torrents.txt"
    write(path, f"{ALLOWED.hex()}\n", mtime=1_000_000)
    return path


def core_for(clock, **settings) -> TrackerCore:
    return TrackerCore(TrackerConfig(**settings), clock=clock)


def test_whitelist_serves_listed_torrents_and_never_stores_others(clock, listfile):
    core = core_for(clock, access_mode="whitelist", access_list_file=str(listfile))
    assert announce(core, ALLOWED).incomplete == 1
    with pytest.raises(TrackerError, match=r"^torrent not allowed$"):
        announce(core, OTHER)
    assert core.store.get(OTHER) is None
    assert core.counters.errors == {("http", "torrent_not_allowed"): 1}
    assert core.counters.announces["http"] == 1


def test_blacklist_refuses_listed_torrents_only(clock, listfile):
    core = core_for(clock, access_mode="blacklist", access_list_file=str(listfile))
    with pytest.raises(TrackerError, match="torrent not allowed"):
        announce(core, ALLOWED, protocol="udp")
    assert announce(core, OTHER).incomplete == 1
    assert core.store.get(ALLOWED) is None
    assert core.counters.errors == {("udp", "torrent_not_allowed"): 1}


def test_list_change_is_seen_within_a_second_and_a_broken_edit_keeps_the_old_list(clock, listfile):
    core = core_for(clock, access_mode="whitelist", access_list_file=str(listfile))
    announce(core, ALLOWED)
    write(listfile, f"{OTHER.hex()}\n", mtime=1_000_010)
    announce(core, ALLOWED)  # checked less than a second ago: the old list still rules
    clock.advance(1.0)
    with pytest.raises(TrackerError, match="torrent not allowed"):
        announce(core, ALLOWED)
    assert announce(core, OTHER).incomplete == 1
    write(listfile, "garbage\n", mtime=1_000_020)
    clock.advance(1.0)
    assert announce(core, OTHER, n=2).incomplete == 2


def test_blacklisting_a_stored_torrent_hides_it_from_scrapes(clock, tmp_path):
    path = tmp_path / "bl.txt"
    write(path, "", mtime=1_000_000)
    core = core_for(clock, access_mode="blacklist", access_list_file=str(path))
    announce(core, OTHER)
    assert core.scrape([OTHER])[0].incomplete == 1
    write(path, f"{OTHER.hex()}\n", mtime=1_000_001)
    clock.advance(1.0)
    (entry,) = core.scrape([OTHER])
    assert (entry.complete, entry.downloaded, entry.incomplete) == (0, 0, 0)


def test_sighup_rereads_a_file_whose_mtime_did_not_change(clock, listfile):
    core = core_for(clock, access_mode="whitelist", access_list_file=str(listfile))
    announce(core, ALLOWED)
    write(listfile, f"{OTHER.hex()}\n", mtime=1_000_000)  # same size, same mtime
    clock.advance(5.0)
    announce(core, ALLOWED)  # the mtime check cannot tell
    os.kill(os.getpid(), signal.SIGHUP)
    with pytest.raises(TrackerError, match="torrent not allowed"):
        announce(core, ALLOWED)
    assert announce(core, OTHER).incomplete == 1


def test_private_tracker_wants_a_known_passkey(clock, tmp_path):
    keys = tmp_path / "keys.txt"
    write(keys, "goodkey alice\n")
    core = core_for(clock, private=True, passkeys_file=str(keys))
    assert announce(core, ALLOWED, passkey="goodkey").incomplete == 1
    with pytest.raises(TrackerError, match="passkey required"):
        announce(core, ALLOWED, n=2)
    with pytest.raises(TrackerError, match="unknown passkey"):
        announce(core, ALLOWED, n=3, passkey="badkey")
    with pytest.raises(TrackerError, match="passkey required"):
        core.scrape([ALLOWED])
    assert core.scrape([ALLOWED], passkey="goodkey")[0].incomplete == 1
    assert core.counters.errors == {
        ("http", "passkey_missing"): 2,
        ("http", "passkey_unknown"): 1,
    }


def test_host_callable_decides_passkeys_and_its_answers_are_cached(clock):
    asked: list[str] = []

    def authenticate(passkey: str):
        asked.append(passkey)
        if passkey == "boom":
            raise RuntimeError("database down")
        return {"k-alice": 7, "k-bob": True}.get(passkey, False)

    core = TrackerCore(TrackerConfig(private=True), clock=clock, authenticate=authenticate)
    assert core.access.user_for("k-alice") == 7
    assert core.access.user_for("k-bob") == "k-bob"
    for key in ("nobody", "boom"):
        with pytest.raises(AccessDenied, match="unknown passkey"):
            core.access.user_for(key)
    announce(core, ALLOWED, passkey="k-alice")
    announce(core, ALLOWED, passkey="k-alice", n=2)
    with pytest.raises(AccessDenied, match="unknown passkey"):
        core.access.user_for("nobody")
    assert asked == ["k-alice", "k-bob", "nobody", "boom"]  # one question per key


def test_made_up_passkeys_do_not_evict_the_users_cached_answers(clock):
    """In one cache, 100,000 made-up passkeys (a minute of one client's announces) evicted
    every user's answer: then each of their announces asked the host again."""
    asked: list[str] = []

    def authenticate(passkey: str):
        asked.append(passkey)
        return 7 if passkey == "k-alice" else False

    core = TrackerCore(TrackerConfig(private=True), clock=clock, authenticate=authenticate)
    assert core.access.user_for("k-alice") == 7
    for n in range(PASSKEY_CACHE_SIZE + 1):
        with pytest.raises(AccessDenied, match="unknown passkey"):
            core.access.user_for(f"made-up-{n}")
    assert core.access.user_for("k-alice") == 7
    assert asked.count("k-alice") == 1  # still the cached answer
    with pytest.raises(AccessDenied):
        core.access.user_for(f"made-up-{PASSKEY_CACHE_SIZE}")  # a repeated refusal: cached
    assert len(asked) == PASSKEY_CACHE_SIZE + 2


def test_callable_can_be_named_in_the_config_for_the_udp_sidecar(clock):
    core = core_for(clock, private=True, authenticate="tests.access_app:authenticate")
    assert core.access.user_for("sidecar-key") == "user-1"


# --- real servers ------------------------------------------------------------------------


def failure(body: bytes) -> str | None:
    reply = bencodepy.decode(body)
    reason = reply.get(b"failure reason")
    return None if reason is None else reason.decode()


def http_announce(base: str, ih: bytes, n: int = 1, passkey: str = "") -> str | None:
    path = f"{base}/announce/{passkey}" if passkey else f"{base}/announce"
    status, body = http_get(announce_url(path, ih, pid(n), 6881, 1))
    assert status == 200
    return failure(body)


def udp_announce(port: int, ih: bytes, n: int = 1, url_data: bytes = b"") -> str | None:
    """A BEP 15 connect + announce (with BEP 41 URL data); the error message, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(build_connect_request(1), ("127.0.0.1", port))
        conn = s.recv(2048)[8:16]
        packet = build_announce_request(conn, 2, ih, pid(n), 6881, left=1, event=2, key=7)
        for start in range(0, len(url_data), 255):
            chunk = url_data[start : start + 255]
            packet += bytes([2, len(chunk)]) + chunk
        s.sendto(packet, ("127.0.0.1", port))
        reply = s.recv(2048)
    action, tid = struct.unpack("!II", reply[:8])
    assert tid == 2
    return reply[8:].decode() if action == 3 else None


def test_whitelist_over_http_and_udp(tmp_path, listfile):
    env = {
        "WSGI_TRACKER_ACCESS_MODE": "whitelist",
        "WSGI_TRACKER_ACCESS_LIST_FILE": str(listfile),
    }
    with gunicorn(env=env) as web, sidecar(env=env) as udp:
        assert http_announce(web.url, ALLOWED) is None
        assert http_announce(web.url, OTHER) == "torrent not allowed"
        assert udp_announce(udp.port, ALLOWED) is None
        assert udp_announce(udp.port, OTHER) == "torrent not allowed"
        _, body = http_get(scrape_url(web.url + "/scrape", ALLOWED, OTHER))
        files = bencodepy.decode(body)[b"files"]
        assert files[ALLOWED][b"incomplete"] == 1
        assert files[OTHER][b"incomplete"] == 0


def test_passkeys_over_http_and_udp(tmp_path):
    keys = tmp_path / "keys.txt"
    write(keys, "goodkey alice\n")
    env = {"WSGI_TRACKER_PRIVATE": "1", "WSGI_TRACKER_PASSKEYS_FILE": str(keys)}
    with gunicorn(env=env) as web, sidecar(env=env) as udp:
        assert http_announce(web.url, ALLOWED, passkey="goodkey") is None
        assert http_announce(web.url, ALLOWED, 2, passkey="badkey") == "unknown passkey"
        assert "passkey required" in http_announce(web.url, ALLOWED, 3)
        assert udp_announce(udp.port, ALLOWED, url_data=b"/announce/goodkey") is None
        assert udp_announce(udp.port, ALLOWED, 2, url_data=b"/announce/badkey") == (
            "unknown passkey"
        )
        assert "passkey required" in udp_announce(udp.port, ALLOWED, 3)
        _, body = http_get(scrape_url(web.url + "/scrape/goodkey", ALLOWED))
        assert bencodepy.decode(body)[b"files"][ALLOWED][b"incomplete"] == 1
        with pytest.raises(RuntimeError, match="passkey required"):
            udp_scrape("127.0.0.1", udp.port, ALLOWED)  # a UDP scrape cannot carry one


def test_host_app_passkey_check_named_in_settings_works_over_http_and_udp():
    env = {
        "WSGI_TRACKER_PRIVATE": "1",
        "WSGI_TRACKER_AUTHENTICATE": "tests.access_app:authenticate",
    }
    with gunicorn(env=env) as web, sidecar(env=env) as udp:
        assert http_announce(web.url, ALLOWED, passkey="sidecar-key") is None
        assert http_announce(web.url, ALLOWED, 2, passkey="nobody") == "unknown passkey"
        assert udp_announce(udp.port, ALLOWED, url_data=b"/announce/sidecar-key") is None
        assert udp_announce(udp.port, ALLOWED, 2, url_data=b"/announce/nobody") == (
            "unknown passkey"
        )


def worker_counts(url: str, want: int, deadline: float) -> dict[str, int]:
    """Successful HTTP announces per worker, from /stats on fresh connections."""
    seen: dict[str, int] = {}
    while len(seen) < want and time.monotonic() < deadline:
        doc = json.loads(http_get(url + "/stats")[1])
        seen[doc["served_by"]] = doc["announces"]["http"]
    assert len(seen) == want, f"saw only workers {sorted(seen)}"
    return seen


def test_list_edit_changes_the_answer_of_every_worker_without_restart(tmp_path, listfile):
    env = {
        "WSGI_TRACKER_ACCESS_MODE": "whitelist",
        "WSGI_TRACKER_ACCESS_LIST_FILE": str(listfile),
        "WSGI_TRACKER_STATS_PATH": "/stats",
    }
    with gunicorn(env=env, workers=2) as web, ThreadPoolExecutor(8) as pool:
        deadline = time.monotonic() + 30
        before = worker_counts(web.url, 2, deadline)
        assert http_announce(web.url, OTHER) == "torrent not allowed"
        write(listfile, f"{ALLOWED.hex()}\n{OTHER.hex()}\n", mtime=1_000_100)
        # Each worker re-checks the mtime within a second; keep announcing until every
        # worker has served the newly listed torrent at least once.
        after = dict(before)
        n = 0
        while any(after[w] == before[w] for w in before) and time.monotonic() < deadline:
            list(pool.map(lambda i: http_announce(web.url, OTHER, i), range(n, n + 8)))
            n += 8
            after = worker_counts(web.url, 2, deadline)
        assert all(after[w] > before[w] for w in before), (before, after)


def test_sighup_makes_the_udp_sidecar_reread_the_list(listfile):
    env = {
        "WSGI_TRACKER_ACCESS_MODE": "whitelist",
        "WSGI_TRACKER_ACCESS_LIST_FILE": str(listfile),
    }
    with sidecar(env=env) as udp:
        assert udp_announce(udp.port, OTHER) == "torrent not allowed"
        write(listfile, f"{OTHER.hex()}\n", mtime=1_000_000)  # same size and mtime as before
        time.sleep(1.1)  # past the once-a-second look: the change is invisible to it
        assert udp_announce(udp.port, OTHER) == "torrent not allowed"
        udp.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while udp_announce(udp.port, OTHER) is not None:
            assert time.monotonic() < deadline, "SIGHUP did not reload the list"
            time.sleep(0.05)
        assert udp_announce(udp.port, ALLOWED) == "torrent not allowed"
