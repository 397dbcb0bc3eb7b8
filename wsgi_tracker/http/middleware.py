"""The WSGI shell: routes tracker paths to the core, hands everything else on untouched."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from wsgi_tracker.access.hooks import OnAnnounce
from wsgi_tracker.access.policy import Authenticator
from wsgi_tracker.config import TrackerConfig
from wsgi_tracker.core.addresses import pack_ip
from wsgi_tracker.core.errors import TrackerError
from wsgi_tracker.core.locks import ProcessLock
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import EVENT_COMPLETED
from wsgi_tracker.http.codec import (
    encode_announce,
    encode_failure,
    encode_scrape,
    parse_announce,
    parse_scrape,
)
from wsgi_tracker.http.http11 import UPGRADE_KEY
from wsgi_tracker.http.proxy import ClientAddress
from wsgi_tracker.stats.collect import TrackerStats
from wsgi_tracker.stats.endpoints import stats_routes
from wsgi_tracker.sync.client import SyncClient
from wsgi_tracker.websocket.codec import HandshakeError, accept_token, wants_websocket
from wsgi_tracker.websocket.relay import WsTracker

_HEADERS_PLAIN = "text/plain"
# How long gunicorn's post_worker_init waits for the sync hub's snapshot (the master
# kills a worker that does not report in within its timeout, 30 s); a hub that does
# not answer at all costs no wait.
SYNC_SNAPSHOT_WAIT = 5.0
# How long a request waits for a snapshot still arriving after that: it answers from
# a full replica, not a half-filled one (a million torrents take seconds to join).
SYNC_JOIN_WAIT = 30.0
# How long a completion's reply waits for the hub's ack (any other announce waits
# sync.client.ACK_WAIT, and not at all while the hub is behind): the count is the one
# thing a crash cannot rebuild, so its reply goes once the hub holds it (and journaled
# it), as long as the hub is there, however behind it is.
COMPLETION_ACK_WAIT = 1.0
# The answer to an announce or scrape while this process's first snapshot is still
# arriving past SYNC_JOIN_WAIT: a half-filled replica would hand out 0/0/0 for a torrent
# the tracker holds, so the client is told to come back (clients retry a failure).
STILL_JOINING = encode_failure(
    "tracker is starting: this process is still loading the swarms from the sync hub; "
    "retry in a few seconds"
)


def not_found(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The standalone app's answer to anything that is not a tracker path."""
    body = b"wsgi-tracker: nothing here; announce and scrape are the tracker's paths\n"
    start_response(
        "404 Not Found",
        [("Content-Type", _HEADERS_PLAIN), ("Content-Length", str(len(body)))],
    )
    return [body]


class TrackerMiddleware:
    """Serve the tracker's paths; pass every other request to ``app`` unchanged.

    Paths are matched against PATH_INFO, so the middleware works the same when
    the whole site is mounted under a SCRIPT_NAME prefix. ``/announce/<passkey>``
    is recognised as a private-tracker announce.

    ``authenticate(passkey)`` and ``on_announce(events)`` are the host app's
    passkey check and announce hook (docs/ACCESS.md); ``stats`` is what the
    statistics endpoints show (default: this process's own numbers).
    """

    _sync_lock = ProcessLock()

    def __init__(
        self,
        app: WSGIApplication | None = None,
        config: TrackerConfig | None = None,
        *,
        core: TrackerCore | None = None,
        authenticate: Authenticator | None = None,
        on_announce: OnAnnounce | None = None,
        stats: TrackerStats | None = None,
        on_first_request: Callable[[], None] | None = None,
    ) -> None:
        self.app = app or not_found
        self.config = config or (core.config if core else TrackerConfig.load())
        self.core = core or TrackerCore(
            self.config, authenticate=authenticate, on_announce=on_announce
        )
        self.stats = stats or TrackerStats(self.core)
        self._stats_routes = stats_routes(self.stats, self.config)
        self._announce = self.config.announce_path.rstrip("/")
        self._announce_prefix = self._announce + "/"
        self._scrape = self.config.scrape_path.rstrip("/")
        self._scrape_prefix = self._scrape + "/"
        # Started by gunicorn's post_worker_init (the project's config), or by the first
        # request when sync_socket names a hub; never before gevent has patched, and never
        # by default in flask run, runserver or a test client (docs/SYNC.md).
        self.sync: SyncClient | None = None
        self._on_first_request = on_first_request
        self._synced = False
        self._ws: WsTracker | None = None
        if self.config.trusted_proxies:
            # Swapped in only when proxies are listed: the direct case stays one lookup.
            self._forwarded = ClientAddress(self.config.trusted_proxies)
            self.client_ip = self._forwarded_client_ip  # type: ignore[method-assign]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not self._synced:
            self._first_request()
        path: str = environ.get("PATH_INFO") or "/"
        if path == self._announce or path.startswith(self._announce_prefix):
            passkey = path[len(self._announce_prefix) :] if path != self._announce else None
            if wants_websocket(environ):
                return self.websocket(environ, start_response, passkey)
            body = self.announce(environ, passkey) if self._synced else self._still_joining()
        elif path == self._scrape:
            body = self.scrape(environ, None) if self._synced else self._still_joining()
        elif path.startswith(self._scrape_prefix):
            passkey = path[len(self._scrape_prefix) :]
            body = self.scrape(environ, passkey) if self._synced else self._still_joining()
        elif path in self._stats_routes:
            return self._stats_routes[path](environ, start_response)
        else:
            return self.app(environ, start_response)
        start_response(
            "200 OK", [("Content-Type", _HEADERS_PLAIN), ("Content-Length", str(len(body)))]
        )
        return [body]

    def _first_request(self) -> None:
        """Until synced: the host's first-request check (once), then sync (the first
        requests wait, bounded, for the hub's snapshot)."""
        self.core.start()  # outside any lock: starting a thread yields under gevent
        hook, self._on_first_request = self._on_first_request, None
        if hook is not None:
            hook()
        if self.sync is not None or self.config.sync_explicit:
            self.start_sync(SYNC_JOIN_WAIT)
        else:
            self._synced = True

    def _still_joining(self) -> bytes:
        """The answer while the first snapshot is still arriving (counted as an error)."""
        self.core.counters.error("http", "starting")
        return STILL_JOINING

    def start_sync(self, wait: float = SYNC_SNAPSHOT_WAIT) -> None:
        """Start this process's background work: the hook's delivery, and the sync
        client (once), waiting, bounded, for its snapshot.

        Until the snapshot is in (or no hub answered), each request waits for it
        again, at most ``wait``: a worker never answers from a half-filled replica
        while its join progresses.

        gunicorn's post_worker_init calls it (the project's config: production joins the
        per-user default hub); the first request does when sync_socket names a hub.
        """
        self.core.start()
        path = self.config.sync_socket_path
        if path is not None:
            with self._sync_lock:
                client, starting = self.sync, self.sync is None
                if client is None:
                    client = self.sync = SyncClient(self.core, path)
            if starting:
                ws = self.ws_tracker()
                ws.publish, ws.remote, client.on_relay = (
                    client.publish_ws,
                    client.relay_ws,
                    ws.receive,
                )
                client.start()
                self.stats.share(
                    client.publish_stats,
                    lambda: [entry.payload for entry in client.cluster_stats],
                    client.status,
                )
            if not client.wait_ready(wait):
                return
        self._synced = True

    def routes(self) -> dict[str, str]:
        """Endpoint name -> path (``<passkey>`` one segment) of every path answered here.

        The Flask and Django integrations register these, so route listings show the
        tracker and url_for / reverse build its URLs.
        """
        routes = {
            "announce": self._announce,
            "announce_passkey": self._announce_prefix + "<passkey>",
            "scrape": self._scrape,
            "scrape_passkey": self._scrape_prefix + "<passkey>",
        }
        if self.config.stats_path:
            routes["stats"] = self.config.stats_path
            routes["stats_page"] = self.config.stats_path + ".html"
        if self.config.metrics_path:
            routes["metrics"] = self.config.metrics_path
        return routes

    def websocket(
        self, environ: WSGIEnvironment, start_response: StartResponse, passkey: str | None
    ) -> Iterable[bytes]:
        """A WebTorrent client's upgrade: hand the socket to the WebSocket tracker.

        Only a server that offers the socket hand-over (``TrackerWorker``) can
        hold the connection; any other gets a plain refusal saying so.
        """
        # Imported here: under other WSGI servers we never load gevent or wsproto.
        from wsgi_tracker.websocket.server import serve_upgraded

        take = environ.get(UPGRADE_KEY)
        try:
            if take is None:
                raise HandshakeError(
                    "501 Not Implemented",
                    "WebSocket announces need gunicorn with wsgi_tracker.worker.TrackerWorker",
                )
            token = accept_token(environ)
        except HandshakeError as exc:
            body = f"{exc}\n".encode()
            start_response(
                exc.status,
                [
                    ("Content-Type", _HEADERS_PLAIN),
                    ("Content-Length", str(len(body))),
                    ("Sec-WebSocket-Version", "13"),
                ],
            )
            return [body]
        tracker = self.ws_tracker()
        take(
            lambda sock, buffered, release: serve_upgraded(
                sock, buffered, release, tracker, token, passkey
            )
        )
        return []

    def ws_tracker(self) -> WsTracker:
        """This process's WebSocket tracker, made on first use (after gevent patched)."""
        if self._ws is None:
            self._ws = WsTracker(self.core)
        return self._ws

    def client_ip(self, environ: WSGIEnvironment) -> bytes:
        return pack_ip(environ.get("REMOTE_ADDR") or "0.0.0.0")

    def _forwarded_client_ip(self, environ: WSGIEnvironment) -> bytes:
        """The client behind a trusted proxy (see ``proxy.ClientAddress``)."""
        remote = environ.get("REMOTE_ADDR") or ""
        return pack_ip(self._forwarded(remote, environ.get("HTTP_X_FORWARDED_FOR")) or "0.0.0.0")

    def _query(self, environ: WSGIEnvironment) -> bytes:
        query: str = environ.get("QUERY_STRING", "")
        if len(query) > self.config.max_query_bytes:
            raise TrackerError(
                f"request too long: query of {len(query)} bytes, at most "
                f"{self.config.max_query_bytes}"
            )
        # PEP 3333 hands the raw query over as latin-1 text; this gets the bytes back.
        return query.encode("latin-1", "replace")

    def announce(self, environ: WSGIEnvironment, passkey: str | None) -> bytes:
        """With sync, read-your-writes (docs/SYNC.md): what the hub already sent is applied
        first (``core.lock`` is a ``ReadGate``), and the reply waits (bounded) until the hub
        has acked this change, so the client's next request, to any process, sees it. While
        the hub is behind (a wait timed out and its ack has not come) a plain announce's
        reply goes at once: under overload the wait would pace every client, and a
        completion still waits. A pure refresh (what no reader sees) never waits
        (``SyncClient.write_token``)."""
        try:
            parsed = parse_announce(self._query(environ), passkey)
        except TrackerError as exc:
            self.core.counters.error("http", "malformed")
            return encode_failure(str(exc))
        sync = self.sync
        try:
            client = self.client_ip(environ)
            with self.core.lock:
                result = self.core.announce(
                    parsed.announce, client, with_ids=not parsed.compact and not parsed.no_peer_id
                )
                token = 0 if sync is None else sync.write_token(self.core.store.refreshed)
        except TrackerError as exc:
            return encode_failure(str(exc))
        body = encode_announce(result, parsed.compact, parsed.no_peer_id)
        if sync is not None:
            if parsed.announce.event == EVENT_COMPLETED:
                sync.wait_for(token, COMPLETION_ACK_WAIT, patient=True)
            else:
                sync.wait_for(token)
        return body

    def scrape(self, environ: WSGIEnvironment, passkey: str | None) -> bytes:
        """``/scrape/<passkey>`` is the scrape URL clients derive from ``/announce/<passkey>``."""
        try:
            hashes = parse_scrape(self._query(environ), self.config.max_scrape_hashes)
        except TrackerError as exc:
            self.core.counters.error("http", "malformed")
            return encode_failure(str(exc))
        try:
            with self.core.lock:  # with sync, its gate applies what the hub sent first
                if hashes:
                    entries = self.core.scrape(hashes, passkey=passkey)
                else:
                    entries = self.core.full_scrape(passkey=passkey)
        except TrackerError as exc:
            return encode_failure(str(exc))
        return encode_scrape(entries)


def find_tracker(app: object) -> TrackerMiddleware | None:
    """The TrackerMiddleware a server was given: the app itself or a Flask app's ``wsgi_app``."""
    tracker = app if isinstance(app, TrackerMiddleware) else getattr(app, "wsgi_app", None)
    return tracker if isinstance(tracker, TrackerMiddleware) else None


def make_app(config: TrackerConfig | None = None) -> TrackerMiddleware:
    """The tracker as a standalone WSGI application."""
    return TrackerMiddleware(None, config)
