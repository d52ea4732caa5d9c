"""The wire protocol (version 1): JSON text messages, parsed and built here.

``docs/protocol.md`` is the specification; this module is its executable
form. Parsing never raises on bad input from a peer: it returns an
:class:`~loopsync.document.Invalid` naming the error code, so the server can
answer with an ``error`` message and keep the connection.

Server messages are built as the UTF-8 bytes of their JSON; a message that
goes to many connections is built once. Names (rooms, users, presence ids)
are plain ASCII by the naming rule, so the builders write them into the
JSON as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Iterable, Mapping, NamedTuple, Union

import orjson

from .document import Invalid, Part, check_name

VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 64 * 1024
"""The largest message either side sends (a snapshot of a full room is under 30 KiB)."""
MIN_BPM: Final = 1.0
MAX_BPM: Final = 1000.0
MAX_SEQ: Final = 2**53 - 1
"""The largest integer a JavaScript number holds exactly."""
FREE_SEQS: Final = 2**52
MAX_SEQ_STEP: Final = 2**20
"""Above :data:`FREE_SEQS`, an update's seq may be at most this far above the
user's last accepted seq: so no update can push a user's seq to where
nothing of theirs is accepted again (from 2^52 to 2^53-1 takes 2^32 accepted
updates), while below it a client may number its edits as it likes (a
counter, or microseconds of a clock)."""

# Close codes the server sends (RFC 6455).
CLOSE_GOING_AWAY: Final = 1001  # the server is shutting down
CLOSE_POLICY: Final = 1008  # a refused hello, no hello in time, too slow to read
CLOSE_INTERNAL: Final = 1011  # a bug on our side; the peer learns nothing more


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
    """Presence: the sender's play/pause state and tempo changed (``bpm`` ``None``: unchanged)."""

    playing: bool
    bpm: float | None


@dataclass(frozen=True)
class Fetch:
    """Ask for the current Shared Data again (after a frozen tab wakes up, or a ``stale_seq``)."""


ClientMessage = Union[Hello, Update, Transport, Fetch]


def _parse_bpm(value: object) -> float | None | Invalid:
    if value is None:
        return None
    if type(value) not in (int, float) or not MIN_BPM <= value <= MAX_BPM:  # type: ignore[operator]
        return Invalid("bad_message", f"bpm must be a number from {MIN_BPM:g} to {MAX_BPM:g}, got {str(value)[:20]}")
    return value  # type: ignore[return-value]  # as the client wrote it: 120 stays 120, 96.5 stays 96.5


def _load(text: str | bytes) -> dict[str, Any] | Invalid:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Invalid("bad_json", "message is not valid JSON")
    if type(data) is not dict:
        return Invalid("bad_json", f"message must be a JSON object, got {type(data).__name__}")
    return data


def parse_client_message(text: str | bytes) -> ClientMessage | Invalid:
    """Turn one text message from a joined client into a message, or say why it is refused (``hello`` is ``already_joined``).

    Checks the envelope and field types only; whether a part fits the room
    (step count, ownership, seq order) is the room's decision. The parser is
    strict RFC 8259 (orjson): ``NaN``, ``Infinity`` and lone surrogates
    are not JSON, nesting ends at 1024 levels, and a number with a fraction
    or an exponent (``1.0``, ``1e3``) is never an integer. ``null`` for an
    optional field is the same as leaving it out.
    """
    data = _load(text)
    if type(data) is Invalid:
        return data
    assert isinstance(data, dict)
    kind = data.get("type")
    if kind == "update":
        return _parse_update(data)
    if kind == "hello":
        return Invalid("already_joined", "this connection has already joined")
    if kind == "transport":
        playing = data.get("playing")
        if type(playing) is not bool:
            return Invalid("bad_message", "transport needs playing: true or false")
        bpm = _parse_bpm(data.get("bpm"))
        if isinstance(bpm, Invalid):
            return bpm
        return Transport(playing=playing, bpm=bpm)
    if kind == "fetch":
        return Fetch()
    if type(kind) is not str:
        return Invalid("bad_message", "a message needs a type (a string)")
    return Invalid("unknown_type", f"unknown message type: {kind[:40]!r}")


def parse_first_message(text: str | bytes) -> Hello | Invalid:
    """The first message of a connection: a valid ``hello``, or why the connection is refused.

    Anything that is not a ``hello`` (JSON or not) is ``not_joined``, which
    keeps the connection; a ``hello`` with a bad field is ``bad_message``,
    ``bad_version`` or ``bad_name``, which close it.
    """
    data = _load(text)
    if type(data) is Invalid or data.get("type") != "hello":  # type: ignore[union-attr]
        return Invalid("not_joined", "send hello first")
    assert isinstance(data, dict)
    return _parse_hello(data)


def _parse_hello(data: Mapping[str, Any]) -> Hello | Invalid:
    version = data.get("v")
    if type(version) is not int:
        return Invalid("bad_message", f"hello needs v, the protocol version {VERSION}")
    if version != VERSION:
        return Invalid("bad_version", f"protocol version {VERSION} expected, got {version}")
    for kind in ("room", "user"):
        value = data.get(kind)
        if type(value) is not str:
            return Invalid("bad_message", f"hello needs {kind}, a name (string)")
        problem = check_name(kind, value)
        if problem:
            return problem
    playing = data.get("playing")
    if playing is None:
        playing = False
    elif type(playing) is not bool:
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
    if claimed is not None and type(claimed) is not str:
        return Invalid("bad_message", "update user must be a string when present")
    if "part" not in data:
        return Invalid("bad_message", "update needs a part")
    return Update(seq, data["part"], claimed)


# -- what the server sends -------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as the UTF-8 JSON of a text message: compact."""
    return orjson.dumps(message)


def document_json(room: str, steps: int, parts: Mapping[str, Part]) -> bytes:
    """The document's JSON, built once per revision and shared by every snapshot of it."""
    return orjson.dumps({"room": room, "steps": steps, "parts": parts})


def snapshot_message(*, you: str, presence_id: str, revision: int, seq: int, document: bytes) -> bytes:
    """The current Shared Data: first message after ``hello``, and the answer to ``fetch``."""
    return (b'{"type":"snapshot","v":1,"you":"%s","id":"%s","revision":%d,"seq":%d,"doc":%s}'
            % (you.encode(), presence_id.encode(), revision, seq, document))


def update_message(*, user: str, seq: int, revision: int, part: Part | None) -> bytes:
    """One accepted part (``None``: the part was removed), sent to every other client of the room."""
    return orjson.dumps({"type": "update", "user": user, "seq": seq, "revision": revision, "part": part})


def ack_message(*, seq: int, revision: int) -> bytes:
    """Confirmation to the sender: update ``seq`` is durable as room ``revision``."""
    return b'{"type":"ack","seq":%d,"revision":%d}' % (seq, revision)


def presence_entry(presence_id: str, user: str, playing: bool, bpm: float | None) -> dict[str, Any]:
    """One connection's entry in presence."""
    return {"id": presence_id, "user": user, "playing": playing, "bpm": bpm}


def presence_table(entries: Iterable[orjson.Fragment]) -> bytes:
    """The whole presence table of a room, from its entries already encoded: replaces whatever the client had."""
    return orjson.dumps({"type": "presence", "users": list(entries)})


def presence_changes(changed: Iterable[Mapping[str, Any]], left: Iterable[str]) -> bytes:
    """What changed in presence since the last message: entries new or changed, and the ids that left."""
    return orjson.dumps({"type": "presence", "changed": list(changed), "left": list(left)})


def error_message(problem: Invalid, seq: int | None = None) -> bytes:
    """An error answer; ``seq`` names the refused update when there is one."""
    message: dict[str, Any] = {"type": "error", "code": problem.code, "message": problem.message}
    if seq is not None:
        message["seq"] = seq
    return orjson.dumps(message)
