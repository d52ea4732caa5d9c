"""outbox.text_frame: the server's own WebSocket frames, checked against RFC 6455's three length forms."""

from __future__ import annotations

import pytest

from loopsync.outbox import text_frame


@pytest.mark.parametrize(("length", "header"), [
    (0, b"\x81\x00"),
    (125, b"\x81\x7d"),
    (126, b"\x81\x7e\x00\x7e"),
    (65535, b"\x81\x7e\xff\xff"),
    (65536, b"\x81\x7f" + (65536).to_bytes(8, "big")),
])
def test_text_frame_uses_the_shortest_length_form(length: int, header: bytes) -> None:
    """Final text frame, no mask, 7-bit / 16-bit / 64-bit length as the payload needs."""
    frame = text_frame(b"x" * length)
    assert frame == header + b"x" * length


def test_text_frame_counts_utf8_bytes_not_characters() -> None:
    """The length is of the encoded payload (a name may not hold non-ASCII, but an error message may quote it)."""
    frame = text_frame(("é" * 70).encode())  # 140 bytes
    assert frame[:4] == b"\x81\x7e\x00\x8c"
    assert frame[4:].decode() == "é" * 70
