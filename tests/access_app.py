"""A host app's passkey check, named in settings as ``tests.access_app:authenticate``."""

from __future__ import annotations

USERS = {"sidecar-key": "user-1"}


def authenticate(passkey: str) -> str | bool:
    return USERS.get(passkey, False)
