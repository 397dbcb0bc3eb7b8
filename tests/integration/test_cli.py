"""``wsgi-tracker serve`` and ``udp-sidecar`` refuse what cannot work before starting.

A bad ``--app`` (no such module, no such attribute, an error inside the
module), an HTTP address in use and a snapshot path that cannot be written each
end the command with exit status 2 and one line naming the problem, instead of
a traceback or gunicorn's retries. (The flags, help, ``--version`` and the
``config`` command are tested in unit/test_config.py.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from servers import REPO_ROOT, free_port, short_tempdir

pytestmark = pytest.mark.integration


def run(*cmd: str, **more_env: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT}/tests", **more_env}
    env.setdefault("WSGI_TRACKER_SYNC_SOCKET", "off")
    return subprocess.run(
        [sys.executable, "-m", *cmd], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def one_line(done: subprocess.CompletedProcess[str], prog: str) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), done.stderr
    return lines[0]


def serve(*args: str, **env: str) -> str:
    bind = f"127.0.0.1:{free_port()}"
    done = run("wsgi_tracker.running.cli", "serve", "--bind", bind, *args, **env)
    return one_line(done, "wsgi-tracker")


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        ("no_such_site.wsgi:app", "ModuleNotFoundError: No module named 'no_such_site'"),
        (
            "examples.flask_site.app:nothing",
            "AppImportError: Failed to find attribute 'nothing' in 'examples.flask_site.app'.",
        ),
        (
            "examples.django_site.wsgi:application",  # the site's settings are wrong
            "ImproperlyConfigured: unknown setting 'numwant_mx' in "
            "settings.TRACKER['numwant_mx'] (did you mean numwant_max?)",
        ),
    ],
)
def test_a_bad_app_is_one_line(app, reason):
    line = serve("--app", app, DJANGO_SETTINGS_MODULE="django_settings_typo")
    assert line == f"wsgi-tracker: --app {app} cannot be loaded: {reason}"


def test_an_http_address_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("wsgi_tracker.running.cli", "serve", "--bind", f"127.0.0.1:{port}")
    line = one_line(done, "wsgi-tracker")
    assert line == f"wsgi-tracker: cannot listen on 127.0.0.1:{port}: address already in use"


def test_an_unwritable_snapshot_path_is_one_line(tmp_path):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    path = in_the_way / "swarms.snapshot"
    expected = f"snapshot_path {path}: cannot write in {in_the_way}: Not a directory"
    assert serve("--snapshot-path", str(path)) == f"wsgi-tracker: {expected}"
    done = run("udp_sidecar", "--udp-bind", "127.0.0.1", "--udp-port", str(free_port()),
               "--snapshot-path", str(path))  # fmt: skip
    assert one_line(done, "udp-sidecar") == f"udp-sidecar: {expected}"


def test_a_udp_port_in_use_under_serve_is_the_sidecars_line_and_serves_stop():
    sock = os.path.join(short_tempdir("cli-"), "sync.sock")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = run(
            "wsgi_tracker.running.cli", "serve", "--bind", f"127.0.0.1:{free_port()}",
            "--udp-bind", "127.0.0.1", "--udp-port", str(port), "--sync-socket", sock,
        )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == f"udp-sidecar: cannot bind 127.0.0.1:{port}: address already in use"
    # serve's supervisor adds why it stopped, and restarts nothing; no traceback anywhere.
    assert len(lines) == 2 and "udp-sidecar exited with 2 while starting; stopping" in lines[1]


def test_a_bad_trusted_proxy_is_one_line_before_anything_starts(tmp_path):
    """Found only in the workers before: a traceback in each and gunicorn's exit 3."""
    conf = tmp_path / "tracker.toml"
    conf.write_text('trusted_proxies = ["10.0.0.1", "not-an-ip"]\n')
    rule = "must be IP addresses, networks or 'unix', got ('10.0.0.1', 'not-an-ip')"
    assert serve("--config", str(conf)) == f"wsgi-tracker: trusted_proxies {rule}"
    env_line = serve(WSGI_TRACKER_TRUSTED_PROXIES="1.2.3.0/33")
    assert env_line.startswith("wsgi-tracker: trusted_proxies must be IP addresses")


def test_a_setting_past_its_upper_bound_is_one_line_before_anything_starts(tmp_path):
    """An interval of 2**40 s started, and every UDP announce was a struct.error (the
    reply carries it in 32 bits), with no reply; the sizes had no bound at all."""
    conf = tmp_path / "tracker.toml"
    conf.write_text(f"interval = {2**40}\n")
    assert serve("--config", str(conf)) == f"wsgi-tracker: interval must be 1-604800, got {2**40}"
    line = serve(WSGI_TRACKER_MAX_TORRENTS=str(10**12))
    assert line == f"wsgi-tracker: max_torrents must be 1-1000000000, got {10**12}"


def test_what_an_attack_pass_found_taking_a_traceback_is_one_line(tmp_path):
    """A port past 65535, a config file that is not UTF-8, a Redis port past 65535, two
    endpoints on one path, and --no-udp with a cluster link that runs in udp-sidecar."""
    assert serve_bind("127.0.0.1:99999") == (
        "wsgi-tracker: --bind 127.0.0.1:99999: the port must be 0-65535"
    )
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    assert serve("--config", str(binary)) == (
        f"wsgi-tracker: config file {binary} is not UTF-8 text (byte 0), so not TOML"
    )
    assert serve(WSGI_TRACKER_REDIS_URL="redis://127.0.0.1:99999999/0") == (
        "wsgi-tracker: redis_url has a port that is not a number from 0 to 65535"
    )
    assert serve(WSGI_TRACKER_ANNOUNCE_PATH="/scrape") == (
        "wsgi-tracker: announce_path ('/scrape') is scrape_path ('/scrape') or under it: "
        "one hides the other"
    )
    line = serve(WSGI_TRACKER_ANNOUNCE_PATH="/")
    assert line.startswith("wsgi-tracker: announce_path must start and not end with '/'"), line
    line = serve("--no-udp", WSGI_TRACKER_REDIS_URL="redis://127.0.0.1:6379/0")
    assert line.startswith("wsgi-tracker: --no-udp with redis_url set: the cluster link"), line


def serve_bind(bind: str) -> str:
    return one_line(run("wsgi_tracker.running.cli", "serve", "--bind", bind), "wsgi-tracker")
