"""Coming back: a reload keeps unsent edits; a server restart is survived and the edits reach the server."""

from __future__ import annotations

import itertools
from typing import Any, Callable

import aiohttp
from playwright.sync_api import Page

from .loopsync_browser import TIME_UNIT, ServeProcess, run_async, wait_joined

_rooms = itertools.count()


def server_parts(server: ServeProcess, room: str) -> dict[str, Any]:
    """The room's Shared Data as the server holds it: the parts of a fresh observer's snapshot."""

    async def _fetch() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await ws.send_json({"type": "hello", "v": 1, "room": room, "user": "observer"})
            snapshot = await ws.receive_json(timeout=TIME_UNIT)
            assert snapshot["type"] == "snapshot", snapshot
            parts: dict[str, Any] = snapshot["doc"]["parts"]
            return parts

    return run_async(_fetch)


def own_steps_shown(page: Page) -> list[int]:
    """The own row as the DOM shows it."""
    steps: list[int] = page.evaluate(
        "() => [...document.querySelectorAll('.row.own .cell')].map(c => c.classList.contains('on') ? 1 : 0)"
    )
    return steps


def test_a_reload_keeps_unsent_edits_and_sends_them_on_play(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """Edits not yet sent (made while paused, or while playing before the sync) survive a reload and reach the server on play."""
    room = f"reload{next(_rooms)}"
    url = f"{loopsync_server.http_url}?room={room}&user=alice&bpm=20"  # 12 s loops: no sync comes by itself
    alice = open_page(url)
    alice.click('.row.own .cell[data-step="0"]')
    alice.click('.row.own .cell[data-step="5"]')
    alice.reload()
    wait_joined(alice)
    expected = [1, 0, 0, 0, 0, 1] + [0] * 10
    assert own_steps_shown(alice) == expected
    assert alice.evaluate("() => window.loopsync.sync.dirty()") is True
    assert alice.inner_text("#unsent") == "Your changes (marked •) are sent when you play."
    assert "alice" not in server_parts(loopsync_server, room)
    # Play: sent at once (and confirmed); then an edit while playing waits for the next sync, 12 s away.
    alice.keyboard.press("Space")
    alice.wait_for_function("() => !window.loopsync.sync.dirty()", timeout=5 * TIME_UNIT * 1000)
    assert server_parts(loopsync_server, room)["alice"]["steps"] == expected
    alice.click('.row.own .cell[data-step="8"]')
    alice.reload()
    wait_joined(alice)
    expected[8] = 1
    assert own_steps_shown(alice) == expected
    assert server_parts(loopsync_server, room)["alice"]["steps"][8] == 0
    assert alice.evaluate("() => [window.loopsync.sync.dirty(), window.loopsync.sync.confirmedSeq]") == [True, 1]
    alice.click("#play")
    alice.wait_for_function("() => !window.loopsync.sync.dirty()", timeout=5 * TIME_UNIT * 1000)
    assert server_parts(loopsync_server, room)["alice"]["steps"] == expected
    assert alice.evaluate("() => window.loopsync.sync.confirmedSeq") == 2


def test_a_server_restart_is_survived(open_page: Callable[..., Page], sqlite_server: Callable[[], ServeProcess]) -> None:
    """The server goes away and comes back on the same port: the page plays on, reconnects and its edits are on the server."""
    server = sqlite_server()
    room = f"restart{next(_rooms)}"
    alice = open_page(f"{server.http_url}?room={room}&user=alice&bpm=300")
    alice.click('.row.own .cell[data-step="0"]')
    alice.click("#play")
    alice.wait_for_function("() => window.loopsync.sync.confirmedSeq === 1", timeout=5 * TIME_UNIT * 1000)
    server.stop()
    alice.wait_for_selector("#connection[data-state=closed]", timeout=5 * TIME_UNIT * 1000)
    # Offline and still playing: edits are heard, kept, and survive a reload too.
    alice.click('.row.own .cell[data-step="4"]')
    alice.wait_for_function(
        "() => window.loopsync.events.filter(e => e.type === 'step' && e.step === 4 && e.sounded.includes('alice')).length >= 1",
        timeout=5 * TIME_UNIT * 1000,
    )
    steps_before = alice.evaluate("() => window.loopsync.events.filter(e => e.type === 'step').length")
    alice.wait_for_function(
        "(n) => window.loopsync.events.filter(e => e.type === 'step').length >= n + 16", arg=steps_before,
        timeout=5 * TIME_UNIT * 1000,
    )
    steps = alice.evaluate("() => window.loopsync.events.filter(e => e.type === 'step').map(e => e.absoluteStep)")
    assert steps == list(range(len(steps))), "the loop plays on without the server"
    assert alice.evaluate("() => window.loopsync.sync.dirty()") is True
    server.start()
    alice.wait_for_selector("#connection[data-state=open]", timeout=10 * TIME_UNIT * 1000)
    alice.wait_for_function("() => !window.loopsync.sync.dirty()", timeout=5 * TIME_UNIT * 1000)
    expected = [1, 0, 0, 0, 1] + [0] * 11
    assert server_parts(server, room)["alice"]["steps"] == expected
    # A second outage, paused this time: the edit made offline waits, survives a reload, goes out on play.
    alice.click("#play")
    server.stop()
    alice.wait_for_selector("#connection[data-state=closed]", timeout=5 * TIME_UNIT * 1000)
    alice.click('.row.own .cell[data-step="12"]')
    server.start()
    alice.wait_for_selector("#connection[data-state=open]", timeout=10 * TIME_UNIT * 1000)
    alice.reload()
    wait_joined(alice)
    expected[12] = 1
    assert own_steps_shown(alice) == expected
    assert server_parts(server, room)["alice"]["steps"][12] == 0
    alice.click("#play")
    alice.wait_for_function("() => !window.loopsync.sync.dirty()", timeout=5 * TIME_UNIT * 1000)
    assert server_parts(server, room)["alice"]["steps"] == expected
    assert "Traceback" not in server.log()


def test_a_tab_that_becomes_visible_fetches_the_shared_data(open_page: Callable[..., Page], loopsync_server: ServeProcess) -> None:
    """On visibilitychange to visible (a frozen background tab waking up) the page sends fetch and takes the snapshot."""
    room = f"visible{next(_rooms)}"
    alice = open_page(f"{loopsync_server.http_url}?room={room}&user=alice")
    alice.evaluate(
        """() => {
             Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});
             document.dispatchEvent(new Event('visibilitychange'));
           }"""
    )
    alice.wait_for_function(
        "() => window.loopsync.events.filter(e => e.type === 'recv' && e.kind === 'snapshot').length === 2",
        timeout=5 * TIME_UNIT * 1000,
    )
    assert alice.evaluate("() => window.loopsync.sentLog.map(m => m.type)") == ["hello", "fetch"]
