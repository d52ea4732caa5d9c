"""``python -m loopsync serve`` as a subprocess, for the tests that need a real process.

Shared by ``tests/conftest.py`` (the ``serve_process`` fixture) and the
browser tests. The first start listens on port 0 (or the port given) and
reads the real port back from the banner line; every later start uses that
same port and data directory, so clients reconnect to a restarted server.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

TIMEOUT_SCALE = float(os.environ.get("LOOPSYNC_TIMEOUT_SCALE", "1"))
TIME_UNIT = 2.0 * TIMEOUT_SCALE
"""Safety timeout for one awaited event; tests fail after it instead of hanging."""

BANNER_PREFIX = "loopsync is serving at http://127.0.0.1:"


class ServeProcess:
    """One server process on one data directory; ``start()`` again after ``stop()``/``kill()`` restarts it."""

    def __init__(self, data_dir: Path, store: str = "sqlite", port: int = 0) -> None:
        self.data_dir = data_dir
        self.store = store
        self.port = port
        self.process: subprocess.Popen[str] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"
        self.banner = ""

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def command(self) -> list[str]:
        """The command line of the next start."""
        return [sys.executable, "-m", "loopsync", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--store", self.store, "--data", str(self.data_dir)]

    def start(self) -> ServeProcess:
        """Start the server and wait for its ``loopsync is serving at ...`` line."""
        assert self.process is None or self.process.poll() is not None, "already running"
        # stderr (the server's log) goes to a file: a pipe nobody reads could fill and block the server.
        with open(self.log_path, "a") as log_file:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log_file, text=True)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 10 * TIME_UNIT)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith(BANNER_PREFIX):
            self.kill()
            raise AssertionError(f"loopsync serve did not start: {line!r}; log: {self.log()[-2000:]}")
        self.banner = line.rstrip("\n")
        self.port = int(line[len(BANNER_PREFIX):].split("/", 1)[0])
        return self

    def stop(self) -> int:
        """SIGTERM and wait for the exit code: a clean shutdown (clients see 1001)."""
        return self._end(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL: no clean shutdown at all."""
        return self._end(signal.SIGKILL)

    def restart(self) -> ServeProcess:
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
