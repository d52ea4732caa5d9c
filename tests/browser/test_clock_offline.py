"""Deterministic checks of the clock processor, rendered in an OfflineAudioContext.

No real time is involved: the processor renders as fast as it can, and every
command is scripted to a frame (``atFrame``, applied at the first render
quantum starting at or after it). Onsets are read from the rendered audio
(the first non-zero sample after silence: the voices are built so that this
is the onset) and from the processor's frame-stamped step events.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from .loopsync_browser import HERE, ServeProcess, js_round
from playwright.sync_api import Browser, Page

QUANTUM = 128
ALTERNATE = [1, 0] * 8
FADE_SECONDS = 0.004


@pytest.fixture(scope="module")
def offline_page(browser: Browser, loopsync_server: ServeProcess) -> Iterator[Page]:
    """A served loopsync page (no user: it only shows the join form) with the offline render helper."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(loopsync_server.http_url + "?room=offline")
    page.add_script_tag(path=str(HERE / "offline_render.js"))
    yield page
    context.close()


def render(page: Page, *, sample_rate: int, seconds: float, **options: Any) -> dict[str, Any]:
    """Render the clock processor offline; ``options`` go to renderClock (processorOptions, windows...)."""
    result: dict[str, Any] = page.evaluate(
        "(options) => renderClock(options)", {"sampleRate": sample_rate, "frames": int(seconds * sample_rate), **options}
    )
    return result


def frames_per_step(sample_rate: int, bpm: float) -> float:
    return sample_rate * 60 / bpm / 4


def steps_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [message for message in messages if message["type"] == "step"]


@pytest.mark.parametrize(
    ("sample_rate", "bpm"),
    [(44100, 120), (48000, 120), (48000, 97), (44100, 133.3), (22050, 300), (44100, 61.7)],
)
def test_onsets_fall_on_their_exact_frame(offline_page: Page, sample_rate: int, bpm: float) -> None:
    """Step n sounds on frame round(n * framesPerStep) exactly, at integer and non-integer step lengths, with no drift."""
    seconds = 12.0
    part = {"sound": "hat", "steps": ALTERNATE}
    result = render(
        offline_page, sample_rate=sample_rate, seconds=seconds,
        processorOptions={"bpm": bpm, "me": "me", "own": part, "script": [{"type": "play"}]},
    )
    step_length = frames_per_step(sample_rate, bpm)
    total = int(seconds * sample_rate)
    expected = [js_round(n * step_length) for n in range(0, 10_000, 2) if js_round(n * step_length) < total - 64]
    assert len(expected) >= 20
    assert result["onsets"] == expected
    events = steps_of(result["messages"])
    assert [event["frame"] for event in events] == [js_round(n * step_length) for n in range(len(events))]
    assert [event["sounded"] for event in events[:4]] == [["me"], [], ["me"], []]
    # A clock adding rounded step lengths would be off by now at 5512.5 frames per step.
    last = events[-1]
    assert last["frame"] == js_round(last["absoluteStep"] * step_length)


def test_pause_holds_the_position_and_play_continues(offline_page: Page) -> None:
    """Pause stops the clock with a short fade and no sound; play continues from the held position."""
    sample_rate, bpm = 44100, 120
    step_length = frames_per_step(sample_rate, bpm)
    part = {"sound": "tone", "steps": [1, 0, 0, 0] * 4}
    onset = js_round(8 * step_length)
    pause_frame = (onset + 2000) // QUANTUM * QUANTUM  # while the tone of step 8 sounds
    play_frame = pause_frame + 300 * QUANTUM
    fade_frames = js_round(FADE_SECONDS * sample_rate)
    result = render(
        offline_page, sample_rate=sample_rate, seconds=6.0,
        processorOptions={"bpm": bpm, "me": "me", "own": part, "script": [
            {"type": "play"}, {"type": "pause", "atFrame": pause_frame}, {"type": "play", "atFrame": play_frame},
        ]},
        windows=[[pause_frame - 200, pause_frame + fade_frames + 50], [pause_frame + fade_frames, play_frame]],
    )
    held = play_frame - pause_frame
    expected = []
    for n in range(0, 64, 4):
        frame = js_round(n * step_length)
        expected.append(frame if frame < pause_frame else frame + held)
    assert result["onsets"] == [frame for frame in expected if frame < 6 * sample_rate - 64]
    status = result["status"]
    assert status["transportFrame"] == status["frame"] - held
    # While paused: silence once the fade is over.
    fade, paused = result["windows"]
    assert max(abs(sample) for sample in paused) == 0.0
    # The fade: no jump larger than the tone's own slope (a cut would jump by the full amplitude).
    before = fade[:200]
    largest_slope = max(abs(b - a) for a, b in zip(before, before[1:]))
    jumps = [abs(b - a) for a, b in zip(fade[199:], fade[200:])]
    assert max(jumps) <= largest_slope * 1.5
    assert max(abs(sample) for sample in before) > 0.05
    assert fade[200 + fade_frames:] == [0.0] * 50


def test_tempo_change_keeps_the_position(offline_page: Page) -> None:
    """A tempo change lets the step in progress finish at the new tempo, then counts from there."""
    sample_rate = 48000
    old, new = frames_per_step(sample_rate, 120), frames_per_step(sample_rate, 90)
    change_frame = 30 * QUANTUM * 10 + QUANTUM * 7  # somewhere inside step 6
    result = render(
        offline_page, sample_rate=sample_rate, seconds=5.0,
        processorOptions={"bpm": 120, "me": "me", "own": {"sound": "hat", "steps": [1] * 16}, "script": [
            {"type": "play"}, {"type": "tempo", "bpm": 90, "atFrame": change_frame},
        ]},
    )
    events = steps_of(result["messages"])
    next_step = next(n for n in range(100) if js_round(n * old) >= change_frame)
    remaining = (js_round(next_step * old) - change_frame) / old
    origin = change_frame + js_round(remaining * new)
    expected = [js_round(n * old) if n < next_step else origin + js_round((n - next_step) * new) for n in range(len(events))]
    assert [event["frame"] for event in events] == expected
    assert result["onsets"] == [frame for frame in expected if frame < 5 * sample_rate - 64]


def _parts_script(loop_start: int, answers: list[tuple[int, int, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"type": "parts", "atFrame": at, "id": answer_id, "loop": loop, "others": others}
            for at, answer_id, loop, others in answers]


def test_loop_data_switches_exactly_at_loop_start(offline_page: Page) -> None:
    """An answer tagged loop L that arrives before L's Loop Start plays from L's first frame: not earlier, not later."""
    sample_rate, bpm = 44100, 240
    step_length = frames_per_step(sample_rate, bpm)
    loop_start = [js_round(loop * 16 * step_length) for loop in range(6)]
    old = {"bob": {"sound": "hat", "steps": [1] + [0] * 15}}
    new = {"bob": {"sound": "hat", "steps": [0, 1] * 8}}
    answer_at = loop_start[2] - 4 * QUANTUM  # just in time: 512 frames before loop 2
    result = render(
        offline_page, sample_rate=sample_rate, seconds=4.5,
        processorOptions={"bpm": bpm, "me": "me", "others": old, "script": [
            {"type": "play"}, {"type": "parts", "atFrame": answer_at, "id": 7, "loop": 2, "others": new},
        ]},
    )
    applied = [message for message in result["messages"] if message["type"] == "applied"]
    assert applied == [{"type": "applied", "id": 7, "loop": 2, "frame": loop_start[2],
                        "contextTime": loop_start[2] / sample_rate, "atLoopStart": 2}]
    for event in steps_of(result["messages"]):
        playing_new = event["loop"] >= 2
        assert event["dataId"] == (7 if playing_new else 0), event
        steps = (new if playing_new else old)["bob"]["steps"]
        assert event["sounded"] == (["bob"] if steps[event["step"]] else []), event
    expected = [js_round(n * step_length) for n in range(100)
                if (new if n >= 32 else old)["bob"]["steps"][n % 16] and js_round(n * step_length) < 4.5 * sample_rate - 64]
    assert result["onsets"] == expected


def test_a_missed_sync_keeps_the_loop_and_applies_one_loop_later(offline_page: Page) -> None:
    """An answer for loop 2 arriving after loop 2 started never changes loop 2; it plays from loop 3, unless loop 3's own answer came."""
    sample_rate, bpm = 48000, 240
    step_length = frames_per_step(sample_rate, bpm)
    loop_start = [js_round(loop * 16 * step_length) for loop in range(8)]
    old = {"bob": {"sound": "hat", "steps": [1] + [0] * 15}}
    late = {"bob": {"sound": "hat", "steps": [0, 1] * 8}}
    third = {"bob": {"sound": "hat", "steps": [0, 0, 1, 0] * 4}}
    result = render(
        offline_page, sample_rate=sample_rate, seconds=5.5,
        processorOptions={"bpm": bpm, "me": "me", "others": old, "script": [
            {"type": "play"},
            # The page was blocked: its answer for loop 2 comes 1000 frames into loop 2.
            {"type": "parts", "atFrame": loop_start[2] + 1000, "id": 2, "loop": 2, "others": late},
            # Loop 4's answer is late too, and loop 5's is in time: loop 5 plays its own.
            {"type": "parts", "atFrame": loop_start[4] + 3000, "id": 4, "loop": 4, "others": third},
            {"type": "parts", "atFrame": loop_start[5] - 2400, "id": 5, "loop": 5, "others": old},
        ]},
    )
    by_loop: dict[int, set[int]] = {}
    for event in steps_of(result["messages"]):
        by_loop.setdefault(event["loop"], set()).add(event["dataId"])
    assert by_loop[0] == by_loop[1] == by_loop[2] == {0}
    assert by_loop[3] == by_loop[4] == {2}
    assert by_loop[5] == {5}
    applied = [(message["id"], message["frame"]) for message in result["messages"] if message["type"] == "applied"]
    assert applied == [(2, loop_start[3]), (5, loop_start[5])]


def test_sync_moment_is_signalled_lead_frames_before_loop_start(offline_page: Page) -> None:
    """syncDue for loop L comes at loopStartFrame(L) - lead, on its exact frame; a lead below one quantum becomes one quantum."""
    sample_rate, bpm = 44100, 200
    step_length = frames_per_step(sample_rate, bpm)
    for lead_seconds, lead_frames in [(0.05, 2205), (0.0, QUANTUM), (0.001, QUANTUM)]:
        result = render(
            offline_page, sample_rate=sample_rate, seconds=4.0,
            processorOptions={"bpm": bpm, "me": "me", "leadSeconds": lead_seconds, "script": [{"type": "play"}]},
        )
        syncs = [message for message in result["messages"] if message["type"] == "syncDue"]
        assert [sync["loop"] for sync in syncs] == list(range(1, len(syncs) + 1))
        assert len(syncs) >= 3
        for sync in syncs:
            assert sync["frame"] == js_round(sync["loop"] * 16 * step_length) - lead_frames


def test_own_edits_are_heard_when_the_playhead_reaches_them(offline_page: Page) -> None:
    """An own edit applies at once, mid-loop: the next step it turns on sounds in the same loop."""
    sample_rate, bpm = 48000, 120
    step_length = frames_per_step(sample_rate, bpm)
    edit_frame = js_round(5.5 * step_length) // QUANTUM * QUANTUM
    result = render(
        offline_page, sample_rate=sample_rate, seconds=2.2,
        processorOptions={"bpm": bpm, "me": "me", "own": {"sound": "tom", "steps": [0] * 16}, "script": [
            {"type": "play"},
            {"type": "own", "atFrame": edit_frame, "part": {"sound": "hat", "steps": [1, 0, 0, 0, 1, 0, 1] + [0] * 9}},
        ]},
    )
    sounded = [(event["loop"], event["step"]) for event in steps_of(result["messages"]) if event["sounded"]]
    assert sounded[0] == (0, 6)
    assert result["onsets"][0] == js_round(6 * step_length)


def test_a_room_of_another_step_count_loops_on_it(offline_page: Page) -> None:
    """A room of 8 steps (told at start, or by a later `steps` command) loops every 8 steps, with its sync moments."""
    sample_rate, bpm = 48000, 150
    step_length = frames_per_step(sample_rate, bpm)
    for options in ({"steps": 8, "script": [{"type": "play"}]},
                    {"script": [{"type": "steps", "steps": 8}, {"type": "play"}]}):
        result = render(offline_page, sample_rate=sample_rate, seconds=3.0,
                        processorOptions={"bpm": bpm, "me": "me", **options})
        events = steps_of(result["messages"])
        assert [(event["loop"], event["step"]) for event in events[:10]] == [(0, s) for s in range(8)] + [(1, 0), (1, 1)]
        syncs = [message for message in result["messages"] if message["type"] == "syncDue"]
        assert [sync["frame"] for sync in syncs[:3]] == [js_round(loop * 8 * step_length) - 2400 for loop in (1, 2, 3)]


@pytest.mark.parametrize("pause_step", [20.5, 31.2, 32.0])
def test_a_loop_paused_halfway_plays_its_rest_as_it_began(offline_page: Page, pause_step: float) -> None:
    """Parts arriving while paused wait for the next Loop Start reached: the rest of the paused loop plays its old data."""
    sample_rate, bpm = 48000, 240
    step_length = frames_per_step(sample_rate, bpm)
    old = {"bob": {"sound": "hat", "steps": [1, 0] * 8}}
    new = {"bob": {"sound": "hat", "steps": [0, 0, 1, 1] * 4}}
    pause_frame = js_round(pause_step * step_length) // QUANTUM * QUANTUM
    play_frame = pause_frame + 100 * QUANTUM
    result = render(
        offline_page, sample_rate=sample_rate, seconds=5.0,
        processorOptions={"bpm": bpm, "me": "me", "others": old, "script": [
            {"type": "play"},
            {"type": "pause", "atFrame": pause_frame},
            {"type": "parts", "atFrame": pause_frame + 10 * QUANTUM, "id": 5, "loop": None, "others": new},
            {"type": "play", "atFrame": play_frame},
        ]},
    )
    held = play_frame - pause_frame
    events = steps_of(result["messages"])
    held_step = next(n for n in range(1000) if js_round(n * step_length) >= pause_frame)
    next_loop = -(-held_step // 16)  # the loop of the held step if it is a Loop Start, else the one after
    assert next_loop == {20.5: 2, 31.2: 2, 32.0: 2}[pause_step]
    assert next(event for event in events if event["frame"] >= play_frame)["absoluteStep"] == held_step
    for event in events:
        expected = 5 if event["absoluteStep"] >= next_loop * 16 else 0
        assert event["dataId"] == expected, event
        steps = (new if expected == 5 else old)["bob"]["steps"]
        assert event["sounded"] == (["bob"] if steps[event["step"]] else []), event
    applied = [(message["id"], message["frame"]) for message in result["messages"] if message["type"] == "applied"]
    loop_start_frame = js_round(next_loop * 16 * step_length)
    assert applied == [(5, loop_start_frame + held if loop_start_frame >= pause_frame else loop_start_frame)]


def test_the_mix_scales_each_users_voices_and_the_master(offline_page: Page) -> None:
    """A user's gain scales their voices exactly (0 silences them), the master scales everything; the clock is unchanged."""
    sample_rate, bpm = 44100, 240
    step_length = frames_per_step(sample_rate, bpm)
    own = {"sound": "hat", "steps": [1] + [0] * 15}
    others = {"bob": {"sound": "hat", "steps": [0, 0, 0, 0, 1] + [0] * 11}}
    bob_onset = js_round(4 * step_length)
    windows = [[0, 2000], [bob_onset, bob_onset + 2000]]

    def run(mix: dict[str, Any] | None) -> dict[str, Any]:
        options: dict[str, Any] = {"bpm": bpm, "me": "me", "own": own, "others": others, "script": [{"type": "play"}]}
        if mix is not None:
            options["mix"] = mix
        return render(offline_page, sample_rate=sample_rate, seconds=1.0, processorOptions=options, windows=windows)

    plain = run(None)
    half_bob = run({"gains": {"bob": 0.5}, "rest": 1, "master": 1})
    muted_bob = run({"gains": {"bob": 0}, "rest": 1, "master": 1})
    quiet = run({"gains": {}, "rest": 1, "master": 0.25})
    assert plain["onsets"] == [0, bob_onset]
    assert half_bob["windows"][0] == plain["windows"][0]
    assert half_bob["windows"][1] == [sample * 0.5 for sample in plain["windows"][1]]
    assert muted_bob["onsets"] == [0]
    assert set(muted_bob["windows"][1]) == {0.0}
    assert quiet["windows"][0] == [sample * 0.25 for sample in plain["windows"][0]]
    assert [m["frame"] for m in steps_of(muted_bob["messages"])] == [m["frame"] for m in steps_of(plain["messages"])]
