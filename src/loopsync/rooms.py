"""A room's Shared Data, its members and the rules of accepting an update, with no I/O.

The server keeps one :class:`Room` per room that has members (or had them a
moment ago): the committed Shared Data (every user's latest
:class:`Accepted` record and the room's revision), the members' presence,
and caches of what every snapshot and presence table of the current state
looks like. It feeds the room what its connections say and sends what the
room returns.

An update's fate is decided in two steps. :meth:`Room.check` applies the
rules that need no state: ownership (from the connection's user, never from
the message) and the part's shape. :func:`sequence` then decides, for a
batch of updates about to be committed together, which ones are accepted
and with which revision: the user's seq must be above their last accepted
one (and at most :data:`~loopsync.protocol.MAX_SEQ_STEP` above it), and a
room holding :data:`MAX_PARTS` parts makes room for a new user's part by
removing the part of an absent user that was written longest ago. Only
once the store has committed a batch does the server :meth:`Room.apply` its
records, so the room never shows what a crash could still take back.
"""

from __future__ import annotations

import bisect
from typing import Any, Final, NamedTuple, Union

import orjson

from .document import DEFAULT_STEPS, Invalid, Part, check_part
from .protocol import FREE_SEQS, MAX_SEQ_STEP, Update, document_json, presence_changes, presence_entry, presence_table

MAX_CONNECTIONS: Final = 512
"""Connections in one room (a user's tabs count one each)."""
MAX_USERS: Final = 256
"""Different users connected to one room at once."""
MAX_PARTS: Final = 256
"""Parts one room holds; a new user's part then replaces the oldest part of an absent user."""


class Accepted(NamedTuple):
    """A committed change of one user's part: what the store makes durable and the room applies.

    ``part`` ``None`` is a removal (the part gave way to a new user's; the
    user's seq starts again from 0). A named tuple rather than a frozen
    dataclass: one is made for every update. ``part`` is never changed in
    place, so the record, the room and the store share it.
    """

    room: str
    user: str
    seq: int
    revision: int
    part: Part | None


class RoomRecord(NamedTuple):
    """A room as the store has it: its revision and each user's latest record, oldest first."""

    revision: int
    records: list[Accepted]


class Proposal(NamedTuple):
    """An update that passed :meth:`Room.check`, on its way to the store with its room."""

    room: Room
    user: str
    seq: int
    part: Part


Outcome = Union[list[Accepted], Invalid]
"""What :func:`sequence` (or a store that sequences in its database) decides for one proposal."""


class Member:
    """One connection's presence in a room."""

    __slots__ = ("id", "user", "playing", "bpm", "announced", "_json")

    def __init__(self, member_id: str, user: str, playing: bool, bpm: float | None) -> None:
        self.id = member_id
        self.user = user
        self.playing = playing
        self.bpm = bpm
        self.announced = False
        """Some connection has been told of this member (so its leaving must be told too)."""
        self._json: orjson.Fragment | None = None

    def entry(self) -> dict[str, Any]:
        return presence_entry(self.id, self.user, self.playing, self.bpm)

    def entry_json(self) -> orjson.Fragment:
        """The entry encoded once per change of it: every joiner's table reuses the others' entries."""
        if self._json is None:
            self._json = orjson.Fragment(_kept(orjson.dumps(self.entry())))
        return self._json

    def set_transport(self, playing: bool, bpm: float | None) -> None:
        self.playing = playing
        if bpm is not None:
            self.bpm = bpm
        self._json = None


def _kept(encoded: bytes) -> bytes:
    """A copy of its exact size, for JSON kept beyond the moment: orjson's bytes hold about 4 KiB however short they are."""
    return bytes(memoryview(encoded))


class Room:
    """Committed Shared Data of one room, and who is connected to it."""

    __slots__ = ("name", "steps", "revision", "records", "members", "_users", "_order", "_document", "_table", "_changes")

    def __init__(self, name: str, record: RoomRecord | None = None, steps: int = DEFAULT_STEPS) -> None:
        self.name = name
        self.steps = steps
        self.revision = 0
        self.records: dict[str, Accepted] = {}
        """Each user's latest record (never a removal: a removed user has none)."""
        self.members: dict[str, Member] = {}
        self._users: dict[str, int] = {}
        """Connected users and how many connections each has."""
        self._order: list[tuple[str, str]] = []
        """(user, member id) of every member, kept sorted: the presence table's order without a sort per joiner."""
        self._document: bytes | None = None
        self._table: bytes | None = None
        self._changes: dict[str, Member | None] = {}
        """Presence not yet told: member id -> its entry, or ``None`` when it left."""
        if record is not None:
            self.revision = record.revision
            for accepted in record.records:
                self.records[accepted.user] = accepted

    # -- Shared Data -----------------------------------------------------------

    def check(self, user: str, update: Update) -> Invalid | None:
        """The rules that need no state: ``user`` may write only their own part, and it must fit the room."""
        if update.claimed_user is not None and update.claimed_user != user:
            return Invalid("forbidden", f"you are {user!r} and may not write the part of {update.claimed_user[:40]!r}")
        return check_part(update.part, self.steps)

    def apply(self, accepted: Accepted) -> None:
        """Apply a committed record; records come in revision order."""
        if accepted.part is None:
            self.records.pop(accepted.user, None)
        else:
            self.records[accepted.user] = accepted
        self.revision = accepted.revision
        self._document = None

    def seq_of(self, user: str) -> int:
        """The last seq accepted from ``user`` (0 if none)."""
        record = self.records.get(user)
        return record.seq if record is not None else 0

    def parts(self) -> dict[str, Part]:
        """Every user's part, by user."""
        return {user: record.part for user, record in sorted(self.records.items()) if record.part is not None}

    def document(self) -> bytes:
        """The document's JSON at the committed revision, built once per revision for every snapshot."""
        if self._document is None:
            self._document = _kept(document_json(self.name, self.steps, self.parts()))
        return self._document

    # -- members and presence --------------------------------------------------------

    def join(self, member_id: str, user: str, playing: bool, bpm: float | None) -> Invalid | None:
        """Add a connection, unless the room has :data:`MAX_CONNECTIONS` or :data:`MAX_USERS` connected users."""
        if len(self.members) >= MAX_CONNECTIONS:
            return Invalid("room_full", f"room {self.name!r} has {MAX_CONNECTIONS} connections already")
        users = self._users
        if user not in users and len(users) >= MAX_USERS:
            return Invalid("room_full", f"room {self.name!r} has {MAX_USERS} users connected already")
        member = self.members[member_id] = Member(member_id, user, playing, bpm)
        users[user] = users.get(user, 0) + 1
        bisect.insort(self._order, (user, member_id))
        self._changes[member_id] = member
        self._table = None
        return None

    def leave(self, member_id: str) -> None:
        """Forget a connection; its user's part stays in Shared Data."""
        member = self.members.pop(member_id, None)
        if member is None:
            return
        users = self._users
        users[member.user] -= 1
        if not users[member.user]:
            del users[member.user]
        del self._order[bisect.bisect_left(self._order, (member.user, member_id))]
        if member.announced:
            self._changes[member_id] = None
        else:
            self._changes.pop(member_id, None)  # nobody heard of it: nobody needs to hear it left
        self._table = None

    def set_transport(self, member_id: str, playing: bool, bpm: float | None) -> bool:
        """Record a member's play/pause state and tempo (``bpm`` ``None``: unchanged); whether anything changed."""
        member = self.members[member_id]
        if member.playing == playing and (bpm is None or member.bpm == bpm):
            return False
        member.set_transport(playing, bpm)
        self._changes[member_id] = member
        self._table = None
        return True

    def present_users(self) -> dict[str, int]:
        """Users with at least one connection to the room (and how many connections each has)."""
        return self._users

    def presence_table(self, reader: str | None = None) -> bytes:
        """The whole presence table, for member ``reader`` (a joiner, one that was behind) or for all (``None``).

        Everyone in it but the reader counts as told: a joiner that leaves
        before anyone else heard of it leaves no ``left`` behind.
        """
        for member_id, change in self._changes.items():  # every member not among the changes was told already
            if change is not None and member_id != reader:
                change.announced = True
        if self._table is None:
            members = self.members
            self._table = _kept(presence_table(members[member_id].entry_json() for _, member_id in self._order))
        return self._table

    @property
    def presence_changed(self) -> bool:
        """Presence has changes not yet told."""
        return bool(self._changes)

    def take_presence_changes(self, limit: int) -> bytes | None:
        """The next presence changes message (at most ``limit`` entries, oldest changes first), or ``None``.

        When more than ``limit`` changes wait and the table is at most half
        as long (members come and go faster than they can be told), it is
        the whole table instead: one message says it all, and what waits
        stays bounded by the room's size. (A storm of ``transport`` changes
        never gets there: a member waits as one change at most.)
        """
        if not self._changes:
            return None
        if len(self._changes) > limit and len(self._changes) >= 2 * len(self.members):
            table = self.presence_table()
            self._changes.clear()
            return table
        changed: list[dict[str, Any]] = []
        left: list[str] = []
        for member_id in list(self._changes)[:limit]:
            member = self._changes.pop(member_id)
            if member is None:
                left.append(member_id)
            else:
                member.announced = True
                changed.append(member.entry())
        return presence_changes(changed, left)

    @property
    def idle(self) -> bool:
        """Nobody is connected."""
        return not self.members


class _Tentative:
    """A room's state while one batch is sequenced: the committed records with the batch's changes on top."""

    __slots__ = ("room", "revision", "changes", "part_count")

    def __init__(self, room: Room) -> None:
        self.room = room
        self.revision = room.revision
        self.changes: dict[str, Accepted | None] = {}
        self.part_count = len(room.records)

    def record(self, user: str) -> Accepted | None:
        if user in self.changes:
            return self.changes[user]
        return self.room.records.get(user)

    def accept(self, user: str, seq: int, part: Part) -> list[Accepted] | Invalid:
        record = self.record(user)
        last_seq = record.seq if record is not None else 0
        if seq <= last_seq:
            return Invalid("stale_seq", f"seq {seq} is not above the last accepted seq {last_seq}")
        if seq > max(last_seq, FREE_SEQS) + MAX_SEQ_STEP:
            return Invalid("bad_seq", f"seq {seq} is more than {MAX_SEQ_STEP} above the last accepted seq {last_seq} (above 2^52, seqs grow by at most 2^20 per update)")
        accepted: list[Accepted] = []
        if record is None and self.part_count >= MAX_PARTS:
            victim = self._oldest_absent(user)
            if victim is None:
                return Invalid("room_full", f"room {self.room.name!r} has {MAX_PARTS} parts, all of connected users")
            self.revision += 1
            removal = Accepted(self.room.name, victim.user, 0, self.revision, None)
            self.changes[victim.user] = None
            self.part_count -= 1
            accepted.append(removal)
        self.revision += 1
        if record is None:
            self.part_count += 1
        new = Accepted(self.room.name, user, seq, self.revision, part)
        self.changes[user] = new
        accepted.append(new)
        return accepted

    def _oldest_absent(self, user: str) -> Accepted | None:
        present = self.room.present_users()
        oldest: Accepted | None = None
        for candidate_user in set(self.room.records) | set(self.changes):
            candidate = self.record(candidate_user)
            if candidate is None or candidate_user == user or candidate_user in present:
                continue
            if oldest is None or candidate.revision < oldest.revision:
                oldest = candidate
        return oldest


def sequence(batch: list[Proposal]) -> list[list[Accepted] | Invalid]:
    """Decide a batch of proposals against their rooms' committed state, in order (a store without a database's own rules calls it).

    Proposals of one room see the ones before them in the batch. Accepted
    proposals get consecutive revisions; nothing is applied to the rooms
    (the caller does that once the batch is committed).
    """
    tentative: dict[int, _Tentative] = {}
    outcomes: list[list[Accepted] | Invalid] = []
    for proposal in batch:
        state = tentative.get(id(proposal.room))
        if state is None:
            state = tentative[id(proposal.room)] = _Tentative(proposal.room)
        outcomes.append(state.accept(proposal.user, proposal.seq, proposal.part))
    return outcomes
