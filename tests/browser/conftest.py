"""Fixtures for the browser tests: real headless Chromium against a real loopsync server.

- ``chromium``: the path of the Chromium binary (``$LOOPSYNC_CHROMIUM`` or
  ``/usr/bin/chromium``). A missing browser FAILS every browser test: these
  tests are the only check of the audio clock and must never be skipped.
- ``browser``: one Chromium for the whole session (Playwright's sync API).
- ``loopsync_server``: ``python -m loopsync serve --store memory --port 0``
  for the whole session; each test uses its own room.
- ``sqlite_server``: a factory for a restartable SQLite server on its own
  data directory; ``restart()`` comes back on the same port.
- ``open_page``: ``open_page(url)`` opens a page in a fresh browser context
  (its own localStorage, like another person's browser) and waits until the
  loopsync page has joined; page errors fail the test at teardown.

Waits are on events with a timeout of a few ``TIME_UNIT`` (scaled by
``LOOPSYNC_TIMEOUT_SCALE`` on slow machines), never fixed sleeps.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

TIMEOUT_SCALE = float(os.environ.get("LOOPSYNC_TIMEOUT_SCALE", "1"))
TIME_UNIT = 2.0 * TIMEOUT_SCALE
"""Seconds: the safety timeout for one awaited event."""

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


class LoopsyncServer:
    """``python -m loopsync serve`` as a subprocess; ``restart()`` keeps its port and data."""

    def __init__(self, store: str, data_dir: Path) -> None:
        self.store = store
        self.data_dir = data_dir
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> LoopsyncServer:
        """Start (on port 0 the first time, on the same port after) and wait for the banner line."""
        command = [sys.executable, "-m", "loopsync", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--store", self.store, "--data", str(self.data_dir)]
        with open(self.log_path, "a") as log_file:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 10 * TIME_UNIT)
        line = self.process.stdout.readline() if ready else ""
        prefix = "loopsync is serving at http://127.0.0.1:"
        if not line.startswith(prefix):
            self.kill()
            raise AssertionError(f"loopsync serve did not start: {line!r}; log: {self.log()[-2000:]}")
        self.port = int(line[len(prefix):].split("/", 1)[0])
        return self

    def stop(self) -> int:
        """SIGTERM and wait: a clean shutdown (the clients see their sockets close)."""
        return self._end(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL and wait."""
        return self._end(signal.SIGKILL)

    def restart(self) -> LoopsyncServer:
        """Stop, then start again on the same port and data directory."""
        self.stop()
        return self.start()

    def _end(self, signal_number: int) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
        code = self.process.wait(timeout=10 * TIME_UNIT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def log(self) -> str:
        """What the server wrote to stderr (all its runs)."""
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; fails (never skips) when it is not there."""
    path = os.environ.get("LOOPSYNC_CHROMIUM", "/usr/bin/chromium")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {path!r}: the browser tests need a real Chromium. "
            "Install it (apt-get install chromium) or set LOOPSYNC_CHROMIUM.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def browser(chromium: str) -> Iterator[Browser]:
    """One headless Chromium for the session."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def loopsync_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopsyncServer]:
    """A real server with a memory store for the session; tests keep apart by room."""
    server = LoopsyncServer("memory", tmp_path_factory.mktemp("memory"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[Callable[[], LoopsyncServer]]:
    """Factory for a restartable SQLite server on this test's own directory."""
    servers: list[LoopsyncServer] = []

    def _start() -> LoopsyncServer:
        server = LoopsyncServer("sqlite", tmp_path / f"data{len(servers)}")
        servers.append(server)
        return server.start()

    yield _start
    for server in servers:
        server.kill()


class PageErrors:
    """Uncaught errors and console errors of the pages of one test."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page, name: str) -> None:
        page.on("pageerror", lambda error: self.errors.append(f"{name}: {error}"))
        page.on("console", lambda message: self._console(name, message))

    def _console(self, name: str, message: Any) -> None:
        if message.type == "error" and "favicon" not in message.text and "WebSocket" not in message.text:
            self.errors.append(f"{name}: console error: {message.text}")


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Factory: ``open_page(url, joined=True)`` opens a page in its own context and waits for the snapshot."""
    contexts: list[BrowserContext] = []
    errors = PageErrors()

    def _open(url: str, joined: bool = True, context: BrowserContext | None = None) -> Page:
        if context is None:
            context = browser.new_context()
            contexts.append(context)
        page = context.new_page()
        errors.watch(page, url)
        page.goto(url)
        if joined:
            wait_joined(page)
        return page

    yield _open
    for context in contexts:
        context.close()
    assert not errors.errors, "errors in the page:\n" + "\n".join(errors.errors)


def wait_joined(page: Page) -> None:
    """Wait until the page's clock exists and its first snapshot has arrived."""
    page.wait_for_function(
        "() => window.loopsync && window.loopsync.app.engine.node && window.loopsync.sync.connected",
        timeout=10 * TIME_UNIT * 1000,
    )


def js_round(value: float) -> int:
    """JavaScript's Math.round (halves go up), which the clock uses; Python's round() goes to even."""
    import math

    return math.floor(value + 0.5)
