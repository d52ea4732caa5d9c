"""The page's features for musicians: tabs and away users in presence, the own mix, the tempo field, an outage,
the invite link, focus and screen readers, audio unlock on a first tap, and export."""

from __future__ import annotations

import itertools
import re
import struct
from pathlib import Path
from typing import Any, Callable

import pytest
from playwright.sync_api import Browser, Page

from .loopsync_browser import CHROMIUM_ARGS, TIME_UNIT, ServeProcess, js_round, wait_joined
from .test_page_look import set_pattern, write_part_and_leave

_rooms = itertools.count()
WAIT_MS = 5 * TIME_UNIT * 1000


def test_two_tabs_are_one_user_and_a_user_who_left_is_away_and_can_be_muted(
    open_page: Callable[..., Page], loopsync_server: ServeProcess
) -> None:
    """Two tabs of alice are one row and one item (playing in 1 of 2 tabs); carol, gone, is marked away; bob mutes her, locally."""
    room = f"tabs{next(_rooms)}"
    url = f"{loopsync_server.http_url}?room={room}"
    write_part_and_leave(loopsync_server, room, "carol", {"sound": "clap", "steps": [1, 0] * 8})
    alice = open_page(f"{url}&user=alice&bpm=100")
    alice_again = alice.context.new_page()
    alice_again.goto(f"{url}&user=alice&bpm=110")
    wait_joined(alice_again)
    bob = open_page(f"{url}&user=bob")
    alice.click("#play")
    bob.wait_for_selector("#presence li[data-user=alice]:has-text('playing in 1 of 2 tabs')", timeout=WAIT_MS)
    assert bob.locator("#presence li[data-user=alice]").count() == 1
    assert bob.inner_text("#presence li[data-user=alice]") == "alice · playing in 1 of 2 tabs · 100/110 BPM"
    assert bob.locator(".row[data-user=alice]").count() == 1
    alice.wait_for_selector(".row.own .detail:has-text('also in 1 other tab')", timeout=WAIT_MS)
    assert alice.inner_text("#presence li[data-user=alice]").startswith("alice (you) · playing · 100 BPM · also in 1 other tab")
    # The paused tab says paused, in its own row and in its item.
    alice_again.wait_for_selector(".row.own .detail:has-text('also in 1 other tab')", timeout=WAIT_MS)
    assert alice_again.inner_text(".row.own .detail") == "kick · paused · also in 1 other tab"
    assert alice_again.inner_text("#presence li[data-user=alice]") == "alice (you) · paused · 110 BPM · also in 1 other tab"
    # Each page plays every row at its own tempo, and says so.
    assert bob.inner_text("#tempo-note") == (
        "Each page plays every row at its own tempo: here every row plays at 120 BPM, while alice hears the loop at 100/110 BPM."
    )
    # A colour per user, the same on every page (and on each tab), apart from the others'.
    swatch = "(selector) => getComputedStyle(document.querySelector(selector)).backgroundColor"
    alice_colour = alice.evaluate(swatch, ".row.own .swatch")
    assert alice_again.evaluate(swatch, ".row.own .swatch") == alice_colour
    assert bob.evaluate(swatch, ".row[data-user=alice] .swatch") == alice_colour
    assert bob.evaluate(swatch, ".row.own .swatch") not in (alice_colour, bob.evaluate(swatch, ".row[data-user=carol] .swatch"))
    # carol: a part, no connection: away, and still heard until muted.
    assert bob.locator(".row[data-user=carol].away").count() == 1
    assert "not connected" in bob.inner_text(".row[data-user=carol] .detail")
    assert "carol (away)" in (bob.get_attribute(".row[data-user=carol]", "aria-label") or "")
    bob.click(".row[data-user=carol] .mute")
    bob.wait_for_function("async () => (await window.loopsync.status()).gains.carol === 0")
    assert bob.locator(".row[data-user=carol].silenced").count() == 1
    bob.click(".row[data-user=alice] .solo")
    status = bob.evaluate("() => window.loopsync.status()")
    assert status["rest"] == 0 and status["gains"] == {"carol": 0, "alice": 1}
    bob.fill(".row[data-user=alice] .volume", "40")
    bob.wait_for_function("async () => (await window.loopsync.status()).gains.alice === 0.4")
    bob.fill("#master", "50")
    bob.wait_for_function("async () => (await window.loopsync.status()).master === 0.5")
    # The mix is the page's own: kept across a reload, never sent.
    assert not [m for m in bob.evaluate("() => window.loopsync.sentLog") if m["type"] not in ("hello", "transport")]
    bob.reload()
    wait_joined(bob)
    assert bob.get_attribute(".row[data-user=carol] .mute", "aria-pressed") == "true"
    assert bob.evaluate("async () => (await window.loopsync.status()).gains") == {"carol": 0, "alice": 0.4}
    assert bob.evaluate("async () => (await window.loopsync.status()).master") == 0.5 and bob.input_value("#master") == "50"
    # alice closes one tab: one tab left, paused.
    alice_again.close()
    bob.wait_for_selector("#presence li[data-user=alice]:text-is('alice · playing · 100 BPM')", timeout=WAIT_MS)


def test_the_tempo_field_shows_the_tempo_that_plays(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """1000, 0, an empty field or text are refused with a word why, and the field goes back to the tempo the clock plays."""
    page = open_page(f"{loopsync_server.http_url}?room=tempo{next(_rooms)}&user=erin")
    for text in ["1000", "0", "", "19.5", "-5"]:
        page.fill("#bpm", text)
        page.dispatch_event("#bpm", "change")
        assert page.input_value("#bpm") == "120", text
        assert "must be from 20 to 300 BPM" in page.inner_text("#bpm-note")
        assert "stays at 120 BPM" in page.inner_text("#bpm-note")
    assert page.evaluate("async () => (await window.loopsync.status()).bpm") == 120
    page.fill("#bpm", "96")
    page.dispatch_event("#bpm", "change")
    page.wait_for_function("async () => (await window.loopsync.status()).bpm === 96")
    assert page.inner_text("#bpm-note") == ""
    assert page.input_value("#bpm") == "96"


def test_an_outage_counts_down_says_why_nobody_is_listed_and_can_reconnect_now(
    open_page: Callable[..., Page], sqlite_server: Callable[[], ServeProcess]
) -> None:
    """Offline: the retry countdown moves, presence says why it is empty, and "Reconnect now" tries at once."""
    server = sqlite_server()
    page = open_page(f"{server.http_url}?room=outage{next(_rooms)}&user=alice", viewport=(390, 844), touch=True)
    page.wait_for_selector("#presence li", timeout=WAIT_MS)
    assert page.locator("#reconnect").is_hidden() and page.locator("#share").is_visible()
    grid_top = page.evaluate("() => document.querySelector('#grid').getBoundingClientRect().top")
    server.stop()
    page.wait_for_selector("#connection[data-state=closed]", timeout=WAIT_MS)
    # "Reconnect now" takes the invite button's place: on a phone the grid does not move.
    assert page.locator("#reconnect").is_visible() and page.locator("#share").is_hidden()
    assert page.evaluate("() => document.querySelector('#grid').getBoundingClientRect().top") == grid_top
    assert page.locator("#presence li").count() == 0
    assert page.inner_text("#presence-note").startswith("Offline: who is in the room is not known")
    # The countdown is alive: wait for a retry more than 2 s away, then see its number go down.
    page.wait_for_function(
        "() => /retrying in ([3-9]) s/.test(document.querySelector('#connection').textContent)", timeout=30 * TIME_UNIT * 1000
    )
    first = int(re.search(r"retrying in (\d+) s", page.inner_text("#connection")).group(1))  # type: ignore[union-attr]
    page.wait_for_function(
        "(first) => { const m = /retrying in (\\d+) s/.exec(document.querySelector('#connection').textContent); return m && Number(m[1]) < first; }",
        arg=first, timeout=10 * TIME_UNIT * 1000,
    )
    server.start()
    retry_at = page.evaluate("() => window.loopsync.app.connection.retryAt")
    page.click("#reconnect")
    # The click starts an attempt at once (not at the scheduled retry).
    assert page.evaluate("(retryAt) => [window.loopsync.connectionState !== 'closed', performance.now() < retryAt]", retry_at) == [True, True]
    page.wait_for_selector("#connection[data-state=open]", timeout=WAIT_MS)
    page.wait_for_selector("#presence li", timeout=WAIT_MS)
    assert page.locator("#reconnect").is_hidden() and page.locator("#share").is_visible()


def test_the_invite_link_is_the_room_only_and_the_address_forgets_the_user(
    browser: Browser, open_page: Callable[..., Page], loopsync_server: ServeProcess
) -> None:
    """?user= leaves the address at once; "Copy invite link" copies the room only; whoever opens it is asked for a name."""
    room = f"invite{next(_rooms)}"
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=loopsync_server.http_url.rstrip("/"))
    page = open_page(f"{loopsync_server.http_url}?room={room}&user=alice&bpm=90", context=context)
    assert page.url == f"{loopsync_server.http_url}?room={room}&bpm=90"
    page.click("#share")
    page.wait_for_selector("#invite:not([hidden])")
    link = page.evaluate("() => navigator.clipboard.readText()")
    assert link == f"{loopsync_server.http_url}?room={room}"
    assert page.input_value("#invite-link") == link
    assert page.inner_text("#invite-note").startswith("Copied.")
    # A reload of this tab keeps its name (the tab's own storage), though the address has none.
    page.reload()
    wait_joined(page)
    assert page.evaluate("() => window.loopsync.sync.me") == "alice"
    newcomer = open_page(link, joined=False)
    newcomer.wait_for_selector("#join:not([hidden])")
    assert newcomer.inner_text("#join-title") == f"Join room {room}"
    newcomer.fill("#join-name", "zoe")
    newcomer.press("#join-name", "Enter")
    wait_joined(newcomer)
    assert newcomer.evaluate("() => window.loopsync.sync.me") == "zoe"
    context.close()


def _contrast(colour: str, other: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""
    def luminance(css: str) -> float:
        channels = [int(value) / 255 for value in re.findall(r"\d+", css)[:3]]
        r, g, b = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b
    high, low = sorted((luminance(colour), luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_focus_is_visible_and_screen_readers_get_the_rows(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """Play's keyboard focus ring is a thick outline in a colour apart from its dark face; others' rows have a name and their steps."""
    room = f"a11y{next(_rooms)}"
    alice = open_page(f"{loopsync_server.http_url}?room={room}&user=alice")
    set_pattern(alice, [1, 0, 0, 0] * 4)
    alice.click("#play")
    bob = open_page(f"{loopsync_server.http_url}?room={room}&user=bob")
    bob.wait_for_function("() => window.loopsync.sync.shared.alice !== undefined", timeout=WAIT_MS)
    bob.keyboard.press("Tab")
    bob.keyboard.press("Tab")
    while bob.evaluate("() => document.activeElement.id") != "play":
        bob.keyboard.press("Tab")
    ring = bob.evaluate(
        """() => { const s = getComputedStyle(document.activeElement);
                   return [s.outlineStyle, parseFloat(s.outlineWidth), s.outlineColor, s.backgroundColor, s.boxShadow,
                           getComputedStyle(document.body).backgroundColor, parseFloat(s.outlineOffset)]; }"""
    )
    assert ring[0] == "solid" and ring[1] >= 3 and ring[2] != ring[3], ring
    # The ring is drawn on a white gap around the dark face and on the page: at least 3:1 against both (WCAG 1.4.11).
    assert ring[6] > 0 and ring[4].startswith("rgb(255, 255, 255)"), ring
    assert _contrast(ring[2], "rgb(255, 255, 255)") >= 3 and _contrast(ring[2], ring[5]) >= 3, ring
    label = bob.get_attribute(".row[data-user=alice]", "aria-label") or ""
    assert label.startswith("alice; kick · playing") and "plays steps 1, 5, 9, 13" in label, label
    assert bob.get_attribute(".row[data-user=alice] .cells", "aria-hidden") == "true"
    assert bob.get_attribute('.row.own .cell[data-step="3"]', "aria-label") == "Your step 4"


def test_the_first_tap_unlocks_the_audio(browser: Browser, chromium: str, loopsync_server: ServeProcess) -> None:
    """Without an autoplay exemption the AudioContext starts suspended; the first tap anywhere resumes it."""
    # The module's browser runs with an autoplay exemption: this one runs without.
    args = [arg for arg in CHROMIUM_ARGS if not arg.startswith("--autoplay-policy")] + ["--autoplay-policy=document-user-activation-required"]
    strict = browser.browser_type.launch(executable_path=chromium, headless=True, args=args)
    try:
        context = strict.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
        page = context.new_page()
        page.goto(f"{loopsync_server.http_url}?room=unlock{next(_rooms)}&user=ann")
        wait_joined(page)
        assert page.evaluate("() => window.loopsync.context.state") == "suspended"
        page.tap("h1")
        page.wait_for_function("() => window.loopsync.context.state === 'running'", timeout=WAIT_MS)
    finally:
        strict.close()


def _wav_channel0(data: bytes) -> tuple[int, list[float]]:
    """The sample rate and channel 0 of a float WAV file as encodeWav writes it."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    format_tag, channels, sample_rate = struct.unpack("<HHI", data[20:28])
    assert (format_tag, channels) == (3, 2)
    data_at = data.index(b"data") + 8
    count = struct.unpack("<I", data[data_at - 4:data_at])[0] // 4
    samples = struct.unpack(f"<{count}f", data[data_at:data_at + count * 4])
    return sample_rate, list(samples[0::2])


def test_export_writes_every_onset_on_its_exact_frame(
    open_page: Callable[..., Page], loopsync_server: ServeProcess, tmp_path: Path
) -> None:
    """Export renders N loops of Local Data at the page's tempo and mix to a WAV whose onsets are round(n * framesPerStep)."""
    room = f"export{next(_rooms)}"
    alice = open_page(f"{loopsync_server.http_url}?room={room}&user=alice")
    set_pattern(alice, [0, 0, 1, 0] * 4)
    alice.select_option("#sound", "hat")
    alice.click("#play")
    alice.wait_for_function("() => !window.loopsync.sync.dirty()", timeout=WAIT_MS)
    write_part_and_leave(loopsync_server, room, "carol", {"sound": "hat", "steps": [0, 0, 0, 0, 0, 0, 0, 1] * 2})
    bpm = 133
    bob = open_page(f"{loopsync_server.http_url}?room={room}&user=bob&bpm={bpm}")
    bob.wait_for_function("() => window.loopsync.sync.loopParts.carol !== undefined", timeout=WAIT_MS)
    set_pattern(bob, [1, 0, 0, 0] * 4)
    bob.select_option("#sound", "hat")
    bob.click(".row[data-user=carol] .mute")  # bob's mix: carol is not in the file
    bob.fill("#export-loops", "3")
    with bob.expect_download(timeout=30 * TIME_UNIT * 1000) as download_info:
        bob.click("#export")
    download = download_info.value
    assert download.suggested_filename == f"loopsync-{room}-{bpm}bpm-3loops.wav"
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    sample_rate, samples = _wav_channel0(path.read_bytes())
    assert sample_rate == bob.evaluate("() => window.loopsync.context.sampleRate")
    step_length = sample_rate * 60 / bpm / 4
    loop_frames = js_round(48 * step_length)
    assert loop_frames < len(samples) <= loop_frames + sample_rate  # three loops, then the last sounds ring out
    onsets, zeros = [], 64
    for index, sample in enumerate(samples):
        if sample == 0.0:
            zeros += 1
        else:
            if zeros >= 64:
                onsets.append(index)
            zeros = 0
    bob_steps, alice_steps = [1, 0, 0, 0] * 4, [0, 0, 1, 0] * 4
    expected = [js_round(n * step_length) for n in range(48) if bob_steps[n % 16] or alice_steps[n % 16]]
    assert onsets == expected
    assert "Saved" in bob.inner_text("#export-note")
    print(f"\nexport: {len(onsets)} onsets in {len(samples)} frames at {sample_rate} Hz, each on round(n * {step_length:.4f})")


# Two ways an output reports its latency of 0.3 s: the latencies (getOutputTimestamp() not sane), or the timestamp.
_LATE_OUTPUT = {
    "latencies": """
        Object.defineProperty(AudioContext.prototype, 'outputLatency', { get() { return 0.3; } });
        AudioContext.prototype.getOutputTimestamp = function () { return { contextTime: 0, performanceTime: 0 }; };""",
    "timestamp": """
        Object.defineProperty(AudioContext.prototype, 'outputLatency', { get() { return 0; } });
        Object.defineProperty(AudioContext.prototype, 'baseLatency', { get() { return 0; } });
        AudioContext.prototype.getOutputTimestamp = function () {
          return { contextTime: Math.max(0, this.currentTime - 0.3), performanceTime: performance.now() };
        };""",
}


@pytest.mark.parametrize("source", sorted(_LATE_OUTPUT))
def test_the_playhead_lights_a_step_when_it_is_heard(
    browser: Browser, open_page: Callable[..., Page], loopsync_server: ServeProcess, source: str
) -> None:
    """With an output 0.3 s behind the rendering, a step lights up 0.3 s after it is rendered: never before, at most a frame after."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(_LATE_OUTPUT[source])
    page = open_page(f"{loopsync_server.http_url}?room=heard{next(_rooms)}&user=hal&bpm=120", context=context)
    page.click("#play")
    page.wait_for_function("() => window.loopsync.events.filter(e => e.type === 'step').length >= 8", timeout=WAIT_MS)
    samples: list[dict[str, Any]] = page.evaluate(
        """async () => {
             const samples = [];
             for (let frame = 0; frame < 90; frame++) {
               await new Promise(requestAnimationFrame);
               const shown = /loop (\\d+) · step (\\d+)/.exec(document.querySelector('#position').textContent);
               const now = document.querySelector('.row.own .cell.now');
               samples.push({ currentTime: window.loopsync.context.currentTime, loop: Number(shown[1]) - 1,
                              step: Number(shown[2]) - 1, cell: now ? Number(now.dataset.step) : -1 });
             }
             return samples;
           }"""
    )
    steps = {(e["loop"], e["step"]): e for e in page.evaluate("() => window.loopsync.events.filter(e => e.type === 'step')")}
    by_absolute = {e["absoluteStep"]: e for e in steps.values()}
    lags = []
    for sample in samples:
        shown = steps[(sample["loop"], sample["step"])]
        assert sample["cell"] == sample["step"]
        heard = sample["currentTime"] - 0.3
        assert shown["contextTime"] <= heard + 1e-6, ("drawn before it is heard", sample, shown)
        following = by_absolute.get(shown["absoluteStep"] + 1)
        if following is not None:  # the next step was not heard yet, give or take one animation frame and one quantum
            assert following["contextTime"] > heard - 0.05, ("drawn late", sample, following)
        rendered = max(e["absoluteStep"] for e in steps.values() if e["contextTime"] <= sample["currentTime"])
        lags.append(rendered - shown["absoluteStep"])
    # 0.3 s is 2.4 steps at 120 BPM: the drawn step trails the rendered one by 2 or 3.
    assert set(lags) <= {2, 3} and 2 in lags and 3 in lags, lags
    context.close()
