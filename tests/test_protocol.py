"""protocol.py: parsing client frames (one row per outcome) and building server messages. No sockets."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from loopsync import protocol
from loopsync.document import Invalid
from loopsync.protocol import Fetch, Hello, Transport, Update, parse_client_message, parse_first_message

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}


def frame(**fields: Any) -> str:
    return json.dumps(fields)


VALID = [
    (frame(type="update", seq=7, part=KICK), Update(7, KICK, None)),
    (frame(type="update", seq=2**53 - 1, user="alice", part=KICK), Update(2**53 - 1, KICK, "alice")),
    (frame(type="update", seq=7, user=None, part=KICK), Update(7, KICK, None)),
    (frame(type="update", seq=1, part="not checked here"), Update(1, "not checked here", None)),  # type: ignore[arg-type]
    (frame(type="update", seq=1, part=None), Update(1, None, None)),  # type: ignore[arg-type]
    (frame(type="transport", playing=True), Transport(True, None)),
    (frame(type="transport", playing=True, bpm=None), Transport(True, None)),
    (frame(type="transport", playing=False, bpm=1), Transport(False, 1.0)),
    (frame(type="transport", playing=False, bpm=1000.0), Transport(False, 1000.0)),
    (frame(type="fetch"), Fetch()),
    (frame(type="fetch", anything=[1, 2]), Fetch()),
]


@pytest.mark.parametrize("text, expected", VALID, ids=[f"valid-{i}" for i in range(len(VALID))])
def test_parse_valid(text: str, expected: Any) -> None:
    """A well-formed message parses into its message, unknown envelope fields ignored, null optional fields absent."""
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
    ('{"type": "fetch", "x": "\\ud800"}', "bad_json"),  # an unpaired surrogate
    (frame(type="dance"), "unknown_type"),
    (frame(kind="hello"), "bad_message"),
    (frame(type=None), "bad_message"),
    (frame(type=7), "bad_message"),
    (frame(type="hello", v=1, room="demo", user="alice"), "already_joined"),
    (frame(type="update", part=KICK), "bad_message"),
    (frame(type="update", seq=0, part=KICK), "bad_message"),
    (frame(type="update", seq=-1, part=KICK), "bad_message"),
    (frame(type="update", seq=2**53, part=KICK), "bad_message"),
    (frame(type="update", seq=2**64, part=KICK), "bad_message"),  # beyond 64 bits: read as a float
    (frame(type="update", seq=1.0, part=KICK), "bad_message"),
    ('{"type": "update", "seq": 1e3, "part": {}}', "bad_message"),  # an exponent is never an integer
    (frame(type="update", seq=True, part=KICK), "bad_message"),
    (frame(type="update", seq="1", part=KICK), "bad_message"),
    (frame(type="update", seq=1), "bad_message"),
    (frame(type="update", seq=1, user=["bob"], part=KICK), "bad_message"),
    (frame(type="transport"), "bad_message"),
    (frame(type="transport", playing=None), "bad_message"),
    (frame(type="transport", playing=1), "bad_message"),
    (frame(type="transport", playing=True, bpm=1000.5), "bad_message"),
    (frame(type="transport", playing=True, bpm=True), "bad_message"),
    (frame(type="transport", playing=True, bpm="96"), "bad_message"),
]


@pytest.mark.parametrize("text, code", INVALID, ids=[f"{code}-{i}" for i, (_, code) in enumerate(INVALID)])
def test_parse_invalid(text: str, code: str) -> None:
    """A bad message is refused with its documented error code and a short message, never an exception."""
    result = parse_client_message(text)
    assert isinstance(result, Invalid)
    assert result.code == code
    assert 0 < len(result.message) < 200


FIRST = [
    (frame(type="hello", v=1, room="demo", user="alice"), Hello(1, "demo", "alice", False, None)),
    (frame(type="hello", v=1, room="a-b_C9", user="x" * 32, playing=True, bpm=96), Hello(1, "a-b_C9", "x" * 32, True, 96.0)),
    (frame(type="hello", v=1, room="demo", user="bob", playing=None, bpm=None, extra="ignored"), Hello(1, "demo", "bob", False, None)),
    (frame(type="hello", v=2, room="demo", user="alice"), "bad_version"),
    (frame(type="hello", v=True, room="demo", user="alice"), "bad_message"),
    (frame(type="hello", v=1.0, room="demo", user="alice"), "bad_message"),
    (frame(type="hello", room="demo", user="alice"), "bad_message"),
    (frame(type="hello", v=1, room="", user="alice"), "bad_name"),
    (frame(type="hello", v=1, room="demo", user="a" * 33), "bad_name"),
    (frame(type="hello", v=1, room="demo", user="al ice"), "bad_name"),
    (frame(type="hello", v=1, room="demo", user="alice\n"), "bad_name"),
    (frame(type="hello", v=1, room=7, user="alice"), "bad_message"),
    (frame(type="hello", v=1, room="demo"), "bad_message"),
    (frame(type="hello", v=1, room="demo", user="alice", playing="yes"), "bad_message"),
    (frame(type="hello", v=1, room="demo", user="alice", bpm=0.5), "bad_message"),
    (frame(type="update", seq=1, part=KICK), "not_joined"),
    (frame(type="fetch"), "not_joined"),
    ("{nope", "not_joined"),
    ("[]", "not_joined"),
]


@pytest.mark.parametrize("text, expected", FIRST, ids=[f"first-{i}" for i in range(len(FIRST))])
def test_parse_first_message(text: str, expected: Hello | str) -> None:
    """The first message must be a valid hello: anything else is not_joined, a hello's bad field its own code."""
    result = parse_first_message(text)
    if isinstance(expected, str):
        assert isinstance(result, Invalid) and result.code == expected
    else:
        assert result == expected


def test_server_messages_have_the_documented_shapes() -> None:
    """The builders give exactly the documented fields as compact JSON."""
    document = protocol.document_json("demo", 16, {"alice": KICK})
    snapshot = json.loads(protocol.snapshot_message(you="bob", presence_id="7", revision=3, seq=2, document=document))
    assert snapshot == {"type": "snapshot", "v": 1, "you": "bob", "id": "7", "revision": 3, "seq": 2,
                        "doc": {"room": "demo", "steps": 16, "parts": {"alice": KICK}}}
    assert protocol.ack_message(seq=7, revision=13) == b'{"type":"ack","seq":7,"revision":13}'
    update = protocol.update_message(user="bob", seq=3, revision=13, part=KICK)
    assert json.loads(update) == {"type": "update", "user": "bob", "seq": 3, "revision": 13, "part": KICK}
    assert json.loads(protocol.update_message(user="bob", seq=0, revision=14, part=None))["part"] is None
    entry = protocol.presence_entry("7", "a", True, None)
    assert json.loads(protocol.presence_table([orjson.Fragment(orjson.dumps(entry))])) == {"type": "presence", "users": [{"id": "7", "user": "a", "playing": True, "bpm": None}]}
    assert json.loads(protocol.presence_changes([entry], ["8"])) == {"type": "presence", "changed": [entry], "left": ["8"]}
    assert json.loads(protocol.error_message(Invalid("stale_seq", "m"), 5)) == {"type": "error", "code": "stale_seq", "message": "m", "seq": 5}
    assert json.loads(protocol.error_message(Invalid("bad_json", "m"))) == {"type": "error", "code": "bad_json", "message": "m"}
