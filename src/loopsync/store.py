"""Where Shared Data lives: in memory, or in one SQLite file (the embedded default).

Every store has the same interface (:class:`Store`). The server loads a room
with :meth:`Store.load_room` when its first member says ``hello`` (start-up
reads nothing), and hands every update that passed the room's checks to
:meth:`Store.commit_soon` as a :class:`~loopsync.rooms.Proposal`. The store
decides it (seq rules, revision: :func:`loopsync.rooms.sequence`), makes the
accepted records durable, and only then calls ``done`` with the outcome, so
the server acknowledges nothing that a crash could take back.

:class:`SqliteStore` makes that cheap with group commit: while one batch is
being committed (in the store's own thread), the proposals that arrive wait,
and they are sequenced and committed together in the next transaction. A busy
server therefore pays one ``fsync`` per batch, not per update, and one
wake-up of the event loop per batch, whose ``done`` callbacks then run in
queue order. A batch is sequenced only after the previous batch's callbacks
have run (which is when the server applies its records to the rooms), so
each batch is decided against committed state, and a batch that fails to
commit leaves nothing to undo: its proposals get the error and none of them
was applied anywhere.

Errors::

    StoreError          the store cannot be used (or a commit failed): answered ``unavailable``
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Final, Protocol, Union

import orjson

from .document import Invalid
from .rooms import Accepted, Proposal, RoomRecord, sequence

DATABASE_NAME = "loopsync.sqlite3"
SCHEMA_VERSION = 2
COMMIT_INTERVAL_SECONDS = 0.003
"""The shortest time from one batch's start to the next one's. A commit costs
about 0.1 ms of CPU however few records it holds (fsync, WAL headers), so
without a floor a server at a few thousand updates a second would commit them
one or two at a time and spend a third of a core doing it; with it, batches
grow with the load and an update waits at most this long for its transaction."""
LOCK_NAME = "loopsync.lock"

log = logging.getLogger("loopsync.store")


class StoreError(Exception):
    """The store cannot be opened, or a commit failed."""


class StoreLocked(StoreError):
    """Another server process already uses this data directory."""


Outcome = Union[list[Accepted], Invalid, StoreError]
"""What became of a proposal: its committed records, the rule it broke, or the store's failure."""
Done = Callable[[Outcome], None]
"""Called on the event loop once a proposal is decided and, if accepted, committed."""


class Store(Protocol):
    """What the server needs from a store."""

    async def open(self) -> None:
        """Get ready for use (take locks, open files); raise :class:`StoreError` if not possible."""
        ...

    async def load_room(self, room: str) -> RoomRecord:
        """The room's revision and each user's latest record (revision 0 and none for a new room)."""
        ...

    def commit_soon(self, proposal: Proposal, done: Done) -> None:
        """Decide and commit ``proposal`` in a coming batch; ``done(outcome)`` runs on the event loop, in queue order."""
        ...

    async def flush(self) -> None:
        """Wait until every proposal queued so far is decided and its ``done`` has run."""
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
        self._rooms: dict[str, tuple[int, dict[str, Accepted]]] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def load_room(self, room: str) -> RoomRecord:
        """The saved records of one room."""
        revision, records = self._rooms.get(room, (0, {}))
        return RoomRecord(revision, sorted(records.values(), key=lambda record: record.revision))

    def commit_soon(self, proposal: Proposal, done: Done) -> None:
        """Decide the proposal and call ``done`` at once: memory is as durable as this store gets."""
        [outcome] = sequence([proposal])
        if isinstance(outcome, list):
            self._save(outcome)
        done(outcome)

    def _save(self, records: list[Accepted]) -> None:
        for record in records:
            revision, parts = self._rooms.setdefault(record.room, (0, {}))
            if record.part is None:
                parts.pop(record.user, None)
            else:
                parts[record.user] = record
            self._rooms[record.room] = (record.revision, parts)

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
);
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
);
"""
_MIGRATE_FROM_1 = "INSERT OR IGNORE INTO rooms (room, revision) SELECT room, max(revision) FROM parts GROUP BY room"
"""Schema 1 had no rooms table: a room's revision was its newest part's."""

_UPSERT_PARTS = """
INSERT INTO parts (room, user, seq, revision, part)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each(?) WHERE true
ON CONFLICT (room, user) DO UPDATE SET seq = excluded.seq, revision = excluded.revision, part = excluded.part
"""
"""A whole batch's parts in one statement: ``?`` is a JSON array of ``[room, user, seq, revision, part]``
rows, applied in order. One statement means one call into SQLite, so the
store's thread gives the GIL up and takes it back once per batch rather than
once per row. (``WHERE true`` lets SQLite's parser tell the upsert's
``ON CONFLICT`` from a join's ``ON``.)"""
_DELETE_PARTS = "DELETE FROM parts WHERE (room, user) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?))"
_UPSERT_ROOMS = """
INSERT INTO rooms (room, revision) SELECT value ->> 0, value ->> 1 FROM json_each(?) WHERE true
ON CONFLICT (room) DO UPDATE SET revision = excluded.revision
"""

_Entry = tuple["Proposal | Accepted", Done]


@dataclass(frozen=True)
class _Call:
    """A queue entry: run ``function`` in the store's thread, after the batches queued before it."""

    function: Callable[[], Any]
    result: concurrent.futures.Future[Any]


_STOP: Final = object()
"""The queue entry that ends the store's thread."""


class SqliteStore:
    """Shared Data in ``DIR/loopsync.sqlite3``, committed with ``synchronous=FULL`` before a proposal counts.

    Opening the store takes an exclusive lock on ``DIR/loopsync.lock`` so that
    two servers never write one file; the second one gets :class:`StoreLocked`.
    The ``parts`` table holds the latest accepted part of each user of each
    room (an update carries the whole part), the ``rooms`` table each room's
    revision. ``busy_timeout`` is how long a commit waits for SQLite's own
    write lock (held only by a foreign process, since our lock keeps other
    servers out).

    One thread (``loopsync-store``) does all the SQLite work: it takes the
    batch handed to it, commits its records as one transaction and hands the
    batch back to the event loop in one ``call_soon_threadsafe``.
    """

    def __init__(self, data_dir: Path | str, *, busy_timeout: float = 5.0, commit_interval: float = COMMIT_INTERVAL_SECONDS) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DATABASE_NAME
        self.busy_timeout = busy_timeout
        self.commit_interval = commit_interval
        self._lock_fd: int | None = None
        self._connection: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[tuple[list[Accepted], Callable[[StoreError | None], None], asyncio.AbstractEventLoop] | _Call | object] = queue.SimpleQueue()
        self._pending: list[_Entry] = []
        """Proposals that wait on the event loop while the thread commits the batch before them."""
        self._committing = False
        """A batch is with the thread (event loop side; the thread never reads it)."""
        self._next_hand_over_at = 0.0
        self._hand_over_timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self.commits = 0
        """Transactions committed so far (batches, not updates): for tests and benchmarks."""

    async def open(self) -> None:
        """Take the directory's lock and open (or create, or migrate) the database; raise :class:`StoreError` if not possible."""
        self.open_now()

    def open_now(self) -> None:
        """:meth:`open` without an event loop (``loopsync serve`` opens the store before it starts one, to say why it cannot)."""
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
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version < SCHEMA_VERSION:
            connection.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} {_MIGRATE_FROM_1}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        self._connection = connection

    async def load_room(self, room: str) -> RoomRecord:
        """The stored records of one room, oldest revision first (read after every commit queued before)."""
        self._require_open()
        record: RoomRecord = await asyncio.wrap_future(self._call(lambda: self._select(room)))
        return record

    def _select(self, room: str) -> RoomRecord:
        if self._connection is None:
            raise StoreError("the store is closed")
        found = self._connection.execute("SELECT revision FROM rooms WHERE room = ?", (room,)).fetchone()
        rows = self._connection.execute("SELECT user, seq, revision, part FROM parts WHERE room = ? ORDER BY revision", (room,))
        records = [Accepted(room, user, seq, revision, orjson.loads(part)) for user, seq, revision, part in rows]
        return RoomRecord(found[0] if found else 0, records)

    def commit_soon(self, proposal: Proposal, done: Done) -> None:
        """Queue the proposal for the next batch; ``done`` runs on this event loop once it is decided and committed.

        While the thread commits one batch, the proposals that come in wait
        here and go to the thread together when that commit's callbacks have
        run and :attr:`commit_interval` has passed since it began: one
        wake-up of the thread per batch, not one per update.
        """
        self._require_open()
        self._pending.append((proposal, done))
        if not self._committing and self._hand_over_timer is None:
            self._schedule_hand_over()

    def write_soon(self, record: Accepted, done: Done) -> None:
        """Queue a record decided elsewhere (no rules applied) for the next batch: the fan-out benchmark's floor."""
        self._require_open()
        self._pending.append((record, done))
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
        if not self._pending or self._committing:
            return
        loop = asyncio.get_running_loop()
        batch, self._pending = self._pending, []
        decided = iter(sequence([entry for entry, _ in batch if type(entry) is Proposal]))
        outcomes: list[Outcome] = [next(decided) if type(entry) is Proposal else [entry] for entry, _ in batch]  # type: ignore[list-item]
        records = [record for outcome in outcomes if isinstance(outcome, list) for record in outcome]
        callbacks = [done for _, done in batch]
        self._committing = True
        self._next_hand_over_at = loop.time() + self.commit_interval

        def committed(problem: StoreError | None) -> None:
            self._completed(callbacks, outcomes, problem)

        if records:
            self._queue.put((records, committed, loop))
        else:
            loop.call_soon(committed, None)

    async def flush(self) -> None:
        """Wait until every proposal queued so far is decided and its ``done`` has run."""
        if self._thread is None:
            return
        while self._pending or self._committing:
            self._hand_over()
            await asyncio.wrap_future(self._call(lambda: None))
            await asyncio.sleep(0)  # the batch's callbacks run on the loop after the thread hands it back

    def _call(self, function: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        call = _Call(function, concurrent.futures.Future())
        self._queue.put(call)
        return call.result

    def _work(self) -> None:
        """The store's thread: run what is queued, batch after batch, until :data:`_STOP`."""
        while True:
            entry = self._queue.get()
            if entry is _STOP:
                return
            if isinstance(entry, _Call):
                try:
                    entry.result.set_result(entry.function())
                except BaseException as exc:
                    entry.result.set_exception(exc)
                continue
            assert isinstance(entry, tuple)
            records, committed, loop = entry
            problem: StoreError | None = None
            try:
                self._write_batch(records)
            except Exception as exc:
                problem = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc}")
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(committed, problem)

    def _completed(self, callbacks: list[Done], outcomes: list[Outcome], problem: StoreError | None) -> None:
        """On the event loop: one batch is committed (or failed); tell its proposers in order, then start the next batch."""
        if problem is None:
            self.commits += 1
        else:
            log.error("could not commit a batch of %d updates: %s", len(callbacks), problem)
        for done, outcome in zip(callbacks, outcomes):
            try:
                done(problem if problem is not None and isinstance(outcome, list) else outcome)
            except Exception:
                log.exception("error in a commit callback")
        self._committing = False
        if self._pending and self._hand_over_timer is None:
            self._schedule_hand_over()

    def _write_batch(self, batch: list[Accepted]) -> None:
        connection = self._connection
        if connection is None:
            raise StoreError("the store is closed")
        parts = [(a.room, a.user, a.seq, a.revision, a.part) for a in batch if a.part is not None]
        removed = [(a.room, a.user) for a in batch if a.part is None]
        revisions = {a.room: a.revision for a in batch}
        try:
            connection.execute("BEGIN IMMEDIATE")
            if parts:
                connection.execute(_UPSERT_PARTS, (orjson.dumps(parts).decode(),))
            if removed:
                connection.execute(_DELETE_PARTS, (orjson.dumps(removed).decode(),))
            connection.execute(_UPSERT_ROOMS, (orjson.dumps(list(revisions.items())).decode(),))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Commit what is pending, close the database and release the lock."""
        if self._thread is None:
            return
        await self.flush()
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
