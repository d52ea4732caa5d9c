"""The page itself: who you are, keyboard and mouse, read-only rows, sound and tempo."""

from __future__ import annotations

import itertools
import time
from typing import Callable

from playwright.sync_api import Browser, Page

from .loopsync_browser import TIME_UNIT, ServeProcess, wait_joined

_rooms = itertools.count()
WAIT_MS = 5 * TIME_UNIT * 1000


def test_the_name_is_asked_once_and_kept_and_user_overrides_it(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """A first visit asks for a name and keeps it; a reload joins as that name; ?user= overrides it for one tab only."""
    room = f"join{next(_rooms)}"
    page = open_page(f"{loopsync_server.http_url}?room={room}", joined=False)
    page.wait_for_selector("#join:not([hidden])")
    page.fill("#join-name", "not a name")
    page.press("#join-name", "Enter")
    assert page.is_visible("#join")
    page.fill("#join-name", "carol")
    page.press("#join-name", "Enter")
    wait_joined(page)
    assert page.evaluate("() => window.loopsync.sync.me") == "carol"
    page.reload()
    wait_joined(page)
    assert page.evaluate("() => window.loopsync.sync.me") == "carol"
    assert page.is_hidden("#join")
    other = page.context.new_page()
    other.goto(f"{loopsync_server.http_url}?room={room}&user=dave")
    wait_joined(other)
    assert other.evaluate("() => window.loopsync.sync.me") == "dave"
    page.reload()
    wait_joined(page)
    assert page.evaluate("() => window.loopsync.sync.me") == "carol"
    page.wait_for_function("() => document.querySelectorAll('#presence li').length === 2")
    assert page.locator("#presence li").all_inner_texts() == ["carol (you) · paused · 120 BPM", "dave · paused · 120 BPM"]


def test_keyboard_mouse_sound_tempo_and_read_only_rows(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """Space plays and pauses, arrows and Enter edit the own row, others' rows are read-only, sound and tempo apply."""
    room = f"keys{next(_rooms)}"
    erin = open_page(f"{loopsync_server.http_url}?room={room}&user=erin")
    frank = open_page(f"{loopsync_server.http_url}?room={room}&user=frank")
    frank.click('.row.own .cell[data-step="2"]')
    frank.keyboard.press("Space")  # play: sends it
    erin.wait_for_selector('.row[data-user=frank] .cell[data-step="2"].on', timeout=5 * TIME_UNIT * 1000)
    # Others' rows: their steps are not buttons (only this page's mix is), clicking changes nothing.
    assert erin.locator(".row[data-user=frank] .cells button").count() == 0
    erin.click('.row[data-user=frank] .cell[data-step="5"]')
    assert erin.evaluate("() => window.loopsync.sync.loopParts.frank.steps[5]") == 0
    assert "frank" in erin.inner_text(".row[data-user=frank] .who")
    # The own row by keyboard: Tab to it, arrows to move, Enter to toggle.
    erin.focus('.row.own .cell[data-step="0"]')
    erin.keyboard.press("ArrowRight")
    erin.keyboard.press("ArrowRight")
    erin.keyboard.press("Enter")
    erin.keyboard.press("End")
    erin.keyboard.press("Enter")
    assert erin.evaluate("() => window.loopsync.sync.own.steps") == [0, 0, 1] + [0] * 12 + [1]
    assert erin.get_attribute('.row.own .cell[data-step="2"]', "aria-pressed") == "true"
    # Space on a step reached with the keyboard toggles it; anywhere else (and on a clicked step) it plays and pauses.
    erin.keyboard.press("Space")
    assert erin.evaluate("() => window.loopsync.sync.own.steps[15]") == 0
    erin.keyboard.press("Space")
    assert erin.evaluate("() => window.loopsync.sync.own.steps[15]") == 1
    assert erin.inner_text("#play") == "Play"
    erin.click('.row.own .cell[data-step="7"]')
    erin.keyboard.press("Space")
    erin.wait_for_function("() => window.loopsync.events.some(e => e.type === 'state' && e.playing)")
    assert erin.evaluate("() => window.loopsync.sync.own.steps[7]") == 1
    assert erin.inner_text("#play") == "Pause"
    erin.select_option("#sound", "clap")
    erin.fill("#bpm", "150")
    erin.press("#bpm", "Enter")
    erin.dispatch_event("#bpm", "change")
    erin.wait_for_function("async () => (await window.loopsync.status()).bpm === 150")
    frank.wait_for_function(
        "() => window.loopsync.sync.shared.erin && window.loopsync.sync.shared.erin.sound === 'clap'",
        timeout=5 * TIME_UNIT * 1000,
    )
    frank.wait_for_selector("#presence li:has-text('erin · playing · 150 BPM')", timeout=5 * TIME_UNIT * 1000)
    erin.keyboard.press("Space")
    erin.wait_for_function("() => window.loopsync.events.filter(e => e.type === 'state' && !e.playing).length >= 1")
    assert erin.inner_text("#play") == "Play"


def test_the_readmes_two_user_tryout(browser: Browser, sqlite_server: Callable[[], ServeProcess]) -> None:
    """README, "Try it with two users": two tabs of one browser as alice and bob, default room, Play, edits, tempi, own mixes."""
    started = time.monotonic()
    server = sqlite_server()  # scripts/serve: the SQLite store
    context = browser.new_context(viewport={"width": 1280, "height": 800})  # one browser: its tabs share localStorage
    alice = context.new_page()
    alice.goto(f"{server.http_url}?user=alice")
    wait_joined(alice)
    bob = context.new_page()
    bob.goto(f"{server.http_url}?user=bob")
    wait_joined(bob)
    for page, user in ((alice, "alice"), (bob, "bob")):
        assert page.url == server.http_url, page.url
        assert page.evaluate("() => [window.loopsync.sync.me, window.loopsync.app.room]") == [user, "demo"]
    # Press Play (or Space) in both.
    alice.click("#play")
    alice.wait_for_function("() => window.loopsync.events.filter(e => e.type === 'step').length >= 8", timeout=WAIT_MS)
    bob.keyboard.press("Space")  # half a loop later, as a person would: bob's Loop Starts fall between alice's
    bob.wait_for_function("() => window.loopsync.events.some(e => e.type === 'step')", timeout=WAIT_MS)
    # alice clicks a step: bob's tab shows it at once as pending, with when, then hears it from his next Loop Start.
    alice.click('.row.own .cell[data-step="2"]')
    bob.wait_for_selector('.row[data-user=alice].pending .cell[data-step="2"].incoming-on', timeout=WAIT_MS)
    assert bob.inner_text(".row[data-user=alice] .when").startswith("changes in ")
    bob.wait_for_function(
        "() => window.loopsync.events.some(e => e.type === 'step' && e.step === 2 && e.sounded.includes('alice'))", timeout=WAIT_MS
    )
    bob.click('.row.own .cell[data-step="0"]')
    alice.wait_for_function("() => window.loopsync.sync.shared.bob?.steps[0] === 1", timeout=WAIT_MS)
    # Different tempi: each page plays every row at its own, and says so.
    bob.fill("#bpm", "90")
    bob.press("#bpm", "Enter")
    alice.wait_for_selector("#tempo-note:has-text('while bob hears the loop at 90 BPM')", timeout=WAIT_MS)
    # M, S and the slider are each tab's own mix, though the tabs share the browser's storage.
    alice.click(".row[data-user=bob] .mute")
    bob.reload()
    wait_joined(bob)
    assert bob.evaluate("() => window.loopsync.sync.me") == "bob"
    assert bob.get_attribute(".row.own .mute", "aria-pressed") == "false"
    assert alice.get_attribute(".row[data-user=bob] .mute", "aria-pressed") == "true"
    context.close()
    print(f"\nthe tryout took {time.monotonic() - started:.1f} s of machine time")
