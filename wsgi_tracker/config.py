"""TrackerConfig: every setting declared once, read once, validated once.

Each field carries its own documentation in ``metadata["doc"]``; the TOML file,
the ``WSGI_TRACKER_*`` environment variables and ``docs/CONFIG.md`` are all
derived from these declarations so they cannot drift apart (gunicorn's model).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "WSGI_TRACKER_"
CONFIG_FILE_ENV = "WSGI_TRACKER_CONFIG"


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


def default_sync_socket() -> str:
    """A per-user runtime directory, so two users' trackers never share a hub."""
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/wsgi-tracker-{os.getuid()}"
    return str(Path(base) / "wsgi-tracker" / "sync.sock")


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """All tracker settings. Build with ``TrackerConfig.load()`` or keyword arguments."""

    # --- HTTP routes -------------------------------------------------------------------
    announce_path: str = _setting("/announce", "Path of the HTTP announce endpoint.")
    scrape_path: str = _setting("/scrape", "Path of the HTTP scrape endpoint.")
    # --- announce policy ---------------------------------------------------------------
    interval: int = _setting(1800, "Seconds a client should wait between announces.")
    interval_jitter: int = _setting(
        120, "Up to this many seconds are added at random to each interval, to spread load."
    )
    min_interval: int = _setting(900, "Seconds a client must wait between announces.")
    peer_ttl: int = _setting(
        3900, "Seconds a peer is kept without re-announcing (a little over two intervals)."
    )
    numwant_default: int = _setting(50, "Peers handed out when the client does not say.")
    numwant_max: int = _setting(200, "Most peers handed out in one reply.")
    allow_ip_param: bool = _setting(
        False,
        "Believe the announce 'ip' parameter / UDP ip field (off: clients could aim "
        "the swarm at third parties).",
    )
    # --- bounds ------------------------------------------------------------------------
    max_torrents: int = _setting(
        1_000_000, "Most torrents held; past it the stalest torrent is evicted."
    )
    max_peers_per_torrent: int = _setting(
        200_000, "Most peers in one torrent; past it new peers are refused ('swarm is full')."
    )
    max_scrape_hashes: int = _setting(64, "Most info_hashes in one HTTP scrape request.")
    full_scrape: bool = _setting(False, "Answer a scrape without info_hash with every torrent.")
    max_query_bytes: int = _setting(2048, "Longest HTTP query string accepted.")
    # --- reverse proxy -----------------------------------------------------------------
    trusted_proxies: tuple[str, ...] = _setting(
        (), "Addresses or networks of reverse proxies whose X-Forwarded-For is believed."
    )
    # --- UDP ---------------------------------------------------------------------------
    udp_port: int = _setting(6969, "UDP port of udp-sidecar.")
    udp_bind: tuple[str, ...] = _setting(("0.0.0.0", "::"), "Addresses udp-sidecar binds.")
    connection_id_ttl: int = _setting(
        120, "Seconds a UDP connection id stays valid (BEP 15 says two minutes)."
    )
    # --- sync and persistence ----------------------------------------------------------
    sync_socket: str = _setting(
        "", "Unix socket of the sync hub; empty for the per-user default. 'off' disables sync."
    )
    snapshot_path: str = _setting("", "File the sidecar saves the swarms to; empty: no snapshot.")
    snapshot_interval: int = _setting(60, "Seconds between snapshots.")
    # --- access (docs/ACCESS.md) -------------------------------------------------------
    access_mode: str = _setting(
        "public", "Which torrents are served: 'public' (any), 'whitelist' or 'blacklist'."
    )
    access_list_file: str = _setting(
        "",
        "File of info_hashes (40 hex or 32 base32 chars per line) for whitelist/blacklist; "
        "re-read when it changes and on SIGHUP.",
    )
    private: bool = _setting(
        False, "Private tracker: announce only to /announce/<passkey> with a known passkey."
    )
    passkeys_file: str = _setting(
        "", "File of 'passkey [user]' lines for private mode; re-read like access_list_file."
    )
    authenticate: str = _setting(
        "",
        "Passkey check as 'module:callable' (passkey -> bool or user id), so the UDP "
        "sidecar can use the host app's check too.",
    )
    passkey_cache_ttl: int = _setting(
        60, "Seconds the answers of the authenticate callable are cached; 0: ask every time."
    )
    announce_hook: str = _setting(
        "", "Announce hook as 'module:callable', given lists of AnnounceEvent (docs/ACCESS.md)."
    )
    hook_queue_size: int = _setting(
        10_000, "Announce events held for the hook; past it new events are dropped and counted."
    )
    # --- statistics (docs/STATS.md) ----------------------------------------------------
    stats_path: str = _setting(
        "", "Path of the /stats JSON (and of <path>.html, the live page); empty: off."
    )
    metrics_path: str = _setting("", "Path of the Prometheus /metrics text; empty: off.")
    stats_token: str = _setting(
        "", "If set, stats and metrics need ?token=<it> or 'Authorization: Bearer <it>'."
    )

    def __post_init__(self) -> None:
        for name in (
            "interval",
            "min_interval",
            "peer_ttl",
            "numwant_max",
            "max_torrents",
            "max_peers_per_torrent",
            "max_scrape_hashes",
            "max_query_bytes",
            "connection_id_ttl",
            "snapshot_interval",
            "hook_queue_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("interval_jitter", "numwant_default", "passkey_cache_ttl"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.min_interval > self.interval:
            raise ConfigError(
                f"min_interval ({self.min_interval}) must not exceed interval ({self.interval})"
            )
        if self.peer_ttl < self.interval:
            raise ConfigError(
                f"peer_ttl ({self.peer_ttl}) must be at least interval ({self.interval}), "
                "or every peer expires before it re-announces"
            )
        if self.numwant_default > self.numwant_max:
            raise ConfigError(
                f"numwant_default ({self.numwant_default}) exceeds numwant_max ({self.numwant_max})"
            )
        if not 1 <= self.udp_port <= 65535:
            raise ConfigError(f"udp_port must be 1-65535, got {self.udp_port}")
        for name in ("announce_path", "scrape_path"):
            if not getattr(self, name).startswith("/"):
                raise ConfigError(f"{name} must start with '/', got {getattr(self, name)!r}")
        for name in ("stats_path", "metrics_path"):
            value = getattr(self, name)
            if value and (not value.startswith("/") or value.endswith("/")):
                raise ConfigError(f"{name} must start and not end with '/', got {value!r}")
        if self.access_mode not in ("public", "whitelist", "blacklist"):
            raise ConfigError(
                f"access_mode must be public, whitelist or blacklist, got {self.access_mode!r}"
            )
        if self.access_mode != "public" and not self.access_list_file:
            raise ConfigError(f"access_mode {self.access_mode!r} needs access_list_file")

    # --- loading -----------------------------------------------------------------------
    @property
    def sync_socket_path(self) -> str | None:
        """The hub socket to use, or None when sync is switched off."""
        if self.sync_socket == "off":
            return None
        return self.sync_socket or default_sync_socket()

    @classmethod
    def load(
        cls,
        file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> TrackerConfig:
        """Defaults, then the TOML file, then ``WSGI_TRACKER_*`` variables, then overrides.

        The file defaults to the one named by ``WSGI_TRACKER_CONFIG``.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        file = file or env.get(CONFIG_FILE_ENV) or None
        if file:
            values.update(_read_toml(Path(file)))
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _from_text(f, raw)
        values.update(overrides)
        return cls.from_mapping(values, source="settings")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "settings") -> TrackerConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s) in {source}: {', '.join(unknown)}")
        checked = {name: _check_type(known[name], v) for name, v in values.items()}
        return cls(**checked)

    def replace(self, **changes: Any) -> TrackerConfig:
        return dataclasses.replace(self, **changes)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    # Allow the settings either at top level or under [tracker].
    return dict(data.get("tracker", data))


def _kind(f: dataclasses.Field[Any]) -> str:
    return str(f.type).split("[")[0]


def _from_text(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = _kind(f)
    name = ENV_PREFIX + f.name.upper()
    if kind == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if kind == "tuple":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _check_type(f: dataclasses.Field[Any], value: Any) -> Any:
    kind = _kind(f)
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "tuple": lambda v: isinstance(v, list | tuple) and all(isinstance(x, str) for x in v),
    }[kind]
    if not ok(value):
        raise ConfigError(f"{f.name} must be of type {f.type}, got {value!r}")
    return tuple(value) if kind == "tuple" else value


def describe() -> str:
    """The documented list of settings (docs/CONFIG.md is generated from it)."""
    lines = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(TrackerConfig):
        env = ENV_PREFIX + f.name.upper()
        lines.append(f"| `{f.name}` | `{env}` | `{f.default!r}` | {f.metadata['doc']} |")
    return "\n".join(lines)
