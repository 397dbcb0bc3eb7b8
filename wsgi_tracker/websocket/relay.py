"""One process's WebSocket tracker: messages in, replies and relayed offers/answers out.

A ``Session`` is one socket: what it sends to and which (info_hash, peer_id)
pairs it announced. ``WsTracker`` applies a parsed message to the replicated
``WsSwarms`` (core.ws), answers the sender, and delivers offers and answers to
their targets: straight to a session of this process, or, for a peer whose
socket another process holds, through ``remote`` (the sync client; the hub
routes by holder pid). No sockets here: the gevent shell is ``server.py``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable

from wsgi_tracker.access.policy import AccessDenied
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import EVENT_STOPPED, WsChange
from wsgi_tracker.core.ws_swarm import WsSwarmFull
from wsgi_tracker.websocket.codec import (
    Limits,
    Message,
    WsAnnounce,
    WsAnswer,
    WsError,
    WsScrape,
    encode_announce_reply,
    encode_answer,
    encode_failure,
    encode_offer,
    encode_scrape_reply,
    parse_message,
)

log = logging.getLogger("wsgi_tracker.websocket")

# (holder pid, info_hash, peer_id, text) -> whether it left this process.
RemoteSend = Callable[[int, bytes, bytes, str], bool]
# A change this process made to the WebSocket swarms, for sync to replicate.
Publish = Callable[[WsChange], None]


class Session:
    """One WebSocket connection as the tracker sees it.

    ``offered`` maps the offer ids of its last relayed offers to the peer each
    went to (made on its first offer): an answer reaches this socket only for
    one of them, from that peer, once. Without it anyone holding a peer in the
    swarm could send answers to any peer_id at line rate: 20,000 of 1 KB from
    one connection pushed a reader past its 1 MiB outbox in 3.5 s, and it was
    disconnected, its peers stopped.
    """

    __slots__ = ("held", "offered", "passkey", "send")

    def __init__(self, send: Callable[[str], None], passkey: str | None = None) -> None:
        self.send = send
        self.passkey = passkey
        self.held: set[tuple[bytes, bytes]] = set()
        self.offered: dict[bytes, bytes] | None = None

    def offer_sent(self, offer_id: bytes, to_peer: bytes, kept: int) -> None:
        offered = self.offered
        if offered is None:
            offered = self.offered = {}
        offered.pop(offer_id, None)  # a re-used id moves to the newest end
        offered[offer_id] = to_peer
        if len(offered) > kept:
            del offered[next(iter(offered))]

    def answer_expected(self, offer_id: bytes, from_peer: bytes) -> bool:
        """Whether an answer to ``offer_id`` from ``from_peer`` is due (then no longer)."""
        offered = self.offered
        if offered is None or offered.get(offer_id) != from_peer:
            return False
        del offered[offer_id]
        return True


class WsTracker:
    """Route WebTorrent messages between the sessions of every process."""

    def __init__(
        self,
        core: TrackerCore,
        limits: Limits | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        cfg = core.config
        self.core = core
        self.swarms = core.ws
        self.limits = limits or Limits(
            max_offers=cfg.ws_max_offers,
            max_scrape_hashes=cfg.max_scrape_hashes,
            max_message_bytes=cfg.ws_max_message_bytes,
            max_frame_bytes=cfg.ws_max_frame_bytes,
        )
        self.rng = rng or random.Random()
        self.max_held = cfg.ws_max_peers_per_connection  # 0: no bound
        # Offers awaiting an answer, per session: two announces' worth (bittorrent-tracker
        # drops an unanswered offer after 50 s, and announces every ws_interval).
        self.offers_kept = 2 * max(1, self.limits.max_offers)
        self.pid = os.getpid()
        self.local: dict[tuple[bytes, bytes], Session] = {}
        self.counters = core.counters
        # The sync seams, set when this process joins a hub (None: standalone).
        self.remote: RemoteSend | None = None
        self.publish: Publish | None = None

    # --- sessions --------------------------------------------------------------------

    def opened(self, session: Session) -> None:
        self.counters.ws_connections += 1

    def closed(self, session: Session) -> None:
        """The socket is gone: its peers stop, everywhere, now (not after their TTL)."""
        self.counters.ws_connections -= 1
        now = self.core.clock()
        for ih, peer_id in list(session.held):
            self._apply(session, WsChange(ih, peer_id, self.pid, False, EVENT_STOPPED, now))

    # --- messages --------------------------------------------------------------------

    def handle(self, session: Session, text: str) -> None:
        """One text message from ``session``. Raises WsError only when the socket must close."""
        try:
            message = parse_message(text, self.limits)
            self._dispatch(session, message)
        except WsError as exc:
            if exc.close_code is not None:
                self.core.counters.error("ws", "malformed")
                raise
            self.core.counters.error("ws", "refused")
            session.send(encode_failure(exc))

    def _dispatch(self, session: Session, message: Message) -> None:
        if isinstance(message, WsAnnounce):
            self._announce(session, message)
        elif isinstance(message, WsAnswer):
            self._answer(session, message)
        else:
            self._scrape(session, message)

    def _announce(self, session: Session, msg: WsAnnounce) -> None:
        core = self.core
        now = core.clock()
        key = (msg.info_hash, msg.peer_id)
        if core.access is not None:
            try:
                core.access.admit(msg.info_hash, session.passkey, now)
            except AccessDenied as exc:
                raise WsError(str(exc), info_hash=msg.info_hash) from None
        with core.lock:
            if key not in session.held:
                holder = self.swarms.holder(*key, now)
                if key in self.local or (holder is not None and holder != self.pid):
                    raise WsError(
                        "peer_id is in use on another connection, nothing was changed",
                        info_hash=msg.info_hash,
                    )
                if self.max_held and len(session.held) >= self.max_held:
                    raise WsError(
                        f"this connection holds {len(session.held)} peers, the most allowed, "
                        "nothing was changed",
                        info_hash=msg.info_hash,
                    )
            change = WsChange(*key, self.pid, msg.seeder, msg.event, now)
            self._apply(session, change)
            complete, incomplete, _ = self.swarms.counts(msg.info_hash)
            core.counters.announces["ws"] += 1
            targets = []
            if msg.offers and msg.event != EVENT_STOPPED:
                want = len(msg.offers) if msg.numwant is None else min(len(msg.offers), msg.numwant)
                targets = self.swarms.targets(*key, msg.seeder, want, self.rng, now)
        session.send(
            encode_announce_reply(msg.info_hash, core.config.ws_interval, complete, incomplete)
        )
        for (to_peer, holder), offer in zip(targets, msg.offers, strict=False):
            if self._deliver(holder, msg.info_hash, to_peer, encode_offer(*key, offer)):
                session.offer_sent(offer.offer_id, to_peer, self.offers_kept)
                self.counters.relayed["offer"] += 1

    def _apply(self, session: Session, change: WsChange) -> None:
        key = (change.info_hash, change.peer_id)
        try:
            self.swarms.apply(change, change.timestamp)
        except WsSwarmFull as exc:
            raise WsError(f"{exc}, nothing was changed", info_hash=change.info_hash) from None
        if change.event == EVENT_STOPPED:
            session.held.discard(key)
            self.local.pop(key, None)
        else:
            session.held.add(key)
            self.local[key] = session
        if self.publish is not None:
            self.publish(change)

    def _answer(self, session: Session, msg: WsAnswer) -> None:
        if (msg.info_hash, msg.peer_id) not in session.held:
            raise WsError(
                "answer from a peer_id this connection has not announced, nothing was changed",
                info_hash=msg.info_hash,
            )
        with self.core.lock:
            holder = self.swarms.holder(msg.info_hash, msg.to_peer_id, self.core.clock())
        if holder is None or not self._deliver(
            holder, msg.info_hash, msg.to_peer_id, encode_answer(msg)
        ):
            raise WsError(
                "answer to an unknown peer: to_peer_id is not in this swarm or made no "
                "such offer to this peer_id, nothing was changed",
                info_hash=msg.info_hash,
            )
        self.counters.relayed["answer"] += 1

    def _scrape(self, session: Session, msg: WsScrape) -> None:
        core = self.core
        hashes = msg.info_hashes
        if not hashes and not core.config.full_scrape:
            raise WsError(
                "full scrape is disabled: give at least one info_hash, nothing was changed",
                action="scrape",
            )
        with core.lock:
            if not hashes:
                hashes = tuple(self.swarms.torrents)
            allowed = core.access.torrent_allowed if core.access and core.access.torrents else None
            files = [
                (ih, *self.swarms.counts(ih)) if allowed is None or allowed(ih) else (ih, 0, 0, 0)
                for ih in hashes
            ]
            core.counters.scrapes["ws"] += 1
        session.send(encode_scrape_reply(files))

    # --- delivery --------------------------------------------------------------------

    def _deliver(self, holder: int, info_hash: bytes, peer_id: bytes, text: str) -> bool:
        if holder == self.pid:
            return self.receive(info_hash, peer_id, text)
        return self.remote is not None and self.remote(holder, info_hash, peer_id, text)

    def receive(self, info_hash: bytes, peer_id: bytes, text: str) -> bool:
        """Hand ``text`` to the local session holding the peer; False if none does, or
        if it is an answer to no offer that session made to the answering peer.

        Offers and answers from another process come as their text only: an answer is
        told by its top-level key (in JSON text ``"answer":{`` cannot occur inside a
        string) and read back in full, ~1 us a KB, against ~50-180 us a relay."""
        session = self.local.get((info_hash, peer_id))
        if session is None:
            return False
        if _ANSWER_KEY in text:
            answer = json.loads(text)
            if not session.answer_expected(
                answer["offer_id"].encode("latin-1"), answer["peer_id"].encode("latin-1")
            ):
                return False
        session.send(text)
        return True


_ANSWER_KEY = ',"answer":{"type":"answer"'  # codec.encode_answer's, and only its
