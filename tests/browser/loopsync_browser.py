"""Helpers of the browser tests (imported by conftest.py and the tests): the server subprocess, waits, rounding."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Coroutine, TypeVar

from playwright.sync_api import Page

T = TypeVar("T")

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
