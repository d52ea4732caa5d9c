"""Clock accuracy: the loopsync web client against a main-thread lookahead scheduler, same machine, same run.

Two pages in headless Chromium play sixteenths at 120 BPM: ``loopsync``
(its clock on the audio thread) and ``baseline``
(``bench/clock_baseline.html``, "A Tale of Two Clocks"), each with its main
thread idle, busy 300 ms every second, and busy once for 2 s. One recorder
worklet finds the onsets; :func:`analyse` fits the grid's origin and
measures each onset's error in samples and the drift. Exit 0 when loopsync
met the target in every condition; the baseline is reported, not judged.
docs/benchmarks.md, "Clock accuracy".
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Route

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (bench/harness.py)

RECORDER = harness.ROOT / "tests" / "browser" / "onset_recorder.js"

BPM = 120
STEPS_PER_BEAT = 4
SOUND = "hat"
DEFAULT_SECONDS = 60.0
LONG_SECONDS = 600.0
SMOKE_SECONDS = 4.0
BLOCK_PHASE_SECONDS = 1.75
"""Blocks start this long after play: the 16th step of the first 2 s loop, just before its sync moment."""
TAIL_SECONDS = 0.5
"""Recorded past the last step's window before the recorder is read."""

PAGES = ("loopsync", "baseline")


@dataclass(frozen=True)
class Condition:
    name: str
    label: str
    mode: str  # "none", "periodic", "once"
    block_ms: int = 0
    period_ms: int = 0


CONDITIONS = (
    Condition("idle", "idle", "none"),
    Condition("block300", "block 300 ms/1 s", "periodic", 300, 1000),
    Condition("block2s", "one 2 s block", "once", 2000),
)


def js_round(value: float) -> int:
    """JavaScript's Math.round (halves go up), which both pages use; Python's round() goes to even."""
    return math.floor(value + 0.5)


# -- analysis (pure) ---------------------------------------------------------------


@dataclass
class Figures:
    page: str
    condition: str
    expected: int
    found: int
    missing: int
    extra: int
    off_grid: int
    """found onsets more than one sample off their grid frame"""
    max_error: int
    """max |onset - grid| in samples over the found onsets"""
    std_error: float
    mean_error: float
    drift_ppm: float
    sample_rate: float
    frames_per_step: float
    errors: list[tuple[int, int]] = field(default_factory=list)
    """(step, error in samples) of every found onset"""
    missing_steps: list[int] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def meets_target(self) -> bool:
        # No drift: the fitted line moves less than one sample over the whole run.
        run_frames = self.expected * self.frames_per_step
        return self.missing == 0 and self.extra == 0 and self.max_error <= 1 and abs(self.drift_ppm) * 1e-6 * run_frames < 1


def analyse(onsets: list[int], steps: int, frames_per_step: float, sample_rate: float,
            page: str = "", condition: str = "") -> Figures:
    """Match recorded onset frames to the grid origin + round(n * frames_per_step), n < steps; origin = first onset."""
    found: dict[int, int] = {}
    extra = 0
    if onsets:
        origin = onsets[0]
        for frame in onsets:
            step = math.floor((frame - origin) / frames_per_step + 0.25)
            if step >= steps:
                break
            error = frame - (origin + js_round(step * frames_per_step))
            if step in found:
                extra += 1
            else:
                found[step] = error
    errors = sorted(found.items())
    values = [error for _, error in errors]
    drift = 0.0
    if len(errors) >= 2:  # least squares: the error's slope against the grid position, per million frames
        drift = statistics.linear_regression([js_round(step * frames_per_step) for step, _ in errors], values).slope * 1e6
    return Figures(
        page=page, condition=condition, expected=steps, found=len(found), missing=steps - len(found), extra=extra,
        off_grid=sum(1 for value in values if abs(value) > 1),
        max_error=max((abs(value) for value in values), default=0),
        std_error=statistics.pstdev(values) if values else 0.0,
        mean_error=statistics.fmean(values) if values else 0.0,
        drift_ppm=drift, sample_rate=sample_rate, frames_per_step=frames_per_step, errors=errors,
        missing_steps=[step for step in range(steps) if step not in found],
    )


# -- the pages ---------------------------------------------------------------------

ATTACH_RECORDER = """async ([source, which]) => {
  const hook = which === 'loopsync' ? window.loopsync : window.baseline;
  const context = hook.context;
  const url = URL.createObjectURL(new Blob([source], {type: 'application/javascript'}));
  await context.audioWorklet.addModule(url);
  const recorder = new AudioWorkletNode(context, 'onset-recorder', {numberOfInputs: 1, numberOfOutputs: 1});
  const silent = new GainNode(context, {gain: 0});
  hook.output.connect(recorder);
  recorder.connect(silent).connect(context.destination);
  window.benchRecorder = recorder;
  window.benchContext = context;
}"""

FLUSH_RECORDER = """() => new Promise((resolve) => {
  window.benchRecorder.port.onmessage = (event) => resolve(event.data);
  window.benchRecorder.port.postMessage({type: 'flush'});
})"""

START_BLOCKER = """([mode, firstStepTime, phaseSeconds, blockMs, periodSeconds]) => {
  // Blocks are aimed at the page's AUDIO clock (first step + phase + k periods), so they fall on the
  // same place against the steps in every run and on every page.
  const context = window.benchContext;
  window.benchBlocks = [];
  if (mode === 'none') return;
  const target = () => firstStepTime + phaseSeconds + window.benchBlocks.length * periodSeconds;
  const busy = () => {
    const audioTime = context.currentTime;
    const begin = performance.now();
    while (performance.now() < begin + blockMs) {}  // stuck: no events, no messages, no timers
    window.benchBlocks.push([audioTime, (performance.now() - begin) / 1000]);
  };
  const arm = () => {
    window.benchBlocker = setTimeout(fire, Math.max(0, (target() - context.currentTime) * 1000));
  };
  const fire = () => {
    if (context.currentTime < target() - 0.001) {  // woke before the audio clock got there
      arm();
      return;
    }
    busy();
    if (mode === 'periodic') arm();
  };
  arm();
}"""


class Run:
    """One page under one condition, in its own browser context."""

    def __init__(self, browser: Browser, server_url: str, page_kind: str, condition: Condition, seconds: float,
                 room_prefix: str = "clock") -> None:
        self.kind, self.condition, self.seconds = page_kind, condition, seconds
        self.steps = int(seconds * BPM / 60 * STEPS_PER_BEAT)
        self.errors: list[str] = []
        self.page = harness.new_page(browser, self.errors)
        if page_kind == "loopsync":
            harness.open_loopsync(self.page, f"{server_url}?room={room_prefix}-{condition.name}&user=bench&bpm={BPM}")
            self.page.select_option("#sound", SOUND)
            self.page.evaluate("() => { for (let step = 0; step < 16; step++) window.loopsync.toggleStep(step); }")
        else:
            self.page.route("**/bench/clock_baseline.*", _serve_bench_file)
            self.page.goto(f"{server_url}bench/clock_baseline.html?bpm={BPM}&sound={SOUND}")
            self.page.wait_for_function("() => window.baseline", timeout=30_000)
        self.page.evaluate(ATTACH_RECORDER, [RECORDER.read_text(), page_kind])
        self.sample_rate = float(self.page.evaluate("() => window.benchContext.sampleRate"))
        self.frames_per_step = self.sample_rate * 60 / BPM / STEPS_PER_BEAT
        self.first_step_time = 0.0
        """audio time of the first step (exact for the baseline, to a few ms for loopsync)"""

    @property
    def end_time(self) -> float:
        """Audio time after which every step's window has been recorded."""
        return self.first_step_time + (self.steps - 0.25) * self.frames_per_step / self.sample_rate + TAIL_SECONDS

    def play(self) -> None:
        """Start playing; then the blocks, if any, aimed at the audio clock from the first step."""
        if self.kind == "loopsync":
            # The clock starts at its next render quantum: the first step is within a few ms of now.
            self.first_step_time = float(self.page.evaluate(
                "() => { const t = window.benchContext.currentTime; window.loopsync.play(); return t; }"))
        else:
            self.first_step_time = float(self.page.evaluate("() => window.baseline.play()"))  # exact: startFrame / sampleRate
        condition = self.condition
        phase = BLOCK_PHASE_SECONDS
        if condition.mode == "once":
            # A third of the way through, on the same phase against the 2 s loop as the periodic blocks.
            phase += 2 * math.floor(self.seconds / 3 / 2)
            if phase + condition.block_ms / 1000 > self.seconds:
                phase = BLOCK_PHASE_SECONDS
        self.page.evaluate(START_BLOCKER, [condition.mode, self.first_step_time, phase, condition.block_ms,
                                           condition.period_ms / 1000])

    def audio_time(self) -> float:
        return float(self.page.evaluate("() => window.benchContext.currentTime"))

    def finish(self) -> Figures:
        blocks = self.page.evaluate("() => { clearTimeout(window.benchBlocker); return window.benchBlocks; }")
        run_seconds = self.steps * self.frames_per_step / self.sample_rate
        blocks = [block for block in blocks if block[0] - self.first_step_time < run_seconds]  # not the tail's
        recorded = self.page.evaluate(FLUSH_RECORDER)
        figures = analyse(recorded["onsets"], self.steps, self.frames_per_step, self.sample_rate, self.kind, self.condition.name)
        figures.notes = {
            "blocks": len(blocks), "blocked_ms": round(sum(length for _, length in blocks) * 1000),
            # [start, seconds] of each block, from the first step (audio time, to a few ms)
            "block_times": [[round(start - self.first_step_time, 3), round(length, 3)] for start, length in blocks],
            "peak": recorded["peak"], "recorded_frames": recorded["frame"], "page_errors": self.errors,
        }
        if self.kind == "baseline":
            stats = self.page.evaluate("() => { window.baseline.stop(); return window.baseline.stats(); }")
            figures.notes.update(scheduled_late=stats["late"], max_late_ms=round(stats["maxLateSeconds"] * 1000, 1))
        else:
            self.page.evaluate("() => window.loopsync.pause()")
        self.page.context.close()
        return figures


def _serve_bench_file(route: Route) -> None:
    """The baseline's page and script, from bench/ but at the server's origin (so it imports the client's voices.js)."""
    name = route.request.url.split("?", 1)[0].rsplit("/", 1)[-1]
    if name not in ("clock_baseline.html", "clock_baseline.js"):
        route.fulfill(status=404, body="not found\n")
        return
    route.fulfill(status=200, body=(harness.BENCH / name).read_text(), headers={"Cache-Control": "no-cache"},
                  content_type="text/html" if name.endswith(".html") else "text/javascript")


def _run_group(browser: Browser, server_url: str, conditions: tuple[Condition, ...], seconds: float,
               room_prefix: str) -> list[Figures]:
    """Both pages under every given condition, all at once; returns their figures."""
    runs = [Run(browser, server_url, kind, condition, seconds, room_prefix)
            for condition in conditions for kind in PAGES]
    for run in runs:
        run.play()
    deadline = time.monotonic() + seconds * 2 + 60
    pending = list(runs)
    while pending:
        pending = [run for run in pending if run.audio_time() < run.end_time]
        if time.monotonic() > deadline:
            raise TimeoutError("the pages' audio clocks did not reach the end of the run")
        if pending:
            time.sleep(0.25)  # polling the pages' audio clocks
    return [run.finish() for run in runs]


def run_all(browser: Browser, server_url: str, seconds: float, serial: bool = False,
            conditions: tuple[Condition, ...] = CONDITIONS, room_prefix: str = "clock") -> list[Figures]:
    """Every page x condition: at once, or one condition (two pages) at a time."""
    groups = [(condition,) for condition in conditions] if serial else [conditions]
    return [figure for group in groups for figure in _run_group(browser, server_url, group, seconds, room_prefix)]


# -- report --------------------------------------------------------------------------


def table(figures: list[Figures]) -> str:
    header = ("page", "condition", "expected", "found", "missing", "extra", "off grid", "max err (samples)", "std (samples)",
              "drift (ppm)", "blocks", "target")
    rows = [header]
    label = {condition.name: condition.label for condition in CONDITIONS}
    for figure in figures:
        rows.append((
            figure.page, label.get(figure.condition, figure.condition), str(figure.expected), str(figure.found),
            str(figure.missing), str(figure.extra), str(figure.off_grid),
            f"{figure.max_error} ({figure.max_error / figure.sample_rate * 1000:.1f} ms)" if figure.max_error > 1
            else str(figure.max_error),
            f"{figure.std_error:.2f}", f"{figure.drift_ppm:.2f}",
            f"{figure.notes.get('blocks', 0)} ({figure.notes.get('blocked_ms', 0) / 1000:.1f} s)",
            "met" if figure.meets_target else "missed",
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def svg_plot(figures: list[Figures], condition: str = "block300") -> str:
    """Onset error (ms) over time of both pages under one condition: blocks shaded, missing steps as red ticks."""
    chosen = sorted((figure for figure in figures if figure.condition == condition), key=lambda f: f.page != "baseline")
    label = {item.name: item.label for item in CONDITIONS}.get(condition, condition)
    svg = harness.Svg(760, 320, 60, 20, 62, 45, f"Onset error against the ideal grid, main thread: {label} (bench/clock.py)")
    seconds = max(figure.expected * figure.frames_per_step / figure.sample_rate for figure in chosen)
    errors_ms = [error / figure.sample_rate * 1000 for figure in chosen for _, error in figure.errors]
    y_max = max(10.0, math.ceil(max(errors_ms, default=0) / 10) * 10)
    y_min = -y_max / 10

    def x_at(time_s: float) -> float:
        return svg.left + svg.plot_w * min(max(time_s, 0.0), seconds) / seconds

    def y_of(ms: float) -> float:
        return svg.top + svg.plot_h * (y_max - ms) / (y_max - y_min)

    baseline = next((figure for figure in chosen if figure.page == "baseline"), chosen[0])
    for start, length in baseline.notes.get("block_times", []):
        x0, x1 = x_at(start), x_at(start + length)
        svg.add(f'<rect x="{x0:.1f}" y="{svg.top}" width="{max(0.5, x1 - x0):.1f}" height="{svg.plot_h}" fill="#eee"/>')
    for tick in range(0, int(y_max) + 1, max(10, int(y_max) // 5 // 10 * 10)):
        svg.y_tick(y_of(tick), str(tick))
    for tick in range(0, int(seconds) + 1, max(1, math.ceil(seconds / 12 / 5) * 5) if seconds > 12 else 1):
        svg.x_tick(x_at(tick), str(tick))
    svg.axes("time since the first step (s); grey: main thread blocked", "error (ms)", x_axis_y=y_of(0))
    colours = {"loopsync": "#1f77b4", "baseline": "#ff7f0e"}
    for row, figure in enumerate(chosen):
        colour = colours.get(figure.page, "black")
        radius = 1.6 if figure.page == "loopsync" else 2.2
        for step, error in figure.errors:
            x = x_at(step * figure.frames_per_step / figure.sample_rate)
            svg.add(f'<circle cx="{x:.1f}" cy="{y_of(error / figure.sample_rate * 1000):.1f}" r="{radius}" fill="{colour}"/>')
        for step in figure.missing_steps:
            x, bottom = x_at(step * figure.frames_per_step / figure.sample_rate), svg.top + svg.plot_h
            svg.add(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom - 7:.1f}" y2="{bottom:.1f}" stroke="#d62728"/>')
        svg.legend(34 + 16 * row, colour,
                   f"{figure.page}: {figure.found} of {figure.expected} steps heard, max error {figure.max_error} samples"
                   f" ({figure.max_error / figure.sample_rate * 1000:.1f} ms)"
                   + (f", {figure.missing} missing (red ticks)" if figure.missing else ""))
    return str(svg)


def main(argv: list[str] | None = None) -> int:
    parser = harness.arguments(__doc__, smoke=f"{SMOKE_SECONDS:g} s per run (the test suite runs as much)", long=f"{LONG_SECONDS:g} s per run")
    parser.add_argument("--seconds", type=float, default=None, help=f"seconds per run (default {DEFAULT_SECONDS:g})")
    parser.add_argument("--serial", action="store_true", help="one condition at a time (its two pages side by side)")
    parser.add_argument("--plot", type=Path, help="plot the onset errors under the 300 ms blocks to this .svg or .png "
                        "(a PNG is the SVG rendered by the same Chromium)")
    parser.add_argument("--chromium", default=harness.CHROMIUM, help="the Chromium binary")
    args = parser.parse_args(argv)
    seconds = (args.seconds if args.seconds is not None else SMOKE_SECONDS if args.smoke
               else LONG_SECONDS if args.long else DEFAULT_SECONDS)
    if seconds < 4:
        parser.error("--seconds must be at least 4")
    started = time.monotonic()
    with harness.ServerProcess("loopsync-memory") as server, harness.chromium(args.chromium) as browser:
        version = browser.version
        figures = run_all(browser, server.http_urls[0], seconds, serial=args.serial)
        if args.plot:
            harness.write_svg(svg_plot(figures), args.plot, browser=browser)
    mode = "one condition at a time" if args.serial else "all six runs at once"
    print(f"clock accuracy: {seconds:g} s per run, sixteenths at {BPM} BPM "
          f"({figures[0].frames_per_step:g} frames per step at {figures[0].sample_rate:g} Hz), {mode}, "
          f"Chromium {version}, {time.monotonic() - started:.0f} s in all")
    print(table(figures))
    for figure in figures:
        if figure.page == "baseline" and figure.notes.get("scheduled_late"):
            print(f"baseline, {figure.condition}: {figure.notes['scheduled_late']} steps scheduled after their time "
                  f"(up to {figure.notes['max_late_ms']} ms late; counted until the recording was read)")
        if figure.notes.get("page_errors"):
            print(f"{figure.page}, {figure.condition}: page errors: {figure.notes['page_errors']}")
    harness.write_json(args.json, {"seconds": seconds, "serial": args.serial, "chromium": version,
                                   "runs": [asdict(figure) for figure in figures]})
    ok = all(figure.meets_target for figure in figures if figure.page == "loopsync")
    print("loopsync met the target in every condition" if ok else "loopsync MISSED the target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
