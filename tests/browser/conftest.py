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
  ``open_page(url, viewport=(390, 844), touch=True)`` opens it as a phone.
- ``axe_source``: axe-core's source, installed on first use from the npm
  registry into ``tests/browser/node_modules`` (``npm ci`` from the lock
  file beside this file). Served to the page by the test only, never by the
  server. No npm: the test FAILS with what to install.
- ``artifacts``: a directory for this session's screenshots (pytest's temp
  dir, printed at the end of the run).

Waits are on events with a timeout of a few ``TIME_UNIT`` (scaled by
``LOOPSYNC_TIMEOUT_SCALE`` on slow machines), never fixed sleeps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from .loopsync_browser import CHROMIUM_ARGS, HERE, ServeProcess, wait_joined
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright


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


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    """One headless Chromium per test module.

    Not per session: Playwright's sync API keeps an event loop running in the
    main thread while it is open, and the asyncio tests that pytest collects
    after tests/browser/ cannot start their own loop beside it.
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def loopsync_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A real server with a memory store for the session; tests keep apart by room."""
    server = ServeProcess(tmp_path_factory.mktemp("memory"), store="memory")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[Callable[[], ServeProcess]]:
    """Factory for a restartable SQLite server on this test's own directory."""
    servers: list[ServeProcess] = []

    def _start() -> ServeProcess:
        server = ServeProcess(tmp_path / f"data{len(servers)}", store="sqlite")
        servers.append(server)
        return server.start()

    yield _start
    for server in servers:
        server.kill()


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's script, installed with ``npm ci`` into tests/browser/node_modules on first use."""
    script = HERE / "node_modules" / "axe-core" / "axe.min.js"
    if not script.is_file():
        if shutil.which("npm") is None:
            pytest.fail(
                "the accessibility test needs axe-core from the npm registry, and npm is not installed: "
                "apt-get install nodejs npm (then the test installs axe-core into tests/browser/node_modules).",
                pytrace=False,
            )
        result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not script.is_file():
            pytest.fail(f"npm ci in {HERE} did not install axe-core:\n{result.stdout[-2000:]}{result.stderr[-2000:]}", pytrace=False)
    return script.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session's screenshots go."""
    return tmp_path_factory.mktemp("screenshots")


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

    def _open(url: str, joined: bool = True, context: BrowserContext | None = None,
              viewport: tuple[int, int] = (1280, 800), touch: bool = False) -> Page:
        if context is None:
            width, height = viewport
            context = browser.new_context(viewport={"width": width, "height": height}, has_touch=touch, is_mobile=touch,
                                          device_scale_factor=1)
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
