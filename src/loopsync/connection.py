"""One TCP connection of the server: HTTP requests, then (after an upgrade) a WebSocket.

:class:`Connection` is the asyncio protocol around the sans-I/O rules of
``websocket.py``. It owns everything a connection costs the process, so
that its costs stay bounded whatever the peer does:

- **Time.** A request head must be complete within
  :data:`HANDSHAKE_SECONDS` of the connection (or of the last answer on a
  kept-alive one), else the socket is cut. A WebSocket is pinged every
  :data:`PING_INTERVAL_SECONDS`; a peer that has not answered when the next
  check comes (:data:`PONG_TIMEOUT_SECONDS`) is cut, whatever its buffers
  hold. A close that the peer does not complete within
  :data:`CLOSE_TIMEOUT_SECONDS` is cut too.
- **Reading.** Every frame takes a token from the connection's bucket (burst
  :data:`RATE_BURST`, :data:`RATE_PER_SECOND` per second), pings and
  fragments included. When the bucket is empty the connection stops reading
  its socket until a token is back: the frames wait in the kernel (and the
  peer's own send buffer fills), so a flood is read at the sustained rate
  and never refused, and frames that queued up while the server itself was
  stalled are read late, not punished. Reads go into one buffer shared by
  every connection (:data:`READ_CHUNK_BYTES`), so a connection holds at most
  one read plus a partial frame of its own.
- **Writing.** Frames go straight into the transport; while the peer does
  not keep up they wait in the transport's buffer, and when more than
  :data:`OUTBOX_BYTES` wait the connection is closed with 1008 ``too slow``.
  Presence is state, not events: while the peer is behind, presence frames
  are not queued at all, and one fresh copy is sent when it catches up.

The server (``server.py``) subclasses :class:`Connection` to add what a
member of a room is, and implements :class:`Handler` for what the
connection cannot decide: which requests are answered how, and what a text
message means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import typing
from typing import Final, Protocol

from . import websocket
from .protocol import MAX_MESSAGE_BYTES
from .logs import ThrottledLog
from .websocket import (OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameReader, HttpError, Request,
                        Violation, close_frame, error_response, handshake_response, ping_frame, pong_frame)

log = ThrottledLog(logging.getLogger("loopsync.connection"))

HANDSHAKE_SECONDS: Final = 5.0
PING_INTERVAL_SECONDS: Final = 20.0
PONG_TIMEOUT_SECONDS: Final = 10.0
CLOSE_TIMEOUT_SECONDS: Final = 5.0
RATE_BURST: Final = 40
RATE_PER_SECOND: Final = 20.0
READ_CHUNK_BYTES: Final = 16 * 1024
SEND_BUFFER_BYTES: Final = 16 * 1024
"""Kernel send buffer and the transport's high-water mark: above it, frames wait in the transport."""
OUTBOX_BYTES: Final = 128 * 1024
"""Unsent bytes a connection may hold beyond the kernel's buffer before it is closed as too slow."""

HTTP, OPEN, CLOSING, CLOSED = "http", "open", "closing", "closed"
UPGRADE: Final = object()
"""What :meth:`Handler.http_request` returns to accept a WebSocket upgrade."""

_shared_read_buffer = bytearray(READ_CHUNK_BYTES)
_shared_read_view = memoryview(_shared_read_buffer)


class Handler(Protocol):
    """What the server decides for its connections."""

    def http_request(self, connection: Connection, request: Request) -> bytes | HttpError | object:
        """A whole HTTP response, an error, or :data:`UPGRADE` to accept a WebSocket upgrade."""
        ...

    def opened(self, connection: Connection) -> None:
        """The WebSocket handshake is done; messages may follow."""
        ...

    def text(self, connection: Connection, text: str) -> None:
        """A whole text message arrived."""
        ...

    def binary(self, connection: Connection) -> None:
        """A whole binary message arrived (loopsync speaks text only)."""
        ...

    def caught_up(self, connection: Connection) -> None:
        """The peer has read what waited for it, after presence was held back: send presence now."""
        ...

    def closing(self, connection: Connection) -> None:
        """The server has started to close the WebSocket: nothing more will be read or sent."""
        ...

    def lost(self, connection: Connection) -> None:
        """The connection is gone (called exactly once, whatever the state)."""
        ...


class Connection(asyncio.BufferedProtocol):
    """One TCP connection: its state, its timers, its read budget and its way out."""

    __slots__ = ("handler", "transport", "state", "label", "_http_buffer", "_reader", "_timer", "_tokens",
                 "_tokens_at", "_paused_for_tokens", "_held", "_write_paused", "presence_held", "_awaiting_pong",
                 "_pings_due_at", "peer", "outbox_bytes")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.state = HTTP
        self.label = "?"
        """Names the connection in log lines (the server sets it)."""
        self.peer = ""
        self.outbox_bytes = OUTBOX_BYTES
        self._http_buffer = bytearray()
        self._reader: FrameReader | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tokens = float(RATE_BURST)
        self._tokens_at = 0.0
        self._paused_for_tokens = False
        self._held = 0
        """How many reasons of the server's (:meth:`hold_reading`) keep this connection from reading."""
        self._write_paused = False
        self.presence_held = False
        """Presence was not sent because the peer was behind; :meth:`Handler.caught_up` will send it."""
        self._awaiting_pong = False
        self._pings_due_at = 0.0

    # -- asyncio protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=SEND_BUFFER_BYTES)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self._arm(HANDSHAKE_SECONDS)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _shared_read_view

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(_shared_read_view[:nbytes])
        if self._reader is not None:
            self._reader.feed(data)
            self._read_frames()
        elif self.state is HTTP:
            self._http_buffer += data
            self._read_requests()

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.presence_held and self.state is OPEN:
            self.presence_held = False
            self.handler.caught_up(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self._reader = None
        self._http_buffer = bytearray()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.handler.lost(self)

    # -- what the server calls --------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Write one whole frame (see :func:`websocket.text_frame`) after those before it."""
        if self.state is not OPEN:
            return
        transport = self.transport
        assert transport is not None
        transport.write(frame)
        if self._write_paused and transport.get_write_buffer_size() > self.outbox_bytes:
            log.log("too slow", logging.INFO, "closing connection %s: too slow (more than %d bytes unread)", self.label, self.outbox_bytes)
            self.close(websocket.CLOSE_POLICY, "too slow")

    def send_presence(self, frame: bytes) -> None:
        """Write a presence frame now if the peer keeps up; else hold presence back until it catches up."""
        if self.state is not OPEN:
            return
        if self._write_paused or self.presence_held:
            self.presence_held = True
            return
        self.send(frame)

    @property
    def behind(self) -> bool:
        """Frames wait in the transport for this peer to read them."""
        return self._write_paused

    def close(self, code: int, reason: str) -> None:
        """Send a close frame after what is queued and cut the connection if the peer does not finish the close in time."""
        if self.state is not OPEN:
            return
        assert self.transport is not None
        self.state = CLOSING
        self.transport.write(close_frame(code, reason))
        self._arm(CLOSE_TIMEOUT_SECONDS)
        # On the next turn: the caller may be going through its room's connections.
        asyncio.get_running_loop().call_soon(self.handler.closing, self)
        if self._held:  # a server's hold no longer counts: read on, to find the peer's close
            asyncio.get_running_loop().call_soon(self._read_on)

    def abort(self) -> None:
        """Cut the connection now, dropping what waits in its buffers."""
        if self.transport is not None and self.state is not CLOSED:
            self.transport.abort()

    def hold_reading(self) -> None:
        """Stop reading this connection's socket (a reason of the server's) until :meth:`release_reading`."""
        self._held += 1
        if self._held == 1 and self.transport is not None and self.state is OPEN:
            self.transport.pause_reading()

    def release_reading(self) -> None:
        """Undo one :meth:`hold_reading`; reading resumes (on the next turn of the loop) when no reason is left."""
        self._held -= 1
        if self._held == 0 and self.state is OPEN:
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if self._held or self.state is not OPEN:
            return
        self._read_frames()
        if not self._held and not self._paused_for_tokens and self.transport is not None and self.state is OPEN:
            self.transport.resume_reading()

    def charge(self, tokens: float) -> None:
        """Take more tokens than the one every frame takes (a message that costs more, such as ``fetch``)."""
        self._tokens -= tokens

    # -- HTTP -------------------------------------------------------------------

    def _read_requests(self) -> None:
        while self.state is HTTP and self.transport is not None:
            parsed = websocket.parse_request_head(self._http_buffer)
            if parsed is None:
                return
            if isinstance(parsed, HttpError):
                self._refuse(parsed)
                return
            request, length = parsed
            del self._http_buffer[:length]
            answer = self.handler.http_request(self, request)
            if answer is UPGRADE:
                self._upgrade(request)
                return
            if isinstance(answer, HttpError):
                self._refuse(answer)
                return
            assert isinstance(answer, bytes)
            self.transport.write(answer)
            if not _keeps_alive(request):
                self.transport.close()
                self.state = CLOSED
                return
            self._arm(HANDSHAKE_SECONDS)

    def _refuse(self, error: HttpError) -> None:
        assert self.transport is not None
        log.log(f"http {error.status}", logging.INFO, "refused a request from %s: %d %s", self.peer, error.status, error.reason)
        self.transport.write(error_response(error))
        self.transport.close()
        self.state = CLOSED

    def _upgrade(self, request: Request) -> None:
        assert self.transport is not None
        response = handshake_response(request)
        if isinstance(response, HttpError):
            self._refuse(response)
            return
        self.transport.write(response)
        self.state = OPEN
        loop = asyncio.get_running_loop()
        self._tokens_at = loop.time()
        self._pings_due_at = loop.time() + PING_INTERVAL_SECONDS
        self._arm(PONG_TIMEOUT_SECONDS)
        self._reader = FrameReader(MAX_MESSAGE_BYTES)
        leftover, self._http_buffer = bytes(self._http_buffer), bytearray()
        self.handler.opened(self)
        if leftover and self.state is OPEN:
            self._reader.feed(leftover)
            self._read_frames()

    # -- WebSocket ----------------------------------------------------------------

    def _read_frames(self) -> None:
        reader = self._reader
        if reader is None or self._holding():
            return
        now = asyncio.get_running_loop().time()
        tokens = self._tokens + (now - self._tokens_at) * RATE_PER_SECOND
        self._tokens_at = now
        self._tokens = tokens if tokens < RATE_BURST else float(RATE_BURST)
        while reader.buffered_bytes:
            if self._tokens < 1.0:
                self._pause_for_tokens()
                return
            frame = reader.next_frame()
            if frame is None:
                return
            self._tokens -= 1.0
            if type(frame) is Violation:
                self._violated(frame)
                return
            opcode, data = frame
            if opcode == OP_TEXT:
                if self.state is not OPEN:
                    continue  # closing: only the peer's close is still of interest
                self.handler.text(self, data)  # type: ignore[arg-type]
                if self._holding():
                    return  # the frames already read wait too: _resume goes on from here
            elif opcode == OP_PONG:
                self._awaiting_pong = False
            elif opcode == OP_PING:
                if self.state is OPEN:
                    self.transport.write(pong_frame(data))  # type: ignore[arg-type,union-attr]
            elif opcode == OP_BINARY:
                if self.state is OPEN:
                    self.handler.binary(self)
            elif opcode == OP_CLOSE:
                self._peer_closed(data)  # type: ignore[arg-type]
                return
            if self.state is CLOSED or self._holding() or self._reader is None:
                return

    def _holding(self) -> bool:
        """Reading waits for the server (:meth:`hold_reading`); never once closing, when only the peer's close is read."""
        return self._held > 0 and self.state is OPEN

    def _pause_for_tokens(self) -> None:
        if self._paused_for_tokens or self.transport is None:
            return
        self._paused_for_tokens = True
        self.transport.pause_reading()
        delay = (1.0 - self._tokens) / RATE_PER_SECOND
        asyncio.get_running_loop().call_later(delay, self._tokens_back)

    def _read_on(self) -> None:
        if self.state is CLOSED or self.transport is None:
            return
        self._read_frames()
        if not self._paused_for_tokens and not self._holding():
            self.transport.resume_reading()

    def _tokens_back(self) -> None:
        self._paused_for_tokens = False
        if self.state is CLOSED or self.transport is None:
            return
        self._read_frames()
        if not self._paused_for_tokens and not self._holding():
            self.transport.resume_reading()

    def _violated(self, violation: Violation) -> None:
        log.log(f"violation {violation.code}", logging.INFO, "closing connection %s (%s) with %d: %s",
                self.label, self.peer, violation.code, violation.reason)
        self.close(violation.code, violation.reason)

    def _peer_closed(self, code_and_reason: tuple[int, str]) -> None:
        assert self.transport is not None
        if self.state is OPEN:
            code = code_and_reason[0]
            self.transport.write(close_frame(websocket.CLOSE_NORMAL if code == websocket.CLOSE_NO_STATUS else code))
        self.state = CLOSING
        self._reader = None
        self.transport.close()  # the server closes the TCP connection first (RFC 6455 section 7.1.1)
        self._arm(CLOSE_TIMEOUT_SECONDS)

    # -- timers -------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        if self.state is HTTP:
            log.log("handshake timeout", logging.INFO, "cutting connection %s: no complete request within %g s", self.peer, HANDSHAKE_SECONDS)
            self.abort()
        elif self.state is CLOSING:
            self.abort()
        elif self.state is OPEN:
            self._heartbeat()

    def _heartbeat(self) -> None:
        if self._awaiting_pong:
            log.log("no pong", logging.INFO, "cutting connection %s: no pong within %g s", self.label, PONG_TIMEOUT_SECONDS)
            self.abort()
            return
        now = asyncio.get_running_loop().time()
        if now >= self._pings_due_at:
            assert self.transport is not None
            self.transport.write(ping_frame())
            self._awaiting_pong = True
            self._pings_due_at = now + PING_INTERVAL_SECONDS
        self._arm(PONG_TIMEOUT_SECONDS)


def _keeps_alive(request: Request) -> bool:
    tokens = request.header_tokens("connection")
    return "close" not in tokens


def http_error(status: int, reason: str) -> HttpError:
    """Shorthand for the server's refusals."""
    return HttpError(status, reason)
