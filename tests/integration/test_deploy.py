"""The deployment files operators copy: deploy/gunicorn.conf.py and deploy/systemd/."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import REPO_ROOT, announce_url, gunicorn, http_get, sidecar, udp_scrape

from wsgi_tracker.running import cli, gunicorn_conf

UNITS = REPO_ROOT / "deploy" / "systemd"
SIDECAR_UNIT = UNITS / "udp-sidecar.service"
GUNICORN_UNIT = UNITS / "wsgi-tracker.service"
OPERATOR_CONF = REPO_ROOT / "deploy" / "gunicorn.conf.py"
INSTALLED_VENV = "/opt/wsgi-tracker/venv"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def unit_environment(path: Path) -> dict[str, str]:
    pairs = [
        line.split("=", 1)[1].split("=", 1)
        for line in path.read_text().splitlines()
        if line.startswith("Environment=")
    ]
    return {key: value for key, value in pairs}


def test_units_start_the_sidecar_first_both_restart_and_share_the_runtime_directory() -> None:
    side, web = unit(SIDECAR_UNIT), unit(GUNICORN_UNIT)
    assert "udp-sidecar.service" in web["Unit"]["After"].split()
    assert "udp-sidecar.service" in web["Unit"]["Wants"].split()
    assert "Requires" not in web["Unit"]  # losing the hub must not stop the HTTP tracker
    assert "wsgi-tracker.service" not in side["Unit"].get("After", "")
    for parsed in (side, web):
        service = parsed["Service"]
        assert service["Restart"] == "on-failure"
        assert service["RuntimeDirectory"] == "wsgi-tracker"
        assert service["RuntimeDirectoryMode"] == "0700"
        assert service["RuntimeDirectoryPreserve"] == "yes"
        assert service["User"] == side["Service"]["User"]
    for path in (SIDECAR_UNIT, GUNICORN_UNIT):
        assert unit_environment(path)["WSGI_TRACKER_SYNC_SOCKET"] == "/run/wsgi-tracker/sync.sock"


def test_units_give_each_child_the_stop_deadline_serve_gives_it() -> None:
    """systemd's TimeoutStopSec is serve's deadline: the sidecar's last save at 1M torrents
    takes ~20 s under load, and the unit's old 15 s killed it before the save was out."""
    side, web = unit(SIDECAR_UNIT), unit(GUNICORN_UNIT)
    assert side["Service"]["TimeoutStopSec"] == f"{cli.SIDECAR_STOP_TIMEOUT:.0f}s"
    assert web["Service"]["TimeoutStopSec"] == f"{cli.GUNICORN_STOP_TIMEOUT:.0f}s"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for path in (SIDECAR_UNIT, GUNICORN_UNIT):
        # Point ExecStart at this interpreter's scripts so verify finds real executables.
        text = path.read_text().replace(INSTALLED_VENV, sys.prefix)
        (tmp_path / path.name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / p.name) for p in UNITS.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.integration
def test_operator_config_with_the_sidecar_shares_http_announces(tmp_path: Path) -> None:
    """As the units run them: gunicorn -c deploy/gunicorn.conf.py, udp-sidecar, one socket."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    sync_socket = str(run_dir / "sync.sock")
    ih = b"deploy-sync-check!!!"
    with (
        sidecar(sync_socket=sync_socket) as udp,
        gunicorn(
            workers=2,
            worker_class=gunicorn_conf.worker_class,
            env={"WSGI_TRACKER_SYNC_SOCKET": sync_socket},
            extra_args=["-c", str(OPERATOR_CONF)],
        ) as web,
    ):
        status, _ = http_get(announce_url(web.url + "/announce", ih, b"d" * 20, 6881, 0))
        assert status == 200
        deadline = time.monotonic() + 10
        (seen,) = udp_scrape(udp.host, udp.port, ih)
        while seen[0] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            (seen,) = udp_scrape(udp.host, udp.port, ih)
        assert seen[0] == 1, f"the hub never heard of the HTTP seeder: {seen}"
