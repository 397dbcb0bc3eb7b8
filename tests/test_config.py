"""TrackerConfig: defaults < file < environment < overrides; every error names its setting."""

from __future__ import annotations

import dataclasses

import pytest

from wsgi_tracker.config import ConfigError, TrackerConfig, describe


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
        ({"WSGI_TRACKER_NUMWANT_MAX": "0"}, "numwant_max must be at least 1, got 0"),
        ({"WSGI_TRACKER_INTERVAL_JITTER": "-1"}, "interval_jitter must not be negative"),
        ({"WSGI_TRACKER_MIN_INTERVAL": "2000"}, "min_interval (2000) must not exceed interval"),
        ({"WSGI_TRACKER_PEER_TTL": "100"}, "peer_ttl (100) must be at least interval"),
        ({"WSGI_TRACKER_NUMWANT_DEFAULT": "500"}, "numwant_default (500) exceeds numwant_max"),
        ({"WSGI_TRACKER_UDP_PORT": "70000"}, "udp_port must be 1-65535, got 70000"),
        ({"WSGI_TRACKER_SCRAPE_PATH": "scrape"}, "scrape_path must start with '/'"),
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
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) in settings: intervall"):
        TrackerConfig.load(toml_file("intervall = 5\n"), env={})


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
    table = describe()
    for f in dataclasses.fields(TrackerConfig):
        assert f.metadata["doc"]
        assert f"`{f.name}`" in table and f"`WSGI_TRACKER_{f.name.upper()}`" in table
