"""The client core with explicit ``now``: LoopClock's timing and the ClientSync details the vectors leave out.

No sockets, no sleeps. The shared rules of ClientSync are in
``tests/vectors/client.json`` (run by ``test_vectors.py``); these tests pin
the Python-only surface and the clock.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from loopsync.sync import ClientSync, LoopClock


def _snapshot(seq: int, parts: dict[str, dict[str, object]], revision: int = 0, steps: int = 4) -> dict[str, object]:
    return {"type": "snapshot", "v": 1, "you": "alice", "revision": revision, "seq": seq, "doc": {"room": "r", "steps": steps, "parts": parts}}


# -- LoopClock ----------------------------------------------------------------


@pytest.mark.parametrize("bpm", [120.0, 133.0, 97.3, 840.0])
def test_absolute_deadlines_do_not_drift(bpm: float) -> None:
    """Step n is due at origin + n·step to within a microsecond, even after 10^6 steps."""
    origin = 12345.678
    clock = LoopClock(bpm=bpm)
    clock.play(origin)
    exact_step = Fraction(60) / Fraction(bpm) / 4
    for step in (0, 1, 15, 16, 999, 10**5 + 7, 10**6):
        exact = Fraction(origin) + step * exact_step
        assert abs(Fraction(clock.step_due_seconds(step)) - exact) < Fraction(1, 10**6)


def test_summing_step_lengths_would_drift_but_deadlines_do_not() -> None:
    """The reason for absolute deadlines: adding the step length 10^6 times drifts, the deadline does not."""
    clock = LoopClock(bpm=133.0)
    clock.play(0.0)
    summed = 0.0
    for _ in range(10**6):
        summed += clock.step_seconds
    exact = float(10**6 * Fraction(60) / Fraction(133) / 4)
    assert abs(clock.step_due_seconds(10**6) - exact) < 1e-9
    assert abs(summed - exact) > abs(clock.step_due_seconds(10**6) - exact)


@pytest.mark.parametrize("step", [0, 1, 2, 15, 16, 17, 12345, 999_999, 10**6])
def test_next_step_at_its_own_deadline_is_that_step(step: int) -> None:
    """At the exact due time of step n, the next step to play is n: no rounding skips it."""
    clock = LoopClock(bpm=133.0)
    clock.play(777.125)
    assert clock.next_step(clock.step_due_seconds(step)) == step
    assert clock.next_step(clock.step_due_seconds(step) + clock.step_seconds / 2) == step + 1


# (action, now_seconds, argument) applied in order; then position_steps(check_now) is expected.
TRANSPORT_CASES = [
    ("never played", [], 5.0, 0.0),
    ("playing from 0", [("play", 10.0, None)], 10.5, 4.0),  # 120 BPM: a step is 0.125 s
    ("pause holds the position", [("play", 10.0, None), ("pause", 10.5, None)], 99.0, 4.0),
    ("play continues from it", [("play", 10.0, None), ("pause", 10.5, None), ("play", 20.0, None)], 20.25, 6.0),
    ("pause twice is one pause", [("play", 10.0, None), ("pause", 10.5, None), ("pause", 11.0, None)], 12.0, 4.0),
    ("play twice is one play", [("play", 10.0, None), ("play", 10.5, None)], 10.5, 4.0),
    ("tempo change keeps the position", [("play", 10.0, None), ("bpm", 10.5, 60.0)], 10.5, 4.0),
    ("then steps take the new length", [("play", 10.0, None), ("bpm", 10.5, 60.0)], 11.0, 6.0),
    ("tempo change while paused", [("play", 10.0, None), ("pause", 10.5, None), ("bpm", 15.0, 240.0), ("play", 20.0, None)], 20.25, 8.0),
    ("half a step held", [("play", 0.0, None), ("pause", 0.0625, None), ("play", 5.0, None)], 5.0625, 1.0),
]


@pytest.mark.parametrize("name, actions, check_now, expected", TRANSPORT_CASES, ids=[case[0] for case in TRANSPORT_CASES])
def test_transport_position(name: str, actions: list[tuple[str, float, float | None]], check_now: float, expected: float) -> None:
    """Pause holds the playhead, play continues from it, a tempo change keeps it."""
    clock = LoopClock(bpm=120.0)
    for action, now, argument in actions:
        if action == "play":
            clock.play(now)
        elif action == "pause":
            clock.pause(now)
        else:
            assert argument is not None
            clock.set_bpm(now, argument)
    assert clock.position_steps(check_now) == pytest.approx(expected, abs=1e-9)


def test_play_after_pause_plays_the_next_step_after_the_rest_of_the_held_step() -> None:
    """Paused a quarter into a step, the next step sounds three quarters of a step after play."""
    clock = LoopClock(bpm=120.0)
    clock.play(0.0)
    clock.pause(0.125 * 5.25)
    clock.play(100.0)
    assert clock.next_step(100.0) == 6
    assert clock.step_due_seconds(6) == pytest.approx(100.0 + 0.75 * 0.125)


@pytest.mark.parametrize("loop", [0, 1, 2, 7, 1000])
@pytest.mark.parametrize("lead", [0.003, 0.05, 0.1])
def test_sync_moment_is_loop_start_minus_lead(loop: int, lead: float) -> None:
    """The sync moment of loop L is its Loop Start (its first step's deadline) minus the lead."""
    clock = LoopClock(steps=16, bpm=600.0)
    clock.play(50.0)
    loop_start = clock.step_due_seconds(loop * 16)
    assert clock.loop_start_seconds(loop) == loop_start
    assert clock.sync_due_seconds(loop, lead) == pytest.approx(loop_start - lead)
    assert loop_start == pytest.approx(50.0 + loop * clock.loop_seconds)


@pytest.mark.parametrize("step, loop", [(0, 0), (15, 0), (16, 1), (31, 1), (32, 2), (16 * 1000 + 3, 1000)])
def test_loop_of_step(step: int, loop: int) -> None:
    """Absolute steps count across loops; a loop is 16 steps."""
    assert LoopClock(steps=16).loop_of(step) == loop


@pytest.mark.parametrize("bpm", [0, -1, float("inf"), float("nan")])
def test_bad_tempo_is_refused(bpm: float) -> None:
    """A tempo that is not a positive finite number raises, at creation and on change."""
    with pytest.raises(ValueError):
        LoopClock(bpm=bpm)
    with pytest.raises(ValueError):
        LoopClock().set_bpm(0.0, bpm)


def test_lengths_follow_the_tempo() -> None:
    """A step is a sixteenth note: 0.125 s at 120 BPM, a 16-step loop 2 s."""
    clock = LoopClock(steps=16, bpm=120.0)
    assert clock.step_seconds == pytest.approx(0.125)
    assert clock.loop_seconds == pytest.approx(2.0)


# -- ClientSync: what the vectors leave out -------------------------------------


def test_own_part_in_loop_parts_is_live() -> None:
    """The loop plays the own part itself, so an edit is heard as soon as the playhead reaches it."""
    sync = ClientSync("alice", steps=4)
    sync.on_message(_snapshot(0, {"bob": {"sound": "hat", "steps": [1, 0, 0, 0]}}))
    sync.play()
    sync.toggle(2)
    assert sync.loop_parts["alice"] is sync.own
    assert sync.loop_parts["alice"]["steps"] == [0, 0, 1, 0]


def test_local_data_is_a_copy_in_the_document_schema() -> None:
    """local_data() is the document schema and shares no list with the live state."""
    sync = ClientSync("alice", sound="tom", steps=4)
    data = sync.local_data()
    assert data == {"steps": 4, "parts": {"alice": {"sound": "tom", "steps": [0, 0, 0, 0]}}}
    data["parts"]["alice"]["steps"][0] = 1
    assert sync.own["steps"] == [0, 0, 0, 0]


def test_sent_part_is_not_changed_by_later_edits() -> None:
    """The update returned by sync() is a copy: editing after it does not rewrite what was sent."""
    sync = ClientSync("alice", steps=4)
    sync.on_message(_snapshot(0, {}))
    sync.play()
    sync.toggle(0)
    [update] = sync.sync()
    sync.toggle(1)
    assert update["part"]["steps"] == [1, 0, 0, 0]
    assert sync.in_flight[update["seq"]]["steps"] == [1, 0, 0, 0]


# (messages after a snapshot at seq 5 with alice's part, expected confirmed_seq)
OWN_UPDATE_CASES = [
    ("a newer seq from another tab confirms it", [("alice", 6)], 6),
    ("an older seq is ignored", [("alice", 4)], 5),
    ("the same seq is ignored", [("alice", 5)], 5),
    ("another user's seq is not ours", [("bob", 9)], 5),
]


@pytest.mark.parametrize("name, updates, confirmed_seq", OWN_UPDATE_CASES, ids=[case[0] for case in OWN_UPDATE_CASES])
def test_updates_of_the_own_user(name: str, updates: list[tuple[str, int]], confirmed_seq: int) -> None:
    """Only a newer seq of the own user (another tab) moves the confirmed seq."""
    sync = ClientSync("alice", steps=4)
    sync.on_message(_snapshot(5, {"alice": {"sound": "kick", "steps": [1, 0, 0, 0]}}, revision=5))
    for revision, (user, seq) in enumerate(updates, start=6):
        sync.on_message({"type": "update", "user": user, "seq": seq, "revision": revision, "part": {"sound": "hat", "steps": [0, 1, 0, 0]}})
    assert sync.confirmed_seq == confirmed_seq
    assert sync.next_seq == max(6, confirmed_seq + 1)


def test_revision_follows_the_room() -> None:
    """The room revision is taken from snapshots, updates and acks, and never goes back on an update."""
    sync = ClientSync("alice", steps=4)
    sync.on_message(_snapshot(0, {}, revision=3))
    assert sync.revision == 3
    sync.on_message({"type": "update", "user": "bob", "seq": 1, "revision": 5, "part": {"sound": "hat", "steps": [0, 0, 0, 0]}})
    sync.on_message({"type": "update", "user": "bob", "seq": 2, "revision": 4, "part": {"sound": "hat", "steps": [0, 0, 0, 0]}})
    assert sync.revision == 5


def test_unknown_messages_change_nothing() -> None:
    """Presence and unknown message types return nothing and leave the state alone."""
    sync = ClientSync("alice", steps=4)
    sync.on_message(_snapshot(0, {}))
    before = sync.local_data()
    assert sync.on_message({"type": "presence", "users": []}) == []
    assert sync.on_message({"type": "something-new"}) == []
    assert sync.local_data() == before


def test_bad_sound_at_creation_is_refused() -> None:
    """A ClientSync cannot start with a sound the protocol does not have."""
    with pytest.raises(ValueError):
        ClientSync("alice", sound="banjo")
