"""What the sync tests that play the hub against a real ``SyncClient`` share."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def hub_listener() -> Iterator[tuple[str, socket.socket]]:
    """A listening Unix socket for the test to be the hub on, and its path.

    Under /tmp rather than ``tmp_path``: a socket's path is at most 107 bytes,
    which a long test name would pass. Closed and removed after the test.
    """
    directory = tempfile.mkdtemp(prefix="hub-", dir="/tmp")
    path = os.path.join(directory, "hub.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(10)
        yield path, listener
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
