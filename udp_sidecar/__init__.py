"""udp-sidecar: the BEP 15 UDP tracker (with BEP 41), on the same core as the HTTP tracker.

Deliberately imports nothing: ``python -m udp_sidecar`` imports this package
before ``__main__`` gets to monkey-patch with gevent, so nothing here may load
``socket`` or ``threading`` first.
"""
