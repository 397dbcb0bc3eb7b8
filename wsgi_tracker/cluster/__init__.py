"""Several machines, one swarm view: each machine's sync hub joined through one Redis.

``entries.py`` is what is kept in Redis (sans-IO), ``node.py`` the node that
moves it (run by udp-sidecar when ``redis_url`` is set). docs/CLUSTER.md says
what is promised and how to deploy it.
"""

from wsgi_tracker.cluster.node import ClusterNode

__all__ = ["ClusterNode"]
