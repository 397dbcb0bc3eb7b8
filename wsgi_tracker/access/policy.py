"""Who may use the tracker, and for which torrents: access lists and passkeys.

``AccessPolicy.admit`` is called by ``TrackerCore`` for every announce and
scrape, over HTTP and UDP alike, before anything is stored. Files are re-read
in every process on their own: a process looks at the file's mtime at most
once a second (from the timestamp the core already took for the announce, so
the check costs a float comparison), and at once after SIGHUP. A file that
fails to parse is refused as a whole and the previous contents stay in force:
half a blacklist would silently let torrents through.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pkgutil import resolve_name
from typing import Any

from cachetools import TTLCache

from wsgi_tracker.config import ConfigError, TrackerConfig

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0  # how often a process looks at a list file's mtime
MAX_PASSKEY_CHARS = 128  # longer keys are refused before any lookup
PASSKEY_CACHE_SIZE = 100_000
# The host's refusals are cached apart: in one cache, 100,000 made-up passkeys (a minute
# of announces from one client) evicted every user's answer, and then each of their
# announces asked the host again. A made-up key is new each time, so only a client that
# repeats a stale one is helped by a refusal cached at all: a few suffice.
REFUSED_CACHE_SIZE = 10_000

# The host app's passkey check: falsy refuses, True admits as the passkey itself,
# anything else admits as that user id (handed to the announce hook).
Authenticator = Callable[[str], Any]


class AccessDenied(Exception):
    """A refused announce or scrape; ``kind`` names the rule for the statistics.

    Not a ``TrackerError``: access sits below the core, which counts the refusal
    and turns it into the client's failure reason.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


NOT_ALLOWED = "torrent not allowed"


def parse_info_hash(token: str) -> bytes:
    """An info_hash written as 40 hex digits or 32 base32 characters (magnet-link forms)."""
    if len(token) == 40:
        try:
            return bytes.fromhex(token)
        except ValueError:
            raise ValueError(f"{token!r} is not 40 hex digits") from None
    if len(token) == 32:
        try:
            return base64.b32decode(token.upper())
        except binascii.Error:
            raise ValueError(f"{token!r} is not 32 base32 characters") from None
    raise ValueError(f"{token!r} is neither 40 hex digits nor 32 base32 characters")


def _lines(text: str) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of each line that is not blank or a # comment."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if fields:
            out.append((number, fields))
    return out


def parse_info_hash_list(text: str, source: str = "list") -> frozenset[bytes]:
    """One info_hash per line (anything after it on the line is a note); raises ValueError."""
    hashes = set()
    for number, fields in _lines(text):
        try:
            hashes.add(parse_info_hash(fields[0]))
        except ValueError as exc:
            raise ValueError(f"{source}:{number}: {exc}") from None
    return frozenset(hashes)


def parse_passkeys(text: str, source: str = "passkeys") -> dict[str, str]:
    """``passkey [user]`` per line; a key without a user stands for itself."""
    keys: dict[str, str] = {}
    for number, fields in _lines(text):
        if len(fields) > 2:
            raise ValueError(
                f"{source}:{number}: expected 'passkey [user]', got {len(fields)} fields"
            )
        if len(fields[0]) > MAX_PASSKEY_CHARS:
            raise ValueError(f"{source}:{number}: passkey longer than {MAX_PASSKEY_CHARS} chars")
        keys[fields[0]] = fields[-1]
    return keys


class WatchedFile:
    """A file re-parsed when its (mtime, size, inode) changes; the last good parse stays."""

    def __init__(self, path: str, parse: Callable[[str, str], Any]) -> None:
        self.path = path
        self.parse = parse
        self.signature: tuple[int, int, int] | None = None
        self.value = self._load(self._stat())  # a broken file at start-up is a config error

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _load(self, signature: tuple[int, int, int]) -> Any:
        with open(self.path, encoding="utf-8") as fh:
            value = self.parse(fh.read(), self.path)
        self.signature = signature
        return value

    def refresh(self, force: bool = False) -> bool:
        """Re-read if the file changed (or ``force``); True when the value was replaced."""
        try:
            signature = self._stat()
            if signature == self.signature and not force:
                return False
            self.value = self._load(signature)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.error("keeping the previous %s: %s", self.path, exc)
            return False
        log.info("reloaded %s", self.path)
        return True


@dataclass
class AccessPolicy:
    """The torrent list and the passkey check for one process."""

    mode: str = "public"
    torrents: WatchedFile | None = None
    private: bool = False
    passkeys: WatchedFile | None = None
    authenticate: Authenticator | None = None
    passkey_cache_ttl: int = 60

    def __post_init__(self) -> None:
        self.next_check = 0.0
        self.force_reload = False
        self.cache: TTLCache[str, Hashable] | None = None
        self.refused: TTLCache[str, bool] | None = None
        if self.authenticate is not None and self.passkey_cache_ttl > 0:
            self.cache = TTLCache(PASSKEY_CACHE_SIZE, self.passkey_cache_ttl)
            self.refused = TTLCache(REFUSED_CACHE_SIZE, self.passkey_cache_ttl)

    @classmethod
    def from_config(
        cls, config: TrackerConfig, authenticate: Authenticator | None = None
    ) -> AccessPolicy | None:
        """The policy ``config`` asks for, or None for a public tracker (no checks at all)."""
        if config.access_mode == "public" and not config.private:
            return None
        torrents = None
        if config.access_mode != "public":
            torrents = _watch(config.access_list_file, "access_list_file", parse_info_hash_list)
        passkeys = None
        if config.private:
            if authenticate is None and config.authenticate:
                authenticate = resolve_callable("authenticate", config.authenticate)
            if config.passkeys_file:
                passkeys = _watch(config.passkeys_file, "passkeys_file", parse_passkeys)
            if authenticate is None and passkeys is None:
                raise ConfigError(
                    "private needs passkeys_file, the authenticate setting, "
                    "or an authenticate callable from the host app"
                )
        policy = cls(
            config.access_mode,
            torrents,
            config.private,
            passkeys,
            authenticate,
            config.passkey_cache_ttl,
        )
        policy.install_sighup()
        return policy

    def describe(self) -> str:
        """What is checked, with the counts loaded: the line each process logs at start."""
        parts = []
        if self.torrents is not None:
            parts.append(
                f"{self.mode} of {len(self.torrents.value)} torrents ({self.torrents.path})"
            )
        if self.private:
            if self.passkeys is not None:
                parts.append(f"private, {len(self.passkeys.value)} passkeys ({self.passkeys.path})")
            if self.authenticate is not None:
                parts.append("private, passkeys checked by the host app")
        return "; ".join(parts)

    # --- reloading -----------------------------------------------------------------------
    def install_sighup(self) -> None:
        """Reload on SIGHUP too (chained to any earlier handler); main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGHUP)

        def on_hup(signum: int, frame: Any) -> None:
            self.reload_soon()
            if callable(previous):
                previous(signum, frame)

        # ValueError: not the main thread of the main interpreter after all.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGHUP, on_hup)

    def reload_soon(self) -> None:
        """Re-read every list file at the next announce or scrape, changed or not."""
        self.force_reload = True
        self.next_check = 0.0

    def refresh(self, now: float) -> None:
        self.next_check = now + RECHECK_SECONDS
        force, self.force_reload = self.force_reload, False
        for watched in (self.torrents, self.passkeys):
            if watched is not None:
                watched.refresh(force)
        if force and self.cache is not None and self.refused is not None:
            self.cache.clear()
            self.refused.clear()

    # --- the checks ----------------------------------------------------------------------
    def admit(self, info_hash: bytes, passkey: str | None, now: float) -> Hashable:
        """The user to credit (the passkey, or the host app's user id); raises AccessDenied."""
        if now >= self.next_check:
            self.refresh(now)
        user: Hashable = passkey
        if self.private:
            user = self.user_for(passkey)
        if self.torrents is not None and not self.torrent_allowed(info_hash):
            raise AccessDenied("torrent_not_allowed", NOT_ALLOWED)
        return user

    def admit_scrape(self, passkey: str | None, now: float) -> None:
        """A scrape needs what an announce needs but for the torrent check (see ``scrape``)."""
        if now >= self.next_check:
            self.refresh(now)
        if self.private:
            self.user_for(passkey)

    def torrent_allowed(self, info_hash: bytes) -> bool:
        assert self.torrents is not None
        listed = info_hash in self.torrents.value
        return listed if self.mode == "whitelist" else not listed

    def user_for(self, passkey: str | None) -> Hashable:
        if not passkey:
            raise AccessDenied(
                "passkey_missing", "passkey required: announce to /announce/<passkey>"
            )
        if len(passkey) > MAX_PASSKEY_CHARS:
            raise AccessDenied("passkey_unknown", "unknown passkey")
        if self.passkeys is not None:
            user = self.passkeys.value.get(passkey)
            if user is not None:
                return user
        if self.authenticate is not None:
            user = self._ask_host(passkey)
            if user:
                return passkey if user is True else user
        raise AccessDenied("passkey_unknown", "unknown passkey")

    def _ask_host(self, passkey: str) -> Hashable:
        cache, refused = self.cache, self.refused
        if cache is not None and refused is not None:
            hit = cache.get(passkey)
            if hit is not None:
                return hit
            if passkey in refused:
                return False
        assert self.authenticate is not None
        try:
            answer = self.authenticate(passkey) or False
        except Exception:
            log.exception("authenticate(%r) raised; refusing the passkey", passkey)
            return False  # not cached: the host may recover
        if cache is not None and refused is not None:
            if answer:
                cache[passkey] = answer
            else:
                refused[passkey] = True
        return answer


@dataclass(frozen=True)
class ClientList:
    """Which BitTorrent clients may announce, by peer_id prefix (``client_allow`` /
    ``client_deny``): private trackers admit only clients they have vetted.

    Azureus-style ids name the client in their first characters (``-qB4630-``
    is qBittorrent 4.6.3), so a prefix picks a client or one of its versions.
    A deny match wins over the allow list; one ``startswith`` each.
    """

    allow: tuple[bytes, ...]
    deny: tuple[bytes, ...]

    @classmethod
    def from_config(cls, config: TrackerConfig) -> ClientList | None:
        """The lists ``config`` sets, or None when every client is welcome."""
        if not config.client_allow and not config.client_deny:
            return None
        return cls(
            tuple(p.encode("latin-1") for p in config.client_allow),
            tuple(p.encode("latin-1") for p in config.client_deny),
        )

    def check(self, peer_id: bytes) -> None:
        """Raises AccessDenied when the client is banned or not on the allow list."""
        if self.deny and peer_id.startswith(self.deny):
            banned = next(p for p in self.deny if peer_id.startswith(p))
            raise AccessDenied(
                "client_not_allowed",
                f"client not allowed: peer_id {banned.decode('latin-1')}... is banned here",
            )
        if self.allow and not peer_id.startswith(self.allow):
            allowed = ", ".join(p.decode("latin-1") for p in self.allow)
            raise AccessDenied(
                "client_not_allowed", f"client not allowed: use one of these clients: {allowed}"
            )


def resolve_callable(setting: str, name: str) -> Callable[..., Any]:
    """The callable a setting names as 'package.module:attribute'."""
    try:
        target = resolve_name(name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{setting}: cannot import {name!r}: {exc}") from None
    if not callable(target):
        raise ConfigError(f"{setting}: {name!r} is not callable")
    return target


def _watch(path: str, setting: str, parse: Callable[[str, str], Any]) -> WatchedFile:
    if not path:
        raise ConfigError(f"{setting} is required by the chosen access settings")
    try:
        return WatchedFile(path, parse)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as bad:  # not ``exc``: mypyc types a name once
        raise ConfigError(f"{setting}: {bad}") from None
