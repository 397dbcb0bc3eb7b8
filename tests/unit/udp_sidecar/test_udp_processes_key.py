"""The connection-id key the hub's process hands its other UDP processes, through a pipe."""

from __future__ import annotations

import os

import pytest

from udp_sidecar.processes import KEY_BYTES, key_pipe, read_key


def test_the_key_arrives_whole_and_the_pipe_is_closed() -> None:
    key = os.urandom(KEY_BYTES)
    fd = key_pipe(key)
    assert read_key(fd) == key
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_short_key_is_refused_not_used() -> None:
    read, write = os.pipe()
    os.write(write, b"short")
    os.close(write)
    with pytest.raises(ValueError, match=f"expected a {KEY_BYTES}-byte key, got 5"):
        read_key(read)
