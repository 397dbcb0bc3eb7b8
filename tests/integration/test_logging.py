"""One logging configuration for every process: serve, gunicorn's master and workers, udp-sidecar.

Every line carries time, level, pid and logger, as text or as JSON
(``log_format``); at start each process says what access it enforces (with the
list and passkey counts) and that it joined the hub; losing and regaining the
hub is logged; an error that ends a background greenlet or thread is an ERROR
record like any other. Real processes throughout, with sync on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from servers import REPO_ROOT, Server, gunicorn, http_get, serve, short_tempdir, sidecar, wait_until

pytestmark = pytest.mark.integration

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[\d+\] [\w.]+: \S"
)


def stopped_stderr(server: Server) -> str:
    """Stop ``server`` (SIGTERM to its pid, bounded wait) and return all it wrote."""
    server.proc.terminate()
    assert server.proc.wait(30) == 0
    return server.stderr()


def access_files(tmp_path) -> tuple[str, str, str]:
    whitelist = tmp_path / "whitelist.txt"
    whitelist.write_text("".join(f"{os.urandom(20).hex()}\n" for _ in range(3)))
    passkeys = tmp_path / "passkeys.txt"
    passkeys.write_text("key-one alice\nkey-two bob\n")
    expected = f"access: whitelist of 3 torrents ({whitelist}); private, 2 passkeys ({passkeys})"
    return str(whitelist), str(passkeys), expected


def test_serve_logs_every_process_as_json(tmp_path):
    whitelist, passkeys, access_line = access_files(tmp_path)
    config = (
        f'log_format = "json"\naccess_mode = "whitelist"\naccess_list_file = "{whitelist}"\n'
        f'private = true\npasskeys_file = "{passkeys}"\n'
    )
    with serve(tmp_path / "serve", workers=2, config=config) as running:
        joined = "joined the sync hub"
        assert wait_until(lambda: running.log().count(joined) == 2), "both workers joined"
    entries = [json.loads(line) for line in running.log().splitlines() if line.strip()]
    for entry in entries:
        assert set(entry) == {"time", "level", "pid", "logger", "message"}
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", entry["time"])
    messages = [e["message"] for e in entries]
    assert messages.count(access_line) == 3  # udp-sidecar and each worker
    sock = tmp_path / "serve" / "hub" / "sync.sock"
    assert messages.count(f"joined the sync hub at {sock} (snapshot applied)") == 2
    assert any(m.startswith("udp-sidecar listening on") for m in messages)
    assert any(m.startswith("Booting worker with pid") for m in messages)  # gunicorn's own
    loggers = {e["logger"] for e in entries}
    assert {"udp_sidecar", "wsgi_tracker.sync", "wsgi_tracker.access", "gunicorn.error"} <= loggers
    assert len({e["pid"] for e in entries}) >= 4  # sidecar, master, two workers


def test_text_lines_and_the_hub_lost_and_regained(tmp_path):
    sock = os.path.join(short_tempdir("log-"), "sync.sock")
    env = {"WSGI_TRACKER_SYNC_SOCKET": sock}
    with gunicorn(env=env) as web:
        with sidecar(sync_socket=sock, env=env) as hub:
            assert wait_until(lambda: "joined the sync hub" in web.stderr()), "the worker joined"
            hub_text = stopped_stderr(hub)
        assert wait_until(lambda: "lost the sync hub at" in web.stderr()), "the loss logged"
        with sidecar(sync_socket=sock, env=env):
            regained = "reconnected to the sync hub at"
            assert wait_until(lambda: regained in web.stderr(), 40), "the reconnection logged"
        text = stopped_stderr(web)
    for line in text.splitlines() + hub_text.splitlines():
        assert TEXT_LINE.match(line), line
    assert "access: public" in text


def test_log_level_applies_to_every_process():
    env = {"WSGI_TRACKER_LOG_LEVEL": "warning"}
    with sidecar(env=env) as udp, gunicorn(env=env, workers=2) as web:
        # Two workers and sync off: the config's warning is the one line each worker logs.
        assert wait_until(lambda: web.stderr().count("sees only part") == 2), "both warned"
        texts = stopped_stderr(web), stopped_stderr(udp)
    for text in texts:
        assert "INFO" not in text and "Booting worker" not in text
        assert all(TEXT_LINE.match(line) for line in text.splitlines())


def json_entries(text: str) -> list[dict]:
    """Every line of ``text`` as the JSON object it must be (one that is not fails here)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def background_errors(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["logger"] == "wsgi_tracker.background"]


def test_errors_in_a_workers_background_greenlets_and_threads_are_logged():
    env = {"WSGI_TRACKER_LOG_FORMAT": "json"}
    tests_dir = str(Path(__file__).parents[1])
    with gunicorn("sample_site:app", env=env, extra_args=("--pythonpath", tests_dir)) as web:
        assert http_get(web.url + "/fail-in-background")[0] == 200
        assert wait_until(lambda: web.stderr().count("failed on purpose") >= 2), web.stderr()
        text = stopped_stderr(web)
    errors = background_errors(json_entries(text))
    assert {e["level"] for e in errors} == {"ERROR"}
    for what in ("the greenlet", "the thread"):
        (entry,) = [
            e for e in errors if f"RuntimeError: {what} failed on purpose" in e["exception"]
        ]
        assert "Traceback" in entry["exception"] and "failed with RuntimeError" in entry["message"]
    assert "failing-thread failed with RuntimeError" in {e["message"] for e in errors}


def test_configure_routes_background_errors_in_the_sidecars_and_serves_processes():
    """``logs.configure`` is what udp-sidecar and serve call: a gevent process of its own."""
    script = """
from gevent import monkey; monkey.patch_all()
import threading, gevent
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.running import logs
logs.configure(TrackerConfig(log_format="json"))
def fail(what):
    raise ValueError(what)
gevent.spawn(fail, "greenlet").join()
thread = threading.Thread(target=fail, args=("thread",), name="t-1")
thread.start(); thread.join()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    errors = background_errors(json_entries(done.stderr))
    assert len(errors) == 2, done.stderr
    assert "ValueError: greenlet" in errors[0]["exception"]
    assert errors[1]["message"] == "t-1 failed with ValueError"
