"""Two pages as two users on a real server: when the other's edits are heard, shown, and what a paused page does.

Timing is read from the clock processor's frame-stamped events
(``window.loopsync.events``), in the order the page handled them: a server
message the page handled before a sync moment is in that sync.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

from playwright.sync_api import Page

from .loopsync_browser import TIME_UNIT, ServeProcess
from .test_page_look import WATCH_WHEN, check_when

_rooms = itertools.count()


def room_url(server: ServeProcess, user: str, **params: Any) -> str:
    """A page address in a room of this test module."""
    query = "&".join(f"{key}={value}" for key, value in {"room": params.pop("room"), "user": user, **params}.items())
    return f"{server.http_url}?{query}"


def events(page: Page) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = page.evaluate("() => window.loopsync.events")
    return result


def heard_by_loop(page_events: list[dict[str, Any]], user: str) -> dict[int, list[int]]:
    """For each loop fully seen: 1 where `user`'s part sounded at that step."""
    loops: dict[int, list[int]] = {}
    for event in page_events:
        if event["type"] == "step":
            loops.setdefault(event["loop"], []).append(1 if user in event["sounded"] else 0)
    return {loop: steps for loop, steps in loops.items() if len(steps) == 16}


def set_pattern(page: Page, pattern: list[int]) -> None:
    """Make the own part `pattern` in one task (so it goes out as one update)."""
    page.evaluate(
        """(pattern) => {
             const own = window.loopsync.sync.own.steps;
             pattern.forEach((value, step) => { if (own[step] !== value) window.loopsync.toggleStep(step); });
           }""",
        pattern,
    )


def sent_seq_of(page: Page, pattern: list[int]) -> int:
    """The seq of the update `page` sent with this pattern (waits for it)."""
    page.wait_for_function(
        "(pattern) => window.loopsync.sentLog.some(m => m.type === 'update' && JSON.stringify(m.part.steps) === JSON.stringify(pattern))",
        arg=pattern, timeout=5 * TIME_UNIT * 1000,
    )
    seq: int = page.evaluate(
        "(pattern) => window.loopsync.sentLog.filter(m => m.type === 'update' && JSON.stringify(m.part.steps) === JSON.stringify(pattern)).at(-1).seq",
        pattern,
    )
    return seq


def test_an_edit_is_heard_from_the_next_loop_start_after_it_arrives(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """While both play, bob hears alice's edit from exactly the first Loop Start whose sync follows its arrival."""
    room = f"heard{next(_rooms)}"
    alice = open_page(room_url(loopsync_server, "alice", room=room, bpm=300))
    # A lead of 150 ms instead of 50: a loaded test machine must not make bob's answer late
    # (the late path has its own checks: test_audio_onsets.py and test_clock_offline.py).
    bob = open_page(room_url(loopsync_server, "bob", room=room, bpm=270, lead=0.15))
    alice.click("#play")
    bob.keyboard.press("Space")
    patterns = [[1, 0, 0, 0] * 4, [1, 1, 0, 0] * 4, [0, 0, 1, 0] * 4]
    previous = [0] * 16
    for pattern in patterns:
        set_pattern(alice, pattern)
        seq = sent_seq_of(alice, pattern)
        # Wait until bob has handled the update and played the whole loop after the sync that follows it.
        bob.wait_for_function(
            """(seq) => {
                 const events = window.loopsync.events;
                 const received = events.findIndex(e => e.type === 'recv' && e.kind === 'update' && e.user === 'alice' && e.seq === seq);
                 if (received < 0) return false;
                 const sync = events.slice(received).find(e => e.type === 'sync');
                 return sync !== undefined && events.some(e => e.type === 'step' && e.loop === sync.loop && e.step === 15);
               }""",
            arg=seq, timeout=10 * TIME_UNIT * 1000,
        )
        bob_events = events(bob)
        received = next(i for i, e in enumerate(bob_events)
                        if e["type"] == "recv" and e["kind"] == "update" and e["user"] == "alice" and e["seq"] == seq)
        sync = next(e for e in bob_events[received:] if e["type"] == "sync")
        applied = next(e for e in bob_events if e["type"] == "applied" and e["id"] == sync["id"])
        # Not blocked, the page answers well inside the lead: the data plays from that very Loop Start.
        assert applied["atLoopStart"] == sync["loop"], (sync, applied)
        heard = heard_by_loop(bob_events, "alice")
        first_loop = sync["loop"]
        assert heard[first_loop] == pattern, f"loop {first_loop} should play the new part"
        assert heard[first_loop - 1] == previous, f"loop {first_loop - 1} should still play the part before"
        # And the new part sounded in no loop before that one.
        assert all(steps != pattern for loop, steps in heard.items() if loop < first_loop)
        previous = pattern


def test_a_paused_page_shows_edits_at_once_sends_nothing_and_holds_its_clock(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """Paused, bob shows alice's edit at once, sends no frame, holds his clock; resumed, the rest of that loop plays as it began, her part from the next Loop Start."""
    room = f"paused{next(_rooms)}"
    alice = open_page(room_url(loopsync_server, "alice", room=room, bpm=300))
    bob = open_page(room_url(loopsync_server, "bob", room=room, bpm=180))
    frames_sent: list[str] = []
    bob.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames_sent.append(str(payload))))
    alice.click("#play")
    bob.click("#play")
    bob.wait_for_function("() => window.loopsync.events.filter(e => e.type === 'step').length >= 6")
    bob.click("#play")  # pause
    bob.wait_for_function("() => window.loopsync.events.some(e => e.type === 'state' && !e.playing)")
    held = bob.evaluate("() => window.loopsync.status()")
    assert held["playing"] is False
    sent_before = bob.evaluate("() => window.loopsync.sentCount")
    frames_before = len(frames_sent)
    events_before = len(events(bob))
    # Bob edits while paused (mouse and keyboard): heard by nobody, sent at his next play.
    bob.click('.row.own .cell[data-step="3"]')
    bob.focus('.row.own .cell[data-step="3"]')
    bob.keyboard.press("ArrowRight")
    bob.keyboard.press("Enter")
    assert bob.evaluate("() => window.loopsync.sync.own.steps.slice(0, 6)") == [0, 0, 0, 1, 1, 0]
    pattern = [0, 1, 1, 0] * 4
    set_pattern(alice, pattern)
    seq = sent_seq_of(alice, pattern)
    bob.wait_for_function(
        "(seq) => window.loopsync.events.some(e => e.type === 'recv' && e.kind === 'update' && e.user === 'alice' && e.seq === seq)",
        arg=seq, timeout=5 * TIME_UNIT * 1000,
    )
    # Shown at once: the DOM already has it after the task that handled the message (no loop to wait for).
    shown = bob.evaluate(
        "() => [...document.querySelectorAll('.row[data-user=alice] .cell')].map(c => c.classList.contains('on') ? 1 : 0)"
    )
    assert shown == pattern
    assert bob.locator(".row[data-user=alice].pending").count() == 0
    assert bob.locator(".row[data-user=alice] .incoming-on").count() == 0
    after = bob.evaluate("() => window.loopsync.status()")
    assert after["frame"] > held["frame"], "the audio thread goes on rendering"
    assert (after["transportFrame"], after["nextStep"], after["playing"]) == (held["transportFrame"], held["nextStep"], False)
    new_events = events(bob)[events_before:]
    assert not [e for e in new_events if e["type"] in ("step", "syncDue", "sync")]
    assert bob.evaluate("() => window.loopsync.sentCount") == sent_before
    assert len(frames_sent) == frames_before
    # The clock holds alice's part for the next Loop Start its transport reaches (docs/clock.md,
    # "Pause and resume within a loop"): the rest of the paused loop plays what it began with.
    next_loop_start = -(-held["nextStep"] // 16)
    assert [data["loop"] for data in after["waiting"]] == [next_loop_start]
    # Play: the edits made while paused go out at once; alice's row is pending until that Loop Start, and says when.
    bob.click("#play")
    steps_left = -held["nextStep"] % 16  # before that Loop Start
    if steps_left:
        assert bob.locator(".row[data-user=alice].pending").count() == 1
    timed = steps_left >= 4  # time enough (a third of a second) to read "changes in X s" and time it
    if timed:
        bob.wait_for_selector(".row[data-user=alice] .when:has-text('changes in')")
        bob.evaluate(WATCH_WHEN, "alice")
    bob.wait_for_function("() => window.loopsync.sentLog.some(m => m.type === 'update')")
    update = bob.evaluate("() => window.loopsync.sentLog.find(m => m.type === 'update')")
    assert update["part"]["steps"][:6] == [0, 0, 0, 1, 1, 0]
    last_step = next_loop_start * 16 + 15
    bob.wait_for_function(
        "([n, last]) => window.loopsync.events.slice(n).some(e => e.type === 'step' && e.absoluteStep >= last)",
        arg=[events_before, last_step], timeout=10 * TIME_UNIT * 1000,
    )
    played = [e for e in events(bob)[events_before:] if e["type"] == "step"]
    assert played[0]["absoluteStep"] == held["nextStep"], "play continues from the held position"
    assert played[0]["transportFrame"] >= held["transportFrame"]
    assert [e["absoluteStep"] for e in played] == list(range(held["nextStep"], held["nextStep"] + len(played)))
    for event in played[: last_step + 1 - held["nextStep"]]:
        new_part = event["absoluteStep"] >= next_loop_start * 16
        assert ("alice" in event["sounded"]) == (new_part and pattern[event["step"]] == 1), event
    if timed:
        check_when(bob)


def test_arrived_changes_are_marked_until_the_next_loop_start(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """A playing page marks another user's arrived change as incoming, distinct from what plays, until its next Loop Start."""
    room = f"marked{next(_rooms)}"
    alice = open_page(room_url(loopsync_server, "alice", room=room, bpm=300))
    bob = open_page(room_url(loopsync_server, "bob", room=room, bpm=90))  # 2.7 s loops: a long wait to see
    alice.click("#play")
    bob.click("#play")
    # Edit right after bob's first Loop Start, so the change waits most of a loop.
    bob.wait_for_function("() => window.loopsync.events.some(e => e.type === 'step')", timeout=5 * TIME_UNIT * 1000)
    pattern = [1, 0, 0, 1] * 4
    set_pattern(alice, pattern)
    bob.wait_for_selector(".row[data-user=alice].pending", timeout=5 * TIME_UNIT * 1000)
    marks = bob.evaluate(
        """() => [...document.querySelectorAll('.row[data-user=alice] .cell')].map(c =>
             c.classList.contains('incoming-on') ? 'in' : c.classList.contains('on') ? 'on' : '-')"""
    )
    assert marks == ["in" if value else "-" for value in pattern], "arrived, not yet playing"
    assert bob.evaluate("() => window.loopsync.events.filter(e => e.type === 'step' && e.sounded.includes('alice')).length") == 0
    bob.wait_for_selector(".row[data-user=alice]:not(.pending)", timeout=5 * TIME_UNIT * 1000)
    shown = bob.evaluate(
        "() => [...document.querySelectorAll('.row[data-user=alice] .cell')].map(c => c.classList.contains('on') ? 1 : 0)"
    )
    assert shown == pattern
    loop_start = bob.evaluate("() => window.loopsync.events.find(e => e.type === 'step' && e.sounded.includes('alice'))")
    assert loop_start["step"] == 0 and loop_start["loop"] == 1
    presence = bob.locator("#presence li").all_inner_texts()
    assert presence == ["alice · playing · 300 BPM", "bob (you) · playing · 90 BPM"]


def test_a_sync_answered_too_late_shows_the_change_one_loop_later(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """Bob's main thread is blocked across his sync moment: alice's change plays a loop later, and his row says so."""
    room = f"late{next(_rooms)}"
    alice = open_page(room_url(loopsync_server, "alice", room=room, bpm=300))
    bob = open_page(room_url(loopsync_server, "bob", room=room, bpm=30))  # 8 s loops
    alice.click("#play")
    bob.click("#play")
    bob.wait_for_function("() => window.loopsync.events.some(e => e.type === 'step')", timeout=5 * TIME_UNIT * 1000)
    pattern = [1, 0, 1, 0] * 4
    set_pattern(alice, pattern)
    bob.wait_for_selector(".row[data-user=alice].pending", timeout=5 * TIME_UNIT * 1000)
    # Block bob's main thread from 1 s before his next Loop Start (the sync moment is 50 ms before it) to 0.3 s after.
    loop_start = bob.evaluate(
        """() => {
             const app = window.loopsync.app, rendered = app.renderedStep, context = app.engine.context;
             const loop = rendered.loop + 1;
             const loopStart = rendered.contextTime + (16 - rendered.step) * 0.5;
             setTimeout(() => { const until = performance.now() + 1300; while (performance.now() < until); },
                        (loopStart - 1 - context.currentTime) * 1000);
             return loop;
           }"""
    )
    bob.wait_for_function(
        "(loop) => window.loopsync.events.some(e => e.type === 'step' && e.loop === loop && e.step === 1)",
        arg=loop_start, timeout=15 * TIME_UNIT * 1000,
    )
    late = [e for e in events(bob) if e["type"] == "sync" and e["loop"] == loop_start]
    assert late, "no sync for that loop"
    assert not [e for e in events(bob) if e["type"] == "applied" and e.get("atLoopStart") == loop_start], "the answer was in time"
    # Still pending, and the countdown is to the next Loop Start (a loop away), not stuck at 0.
    assert bob.locator(".row[data-user=alice].pending").count() == 1
    said = bob.inner_text(".row[data-user=alice] .when")
    assert float(said.removeprefix("changes in ").removesuffix(" s")) > 6, said
    bob.evaluate(WATCH_WHEN, "alice")
    bob.wait_for_selector(".row[data-user=alice]:not(.pending)", timeout=15 * TIME_UNIT * 1000)
    check_when(bob)
    # The late answer, or the next loop's own (newer), from the next Loop Start on.
    assert [e for e in events(bob) if e["type"] == "applied" and e.get("atLoopStart") == loop_start + 1]
    first = next(e for e in events(bob) if e["type"] == "step" and "alice" in e["sounded"])
    assert (first["loop"], first["step"]) == (loop_start + 1, 0)
