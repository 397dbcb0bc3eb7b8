"""The site's users, their passkeys and their ratio accounts, in one SQLite file.

The tracker's settings name two functions of this module (``tracker.toml``), so
every tracker process can import them: ``authenticate`` (a passkey to a user
id) runs wherever an announce lands, and ``credit`` (the announce hook) runs
in the one place the tracker accounts announces, the sidecar with sync on.
The tracker has already computed each event's deltas: crediting is a sum.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

from wsgi_tracker.access.hooks import AnnounceEvent

DB_ENV = "PRIVATE_SITE_DB"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    passkey TEXT NOT NULL UNIQUE,
    uploaded INTEGER NOT NULL DEFAULT 0,
    downloaded INTEGER NOT NULL DEFAULT 0,
    seeding_seconds REAL NOT NULL DEFAULT 0,
    leeching_seconds REAL NOT NULL DEFAULT 0,
    announces INTEGER NOT NULL DEFAULT 0
);
"""


def db_path() -> str:
    return os.environ.get(DB_ENV, "private_site.sqlite3")


@contextmanager
def database() -> Iterator[sqlite3.Connection]:
    """A connection for one unit of work, committed at the end (rolled back on error).

    WAL lets the web workers read while the sidecar writes; the busy timeout
    covers the moment a write holds the lock.
    """
    with closing(sqlite3.connect(db_path(), timeout=5)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        with conn:
            yield conn


def create() -> None:
    with database() as conn:
        conn.executescript(SCHEMA)


def add_user(name: str) -> str:
    """Create a user; returns their new passkey (what their announce URLs carry)."""
    passkey = secrets.token_hex(16)
    with database() as conn:
        conn.execute("INSERT INTO users (name, passkey) VALUES (?, ?)", (name, passkey))
    return passkey


def authenticate(passkey: str) -> int | bool:
    """The tracker's passkey check: the user's id, or False (the tracker caches answers)."""
    with database() as conn:
        row = conn.execute("SELECT id FROM users WHERE passkey = ?", (passkey,)).fetchone()
    return row[0] if row else False


def credit(events: list[AnnounceEvent]) -> None:
    """The announce hook: add each event's deltas to its user, one transaction a batch."""
    rows = [
        (
            e.uploaded_delta,
            e.downloaded_delta,
            e.seeding_seconds,
            e.leeching_seconds,
            e.user,
        )
        for e in events
        if isinstance(e.user, int)
    ]
    with database() as conn:
        conn.executemany(
            "UPDATE users SET uploaded = uploaded + ?, downloaded = downloaded + ?,"
            " seeding_seconds = seeding_seconds + ?, leeching_seconds = leeching_seconds + ?,"
            " announces = announces + 1 WHERE id = ?",
            rows,
        )


@dataclass(frozen=True)
class Account:
    name: str
    passkey: str
    uploaded: int
    downloaded: int
    seeding_seconds: float
    leeching_seconds: float
    announces: int

    @property
    def ratio(self) -> float | None:
        """Uploaded over downloaded; None before anything was downloaded."""
        return self.uploaded / self.downloaded if self.downloaded else None


def accounts() -> list[Account]:
    with database() as conn:
        rows = conn.execute(
            "SELECT name, passkey, uploaded, downloaded, seeding_seconds, leeching_seconds,"
            " announces FROM users ORDER BY name"
        ).fetchall()
    return [Account(*row) for row in rows]


def account(name: str) -> Account | None:
    return next((a for a in accounts() if a.name == name), None)
