"""websocket.py: request heads, the handshake and client frames (RFC 6455), with no sockets; logs.py's throttle."""

from __future__ import annotations

import logging
import os

import pytest

from loopsync.logs import ThrottledLog
from loopsync.websocket import (OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, Frame, FrameReader, HttpError,
                                Violation, close_frame, handshake_response, parse_request_head, text_frame)

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def client_frame(opcode: int, payload: bytes, *, final: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A frame as a client sends it (masked with a random key unless told not to)."""
    first = (0x80 if final else 0) | rsv | opcode
    length = len(payload)
    if length < 126:
        header = bytes([first, (0x80 if masked else 0) | length])
    elif length < 65536:
        header = bytes([first, (0x80 if masked else 0) | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, (0x80 if masked else 0) | 127]) + length.to_bytes(8, "big")
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def read_all(data: bytes, max_bytes: int = 65536) -> list[Frame | Violation]:
    reader = FrameReader(max_bytes)
    reader.feed(data)
    frames: list[Frame | Violation] = []
    while (frame := reader.next_frame()) is not None:
        frames.append(frame)
    return frames


# -- HTTP ----------------------------------------------------------------------


def test_a_request_head_is_parsed_and_its_length_returned() -> None:
    """Method, target, lower-case headers (repeated ones joined); the length lets pipelined bytes follow."""
    parsed = parse_request_head(UPGRADE + b"GET /next")
    assert not isinstance(parsed, HttpError) and parsed is not None
    request, length = parsed
    assert (request.method, request.target, length) == ("GET", "/ws", len(UPGRADE))
    assert request.headers["sec-websocket-version"] == "13"
    assert request.header_tokens("connection") == {"keep-alive", "upgrade"}


@pytest.mark.parametrize("head, status", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n", None),  # not complete yet
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000, 431),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 70 + b"\r\n", 431),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET noslash HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
])
def test_odd_request_heads_are_refused_with_a_status(head: bytes, status: int | None) -> None:
    """An incomplete head waits; anything loopsync does not serve is an HTTP error, never an exception."""
    parsed = parse_request_head(head)
    if status is None:
        assert parsed is None
    else:
        assert isinstance(parsed, HttpError) and parsed.status == status


def test_the_handshake_answers_with_the_rfc_accept_key() -> None:
    """RFC 6455's own example: key dGhlIHNhbXBsZSBub25jZQ== is accepted as s3pPLMBiTxaQ9kYGzzhZRbK+xOo=."""
    parsed = parse_request_head(UPGRADE)
    assert parsed is not None and not isinstance(parsed, HttpError)
    response = handshake_response(parsed[0])
    assert isinstance(response, bytes) and response.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert b"Sec-WebSocket-Extensions" not in response


@pytest.mark.parametrize("replace, status", [
    ((b"Upgrade: websocket\r\n", b""), 426),
    ((b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), 426),
    ((b"dGhlIHNhbXBsZSBub25jZQ==", b"short"), 400),
    ((b"GET", b"PUT"), 405),
])
def test_a_bad_upgrade_is_refused(replace: tuple[bytes, bytes], status: int) -> None:
    """A request that is not a version 13 WebSocket upgrade with a 16-byte key gets its status."""
    parsed = parse_request_head(UPGRADE.replace(*replace))
    assert parsed is not None and not isinstance(parsed, HttpError)
    response = handshake_response(parsed[0])
    assert isinstance(response, HttpError) and response.status == status


# -- frames --------------------------------------------------------------------------


def test_masked_frames_of_every_length_form_are_read() -> None:
    """Text (as str), binary, ping and pong frames of 7-, 16- and 64-bit lengths come out whole and unmasked."""
    frames = read_all(client_frame(OP_TEXT, b"x" * 5) + client_frame(OP_TEXT, "é".encode() * 100)
                      + client_frame(OP_BINARY, b"\x00" * 70000) + client_frame(OP_PING, b"p") + client_frame(OP_PONG, b""),
                      max_bytes=100_000)
    assert frames == [Frame(OP_TEXT, "xxxxx"), Frame(OP_TEXT, "é" * 100), Frame(OP_BINARY, b"\x00" * 70000),
                      Frame(OP_PING, b"p"), Frame(OP_PONG, b"")]


def test_bytes_fed_one_at_a_time_give_the_same_frames() -> None:
    """A frame split anywhere waits for the rest."""
    data = client_frame(OP_TEXT, b'{"type":"fetch"}') + client_frame(OP_TEXT, b"y" * 300)
    reader = FrameReader(65536)
    frames = []
    for index in range(len(data)):
        reader.feed(data[index:index + 1])
        while (frame := reader.next_frame()) is not None:
            frames.append(frame)
    assert frames == [Frame(OP_TEXT, '{"type":"fetch"}'), Frame(OP_TEXT, "y" * 300)]
    assert reader.buffered_bytes == 0


def test_a_fragmented_message_is_one_message_and_every_fragment_is_a_frame() -> None:
    """Each fragment is reported (so it can be counted); the last one gives the whole message; pings may come between."""
    data = (client_frame(OP_TEXT, b'{"ty', final=False) + client_frame(OP_PING, b"")
            + client_frame(OP_CONTINUATION, b"", final=False) + client_frame(OP_CONTINUATION, b'pe":"fetch"}'))
    assert read_all(data) == [Frame(OP_CONTINUATION, None), Frame(OP_PING, b""), Frame(OP_CONTINUATION, None),
                              Frame(OP_TEXT, '{"type":"fetch"}')]


@pytest.mark.parametrize("data, code", [
    (client_frame(OP_TEXT, b"hi", masked=False), 1002),
    (client_frame(OP_TEXT, b"hi", rsv=0x40), 1002),
    (client_frame(0x3, b"hi"), 1002),
    (client_frame(0xB, b""), 1002),
    (client_frame(OP_PING, b"x" * 126), 1002),
    (client_frame(OP_PING, b"", final=False), 1002),
    (client_frame(OP_CONTINUATION, b"x"), 1002),
    (client_frame(OP_TEXT, b"a", final=False) + client_frame(OP_TEXT, b"b"), 1002),
    (client_frame(OP_CLOSE, b"\x03"), 1002),
    (client_frame(OP_CLOSE, (1005).to_bytes(2, "big")), 1002),
    (client_frame(OP_CLOSE, (999).to_bytes(2, "big")), 1002),
    (client_frame(OP_TEXT, b"\xff\xfe"), 1007),
    (client_frame(OP_TEXT, b"\xed\xa0\x80"), 1007),  # a surrogate in UTF-8
    (client_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"\xff"), 1007),
    (client_frame(OP_TEXT, b"x" * 65537), 1009),
    (client_frame(OP_TEXT, b"x" * 40000, final=False) + client_frame(OP_CONTINUATION, b"x" * 30000), 1009),
])
def test_broken_frames_are_violations_with_their_close_code(data: bytes, code: int) -> None:
    """Unmasked, reserved bits, unknown opcodes, bad control frames and fragments, bad close payloads, bad UTF-8, too big."""
    frames = read_all(data)
    assert isinstance(frames[-1], Violation) and frames[-1].code == code
    assert all(isinstance(frame, Frame) for frame in frames[:-1])


def test_a_message_too_big_is_refused_from_its_header() -> None:
    """The length in the header is enough: the reader does not wait for (or keep) a payload over the limit."""
    reader = FrameReader(65536)
    reader.feed(client_frame(OP_TEXT, b"x" * 70000)[:20])
    violation = reader.next_frame()
    assert isinstance(violation, Violation) and violation.code == 1009
    assert reader.buffered_bytes == 0 and reader.next_frame() is None


def test_close_frames_carry_their_code_and_reason() -> None:
    """An empty close is code 1005; codes 1000-1014 (registered) and 3000-4999 are accepted."""
    assert read_all(client_frame(OP_CLOSE, b"")) == [Frame(OP_CLOSE, (1005, ""))]
    assert read_all(client_frame(OP_CLOSE, (4001).to_bytes(2, "big") + b"bye")) == [Frame(OP_CLOSE, (4001, "bye"))]


def test_server_frames_use_the_shortest_length_and_whole_characters() -> None:
    """Unmasked final frames; a close reason is cut to 123 bytes without splitting a character."""
    assert text_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"x" * 65536)[:2] == b"\x81\x7f"
    frame = close_frame(1008, "é" * 100)
    assert frame[0] == 0x88 and frame[1] <= 125
    assert frame[2:4] == (1008).to_bytes(2, "big")
    frame[4:].decode("utf-8")


# -- logs ---------------------------------------------------------------------------


def test_a_throttled_log_writes_a_few_lines_per_kind_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    """5 lines per key per window; the next line after the window says how many were left out; keys are separate."""
    now = [0.0]
    throttled = ThrottledLog(logging.getLogger("test.throttle"), clock=lambda: now[0], window_seconds=60, lines_per_window=5)
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        for index in range(1000):
            throttled.log("bad frame", logging.INFO, "bad frame %d", index)
        throttled.log("other", logging.INFO, "other kind")
        now[0] = 61.0
        throttled.log("bad frame", logging.INFO, "bad frame again")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [f"bad frame {index}" for index in range(5)] + [
        "other kind", "bad frame again (995 more like it left out of the log)"]
