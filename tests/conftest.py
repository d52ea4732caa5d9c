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
  the same directory. ``serve_process(data_dir=...)`` shares a directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from loopsync.server import Server, running
from loopsync.store import MemoryStore

TIMEOUT_SCALE = float(os.environ.get("LOOPSYNC_TIMEOUT_SCALE", "1"))
TIME_UNIT = 2.0 * TIMEOUT_SCALE
"""Safety timeout for one awaited event; tests fail after it instead of hanging."""

Message = dict[str, Any]


class RawClient:
    """A WebSocket speaking raw protocol JSON: send dicts, receive dicts, check close codes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[Message] = []

    async def send(self, message: Message | str) -> None:
        """Send a dict as one JSON text frame, or a str as it is."""
        await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def next(self, timeout: float | None = None) -> Message:
        """The next message from the server; fail if none comes in time or the socket closes."""
        frame = await self.ws.receive(timeout=timeout or TIME_UNIT)
        if frame.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {frame.type.name} {frame.data!r} {frame.extra!r}")
        message: Message = json.loads(frame.data)
        self.received.append(message)
        return message

    async def expect(self, kind: str, timeout: float | None = None) -> Message:
        """The next message, which must be of type ``kind``."""
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
            message = await self.next(remaining)
            if message["type"] == kind and all(message.get(key) == value for key, value in fields.items()):
                return message

    async def join(self, room: str = "demo", user: str = "alice", **hello: Any) -> Message:
        """Send hello and return the snapshot, which must come first."""
        await self.send({"type": "hello", "v": 1, "room": room, "user": user, **hello})
        return await self.expect("snapshot")

    async def closed(self, timeout: float | None = None) -> tuple[int | None, str]:
        """Wait for the server to close (skipping messages); the close code and reason."""
        deadline = asyncio.get_running_loop().time() + (timeout or TIME_UNIT)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError("the server did not close the connection in time")
            frame = await self.ws.receive(timeout=remaining)
            if frame.type is aiohttp.WSMsgType.TEXT:
                self.received.append(json.loads(frame.data))
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


class ServeProcess:
    """``loopsync serve --store sqlite`` as a subprocess on one data directory; restartable."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[str] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"
        self.port = 0
        self.banner = ""

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def command(self) -> list[str]:
        """The command line that starts this server."""
        return [sys.executable, "-m", "loopsync", "serve", "--port", "0", "--store", "sqlite", "--data", str(self.data_dir), *self.extra_args]

    def start(self) -> ServeProcess:
        """Start the server and wait for its ``loopsync is serving at ...`` line."""
        assert self.process is None or self.process.poll() is not None, "already running"
        # stderr (the server's log) goes to a file: a pipe nobody reads could fill and block the server.
        with open(self.log_path, "a") as log_file:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log_file, text=True)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 10 * TIME_UNIT)
        line = self.process.stdout.readline() if ready else ""
        prefix = "loopsync is serving at http://127.0.0.1:"
        if not line.startswith(prefix):
            self.kill()
            raise AssertionError(f"server did not start: {line!r} {self.log()!r}")
        self.banner = line.rstrip("\n")
        self.port = int(line[len(prefix):].split("/", 1)[0])
        return self

    def stop(self) -> int:
        """SIGTERM, then wait for the exit code."""
        return self._end(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL: no clean shutdown at all."""
        return self._end(signal.SIGKILL)

    def _end(self, signal_number: int) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
        code = self.process.wait(timeout=10 * TIME_UNIT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def log(self) -> str:
        """What the server wrote to stderr so far (all its runs)."""
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Factory: ``serve_process(data_dir=None)`` starts a SQLite server subprocess; all are killed at teardown."""
    processes: list[ServeProcess] = []

    def _start(data_dir: Path | None = None, extra_args: list[str] | None = None) -> ServeProcess:
        process = ServeProcess(data_dir or tmp_path / "data", extra_args)
        processes.append(process)
        return process.start()

    yield _start
    for process in processes:
        if process.process is not None and process.process.poll() is None:
            process.kill()

