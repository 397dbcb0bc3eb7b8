"""The shipped deploy/nginx.conf in front of a real gunicorn: who the tracker thinks called.

nginx runs as this test's own process (``-p DIR -c DIR/nginx.conf -g 'daemon off;'``)
on a free loopback port, with only the documented placeholders filled in. Callers
are told apart by their source address inside 127.0.0.0/8; the address the tracker
recorded for a peer is read back from another peer's non-compact reply.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import bencodepy
import pytest
import websocket
from servers import REPO_ROOT, announce_url, free_port, gunicorn, scrape_url

from wsgi_tracker.running import gunicorn_conf

pytestmark = pytest.mark.integration

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
)
if NGINX is None:
    pytest.skip(
        "the nginx binary is not installed (tests/run.sh installs it)", allow_module_level=True
    )

SHIPPED = REPO_ROOT / "deploy" / "nginx.conf"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
START_TIMEOUT = 20.0
FORGED = "203.0.113.9"


def render(directory: Path, listen: str, upstream: str, text: str | None = None) -> Path:
    """deploy/nginx.conf with its three placeholders filled in, written into ``directory``."""
    text = SHIPPED.read_text() if text is None else text
    for placeholder, value in (
        ("__LISTEN__", listen),
        ("__UPSTREAM__", upstream),
        ("__PREFIX__", str(directory)),
    ):
        text = text.replace(placeholder, value)
    assert not re.findall(r"^[^#]*__[A-Z]+__", text, re.M), "an undocumented placeholder is left"
    conf = directory / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_cmd(directory: Path, conf: Path, *args: str) -> list[str]:
    # -e: the error log before the config is read, so a non-root run does not touch /var/log.
    assert NGINX is not None
    return [NGINX, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf), *args]


def config_test(directory: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nginx_cmd(directory, conf, "-t"), capture_output=True, text=True, timeout=30
    )


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A directory nginx's workers (www-data when we are root) can traverse."""
    path = Path(tempfile.mkdtemp(prefix="wsgi-tracker-nginx-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def nginx(upstream: str) -> Iterator[int]:
    """The shipped config proxying to ``upstream``; yields the loopback port it listens on."""
    with workdir() as directory:
        port = free_port()
        conf = render(directory, f"127.0.0.1:{port}", upstream)
        log = (directory / "nginx.stderr").open("wb")
        proc = subprocess.Popen(
            nginx_cmd(directory, conf, "-g", "daemon off;"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            _wait_listening(proc, port, directory)
            yield port
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            log.close()


def _wait_listening(proc: subprocess.Popen[bytes], port: int, directory: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    logs = "".join(
        p.read_text(errors="replace")
        for p in (directory / "nginx.stderr", directory / "error.log")
        if p.exists()
    )
    raise RuntimeError(f"nginx did not start listening on {port}:\n{logs}")


# --- servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unix_socket_dir() -> Iterator[Path]:
    with workdir() as directory:
        yield directory


@pytest.fixture(scope="module")
def tracker(unix_socket_dir: Path) -> Iterator[int]:
    """gunicorn with the shipped worker, on loopback TCP and a Unix socket, trusting both."""
    sock = unix_socket_dir / "gunicorn.sock"
    env = {"WSGI_TRACKER_TRUSTED_PROXIES": "127.0.0.1,unix"}
    with gunicorn(
        worker_class=gunicorn_conf.worker_class, env=env, extra_args=["--bind", f"unix:{sock}"]
    ) as server:
        yield server.port


@pytest.fixture(scope="module", params=["tcp", "unix"])
def edge(request: pytest.FixtureRequest, tracker: int, unix_socket_dir: Path) -> Iterator[int]:
    """nginx in front of the tracker, over loopback TCP or the Unix socket; yields its port."""
    upstream = (
        f"127.0.0.1:{tracker}"
        if request.param == "tcp"
        else f"unix:{unix_socket_dir / 'gunicorn.sock'}"
    )
    with nginx(upstream) as port:
        yield port


# --- a client with a chosen source address ----------------------------------------------


def get(port: int, target: str, source: str, headers: dict[str, str] | None = None) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return body
    finally:
        conn.close()


def announce(port: int, info_hash: bytes, peer: bytes, source: str, **kw: object) -> dict:
    forged = kw.pop("forwarded_for", None)
    target = announce_url("/announce", info_hash, peer * 20, 6881, kw.pop("left", 0), **kw)
    headers = {"X-Forwarded-For": str(forged)} if forged else None
    reply = bencodepy.decode(get(port, target, source, headers))
    assert b"failure reason" not in reply, reply
    return reply


def recorded_address(port: int, info_hash: bytes, peer: bytes) -> str:
    """The address the tracker hands out for ``peer`` (a seeder), seen by a fresh leecher."""
    reply = announce(port, info_hash, b"z", "127.0.0.99", left=100, compact=0)
    (entry,) = [p for p in reply[b"peers"] if p[b"peer id"] == peer * 20]
    return entry[b"ip"].decode()


def fresh_hash(edge: int, label: str) -> bytes:
    return f"{label}-{edge}".encode().ljust(20, b".")[:20]


# --- tests --------------------------------------------------------------------------------


def test_shipped_config_passes_nginx_t_with_only_placeholders_filled() -> None:
    with workdir() as directory:
        for upstream in ("127.0.0.1:8000", "unix:/run/wsgi-tracker-http/gunicorn.sock"):
            result = config_test(directory, render(directory, "127.0.0.1:8080", upstream))
            assert result.returncode == 0, result.stderr


def test_commented_udp_stream_block_is_valid_when_uncommented() -> None:
    if not STREAM_MODULE.exists():
        pytest.skip(f"{STREAM_MODULE} is absent (Debian package libnginx-mod-stream)")
    text = SHIPPED.read_text()
    text = text.replace("# load_module ", "load_module ")
    stream = text[text.index("# stream {") :]
    text = text.replace(stream, re.sub(r"^# ?", "", stream, flags=re.M))
    with workdir() as directory:
        result = config_test(directory, render(directory, "127.0.0.1:8080", "127.0.0.1:8000", text))
    assert result.returncode == 0, result.stderr


def test_announce_through_nginx_records_the_callers_own_address(edge: int) -> None:
    ih = fresh_hash(edge, "real-address")
    announce(edge, ih, b"a", "127.0.0.2")
    assert recorded_address(edge, ih, b"a") == "127.0.0.2"


def test_forwarded_for_sent_by_a_client_through_nginx_changes_nothing(edge: int) -> None:
    ih = fresh_hash(edge, "spoofed-via-nginx")
    announce(edge, ih, b"s", "127.0.0.3", forwarded_for=FORGED)
    assert recorded_address(edge, ih, b"s") == "127.0.0.3"


def test_forged_header_sent_straight_to_gunicorn_is_not_believed(edge: int, tracker: int) -> None:
    ih = fresh_hash(edge, "forged-direct")
    announce(tracker, ih, b"f", "127.0.0.4", forwarded_for=FORGED)
    assert recorded_address(edge, ih, b"f") == "127.0.0.4"


def test_raw_info_hash_bytes_and_scrape_survive_the_proxy(edge: int) -> None:
    ih = b"/%?&#+ \x00\xff" + bytes(range(200, 211))
    announce(edge, ih, b"r", "127.0.0.5")
    files = bencodepy.decode(get(edge, scrape_url("/scrape", ih), "127.0.0.5"))[b"files"]
    assert files[ih][b"complete"] == 1


def idle_upstream_connections(port: int) -> set[int]:
    """Local ports of established IPv4 connections to ``port`` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
            found.add(int(local.rsplit(":", 1)[1], 16))
    return found


def test_nginx_keeps_few_upstream_connections_alive(tracker: int) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    before = idle_upstream_connections(tracker)
    with nginx(f"127.0.0.1:{tracker}") as port:
        for n in range(30):
            announce(port, b"keepalive-upstream!!", bytes([65 + n]), "127.0.0.6")
        kept = idle_upstream_connections(tracker) - before
    # One idle connection per nginx worker at most, reused by all 30 requests, none closed.
    assert 1 <= len(kept) <= (os.cpu_count() or 1), kept


def test_site_pages_pass_through_nginx_untouched(edge: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", edge, timeout=10)
    try:
        conn.request("GET", "/not-a-tracker-path")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 404  # the standalone tracker's own answer, proxied as is


def test_websocket_announces_pass_through_nginx_and_relay_offers(edge: int) -> None:
    """The upgrade reaches the tracker through nginx, and so do relayed offers and answers."""
    url = f"ws://127.0.0.1:{edge}/announce"
    ih = f"ws-{edge}".ljust(20, ".")
    a = websocket.create_connection(url, timeout=10)
    b = websocket.create_connection(url, timeout=10)
    try:
        a.send(json.dumps({"action": "announce", "info_hash": ih, "peer_id": "a" * 20, "left": 5}))
        assert json.loads(a.recv())["incomplete"] == 1
        offer = {"offer_id": "o" * 20, "offer": {"type": "offer", "sdp": "v=0"}}
        b.send(json.dumps({"action": "announce", "info_hash": ih, "peer_id": "b" * 20,
                           "left": 0, "offers": [offer]}))  # fmt: skip
        assert json.loads(b.recv())["complete"] == 1
        got = json.loads(a.recv())
        assert (got["peer_id"], got["offer"]) == ("b" * 20, offer["offer"])
        a.send(json.dumps({"action": "announce", "info_hash": ih, "peer_id": "a" * 20,
                           "to_peer_id": "b" * 20, "offer_id": "o" * 20,
                           "answer": {"type": "answer", "sdp": "v=0 a"}}))  # fmt: skip
        assert json.loads(b.recv())["answer"] == {"type": "answer", "sdp": "v=0 a"}
    finally:
        a.close()
        b.close()
