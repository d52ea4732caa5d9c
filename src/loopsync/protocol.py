"""The wire protocol (version 1): JSON text frames, parsed and built here.

``docs/protocol.md`` is the specification; this module is its executable
form. Parsing never raises on bad input from a peer: it returns an
:class:`~loopsync.document.Invalid` naming the error code, so the server can
answer with an ``error`` message and keep the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Union

import orjson

from .document import Invalid, Part, check_name

VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
MIN_BPM = 1.0
MAX_BPM = 1000.0
MAX_SEQ = 2**53 - 1  # the largest integer a JavaScript number holds exactly

# Close codes (RFC 6455 and what we send with them).
CLOSE_POLICY = 1008  # bad hello (version, names), room full, too slow to read
CLOSE_TOO_BIG = 1009  # a frame over MAX_FRAME_BYTES
CLOSE_INTERNAL = 1011  # a bug on our side; the peer learns nothing more


@dataclass(frozen=True)
class Hello:
    """First message of a connection: which room, which user, transport state."""

    version: int
    room: str
    user: str
    playing: bool
    bpm: float | None


class Update(NamedTuple):
    """The sender's whole part, numbered by the sender's own sequence number.

    A named tuple, not a frozen dataclass like the other messages: it is the
    message of every edit, and a tuple is built in a fraction of the time.
    """

    seq: int
    part: Part
    claimed_user: str | None


@dataclass(frozen=True)
class Transport:
    """Presence: the sender's play/pause state and tempo changed."""

    playing: bool
    bpm: float | None


@dataclass(frozen=True)
class Fetch:
    """Ask for the current Shared Data again (after a frozen tab wakes up)."""


ClientMessage = Union[Hello, Update, Transport, Fetch]


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _parse_bpm(value: object) -> float | None | Invalid:
    if value is None:
        return None
    if not _is_number(value) or not MIN_BPM <= float(value) <= MAX_BPM:  # type: ignore[arg-type]
        return Invalid("bad_message", f"bpm must be a number from {MIN_BPM:g} to {MAX_BPM:g}, got {str(value)[:20]}")
    return float(value)  # type: ignore[arg-type]


def parse_client_message(text: str | bytes) -> ClientMessage | Invalid:
    """Turn one text frame from a client into a message, or say why it is refused.

    Checks the envelope and field types only; whether a part fits the room
    (step count, ownership, seq order) is the room's decision. The parser is
    strict RFC 8259 (orjson): ``NaN``, ``Infinity`` and lone surrogates
    are not JSON, nesting ends at 1024 levels, and an integer too large for
    64 bits reads as a float (so it is never a valid ``seq``).
    """
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Invalid("bad_json", "frame is not valid JSON")
    if not isinstance(data, dict):
        return Invalid("bad_json", f"frame must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind == "update":
        return _parse_update(data)
    if kind == "hello":
        return _parse_hello(data)
    if kind == "transport":
        if not isinstance(data.get("playing"), bool):
            return Invalid("bad_message", "transport needs playing: true or false")
        bpm = _parse_bpm(data.get("bpm"))
        if isinstance(bpm, Invalid):
            return bpm
        return Transport(playing=data["playing"], bpm=bpm)
    if kind == "fetch":
        return Fetch()
    return Invalid("unknown_type", f"unknown message type: {str(kind)[:40]!r}")


def _parse_hello(data: Mapping[str, Any]) -> Hello | Invalid:
    version = data.get("v")
    if version != VERSION or not _is_int(version):
        return Invalid("bad_version", f"protocol version {VERSION} expected, got {str(version)[:20]}")
    for kind in ("room", "user"):
        problem = check_name(kind, data.get(kind))
        if problem:
            return problem
    playing = data.get("playing", False)
    if not isinstance(playing, bool):
        return Invalid("bad_message", "hello playing must be true or false")
    bpm = _parse_bpm(data.get("bpm"))
    if isinstance(bpm, Invalid):
        return bpm
    return Hello(version=VERSION, room=data["room"], user=data["user"], playing=playing, bpm=bpm)


def _parse_update(data: Mapping[str, Any]) -> Update | Invalid:
    seq = data.get("seq")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        return Invalid("bad_message", f"update seq must be an integer from 1 to 2^53-1, got {str(seq)[:20]}")
    claimed = data.get("user")
    if claimed is not None and not isinstance(claimed, str):
        return Invalid("bad_message", "update user must be a string when present")
    if "part" not in data:
        return Invalid("bad_message", "update needs a part")
    return Update(seq, data["part"], claimed)


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as the UTF-8 payload of a text frame: compact JSON."""
    return orjson.dumps(message)


def snapshot(*, you: str, room: str, steps: int, parts: Mapping[str, Part], revision: int, seq: int) -> dict[str, Any]:
    """The current Shared Data: first message after ``hello``, and the answer to ``fetch``."""
    return {
        "type": "snapshot",
        "v": VERSION,
        "you": you,
        "revision": revision,
        "seq": seq,
        "doc": {"room": room, "steps": steps, "parts": dict(parts)},
    }


def update_frame(*, user: str, seq: int, revision: int, part: Part) -> bytes:
    """One accepted part, sent to every other client of the room (encoded once for all of them)."""
    return orjson.dumps({"type": "update", "user": user, "seq": seq, "revision": revision, "part": part})


def ack_frame(*, seq: int, revision: int) -> bytes:
    """Confirmation to the sender: update ``seq`` is durable as room ``revision``."""
    return b'{"type":"ack","seq":%d,"revision":%d}' % (seq, revision)


def presence(users: list[dict[str, Any]]) -> dict[str, Any]:
    """Everyone connected to the room and their transport state."""
    return {"type": "presence", "users": users}


def error(problem: Invalid, seq: int | None = None) -> dict[str, Any]:
    """An error answer; ``seq`` names the refused update when there is one."""
    message: dict[str, Any] = {"type": "error", "code": problem.code, "message": problem.message}
    if seq is not None:
        message["seq"] = seq
    return message
