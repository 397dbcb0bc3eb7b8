"""Whose directory the sync socket lives in: only the tracker's user may reach it.

Whoever can replace the socket file can receive every announce and inject
peers, so both ends check the directory before they listen or connect: it must
belong to this user, and its parent to this user or root (``/tmp``, ``/run``).
The default path sits in a world-writable ``/tmp`` when there is neither
``XDG_RUNTIME_DIR`` nor ``/run/user/<uid>``, where another user could have
made the directory first: the refusal then names the setting that avoids it.
"""

from __future__ import annotations

import os
import socket


class UnsafeSocketPath(OSError):
    """The socket's directory belongs to someone else; the message names it."""


def check_private(path: str, missing_ok: bool = False) -> None:
    """Raise UnsafeSocketPath unless ``path``'s directory is this user's.

    ``missing_ok``: a directory that does not exist yet passes (the hub will
    make it, 0700); ``serve`` checks this way before it starts anything.
    """
    directory = os.path.dirname(os.path.abspath(path))
    uid = os.getuid()
    for where, allowed in ((directory, {uid}), (os.path.dirname(directory), {uid, 0})):
        try:
            owner = os.stat(where).st_uid
        except FileNotFoundError:
            if missing_ok:
                continue
            raise
        if owner not in allowed:
            raise UnsafeSocketPath(
                f"{where} belongs to uid {owner}, not to this user (uid {uid}) or root: "
                "another user could replace the sync socket; set sync_socket "
                "(WSGI_TRACKER_SYNC_SOCKET) to a path in a directory of your own, "
                "or run with XDG_RUNTIME_DIR set"
            )


def why_no_hub(path: str, timeout: float = 1.0) -> str | None:
    """None if something accepts connections on the Unix socket ``path`` (a live hub),
    else why not (``serve`` waits for a hub, a hub refuses to start beside one, a
    worker warns when it would be alone)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        probe.close()
    return None
