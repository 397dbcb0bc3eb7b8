"""TrackerConfig: every setting declared once, read once, validated once.

Each field below is the whole declaration of one setting (``_setting``: its
default, doc, check, the settings its default follows); the TOML file,
the ``WSGI_TRACKER_*`` variables, the flags of ``wsgi-tracker`` and
``udp-sidecar``, the errors and ``docs/CONFIG.md`` are all derived from it
(gunicorn's model; ``settings.py`` is the machinery). To add a setting, add a
field here and regenerate the docs: ``wsgi-tracker config --markdown > docs/CONFIG.md``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wsgi_tracker.settings import (
    ENV_PREFIX,
    FOLLOWING,
    Check,
    ConfigError,
    Follows,
    Setting,
    between,
    did_you_mean,
    one_of,
    settings_of,
    url_path,
)
from wsgi_tracker.settings import setting as _setting

__all__ = ["ENV_PREFIX", "ConfigError", "TrackerConfig", "load_with_sources"]

CONFIG_FILE_ENV = "WSGI_TRACKER_CONFIG"
# Upper bounds, so a typo or an overflow is one line naming the setting at load. An
# interval of 2**40 s was a struct.error on every UDP announce (the reply carries it in
# 32 bits) and no reply at all; the others only bound what a value could mean.
DAY = 86400
WEEK = 7 * DAY  # the longest a client is asked to wait between announces
FOUR_WEEKS = 4 * WEEK  # a peer TTL: the default follows 2 * (interval + jitter) + 60
MOST_PER_REQUEST = 100_000  # peers, hashes, offers or query bytes in one request or reply
MOST_HELD = 1_000_000_000  # torrents, peers, events, connections (a peer is ~200 bytes)
MOST_BYTES = 1 << 40
WS_MOST_BYTES = 1 << 20  # websocket.server.MAX_OUTBOX_BYTES: a longer message overflows it
MOST_PROCESSES = 1024
# peer_id prefixes: 1-20 characters of latin-1 (peer ids are bytes; clients use ASCII).
_PEER_ID_PREFIXES = Check(
    "be 1-20 latin-1 characters each",
    lambda v: all(0 < len(p) <= 20 and all(ord(c) < 256 for c in p) for p in v),
)


def _is_proxy(entry: str) -> bool:
    """An address, a network or 'unix', as http.proxy.TrustedNetworks reads the entry."""
    if entry.strip().lower() == "unix":
        return True
    try:
        ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return False
    return True


# Checked here, where every setting is: found only by the worker, a bad entry was a
# traceback in each worker and gunicorn's "Worker failed to boot" (exit 3).
_PROXIES = Check("be IP addresses, networks or 'unix'", lambda v: all(_is_proxy(e) for e in v))
# Variables read by the processes around the tracker rather than by TrackerConfig.
PROCESS_ENV = {
    CONFIG_FILE_ENV: "The TOML file to read when no `--config` is given.",
    "WSGI_TRACKER_BIND": "The HTTP address of the project's gunicorn config.",
    "WSGI_TRACKER_WORKERS": "The worker count of the project's gunicorn config (default: cores).",
    "WSGI_TRACKER_APP": "The WSGI app `deploy/gunicorn.conf.py` serves.",
    "WSGI_TRACKER_PURE": "`1`: build, or run, the pure Python modules, not the compiled ones.",
}


def default_sync_socket(
    environ: Mapping[str, str] | None = None, run_user: str = "/run/user"
) -> str:
    """A per-user runtime directory, so two users' trackers never share a hub.

    ``$XDG_RUNTIME_DIR``, else ``/run/user/<uid>`` where it exists (systemd
    makes both, 0700, owned by the user: nobody else can be there first).
    Only without either does it fall back to ``$TMPDIR`` or ``/tmp``, where
    another user may have made the directory first; the hub and ``serve``
    then refuse to start and say which setting to use (``sync_socket``).
    """
    env = os.environ if environ is None else environ
    uid = os.getuid()
    base = env.get("XDG_RUNTIME_DIR") or ""
    if not base and os.path.isdir(f"{run_user}/{uid}"):
        base = f"{run_user}/{uid}"
    if not base:
        base = str(Path(env.get("TMPDIR") or "/tmp") / f"wsgi-tracker-{uid}")
    return str(Path(base) / "wsgi-tracker" / "sync.sock")


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """All tracker settings. Build with ``TrackerConfig.load()`` or keyword arguments."""

    # --- HTTP routes -------------------------------------------------------------------
    announce_path: str = _setting(
        "/announce", "Path of the HTTP announce endpoint.", check=url_path()
    )
    scrape_path: str = _setting("/scrape", "Path of the HTTP scrape endpoint.", check=url_path())
    # --- announce policy ---------------------------------------------------------------
    interval: int = _setting(
        1800, "Seconds a client should wait between announces.", check=between(1, WEEK)
    )
    interval_jitter: int = _setting(
        120,
        "Up to this many seconds are added at random to each interval, to spread load.",
        check=between(0, WEEK),
    )
    min_interval: int = _setting(
        900,
        "Seconds a client must wait between announces.",
        check=between(1, WEEK),
        follows=Follows(("interval",), lambda interval: max(1, interval // 2), "interval / 2"),
    )
    peer_ttl: int = _setting(
        3900,
        "Seconds a peer is kept without re-announcing: two longest intervals and a minute, "
        "so a peer survives one lost announce.",
        check=between(1, FOUR_WEEKS),
        follows=Follows(
            ("interval", "interval_jitter"),
            lambda interval, jitter: 2 * (interval + jitter) + 60,
            "2 * (interval + interval_jitter) + 60",
        ),
    )
    numwant_max: int = _setting(
        200, "Most peers handed out in one reply.", check=between(1, MOST_PER_REQUEST)
    )
    numwant_default: int = _setting(
        50,
        "Peers handed out when the client does not say.",
        check=between(0, MOST_PER_REQUEST),
        follows=Follows(("numwant_max",), lambda most: min(50, most), "min(50, numwant_max)"),
    )
    allow_ip_param: bool = _setting(
        False,
        "Believe the announce 'ip' parameter / UDP ip field (off: clients could aim "
        "the swarm at third parties).",
    )
    # --- bounds ------------------------------------------------------------------------
    max_torrents: int = _setting(
        1_000_000,
        "Most torrents held; past it the stalest torrent is evicted.",
        check=between(1, MOST_HELD),
    )
    max_peers_per_torrent: int = _setting(
        200_000,
        "Most peers in one torrent; past it new peers are refused ('swarm is full').",
        check=between(1, MOST_HELD),
    )
    max_peers_per_address: int = _setting(
        16,
        "Most peers in one torrent from one address (an IPv4 address or an IPv6 /64); "
        "past it that address's new peers are refused. Sized for a household behind one "
        "NAT (docs/HARDENING.md).",
        check=between(1, MOST_HELD),
    )
    max_peers_per_host: int = _setting(
        100_000,
        "Most peers from one address (an IPv4 address or an IPv6 /64) over all torrents, "
        "in each process; past it that address's new peers are refused, so no one address "
        "fills max_peers. Counted in 262,144 buckets by a hash of the address, so an "
        "address may share its count with a few others (docs/HARDENING.md).",
        check=between(1, MOST_HELD),
    )
    max_peers: int = _setting(
        5_000_000,
        "Most peers one process holds over all torrents (~200 bytes each); past it new "
        "peers are refused ('tracker is full').",
        check=between(1, MOST_HELD),
    )
    max_scrape_hashes: int = _setting(
        64, "Most info_hashes in one HTTP scrape request.", check=between(1, MOST_PER_REQUEST)
    )
    full_scrape: bool = _setting(False, "Answer a scrape without info_hash with every torrent.")
    max_query_bytes: int = _setting(
        5120,
        "Longest HTTP query string accepted (the default takes a scrape of 64 info_hashes, "
        "each percent-encoded: 4,543 bytes).",
        check=between(1, MOST_PER_REQUEST),
    )
    # --- WebSocket (WebTorrent) peers, docs/WEBTORRENT.md; aquatic_ws's defaults ----------
    ws_interval: int = _setting(
        120, "Seconds a WebSocket peer should wait between announces.", check=between(1, WEEK)
    )
    ws_peer_ttl: int = _setting(
        300,
        "Seconds a WebSocket peer is kept without re-announcing (its socket may be gone).",
        check=between(1, FOUR_WEEKS),
    )
    ws_idle_timeout: int = _setting(
        180,
        "Seconds a WebSocket connection may stay silent before it is closed.",
        check=between(1, DAY),
    )
    ws_max_offers: int = _setting(
        10, "Most WebRTC offers in one WebSocket announce.", check=between(0, MOST_PER_REQUEST)
    )
    ws_max_peers_per_connection: int = _setting(
        200,
        "Most (info_hash, peer_id) pairs one WebSocket connection may announce; the next get "
        "a failure reason, so one socket cannot fill the WebSocket swarms. 0: no bound.",
        check=between(0, MOST_HELD),
    )
    ws_max_queued_bytes: int = _setting(
        64 << 20,
        "Most bytes one worker holds queued for WebSocket readers slower than the messages "
        "relayed to them, over all its connections (each is also closed past 1 MiB); past "
        "it the connection with the most queued is closed and logged. 0: no bound.",
        check=between(0, MOST_BYTES),
    )
    ws_max_message_bytes: int = _setting(
        65536, "Largest WebSocket message accepted.", check=between(1, WS_MOST_BYTES)
    )
    ws_max_frame_bytes: int = _setting(
        16384, "Largest WebSocket frame accepted.", check=between(1, WS_MOST_BYTES)
    )
    # --- reverse proxy -----------------------------------------------------------------
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        "Addresses or networks of reverse proxies whose X-Forwarded-For is believed.",
        check=_PROXIES,
    )
    # --- HTTP server (wsgi_tracker.http.worker.TrackerWorker; docs/HARDENING.md) ---------
    http_head_timeout: int = _setting(
        10,
        "Seconds a connection has to send a complete request head, counted from its "
        "first byte (from the connect for a new connection); slower ones (slowloris) get "
        "408 and are closed. Idle time between keep-alive requests is gunicorn's keepalive.",
        check=between(1, DAY),
    )
    http_body_min_rate: int = _setting(
        500,
        "Bytes per second a request body must keep up while the app reads it, after a first "
        "http_head_timeout seconds (Apache's mod_reqtimeout MinRate): a body trickled slower "
        "(a slow POST) gets 408 and is closed. 0: no rule; each read still waits at most "
        "gunicorn's keepalive.",
        check=between(0, MOST_BYTES),
    )
    http_max_body_bytes: int = _setting(
        16 * 1024 * 1024,
        "Largest request body TrackerWorker takes for the host site (by Content-Length or "
        "chunked; the tracker itself reads none): a larger one gets 413 and the connection is "
        "closed, before the app runs when its Content-Length says so (nginx's "
        "client_max_body_size, which applies in front of it). 0: no limit.",
        check=between(0, MOST_BYTES),
    )
    http_connections_per_address: int = _setting(
        128,
        "Most connections one client address may hold open in one TrackerWorker process "
        "(the next get 503 and are closed), so one host cannot take every connection; "
        "0: no cap. Unix-socket peers and trusted_proxies are exempt (limit them in the proxy).",
        check=between(0, MOST_HELD),
    )
    # --- UDP ---------------------------------------------------------------------------
    udp_port: int = _setting(6969, "UDP port of udp-sidecar.", check=between(1, 65535))
    udp_bind: tuple[str, ...] = _setting(("0.0.0.0", "::"), "Addresses udp-sidecar binds.")
    connection_id_ttl: int = _setting(
        120,
        "Seconds a UDP connection id stays valid (BEP 15 says two minutes).",
        check=between(1, DAY),
    )
    udp_processes: int = _setting(
        1,
        "UDP-serving processes udp-sidecar runs on udp_port (SO_REUSEPORT), one of them the "
        "sync hub; 0: one per core it may run on. Each holds a full replica and applies every "
        "other process's changes (docs/UDP.md); more than 1 needs the sync hub.",
        check=between(0, MOST_PROCESSES),
    )
    udp_steering: bool = _setting(
        True,
        "With udp_processes above 1, announces go to the process that owns their torrent "
        "(the info_hash's first 4 bytes modulo the process count, a BPF program on the "
        "SO_REUSEPORT group), so each process answers its share of the torrents; connects "
        "and scrapes go by the kernel's hash. Off: every datagram by the kernel's hash "
        "(docs/UDP.md).",
    )
    # --- sync and persistence ----------------------------------------------------------
    sync_socket: str = _setting(
        "",
        "Unix socket of the sync hub. Empty: the per-user default, joined by udp-sidecar, "
        "wsgi-tracker serve and the project's gunicorn config only, so flask run, runserver "
        "and test clients never join a live hub. A path: every process joins it. 'off': no sync.",
    )
    read_your_writes: bool = _setting(
        True,
        "With the sync hub, an announce's reply waits (at most 30 ms; a completion's 1 s) "
        "until the hub has passed the change to every process, so the client's next request "
        "to any of them sees it (docs/SYNC.md). Off: no reply waits for the hub, and a "
        "completion answered just before the hub dies may be lost; a request still applies "
        "what the hub already sent before it reads.",
    )
    lazy_apply: bool = _setting(
        False,
        "With the sync hub, a worker (or a second UDP process) files other processes' changes "
        "under their torrents and applies them when that torrent is next read, instead of "
        "at once (docs/SYNC.md, 'Applying lazily'). It defers the work: past 250,000 "
        "stashed records every record is merged after all, so under a sustained load an "
        "idle process pays about twice what it pays eagerly, and a busy worker's tail "
        "latency under a UDP flood was worse in bench full. For remote changes that come "
        "slower than ~64/s or in bursts.",
    )
    snapshot_path: str = _setting("", "File the sidecar saves the swarms to; empty: no snapshot.")
    snapshot_interval: int = _setting(60, "Seconds between snapshots.", check=between(1, DAY))
    # --- cluster (docs/CLUSTER.md) -----------------------------------------------------
    redis_url: str = _setting(
        "",
        "Redis (or Valkey) joining this machine's tracker to others: redis:// or rediss:// "
        "(TLS), credentials in the URL; empty: this machine alone.",
    )
    cluster_name: str = _setting(
        "wsgi-tracker",
        "Prefix of the cluster's Redis keys (several clusters can share a Redis).",
        check=Check("be non-empty and without braces", lambda v: v and not set(v) & set("{}")),
    )
    cluster_node: str = _setting("", "This node's name in stats; empty: the host name.")
    cluster_stream_maxlen: int = _setting(
        100_000,
        "Entries (batches of changes) the cluster stream keeps, about.",
        check=between(1, MOST_HELD),
    )
    cluster_snapshot_interval: int = _setting(
        30,
        "Seconds between the cluster snapshots in Redis (one node writes each).",
        check=between(1, DAY),
    )
    # --- access (docs/ACCESS.md) -------------------------------------------------------
    access_mode: str = _setting(
        "public",
        "Which torrents are served: 'public' (any), 'whitelist' or 'blacklist'.",
        check=one_of("public", "whitelist", "blacklist"),
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
        60,
        "Seconds the answers of the authenticate callable are cached; 0: ask every time.",
        check=between(0, DAY),
    )
    announce_hook: str = _setting(
        "", "Announce hook as 'module:callable', given lists of AnnounceEvent (docs/ACCESS.md)."
    )
    hook_queue_size: int = _setting(
        100_000,
        "Announce events held for the hook; past it new events are dropped and counted.",
        check=between(1, MOST_HELD),
    )
    hook_flush_seconds: int = _setting(
        3,
        "Seconds between the announce hook's batches (each one database transaction).",
        check=between(1, DAY),
    )
    client_allow: tuple[str, ...] = _setting(
        (),
        "Only clients whose peer_id starts with one of these may announce (e.g. -qB, -TR, "
        "-LT, -DE); empty: any client.",
        check=_PEER_ID_PREFIXES,
    )
    client_deny: tuple[str, ...] = _setting(
        (),
        "Clients whose peer_id starts with one of these are refused (checked before client_allow).",
        check=_PEER_ID_PREFIXES,
    )
    min_interval_enforced: bool = _setting(
        False,
        "Refuse a regular announce sooner than min_interval after the peer's previous one "
        "(started, completed and stopped always pass).",
    )
    # --- statistics (docs/STATS.md) ----------------------------------------------------
    stats_path: str = _setting(
        "",
        "Path of the /stats JSON (and of <path>.html, the live page); empty: off.",
        check=url_path(optional=True),
    )
    metrics_path: str = _setting(
        "", "Path of the Prometheus /metrics text; empty: off.", check=url_path(optional=True)
    )
    stats_token: str = _setting(
        "", "If set, stats and metrics need ?token=<it> or 'Authorization: Bearer <it>'."
    )
    # --- logging (every process: serve, gunicorn workers, udp-sidecar) ------------------
    log_level: str = _setting(
        "info",
        "Lowest level logged: debug, info, warning or error.",
        check=one_of("debug", "info", "warning", "error"),
    )
    log_format: str = _setting(
        "text",
        "'text' (time, level, process, logger, message) or 'json' (one object a line).",
        check=one_of("text", "json"),
    )

    def __post_init__(self) -> None:
        for s in SETTINGS:
            if s.follows is not None and getattr(self, s.name) is FOLLOWING:
                object.__setattr__(self, s.name, s.follows.value(self))
            s.validate(getattr(self, s.name))
        for constraint in CONSTRAINTS:
            problem = constraint(self)
            if problem:
                raise ConfigError(problem)

    @property
    def sync_socket_path(self) -> str | None:
        """The hub socket to use, or None when sync is switched off."""
        if self.sync_socket == "off":
            return None
        return self.sync_socket or default_sync_socket()

    @property
    def sync_explicit(self) -> bool:
        """Whether sync_socket names a hub, so that any process (flask run too) joins it."""
        return self.sync_socket not in ("", "off")

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
        layers = [("override", {k: (v, "override") for k, v in overrides.items()})]
        return load_with_sources(file, env, layers)[0]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "settings") -> TrackerConfig:
        """A config from ``values`` (TOML-typed) over the defaults; ``source`` names them."""
        return cls(**_checked(values, source))

    def replace(self, **changes: Any) -> TrackerConfig:
        """A copy with ``changes``; a setting still at its following default keeps following."""
        for s in SETTINGS:
            if (
                s.follows
                and s.name not in changes
                and getattr(self, s.name) == s.follows.value(self)
            ):
                changes[s.name] = FOLLOWING
        return dataclasses.replace(self, **_checked(changes, "replace()", keep=FOLLOWING))


SETTINGS: tuple[Setting, ...] = settings_of(TrackerConfig)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
BY_ENV: dict[str, Setting] = {s.env: s for s in SETTINGS}


def _min_interval_within_interval(c: TrackerConfig) -> str | None:
    if c.min_interval > c.interval:
        return f"min_interval ({c.min_interval}) must not exceed interval ({c.interval})"
    return None


def _peers_outlive_interval(c: TrackerConfig) -> str | None:
    if c.peer_ttl < c.interval:
        return (
            f"peer_ttl ({c.peer_ttl}) must be at least interval ({c.interval}), "
            "or every peer expires before it re-announces"
        )
    return None


def _numwant_default_within_max(c: TrackerConfig) -> str | None:
    if c.numwant_default > c.numwant_max:
        return f"numwant_default ({c.numwant_default}) exceeds numwant_max ({c.numwant_max})"
    return None


def _list_mode_has_list(c: TrackerConfig) -> str | None:
    if c.access_mode != "public" and not c.access_list_file:
        return f"access_mode {c.access_mode!r} needs access_list_file"
    return None


def _paths_apart(c: TrackerConfig) -> str | None:
    """No endpoint's path is another's, or under it (``/announce/x`` is a passkey)."""
    paths = {"announce_path": c.announce_path, "scrape_path": c.scrape_path}
    if c.stats_path:
        paths["stats_path"] = c.stats_path
        paths["stats_path + '.html'"] = c.stats_path + ".html"
    if c.metrics_path:
        paths["metrics_path"] = c.metrics_path
    for name, path in paths.items():
        for other, under in paths.items():
            if other != name and (path == under or path.startswith(under + "/")):
                return f"{name} ({path!r}) is {other} ({under!r}) or under it: one hides the other"
    return None


def _redis_url_scheme(c: TrackerConfig) -> str | None:
    # Not a Check: its error would show the value, and the URL holds the password.
    scheme = c.redis_url.split("://", 1)[0]
    if c.redis_url and scheme not in ("redis", "rediss", "unix"):
        return f"redis_url must start with redis://, rediss:// or unix://, got {scheme!r}"
    if c.redis_url and scheme != "unix":
        try:
            urlsplit(c.redis_url).port  # noqa: B018 (parsing checks the port)
        except ValueError:
            return "redis_url has a port that is not a number from 0 to 65535"
    return None


# Rules between settings, checked after each setting's own check.
CONSTRAINTS: tuple[Callable[[TrackerConfig], str | None], ...] = (
    _min_interval_within_interval,
    _peers_outlive_interval,
    _numwant_default_within_max,
    _list_mode_has_list,
    _redis_url_scheme,
    _paths_apart,
)

# --- loading -------------------------------------------------------------------------------

# One layer of values: setting name -> (value, where it came from).
Layer = tuple[str, Mapping[str, tuple[Any, str]]]


def load_with_sources(
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    layers: Sequence[Layer] = (),
) -> tuple[TrackerConfig, dict[str, str]]:
    """The config from defaults < file < environment < ``layers``, and each value's source.

    A source reads ``default``, ``file PATH``, ``env WSGI_TRACKER_X``, ``flag --x``
    (or whatever a layer says); a following default says what it follows.
    """
    env = os.environ if env is None else env
    found: dict[str, tuple[Any, str]] = {}
    file = file or env.get(CONFIG_FILE_ENV) or None
    if file:
        found.update(read_toml(Path(file)))
    found.update(read_env(env))
    for _label, values in layers:
        found.update(values)
    for name, (_value, where) in found.items():
        if name not in BY_NAME:
            raise ConfigError(f"unknown setting {name!r} in {where}{did_you_mean(name, BY_NAME)}")
    config = TrackerConfig.from_mapping({k: v for k, (v, _) in found.items()})
    sources = {}
    for s in SETTINGS:
        if s.name in found:
            sources[s.name] = found[s.name][1]
        elif s.follows is not None:
            sources[s.name] = f"default (follows {', '.join(s.follows.on)})"
        else:
            sources[s.name] = "default"
    return config, sources


def read_toml(path: Path) -> dict[str, tuple[Any, str]]:
    """Settings at the top level of ``path`` or under ``[tracker]``; any other key is an error."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}), so not TOML"
        ) from None
    section = data.pop("tracker", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'tracker' must be a table ([tracker]), got {section!r}")
    found: dict[str, tuple[Any, str]] = {}
    for where, table in ((f"{path}", data), (f"{path} [tracker]", section)):
        for key, value in table.items():
            if key not in BY_NAME:
                raise ConfigError(f"{where}: unknown setting {key!r}{did_you_mean(key, BY_NAME)}")
            if key in found:
                raise ConfigError(f"{path}: {key!r} is set both at top level and in [tracker]")
            found[key] = (value, f"file {path}")
    return found


def read_env(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """The ``WSGI_TRACKER_*`` settings in ``env``; an unknown such variable is an error."""
    found: dict[str, tuple[Any, str]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in PROCESS_ENV:
            continue
        s = BY_ENV.get(name)
        if s is None:
            known = [*BY_ENV, *PROCESS_ENV]
            raise ConfigError(f"unknown environment variable {name}{did_you_mean(name, known)}")
        found[s.name] = (s.from_text(raw, name), f"env {name}")
    return found


def _checked(values: Mapping[str, Any], source: str, keep: Any = None) -> dict[str, Any]:
    """``values`` with each name known and each value of its setting's type."""
    checked = {}
    for name, value in values.items():
        s = BY_NAME.get(name)
        if s is None:
            raise ConfigError(f"unknown setting {name!r} in {source}{did_you_mean(name, BY_NAME)}")
        checked[name] = value if keep is not None and value is keep else s.coerce(value)
    return checked
