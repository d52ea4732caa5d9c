"""A client's sync rules and transport clock, with no I/O and no clock reads.

:class:`ClientSync` is the client side of DESIGN.md ("Client, while playing"
and "while paused"): it takes the server's messages and the user's edits and
returns the messages to send. :class:`LoopClock` maps a monotonic time that
the caller passes in to steps and loops, with pause holding the position.
The headless client drives both; ``web/sync.js`` is the browser's copy of
``ClientSync`` and runs the same vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .document import DEFAULT_STEPS, Part, Parts, copy_part, differing_users, empty_part, merge_at_sync

Message = dict[str, Any]


class ClientSync:
    """Local Data, pending Shared Data and the user's unconfirmed edits.

    Three copies of the document matter:

    - ``shared``: the latest Shared Data heard from the server (pending while
      playing; other users' parts are taken from it only at a sync);
    - ``loop_parts``: what the current loop plays: other users' parts as of
      the last sync, and the user's own part, live (own edits are heard as
      soon as the playhead reaches them);
    - ``confirmed``: the own part as the server last confirmed it, so that a
      difference from the live own part means there is something to send.
    """

    def __init__(self, me: str, sound: str = "kick") -> None:
        self.me = me
        self.steps = DEFAULT_STEPS
        self.playing = False
        self.joined = False
        self.shared: Parts = {}
        self.loop_parts: Parts = {}
        self.own: Part = empty_part(self.steps, sound)
        self.confirmed: Part | None = None
        self.confirmed_seq = 0
        self.next_seq = 1
        self.in_flight: dict[int, Part] = {}
        self.revision = 0

    # -- what the user does -------------------------------------------------

    def set_step(self, step: int, value: int) -> None:
        """Set one step of the user's own part; heard at once, sent at the next sync."""
        if not 0 <= step < self.steps:
            raise ValueError(f"step must be from 0 to {self.steps - 1}, got {step}")
        self.own["steps"][step] = 1 if value else 0
        self.loop_parts[self.me] = self.own

    def toggle(self, step: int) -> None:
        """Flip one step of the user's own part."""
        if not 0 <= step < self.steps:
            raise ValueError(f"step must be from 0 to {self.steps - 1}, got {step}")
        self.set_step(step, 1 - self.own["steps"][step])

    def set_sound(self, sound: str) -> None:
        """Choose the sound of the user's own part."""
        self.own["sound"] = sound
        self.loop_parts[self.me] = self.own

    def play(self) -> list[Message]:
        """Start the clock: sync at once (others' parts are already current) and send own edits."""
        self.playing = True
        return self.sync()

    def pause(self) -> list[Message]:
        """Stop the clock; from now on other users' parts apply at once and nothing is sent."""
        self.playing = False
        self._take_shared()
        return []

    # -- the sync moment ----------------------------------------------------

    def sync(self) -> list[Message]:
        """Call at Loop Start - lead: take others' parts, then send own part if it changed.

        Returns the update to send (or nothing). When the window is missed the
        caller simply calls this before the following Loop Start.
        """
        self._take_shared()
        return self._send_own() if self.playing else []

    def dirty(self) -> bool:
        """True when the own part differs from what the server last confirmed."""
        return self.own != self.confirmed and not (self.confirmed is None and not any(self.own["steps"]))

    def pending_users(self) -> list[str]:
        """Other users whose arrived changes wait for the next Loop Start."""
        return differing_users(self.loop_parts, self.shared, self.me)

    def local_data(self) -> dict[str, Any]:
        """Local Data in the document schema."""
        return {"steps": self.steps, "parts": {user: copy_part(part) for user, part in sorted(self.loop_parts.items())}}

    # -- what the server says -------------------------------------------------

    def on_message(self, message: Mapping[str, Any]) -> list[Message]:
        """Feed one server message; returns what to send in answer."""
        kind = message.get("type")
        if kind == "snapshot":
            return self._on_snapshot(message)
        if kind == "update":
            self._on_update(message)
        elif kind == "ack":
            self._on_ack(int(message["seq"]))
        elif kind == "error":
            return self._on_error(message)
        return []

    def _on_snapshot(self, message: Mapping[str, Any]) -> list[Message]:
        doc = message["doc"]
        first = not self.joined
        self.joined = True
        self.revision = int(message["revision"])
        if doc["steps"] != self.steps:
            self.steps = int(doc["steps"])
            self.own = empty_part(self.steps, self.own["sound"])
        self.shared = {user: copy_part(part) for user, part in doc["parts"].items()}
        server_seq = int(message["seq"])
        server_own = self.shared.get(self.me)
        had_unconfirmed = self.dirty()
        if server_seq >= self.confirmed_seq and server_own is not None:
            # The server holds something we may not know is confirmed: our own
            # in-flight update whose ack was lost, or another tab's edit.
            self.confirmed, self.confirmed_seq = copy_part(server_own), server_seq
            if not had_unconfirmed:
                self.own = copy_part(server_own)
        self.in_flight.clear()
        self.next_seq = max(self.next_seq, server_seq + 1)
        if first or not self.playing:
            self._take_shared()
        self.loop_parts[self.me] = self.own
        # A reconnect resends unconfirmed edits at once; new edits wait for a sync.
        return self._send_own() if self.playing and had_unconfirmed else []

    def _on_update(self, message: Mapping[str, Any]) -> None:
        user = message["user"]
        self.revision = max(self.revision, int(message["revision"]))
        self.shared[user] = copy_part(message["part"])
        if user == self.me:
            # Another connection of the same user: adopt it unless we have our own edits.
            if not self.dirty():
                self.own = copy_part(message["part"])
                self.loop_parts[self.me] = self.own
            self.confirmed, self.confirmed_seq = copy_part(message["part"]), int(message["seq"])
            self.next_seq = max(self.next_seq, self.confirmed_seq + 1)
        elif not self.playing:
            self.loop_parts[user] = copy_part(message["part"])

    def _on_ack(self, seq: int) -> None:
        part = self.in_flight.get(seq)
        if part is None:
            return
        self.confirmed, self.confirmed_seq = part, seq
        self.shared[self.me] = copy_part(part)
        for old in [s for s in self.in_flight if s <= seq]:
            del self.in_flight[old]

    def _on_error(self, message: Mapping[str, Any]) -> list[Message]:
        seq = message.get("seq")
        if seq is None:
            return []
        self.in_flight.pop(seq, None)
        if message.get("code") == "stale_seq":
            # Our counter is behind the server's (another tab, a lost store):
            # ask for the current Shared Data, which carries the server's seq.
            return [{"type": "fetch"}]
        return []

    # -- helpers --------------------------------------------------------------

    def _take_shared(self) -> None:
        self.loop_parts = merge_at_sync({self.me: self.own}, self.shared, self.me)
        self.loop_parts[self.me] = self.own

    def _send_own(self) -> list[Message]:
        if not self.dirty() or any(part == self.own for part in self.in_flight.values()):
            return []
        seq = self.next_seq
        self.next_seq += 1
        part = copy_part(self.own)
        self.in_flight[seq] = part
        return [{"type": "update", "seq": seq, "part": part}]


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

    @property
    def step_seconds(self) -> float:
        """Length of one step."""
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
        """Change tempo, keeping the position."""
        position = self.position_steps(now_seconds)
        self.bpm = bpm
        if self.playing:
            self.origin_seconds = now_seconds - position * self.step_seconds
        else:
            self.held_position_steps = position

    def next_step(self, now_seconds: float) -> int:
        """The first step whose time is at or after ``now_seconds``."""
        return math.ceil(self.position_steps(now_seconds) - 1e-9)

    def step_due_seconds(self, step: int) -> float:
        """When step ``step`` sounds (only meaningful while playing)."""
        return self.origin_seconds + step * self.step_seconds

    def loop_of(self, step: int) -> int:
        """The loop number of an absolute step."""
        return step // self.steps

    def sync_due_seconds(self, loop: int, lead_seconds: float) -> float:
        """The sync moment of loop ``loop``: its Loop Start minus the lead."""
        return self.step_due_seconds(loop * self.steps) - lead_seconds
