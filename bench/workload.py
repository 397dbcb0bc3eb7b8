"""The workload every load generator shares: an info_hash pool and deterministic clients.

Client c is in torrents ``pool[(c * tpc + j) % k]`` for j < tpc, so a tracker
holds ``clients * tpc`` peers once every pair has announced, and the state does
not grow while it is measured. ``announce.lua`` and ``udp_load.c`` derive the
same peer ids and ports, so HTTP and UDP announce the same peers.
"""

from __future__ import annotations

import os
import socket
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes


@dataclass(frozen=True)
class Workload:
    """K torrents, ``clients`` simulated clients each in ``tpc`` of them."""

    pool: Path
    clients: int
    tpc: int

    @property
    def peers(self) -> int:
        return self.clients * self.tpc

    def hashes(self) -> list[bytes]:
        return [bytes.fromhex(line[:40]) for line in self.pool.read_text().split()]

    def env(self) -> dict[str, str]:
        """What announce.lua reads."""
        return {"POOL": str(self.pool), "CLIENTS": str(self.clients), "TPC": str(self.tpc)}


def make_workload(outdir: Path, k: int, clients: int, tpc: int, name: str = "pool") -> Workload:
    """A fresh random pool of ``k`` info_hashes written as hex lines."""
    pool = outdir / f"{name}_{k}.txt"
    pool.write_text("".join(os.urandom(20).hex() + "\n" for _ in range(k)))
    return Workload(pool, clients, tpc)


def sample_announce_url(port: int, info_hash: bytes) -> str:
    return (
        f"http://127.0.0.1:{port}/announce?info_hash={quote_from_bytes(info_hash)}"
        "&peer_id=-SAMPLE-000000000001&port=40000&uploaded=0&downloaded=0&left=1000"
        "&compact=1&numwant=50"
    )


def http_ready(port: int, info_hash: bytes) -> bool:
    """True once the tracker answers an announce for a pool hash with a non-failure dict."""
    try:
        with urllib.request.urlopen(sample_announce_url(port, info_hash), timeout=1) as reply:
            body = reply.read()
    except OSError:
        return False
    return body.startswith(b"d") and b"failure reason" not in body


UDP_MAGIC = 0x41727101980


def udp_ready(port: int) -> bool:
    """True once a BEP 15 connect on 127.0.0.1:port gets a connect reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        try:
            sock.sendto(struct.pack(">QII", UDP_MAGIC, 0, 7), ("127.0.0.1", port))
            reply = sock.recv(64)
        except OSError:
            return False
    return len(reply) >= 16 and struct.unpack(">II", reply[:8]) == (0, 7)
