"""Log lines that no client can multiply: at most a few per kind per minute.

A server open to strangers logs what they do wrong (a refused upgrade, a
broken frame, a connection cut for silence) and what goes wrong inside it;
either can be triggered once per message by a hostile client. Each line goes
through :meth:`ThrottledLog.log` under a key naming its kind: within a
window, the first :data:`LINES_PER_WINDOW` lines of a key are written and
the rest only counted, and the next line of that key says how many were
left out. So the log grows with the number of kinds of trouble, not with
the number of troublesome messages.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Final

WINDOW_SECONDS: Final = 60.0
LINES_PER_WINDOW: Final = 5


class ThrottledLog:
    """A logger whose lines are limited per key (``"bad frame"``, ``"internal"``...) and per window."""

    def __init__(self, logger: logging.Logger, *, clock: Callable[[], float] = time.monotonic,
                 window_seconds: float = WINDOW_SECONDS, lines_per_window: int = LINES_PER_WINDOW) -> None:
        self.logger = logger
        self.clock = clock
        self.window_seconds = window_seconds
        self.lines_per_window = lines_per_window
        self._windows: dict[str, tuple[float, int]] = {}
        """key -> (start of its window, lines seen in it)."""
        self._left_out: dict[str, int] = {}

    def log(self, key: str, level: int, message: str, *args: Any, exc_info: bool = False) -> None:
        """Write ``message % args`` unless ``key`` has had its share of lines in this window."""
        now = self.clock()
        start, seen = self._windows.get(key, (now, 0))
        if now - start >= self.window_seconds:
            start, seen = now, 0
        self._windows[key] = (start, seen + 1)
        if seen >= self.lines_per_window:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return
        left_out = self._left_out.pop(key, 0)
        if left_out:
            message += f" ({left_out} more like it left out of the log)"
        self.logger.log(level, message, *args, exc_info=exc_info)
        if len(self._windows) > 1024:  # keys are kinds, not clients: this only guards against a careless caller
            self._windows.clear()
