"""Where Shared Data lives between restarts: in memory, or in one SQLite file.

Both stores have the same interface. The server calls :meth:`load_rooms` once
at start-up and rebuilds each :class:`~loopsync.rooms.Room` with
``Room.restore``; after that it calls ``await store.save(accepted)`` for every
accepted update and acknowledges the update only when ``save`` has returned,
because by then the record is durable.

:class:`SqliteStore` makes that cheap with group commit: while one
transaction is being committed (in the store's single worker thread), the
updates that arrive are queued, and they all go into the next transaction.
A busy server therefore pays one ``fsync`` per batch, not per update, and
every ``save`` still returns only after its own record is committed.

Errors::

    StoreError          the store cannot be used (or a commit failed)
    └── StoreLocked     another server holds the data directory's lock
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import json
import os
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Protocol

from .rooms import Accepted

DATABASE_NAME = "loopsync.sqlite3"
LOCK_NAME = "loopsync.lock"


class StoreError(Exception):
    """The store cannot be opened, or a commit failed."""


class StoreLocked(StoreError):
    """Another server process already uses this data directory."""


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

    async def save(self, accepted: Accepted) -> None:
        """Record the update; memory is as durable as this store gets."""
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

_UPSERT = """
INSERT INTO parts (room, user, seq, revision, part) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (room, user) DO UPDATE SET
    seq = excluded.seq, revision = excluded.revision, part = excluded.part
"""

_Pending = tuple["Accepted | None", "asyncio.Future[None]"]
"""A record waiting for the next transaction, or ``None`` for a :meth:`SqliteStore.flush` marker."""


class SqliteStore:
    """Shared Data in ``DIR/loopsync.sqlite3``, committed with ``synchronous=FULL`` before ``save`` returns.

    Opening the store takes an exclusive lock on ``DIR/loopsync.lock`` so that
    two servers never write one file; the second one gets :class:`StoreLocked`.
    The table holds the latest accepted part of each user of each room, which
    is all a restart needs (an update carries the whole part).
    ``busy_timeout`` is how long a commit waits for SQLite's own write lock
    (held only by a foreign process, since our lock keeps other servers out).
    """

    def __init__(self, data_dir: Path | str, *, busy_timeout: float = 5.0) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DATABASE_NAME
        self.busy_timeout = busy_timeout
        self._lock_fd: int | None = None
        self._connection: sqlite3.Connection | None = None
        # One thread does all the SQLite work: the connection never crosses threads.
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[_Pending] = []
        self._committing: asyncio.Future[None] | None = None
        self.commits = 0
        """Transactions committed so far (batches, not updates): for tests and benchmarks."""

    def open(self) -> None:
        """Take the directory's lock and open (or create) the database; raise :class:`StoreError` if not possible."""
        if self._executor is not None:
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
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopsync-store")
        try:
            self._executor.submit(self._open_connection).result()
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
        return self._require_open().submit(self._select, None).result()

    async def load_room(self, room: str) -> list[Accepted]:
        """The stored parts of one room, oldest revision first."""
        executor = self._require_open()
        rooms = await asyncio.get_running_loop().run_in_executor(executor, self._select, room)
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
            rooms[name].append(Accepted(name, user, seq, revision, json.loads(part)))
        return dict(rooms)

    async def save(self, accepted: Accepted) -> None:
        """Queue the update for the next transaction and return once that transaction is committed."""
        self._require_open()
        # A caller that goes away (its connection closed) cancels only its
        # future: the record stays in its batch and is committed all the same.
        await self._enqueue(accepted)

    async def flush(self) -> None:
        """Wait until every ``save`` started so far has been committed (or has failed)."""
        if self._committing is None:
            return
        try:
            await self._enqueue(None)
        except StoreError:
            pass  # the failure belongs to the saves of that batch; they report it

    def _enqueue(self, accepted: Accepted | None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((accepted, future))
        if self._committing is None:
            self._committing = asyncio.ensure_future(self._commit_pending())
        return future

    async def _commit_pending(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                records = [record for record, _ in batch if record is not None]
                try:
                    if records:
                        await loop.run_in_executor(self._executor, self._write_batch, records)
                except Exception as exc:
                    problem = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc}")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(problem)
                            # The caller may be gone; do not warn about an unread exception.
                            future.exception()
                else:
                    self.commits += 1 if records else 0
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._committing = None

    def _write_batch(self, batch: list[Accepted]) -> None:
        connection = self._connection
        if connection is None:
            raise StoreError("the store is closed")
        rows = [(a.room, a.user, a.seq, a.revision, json.dumps(a.part, separators=(",", ":"))) for a in batch]
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(_UPSERT, rows)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Commit what is pending, close the database and release the lock."""
        if self._executor is None:
            return
        while self._committing is not None:
            await self.flush()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_connection)
        self._release()

    def close_now(self) -> None:
        """Close without an event loop (start-up failures); nothing may be pending."""
        if self._executor is not None:
            self._executor.submit(self._close_connection).result()
        self._release()

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _release(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _require_open(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            raise StoreError("the store is not open")
        return self._executor

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.data_dir)!r})"
