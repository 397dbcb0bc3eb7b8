"""A host app's passkey check and announce hook, named in settings (``tests.access_app:...``)."""

from __future__ import annotations

import json
import os

USERS = {"sidecar-key": "user-1"}


def authenticate(passkey: str) -> str | bool:
    return USERS.get(passkey, False)


def record(events: list) -> None:
    """An announce hook that appends one JSON line per event to the file in $HOOK_LOG."""
    with open(os.environ["HOOK_LOG"], "a") as fh:
        for e in events:
            fields = (e.user, e.info_hash.hex(), e.uploaded, e.downloaded, e.left, e.event)
            fh.write(json.dumps(fields) + "\n")
