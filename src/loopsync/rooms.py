"""A room's Shared Data and membership: the server's rules, with no I/O.

The server feeds a :class:`Room` what its connections say and sends what the
room returns; the store persists :class:`Accepted` records. Ownership comes
from the ``user`` the connection joined as, never from the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .document import DEFAULT_STEPS, MAX_PARTS, Invalid, Part, Parts, check_part, copy_part
from .protocol import Update

MAX_MEMBERS = 512


class Accepted(NamedTuple):
    """An update the room applied: what the store must make durable before anyone hears of it.

    A named tuple rather than a frozen dataclass: one is made for every
    update, and a tuple is built in a fraction of the time. ``part`` is
    never changed in place (a later update replaces the whole part), so the
    record, both copies of the room and the store may share it.
    """

    room: str
    user: str
    seq: int
    revision: int
    part: Part


@dataclass
class Member:
    """One connection's presence in a room."""

    user: str
    playing: bool = False
    bpm: float | None = None


@dataclass
class Room:
    """Shared Data of one room plus who is connected to it.

    ``seqs[user]`` is the highest update seq accepted from ``user``: updates
    must arrive with a larger one, which makes resends after a reconnect safe
    (a repeated update is refused as ``stale_seq``, never applied twice).
    """

    name: str
    steps: int = DEFAULT_STEPS
    parts: Parts = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    revision: int = 0
    members: dict[int, Member] = field(default_factory=dict)

    def join(self, connection_id: int, user: str, playing: bool, bpm: float | None) -> Invalid | None:
        """Add a connection; refuse it when the room is full."""
        if len(self.members) >= MAX_MEMBERS:
            return Invalid("room_full", f"room {self.name!r} has {MAX_MEMBERS} connections already")
        users = self._users()
        if user not in users and len(users) >= MAX_PARTS:
            return Invalid("room_full", f"room {self.name!r} has {MAX_PARTS} users already")
        self.members[connection_id] = Member(user, playing, bpm)
        return None

    def leave(self, connection_id: int) -> None:
        """Forget a connection; its user's part stays in Shared Data."""
        self.members.pop(connection_id, None)

    def set_transport(self, connection_id: int, playing: bool, bpm: float | None) -> None:
        """Record a member's play/pause state and tempo for presence."""
        member = self.members[connection_id]
        member.playing = playing
        if bpm is not None:
            member.bpm = bpm

    def accept(self, user: str, update: Update) -> Accepted | Invalid:
        """Validate ``user``'s update and apply it whole, or refuse it whole."""
        if update.claimed_user is not None and update.claimed_user != user:
            return Invalid("forbidden", f"you are {user!r} and may not write the part of {update.claimed_user[:40]!r}")
        problem = check_part(update.part, self.steps)
        if problem:
            return problem
        last_seq = self.seqs.get(user, 0)
        if update.seq <= last_seq:
            return Invalid("stale_seq", f"seq {update.seq} is not above the last accepted seq {last_seq}")
        if user not in self.parts and len(self.parts) >= MAX_PARTS:
            return Invalid("room_full", f"room {self.name!r} has {MAX_PARTS} parts already")
        part = copy_part(update.part)
        self.revision += 1
        self.parts[user] = part
        self.seqs[user] = update.seq
        return Accepted(self.name, user, update.seq, self.revision, part)

    def restore(self, accepted: Accepted) -> None:
        """Apply a part that is already accepted: at start-up from the store, and to the server's committed copy."""
        self.parts[accepted.user] = accepted.part
        self.seqs[accepted.user] = accepted.seq
        if accepted.revision > self.revision:
            self.revision = accepted.revision

    def presence(self) -> list[dict[str, Any]]:
        """Presence entries, one per connection, sorted by user."""
        entries = [{"user": m.user, "playing": m.playing, "bpm": m.bpm} for m in self.members.values()]
        return sorted(entries, key=lambda entry: (entry["user"], not entry["playing"]))

    def _users(self) -> set[str]:
        return set(self.parts) | {member.user for member in self.members.values()}
