"""A client's sync rules and transport clock, with no I/O and no clock reads.

:class:`ClientSync` is the client side of DESIGN.md ("Client, while playing"
and "while paused"): it takes the server's messages and the user's edits and
returns the messages to send. :class:`LoopClock` maps a monotonic time that
the caller passes in to steps and loops, with pause holding the position.
The headless client (``client.py``) drives both; the browser's copy of
``ClientSync`` runs the same vectors (``tests/vectors/client.json``), so the
method names here are part of that contract (camelCase in JavaScript).
"""

from __future__ import annotations

import math

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .document import DEFAULT_STEPS, SOUNDS, Part, Parts, copy_part, differing_users, empty_part, merge_at_sync

Message = dict[str, Any]


class ClientSync:
    """Local Data, pending Shared Data and the user's unconfirmed edits.

    The state (``docs/protocol.md``, "The rules a client follows", is the
    same algorithm in prose):

    - ``shared``: the latest Shared Data heard from the server (pending while
      playing: other users' parts are taken from it only at a sync);
    - ``loop_parts``: what the current loop plays: other users' parts as of
      the last sync (or as they arrive, while paused), and the user's own
      part, live (``loop_parts[me] is own``: own edits are heard as soon as
      the playhead reaches them);
    - ``confirmed`` / ``confirmed_seq``: the own part as the server last
      confirmed it (``None`` while the server holds none) and its seq, so
      that a difference from the live own part means there is something to
      send;
    - ``in_flight``: updates sent on this connection and not answered yet,
      in the order they were sent (the last one is the newest: after a
      ``bad_seq`` the seqs start again lower, so the largest seq is not
      always the newest);
    - ``unanswered``: the newest update of a connection that closed before
      answering it: the server may have committed it, may not have, or may
      still commit it (after our reconnect's snapshot); it is settled once
      the server's seq of the user reaches it;
    - ``next_seq``: the seq of the next update.

    Nothing is sent while disconnected (between :meth:`on_disconnect` and the
    next ``snapshot``): the snapshot then says what the server holds, and the
    edits it lacks are resent.
    """

    def __init__(self, me: str, sound: str = "kick", steps: int = DEFAULT_STEPS) -> None:
        _check_sound(sound)
        self.me = me
        self.steps = steps
        self.playing = False
        self.connected = False
        self.revision = 0
        self.shared: Parts = {}
        self.own: Part = empty_part(steps, sound)
        self.loop_parts: Parts = {me: self.own}
        self.confirmed: Part | None = None
        self.confirmed_seq = 0
        self.next_seq = 1
        self.in_flight: dict[int, Part] = {}
        self.unanswered: tuple[int, Part] | None = None
        self.seq_reset = False
        """A ``bad_seq`` came: the next snapshot sets ``next_seq`` to its seq + 1, even lower."""

    # -- what the user does -------------------------------------------------

    def set_step(self, step: int, value: int) -> None:
        """Set one step of the user's own part; heard at once, sent at the next sync."""
        if type(step) is not int or not 0 <= step < self.steps:
            raise ValueError(f"step must be from 0 to {self.steps - 1}, got {step}")
        if value not in (0, 1):
            raise ValueError(f"step value must be 0 or 1, got {value}")
        self.own["steps"][step] = int(value)

    def toggle(self, step: int) -> None:
        """Flip one step of the user's own part."""
        if type(step) is not int or not 0 <= step < self.steps:
            raise ValueError(f"step must be from 0 to {self.steps - 1}, got {step}")
        self.own["steps"][step] = 1 - self.own["steps"][step]

    def set_sound(self, sound: str) -> None:
        """Choose the sound of the user's own part; sent at the next sync like a step edit."""
        _check_sound(sound)
        self.own["sound"] = sound

    def play(self) -> list[Message]:
        """Start the clock: sync at once and send the edits made while paused.

        Other users' parts are already current (they apply at once while
        paused), so this sync only decides what to send.
        """
        if self.playing:
            return []
        self.playing = True
        return self.sync()

    def pause(self) -> list[Message]:
        """Stop the clock; from now on other users' parts apply at once and nothing is sent."""
        if self.playing:
            self.playing = False
            self._take_shared()
        return []

    # -- the sync moment ----------------------------------------------------

    def sync(self) -> list[Message]:
        """Call at Loop Start - lead: take others' parts, then send the own part if it changed.

        Returns the update to send (or nothing). When the window is missed the
        caller skips it and calls this at the next loop's sync moment, so the
        loop already playing never changes under the listener.
        """
        self._take_shared()
        return self._send_own() if self.playing else []

    def dirty(self) -> bool:
        """True when the own part differs from what the server last confirmed.

        A silent part is not worth writing while the server holds none, so a
        fresh user who only picked a sound is not dirty yet.
        """
        if self.confirmed is None:
            return any(self.own["steps"])
        return self.own != self.confirmed

    def pending_users(self) -> list[str]:
        """Other users whose arrived changes wait for the next Loop Start."""
        return differing_users(self.loop_parts, self.shared, self.me)

    def local_data(self) -> dict[str, Any]:
        """Local Data in the document schema (a copy)."""
        return {"steps": self.steps, "parts": {user: copy_part(part) for user, part in sorted(self.loop_parts.items())}}

    # -- what the connection says ---------------------------------------------

    def on_disconnect(self) -> None:
        """The connection closed: its unanswered updates will never be answered.

        The newest of them is kept aside (``unanswered``): the server may
        have committed it before or after the close, and only the next
        snapshot can tell.
        """
        self.connected = False
        if self.in_flight:
            newest = next(reversed(self.in_flight))
            self.unanswered = (newest, self.in_flight[newest])
        self.in_flight.clear()

    def on_message(self, message: Mapping[str, Any]) -> list[Message]:
        """Feed one server message; returns what to send in answer."""
        kind = message.get("type")
        if kind == "snapshot":
            return self._on_snapshot(message)
        if kind == "update":
            self._on_update(message)
        elif kind == "ack":
            self._on_ack(message)
        elif kind == "error":
            return self._on_error(message)
        return []

    def _on_snapshot(self, message: Mapping[str, Any]) -> list[Message]:
        doc = message["doc"]
        if int(doc["steps"]) != self.steps:
            # The room's step count is fixed at creation; a part of another
            # length could never be accepted, so start from a silent one.
            self.steps = int(doc["steps"])
            self._set_own(empty_part(self.steps, self.own["sound"]))
            self.confirmed = None
            self.in_flight.clear()
            self.unanswered = None
        server_seq = int(message["seq"])
        parts = doc["parts"]
        server_own = parts.get(self.me)
        keep_own = self._has_own_edits(server_seq)
        self.connected = True
        self.revision = int(message["revision"])
        self.shared = {user: copy_part(part) for user, part in parts.items() if part is not None}
        # The snapshot is the authority on what the server holds of ours: an
        # update whose ack was lost is confirmed here, and a server that lost
        # data (a removed part) un-confirms what it forgot. Updates at or
        # below its seq are settled: committed, or never to be.
        for seq in [seq for seq in self.in_flight if seq <= server_seq]:
            del self.in_flight[seq]
        self.confirmed = copy_part(server_own) if server_own is not None else None
        self.confirmed_seq = server_seq
        if self.seq_reset and not self.in_flight:
            # After bad_seq: continue right above what the server has, even
            # if that is lower than our counter (every update sent on this
            # connection has been answered, so none of ours is above it).
            self.next_seq = server_seq + 1
            self.seq_reset = False
            self.unanswered = None
        else:
            self.next_seq = max(self.next_seq, server_seq + 1)
        self._settle_unanswered()
        if server_own is not None and not keep_own:
            # Nothing of ours is waiting: take what the server holds (our part
            # from an earlier session, or another tab's edit).
            self._set_own(copy_part(server_own))
        if not self.playing:
            self._take_shared()
        # Edits the server lacks go out at once while playing; paused, they wait for play.
        return self._send_own() if self.playing else []

    def _on_update(self, message: Mapping[str, Any]) -> None:
        user = message["user"]
        part = message.get("part")
        revision = message.get("revision")
        if revision is not None:
            self.revision = max(self.revision, int(revision))
        if user != self.me:
            if part is None:
                # The server removed that user's part (a full room made room for a new user).
                self.shared.pop(user, None)
                if not self.playing:
                    self.loop_parts.pop(user, None)
                return
            self.shared[user] = copy_part(part)
            if not self.playing:
                self.loop_parts[user] = copy_part(part)
            return
        if part is None:
            # Our own part removed (the server does not do it while we are
            # connected): the server holds none of ours at seq 0. Our own part
            # stays; if it has hits, the next sync writes it again.
            self.shared.pop(self.me, None)
            self.confirmed, self.confirmed_seq = None, 0
            self.unanswered = None
            return
        # Another connection of the same user (a second tab, or our own update
        # of a closed connection committed late) wrote our part.
        seq = int(message["seq"])
        if seq <= self.confirmed_seq:
            return
        keep_own = self._has_own_edits(seq)
        # Our updates at or below its seq are settled: the server accepted
        # them before it, or will refuse them (stale_seq).
        for old in [old for old in self.in_flight if old <= seq]:
            del self.in_flight[old]
        self.shared[self.me] = copy_part(part)
        self.confirmed, self.confirmed_seq = copy_part(part), seq
        self.next_seq = max(self.next_seq, seq + 1)
        self._settle_unanswered()
        if not keep_own:
            self._set_own(copy_part(part))

    def _on_ack(self, message: Mapping[str, Any]) -> None:
        seq = int(message["seq"])
        revision = message.get("revision")
        if revision is not None:
            self.revision = max(self.revision, int(revision))
        part = self.in_flight.get(seq)
        if part is None:
            return
        # Replies come in request order: whatever was sent before it has been answered.
        for old in list(self.in_flight):
            del self.in_flight[old]
            if old == seq:
                break
        if seq > self.confirmed_seq:
            self.confirmed, self.confirmed_seq = part, seq
            self.shared[self.me] = copy_part(part)
        self._settle_unanswered()

    def _on_error(self, message: Mapping[str, Any]) -> list[Message]:
        seq = message.get("seq")
        if seq is None:
            return []
        # A refused update stays unconfirmed: the next sync sends it again
        # (after unavailable or rate_limited, for instance).
        self.in_flight.pop(seq, None)
        code = message.get("code")
        if code == "stale_seq":
            # Our counter is behind the server's (another tab wrote): the
            # snapshot that answers a fetch carries the server's seq.
            return [{"type": "fetch"}]
        if code == "bad_seq":
            # Our counter is far above the server's (our part was removed and
            # its seq restarted): the snapshot answering the fetch resets it.
            self.seq_reset = True
            return [{"type": "fetch"}]
        return []

    # -- helpers --------------------------------------------------------------

    def _has_own_edits(self, server_seq: int) -> bool:
        """Must the own part win over the server's copy at ``server_seq``?

        Yes when the newest update we sent is above ``server_seq`` (it is on
        its way, or it was lost and must be resent), or when the user edited
        since sending it. An update of ours at or below ``server_seq`` is
        settled: the server's copy is as new as it or newer (another tab),
        so we follow the server unless the part changed since. With nothing
        sent, the test is whether the part differs from the confirmed one.
        """
        newest = self._newest_sent()
        if newest is None:
            return self.dirty()
        seq, part = newest
        return seq > server_seq or self.own != part

    def _settle_unanswered(self) -> None:
        # Once the server has accepted a seq of ours at or above it, the
        # unanswered update can never be committed any more: settled.
        if self.unanswered is not None and self.unanswered[0] <= self.confirmed_seq:
            self.unanswered = None

    def _newest_sent(self) -> tuple[int, Part] | None:
        if self.in_flight:
            seq = next(reversed(self.in_flight))
            return seq, self.in_flight[seq]
        return self.unanswered

    def _set_own(self, part: Part) -> None:
        self.own = part
        self.loop_parts[self.me] = part

    def _take_shared(self) -> None:
        self.loop_parts = merge_at_sync({self.me: self.own}, self.shared, self.me)
        self.loop_parts[self.me] = self.own

    def _send_own(self) -> list[Message]:
        if not self.connected:
            return []
        if self.in_flight:
            # Compare with the newest update on its way, not with any of them:
            # after A, B were sent, going back to A must be sent again.
            if self.own == self.in_flight[next(reversed(self.in_flight))]:
                return []
        elif not self.dirty():
            return []
        seq = self.next_seq
        self.next_seq += 1
        part = copy_part(self.own)
        self.in_flight[seq] = part
        return [{"type": "update", "seq": seq, "part": copy_part(part)}]


class PresenceTable:
    """Who is in the room: one entry per connection, kept from ``presence`` messages (no I/O).

    A ``presence`` with ``users`` replaces the whole table (the first one
    after a snapshot, or again for a connection that fell behind); one with
    ``changed`` and ``left`` upserts entries by ``id`` and removes the ids
    that left. The snapshot's ``id`` names this connection's own entry. A
    disconnect empties the table: the next connection gets a full one.
    """

    def __init__(self) -> None:
        self.own_id: str | None = None
        self.entries: dict[str, dict[str, Any]] = {}
        self.known = False
        """False until a full table has come on this connection."""

    def on_message(self, message: Mapping[str, Any]) -> bool:
        """Feed any server message; True when the table changed (only ``presence`` and ``snapshot`` can change it)."""
        kind = message.get("type")
        if kind == "snapshot":
            given = message.get("id")
            own_id = given if isinstance(given, str) else None
            changed = own_id != self.own_id
            self.own_id = own_id
            return changed
        if kind != "presence":
            return False
        users = message.get("users")
        if users is not None:
            # A server older than the ids sends whole tables only: its entries are kept by position.
            entries = (read_presence_entry(value, f"#{index}") for index, value in enumerate(users if isinstance(users, list) else []))
            self.entries = {entry["id"]: entry for entry in entries if entry is not None}
            self.known = True
            return True
        changed_entries = message.get("changed")
        for value in changed_entries if isinstance(changed_entries, list) else []:
            entry = read_presence_entry(value, None)
            if entry is not None:
                self.entries[entry["id"]] = entry
        left = message.get("left")
        for gone in left if isinstance(left, list) else []:
            self.entries.pop(str(gone), None)
        return True

    def on_disconnect(self) -> None:
        """The connection closed: the table is unknown until the next connection's full table."""
        self.own_id = None
        self.entries = {}
        self.known = False

    def listed(self) -> list[dict[str, Any]]:
        """Every entry, ordered by user and then by id (copies)."""
        return [entry for entries in self.by_user().values() for entry in entries]

    def by_user(self) -> dict[str, list[dict[str, Any]]]:
        """Entries grouped by user (two tabs of one user are one row), users and each user's entries sorted by id."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for entry_id in sorted(self.entries):
            entry = self.entries[entry_id]
            grouped.setdefault(str(entry.get("user")), []).append(dict(entry))
        return dict(sorted(grouped.items()))


def read_presence_entry(value: object, fallback_id: str | None) -> dict[str, Any] | None:
    """One presence entry as the table keeps it, or None when it is not one (rules.js's readPresenceEntry).

    ``user`` must be a non-empty string; ``id`` a string (a number is written
    as one), else ``fallback_id`` (None drops the entry); ``playing`` is True
    only when it is ``true``; ``bpm`` a finite number, else None.
    """
    if not isinstance(value, Mapping):
        return None
    user, given, bpm = value.get("user"), value.get("id"), value.get("bpm")
    if not isinstance(user, str) or not user:
        return None
    if isinstance(given, str):
        entry_id = given
    elif isinstance(given, (int, float)) and not isinstance(given, bool):
        entry_id = _js_number_text(given)
    elif fallback_id is not None:
        entry_id = fallback_id
    else:
        return None
    finite = isinstance(bpm, (int, float)) and not isinstance(bpm, bool) and math.isfinite(bpm)
    return {"id": entry_id, "user": user, "playing": value.get("playing") is True, "bpm": bpm if finite else None}


def _js_number_text(number: float) -> str:
    """A number as JavaScript's String() writes it, for the integers ids are (7 and 7.0 both give "7")."""
    return str(int(number)) if float(number).is_integer() and abs(number) < 2**53 else repr(number)


def _check_sound(sound: object) -> None:
    if sound not in SOUNDS:
        raise ValueError(f"sound must be one of {', '.join(SOUNDS)}, got {sound!r}")


@dataclass
class LoopClock:
    """Where a transport is, given a monotonic time in seconds passed in by the caller.

    Step ``n`` (counted from the first play, across loops) is due at
    ``origin_seconds + n * step_seconds``: absolute deadlines, so rounding
    and late wake-ups never add up to drift. Pause holds the position;
    play continues from it; a tempo change keeps the position too.
    """

    steps: int = DEFAULT_STEPS
    bpm: float = 120.0
    steps_per_beat: int = 4
    playing: bool = False
    origin_seconds: float = 0.0
    held_position_steps: float = 0.0

    def __post_init__(self) -> None:
        _check_bpm(self.bpm)

    @property
    def step_seconds(self) -> float:
        """Length of one step (a sixteenth note at ``bpm``)."""
        return 60.0 / self.bpm / self.steps_per_beat

    @property
    def loop_seconds(self) -> float:
        """Length of one loop."""
        return self.step_seconds * self.steps

    def position_steps(self, now_seconds: float) -> float:
        """Steps elapsed since the first play, as a real number."""
        if not self.playing:
            return self.held_position_steps
        return (now_seconds - self.origin_seconds) / self.step_seconds

    def play(self, now_seconds: float) -> None:
        """Start, or continue from the held position."""
        if not self.playing:
            self.origin_seconds = now_seconds - self.held_position_steps * self.step_seconds
            self.playing = True

    def pause(self, now_seconds: float) -> None:
        """Stop and hold the position."""
        if self.playing:
            self.held_position_steps = self.position_steps(now_seconds)
            self.playing = False

    def set_bpm(self, now_seconds: float, bpm: float) -> None:
        """Change tempo, keeping the position: the step in progress ends at the new tempo."""
        _check_bpm(bpm)
        position = self.position_steps(now_seconds)
        self.bpm = bpm
        if self.playing:
            self.origin_seconds = now_seconds - position * self.step_seconds
        else:
            self.held_position_steps = position

    def next_step(self, now_seconds: float) -> int:
        """The first step whose time is at or after ``now_seconds``."""
        # The tolerance keeps a step that is due exactly now from being
        # skipped by a rounding error in the division.
        return math.ceil(self.position_steps(now_seconds) - 1e-9)

    def step_due_seconds(self, step: int) -> float:
        """When step ``step`` sounds (only meaningful while playing)."""
        return self.origin_seconds + step * self.step_seconds

    def loop_of(self, step: int) -> int:
        """The loop number of an absolute step."""
        return step // self.steps

    def loop_start_seconds(self, loop: int) -> float:
        """The Loop Start of loop ``loop``: when its first step sounds."""
        return self.step_due_seconds(loop * self.steps)

    def sync_due_seconds(self, loop: int, lead_seconds: float) -> float:
        """The sync moment of loop ``loop``: its Loop Start minus the lead."""
        return self.loop_start_seconds(loop) - lead_seconds


def _check_bpm(bpm: float) -> None:
    if not (isinstance(bpm, (int, float)) and math.isfinite(bpm) and bpm > 0):
        raise ValueError(f"bpm must be a positive number, got {bpm!r}")
