"""Where the sync socket lives by default, and a squatted fallback refused in one line.

The default is the user's runtime directory (``$XDG_RUNTIME_DIR``, else
``/run/user/<uid>``), which nobody else can create first; only without one
does it fall back to ``$TMPDIR`` (or ``/tmp``), where another local user may
have made ``wsgi-tracker-<uid>`` already. The tests set ``TMPDIR`` and
``XDG_RUNTIME_DIR`` per test, so the machine's real /tmp is never touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from servers import REPO_ROOT, free_port, http_get, scrape_url, serve

from wsgi_tracker.config import TrackerConfig, default_sync_socket

UID = os.getuid()
UDP_PORT = free_port(socket.AF_INET, socket.SOCK_DGRAM)
NOBODY = 65534


def test_default_is_xdg_runtime_dir_then_run_user_then_tmpdir(tmp_path: Path) -> None:
    run_user = tmp_path / "run-user"
    assert default_sync_socket({"XDG_RUNTIME_DIR": "/x"}, str(run_user)) == (
        "/x/wsgi-tracker/sync.sock"
    )
    assert default_sync_socket({"TMPDIR": "/t"}, str(run_user)) == (
        f"/t/wsgi-tracker-{UID}/wsgi-tracker/sync.sock"
    )
    assert default_sync_socket({}, str(run_user)).startswith(f"/tmp/wsgi-tracker-{UID}/")
    (run_user / str(UID)).mkdir(parents=True)
    assert default_sync_socket({"TMPDIR": "/t"}, str(run_user)) == (
        f"{run_user}/{UID}/wsgi-tracker/sync.sock"
    )
    assert TrackerConfig(sync_socket="").sync_socket_path == default_sync_socket()


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGI_TRACKER_")}
    env.pop("XDG_RUNTIME_DIR", None)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(changes)
    return env


def _squatted_tmpdir(tmp_path: Path) -> Path:
    """A TMPDIR in which another user (nobody) made our fallback directory first."""
    if UID != 0:
        pytest.skip("handing a directory to another user needs root")
    if Path(f"/run/user/{UID}").is_dir():
        pytest.skip("/run/user/<uid> exists here: the /tmp fallback is never used")
    squat = tmp_path / f"wsgi-tracker-{UID}"
    squat.mkdir()
    squat.chmod(0o777)
    os.chown(squat, NOBODY, NOBODY)
    return tmp_path


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "wsgi_tracker.running.cli", "serve", "--workers", "2", "--bind", "127.0.0.1:0"],
        ["-m", "udp_sidecar", "--udp-bind", "127.0.0.1", "--udp-port", str(UDP_PORT)],
    ],
    ids=["serve", "udp-sidecar"],
)
def test_squatted_fallback_fails_at_start_naming_the_setting(
    tmp_path: Path, command: list[str]
) -> None:
    tmpdir = _squatted_tmpdir(tmp_path)
    done = subprocess.run(
        [sys.executable, *command],
        cwd=REPO_ROOT,
        env=_env(TMPDIR=str(tmpdir)),
        capture_output=True,
        timeout=60,
    )
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2, done.stderr.decode()
    assert len(lines) == 1, lines
    (message,) = lines
    assert f"{tmpdir}/wsgi-tracker-{UID} belongs to uid {NOBODY}" in message
    assert "set sync_socket (WSGI_TRACKER_SYNC_SOCKET)" in message
    assert not (tmpdir / f"wsgi-tracker-{UID}" / "wsgi-tracker" / "sync.sock").exists()


def test_serve_puts_the_sync_socket_in_xdg_runtime_dir(tmp_path: Path) -> None:
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = _env(XDG_RUNTIME_DIR=str(runtime), TMPDIR=str(tmp_path / "unused"))
    with serve(tmp_path, workers=2, default_socket=True, env=env) as stack:
        sock = runtime / "wsgi-tracker" / "sync.sock"
        assert sock.is_socket()
        assert sock.stat().st_mode & 0o777 == 0o600
        assert http_get(scrape_url(stack.http.url + "/scrape", b"\0" * 20))[0] == 200
        assert "sees only part of every swarm" not in stack.log()
    assert not (tmp_path / "unused").exists()
