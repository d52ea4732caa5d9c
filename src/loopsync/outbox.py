"""The way out of one WebSocket: frames in order, written at once while the peer keeps up.

A frame pushed to an :class:`Outbox` goes straight into the socket when
nothing is waiting before it and the socket's buffers are empty: no task
wakes up, no coroutine runs, and a room's fan-out costs one ``write`` per
peer. Only when a peer falls behind (its bytes pile up in asyncio's write
buffer) do frames wait in the outbox, which the connection's writer task
sends as the socket drains. A peer that stops reading therefore fills only
its own outbox; when that is full, :meth:`Outbox.push` says so and the owner
closes it as too slow. Presence waits in the outbox as one entry that newer
presence replaces: it is state, not events.

The server (``server.py``) and the fan-out benchmark's bare relay
(``bench/bare_relay.py``) share this code, so the benchmark compares the
rules and the store, not two ways of writing to a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger("loopsync.outbox")

OUTBOX_LIMIT: Final = 256
CLOSE_TIMEOUT_SECONDS: Final = 10.0  # a closing handshake that takes longer is cut
SEND_BUFFER_BYTES: Final = 16 * 1024
"""Kernel send buffer and asyncio write buffer per WebSocket. Our frames are a
few hundred bytes, so this is still many messages; it keeps a peer that stops
reading from parking megabytes in the kernel (Linux autotunes loopback send
buffers up to 4 MiB) and lets the outbox, not the socket, notice it quickly."""

_TEXT_SMALL: Final = struct.Struct("!BB")
_TEXT_MEDIUM: Final = struct.Struct("!BBH")
_TEXT_LARGE: Final = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 section 5.2) around a UTF-8 payload, as a server sends it."""
    length = len(payload)
    if length < 126:
        return _TEXT_SMALL.pack(0x81, length) + payload
    if length < 65536:
        return _TEXT_MEDIUM.pack(0x81, 126, length) + payload
    return _TEXT_LARGE.pack(0x81, 127, length) + payload


def limit_send_buffers(transport: asyncio.Transport | None) -> None:
    """Apply :data:`SEND_BUFFER_BYTES` to the socket and to asyncio's buffer."""
    if transport is None:
        return
    transport.set_write_buffer_limits(high=SEND_BUFFER_BYTES)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


@dataclass(frozen=True)
class _Close:
    """An outbox entry: close the connection after what was queued before."""

    code: int
    reason: str


_PRESENCE: Final = object()
"""An outbox entry standing for the newest presence frame of the connection."""

_Entry = bytes | _Close | object


class Outbox:
    """Frames to one peer, in order; call :meth:`start` once the WebSocket is prepared.

    A frame is the UTF-8 payload of one text frame, as ``bytes``: a frame
    meant for many peers is encoded once.
    """

    __slots__ = ("ws", "transport", "label", "outbox", "presence_frame", "wakeup", "writer", "closing")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, label: str = "") -> None:
        self.ws = ws
        self.transport = transport
        self.label = label
        """Names the connection in log lines."""
        self.outbox: deque[_Entry] = deque()
        self.presence_frame: bytes | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.writer: asyncio.Task[None] | None = None
        self.closing = False

    def start(self) -> None:
        """Start the writer task; frames pushed before this wait for it."""
        limit_send_buffers(self.transport)
        self.writer = asyncio.create_task(self._write_loop())

    def push(self, frame: bytes) -> bool:
        """Send one frame after those before it; ``False`` when the outbox is full (the peer is too slow)."""
        if self.closing:
            return True
        # Every delivery passes here, so the fast path is written out in one
        # function: when nothing is queued, the writer waits for work and the
        # socket's buffers are empty, the frame skips the queue.
        wakeup, transport = self.wakeup, self.transport
        if (wakeup is not None and not self.outbox and not wakeup.done() and transport is not None
                and not transport.get_write_buffer_size() and not self.ws.closed):
            if not transport.is_closing():  # the peer is gone; the reader sees it and cleans up
                transport.write(text_frame(frame))
            return True
        if len(self.outbox) >= OUTBOX_LIMIT:
            return False
        self.outbox.append(frame)
        self._wake()
        return True

    def push_presence(self, frame: bytes) -> bool:
        """Queue presence, replacing presence that is still waiting: only the newest matters."""
        if self.closing:
            return True
        if self.presence_frame is None:
            if len(self.outbox) >= OUTBOX_LIMIT:
                return False
            self.outbox.append(_PRESENCE)
            self._wake()
        self.presence_frame = frame
        return True

    def push_close(self, code: int, reason: str) -> None:
        """Close after the frames already queued (an error message goes out before its close)."""
        if self.closing:
            return
        self.closing = True
        self.outbox.append(_Close(code, reason))
        self._wake()

    def close_too_slow(self) -> None:
        """Drop what waits and close with 1008 ``too slow``, replacing a writer that waits for the socket."""
        if self.writer is not None:
            self.writer.cancel()
        self.closing = True
        self.outbox.clear()
        self.presence_frame = None
        self.writer = asyncio.create_task(self._close(int(WSCloseCode.POLICY_VIOLATION), "too slow"))

    async def finish(self) -> None:
        """After the reader has ended: let a queued close finish (within limits), else stop the writer."""
        writer = self.writer
        if writer is None:
            return
        if self.closing:
            # A close is queued (or a too-slow close runs): let it finish, but
            # not forever (its writer may be stuck behind a peer that stopped reading).
            try:
                await asyncio.wait_for(writer, 2 * CLOSE_TIMEOUT_SECONDS)
            except TimeoutError:
                if self.transport is not None:
                    self.transport.abort()
            except Exception:
                pass
        else:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    async def _write_loop(self) -> None:
        """Send the outbox in order until a close entry."""
        outbox = self.outbox
        ws = self.ws
        try:
            while True:
                while not outbox:
                    self.wakeup = asyncio.get_running_loop().create_future()
                    await self.wakeup
                self.wakeup = None
                entry = outbox.popleft()
                if entry is _PRESENCE:
                    frame, self.presence_frame = self.presence_frame, None
                    assert frame is not None
                    await ws.send_frame(frame, WSMsgType.TEXT)
                elif isinstance(entry, _Close):
                    await self._close(entry.code, entry.reason)
                    return
                else:
                    assert isinstance(entry, bytes)
                    await ws.send_frame(entry, WSMsgType.TEXT)
        except ConnectionError:
            pass  # the peer is gone; the reader sees it too and cleans up
        except Exception:
            log.exception("internal error writing to connection %s", self.label)
            if self.transport is not None:
                self.transport.abort()  # the reader sees the connection end and cleans up

    async def _close(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.ws.close(code=code, message=reason.encode())
        except TimeoutError:
            # A peer that never reads would keep the buffered close frame, and
            # this socket, forever: cut it.
            if self.transport is not None:
                self.transport.abort()
        except ConnectionError:
            pass
