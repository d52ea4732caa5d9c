"""protocol.py: parsing client frames (one row per outcome) and building server messages. No sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loopsync import protocol
from loopsync.document import Invalid
from loopsync.protocol import Fetch, Hello, Transport, Update, parse_client_message

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}


def frame(**fields: Any) -> str:
    return json.dumps(fields)


VALID = [
    (frame(type="hello", v=1, room="demo", user="alice"), Hello(1, "demo", "alice", False, None)),
    (frame(type="hello", v=1, room="a-b_C9", user="x" * 32, playing=True, bpm=96), Hello(1, "a-b_C9", "x" * 32, True, 96.0)),
    (frame(type="hello", v=1, room="demo", user="bob", bpm=None, extra="ignored"), Hello(1, "demo", "bob", False, None)),
    (frame(type="update", seq=7, part=KICK), Update(7, KICK, None)),
    (frame(type="update", seq=2**53 - 1, user="alice", part=KICK), Update(2**53 - 1, KICK, "alice")),
    (frame(type="update", seq=1, part="not checked here"), Update(1, "not checked here", None)),  # type: ignore[arg-type]
    (frame(type="transport", playing=True), Transport(True, None)),
    (frame(type="transport", playing=False, bpm=1), Transport(False, 1.0)),
    (frame(type="transport", playing=False, bpm=1000.0), Transport(False, 1000.0)),
    (frame(type="fetch"), Fetch()),
    (frame(type="fetch", anything=[1, 2]), Fetch()),
]


@pytest.mark.parametrize("text, expected", VALID, ids=[f"valid-{i}" for i in range(len(VALID))])
def test_parse_valid(text: str, expected: Any) -> None:
    """A well-formed frame parses into its message, unknown envelope fields ignored."""
    assert parse_client_message(text) == expected


INVALID = [
    # one row per error code parsing can give, then the edges of each
    ("{nope", "bad_json"),
    ("[1, 2]", "bad_json"),
    ("null", "bad_json"),
    ("", "bad_json"),
    ("[" * 100000, "bad_json"),
    ("[" * 1025 + "]" * 1025, "bad_json"),  # nesting ends at 1024 levels
    ('{"type": "update", "seq": NaN, "part": {}}', "bad_json"),  # strict JSON: no NaN or Infinity
    ('{"type": "update", "seq": Infinity, "part": {}}', "bad_json"),
    ('{"type": "update", "seq": 1e999, "part": {}}', "bad_json"),
    ('{"type": "hello", "v": 1, "room": "demo", "user": "\\ud800"}', "bad_json"),  # an unpaired surrogate
    (frame(type="dance"), "unknown_type"),
    (frame(kind="hello"), "unknown_type"),
    (frame(type=None), "unknown_type"),
    (frame(type="hello", v=2, room="demo", user="alice"), "bad_version"),
    (frame(type="hello", v=True, room="demo", user="alice"), "bad_version"),
    (frame(type="hello", v=1.0, room="demo", user="alice"), "bad_version"),
    (frame(type="hello", room="demo", user="alice"), "bad_version"),
    (frame(type="hello", v=1, room="", user="alice"), "bad_name"),
    (frame(type="hello", v=1, room="demo", user="a" * 33), "bad_name"),
    (frame(type="hello", v=1, room="demo", user="al ice"), "bad_name"),
    (frame(type="hello", v=1, room="demo", user="alice\n"), "bad_name"),
    (frame(type="hello", v=1, room=7, user="alice"), "bad_name"),
    (frame(type="hello", v=1, room="demo"), "bad_name"),
    (frame(type="hello", v=1, room="demo", user="alice", playing="yes"), "bad_message"),
    (frame(type="hello", v=1, room="demo", user="alice", bpm=0.5), "bad_message"),
    (frame(type="update", part=KICK), "bad_message"),
    (frame(type="update", seq=0, part=KICK), "bad_message"),
    (frame(type="update", seq=-1, part=KICK), "bad_message"),
    (frame(type="update", seq=2**53, part=KICK), "bad_message"),
    (frame(type="update", seq=2**64, part=KICK), "bad_message"),  # beyond 64 bits: read as a float
    (frame(type="update", seq=1.0, part=KICK), "bad_message"),
    (frame(type="update", seq=True, part=KICK), "bad_message"),
    (frame(type="update", seq="1", part=KICK), "bad_message"),
    (frame(type="update", seq=1), "bad_message"),
    (frame(type="update", seq=1, user=["bob"], part=KICK), "bad_message"),
    (frame(type="transport"), "bad_message"),
    (frame(type="transport", playing=1), "bad_message"),
    (frame(type="transport", playing=True, bpm=1000.5), "bad_message"),
    (frame(type="transport", playing=True, bpm=True), "bad_message"),
    (frame(type="transport", playing=True, bpm="96"), "bad_message"),
]


@pytest.mark.parametrize("text, code", INVALID, ids=[f"{code}-{i}" for i, (_, code) in enumerate(INVALID)])
def test_parse_invalid(text: str, code: str) -> None:
    """A bad frame is refused with its documented error code and a short message, never an exception."""
    result = parse_client_message(text)
    assert isinstance(result, Invalid)
    assert result.code == code
    assert 0 < len(result.message) < 200


def test_server_messages_have_the_documented_shapes() -> None:
    """The builders give exactly the documented fields, and encode is compact JSON."""
    snapshot = protocol.snapshot(you="bob", room="demo", steps=16, parts={"alice": KICK}, revision=3, seq=2)
    assert snapshot == {"type": "snapshot", "v": 1, "you": "bob", "revision": 3, "seq": 2,
                        "doc": {"room": "demo", "steps": 16, "parts": {"alice": KICK}}}
    assert protocol.ack_frame(seq=7, revision=13) == b'{"type":"ack","seq":7,"revision":13}'
    update = protocol.update_frame(user="bob", seq=3, revision=13, part=KICK)
    assert json.loads(update) == {"type": "update", "user": "bob", "seq": 3, "revision": 13, "part": KICK}
    assert update == protocol.encode({"type": "update", "user": "bob", "seq": 3, "revision": 13, "part": KICK})
    assert protocol.presence([{"user": "a", "playing": True, "bpm": None}]) == {
        "type": "presence", "users": [{"user": "a", "playing": True, "bpm": None}]}
    assert protocol.error(Invalid("stale_seq", "m"), 5) == {"type": "error", "code": "stale_seq", "message": "m", "seq": 5}
    assert protocol.error(Invalid("bad_json", "m")) == {"type": "error", "code": "bad_json", "message": "m"}
    assert protocol.encode(protocol.presence([{"user": "a", "playing": False, "bpm": 120.0}])).endswith(b'"bpm":120.0}]}')
