"""``wsgi.input`` (``worker.RequestBody``) over a real socket pair: it reads as a file would."""

from __future__ import annotations

import io
import socket

from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.http.chunked import ChunkedBody
from wsgi_tracker.http.http11 import HeadLimits
from wsgi_tracker.http.worker import BodyPace, RequestBody

NO_PACE = BodyPace(grace=10, min_rate=0, idle=None)
OPS = st.lists(
    st.tuples(st.sampled_from(["read", "readline"]), st.integers(min_value=-1, max_value=70)),
    max_size=12,
)


@given(
    st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"\n")), max_size=8),
    st.integers(min_value=0, max_value=3),
    OPS,
)
def test_reads_and_readlines_give_what_a_file_gives(
    chunks: list[bytes], buffered: int, ops: list[tuple[str, int]]
) -> None:
    """Any mix of read(n)/readline(n) over a chunked body (some of it read with the head)
    returns what the same calls on a file of the body return; the bytes after the body
    are left for the next request."""
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\nGET /"
    model = io.BytesIO(b"".join(chunks))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.settimeout(5)
        cut = min(buffered * 7, len(wire))
        ours.sendall(wire[cut:])
        body = RequestBody(theirs, wire[:cut], ChunkedBody(HeadLimits()), False, NO_PACE)
        for op, size in ops:
            assert getattr(body, op)(size) == getattr(model, op)(size)
        assert body.read() == model.read()
        after = body.finish()
        assert after is not None
        if len(after) < 5:  # the rest of it is still in the socket, for the next read
            after += theirs.recv(100)
        assert after == b"GET /"
