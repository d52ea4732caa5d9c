"""The loopsync server: connections and rooms around the rules of ``rooms.py`` and a store.

This module moves messages and keeps the server fair; the rules live in
``rooms.py``, the wire in ``protocol.py`` and ``websocket.py``, and each
connection's own limits (time, reading rate, unsent bytes) in
``connection.py``. What it adds is what no single connection can see:

- **Rooms come and go.** A room is loaded from the store when its first
  member says ``hello`` and leaves memory :data:`ROOM_GRACE_SECONDS` after
  its last member left and its last commit was answered. Start-up reads
  nothing, so memory follows the rooms in use, not the rooms ever written.
- **Replies keep request order.** Each update waits for its commit; an
  answer to a later message of the same connection (an error, a snapshot)
  waits behind it, so a client sees its answers in the order it asked.
- **Delivery is fair between rooms.** A committed update is applied to its
  room at once (snapshots show it), and its ``ack`` and the ``update`` for
  the room's other members go out in revision order, a room at a time, round
  robin, at most :data:`ROOM_SLICE_WRITES` writes per room per turn. A busy
  room therefore delays another room's answers by one slice, and a room
  whose members send faster than their room can be told stops being read
  (:data:`ROOM_BACKLOG_WRITES`) until it has caught up. So does a connection
  with :data:`MAX_UNANSWERED` updates not yet answered.
- **Presence is coalesced.** Members' joins, leaves and transport changes
  go out as one ``presence`` message of changes per room at most every
  :data:`PRESENCE_INTERVAL_SECONDS` (a joiner gets the whole table once), so
  its cost grows with the room, not with the square of it.
- **Connections are bounded.** At most :data:`MAX_UNJOINED` connections may
  wait for their handshake or their ``hello``; a newer one makes the oldest
  go. The process takes as many descriptors as its hard limit allows and
  keeps :data:`DESCRIPTOR_RESERVE` of them for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import re
import resource
import signal
import sys
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Final
from urllib.parse import unquote_to_bytes

import orjson

from . import protocol, websocket
from .connection import CLOSE_TIMEOUT_SECONDS, OUTBOX_BYTES, UPGRADE, Connection
from .document import Invalid
from .logs import ThrottledLog
from .protocol import Fetch, Hello, Transport, Update
from .rooms import Accepted, Proposal, Room
from .store import MemoryStore, SqliteStore, Store, StoreError
from .websocket import HttpError, Request, text_frame

if TYPE_CHECKING:
    from .cluster import ClusterLink, Entry

log = logging.getLogger("loopsync.server")
throttled = ThrottledLog(log)

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
HELLO_TIMEOUT_SECONDS: Final = 10.0
ROOM_GRACE_SECONDS: Final = 30.0
PRESENCE_INTERVAL_SECONDS: Final = 0.2
PRESENCE_CHANGES_PER_MESSAGE: Final = 64
ROOM_SLICE_WRITES: Final = 512
TURN_WRITES: Final = 4096
ROOM_BACKLOG_WRITES: Final = 8192
MAX_UNANSWERED: Final = 32
MAX_UNJOINED: Final = 1024
FETCH_TOKENS: Final = 10
"""What a ``fetch`` takes from its connection's rate budget: a snapshot is the largest answer there is."""
DESCRIPTOR_RESERVE: Final = 64

_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # ES modules need a JavaScript type
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wav": "audio/wav",
    ".txt": "text/plain; charset=utf-8",
}
_FILE_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class _Reply:
    """A place in a connection's replies, kept for an update until its commit says what to answer."""

    __slots__ = ("frame",)

    def __init__(self) -> None:
        self.frame: bytes | None = None


_CLOSE_INTERNAL: Final = object()
"""A reply entry: close the connection with 1011 (after the ``internal`` error that precedes it)."""
_SNAPSHOT: Final = object()
"""A reply entry: a snapshot, built when its turn comes (so it shows every commit answered before it). The
connection is not read until it goes out, so that no later update of the same connection is applied before
it (that update's ack would then come after a snapshot that already shows it)."""


class _Peer(Connection):
    """A connection and, once it has said ``hello``, a member of a room."""

    __slots__ = ("server", "id", "user", "room", "presence_id", "replies", "unanswered", "seen_revision", "hello_timer", "joining")

    def __init__(self, server: Server, connection_id: int) -> None:
        super().__init__(server)
        self.server = server
        self.outbox_bytes = server.outbox_bytes
        self.id = connection_id
        self.label = str(connection_id)
        self.user: str | None = None
        self.room: _RoomState | None = None
        self.presence_id = str(connection_id) if server.cluster is None else f"{server.cluster.node_id}-{connection_id}"
        self.replies: deque[_Reply | bytes | object] = deque()
        """Answers waiting for an earlier update's commit, in request order."""
        self.unanswered = 0
        self.seen_revision = 0
        """The revision of the last snapshot sent: updates up to it are already in the client's hands."""
        self.hello_timer: asyncio.TimerHandle | None = None
        self.joining = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server._accepted(self)


class _RoomState:
    """A room in memory: its rules and state (``room``), its connections and what waits to be sent to them."""

    __slots__ = ("room", "peers", "outgoing", "backlog_writes", "scheduled", "held", "pending", "presence_timer",
                 "presence_sent_at", "idle_timer")

    def __init__(self, room: Room) -> None:
        self.room = room
        self.peers: dict[int, _Peer] = {}
        self.outgoing: deque[tuple[Accepted, _Peer | None, _Reply | None, bool]] | None = None
        """Committed records to tell the members, in revision order (with the sender, its reply, and whether the others still need it);
        None when there are none (an empty deque holds a 600-byte block: a quarter of an idle room)."""
        self.backlog_writes = 0
        self.scheduled = False
        self.held: list[_Peer] = []
        """Members that stopped being read because the room's backlog is too long."""
        self.pending = 0
        """Proposals with the store."""
        self.presence_timer: asyncio.TimerHandle | None = None
        self.presence_sent_at = -PRESENCE_INTERVAL_SECONDS
        self.idle_timer: asyncio.TimerHandle | None = None


class Server:
    """The server's state and its answers to connections; start it with :func:`running` or :func:`main_serve`."""

    def __init__(self, store: Store | None = None, *, hello_timeout: float = HELLO_TIMEOUT_SECONDS, web_dir: Path = WEB_DIR,
                 allowed_origins: tuple[str, ...] = (), room_grace: float = ROOM_GRACE_SECONDS,
                 max_connections: int | None = None, outbox_bytes: int = OUTBOX_BYTES, cluster: ClusterLink | None = None,
                 reuse_port: bool = False) -> None:
        self.store: Store = store if store is not None else MemoryStore()
        self.cluster = cluster
        """The link to the other nodes when this server is one node of a cluster (its store is then a PostgresStore)."""
        self.reuse_port = reuse_port
        self.hello_timeout = hello_timeout
        self.web_dir = web_dir.resolve()
        self.allowed_origins = frozenset(origin.rstrip("/").lower() for origin in allowed_origins)
        self.room_grace = room_grace
        self.max_connections = max_connections
        self.outbox_bytes = outbox_bytes
        self.rooms: dict[str, _RoomState] = {}
        self.connections: dict[int, _Peer] = {}
        self.unjoined: dict[int, _Peer] = {}
        """Connections that have not joined a room yet, oldest first."""
        self.port = 0
        self.host = "127.0.0.1"
        self._ids = itertools.count(1)
        self._loading: dict[str, asyncio.Future[_RoomState]] = {}
        self._turns: deque[_RoomState] = deque()
        self._turn_scheduled = False
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False

    @property
    def http_url(self) -> str:
        """Where the web client is served, e.g. ``http://127.0.0.1:8765/``."""
        return f"http://{self._url_host()}:{self.port}/"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint, e.g. ``ws://127.0.0.1:8765/ws``."""
        return f"ws://{self._url_host()}:{self.port}/ws"

    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Open the store and listen; ``port`` 0 picks a free port (read it back from ``.port``)."""
        await self.store.open()
        if self.cluster is not None:
            try:
                await self.cluster.open(self)
            except BaseException:
                await self.store.close()
                raise
        if self.max_connections is None:
            self.max_connections = raise_descriptor_limit() - DESCRIPTOR_RESERVE
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Peer(self, next(self._ids)), host, port, backlog=1024,
                                                    reuse_port=self.reuse_port or None)
        except BaseException:
            if self.cluster is not None:
                await self.cluster.close()
            await self.store.close()
            raise
        self.host = host
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, close every WebSocket with 1001, answer what the store has pending and close it."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for peer in list(self.connections.values()):
            if peer.state == "open":
                peer.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
            else:
                peer.abort()
        deadline = asyncio.get_running_loop().time() + CLOSE_TIMEOUT_SECONDS
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for peer in list(self.connections.values()):
            peer.abort()
        await self.store.flush()
        if self.cluster is not None:
            await self.cluster.close()
        await self.store.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    # -- connections -------------------------------------------------------------------

    def _accepted(self, peer: _Peer) -> None:
        if self._stopping:
            peer.abort()
            return
        assert self.max_connections is not None
        if len(self.connections) >= self.max_connections:
            throttled.log("connection limit", logging.WARNING, "at the connection limit (%d): refusing a new connection", self.max_connections)
            peer.abort()
            return
        self.connections[peer.id] = peer
        if len(self.unjoined) >= MAX_UNJOINED:
            oldest = next(iter(self.unjoined.values()))
            throttled.log("unjoined limit", logging.INFO, "%d connections wait for a handshake or a hello: cutting the oldest", MAX_UNJOINED)
            oldest.abort()
            self.unjoined.pop(oldest.id, None)
        self.unjoined[peer.id] = peer

    def lost(self, connection: Connection) -> None:
        """A connection is gone: forget it and take it out of its room."""
        peer = _as_peer(connection)
        self.connections.pop(peer.id, None)
        self.closing(peer)

    def closing(self, connection: Connection) -> None:
        """A connection is closing (or gone): it leaves its room at once."""
        peer = _as_peer(connection)
        self.unjoined.pop(peer.id, None)
        if peer.hello_timer is not None:
            peer.hello_timer.cancel()
            peer.hello_timer = None
        state = peer.room
        if state is None:
            return
        peer.room = None
        state.peers.pop(peer.id, None)
        state.room.leave(peer.presence_id)
        if peer in state.held:
            state.held.remove(peer)
        self._presence_changed(state)
        self._maybe_idle(state)

    def http_request(self, connection: Connection, request: Request) -> bytes | HttpError | object:
        """Answer a plain HTTP request (the web client's files), or accept a WebSocket upgrade of ``/ws``."""
        path, _, _ = request.target.partition("?")
        if path == "/ws":
            origin = request.headers.get("origin")
            if origin is not None and not self._origin_allowed(origin, request.headers.get("host", "")):
                return HttpError(403, f"WebSocket upgrades from {origin[:100]} are not allowed")
            return UPGRADE
        if request.method not in ("GET", "HEAD"):
            return HttpError(405, "only GET and HEAD")
        return self._static(path, head_only=request.method == "HEAD")

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in (f"http://{host.lower()}", f"https://{host.lower()}"):
            return True
        return origin in self.allowed_origins

    def _static(self, path: str, *, head_only: bool) -> bytes | HttpError:
        try:
            decoded = unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            return HttpError(400, "the path is not UTF-8")
        segments = decoded.strip("/").split("/") if decoded.strip("/") else ["index.html"]
        if not all(_FILE_SEGMENT.fullmatch(segment) for segment in segments):
            return HttpError(404, "not found")
        file = self.web_dir.joinpath(*segments)
        try:
            body = file.read_bytes()
        except OSError:
            return HttpError(404, "not found")
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        content_type = _CONTENT_TYPES.get(file.suffix.lower())
        if content_type:
            headers["Content-Type"] = content_type
        return websocket.http_response(200, body, headers, head_only=head_only)

    def opened(self, connection: Connection) -> None:
        """A WebSocket is open: it has :attr:`hello_timeout` seconds to say ``hello``."""
        peer = _as_peer(connection)
        peer.hello_timer = asyncio.get_running_loop().call_later(self.hello_timeout, self._hello_expired, peer)

    def _hello_expired(self, peer: _Peer) -> None:
        peer.hello_timer = None
        if peer.room is None and not peer.joining:
            peer.close(protocol.CLOSE_POLICY, "no hello")

    def caught_up(self, connection: Connection) -> None:
        """A peer that was behind has read its backlog: send it the presence table it missed."""
        peer = _as_peer(connection)
        if peer.room is not None:
            peer.send(text_frame(peer.room.room.presence_table(peer.presence_id)))

    def binary(self, connection: Connection) -> None:
        """loopsync speaks JSON text: a binary message is refused (before hello: not joined)."""
        peer = _as_peer(connection)
        if peer.room is None:
            self._reply(peer, protocol.error_message(Invalid("not_joined", "send hello first")))
        else:
            self._reply(peer, protocol.error_message(Invalid("bad_message", "binary messages are not accepted; send JSON text")))

    def text(self, connection: Connection, text: str) -> None:
        """One message from a client."""
        peer = _as_peer(connection)
        try:
            if peer.room is None:
                self._first_message(peer, text)
                return
            message = protocol.parse_client_message(text)
            kind = type(message)
            if kind is Update:
                self._update(peer, peer.room, message)  # type: ignore[arg-type]
            elif kind is Transport:
                assert isinstance(message, Transport)
                if peer.room.room.set_transport(peer.presence_id, message.playing, message.bpm):
                    self._presence_changed(peer.room)
            elif kind is Fetch:
                peer.charge(FETCH_TOKENS - 1)
                if peer.replies:
                    peer.hold_reading()
                    peer.replies.append(_SNAPSHOT)
                else:
                    self._send_snapshot(peer)
            else:
                assert isinstance(message, Invalid)
                self._reply(peer, protocol.error_message(message, _readable_seq(text)))
        except Exception:
            throttled.log("internal", logging.ERROR, "internal error on connection %d (%s)", peer.id, peer.user or "before hello", exc_info=True)
            self._internal(peer, _readable_seq(text))

    def _internal(self, peer: _Peer, seq: int | None) -> None:
        """A bug while handling a message: answer it ``internal`` after the replies before it, then close with 1011."""
        frame = protocol.error_message(Invalid("internal", "internal server error"), seq)
        if not peer.replies:
            peer.send(text_frame(frame))
            peer.close(protocol.CLOSE_INTERNAL, "internal error")
            return
        peer.hold_reading()  # nothing after the failed message is read: the close comes next
        peer.replies.append(frame)
        peer.replies.append(_CLOSE_INTERNAL)

    # -- joining -----------------------------------------------------------------------------

    def _first_message(self, peer: _Peer, text: str) -> None:
        if peer.joining:  # reading is held while a hello waits for its room: nothing else comes
            return
        hello = protocol.parse_first_message(text)
        if isinstance(hello, Invalid):
            self._reply(peer, protocol.error_message(hello, _readable_seq(text) if hello.code == "not_joined" else None))
            if hello.code != "not_joined":
                peer.close(protocol.CLOSE_POLICY, hello.code)
            return
        state = self.rooms.get(hello.room)
        if state is not None and self.cluster is None:
            self._join(peer, state, hello)
            return
        peer.joining = True
        peer.hold_reading()
        future = self._loading.get(hello.room)
        if future is None:
            future = self._loading[hello.room] = asyncio.ensure_future(self._load(hello.room))
        future.add_done_callback(lambda done: self._loaded(peer, hello, done))

    async def _load(self, name: str) -> _RoomState:
        try:
            return await self._read_room(name)
        finally:
            del self._loading[name]

    async def _read_room(self, name: str) -> _RoomState:
        known = self.rooms.get(name)
        if known is not None and self.cluster is not None:
            # A cluster node's room may lag PostgreSQL (a node died before it published a commit): a joiner's snapshot must not.
            try:
                await self.cluster.refresh(name)
            except StoreError as exc:
                throttled.log("refresh", logging.WARNING, "could not re-read room %r for a joiner: %s", name, exc)
            if self.rooms.get(name) is known:
                return known
        presence: list[Any] = []
        if self.cluster is None:
            record = await self.store.load_room(name)
        else:
            try:
                record, presence = await self.cluster.load(name)
            except BaseException:
                self.cluster.load_failed(name)
                raise
        state = self.rooms.get(name)
        if state is None:
            state = self.rooms[name] = _RoomState(Room(name, record))
            if self.cluster is not None:
                self.cluster.loaded(state, presence)
        return state

    def _loaded(self, peer: _Peer, hello: Hello, done: asyncio.Future[_RoomState]) -> None:
        peer.joining = False
        problem = done.exception()
        if peer.state != "open":
            if problem is None:
                self._maybe_idle(done.result())
            return
        if problem is not None:
            throttled.log("load", logging.ERROR, "could not load room %r: %s", hello.room, problem)
            self._reply(peer, protocol.error_message(Invalid("unavailable", "the room cannot be loaded now; try again later")))
            peer.close(1013, "try again later")
            peer.release_reading()  # to read the client's answer to the close
            return
        self._join(peer, done.result(), hello)
        peer.release_reading()

    def _join(self, peer: _Peer, state: _RoomState, hello: Hello) -> None:
        problem = state.room.join(peer.presence_id, hello.user, hello.playing, hello.bpm)
        if problem:
            self._reply(peer, protocol.error_message(problem))
            peer.close(protocol.CLOSE_POLICY, problem.code)
            self._maybe_idle(state)
            return
        if peer.hello_timer is not None:
            peer.hello_timer.cancel()
            peer.hello_timer = None
        if state.idle_timer is not None:
            state.idle_timer.cancel()
            state.idle_timer = None
        self.unjoined.pop(peer.id, None)
        peer.user = hello.user
        peer.room = state
        state.peers[peer.id] = peer
        self._send_snapshot(peer)
        peer.send(text_frame(state.room.presence_table(peer.presence_id)))
        self._presence_changed(state)
        if state.held:
            peer.hold_reading()
            state.held.append(peer)

    # -- updates --------------------------------------------------------------------------

    def _update(self, peer: _Peer, state: _RoomState, update: Update) -> None:
        assert peer.user is not None
        problem = state.room.check(peer.user, update)
        if problem is not None:
            self._reply(peer, protocol.error_message(problem, update.seq))
            return
        reply = _Reply()
        peer.replies.append(reply)
        peer.unanswered += 1
        if peer.unanswered == MAX_UNANSWERED:
            peer.hold_reading()
        state.pending += 1
        proposal = Proposal(state.room, peer.user, update.seq, update.part)
        self.store.commit_soon(proposal, lambda outcome: self._decided(peer, state, reply, update.seq, outcome))

    def _decided(self, peer: _Peer, state: _RoomState, reply: _Reply, seq: int, outcome: list[Accepted] | Invalid | StoreError) -> None:
        """The store has decided a proposal: apply what it accepted and queue the answers in revision order."""
        state.pending -= 1
        if isinstance(outcome, list):
            entries: list[tuple[Accepted, _Peer | None, _Reply | None]] = [
                (record, peer, reply) if record.user == peer.user and record.part is not None else (record, None, None)
                for record in outcome]
            if self.cluster is None:
                self.pass_on(state, entries)
            else:  # in revision order with the other nodes' commits
                from .cluster import Entry

                self.cluster.committed(state, [Entry(*entry) for entry in entries])
            return
        if self.cluster is not None:
            self.cluster.refused(state.room.name, outcome)
        if isinstance(outcome, StoreError):
            throttled.log("store", logging.ERROR, "could not commit an update of %r in room %r: %s", peer.user, state.room.name, outcome)
            problem = Invalid("unavailable", "the update could not be stored now; it was not applied")
        else:
            problem = outcome
        reply.frame = protocol.error_message(problem, seq)
        self._answered(peer)
        self._flush_replies(peer)
        self._maybe_idle(state)

    def pass_on(self, state: _RoomState, entries: list[tuple[Accepted, _Peer | None, _Reply | None]] | list[Entry]) -> None:
        """Apply committed records to the room, in revision order, and queue their acks and updates.

        A record the room already has (a cluster's re-read showed it before
        this node's own commit was answered) only gets its ack.
        """
        room = state.room
        if state.outgoing is None:
            state.outgoing = deque()
        for record, sender, reply in entries:
            if record.revision > room.revision:
                room.apply(record)
                state.outgoing.append((record, sender, reply, True))
            elif sender is not None:
                state.outgoing.append((record, sender, reply, False))
            else:
                continue
            state.backlog_writes += len(state.peers)
        self._take_turn(state)
        if state.backlog_writes > ROOM_BACKLOG_WRITES and not state.held:
            self._hold_room(state)

    def _answered(self, peer: _Peer) -> None:
        peer.unanswered -= 1
        if peer.unanswered == MAX_UNANSWERED - 1:
            peer.release_reading()

    # -- replies in request order ------------------------------------------------------

    def _reply(self, peer: _Peer, frame: bytes) -> None:
        """Answer a message after the answers to the messages before it."""
        if peer.replies:
            peer.replies.append(frame)
        else:
            peer.send(text_frame(frame))

    def _flush_replies(self, peer: _Peer) -> None:
        replies = peer.replies
        while replies:
            head = replies[0]
            if type(head) is _Reply:
                assert isinstance(head, _Reply)
                if head.frame is None:
                    return
                peer.send(text_frame(head.frame))
            elif head is _SNAPSHOT:
                self._send_snapshot(peer)
                peer.release_reading()
            elif head is _CLOSE_INTERNAL:
                replies.clear()
                peer.close(protocol.CLOSE_INTERNAL, "internal error")
                return
            else:
                peer.send(text_frame(head))  # type: ignore[arg-type]
            replies.popleft()

    def _send_snapshot(self, peer: _Peer) -> None:
        state = peer.room
        assert state is not None and peer.user is not None
        room = state.room
        peer.seen_revision = room.revision
        peer.send(text_frame(protocol.snapshot_message(you=peer.user, presence_id=peer.presence_id, revision=room.revision,
                                                       seq=room.seq_of(peer.user), document=room.document())))

    # -- delivery, room by room ------------------------------------------------------------

    def _take_turn(self, state: _RoomState) -> None:
        if not state.scheduled:
            state.scheduled = True
            self._turns.append(state)
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        """Tell rooms their committed records, a slice per room in turn, and let the loop read between turns."""
        self._turn_scheduled = False
        budget = TURN_WRITES
        turns = self._turns
        while turns and budget > 0:
            state = turns.popleft()
            try:
                budget -= self._deliver_room(state)
            except Exception:  # a bug: say so, and let the other rooms go on
                throttled.log("internal", logging.ERROR, "internal error delivering to room %r", state.room.name, exc_info=True)
                state.outgoing, state.backlog_writes = None, 0
                # Answers of this room are lost: its members reconnect, and their snapshots settle what was in flight.
                for peer in list(state.peers.values()):
                    peer.close(protocol.CLOSE_INTERNAL, "internal error")
            if state.outgoing:
                turns.append(state)
            else:
                state.scheduled = False
                self._maybe_idle(state)
        if turns:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver_room(self, state: _RoomState) -> int:
        writes = 0
        outgoing = state.outgoing
        while outgoing and writes < ROOM_SLICE_WRITES:
            record, sender, reply, tell_others = outgoing.popleft()
            revision = record.revision
            if tell_others:
                frame = text_frame(protocol.update_message(user=record.user, seq=record.seq, revision=revision, part=record.part))
                for peer in state.peers.values():
                    if peer is sender or peer.seen_revision >= revision:
                        continue
                    peer.send(frame)
                writes += len(state.peers)
            if sender is not None and reply is not None:
                reply.frame = protocol.ack_message(seq=record.seq, revision=revision)
                self._answered(sender)
                self._flush_replies(sender)
        if outgoing:
            state.backlog_writes = max(0, state.backlog_writes - writes)
        else:
            state.outgoing, state.backlog_writes = None, 0
        if state.held and state.backlog_writes <= ROOM_BACKLOG_WRITES // 2:
            self._release_room(state)
        return writes

    def _hold_room(self, state: _RoomState) -> None:
        throttled.log("room backlog", logging.INFO, "room %r sends faster than it can be told: reading its members more slowly", state.room.name)
        state.held = list(state.peers.values())
        for peer in state.held:
            peer.hold_reading()

    def _release_room(self, state: _RoomState) -> None:
        held, state.held = state.held, []
        for peer in held:
            peer.release_reading()

    # -- presence ------------------------------------------------------------------------------

    def remote_presence_changed(self, state: _RoomState) -> None:
        """Another node's members of the room changed (the cluster link took them into the room): tell the members here."""
        self._presence_changed(state, remote=True)

    def _presence_changed(self, state: _RoomState, remote: bool = False) -> None:
        """The room's presence changed (``remote``: another node's members did): tell its members soon, and the other nodes."""
        if self.cluster is not None and not remote:
            self.cluster.local_presence_changed(state)
        if state.presence_timer is not None or not state.room.presence_changed:
            return
        loop = asyncio.get_running_loop()
        delay = state.presence_sent_at + PRESENCE_INTERVAL_SECONDS - loop.time()
        state.presence_timer = loop.call_later(max(delay, 0.0), self._send_presence, state)

    def _send_presence(self, state: _RoomState) -> None:
        state.presence_timer = None
        message = state.room.take_presence_changes(PRESENCE_CHANGES_PER_MESSAGE)
        if message is None:
            return
        state.presence_sent_at = asyncio.get_running_loop().time()
        frame = text_frame(message)
        for peer in state.peers.values():
            peer.send_presence(frame)
        self._presence_changed(state)

    # -- rooms leaving memory -------------------------------------------------------------------

    def _maybe_idle(self, state: _RoomState) -> None:
        if state.peers or state.pending or state.outgoing or state.idle_timer is not None:
            return
        if self.rooms.get(state.room.name) is not state:
            return
        state.idle_timer = asyncio.get_running_loop().call_later(self.room_grace, self._forget, state)

    def _forget(self, state: _RoomState) -> None:
        state.idle_timer = None
        if state.peers or state.pending or state.outgoing:
            return
        if state.presence_timer is not None:
            state.presence_timer.cancel()
        if self.rooms.get(state.room.name) is state:
            del self.rooms[state.room.name]
            if self.cluster is not None:
                self.cluster.forgotten(state.room.name)


def _as_peer(connection: Connection) -> _Peer:
    assert isinstance(connection, _Peer)
    return connection


def _readable_seq(text: str) -> int | None:
    """The seq of a refused update, when it has one that can be read (errors only: this parses again)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(text)
        if type(data) is dict and data.get("type") == "update":
            seq = data.get("seq")
            if type(seq) is int and 1 <= seq <= protocol.MAX_SEQ:
                return seq
    return None


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit on open descriptors to its hard limit; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft if soft != resource.RLIM_INFINITY else hard)


@contextlib.asynccontextmanager
async def running(host: str = "127.0.0.1", port: int = 0, store: Store | None = None, **options: Any) -> AsyncIterator[Server]:
    """A server listening on ``host``/``port`` for the duration of the block (tests, benchmarks).

    ``store`` defaults to a fresh :class:`MemoryStore`; ``options`` go to
    :class:`Server` (``hello_timeout``, ``web_dir``, ``allowed_origins``, ...).
    """
    server = Server(store, **options)
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.stop()


def main_serve(host: str, port: int, store: str, data_dir: Path, allowed_origins: tuple[str, ...] = (), bus: str | None = None,
               reuse_port: bool = False) -> int:
    """``loopsync serve``: run until SIGINT or SIGTERM; the exit code (0 ok, 1 failure).

    ``store`` is ``sqlite``, ``memory`` or a PostgreSQL URL; with the latter,
    ``bus`` (a Redis URL) makes this process one node of a cluster.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chosen: Store
    cluster: ClusterLink | None = None
    if bus is not None:
        from .cluster import ClusterLink
        from .pgstore import PostgresStore, without_password

        postgres = PostgresStore(store)
        chosen = postgres
        cluster = ClusterLink(bus)
        description = f"postgresql, {postgres!r}; bus: redis, {without_password(bus)}; node {cluster.node_id}"
    elif store == "sqlite":
        sqlite = SqliteStore(data_dir)
        try:
            sqlite.open_now()
        except StoreError as exc:
            print(f"loopsync cannot start: {exc}.", file=sys.stderr, flush=True)
            return 1
        chosen = sqlite
        description = f"sqlite, {data_dir / 'loopsync.sqlite3'}"
    else:
        chosen = MemoryStore()
        description = "memory, nothing is kept after exit"
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve(host, port, chosen, description, allowed_origins, cluster, reuse_port))


GC_YOUNG_THRESHOLD: Final = 10_000
SWITCH_INTERVAL_SECONDS: Final = 0.001


def tune_interpreter() -> None:
    """Tune Python for a server that allocates for every message and commits from a second thread; call once started.

    The garbage collector: what is alive once the server has started is
    frozen out of its sight, so a full collection, which stops the event
    loop, scans only what came since; the young generation is collected
    every 10,000 allocations instead of 700, so a message's short-lived
    objects are gone by then instead of being promoted. The GIL's switch
    interval is 1 ms instead of 5: the store's thread needs the GIL for a
    moment before and after each commit, and every answer of the batch
    waits for it. Figures: docs/server.md.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Linux and macOS), else asyncio's own (``None``)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(host: str, port: int, store: Store, description: str, allowed_origins: tuple[str, ...],
                 cluster: ClusterLink | None = None, reuse_port: bool = False) -> int:
    server = Server(store, allowed_origins=allowed_origins, cluster=cluster, reuse_port=reuse_port)
    try:
        await server.start(host, port)
    except OSError as exc:
        print(f"loopsync cannot listen on {host}:{port}: {exc.strerror or exc}.", file=sys.stderr, flush=True)
        return 1
    except StoreError as exc:
        print(f"loopsync cannot start: {exc}.", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        if cluster is None:
            raise
        print(f"loopsync cannot start: {exc}.", file=sys.stderr, flush=True)  # the bus: Redis cannot be reached
        return 1
    tune_interpreter()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    print(f"loopsync is serving at {server.http_url} (store: {description})", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
    log.info("stopped")
    return 0
