"""A host app's passkey check and announce hook, named in settings (``tests.access_app:...``)."""

from __future__ import annotations

import json
import os
import time

USERS = {"sidecar-key": "user-1"}


def authenticate(passkey: str) -> str | bool:
    return USERS.get(passkey, False)


def record(events: list) -> None:
    """An announce hook that appends one JSON line per event to the file in $HOOK_LOG."""
    with open(os.environ["HOOK_LOG"], "a") as fh:
        for e in events:
            fields = (e.user, e.info_hash.hex(), e.uploaded, e.downloaded, e.left, e.event)
            fh.write(json.dumps(fields) + "\n")


def record_all(events: list) -> None:
    """An announce hook that writes every field of each event, one JSON object a line."""
    with open(os.environ["HOOK_LOG"], "a") as fh:
        for e in events:
            values = {name: getattr(e, name) for name in e.__slots__}
            fields = {k: v.hex() if isinstance(v, bytes) else v for k, v in values.items()}
            fh.write(json.dumps(fields) + "\n")


def gated_record(events: list) -> None:
    """``record_all``, but first wait (at most 30 s) while the file $HOOK_GATE exists:
    a site whose database is stuck, so the tracker's queue fills."""
    deadline = time.monotonic() + 30
    while os.path.exists(os.environ["HOOK_GATE"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    record_all(events)
