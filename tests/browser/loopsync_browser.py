"""Helpers of the browser tests (imported by conftest.py and the tests): Chromium flags, waits, rounding."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from pathlib import Path
from typing import Any, Callable, Coroutine, TypeVar

from playwright.sync_api import Page

from serve_process import TIME_UNIT, ServeProcess

__all__ = ["CHROMIUM_ARGS", "HERE", "TIME_UNIT", "ServeProcess", "js_round", "run_async", "wait_joined"]

T = TypeVar("T")


CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # A page in a background window must keep its timers and rendering: two
    # pages play at once in some tests.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]

HERE = Path(__file__).parent


def wait_joined(page: Page) -> None:
    """Wait until the page's clock exists and its first snapshot has arrived."""
    page.wait_for_function(
        "() => window.loopsync && window.loopsync.app.engine.node && window.loopsync.sync.connected",
        timeout=10 * TIME_UNIT * 1000,
    )


def js_round(value: float) -> int:
    """JavaScript's Math.round (halves go up), which the clock uses; Python's round() goes to even."""
    return math.floor(value + 0.5)


def run_async(coroutine_function: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on its own thread (Playwright's sync API owns this thread's event loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coroutine_function())).result(timeout=10 * TIME_UNIT)
