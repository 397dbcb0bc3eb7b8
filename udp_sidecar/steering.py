"""Announces steered by torrent over the ``SO_REUSEPORT`` group of several UDP processes.

Without it the kernel picks a process per datagram by a hash of the 4-tuple, so a
torrent's announces land on every process and each process reads, and answers
from, every torrent. With a classic BPF program attached to the group
(``SO_ATTACH_REUSEPORT_CBPF``), an announce (action 1, at least 98 bytes) goes to
process ``info_hash[0:4] mod N`` (the first four bytes of the hash, read as a
big-endian number; info_hashes are uniformly random), so a process answers its
own share of the torrents and only applies (or, with ``lazy_apply``, only stashes)
what the others change in theirs. Everything else (connects, scrapes, short or
malformed datagrams) gets an index past the group, on which the kernel falls
back to its 4-tuple hash: so a scrape, like a client's next request to any
process, still reaches any process, and read-your-writes (docs/SYNC.md) is
what makes its answer right, as without steering.

The program indexes the group's sockets in the order they joined it: the hub's
process binds first (index 0), the others as they start. While the group is
short of N (a process starting, or restarting after a crash) an index past its
end falls back to the hash too, and a restart may reorder the sockets: steering
is only where work lands, never what an answer says.
"""

from __future__ import annotations

import ctypes
import socket
import struct

# linux/asm-generic/socket.h; not in Python's socket module.
SO_ATTACH_REUSEPORT_CBPF = 51

# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS = 0x20  # A = 32-bit big-endian word at payload offset k
_LD_W_LEN = 0x80  # A = the payload's length
_JEQ_K = 0x15
_JGE_K = 0x35
_MOD_K = 0x94
_RET_A = 0x16
_RET_K = 0x06
_FALL_BACK = 0xFFFFFFFF  # past any group: the kernel's own hash picks

ANNOUNCE_BYTES = 98  # BEP 15's announce body; shorter ones are refused by any process
HASH_AT = 16  # the info_hash, after connection id (8), action (4) and transaction id (4)

_INSTRUCTION = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_PROGRAM = struct.Struct("@HP")  # struct sock_fprog: len, filter pointer


def program(processes: int) -> list[tuple[int, int, int, int]]:
    """The filter's instructions (code, jump if true, jump if false, k): announces to
    ``info_hash[0:4] mod processes``, everything else to the kernel's hash.

    Loads past the payload's end would end a classic BPF program with 0 (the first
    socket), so the length is checked before any load.
    """
    if processes < 2:
        raise ValueError(f"steering needs 2 processes or more, not {processes}")
    return [
        (_LD_W_LEN, 0, 0, 0),
        (_JGE_K, 0, 5, ANNOUNCE_BYTES),  # shorter: fall back
        (_LD_W_ABS, 0, 0, 8),  # the action
        (_JEQ_K, 0, 3, 1),  # not an announce: fall back
        (_LD_W_ABS, 0, 0, HASH_AT),
        (_MOD_K, 0, 0, processes),
        (_RET_A, 0, 0, 0),
        (_RET_K, 0, 0, _FALL_BACK),
    ]


def owner(info_hash: bytes, processes: int) -> int:
    """The index (in the group's order) of the process an announce of ``info_hash``
    is steered to: what the filter computes, for tests and tools."""
    return int.from_bytes(info_hash[:4], "big") % processes


def steer(sock: socket.socket, processes: int) -> None:
    """Attach the filter to ``sock``'s ``SO_REUSEPORT`` group (OSError if the kernel
    refuses it: one that predates 4.5, or a seccomp policy)."""
    code = b"".join(_INSTRUCTION.pack(*ins) for ins in program(processes))
    filters = ctypes.create_string_buffer(code, len(code))
    fprog = _PROGRAM.pack(len(code) // _INSTRUCTION.size, ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)  # the kernel copies it
