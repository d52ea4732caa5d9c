"""Where Shared Data lives between restarts: in memory, or in one SQLite file.

Both stores have the same interface. The server calls :meth:`load_rooms` once
at start-up and rebuilds each :class:`~loopsync.rooms.Room` with
``Room.restore``; after that it calls ``store.save_soon(accepted, done)`` for
every accepted update and acknowledges the update only in ``done``, because by
then the record is durable. ``await store.save(accepted)`` is the same as a
coroutine.

:class:`SqliteStore` makes that cheap with group commit: while one
transaction is being committed (in the store's own thread), the updates that
arrive are queued, and they all go into the next transaction. A busy server
therefore pays one ``fsync`` per batch, not per update, and one wake-up of the
event loop per batch, whose ``done`` callbacks then run in queue order; every
``done`` still runs only after its own record is committed.

Errors::

    StoreError          the store cannot be used (or a commit failed)
    └── StoreLocked     another server holds the data directory's lock
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Final, Protocol

import orjson

from .rooms import Accepted

DATABASE_NAME = "loopsync.sqlite3"
COMMIT_INTERVAL_SECONDS = 0.003
"""The shortest time from one batch's start to the next one's. A commit costs
about 0.1 ms of CPU however few records it holds (fsync, WAL headers), so
without a floor a server at a few thousand updates a second would commit them
one or two at a time and spend a third of a core doing it; with it, batches
grow with the load and an update waits at most this long for its transaction.
3 ms: at 24,000 deliveries/s the server used 55% of a core against 68% with
1 ms, for 1.6 ms more median latency (``bench/fanout.py``)."""
LOCK_NAME = "loopsync.lock"

log = logging.getLogger("loopsync.store")


class StoreError(Exception):
    """The store cannot be opened, or a commit failed."""


class StoreLocked(StoreError):
    """Another server process already uses this data directory."""


Done = Callable[["StoreError | None"], None]
"""Called on the event loop once a saved record is committed (``None``) or its commit failed."""


class Store(Protocol):
    """What the server needs from a store."""

    def open(self) -> None:
        """Get ready for use (take locks, open files); calling it again does nothing."""
        ...

    def load_rooms(self) -> dict[str, list[Accepted]]:
        """Every stored part, grouped by room: the latest accepted update of each user."""
        ...

    async def load_room(self, room: str) -> list[Accepted]:
        """The stored parts of one room (to rebuild it after a failed commit)."""
        ...

    def save_soon(self, accepted: Accepted, done: Done) -> None:
        """Queue one accepted update; call ``done(None)`` on the event loop once it is committed, ``done(StoreError)`` if not.

        ``done`` callbacks run in the order the updates were queued.
        """
        ...

    async def save(self, accepted: Accepted) -> None:
        """Make one accepted update durable; return only once it is committed."""
        ...

    async def flush(self) -> None:
        """Wait until every ``save`` started so far has been committed (or has failed)."""
        ...

    async def close(self) -> None:
        """Commit what is pending and release the store's resources."""
        ...


class MemoryStore:
    """Keeps Shared Data in this process only: for tests, benchmarks and throwaway servers.

    One instance can be handed to a second server in the same process (a
    restart in a test) and it starts from what the first one saved.
    """

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str], Accepted] = {}

    def open(self) -> None:
        """Nothing to open."""

    def load_rooms(self) -> dict[str, list[Accepted]]:
        """Every saved part, grouped by room."""
        rooms: dict[str, list[Accepted]] = defaultdict(list)
        for accepted in sorted(self._parts.values(), key=lambda record: record.revision):
            rooms[accepted.room].append(accepted)
        return dict(rooms)

    async def load_room(self, room: str) -> list[Accepted]:
        """The saved parts of one room."""
        return self.load_rooms().get(room, [])

    def save_soon(self, accepted: Accepted, done: Done) -> None:
        """Record the update and call ``done`` at once: memory is as durable as this store gets."""
        self._parts[(accepted.room, accepted.user)] = accepted
        done(None)

    async def save(self, accepted: Accepted) -> None:
        """Record the update."""
        self._parts[(accepted.room, accepted.user)] = accepted

    async def flush(self) -> None:
        """Nothing is ever pending in memory."""

    async def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "MemoryStore()"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS parts (
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    seq INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    part TEXT NOT NULL,
    PRIMARY KEY (room, user)
)
"""

_UPSERT_BATCH = """
INSERT INTO parts (room, user, seq, revision, part)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]')
FROM json_each(?) WHERE true
ON CONFLICT (room, user) DO UPDATE SET
    seq = excluded.seq, revision = excluded.revision, part = excluded.part
"""
"""A whole batch in one statement, so one transaction: ``?`` is a JSON array of
``[room, user, seq, revision, part]`` rows, applied in order. One statement
means one call into SQLite, so the store's thread gives up and takes back the
GIL once per batch rather than once per row (``executemany``), and never waits
long for an event loop that is busy. (``WHERE true`` lets SQLite's parser tell
the upsert's ``ON CONFLICT`` from a join's ``ON``.)"""

_Record = tuple[Accepted, "Done"]


@dataclass(frozen=True)
class _Call:
    """A queue entry: run ``function`` in the store's thread, after the records queued before it."""

    function: Callable[[], Any]
    result: concurrent.futures.Future[Any]


_STOP: Final = object()
"""The queue entry that ends the store's thread."""


class SqliteStore:
    """Shared Data in ``DIR/loopsync.sqlite3``, committed with ``synchronous=FULL`` before a save counts.

    Opening the store takes an exclusive lock on ``DIR/loopsync.lock`` so that
    two servers never write one file; the second one gets :class:`StoreLocked`.
    The table holds the latest accepted part of each user of each room, which
    is all a restart needs (an update carries the whole part).
    ``busy_timeout`` is how long a commit waits for SQLite's own write lock
    (held only by a foreign process, since our lock keeps other servers out).

    One thread (``loopsync-store``) does all the SQLite work: it takes
    whatever is queued, commits the records as one transaction and hands the
    whole batch back to the event loop in one ``call_soon_threadsafe``, which
    runs the batch's ``done`` callbacks in the order they were queued.
    """

    def __init__(self, data_dir: Path | str, *, busy_timeout: float = 5.0, commit_interval: float = COMMIT_INTERVAL_SECONDS) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DATABASE_NAME
        self.busy_timeout = busy_timeout
        self.commit_interval = commit_interval
        self._lock_fd: int | None = None
        self._connection: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[tuple[list[_Record], asyncio.AbstractEventLoop] | _Call | object] = queue.SimpleQueue()
        self._pending: list[_Record] = []
        """Saves that wait on the event loop while the thread commits the batch before them."""
        self._committing = False
        """A batch is with the thread (event loop side; the thread never reads it)."""
        self._next_hand_over_at = 0.0
        self._hand_over_timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self.commits = 0
        """Transactions committed so far (batches, not updates): for tests and benchmarks."""

    def open(self) -> None:
        """Take the directory's lock and open (or create) the database; raise :class:`StoreError` if not possible."""
        if self._thread is not None:
            return
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot use the data directory {str(self.data_dir)!r}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock_fd)
            raise StoreLocked(f"another loopsync server is already using the data directory {str(self.data_dir)!r}") from exc
        self._lock_fd = lock_fd
        self._thread = threading.Thread(target=self._work, name="loopsync-store", daemon=True)
        self._thread.start()
        try:
            self._call(self._open_connection).result()
        except sqlite3.Error as exc:
            self._release()
            raise StoreError(f"cannot open {str(self.path)!r}: {exc}") from exc

    def _open_connection(self) -> None:
        # isolation_level=None: we write BEGIN and COMMIT ourselves, one per batch.
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so a commit survives a power cut.
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(_SCHEMA)
        self._connection = connection

    def load_rooms(self) -> dict[str, list[Accepted]]:
        """Every stored part, grouped by room, oldest revision first."""
        self._require_open()
        rooms: dict[str, list[Accepted]] = self._call(lambda: self._select(None)).result()
        return rooms

    async def load_room(self, room: str) -> list[Accepted]:
        """The stored parts of one room, oldest revision first."""
        self._require_open()
        rooms: dict[str, list[Accepted]] = await asyncio.wrap_future(self._call(lambda: self._select(room)))
        return rooms.get(room, [])

    def _select(self, room: str | None) -> dict[str, list[Accepted]]:
        if self._connection is None:
            raise StoreError("the store is closed")
        query = "SELECT room, user, seq, revision, part FROM parts"
        arguments: tuple[str, ...] = ()
        if room is not None:
            query += " WHERE room = ?"
            arguments = (room,)
        rooms: dict[str, list[Accepted]] = defaultdict(list)
        for name, user, seq, revision, part in self._connection.execute(query + " ORDER BY room, revision", arguments):
            rooms[name].append(Accepted(name, user, seq, revision, orjson.loads(part)))
        return dict(rooms)

    def save_soon(self, accepted: Accepted, done: Done) -> None:
        """Queue the update for the next transaction; ``done`` runs on this event loop once it is committed (or failed).

        Records are committed, and their ``done`` callbacks run, in the order
        they were queued. While the thread commits one batch, the saves that
        come in wait here and go to the thread together when that commit has
        returned and :attr:`commit_interval` has passed since it began: one
        wake-up of the thread per batch, not one per update.
        """
        self._require_open()
        self._pending.append((accepted, done))
        if not self._committing and self._hand_over_timer is None:
            self._schedule_hand_over()

    def _schedule_hand_over(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._next_hand_over_at - loop.time()
        if delay > 0:
            self._hand_over_timer = loop.call_later(delay, self._hand_over)
        else:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._hand_over_timer is not None:
            self._hand_over_timer.cancel()
            self._hand_over_timer = None
        if self._pending:
            loop = asyncio.get_running_loop()
            self._queue.put((self._pending, loop))
            self._pending = []
            self._committing = True
            self._next_hand_over_at = loop.time() + self.commit_interval

    async def save(self, accepted: Accepted) -> None:
        """Queue the update and return once its transaction is committed; raise :class:`StoreError` if it failed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(problem: StoreError | None) -> None:
            # A caller that went away (cancelled) leaves the record in its batch all the same.
            if not future.done():
                if problem is None:
                    future.set_result(None)
                else:
                    future.set_exception(problem)

        self.save_soon(accepted, done)
        await future

    async def flush(self) -> None:
        """Wait until every save queued so far has been committed (or has failed) and its ``done`` has run."""
        if self._thread is None:
            return
        await asyncio.wrap_future(self._call(lambda: None))

    def _call(self, function: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        self._hand_over()  # a call comes after every save before it
        call = _Call(function, concurrent.futures.Future())
        self._queue.put(call)
        return call.result

    def _work(self) -> None:
        """The store's thread: commit what is queued, batch after batch, until :data:`_STOP`."""
        while True:
            batch = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._queue.get_nowait())
            records: list[_Record] = []
            loop: asyncio.AbstractEventLoop | None = None
            for entry in batch:
                if isinstance(entry, tuple):
                    saves, loop = entry
                    records += saves
                    continue
                # A call or the stop comes after the records queued before it.
                self._commit(records, loop)
                records = []
                if entry is _STOP:
                    return
                assert isinstance(entry, _Call)
                try:
                    entry.result.set_result(entry.function())
                except BaseException as exc:
                    entry.result.set_exception(exc)
            self._commit(records, loop)

    def _commit(self, records: list[_Record], loop: asyncio.AbstractEventLoop | None) -> None:
        if not records or loop is None:
            return
        problem: StoreError | None = None
        try:
            self._write_batch([accepted for accepted, _ in records])
        except Exception as exc:
            problem = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc}")
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(self._completed, [done for _, done in records], problem)

    def _completed(self, callbacks: list[Done], problem: StoreError | None) -> None:
        """On the event loop: one batch is committed (or failed); start the next one, then tell this one's savers in order."""
        self._committing = False
        if self._pending and self._hand_over_timer is None:
            self._schedule_hand_over()
        if problem is None:
            self.commits += 1
        for done in callbacks:
            try:
                done(problem)
            except Exception:
                log.exception("error in a commit callback")

    def _write_batch(self, batch: list[Accepted]) -> None:
        connection = self._connection
        if connection is None:
            raise StoreError("the store is closed")
        rows = orjson.dumps([(a.room, a.user, a.seq, a.revision, a.part) for a in batch])
        # Autocommit: the statement is its own transaction, all rows or none.
        connection.execute(_UPSERT_BATCH, (rows.decode(),))

    async def close(self) -> None:
        """Commit what is pending, close the database and release the lock."""
        if self._thread is None:
            return
        await asyncio.wrap_future(self._call(self._close_connection))
        self._release()

    def close_now(self) -> None:
        """Close without an event loop (start-up failures); nothing may be pending."""
        if self._thread is not None:
            self._call(self._close_connection).result()
        self._release()

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _release(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _require_open(self) -> None:
        if self._thread is None:
            raise StoreError("the store is not open")

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.data_dir)!r})"
