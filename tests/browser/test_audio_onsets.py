"""The page's real audio output, recorded: every onset on its exact frame, also with a blocked main thread.

Two pages play sixteenths at 120 BPM (5512.5 frames per step at 44.1 kHz,
so rounding matters) for over 20 s in real time, side by side; the test
blocks one page's main thread for 300 ms every second. A third user (a raw
WebSocket client) keeps editing a part in their room, so the sync at loop
boundaries is busy all along. A recorder AudioWorklet taps the node that
feeds the destination and finds onsets to the sample; they are compared
with the clock's frame-stamped step events, and those with the formula
originFrame + round(n * framesPerStep).

Run it alone with ``-s`` to see the measured figures (docs/clock.md).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from typing import Any, Callable

import aiohttp
from playwright.sync_api import Page

from .loopsync_browser import HERE, TIME_UNIT, ServeProcess, js_round

PLAY_SECONDS = 20.5
BPM = 120
BLOCK_MS = 300
FEEDER_PATTERNS = [[1, 0] * 8, [0, 1] * 8, [1, 1, 0, 0] * 4, [0, 0, 0, 1] * 4]

_rooms = itertools.count()


def _attach_recorder(page: Page) -> None:
    """Load the recorder in the page's AudioContext and tap the clock's output (what reaches the destination)."""
    source = (HERE / "onset_recorder.js").read_text()
    page.evaluate(
        """async (source) => {
             const context = window.loopsync.context;
             const url = URL.createObjectURL(new Blob([source], {type: 'application/javascript'}));
             await context.audioWorklet.addModule(url);
             const recorder = new AudioWorkletNode(context, 'onset-recorder', {numberOfInputs: 1, numberOfOutputs: 1});
             const silent = new GainNode(context, {gain: 0});
             window.loopsync.output.connect(recorder);
             recorder.connect(silent).connect(context.destination);
             window.recorder = recorder;
           }""",
        source,
    )


def _recorded(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        """() => new Promise((resolve) => {
             window.recorder.port.onmessage = (event) => resolve(event.data);
             window.recorder.port.postMessage({type: 'flush'});
           })"""
    )
    return result


class Feeder:
    """A third user on a raw WebSocket, sending a new part every 0.7 s until stopped."""

    def __init__(self, ws_url: str, room: str) -> None:
        self.ws_url = ws_url
        self.room = room
        self.stop = threading.Event()
        self.sent: list[list[int]] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(self.ws_url) as ws:
            await ws.send_json({"type": "hello", "v": 1, "room": self.room, "user": "feeder", "playing": True, "bpm": 150})
            drain = asyncio.create_task(self._drain(ws))
            for seq in itertools.count(1):
                if self.stop.is_set():
                    break
                pattern = FEEDER_PATTERNS[seq % len(FEEDER_PATTERNS)]
                await ws.send_json({"type": "update", "seq": seq, "part": {"sound": "hat", "steps": pattern}})
                self.sent.append(pattern)
                await asyncio.to_thread(self.stop.wait, 0.7)  # pacing of a load generator, not a wait for an event
            drain.cancel()

    async def _drain(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            pass


def _analyse(page: Page, name: str, feeder_patterns: list[list[int]]) -> dict[str, Any]:
    """Compare recorded onsets with the clock's step events; return the figures."""
    recorded = _recorded(page)
    events: list[dict[str, Any]] = page.evaluate("() => window.loopsync.events")
    steps = [event for event in events if event["type"] == "step"]
    status = page.evaluate("() => window.loopsync.status()")
    sample_rate = status["sampleRate"]
    step_length = sample_rate * 60 / BPM / 4
    # 1. The clock: every step on originFrame + round(n * framesPerStep), nothing skipped.
    assert [event["absoluteStep"] for event in steps] == list(range(len(steps))), f"{name}: a step was skipped"
    assert [event["transportFrame"] for event in steps] == [js_round(n * step_length) for n in range(len(steps))]
    offsets = {event["frame"] - event["transportFrame"] for event in steps}
    assert len(offsets) == 1, f"{name}: the clock's frames slipped against the transport: {offsets}"
    assert len(steps) >= PLAY_SECONDS * BPM / 60 * 4 - 2
    # 2. The audio: one onset per step, each on the step's frame (the recorder counts from its
    # own first quantum: its frames differ from the clock's by a whole number of quanta).
    onsets = recorded["onsets"]
    assert recorded["peak"] > 0.05, f"{name}: nothing audible was recorded"
    first_shift = onsets[0] - steps[0]["frame"]
    shift = round(first_shift / 128) * 128
    expected = [event["frame"] + shift for event in steps]
    heard = [frame for frame in onsets if frame <= expected[-1] + 1]
    assert len(heard) == len(expected), f"{name}: {len(heard)} onsets recorded for {len(expected)} steps"
    errors = [got - want for got, want in zip(heard, expected)]
    max_error = max(abs(error) for error in errors)
    # 3. The sync: each loop played one whole version of the feeder's part (never half-applied).
    loops: dict[int, list[dict[str, Any]]] = {}
    for event in steps:
        loops.setdefault(event["loop"], []).append(event)
    for loop, loop_steps in loops.items():
        assert len({event["dataId"] for event in loop_steps}) == 1, f"{name}: loop {loop} changed data mid-loop"
        feeder = [1 if "feeder" in event["sounded"] else 0 for event in loop_steps]
        if len(loop_steps) == 16 and any(feeder):
            assert feeder in feeder_patterns, f"{name}: loop {loop} played a part nobody sent: {feeder}"
    syncs = [event for event in events if event["type"] == "sync"]
    applied = {event["id"]: event for event in events if event["type"] == "applied"}
    late = [sync for sync in syncs if sync["id"] in applied and applied[sync["id"]]["atLoopStart"] != sync["loop"]]
    versions = len({json.dumps([1 if "feeder" in event["sounded"] else 0 for event in loop_steps])
                    for loop_steps in loops.values() if len(loop_steps) == 16})
    return {
        "page": name, "sample_rate": sample_rate, "frames_per_step": step_length, "steps": len(steps),
        "seconds": round(len(steps) * step_length / sample_rate, 2), "onsets_checked": len(errors),
        "max_error_samples": max_error, "syncs": len(syncs), "late_syncs": len(late), "feeder_versions": versions,
    }


def test_recorded_onsets_are_sample_exact_with_and_without_a_blocked_main_thread(
    open_page: Callable[..., Page], loopsync_server: ServeProcess
) -> None:
    """Over 20 s of real-time play every recorded onset is on its frame (error <= 1 sample), also with 300 ms blocks every second."""
    room = f"onsets{next(_rooms)}"
    steady = open_page(f"{loopsync_server.http_url}?room={room}&user=steady&bpm={BPM}")
    blocked = open_page(f"{loopsync_server.http_url}?room={room}&user=blocked&bpm={BPM}")
    for page in (steady, blocked):
        page.evaluate("() => { for (let step = 0; step < 16; step++) window.loopsync.toggleStep(step); }")
        page.select_option("#sound", "hat")
        _attach_recorder(page)
    feeder = Feeder(f"ws://127.0.0.1:{loopsync_server.port}/ws", room)
    feeder.thread.start()
    try:
        steady.click("#play")
        blocked.click("#play")
        # Block 300 ms every second, phased so that every sync moment falls inside a block:
        # from loop 0's step 14 (the sync of loop 1 is 0.2 s later; loops are 2 s long).
        blocked.evaluate(
            """(blockMs) => {
                 window.blocks = 0;
                 const busy = () => {
                   const end = performance.now() + blockMs;
                   while (performance.now() < end) {}  // stuck: no events, no messages, no timers
                   window.blocks += 1;
                 };
                 const begin = (lateMs) => {
                   // Anchored on when step 14 played, not on when this thread heard of it (late on a busy machine).
                   const origin = performance.now() - lateMs;
                   const next = () => {
                     busy();
                     // Aim at origin + k s, so the blocks keep their phase against the audio clock.
                     window.blocker = setTimeout(next, origin + (window.blocks + 1) * 1000 - performance.now());
                   };
                   next();
                 };
                 const watch = setInterval(() => {
                   const step = window.loopsync.events.find(e => e.type === 'step' && e.absoluteStep >= 14);
                   if (step) {
                     clearInterval(watch);
                     begin(Math.max(0, (window.loopsync.context.currentTime - step.contextTime) * 1000));
                   }
                 }, 2);
               }""",
            BLOCK_MS,
        )
        wanted = int(PLAY_SECONDS * BPM / 60 * 4)
        for page in (steady, blocked):
            page.wait_for_function(
                "(wanted) => window.loopsync.events.filter(e => e.type === 'step').length >= wanted",
                arg=wanted, timeout=(PLAY_SECONDS + 20 * TIME_UNIT) * 1000, polling=500,
            )
        blocks = blocked.evaluate("() => { clearTimeout(window.blocker); return window.blocks; }")
        for page in (steady, blocked):
            page.click("#play")  # pause
    finally:
        feeder.stop.set()
        feeder.thread.join(timeout=5 * TIME_UNIT)
    assert blocks >= PLAY_SECONDS - 4, f"the main thread was blocked only {blocks} times"
    figures = [_analyse(steady, "not blocked", feeder.sent), _analyse(blocked, f"blocked {BLOCK_MS} ms every 1 s ({blocks} times)", feeder.sent)]
    for figure in figures:
        print("\nonset check:", json.dumps(figure))
    for figure in figures:
        assert figure["max_error_samples"] <= 1, figure
        assert figure["feeder_versions"] >= 3, "the feeder's edits should have been heard"
    # The blocks hid the sync moments: the page answered late, and the loops played on (checked above).
    assert figures[1]["late_syncs"] >= figures[1]["syncs"] // 2, figures[1]
