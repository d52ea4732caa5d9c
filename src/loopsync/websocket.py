"""HTTP/1.1 request heads and WebSocket frames (RFC 6455) on the server side, with no I/O.

The connection layer (``connection.py``) feeds the bytes a socket read into
these functions and writes the bytes they return; nothing here touches a
socket, a clock or asyncio, so every rule of the wire is tested on its own.

- :func:`parse_request_head` reads one request head (request line and
  headers, at most :data:`MAX_HEAD_BYTES`) from the start of a buffer.
- :func:`handshake_response` checks a WebSocket upgrade request and builds
  the ``101 Switching Protocols`` answer.
- :class:`FrameReader` turns the bytes of a client's side of the connection
  into frames, one call per frame, so that the caller can meter every frame
  (pings and fragments included). It enforces what a server must: client
  frames are masked, no reserved bits or opcodes, control frames short and
  whole, fragments in order, messages at most ``max_message_bytes`` long,
  text valid UTF-8. A violation is returned as a :class:`Violation` naming
  the close code (1002, 1007, 1009), never raised.
- :func:`text_frame`, :func:`close_frame`, :func:`ping_frame`,
  :func:`pong_frame` build the server's own frames (never masked).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from typing import Final, NamedTuple

MAX_HEAD_BYTES: Final = 8192
"""The longest request head (request line and headers) accepted: browsers send well under 2 KiB."""
MAX_HEADERS: Final = 64

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005
CLOSE_INVALID_DATA: Final = 1007
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL: Final = 1011

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


# -- HTTP ----------------------------------------------------------------------


class Request(NamedTuple):
    """One HTTP/1.1 request head. Header names are lower case; repeated headers are joined with ``, ``."""

    method: str
    target: str
    headers: dict[str, str]

    def header_tokens(self, name: str) -> set[str]:
        """A comma-separated header's values, lower case (``Connection: keep-alive, Upgrade``)."""
        return {token.strip().lower() for token in self.headers.get(name, "").split(",") if token.strip()}


class HttpError(NamedTuple):
    """A request refused before any application sees it: the status and a one-line reason for the body."""

    status: int
    reason: str


def parse_request_head(buffer: bytes | bytearray) -> tuple[Request, int] | HttpError | None:
    """The request head at the start of ``buffer`` and its length in bytes; ``None`` while it is incomplete.

    Only what loopsync serves is accepted: HTTP/1.1 (or 1.0), an
    origin-form target, no request body. Anything else is an
    :class:`HttpError` (400, 413, 431 or 505), never an exception.
    """
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            return HttpError(431, "request head too large")
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1].startswith(b"/"):
        return HttpError(400, "bad request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return HttpError(505, "HTTP/1.1 only")
    if len(lines) - 1 > MAX_HEADERS:
        return HttpError(431, "too many header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return HttpError(400, "bad header field")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        return HttpError(413, "request bodies are not accepted")
    return Request(method.decode("ascii"), target.decode("latin-1"), headers), end + 4


def handshake_response(request: Request) -> bytes | HttpError:
    """The ``101`` answer to a valid WebSocket upgrade request (RFC 6455 section 4.2), else why not.

    No extension (``permessage-deflate``) and no subprotocol is negotiated.
    """
    if request.method != "GET":
        return HttpError(405, "a WebSocket upgrade is a GET")
    if "websocket" not in request.header_tokens("upgrade") or "upgrade" not in request.header_tokens("connection"):
        return HttpError(426, "this address speaks WebSocket only")
    if request.headers.get("sec-websocket-version") != "13":
        return HttpError(426, "WebSocket version 13 only")
    key = request.headers.get("sec-websocket-key", "")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key:
        return HttpError(400, "bad Sec-WebSocket-Key")
    accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


_REASONS: Final = {200: "OK", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
                   405: "Method Not Allowed", 413: "Content Too Large", 426: "Upgrade Required",
                   431: "Request Header Fields Too Large", 500: "Internal Server Error",
                   503: "Service Unavailable", 505: "HTTP Version Not Supported"}


def http_response(status: int, body: bytes = b"", headers: dict[str, str] | None = None, *,
                  head_only: bool = False, close: bool = False) -> bytes:
    """One complete HTTP/1.1 response; ``head_only`` leaves the body out (an answer to ``HEAD``)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error_response(error: HttpError) -> bytes:
    """The plain-text answer to a refused request; the connection closes after it."""
    headers = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
    if error.status == 426:
        headers["Sec-WebSocket-Version"] = "13"
    return http_response(error.status, f"{error.reason}\n".encode(), headers, close=True)


# -- frames --------------------------------------------------------------------


class Frame(NamedTuple):
    """What one client frame amounts to.

    ``opcode`` is ``OP_TEXT`` (``data`` is the whole message as ``str``) or
    ``OP_BINARY`` (``bytes``) when the frame completes a message;
    ``OP_CONTINUATION`` for a fragment that does not (``data`` is ``None``);
    ``OP_PING``/``OP_PONG`` with their payload; ``OP_CLOSE`` with ``data`` the
    ``(code, reason)`` the peer sent (code 1005 when it sent none).
    """

    opcode: int
    data: object


class Violation(NamedTuple):
    """The peer broke the protocol: fail the connection with ``code`` (1002, 1007 or 1009)."""

    code: int
    reason: str


_VALID_CLOSE_CODES: Final = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def _unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated, in one pass over Python integers (C speed)."""
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


class FrameReader:
    """Client frames from a byte stream: :meth:`feed` what was read, then :meth:`next_frame` until ``None``."""

    __slots__ = ("max_message_bytes", "_buffer", "_offset", "_fragments", "_fragment_opcode", "_fragment_bytes", "failed")

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._offset = 0
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._fragment_bytes = 0
        self.failed = False
        """A violation was returned; the reader returns nothing more."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed and not yet returned as frames."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        """Append bytes read from the socket."""
        if self._offset and self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        elif self._offset > 65536:
            del self._buffer[:self._offset]
            self._offset = 0
        self._buffer += data

    def next_frame(self) -> Frame | Violation | None:
        """The next whole frame, a violation, or ``None`` until more bytes are fed."""
        if self.failed:
            return None
        buffer, offset = self._buffer, self._offset
        available = len(buffer) - offset
        if available < 2:
            return None
        first, second = buffer[offset], buffer[offset + 1]
        opcode, length = first & 0x0F, second & 0x7F
        header = 6
        if length == 126:
            header = 8
            if available < header:
                return None
            length = (buffer[offset + 2] << 8) | buffer[offset + 3]
        elif length == 127:
            header = 14
            if available < header:
                return None
            length = int.from_bytes(buffer[offset + 2:offset + 10], "big")
        problem = self._check_header(first, second, opcode, length)
        if problem is not None:
            return self._fail(problem)
        end = offset + header + length
        if len(buffer) < end:
            return None
        mask = bytes(buffer[offset + header - 4:offset + header])
        payload = _unmask(bytes(buffer[offset + header:end]), mask)
        self._offset = end
        if opcode >= OP_CLOSE:
            return self._control(opcode, payload)
        return self._data(opcode, first & 0x80, payload)

    def _check_header(self, first: int, second: int, opcode: int, length: int) -> Violation | None:
        if first & 0x70:
            return Violation(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        if not second & 0x80:
            return Violation(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                return Violation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if not first & 0x80 or length > 125:
                return Violation(CLOSE_PROTOCOL_ERROR, "control frames must be whole and at most 125 bytes")
            return None
        if opcode > OP_BINARY:
            return Violation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if opcode == OP_CONTINUATION and not self._fragment_opcode:
            return Violation(CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue")
        if opcode != OP_CONTINUATION and self._fragment_opcode:
            return Violation(CLOSE_PROTOCOL_ERROR, "new message before the last one's final fragment")
        if self._fragment_bytes + length > self.max_message_bytes:
            return Violation(CLOSE_TOO_BIG, f"message over {self.max_message_bytes} bytes")
        return None

    def _data(self, opcode: int, final: int, payload: bytes) -> Frame | Violation:
        if opcode == OP_CONTINUATION:
            self._fragments.append(payload)
            self._fragment_bytes += len(payload)
            if not final:
                return Frame(OP_CONTINUATION, None)
            opcode = self._fragment_opcode
            payload = b"".join(self._fragments)
            self._fragments = []
            self._fragment_opcode = self._fragment_bytes = 0
        elif not final:
            self._fragments = [payload]
            self._fragment_opcode = opcode
            self._fragment_bytes = len(payload)
            return Frame(OP_CONTINUATION, None)
        if opcode == OP_BINARY:
            return Frame(OP_BINARY, payload)
        try:
            return Frame(OP_TEXT, payload.decode("utf-8"))
        except UnicodeDecodeError:
            return self._fail(Violation(CLOSE_INVALID_DATA, "text message is not valid UTF-8"))

    def _control(self, opcode: int, payload: bytes) -> Frame | Violation:
        if opcode != OP_CLOSE:
            return Frame(opcode, payload)
        if not payload:
            return Frame(OP_CLOSE, (CLOSE_NO_STATUS, ""))
        if len(payload) < 2:
            return self._fail(Violation(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload"))
        code = (payload[0] << 8) | payload[1]
        if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
            return self._fail(Violation(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}"))
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(Violation(CLOSE_INVALID_DATA, "close reason is not valid UTF-8"))
        return Frame(OP_CLOSE, (code, reason))

    def _fail(self, violation: Violation) -> Violation:
        self.failed = True
        self._buffer.clear()
        self._offset = 0
        self._fragments = []
        return violation


_SMALL: Final = struct.Struct("!BB")
_MEDIUM: Final = struct.Struct("!BBH")
_LARGE: Final = struct.Struct("!BBQ")


def _frame(first_byte: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        return _SMALL.pack(first_byte, length) + payload
    if length < 65536:
        return _MEDIUM.pack(first_byte, 126, length) + payload
    return _LARGE.pack(first_byte, 127, length) + payload


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame around a UTF-8 payload, as a server sends it."""
    return _frame(0x80 | OP_TEXT, payload)


def ping_frame(payload: bytes = b"") -> bytes:
    """A server ping (payload at most 125 bytes)."""
    return _frame(0x80 | OP_PING, payload[:125])


def pong_frame(payload: bytes) -> bytes:
    """The answer to a ping: its payload echoed."""
    return _frame(0x80 | OP_PONG, payload[:125])


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with a status code and a reason cut to the 123 bytes a control frame has room for."""
    encoded = reason.encode("utf-8")[:123]
    while True:  # never cut a character in half
        try:
            encoded.decode("utf-8")
            break
        except UnicodeDecodeError:
            encoded = encoded[:-1]
    return _frame(0x80 | OP_CLOSE, code.to_bytes(2, "big") + encoded)
