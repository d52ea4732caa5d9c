"""The loopsync server: WebSocket transport around the rules of ``rooms.py``.

This module moves messages and nothing more. For each text frame a
connection's reader task parses it (``protocol.parse_client_message``), lets
the room decide (``rooms.Room``), hands what the room accepted to the store
(``save_soon``) and reads on. When the store has committed it, a callback
queues the answers: ``ack`` to the sender, ``update`` to every other
connection of the room. The room's rules never live here.

Each connection has its reader (aiohttp's handler task) and an
:class:`~loopsync.outbox.Outbox`: answers go straight into the socket while
the peer keeps up and wait in a bounded queue when it does not. A client
that stops reading therefore only fills its own outbox; when that is full it
is closed with 1008 ``too slow``, and the rest of its room never waits for it.

Each room keeps two copies of its Shared Data: ``live`` (what the room has
accepted, some of it possibly still on its way to the disk) decides the next
update, and ``committed`` (only what the store has confirmed) is what
snapshots are built from, so a snapshot never shows an edit that a crash
could still lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Final

from aiohttp import WSCloseCode, WSMsgType, web

from . import protocol
from .document import Invalid
from .protocol import Fetch, Hello, Transport, Update
from .outbox import CLOSE_TIMEOUT_SECONDS, SEND_BUFFER_BYTES, Outbox
from .rooms import Accepted, Room
from .store import MemoryStore, SqliteStore, Store, StoreError

log = logging.getLogger("loopsync.server")

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
HELLO_TIMEOUT_SECONDS: Final = 10.0
HEARTBEAT_SECONDS: Final = 20.0  # aiohttp waits half of it (10 s) for the pong
RATE_BURST: Final = 40
RATE_PER_SECOND: Final = 20.0
CLOSE_GOING_AWAY: Final = int(WSCloseCode.GOING_AWAY)  # 1001

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


class _Connection(Outbox):
    """One WebSocket: its outbox, its identity in a room and its rate limit."""

    __slots__ = ("id", "user", "room", "tokens", "tokens_at", "hello_timer")

    def __init__(self, connection_id: int, ws: web.WebSocketResponse, transport: asyncio.Transport | None, now_seconds: float) -> None:
        super().__init__(ws, transport, label=str(connection_id))
        self.id = connection_id
        self.user: str | None = None
        self.room: _RoomState | None = None
        self.tokens = float(RATE_BURST)
        self.tokens_at = now_seconds
        self.hello_timer: asyncio.TimerHandle | None = None

    def take_token(self, now_seconds: float) -> bool:
        """Token bucket (burst ``RATE_BURST``, refilled at ``RATE_PER_SECOND``): may this message pass?"""
        tokens = self.tokens + (now_seconds - self.tokens_at) * RATE_PER_SECOND
        self.tokens_at = now_seconds
        if tokens > RATE_BURST:
            tokens = RATE_BURST
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


@dataclass
class _RoomState:
    """A room's rules (``live``), its committed copy for snapshots, and its connections."""

    live: Room
    committed: Room
    connections: dict[int, _Connection] = field(default_factory=dict)

    @classmethod
    def restored(cls, name: str, records: list[Accepted]) -> _RoomState:
        """The room as the store has it."""
        live, committed = Room(name), Room(name)
        for accepted in records:
            live.restore(accepted)
            committed.restore(accepted)
        return cls(live, committed)


class Server:
    """The server's state and routes; start it with :func:`running` or :func:`main_serve`."""

    def __init__(self, store: Store | None = None, *, hello_timeout: float = HELLO_TIMEOUT_SECONDS, web_dir: Path = WEB_DIR) -> None:
        self.store: Store = store if store is not None else MemoryStore()
        self.hello_timeout = hello_timeout
        self.web_dir = web_dir.resolve()
        self.rooms: dict[str, _RoomState] = {}
        self.connections: dict[int, _Connection] = {}
        self.port = 0
        self.host = "127.0.0.1"
        self._handlers: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._broken_rooms: set[str] = set()
        self._messages_read = 0
        """Messages read on all connections: tells a reader whether others had a turn since its last one."""

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

    def make_app(self) -> web.Application:
        """The aiohttp application: ``/ws`` and the web client's files."""
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/{path:.*}", self._static)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Open the store, load its rooms and listen; ``port`` 0 picks a free port (read it back from ``.port``)."""
        self.store.open()
        for name, records in self.store.load_rooms().items():
            self.rooms[name] = _RoomState.restored(name, records)
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=CLOSE_TIMEOUT_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Close every connection with 1001, stop listening and close the store."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self.store.close()

    async def _on_shutdown(self, app: web.Application) -> None:
        for connection in list(self.connections.values()):
            connection.push_close(CLOSE_GOING_AWAY, "server shutting down")
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=CLOSE_TIMEOUT_SECONDS)

    # -- static files --------------------------------------------------------------

    async def _static(self, request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"] or "index.html"
        path = (self.web_dir / relative).resolve()
        if not path.is_relative_to(self.web_dir) or not path.is_file():
            raise web.HTTPNotFound(text="not found\n")
        headers = {"Cache-Control": "no-cache"}
        content_type = _CONTENT_TYPES.get(path.suffix.lower())
        if content_type:
            headers["Content-Type"] = content_type
        return web.FileResponse(path, headers=headers)

    # -- WebSocket -----------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            compress=False,
            heartbeat=HEARTBEAT_SECONDS,
            max_msg_size=protocol.MAX_FRAME_BYTES + 1,  # aiohttp refuses a payload >= the limit
            timeout=CLOSE_TIMEOUT_SECONDS,
            writer_limit=SEND_BUFFER_BYTES,  # how often aiohttp checks for backpressure (default 256 KiB)
        )
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        connection = _Connection(next(self._ids), ws, request.transport, loop.time())
        self.connections[connection.id] = connection
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        connection.start()
        connection.hello_timer = loop.call_later(self.hello_timeout, self._hello_expired, connection)
        try:
            await self._read_loop(connection)
        except Exception:
            log.exception("internal error on connection %d (%s)", connection.id, connection.user or "before hello")
            self._fail(connection)
        finally:
            connection.hello_timer.cancel()
            self._leave(connection)
            del self.connections[connection.id]
            if task is not None:
                self._handlers.discard(task)
            await connection.finish()
        return ws

    def _hello_expired(self, connection: _Connection) -> None:
        if connection.room is None:
            connection.push_close(protocol.CLOSE_POLICY, "no hello")

    async def _read_loop(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        my_last_read = -1
        async for message in connection.ws:
            # aiohttp hands over frames that are already buffered without
            # yielding, so a burst on one socket could run ahead of the readers
            # it fills (an outbox should only fill up because its peer is slow,
            # never because its peer did not get a turn to read). When no other
            # connection's message has been read since this one's last, yield
            # once; under load the readers take turns anyway and nobody yields.
            self._messages_read += 1
            others_had_a_turn = self._messages_read != my_last_read + 1
            my_last_read = self._messages_read
            if not others_had_a_turn:
                await asyncio.sleep(0)
            if connection.closing:
                break
            allowed = connection.take_token(loop.time())
            if message.type is WSMsgType.TEXT:
                parsed = protocol.parse_client_message(message.data)
            elif message.type is WSMsgType.BINARY:
                parsed = Invalid("bad_message", "binary frames are not accepted; send JSON text")
            else:
                break  # ERROR: aiohttp has closed the connection (1009 for a frame too big)
            if not allowed:
                seq = parsed.seq if isinstance(parsed, Update) else None
                self._send_error(connection, Invalid("rate_limited", f"more than {RATE_BURST} messages at once or {RATE_PER_SECOND:g} per second"), seq)
                continue
            # Only a hello waits for anything (its room may be loaded from the
            # store); every other message, an edit above all, is handled
            # without a coroutine to create and await.
            if isinstance(parsed, Hello):
                await self._hello(connection, parsed)
            else:
                self._handle(connection, parsed)

    def _handle(self, connection: _Connection, message: Update | Transport | Fetch | Invalid) -> None:
        if type(message) is Update and connection.room is not None:  # the message of every edit: checked first
            self._update(connection, connection.room, message)
        elif isinstance(message, Invalid):
            self._refuse(connection, message)
        elif connection.room is None:
            self._send_error(connection, Invalid("not_joined", "send hello first"), message.seq if isinstance(message, Update) else None)
        elif isinstance(message, Transport):
            connection.room.live.set_transport(connection.id, message.playing, message.bpm)
            self._broadcast_presence(connection.room)
        elif isinstance(message, Fetch):
            self._send_snapshot(connection, connection.room)

    def _refuse(self, connection: _Connection, problem: Invalid) -> None:
        if problem.code in ("bad_version", "bad_name"):  # only a hello gets these
            if connection.room is not None:
                self._send_error(connection, Invalid("already_joined", "this connection has already joined"))
                return
            self._send_error(connection, problem)
            connection.push_close(protocol.CLOSE_POLICY, problem.code)
            return
        self._send_error(connection, problem)

    async def _hello(self, connection: _Connection, hello: Hello) -> None:
        if connection.room is not None:
            self._send_error(connection, Invalid("already_joined", f"this connection has already joined as {connection.user!r}"))
            return
        state = await self._room_state(hello.room)
        if connection.closing:
            return
        problem = state.live.join(connection.id, hello.user, hello.playing, hello.bpm)
        if problem:
            self._send_error(connection, problem)
            connection.push_close(protocol.CLOSE_POLICY, problem.code)
            return
        if connection.hello_timer is not None:
            connection.hello_timer.cancel()
        connection.user = hello.user
        connection.room = state
        state.connections[connection.id] = connection
        self._send_snapshot(connection, state)
        self._broadcast_presence(state)

    async def _room_state(self, name: str) -> _RoomState:
        state = self.rooms.get(name)
        if state is not None:
            return state
        if name in self._broken_rooms:
            # A commit of this room failed: rebuild it from what the disk has,
            # once every write that was in flight has settled.
            await self.store.flush()
            records = await self.store.load_room(name)
            state = self.rooms.get(name)
            if state is None:
                state = self.rooms[name] = _RoomState.restored(name, records)
                self._broken_rooms.discard(name)
            return state
        state = self.rooms[name] = _RoomState(Room(name), Room(name))
        return state

    def _update(self, connection: _Connection, state: _RoomState, update: Update) -> None:
        assert connection.user is not None
        accepted = state.live.accept(connection.user, update)
        if isinstance(accepted, Invalid):
            self._send_error(connection, accepted, update.seq)
            return
        # The reader goes on reading; the answers wait for the commit. Commits
        # complete in the order they were queued, so a room's updates go out
        # in revision order.
        frame = protocol.update_frame(user=accepted.user, seq=accepted.seq, revision=accepted.revision, part=accepted.part)
        self.store.save_soon(accepted, functools.partial(self._committed, connection, state, accepted, frame))

    def _committed(self, connection: _Connection, state: _RoomState, accepted: Accepted, frame: bytes, problem: StoreError | None) -> None:
        """The store has committed ``accepted`` (or failed to): acknowledge it and send it to the room."""
        if self.rooms.get(accepted.room) is not state:
            return  # the room failed and was closed while this commit was on its way
        if problem is not None:
            log.error("could not commit update %d of %r in room %r: %s", accepted.seq, accepted.user, accepted.room, problem)
            self._break_room(state, connection)
            return
        state.committed.restore(accepted)
        too_slow = []
        if connection.room is state and not connection.push(protocol.ack_frame(seq=accepted.seq, revision=accepted.revision)):
            too_slow.append(connection)
        for other in state.connections.values():
            if other is not connection and not other.push(frame):
                too_slow.append(other)
        if too_slow:
            self._drop_too_slow(too_slow)

    def _break_room(self, state: _RoomState, sender: _Connection) -> None:
        """A commit failed: Shared Data in memory is ahead of the disk, so close the room and rebuild it later."""
        if self.rooms.get(state.live.name) is state:
            del self.rooms[state.live.name]
            self._broken_rooms.add(state.live.name)
        if sender.room is state:
            self._fail(sender)
        for connection in list(state.connections.values()):
            self._fail(connection, tell=False)

    def _fail(self, connection: _Connection, *, tell: bool = True) -> None:
        """An internal error: say only that, and close with 1011."""
        if tell:
            self._send_error(connection, Invalid("internal", "internal server error"))
        self._leave(connection)
        connection.push_close(protocol.CLOSE_INTERNAL, "internal error")

    def _leave(self, connection: _Connection) -> None:
        state = connection.room
        if state is None:
            return
        connection.room = None
        state.live.leave(connection.id)
        state.connections.pop(connection.id, None)
        if self.rooms.get(state.live.name) is state:
            if not state.connections and state.live.revision == 0:
                del self.rooms[state.live.name]  # nothing to keep: no part was ever written
            else:
                self._broadcast_presence(state)

    def _send_snapshot(self, connection: _Connection, state: _RoomState) -> None:
        committed = state.committed
        assert connection.user is not None
        message = protocol.snapshot(
            you=connection.user,
            room=committed.name,
            steps=committed.steps,
            parts=committed.parts,
            revision=committed.revision,
            seq=committed.seqs.get(connection.user, 0),
        )
        if not connection.push(protocol.encode(message)):
            self._drop_too_slow([connection])

    def _send_error(self, connection: _Connection, problem: Invalid, seq: int | None = None) -> None:
        if not connection.push(protocol.encode(protocol.error(problem, seq))):
            self._drop_too_slow([connection])

    def _broadcast_presence(self, state: _RoomState) -> None:
        frame = protocol.encode(protocol.presence(state.live.presence()))
        self._drop_too_slow([c for c in state.connections.values() if not c.push_presence(frame)])

    def _drop_too_slow(self, connections: list[_Connection]) -> None:
        """Disconnect peers whose outbox is full, so that they never hold up their room."""
        for connection in connections:
            if connection.closing:
                continue
            log.info("closing connection %d (%s): too slow", connection.id, connection.user)
            connection.close_too_slow()
            self._leave(connection)

@contextlib.asynccontextmanager
async def running(host: str = "127.0.0.1", port: int = 0, store: Store | None = None, **options: Any) -> AsyncIterator[Server]:
    """A server listening on ``host``/``port`` for the duration of the block (tests, benchmarks).

    ``store`` defaults to a fresh :class:`MemoryStore`; ``options`` go to
    :class:`Server` (``hello_timeout``, ``web_dir``).
    """
    server = Server(store, **options)
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.stop()


def main_serve(host: str, port: int, store: str, data_dir: Path) -> int:
    """``loopsync serve``: run until SIGINT or SIGTERM; the exit code (0 ok, 1 failure)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chosen: Store
    if store == "sqlite":
        chosen = SqliteStore(data_dir)
        try:
            chosen.open()
        except StoreError as exc:
            print(f"loopsync cannot start: {exc}.", file=sys.stderr, flush=True)
            return 1
        description = f"sqlite, {data_dir / 'loopsync.sqlite3'}"
    else:
        chosen = MemoryStore()
        description = "memory, nothing is kept after exit"
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve(host, port, chosen, description))


GC_YOUNG_THRESHOLD: Final = 10_000
SWITCH_INTERVAL_SECONDS: Final = 0.001


def tune_interpreter() -> None:
    """Tune Python for a server that allocates for every message and commits from a second thread; call once started.

    The garbage collector: what is alive once the server has started
    (modules, the application, the rooms loaded from the store) is frozen
    out of its sight, so a full collection, which stops the event loop,
    scans only what came since. The young generation is collected every
    10,000 allocations instead of 700: a message's short-lived objects are
    gone by then instead of being promoted, and promotions are what make
    full collections come. In ``bench/fanout.py`` (700 connections, 7,000
    updates/s) the collector took 81 ms instead of 313 ms in 12 s, its
    longest pause 22 ms instead of 69 ms.

    The GIL's switch interval, 1 ms instead of 5: the store's thread needs
    the GIL for a moment before and after each commit, and while the event
    loop is busy it gets it only when the loop is made to let go, after the
    switch interval; every answer of the batch waits for that. In
    ``bench/fanout.py`` at 1,248 connections (37,400 deliveries/s, 92-98% of
    a core) p99 was lower with 1 ms in each of five pairs of runs taken in
    turn (62 against 1,500 ms, 20 against 42, 14.6 against 18.4, 13.9
    against 16.8, 26 against 30), at the same CPU.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Linux and macOS), else asyncio's own (``None``).

    uvloop runs the same asyncio code with its transports and scheduling in
    C: in ``bench/fanout.py`` the server delivered about a fifth more updates
    per second under the 20 ms p99 budget with it. Nothing in loopsync
    depends on which loop runs it.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(host: str, port: int, store: Store, description: str) -> int:
    server = Server(store)
    try:
        await server.start(host, port)
    except OSError as exc:
        print(f"loopsync cannot listen on {host}:{port}: {exc.strerror or exc}.", file=sys.stderr, flush=True)
        await store.close()
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
