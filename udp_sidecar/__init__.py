"""udp-sidecar: the BEP 15 UDP tracker (with BEP 41), on the same core as the HTTP tracker.

Deliberately imports nothing: ``python -m udp_sidecar`` imports this package
before ``__main__`` gets to monkey-patch with gevent, so nothing here may load
``socket`` or ``threading`` first. The one import, ``wsgi_tracker.compiled``, loads
neither: it must run before any compiled module of this package loads (it refuses a
stale build, and ``WSGI_TRACKER_PURE=1`` must load every compiled module pure or none).
"""

import signal

from wsgi_tracker import compiled

compiled.check()

# ``wsgi-tracker serve`` has the kernel send this when serve dies (PR_SET_PDEATHSIG):
# the sidecar then stops after the workers, who get SIGTERM at the same moment.
ORPHANED = signal.SIGUSR1
