"""Keeping every process's replica the same: frames, the hub (in udp-sidecar), the client.

Deliberately empty: the frame codec is imported by the UDP sidecar and tools
that must not load the client. See docs/SYNC.md for the wire format, the
guarantees and what happens on failure.
"""
