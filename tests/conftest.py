"""Shared fixtures: a real server in-process or as a subprocess, and a raw JSON WebSocket client.

Every wait is on an event with a safety timeout of a few :data:`TIME_UNIT`
(scaled by ``LOOPSYNC_TIMEOUT_SCALE`` on slow machines); nothing sleeps and
hopes.

- ``server``: a server in this process with a fresh ``MemoryStore``, on
  127.0.0.1 and a free port (``.port``, ``.http_url``, ``.ws_url``).
- ``connect``: ``client = await connect(url)`` opens a :class:`RawClient`;
  all are closed at teardown.
- ``serve_process``: ``proc = serve_process()`` starts ``python -m loopsync
  serve --port 0 --store sqlite --data DIR`` and reads back its URL;
  ``proc.stop()`` (SIGTERM) / ``proc.kill()``, then ``proc.start()`` again on
  the same port and directory. ``serve_process(data_dir=...)`` shares a directory.
- ``postgres``, ``postgres_dsn``, ``redis_service``, ``redis_url``, ``bus_prefix``: real
  PostgreSQL and Redis servers for the cluster's tests (``tests/services.py``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from loopsync.server import Server, running
from loopsync.store import MemoryStore
from serve_process import TIME_UNIT, ServeProcess
from services import bus_prefix, postgres, postgres_dsn, redis_service, redis_url  # noqa: F401  (fixtures: real PostgreSQL and Redis)


Message = dict[str, Any]


class RawClient:
    """A WebSocket speaking raw protocol JSON: send dicts, receive dicts, check close codes.

    Presence messages are applied to :attr:`presence` (the table by id) as
    they come, and :meth:`next` passes over them: presence is coalesced and
    its timing is the server's. :meth:`wait_presence` waits for the table to
    hold what a test expects.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[Message] = []
        """Every message but presence, in order."""
        self.presence: dict[str, Message] = {}
        self.presence_messages: list[Message] = []

    async def send(self, message: Message | str) -> None:
        """Send a dict as one JSON text frame, or a str as it is."""
        await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def next_any(self, timeout: float | None = None) -> Message:
        """The next message from the server, presence included; fail if none comes in time or the socket closes."""
        frame = await self.ws.receive(timeout=timeout or TIME_UNIT)
        if frame.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {frame.type.name} {frame.data!r} {frame.extra!r}")
        message: Message = json.loads(frame.data)
        if message["type"] == "presence":
            self._apply_presence(message)
        else:
            self.received.append(message)
        return message

    async def next(self, timeout: float | None = None) -> Message:
        """The next message that is not presence."""
        deadline = asyncio.get_running_loop().time() + (timeout or TIME_UNIT)
        while True:
            message = await self.next_any(max(deadline - asyncio.get_running_loop().time(), 0.001))
            if message["type"] != "presence":
                return message

    def _apply_presence(self, message: Message) -> None:
        self.presence_messages.append(message)
        if "users" in message:
            self.presence = {entry["id"]: entry for entry in message["users"]}
            return
        for entry in message["changed"]:
            self.presence[entry["id"]] = entry
        for left in message["left"]:
            self.presence.pop(left, None)

    def presence_users(self) -> list[tuple[str, bool, float | None]]:
        """The presence table as sorted (user, playing, bpm) rows."""
        return sorted((entry["user"], entry["playing"], entry["bpm"]) for entry in self.presence.values())

    async def wait_presence(self, expected: list[tuple[str, bool, float | None]], timeout: float | None = None) -> None:
        """Read (keeping other messages) until the presence table is ``expected``."""
        deadline = asyncio.get_running_loop().time() + (timeout or TIME_UNIT)
        while self.presence_users() != sorted(expected):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"presence is {self.presence_users()}, not {sorted(expected)}")
            await self.next_any(remaining)

    async def expect(self, kind: str, timeout: float | None = None) -> Message:
        """The next message that is not presence, which must be of type ``kind``."""
        message = await self.next(timeout)
        assert message["type"] == kind, f"expected {kind}, got {message}"
        return message

    async def wait_for(self, kind: str, timeout: float | None = None, **fields: Any) -> Message:
        """Skip messages until one of type ``kind`` whose fields equal ``fields``."""
        deadline = asyncio.get_running_loop().time() + (timeout or TIME_UNIT)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no {kind} {fields} in time; got {self.received[-5:]}")
            message = await self.next_any(remaining)
            if message["type"] == kind and all(message.get(key) == value for key, value in fields.items()):
                return message

    async def join(self, room: str = "demo", user: str = "alice", **hello: Any) -> Message:
        """Send hello and return the snapshot, which must come first."""
        await self.send({"type": "hello", "v": 1, "room": room, "user": user, **hello})
        snapshot = await self.next_any()
        assert snapshot["type"] == "snapshot", f"expected snapshot, got {snapshot}"
        return snapshot

    async def closed(self, timeout: float | None = None) -> tuple[int | None, str]:
        """Wait for the server to close (skipping messages); the close code and reason."""
        deadline = asyncio.get_running_loop().time() + (timeout or TIME_UNIT)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError("the server did not close the connection in time")
            frame = await self.ws.receive(timeout=remaining)
            if frame.type is aiohttp.WSMsgType.TEXT:
                message = json.loads(frame.data)
                if message["type"] == "presence":
                    self._apply_presence(message)
                else:
                    self.received.append(message)
                continue
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code, str(frame.extra or "")
            raise AssertionError(f"unexpected frame {frame.type.name} {frame.data!r}")

    async def close(self) -> None:
        """Close from the client side."""
        await self.ws.close()


Connect = Callable[..., Awaitable[RawClient]]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A running in-process server with a fresh MemoryStore on 127.0.0.1 and a free port."""
    async with running(host="127.0.0.1", port=0, store=MemoryStore()) as running_server:
        yield running_server


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Factory: ``await connect(ws_url)`` gives a connected :class:`RawClient` (closed at teardown)."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))  # no cap on open WebSockets
    clients: list[RawClient] = []

    async def _connect(url: str, **options: Any) -> RawClient:
        ws = await session.ws_connect(url, autoclose=True, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=TIME_UNIT), **options)
        client = RawClient(ws)
        clients.append(client)
        return client

    try:
        yield _connect
    finally:
        for client in clients:
            if not client.ws.closed:
                await client.ws.close()
        await session.close()


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Factory: ``serve_process(data_dir=None, port=0)`` starts a SQLite server subprocess; all are killed at teardown."""
    processes: list[ServeProcess] = []

    def _start(data_dir: Path | None = None, port: int = 0) -> ServeProcess:
        process = ServeProcess(data_dir or tmp_path / "data", port=port)
        processes.append(process)
        return process.start()

    yield _start
    for process in processes:
        if process.process is not None and process.process.poll() is None:
            process.kill()

