"""Session 6's attack pass, as an outside tester runs it: ``wsgi-tracker serve --workers 2``
with sync on, serving a Flask site that takes uploads beside the tracker.

Attackers connect from 127.0.0.2, bystanders from 127.0.0.3. Every bad input must
get a clear refusal and cost no one else their answers. Nothing here asserts a
speed: each read has a timeout far above what an answer takes, each loop a bound.
docs/HARDENING.md, "Attacks (session 6)", has what was tried and measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import bencodepy
import pytest
import websocket as websocket_client
from servers import (
    Serve,
    announce_url,
    gunicorn,
    http_get,
    read_to_close,
    scrape_url,
    serve,
    udp_announce,
    udp_scrape,
    wait_until,
    ws_announce,
    ws_closed_with,
    ws_connect,
    ws_eventually_scrape,
    ws_holder,
    ws_recv,
    ws_scrape,
    ws_send,
)

from udp_sidecar.protocol import ACTION_ERROR, build_announce_request, build_connect_request
from wsgi_tracker.sync import frames

pytestmark = pytest.mark.integration
ATTACKER, BYSTANDER = "127.0.0.2", "127.0.0.3"
MAX_BODY = 100_000
WS_PEERS = 5
READ_TIMEOUT = 20.0
CHUNKED = b"Transfer-Encoding: chunked\r\n"
WS_PEER = "-WW0001-000000000001"
NOTHING = {"complete": 0, "incomplete": 0, "downloaded": 0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    config = (
        f"http_max_body_bytes = {MAX_BODY}\nhttp_head_timeout = 20\n"
        f"ws_max_peers_per_connection = {WS_PEERS}\n"
    )
    with serve(
        tmp_path_factory.mktemp("attacks"), workers=2, app="tests.upload_site:app", config=config
    ) as started:
        yield started


def connect(stack: Serve, source: str = ATTACKER) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(READ_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((source, 0))
    sock.connect((stack.http.host, stack.http.port))
    return sock


def announce(stack: Serve, source: str = BYSTANDER, info_hash: bytes | None = None) -> dict:
    ih = info_hash or os.urandom(20)
    url = announce_url(stack.http.url + "/announce", ih, os.urandom(20), 6881, 0)
    query = url.partition("?")[2]
    with connect(stack, source) as sock:
        sock.sendall(b"GET /announce?%b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % (
            query.encode()
        ))  # fmt: skip
        reply = read_to_close(sock)
    return bencodepy.decode(reply.partition(b"\r\n\r\n")[2])


def upload_still_works(stack: Serve) -> None:
    payload = os.urandom(1000)
    with connect(stack, BYSTANDER) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
        )
        assert read_to_close(sock).startswith(b"HTTP/1.1 200")


def test_a_head_trickled_a_byte_a_send_is_answered_and_bystanders_too(stack: Serve) -> None:
    """A 29 KB head, a byte per send: each read is checked once (it was re-checked whole on
    every read: 3.3 s of one worker's CPU), and the others' announces are answered meanwhile."""
    pad = b"X-Pad: %b\r\n" % (b"p" * 640)  # serve allows 50 fields
    head = b"GET /announce HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + pad * 45 + b"\r\n"
    answered: list[dict] = []
    done = threading.Event()

    def bystander() -> None:
        for _ in range(200):  # bounded; ends when the trickle does
            answered.append(announce(stack))
            if done.is_set():
                break

    thread = threading.Thread(target=bystander)
    with connect(stack) as sock:
        thread.start()
        try:
            for i in range(len(head)):
                sock.send(head[i : i + 1])
        finally:
            done.set()
            thread.join(READ_TIMEOUT * 3)
        reply = read_to_close(sock)
    assert reply.startswith(b"HTTP/1.1 200") and b"failure reason" in reply  # no info_hash
    assert answered and all(b"interval" in a for a in answered)


def test_a_body_over_the_limit_by_content_length_gets_413_before_the_app(stack: Serve) -> None:
    """Refused from its head alone: no 100 Continue invites it, the app never runs."""
    with connect(stack) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        reply = read_to_close(sock)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"request body of 100001 bytes is over the limit of 100000" in reply
    upload_still_works(stack)


def test_a_chunked_body_over_the_limit_gets_413_at_the_chunk_that_passes_it(stack: Serve) -> None:
    with connect(stack) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\n" + CHUNKED + b"\r\n")
        sock.sendall(b"%x\r\n%b\r\n" % (60_000, b"a" * 60_000))
        sock.sendall(b"%x\r\n" % 60_000)  # its size alone passes the limit
        reply = read_to_close(sock)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"chunked request body over the limit of 100000 bytes" in reply
    upload_still_works(stack)


def test_a_body_at_the_limit_is_taken(stack: Serve) -> None:
    payload = os.urandom(MAX_BODY)
    with connect(stack, BYSTANDER) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + CHUNKED)
        sock.sendall(b"\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload))
        reply = read_to_close(sock)
    digest = hashlib.sha1(payload).hexdigest().encode()
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"%d %b" % (MAX_BODY, digest))


def test_a_broken_chunked_body_read_by_flask_is_a_400_and_no_traceback(stack: Serve) -> None:
    """Flask catches the read's error and answered 500 with a logged traceback; the body's
    error is the client's: a 400 naming it, an info line, nothing lost."""
    before = stack.log()
    with connect(stack) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n" + CHUNKED + b"\r\n"
        )
        # the 100 goes out once the view reads; then the body comes, broken (no CRLF after data)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"5\r\nhello\r\n3\r\nabcXX")
        reply = read_to_close(sock)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"chunk data not followed by CRLF" in reply
    upload_still_works(stack)
    logged = stack.log()[len(before) :]
    assert "Bad request body for /upload" in logged
    assert "Traceback" not in logged and "Exception on /upload" not in logged


def test_a_bad_body_leaves_the_tracker_state_alone(stack: Serve) -> None:
    """After the refused bodies above, an announce is answered and counted as before."""
    info_hash = os.urandom(20)
    reply = announce(stack, info_hash=info_hash)
    assert reply[b"interval"] >= 1 and b"failure reason" not in reply
    status, body = http_get(scrape_url(stack.http.url + "/scrape", info_hash))
    assert status == 200
    assert bencodepy.decode(body)[b"files"][info_hash][b"complete"] == 1


def test_every_process_is_still_serving(stack: Serve) -> None:
    assert stack.proc.poll() is None and len(stack.worker_pids()) == 2


def test_a_udp_announce_with_64_kib_of_options_gets_an_error_naming_the_bound(stack: Serve) -> None:
    """The BEP 41 walk was Python per option, before the connection id was checked: a
    64 KiB datagram of NOPs cost 6-9 ms of the sidecar's loop. Refused past 2 KiB."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(READ_TIMEOUT)
        s.bind((ATTACKER, 0))
        s.connect((stack.udp.host, stack.udp.port))
        s.send(build_connect_request(7))
        cid = s.recv(64)[8:16]
        for connection_id, options in ((cid, b"\x01" * 65000), (b"spoofed!", b"\x02\x01a" * 21000)):
            packet = build_announce_request(
                connection_id, 8, os.urandom(20), os.urandom(20), 6881, options=options
            )
            s.send(packet)
            reply = s.recv(65536)
            assert struct.unpack("!II", reply[:8]) == (ACTION_ERROR, 8)
            assert reply[8:].startswith(b"BEP 41 options over 2048 bytes")
    # the sidecar serves on: a plain announce still gets its reply
    udp_announce(stack.udp.host, stack.udp.port, os.urandom(20), os.urandom(20), 6881, 0, 2)


def test_one_websocket_cannot_announce_more_peers_than_its_bound(stack: Serve) -> None:
    """Torrent after torrent on one socket filled the WebSocket swarms for everyone."""
    ws = ws_connect(stack.http)
    try:
        for n in range(WS_PEERS):
            assert "interval" in ws_announce(ws, WS_PEER, ih=f"{n:020d}")
        ws_send(ws, action="announce", info_hash=f"{WS_PEERS:020d}", peer_id=WS_PEER, left=1)
        refused = ws_recv(ws)
        assert refused["failure reason"] == (
            f"this connection holds {WS_PEERS} peers, the most allowed, nothing was changed"
        )
        nothing = {"complete": 0, "incomplete": 0, "downloaded": 0}
        assert ws_scrape(ws, f"{WS_PEERS:020d}") == nothing
        assert "interval" in ws_announce(ws, WS_PEER, ih=f"{0:020d}")  # the socket serves on
    finally:
        ws.close()


# --- session 7 (harden): docs/HARDENING.md, "Attacks (session 7, harden)" ----------------


def test_a_frame_header_claiming_2_63_bytes_closes_with_1009_at_once(stack: Serve) -> None:
    """The frame cap acted on bytes received: a header claiming 2^63 - 1 bytes and a few
    of them held the socket until ws_idle_timeout (180 s). Now its header is enough."""
    ws = ws_connect(stack.http)
    try:
        assert "interval" in ws_announce(ws, WS_PEER, ih="h" * 20)
        header = bytes([0x81, 0x80 | 127]) + ((1 << 63) - 1).to_bytes(8, "big") + b"mask"
        ws.sock.sendall(header + b"abc")
        assert ws_closed_with(ws) == (
            1009,
            f"frame over 16384 bytes: its header claims {(1 << 63) - 1}",
        )
    finally:
        ws.close()
    # its peer stopped with its socket; the worker serves on
    check = ws_connect(stack.http)
    try:
        assert ws_eventually_scrape(check, "h" * 20, NOTHING) == NOTHING
    finally:
        check.close()


SLOW_TOTAL = 256 << 10  # ws_max_queued_bytes of the slow-reader test, under 1 MiB a connection
SDP = "s" * 7000  # two offers a message: within the 16 KiB frame


def test_slow_readers_together_over_the_worker_bound_lose_the_largest() -> None:
    """Each slow reader may queue 1 MiB; 1,000 of them were 1 GB a worker. Two readers that
    never read, fed offers, pass ws_max_queued_bytes together before either passes 1 MiB:
    one is closed and logged, the other and the feeder are served on."""
    env = {"WSGI_TRACKER_WS_MAX_QUEUED_BYTES": str(SLOW_TOTAL)}
    small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    with gunicorn(env=env) as alone:
        slow = [websocket_client.create_connection(
            f"ws://127.0.0.1:{alone.port}/announce", timeout=READ_TIMEOUT, sockopt=small
        ) for _ in range(2)]  # fmt: skip
        feeder = ws_connect(alone)
        try:
            for n, ws in enumerate(slow):
                ws_announce(ws, f"-WW0001-slow{n:08d}", ih="s" * 20)
            offers = [
                {"offer_id": f"{k:020d}", "offer": {"type": "offer", "sdp": SDP}} for k in range(2)
            ]
            for _ in range(3000):  # ~42 MB relayed at most; the kernel's buffers take a few
                ws_announce(feeder, WS_PEER, ih="s" * 20, offers=offers, numwant=2)
                if "Closed a slow WebSocket reader" in alone.stderr():
                    break
            logged = alone.stderr()
            assert f"over ws_max_queued_bytes ({SLOW_TOTAL})" in logged
            assert "Traceback" not in logged
            # the closed reader's peer stops once its greenlet sees the shut socket (async);
            # one close is what the loop waits for, a second could come before it looks
            closed = logged.count("Closed a slow WebSocket reader")
            want = {"complete": 0, "incomplete": 1 + 2 - closed, "downloaded": 0}
            assert closed in (1, 2) and ws_eventually_scrape(feeder, "s" * 20, want) == want
        finally:
            for ws in (*slow, feeder):
                ws.close()


def test_a_body_cut_short_by_a_close_is_one_info_line_not_a_traceback(stack: Serve) -> None:
    """The worker's read raised an OSError into the app: Flask logged 'Exception on
    /upload' with a ~30-line traceback for each such request, a log flood at will."""
    before = stack.log()
    for _ in range(3):
        with connect(stack) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123")
            sock.shutdown(socket.SHUT_WR)  # the body ends 996 bytes short
            read_to_close(sock)
    upload_still_works(stack)
    reason = "Bad request body for /upload: client closed the connection inside a request body"
    assert wait_until(lambda: stack.log()[len(before) :].count(reason) == 3)
    logged = stack.log()[len(before) :]
    assert "Traceback" not in logged and "Exception on /upload" not in logged


def hub_socket(stack: Serve) -> str:
    return str(stack.log_path.parent / "hub" / "sync.sock")  # serve()'s config puts it there


@pytest.mark.parametrize(
    ("name", "sent", "logged"),
    [
        ("garbage", os.urandom(64), "sync hub: refusing "),
        ("a 4 GiB frame", struct.pack(">IB", 2**32 - 1, 1), "frame length 4294967295 exceeds"),
        ("an unknown role", frames.encode(frames.Hello(200, 1)), "hello role is 200"),
        (
            "a second hello",
            frames.encode(frames.Hello(frames.ROLE_TOOL, 1)) * 2,
            "refusing tool pid 1: Hello frame from",
        ),
        ("a snapshot before a hello", frames.encode(frames.SnapshotDone()), "while"),
    ],
)
def test_a_local_client_speaking_garbage_to_the_hub_is_dropped_in_one_line(
    stack: Serve, name: str, sent: bytes, logged: str
) -> None:
    """The hub's socket is 0600 in a 0700 directory (socket_path.check_private): only this
    user gets here. Whatever such a client sends, it is dropped with one line, the hub
    reads its hello first, and the workers and UDP are served on."""
    before = stack.log()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(READ_TIMEOUT)
        sock.connect(hub_socket(stack))
        sock.sendall(sent)
        read_to_close(sock)  # the hub's hello (and whatever else), then its close
    assert wait_until(lambda: logged in stack.log()[len(before) :]), name
    assert "Traceback" not in stack.log()[len(before) :]
    assert b"failure reason" not in bencodepy.encode(announce(stack))
    udp_announce(stack.udp.host, stack.udp.port, os.urandom(20), os.urandom(20), 6881, 0, 2)


def join_hub(stack: Serve, pid: int) -> socket.socket:
    """A client of the hub's socket joined as worker ``pid``: hello, the hub's whole
    snapshot read, its own (empty) replica sent."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(READ_TIMEOUT)
    sock.connect(hub_socket(stack))
    sock.sendall(frames.encode(frames.Hello(frames.ROLE_WORKER, pid)))
    decoder = frames.FrameDecoder()
    for _ in range(10_000):  # reads of the snapshot, up to its end
        if any(isinstance(f, frames.SnapshotDone) for f in decoder.feed(sock.recv(65536))):
            sock.sendall(frames.encode(frames.SnapshotDone()))
            return sock
    raise AssertionError("no SnapshotDone from the hub")


def test_the_hub_socket_and_its_directory_are_private(stack: Serve) -> None:
    path = hub_socket(stack)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700


def test_answers_to_no_offer_do_not_reach_the_peer_named(stack: Serve) -> None:
    """One connection holding a peer could send answers to any peer_id at line rate:
    20,000 of 1 KB pushed a reader past its 1 MiB outbox and disconnected it. Now an
    answer reaches a peer only for an offer it made to the answerer, from either worker."""
    victim, attacker = ws_connect(stack.http), ws_connect(stack.http)
    try:
        ws_announce(victim, "-WW0001-victim000001", ih="v" * 20)
        ws_announce(attacker, "-WW0001-attack000001", ih="v" * 20)
        bogus = {
            "action": "announce", "info_hash": "v" * 20, "peer_id": "-WW0001-attack000001",
            "to_peer_id": "-WW0001-victim000001", "answer": {"type": "answer", "sdp": "x" * 1000},
        }  # fmt: skip
        frame = websocket_client.ABNF.create_frame
        burst = b"".join(
            frame(json.dumps({**bogus, "offer_id": f"{n:020d}"}), 1).format() for n in range(2000)
        )
        attacker.sock.sendall(burst)
        ws_send(attacker, action="scrape", info_hash="v" * 20)  # after them, in order
        # refused here when this worker holds the victim; left for the hub (no reply) when not
        replies = [ws_recv(attacker)]
        while replies[-1]["action"] != "scrape" and len(replies) <= 2000:
            replies.append(ws_recv(attacker))
        assert replies[-1]["action"] == "scrape"
        assert all("made no such offer" in r["failure reason"] for r in replies[:-1])
        ws_send(victim, action="scrape", info_hash="v" * 20)
        assert ws_recv(victim)["action"] == "scrape"  # no answer came before its reply
    finally:
        victim.close()
        attacker.close()


@pytest.mark.parametrize("count", [74, 122])
def test_a_udp_scrape_of_74_to_122_hashes_is_answered_in_one_datagram(
    stack: Serve, count: int
) -> None:
    """BEP 15 says about 74 hashes fit; 122 entries still fit one unfragmented IPv4 reply
    (123 and more are refused naming the bound: test_bad_input_udp.py)."""
    hashes = [os.urandom(20) for _ in range(count)]
    assert udp_scrape(stack.udp.host, stack.udp.port, *hashes) == [(0, 0, 0)] * count


def test_a_completed_total_past_32_bits_is_a_saturated_udp_scrape(stack: Serve) -> None:
    """The total is a 64-bit sum from sync (or the cluster): past 2**32 - 1 every UDP
    scrape of that torrent was a struct.error, a traceback logged and no reply. Here a
    client of the hub's socket (this user only) adds completions to get there."""
    info_hash = os.urandom(20)
    before = stack.log()
    with join_hub(stack, 4_000_000) as sock:
        big = frames.Counts([(info_hash, 2**32 - 1)])
        sock.sendall(frames.encode(big) * 2)
        scrape = lambda: udp_scrape(stack.udp.host, stack.udp.port, info_hash)  # noqa: E731
        assert wait_until(lambda: scrape() == [(0, 2**32 - 1, 0)])
    assert "Traceback" not in stack.log()[len(before) :]


def test_a_client_leaving_in_a_live_workers_name_stops_none_of_its_websocket_peers(
    stack: Serve,
) -> None:
    """A hub client that said hello with a live worker's pid stopped that worker's
    WebSocket peers everywhere when it left, their sockets still open."""
    ws, check = ws_connect(stack.http), ws_connect(stack.http)
    try:
        ws_announce(ws, WS_PEER, ih="k" * 20)
        holder = ws_holder(stack.http, ws, stack.worker_pids())
        join_hub(stack, holder).close()  # joins in the worker's name, and leaves
        # Nothing marks the hub's handling of a quiet leave: look for a second. Before, the
        # peer was gone by the first scrape after it (0.5 s and more in a probe).
        one = {"complete": 0, "incomplete": 1, "downloaded": 0}
        for _ in range(5):
            assert ws_scrape(check, "k" * 20) == one
            time.sleep(0.2)
    finally:
        ws.close()
        check.close()
