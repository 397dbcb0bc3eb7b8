"""The WebTorrent tracker over WebSocket: codec (sans-IO JSON), swarm (the replicated
WebSocket peers), relay (routing offers and answers), server (the gevent shell).
See docs/WEBTORRENT.md."""
