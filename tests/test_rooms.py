"""rooms.Room: the server's rules (ownership, validation, seq order, limits, presence) with no I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loopsync import protocol
from loopsync.document import MAX_PARTS
from loopsync.protocol import Update
from loopsync.rooms import MAX_MEMBERS, Accepted, Room

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}
HAT = {"sound": "hat", "steps": [0, 0, 1, 0] * 4}


def room_with_alice_at_seq_5() -> Room:
    room = Room("demo")
    assert room.join(1, "alice", False, None) is None
    assert isinstance(room.accept("alice", Update(5, KICK, None)), Accepted)
    return room


ACCEPT = [
    # (user, update, error code or None when accepted)
    ("alice", Update(6, HAT, None), None),
    ("alice", Update(6, HAT, "alice"), None),
    ("bob", Update(1, HAT, None), None),
    ("alice", Update(2**53 - 1, HAT, None), None),
    ("alice", Update(6, HAT, "bob"), "forbidden"),
    ("bob", Update(1, HAT, "alice"), "forbidden"),
    ("alice", Update(5, HAT, None), "stale_seq"),
    ("alice", Update(4, HAT, None), "stale_seq"),
    ("alice", Update(6, {"sound": "hat"}, None), "bad_part"),
    ("alice", Update(6, {"sound": "hat", "steps": [0] * 8}, None), "bad_part"),
    ("alice", Update(6, {"sound": "hat", "steps": [0] * 16, "mute": True}, None), "bad_part"),
    ("alice", Update(6, {"sound": "bell", "steps": [0] * 16}, None), "bad_part"),
    ("alice", Update(6, {"sound": "hat", "steps": [False] * 16}, None), "bad_part"),
    ("alice", Update(6, {"sound": "hat", "steps": [0.0] * 16}, None), "bad_part"),
    ("alice", Update(6, ["hat"], None), "bad_part"),  # type: ignore[arg-type]
    # forbidden is checked before anything else, so a foreign bad part is still forbidden
    ("alice", Update(1, {"sound": "bell"}, "bob"), "forbidden"),
]


@pytest.mark.parametrize("user, update, code", ACCEPT, ids=[f"{row[2] or 'ok'}-{i}" for i, row in enumerate(ACCEPT)])
def test_accept(user: str, update: Update, code: str | None) -> None:
    """An update is applied whole with the next revision, or refused whole with its code."""
    room = room_with_alice_at_seq_5()
    before = (dict(room.parts), dict(room.seqs), room.revision)
    result = room.accept(user, update)
    if code is None:
        assert result == Accepted("demo", user, update.seq, 2, update.part)
        assert room.parts[user] == update.part and room.seqs[user] == update.seq and room.revision == 2
    else:
        assert not isinstance(result, Accepted) and result.code == code
        assert (room.parts, room.seqs, room.revision) == before


def test_accepted_part_is_a_copy() -> None:
    """Changing the peer's part object afterwards does not change Shared Data."""
    room = Room("demo")
    steps = [1] * 16
    room.accept("alice", Update(1, {"sound": "kick", "steps": steps}, None))
    steps[0] = 0
    assert room.parts["alice"]["steps"][0] == 1


def test_a_part_beyond_max_parts_is_refused() -> None:
    """At most MAX_PARTS (256) users ever write parts in a room."""
    room = Room("demo")
    for index in range(MAX_PARTS):
        assert isinstance(room.accept(f"u{index}", Update(1, KICK, None)), Accepted)
    result = room.accept("late", Update(1, KICK, None))
    assert not isinstance(result, Accepted) and result.code == "room_full"
    assert isinstance(room.accept("u0", Update(2, HAT, None)), Accepted)


JOIN = [
    # (connected users before, users with parts, joining user, error code or None)
    ([], [], "alice", None),
    ([f"u{i}" for i in range(MAX_PARTS - 1)], [], "late", None),
    ([f"u{i}" for i in range(MAX_PARTS)], [], "late", "room_full"),
    ([f"u{i}" for i in range(MAX_PARTS)], [], "u3", None),  # a second tab is not a new user
    ([], [f"u{i}" for i in range(MAX_PARTS)], "late", "room_full"),
    ([], [f"u{i}" for i in range(MAX_PARTS)], "u7", None),
    (["alice"] * (MAX_MEMBERS - 1), [], "alice", None),
    (["alice"] * MAX_MEMBERS, [], "alice", "room_full"),
]


@pytest.mark.parametrize("connected, writers, user, code", JOIN, ids=[f"{row[3] or 'ok'}-{i}" for i, row in enumerate(JOIN)])
def test_join(connected: list[str], writers: list[str], user: str, code: str | None) -> None:
    """A room holds MAX_MEMBERS (512) connections and MAX_PARTS (256) users (connected or with a part)."""
    room = Room("demo")
    for writer in writers:
        room.accept(writer, Update(1, KICK, None))
    for connection_id, member in enumerate(connected):
        assert room.join(connection_id, member, False, None) is None
    result = room.join(10_000, user, True, 120.0)
    assert (result.code if result else None) == code
    assert (10_000 in room.members) == (code is None)


def test_leave_keeps_the_part_and_frees_the_place() -> None:
    """Leaving forgets the connection, never the user's part."""
    room = Room("demo")
    room.join(1, "alice", False, None)
    room.accept("alice", Update(1, KICK, None))
    room.leave(1)
    room.leave(1)  # twice is harmless
    assert room.members == {} and room.parts == {"alice": KICK}


PRESENCE = [
    # (members as (user, playing, bpm), transport changes as (id, playing, bpm), expected presence)
    ([], [], []),
    ([("bob", False, None), ("alice", True, 120.0)], [],
     [{"user": "alice", "playing": True, "bpm": 120.0}, {"user": "bob", "playing": False, "bpm": None}]),
    ([("alice", False, 90.0)], [(0, True, None)], [{"user": "alice", "playing": True, "bpm": 90.0}]),
    ([("alice", False, 90.0)], [(0, True, 140.0), (0, False, None)], [{"user": "alice", "playing": False, "bpm": 140.0}]),
    ([("alice", False, None), ("alice", True, 100.0)], [],
     [{"user": "alice", "playing": True, "bpm": 100.0}, {"user": "alice", "playing": False, "bpm": None}]),
]


@pytest.mark.parametrize("members, changes, expected", PRESENCE, ids=[f"presence-{i}" for i in range(len(PRESENCE))])
def test_presence(members: list[tuple[str, bool, float | None]], changes: list[tuple[int, bool, float | None]], expected: list[dict[str, Any]]) -> None:
    """One entry per connection, sorted by user; an omitted bpm keeps the last one."""
    room = Room("demo")
    for connection_id, (user, playing, bpm) in enumerate(members):
        room.join(connection_id, user, playing, bpm)
    for connection_id, playing, bpm in changes:
        room.set_transport(connection_id, playing, bpm)
    assert room.presence() == expected


def test_restore_rebuilds_parts_seqs_and_revision() -> None:
    """Restoring stored records gives back parts, each user's seq and the room's revision, in any order."""
    room = Room("demo")
    room.restore(Accepted("demo", "bob", 3, 7, HAT))
    room.restore(Accepted("demo", "alice", 9, 4, KICK))
    assert room.parts == {"alice": KICK, "bob": HAT} and room.seqs == {"alice": 9, "bob": 3} and room.revision == 7
    stale = room.accept("alice", Update(9, HAT, None))
    assert not isinstance(stale, Accepted) and stale.code == "stale_seq"
    assert room.accept("alice", Update(10, HAT, None)) == Accepted("demo", "alice", 10, 8, HAT)


@pytest.mark.parametrize("sound", ["kick", "snare", "hat", "clap", "tom", "tone"])
@pytest.mark.parametrize("steps", [16, 32, 1])
def test_update_frame_carries_the_accepted_part_as_plain_json(sound: str, steps: int) -> None:
    """The frame the room's peers get holds the accepted part, fields in the document's order whatever the client sent."""
    room = Room("demo", steps=steps)
    pattern = [(index * 7 + steps) % 3 % 2 for index in range(steps)]
    accepted = room.accept("alice", Update(1, {"steps": pattern, "sound": sound}, None))
    assert isinstance(accepted, Accepted)
    frame = protocol.update_frame(user="alice", seq=1, revision=accepted.revision, part=accepted.part)
    assert json.loads(frame) == {"type": "update", "user": "alice", "seq": 1, "revision": 1, "part": {"sound": sound, "steps": pattern}}
    assert b'"part":{"sound":' in frame
