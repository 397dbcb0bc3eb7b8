"""TrackerConfig: defaults < file < environment < overrides; every error names its setting."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from wsgi_tracker.config import (
    PROCESS_ENV,
    SETTINGS,
    ConfigError,
    TrackerConfig,
    load_with_sources,
)
from wsgi_tracker.settings import markdown

CONFIG_MD = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


@pytest.fixture
def toml_file(tmp_path):
    def write(text: str):
        path = tmp_path / "tracker.toml"
        path.write_text(text)
        return path

    return write


def test_defaults_are_the_documented_policy():
    cfg = TrackerConfig.load(env={})
    assert (cfg.interval, cfg.min_interval, cfg.numwant_default, cfg.numwant_max) == (
        1800,
        900,
        50,
        200,
    )
    # A peer survives one lost announce even when both intervals drew the longest jitter.
    assert cfg.peer_ttl > 2 * (cfg.interval + cfg.interval_jitter)
    assert cfg == TrackerConfig()


def test_file_then_env_then_overrides_take_precedence(toml_file):
    path = toml_file("interval = 1000\nmin_interval = 100\nnumwant_max = 80\nfull_scrape = true\n")
    env = {"WSGI_TRACKER_MIN_INTERVAL": "200", "WSGI_TRACKER_NUMWANT_MAX": "90"}
    cfg = TrackerConfig.load(path, env, numwant_max=120)
    assert (cfg.interval, cfg.min_interval, cfg.numwant_max, cfg.full_scrape) == (
        1000,
        200,
        120,
        True,
    )


def test_file_named_by_environment_is_read(toml_file):
    path = toml_file('[tracker]\nannounce_path = "/tracker/announce"\n')
    cfg = TrackerConfig.load(env={"WSGI_TRACKER_CONFIG": str(path)})
    assert cfg.announce_path == "/tracker/announce"


def test_environment_text_is_converted_per_type():
    cfg = TrackerConfig.load(
        env={
            "WSGI_TRACKER_FULL_SCRAPE": "yes",
            "WSGI_TRACKER_ALLOW_IP_PARAM": "off",
            "WSGI_TRACKER_MAX_TORRENTS": "10",
            "WSGI_TRACKER_TRUSTED_PROXIES": "127.0.0.1, ::1,",
        }
    )
    assert (cfg.full_scrape, cfg.allow_ip_param, cfg.max_torrents) == (True, False, 10)
    assert cfg.trusted_proxies == ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WSGI_TRACKER_INTERVAL": "soon"}, "WSGI_TRACKER_INTERVAL must be an integer, got 'soon'"),
        ({"WSGI_TRACKER_FULL_SCRAPE": "maybe"}, "WSGI_TRACKER_FULL_SCRAPE must be true or false"),
        ({"WSGI_TRACKER_NUMWANT_MAX": "0"}, "numwant_max must be 1-100000, got 0"),
        ({"WSGI_TRACKER_INTERVAL_JITTER": "-1"}, "interval_jitter must be 0-604800, got -1"),
        # upper bounds: 2**40 s of interval was a struct.error on every UDP announce
        ({"WSGI_TRACKER_INTERVAL": str(2**40)}, f"interval must be 1-604800, got {2**40}"),
        ({"WSGI_TRACKER_MAX_TORRENTS": "1" * 30}, "max_torrents must be 1-1000000000, got 111"),
        (
            {"WSGI_TRACKER_WS_MAX_MESSAGE_BYTES": "2000000"},
            "ws_max_message_bytes must be 1-1048576",
        ),
        ({"WSGI_TRACKER_MIN_INTERVAL": "2000"}, "min_interval (2000) must not exceed interval"),
        ({"WSGI_TRACKER_PEER_TTL": "100"}, "peer_ttl (100) must be at least interval"),
        ({"WSGI_TRACKER_NUMWANT_DEFAULT": "500"}, "numwant_default (500) exceeds numwant_max"),
        ({"WSGI_TRACKER_UDP_PORT": "70000"}, "udp_port must be 1-65535, got 70000"),
        ({"WSGI_TRACKER_SCRAPE_PATH": "scrape"}, "scrape_path must start and not end with '/'"),
    ],
)
def test_bad_environment_value_names_the_setting(env, message):
    with pytest.raises(ConfigError) as info:
        TrackerConfig.load(env=env)
    assert message in str(info.value)


def test_bad_file_values_name_the_setting(toml_file):
    with pytest.raises(ConfigError, match="interval must be of type int, got 'x'"):
        TrackerConfig.load(toml_file('interval = "x"\n'), env={})
    with pytest.raises(ConfigError, match="full_scrape must be of type bool"):
        TrackerConfig.load(toml_file("full_scrape = 1\n"), env={})
    path = toml_file("intervall = 5\n")
    with pytest.raises(ConfigError) as info:
        TrackerConfig.load(path, env={})
    assert str(info.value) == f"{path}: unknown setting 'intervall' (did you mean interval?)"


def test_unreadable_or_invalid_file_is_reported_with_its_path(tmp_path, toml_file):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"cannot read config file {missing}"):
        TrackerConfig.load(missing, env={})
    broken = toml_file("interval = = 3\n")
    with pytest.raises(ConfigError, match=f"config file {broken} is not valid TOML"):
        TrackerConfig.load(broken, env={})


def test_unknown_override_is_refused():
    with pytest.raises(ConfigError, match="unknown setting"):
        TrackerConfig.load(env={}, no_such_thing=1)


def test_config_is_frozen_and_replace_revalidates():
    cfg = TrackerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.interval = 5  # type: ignore[misc]
    assert cfg.replace(interval=2000).interval == 2000
    with pytest.raises(ConfigError, match="numwant_max"):
        cfg.replace(numwant_max=0)


def test_sync_socket_off_and_default():
    assert TrackerConfig(sync_socket="off").sync_socket_path is None
    assert TrackerConfig(sync_socket="/run/x.sock").sync_socket_path == "/run/x.sock"
    assert TrackerConfig().sync_socket_path.endswith("sync.sock")


def test_every_setting_is_documented():
    table = markdown(SETTINGS, PROCESS_ENV)
    for f in dataclasses.fields(TrackerConfig):
        assert f.metadata["doc"]
        assert f"`{f.name}`" in table and f"`WSGI_TRACKER_{f.name.upper()}`" in table
        assert f"`--{f.name.replace('_', '-')}`" in table


def test_config_md_is_generated_from_the_declarations():
    assert CONFIG_MD.read_text() == markdown(SETTINGS, PROCESS_ENV) + "\n", (
        "docs/CONFIG.md is stale; regenerate it with: "
        ".venv/bin/wsgi-tracker config --markdown > docs/CONFIG.md"
    )


def test_top_level_keys_beside_the_tracker_table_are_read(toml_file):
    path = toml_file("numwant_max = 70\n[tracker]\ninterval = 1000\n")
    cfg = TrackerConfig.load(path, env={})
    assert (cfg.numwant_max, cfg.interval) == (70, 1000)


def test_unknown_key_under_tracker_names_the_file_and_the_closest_setting(toml_file):
    path = toml_file("[tracker]\nnumwant_mx = 70\n")
    with pytest.raises(ConfigError) as info:
        TrackerConfig.load(path, env={})
    assert str(info.value) == (
        f"{path} [tracker]: unknown setting 'numwant_mx' (did you mean numwant_max?)"
    )


def test_a_key_both_at_top_level_and_in_the_table_is_refused(toml_file):
    path = toml_file("interval = 1000\n[tracker]\ninterval = 1200\n")
    with pytest.raises(ConfigError, match="'interval' is set both at top level and in"):
        TrackerConfig.load(path, env={})


def test_unknown_environment_variable_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        TrackerConfig.load(env={"WSGI_TRACKER_NUMWANT_MX": "5"})
    assert str(info.value) == (
        "unknown environment variable WSGI_TRACKER_NUMWANT_MX "
        "(did you mean WSGI_TRACKER_NUMWANT_MAX?)"
    )
    # The variables of the processes around the tracker are not settings, and not errors.
    assert TrackerConfig.load(env=dict.fromkeys(PROCESS_ENV, "")) == TrackerConfig()


def test_dependent_defaults_follow_the_setting_they_depend_on():
    cfg = TrackerConfig.load(env={}, interval=600)
    assert (cfg.min_interval, cfg.peer_ttl) == (300, 2 * (600 + 120) + 60)
    # ... unless they are set themselves.
    assert TrackerConfig.load(env={}, interval=600, min_interval=100).min_interval == 100
    with pytest.raises(ConfigError, match=r"min_interval \(700\) must not exceed interval"):
        TrackerConfig.load(env={}, interval=600, min_interval=700)
    # replace() keeps a following default following, and an explicit one fixed.
    assert TrackerConfig().replace(interval=600).min_interval == 300
    assert TrackerConfig(min_interval=120).replace(interval=600).min_interval == 120


def test_sources_say_where_each_value_came_from(toml_file):
    path = toml_file("numwant_max = 70\n")
    layer = ("flag", {"interval": (1000, "flag --interval")})
    cfg, sources = load_with_sources(path, {"WSGI_TRACKER_FULL_SCRAPE": "1"}, [layer])
    assert (cfg.numwant_max, cfg.full_scrape, cfg.interval) == (70, True, 1000)
    assert sources["numwant_max"] == f"file {path}"
    assert sources["full_scrape"] == "env WSGI_TRACKER_FULL_SCRAPE"
    assert sources["interval"] == "flag --interval"
    assert sources["min_interval"] == "default (follows interval)"
    assert sources["max_torrents"] == "default"


# --- the command line, as a user runs it ---------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_config_command_prints_effective_values_and_their_sources(toml_file):
    path = toml_file("[tracker]\ninterval = 600\n")
    done = cli("wsgi_tracker.running.cli", "config", "--config", str(path), "--numwant-max", "55")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[tracker]"
    assert f"interval = 600  # file {path}" in lines
    assert "min_interval = 300  # default (follows interval)" in lines
    assert "numwant_max = 55  # flag --numwant-max" in lines
    assert 'announce_path = "/announce"  # default' in lines
    assert len(lines) == 1 + len(SETTINGS)


def test_config_command_hides_the_stats_token_and_the_redis_password(toml_file):
    path = toml_file(
        '[tracker]\nstats_token = "s3cret"\nredis_url = "redis://app:pa55word@[::1]:6379/0"\n'
    )
    done = cli("wsgi_tracker.running.cli", "config", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout and "pa55word" not in done.stdout
    assert f'stats_token = "<hidden>"  # file {path}' in done.stdout
    assert f'redis_url = "redis://app:<hidden>@[::1]:6379/0"  # file {path}' in done.stdout


@pytest.mark.parametrize("command", [("wsgi_tracker.running.cli", "serve"), ("udp_sidecar",)])
def test_both_commands_have_every_settings_flag_and_clean_help(command):
    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    for s in SETTINGS:
        assert s.flag in done.stdout
    assert "``" not in done.stdout and ":func:" not in done.stdout


@pytest.mark.parametrize("command", [("wsgi_tracker.running.cli",), ("udp_sidecar",)])
def test_version_is_printed(command):
    from importlib.metadata import version

    done = cli(*command, "--version")
    assert done.returncode == 0
    assert done.stdout.strip().endswith(version("wsgi-tracker"))


def test_bad_flag_value_is_one_line_naming_the_flag():
    done = cli("wsgi_tracker.running.cli", "config", "--interval", "soon")
    assert done.returncode == 2
    assert done.stderr == "wsgi-tracker: --interval must be an integer, got 'soon'\n"
    done = cli("udp_sidecar", "--udp-port", "0")
    assert done.returncode == 2
    assert done.stderr == "udp-sidecar: udp_port must be 1-65535, got 0\n"


def test_redis_url_needs_a_redis_scheme_and_the_error_never_shows_the_password():
    assert TrackerConfig(redis_url="rediss://u:pw@redis.internal:6380/0").redis_url
    with pytest.raises(ConfigError, match="redis_url must start with redis://") as err:
        TrackerConfig(redis_url="http://u:s3cret@redis.internal/")
    assert "s3cret" not in str(err.value)
    with pytest.raises(ConfigError, match="cluster_name"):
        TrackerConfig(cluster_name="{x}")
