"""rooms.py: ownership, validation, the seq and part rules of a batch, capacity and presence, with no I/O."""

from __future__ import annotations

import json

import pytest

from loopsync.document import Invalid
from loopsync.protocol import FREE_SEQS, MAX_SEQ_STEP, Update
from loopsync.rooms import MAX_CONNECTIONS, MAX_PARTS, MAX_USERS, Accepted, Proposal, Room, RoomRecord, sequence

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}
HAT = {"sound": "hat", "steps": [0, 0, 1, 0] * 4}


CHECK = [
    # (user, update, error code or None when it passes)
    ("alice", Update(6, HAT, None), None),
    ("alice", Update(6, HAT, "alice"), None),
    ("alice", Update(6, HAT, "bob"), "forbidden"),
    ("alice", Update(6, {"sound": "hat"}, None), "bad_part"),
    ("alice", Update(6, {"sound": "hat", "steps": [0] * 8}, None), "bad_part"),
    ("alice", Update(6, {"sound": "hat", "steps": [0] * 16, "mute": True}, None), "bad_part"),
    ("alice", Update(6, {"sound": "bell", "steps": [0] * 16}, None), "bad_part"),
    ("alice", Update(6, {"sound": "hat", "steps": [False] * 16}, None), "bad_part"),
    ("alice", Update(6, {"sound": "hat", "steps": [0.0] * 16}, None), "bad_part"),
    ("alice", Update(6, ["hat"], None), "bad_part"),  # type: ignore[arg-type]
    ("alice", Update(6, None, None), "bad_part"),  # type: ignore[arg-type]
    # forbidden is checked before anything else, so a foreign bad part is still forbidden
    ("alice", Update(1, {"sound": "bell"}, "bob"), "forbidden"),
]


@pytest.mark.parametrize("user, update, code", CHECK, ids=[f"{row[2] or 'ok'}-{i}" for i, row in enumerate(CHECK)])
def test_check(user: str, update: Update, code: str | None) -> None:
    """The stateless rules: a user writes only their own part, and it must have the room's shape."""
    result = Room("demo").check(user, update)
    assert (result.code if result else None) == code


def room_with(*records: Accepted) -> Room:
    return Room("demo", RoomRecord(max((r.revision for r in records), default=0), list(records)))


SEQUENCE = [
    # (the batch as (user, seq), the outcomes as revision or error code)
    ([("alice", 6)], [2]),
    ([("bob", 1)], [2]),
    ([("alice", 5)], ["stale_seq"]),
    ([("alice", 4)], ["stale_seq"]),
    ([("alice", 5 + MAX_SEQ_STEP)], [2]),
    ([("alice", FREE_SEQS + MAX_SEQ_STEP)], [2]),  # below 2^52 any jump is fine
    ([("alice", FREE_SEQS + MAX_SEQ_STEP + 1)], ["bad_seq"]),
    ([("alice", 2**53 - 1)], ["bad_seq"]),
    ([("alice", 6), ("alice", 6), ("alice", 7)], [2, "stale_seq", 3]),
    ([("alice", 7), ("bob", 1), ("alice", 6)], [2, 3, "stale_seq"]),
]


@pytest.mark.parametrize("batch, expected", SEQUENCE, ids=[f"sequence-{i}" for i in range(len(SEQUENCE))])
def test_sequence(batch: list[tuple[str, int]], expected: list[int | str]) -> None:
    """A batch is decided in order against committed state plus the batch so far; accepted ones get consecutive revisions."""
    room = room_with(Accepted("demo", "alice", 5, 1, KICK))
    outcomes = sequence([Proposal(room, user, seq, HAT) for user, seq in batch])
    got = [outcome.code if isinstance(outcome, Invalid) else outcome[-1].revision for outcome in outcomes]
    assert got == expected
    assert room.revision == 1 and room.records["alice"].seq == 5  # nothing applied yet


def test_a_new_user_at_max_parts_removes_the_oldest_part_of_an_absent_user() -> None:
    """With 256 parts, a new user's part first removes the absent user's part written longest ago; a connected user's never."""
    room = room_with(*(Accepted("demo", f"u{index:03}", 1, index + 1, KICK) for index in range(MAX_PARTS)))
    room.join("c1", "u000", False, None)  # u000 is connected: its part stays
    [outcome] = sequence([Proposal(room, "late", 1, HAT)])
    assert outcome == [Accepted("demo", "u001", 0, MAX_PARTS + 1, None), Accepted("demo", "late", 1, MAX_PARTS + 2, HAT)]
    for record in outcome:
        room.apply(record)
    assert "u001" not in room.records and len(room.records) == MAX_PARTS and room.seq_of("u001") == 0
    # the removed user comes back with any seq: it is a new user again, and the next oldest gives way
    [again] = sequence([Proposal(room, "u001", 1, KICK)])
    assert isinstance(again, list) and again[0].user == "u002" and again[0].part is None


def test_a_room_of_connected_parts_is_full() -> None:
    """When every one of the 256 parts belongs to a connected user, a new user's part is room_full."""
    room = room_with(*(Accepted("demo", f"u{index:03}", 1, index + 1, KICK) for index in range(MAX_PARTS)))
    for index in range(MAX_PARTS):
        room.join(f"c{index}", f"u{index:03}", False, None)
    [outcome] = sequence([Proposal(room, "late", 1, HAT)])
    assert isinstance(outcome, Invalid) and outcome.code == "room_full"


def test_join_counts_connections_and_connected_users() -> None:
    """A room holds 512 connections and 256 connected users; a second tab is no new user; leaving makes room."""
    room = Room("demo")
    for index in range(MAX_USERS):
        assert room.join(f"c{index}", f"u{index}", False, None) is None
    problem = room.join("extra", "late", False, None)
    assert problem is not None and problem.code == "room_full"
    assert room.join("tab", "u3", False, None) is None
    room.leave("c0")
    assert room.join("late", "late", False, None) is None
    crowded = Room("crowded")
    for index in range(MAX_CONNECTIONS):
        assert crowded.join(f"c{index}", "alice", False, None) is None
    problem = crowded.join("one-more", "alice", False, None)
    assert problem is not None and problem.code == "room_full"


def test_presence_is_a_table_then_changes() -> None:
    """The table lists every connection by user; changes carry new and changed entries, left ids, and no unannounced comings and goings."""
    room = Room("demo")
    room.join("1", "bob", False, None)
    room.join("2", "alice", True, 120.0)
    assert json.loads(room.presence_table()) == {"type": "presence", "users": [
        {"id": "2", "user": "alice", "playing": True, "bpm": 120.0}, {"id": "1", "user": "bob", "playing": False, "bpm": None}]}
    changes = room.take_presence_changes(64)
    assert changes is not None and [entry["id"] for entry in json.loads(changes)["changed"]] == ["1", "2"]
    assert room.take_presence_changes(64) is None
    assert room.set_transport("1", True, None)
    assert not room.set_transport("1", True, None)  # nothing changed: nothing to tell
    room.join("3", "carol", False, None)
    room.leave("3")  # came and went between two messages: nobody needs to hear of it
    room.leave("2")
    assert json.loads(room.take_presence_changes(64) or b"") == {
        "type": "presence", "changed": [{"id": "1", "user": "bob", "playing": True, "bpm": None}], "left": ["2"]}


def test_presence_changes_are_cut_into_messages_of_a_limit() -> None:
    """At most ``limit`` entries per message; the rest wait for the next one, oldest first."""
    room = Room("demo")
    for index in range(8):
        room.join(str(index), f"u{index}", False, None)
    room.take_presence_changes(64)
    for index in range(5):
        room.set_transport(str(index), True, None)
    first = json.loads(room.take_presence_changes(3) or b"")
    second = json.loads(room.take_presence_changes(3) or b"")
    assert [e["id"] for e in first["changed"]] == ["0", "1", "2"] and [e["id"] for e in second["changed"]] == ["3", "4"]


def test_more_changes_than_the_table_send_the_table() -> None:
    """Members coming and going faster than the limit: the next message is the whole table, and nothing is left waiting."""
    room = Room("demo")
    room.join("stay", "alice", False, None)
    room.take_presence_changes(64)
    for index in range(100):
        room.join(f"c{index}", "bob", False, None)
        room.presence_table(f"c{index + 1}")  # another joiner heard of it: its leaving must be told
    for index in range(99):
        room.leave(f"c{index}")
    assert json.loads(room.take_presence_changes(64) or b"") == {"type": "presence", "users": [
        {"id": "stay", "user": "alice", "playing": False, "bpm": None}, {"id": "c99", "user": "bob", "playing": False, "bpm": None}]}
    assert room.take_presence_changes(64) is None


def test_a_transport_storm_is_told_as_changes_never_as_tables() -> None:
    """Every member of a room of 100 changing at once: 64 changes, then the other 36 (a table would cost every member the whole room)."""
    room = Room("demo")
    for index in range(100):
        room.join(str(index), f"u{index}", False, None)
    room.take_presence_changes(64)
    room.take_presence_changes(64)
    for index in range(100):
        room.set_transport(str(index), True, 90.0)
    assert [len(json.loads(room.take_presence_changes(64) or b"")["changed"]) for _ in range(2)] == [64, 36]


def test_a_joiner_that_leaves_unheard_of_leaves_nothing_to_tell() -> None:
    """Its own table does not announce a joiner; a table another joiner got does."""
    room = Room("demo")
    room.join("stay", "alice", False, None)
    room.take_presence_changes(64)
    room.join("quick", "bob", False, None)
    room.presence_table("quick")
    room.leave("quick")
    assert room.take_presence_changes(64) is None
    room.join("seen", "bob", False, None)
    room.presence_table("seen")
    room.join("other", "carol", False, None)
    room.presence_table("other")
    room.leave("seen")
    message = json.loads(room.take_presence_changes(64) or b"")
    assert message["left"] == ["seen"] and [e["id"] for e in message["changed"]] == ["other"]


def test_apply_and_the_document_follow_committed_records() -> None:
    """Applied records change the parts, seqs and revision; a removal drops the part; the document is rebuilt once per revision."""
    room = Room("demo")
    room.apply(Accepted("demo", "bob", 3, 1, HAT))
    room.apply(Accepted("demo", "alice", 9, 2, KICK))
    document = room.document()
    assert room.document() is document
    assert json.loads(document) == {"room": "demo", "steps": 16, "parts": {"alice": KICK, "bob": HAT}}
    room.apply(Accepted("demo", "bob", 0, 3, None))
    assert json.loads(room.document())["parts"] == {"alice": KICK}
    assert room.revision == 3 and room.seq_of("bob") == 0 and room.seq_of("alice") == 9
