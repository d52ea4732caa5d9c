"""Shared Data in PostgreSQL: the store of record of a loopsync cluster.

Every node of a cluster commits the updates its clients send through a
:class:`PostgresStore` on the same database. The database, not a node,
decides: in one transaction per batch it checks each proposal's ``seq``
against the user's last accepted one, gives the room its next revision,
stores the part and, when the room already holds :data:`MAX_PARTS` parts,
removes the part of the user not connected whose last write is oldest. So
the revisions of a room are gap-free and totally ordered whichever nodes
accepted its updates.

Use::

    store = PostgresStore("postgresql://loopsync@db.example/loopsync")
    await store.open()                       # connects, creates or migrates the schema
    record = await store.load_room("demo")   # RoomRecord(revision, records)
    store.commit_soon(Proposal(room, "alice", 7, part), done)   # room: a loopsync.rooms.Room
    ...                                      # done(outcome) runs on the event loop after the commit
    await store.close()

``commit_soon`` is group commit, like :meth:`loopsync.store.SqliteStore.commit_soon`:
proposals queued while one batch is with PostgreSQL go together into the next
one, and their ``done`` callbacks run in queue order once it has committed.
A batch is one round trip: one call of the server-side function
``loopsync.commit_batch`` (created by the schema migration) with the whole
batch as JSON, in autocommit, so it is one transaction.

The outcome of a proposal (:data:`Outcome`) is one of

- ``list[Accepted]``: committed. Normally one record; two when the room was
  full and a part gave way: first the removal ``Accepted(room, old_user, 0,
  r, None)``, then the new part with revision ``r + 1``.
- :class:`~loopsync.document.Invalid`: refused, nothing written for it
  (``stale_seq``, ``bad_seq``, ``room_full``); the rest of the batch is not
  affected.
- a :class:`~loopsync.store.StoreError`: the batch's transaction did not
  commit (every proposal of the batch gets the same instance).

Errors::

    StoreError                 (loopsync.store) the schema is unusable, or a commit failed for a reason that is no outage
    └── StoreUnavailable       PostgreSQL cannot be reached or refused for a passing reason; nothing was applied
        └── CommitUnknown      the connection broke while the batch was with PostgreSQL: it may have committed

Timeouts are bounded (:attr:`PostgresStore.timeout_seconds`, 2 s by
default, for connecting, waiting for a connection and each statement), so
while PostgreSQL is down a batch fails within about that time, and the next
batch after it is back reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import asyncpg
import orjson

from .document import MAX_PARTS, Invalid
from .protocol import FREE_SEQS, MAX_SEQ_STEP
from .rooms import Accepted, Proposal, RoomRecord
from .store import Done, StoreError
from .store import Outcome as StoreOutcome

assert FREE_SEQS == 4503599627370496, "commit_batch's SQL spells FREE_SEQS out"

SCHEMA_VERSION: Final = 2
"""The schema version this code creates and needs."""

_MIGRATION_LOCK: Final = 0x6C6F6F7073796E63
"""The advisory lock (``b"loopsync"`` as a number) held while the schema is created or migrated, so that nodes starting together take turns."""

log = logging.getLogger("loopsync.pgstore")


class StoreUnavailable(StoreError):
    """PostgreSQL cannot commit right now (down, unreachable, timed out, disk full, read-only); nothing was applied."""


class CommitUnknown(StoreUnavailable):
    """The connection broke while PostgreSQL had the batch: it may or may not have committed.

    Nothing was acknowledged, so no promise is broken; but the rooms of the
    batch may have moved on without this node hearing of it (re-read them).
    """


Outcome = StoreOutcome
"""What became of one proposal: committed records, a refusal, or the failure of its batch."""

CommitDone = Done
"""Called on the event loop with a proposal's outcome once its batch has committed (or failed)."""


_SCHEMA_TABLE = """
CREATE SCHEMA IF NOT EXISTS loopsync;
CREATE TABLE IF NOT EXISTS loopsync.schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""

_COMMIT_BATCH_FUNCTION = """
CREATE OR REPLACE FUNCTION loopsync.commit_batch(batch jsonb, connected jsonb, max_parts integer, max_seq_step bigint)
RETURNS TABLE (o_position integer, o_revision bigint, o_removed_user text, o_removed_revision bigint,
               o_refused text, o_last_seq bigint)
LANGUAGE plpgsql AS $$
-- batch: [[room, user, seq, part, connected_index], ...] in queue order;
-- connected: [[user, ...], ...], the sets of connected users the proposals point to.
-- One output row per proposal (o_position is its 1-based place in batch).
-- The seq rule is loopsync.rooms': bad_seq when seq > max(last, 2^52 = 4503599627370496) + max_seq_step.
DECLARE
    proposal record;
    room_name text;
    room_revision bigint;
    room_changed boolean := false;
    part_count integer;
    last_seq bigint;
    victim_user text;
    victim_revision bigint;
BEGIN
    FOR proposal IN
        SELECT item.position::integer AS position, item.value->>0 AS room, item.value->>1 AS user_name,
               (item.value->>2)::bigint AS seq, item.value->3 AS part, (item.value->>4)::integer AS connected_index
        FROM jsonb_array_elements(batch) WITH ORDINALITY AS item(value, position)
        ORDER BY (item.value->>0) COLLATE "C", item.position
    LOOP
        IF room_name IS DISTINCT FROM proposal.room THEN
            IF room_changed THEN
                UPDATE loopsync.rooms SET revision = room_revision WHERE rooms.name = room_name;
            END IF;
            room_name := proposal.room;
            room_changed := false;
            part_count := NULL;
            -- Rooms are locked one by one in one fixed order (by name, C collation):
            -- two batches that share rooms wait for each other but never deadlock.
            SELECT rooms.revision INTO room_revision FROM loopsync.rooms WHERE rooms.name = room_name FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO loopsync.rooms (name, revision) VALUES (room_name, 0) ON CONFLICT (name) DO NOTHING;
                SELECT rooms.revision INTO room_revision FROM loopsync.rooms WHERE rooms.name = room_name FOR UPDATE;
            END IF;
        END IF;
        o_position := proposal.position;
        o_revision := NULL;
        o_removed_user := NULL;
        o_removed_revision := NULL;
        o_refused := NULL;
        SELECT parts.seq INTO last_seq FROM loopsync.parts
        WHERE parts.room = room_name AND parts.user_name = proposal.user_name;
        IF FOUND THEN
            o_last_seq := last_seq;
            IF proposal.seq <= last_seq THEN
                o_refused := 'stale_seq';
            ELSIF proposal.seq > greatest(last_seq, 4503599627370496) + max_seq_step THEN
                o_refused := 'bad_seq';
            ELSE
                room_revision := room_revision + 1;
                UPDATE loopsync.parts SET seq = proposal.seq, revision = room_revision, part = proposal.part
                WHERE parts.room = room_name AND parts.user_name = proposal.user_name;
            END IF;
        ELSE
            o_last_seq := 0;
            IF proposal.seq <= 0 THEN
                o_refused := 'stale_seq';
            ELSIF proposal.seq > 4503599627370496 + max_seq_step THEN
                o_refused := 'bad_seq';
            ELSE
                IF part_count IS NULL THEN
                    SELECT count(*) INTO part_count FROM loopsync.parts WHERE parts.room = room_name;
                END IF;
                IF part_count >= max_parts THEN
                    -- The part of the user not connected whose last write is oldest gives way.
                    SELECT parts.user_name, parts.revision INTO victim_user, victim_revision FROM loopsync.parts
                    WHERE parts.room = room_name
                      AND NOT coalesce((connected -> proposal.connected_index) ? parts.user_name, false)
                    ORDER BY parts.revision LIMIT 1;
                    IF FOUND THEN
                        DELETE FROM loopsync.parts WHERE parts.room = room_name AND parts.user_name = victim_user;
                        room_revision := room_revision + 1;
                        o_removed_user := victim_user;
                        o_removed_revision := room_revision;
                        part_count := part_count - 1;
                    ELSE
                        o_refused := 'room_full';
                    END IF;
                END IF;
                IF o_refused IS NULL THEN
                    room_revision := room_revision + 1;
                    INSERT INTO loopsync.parts (room, user_name, seq, revision, part)
                    VALUES (room_name, proposal.user_name, proposal.seq, room_revision, proposal.part);
                    part_count := part_count + 1;
                END IF;
            END IF;
        END IF;
        IF o_refused IS NULL THEN
            o_revision := room_revision;
            room_changed := true;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF room_changed THEN
        UPDATE loopsync.rooms SET revision = room_revision WHERE rooms.name = room_name;
    END IF;
END
$$;
"""
"""Decides and writes one batch (the rules of :func:`loopsync.rooms.sequence`, in the database).

Schema 1 created it with the bad_seq rule ``seq > last + 2^20``; schema 2 replaces it with the rule of
:mod:`loopsync.rooms` (``seq > max(last, 2^52) + 2^20``), so that a cluster refuses exactly what one process refuses."""

_MIGRATION_1 = """
CREATE TABLE loopsync.rooms (
    name text COLLATE "C" PRIMARY KEY CHECK (char_length(name) BETWEEN 1 AND 32),
    revision bigint NOT NULL CHECK (revision >= 0)
) WITH (fillfactor = 80);

CREATE TABLE loopsync.parts (
    room text COLLATE "C" NOT NULL,
    user_name text COLLATE "C" NOT NULL CHECK (char_length(user_name) BETWEEN 1 AND 32),
    seq bigint NOT NULL CHECK (seq > 0),
    revision bigint NOT NULL CHECK (revision > 0),
    part jsonb NOT NULL CHECK (jsonb_typeof(part) = 'object'),
    PRIMARY KEY (room, user_name)
) WITH (fillfactor = 80);

""" + _COMMIT_BATCH_FUNCTION

_MIGRATIONS: Final[tuple[tuple[int, str], ...]] = ((1, _MIGRATION_1), (2, _COMMIT_BATCH_FUNCTION))
"""Each schema version and the SQL that reaches it from the one before; run in order, each once."""

_COMMIT = "SELECT * FROM loopsync.commit_batch($1::jsonb, $2::jsonb, $3, $4)"

_LOAD_ROOM = """
SELECT rooms.revision AS room_revision, parts.user_name, parts.seq, parts.revision, parts.part::text AS part
FROM loopsync.rooms LEFT JOIN loopsync.parts ON parts.room = rooms.name
WHERE rooms.name = $1
ORDER BY parts.revision
"""
"""One statement, so one snapshot: the room's revision and its parts agree."""

_TRANSIENT_SQLSTATES: Final = ("40", "53", "55P03", "57", "25006", "08")
"""SQLSTATE classes and codes of errors that pass (rollback, resources, locks, shutdown, a read-only standby, connection): StoreUnavailable."""


async def _keep_session(connection: Any) -> None:
    """Reset nothing when a connection goes back to the pool: the store never changes session state, and asyncpg's default reset costs a round trip per use."""


class PostgresStore:
    """Shared Data in PostgreSQL, committed in batches, one transaction (one round trip) per batch.

    ``dsn`` is a libpq URL (``postgresql://USER@HOST:PORT/DB``); the role must
    be allowed to create the schema ``loopsync`` in that database (owning the
    database is simplest). ``pool_size`` bounds the connections of this
    store. ``commit_interval`` is the shortest time from one batch's start
    to the next one's (0: the next batch goes as soon as the last one has
    returned).
    """

    def __init__(self, dsn: str, *, pool_size: int = 4, timeout_seconds: float = 2.0, commit_interval: float = 0.0) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.timeout_seconds = timeout_seconds
        self.commit_interval = commit_interval
        self._pool: Any = None
        self._commit_connection: Any = None
        """The connection batches go through: held, not taken from the pool for each batch (acquire and release cost
        about 60 us of CPU and as much latency per batch in asyncpg). A new one replaces it when it breaks."""
        self._commit_connection_busy = False
        self._pending: list[tuple[Proposal, CommitDone] | tuple[_ReadRoom, asyncio.Future[RoomRecord]]] = []
        self._drain_task: asyncio.Task[None] | None = None
        self.commits = 0
        """Batches committed so far: for tests and benchmarks."""
        self.proposals = 0
        """Proposals in those batches."""

    async def open(self) -> None:
        """Connect the pool and create or migrate the schema; raise :class:`StoreUnavailable` or :class:`StoreError` if not possible.

        Safe when several nodes open the same database at once: the schema
        work runs under an advisory lock, and a version already applied is
        never applied again.
        """
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size, reset=_keep_session, **self._connect_options())
        except Exception as exc:
            raise _failure(exc, sent=False, doing="connect to PostgreSQL") from exc
        try:
            await self._migrate()
        except BaseException:
            await self._close_pool()
            raise

    def _connect_options(self) -> dict[str, Any]:
        # statement_timeout: PostgreSQL itself gives up on a statement (and rolls it back) before asyncpg's
        # command_timeout ends the wait on our side, which would leave the outcome unknown.
        return {"timeout": self.timeout_seconds, "command_timeout": self.timeout_seconds + 1.0,
                "server_settings": {"application_name": "loopsync", "statement_timeout": str(int(self.timeout_seconds * 1000))}}

    async def _migrate(self) -> None:
        try:
            async with self._pool.acquire(timeout=self.timeout_seconds) as connection, connection.transaction():
                # Waiting for another node's migration may take longer than one statement normally does.
                await connection.execute("SET LOCAL statement_timeout = 0")
                await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK, timeout=60.0)
                await connection.execute(_SCHEMA_TABLE)
                current: int = await connection.fetchval("SELECT coalesce(max(version), 0) FROM loopsync.schema_version")
                if current > SCHEMA_VERSION:
                    raise StoreError(f"the database's loopsync schema is version {current}, newer than this loopsync's ({SCHEMA_VERSION}): upgrade loopsync")
                for version, sql in _MIGRATIONS:
                    if version > current:
                        await connection.execute(sql, timeout=60.0)
                        await connection.execute("INSERT INTO loopsync.schema_version (version) VALUES ($1)", version)
                        log.info("loopsync schema migrated to version %d", version)
        except StoreError:
            raise
        except Exception as exc:
            raise _failure(exc, sent=True, doing="create the schema") from exc

    async def schema_version(self) -> int:
        """The schema version the database is at."""
        version: int = await self._fetch_value("SELECT coalesce(max(version), 0) FROM loopsync.schema_version")
        return version

    async def load_room(self, room: str) -> RoomRecord:
        """The committed state of ``room``; raise :class:`StoreUnavailable` when PostgreSQL cannot answer."""
        rows = await self._fetch(_LOAD_ROOM, room)
        if not rows:
            return RoomRecord(0, [])
        records = [Accepted(room, row["user_name"], row["seq"], row["revision"], orjson.loads(row["part"]))
                   for row in rows if row["user_name"] is not None]
        return RoomRecord(int(rows[0]["room_revision"]), records)

    def commit_soon(self, proposal: Proposal, done: CommitDone) -> None:
        """Queue ``proposal`` for the next batch; ``done(outcome)`` runs on this event loop once the batch has committed or failed.

        Batches go to PostgreSQL one at a time, in queue order, and the
        ``done`` callbacks of a batch run in queue order: a node learns the
        outcomes of a room's proposals in the order it queued them.
        """
        self._require_open()
        self._pending.append((proposal, done))
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def load_room_in_order(self, room: str) -> RoomRecord:
        """The committed state of ``room``, read in queue order: after every proposal queued before this call has its outcome, before any queued after.

        A cluster node re-reads a room this way when it sees a gap: every
        commit of its own that the read shows has already been handed to its
        ``done``, and every later one gets a higher revision. Raise
        :class:`StoreUnavailable` when PostgreSQL cannot answer.
        """
        self._require_open()
        future: asyncio.Future[RoomRecord] = asyncio.get_running_loop().create_future()
        self._pending.append((_ReadRoom(room), future))
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Commit what is queued, batch after batch, until nothing is left; ordered reads split a batch where they were queued."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                started_at = loop.time()
                queued, self._pending = self._pending, []
                start = 0
                while start < len(queued):
                    end = start
                    while end < len(queued) and type(queued[end][0]) is not _ReadRoom:
                        end += 1
                    if end > start:
                        await self._commit_and_tell(queued[start:end])  # type: ignore[arg-type]
                    if end < len(queued):
                        read, future = queued[end]
                        await self._read_and_tell(read, future)  # type: ignore[arg-type]
                        end += 1
                    start = end
                wait = started_at + self.commit_interval - loop.time()
                if wait > 0 and self._pending:
                    await asyncio.sleep(wait)
        finally:
            self._drain_task = None

    async def _commit_and_tell(self, batch: list[tuple[Proposal, CommitDone]]) -> None:
        try:
            outcomes = await self.commit([proposal for proposal, _ in batch])
        except Exception as exc:  # a bug: the callers still hear of their proposals
            log.exception("commit failed")
            outcomes = [StoreError(f"commit failed: {exc}")] * len(batch)
        for (_, done), outcome in zip(batch, outcomes):
            try:
                done(outcome)
            except Exception:
                log.exception("error in a commit callback")

    async def _read_and_tell(self, read: _ReadRoom, future: asyncio.Future[RoomRecord]) -> None:
        try:
            record = await self.load_room(read.room)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(record)

    async def flush(self) -> None:
        """Wait until every proposal queued so far has its outcome (and its ``done`` has run)."""
        while self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    async def commit(self, proposals: Sequence[Proposal]) -> list[Outcome]:
        """Commit ``proposals`` as one transaction, now, and return their outcomes in the same order.

        This is the batch ``commit_soon`` sends; calling it directly bypasses
        the queue (its proposals are not ordered against queued ones). It
        never raises for a failed transaction: every outcome is then the same
        :class:`StoreError`.
        """
        if not proposals:
            return []
        if self._pool is None:
            return [StoreError("the store is not open")] * len(proposals)
        connected_index: dict[int, int] = {}
        connected: list[list[str]] = []
        rows = []
        for proposal in proposals:
            # The users connected to the room (on any node: a cluster joins other nodes' members to the room)
            # never give their part way; each room's set goes once per batch.
            index = connected_index.get(id(proposal.room))
            if index is None:
                index = connected_index[id(proposal.room)] = len(connected)
                connected.append(sorted(proposal.room.present_users()))
            rows.append((proposal.room.name, proposal.user, proposal.seq, proposal.part, index))
        # The held connection when it is free (always, for commit_soon's batches), else one from the pool.
        dedicated = not self._commit_connection_busy
        try:
            if dedicated:
                self._commit_connection_busy = True
                if self._commit_connection is None or self._commit_connection.is_closed():
                    self._commit_connection = None
                    self._commit_connection = await asyncpg.connect(self.dsn, **self._connect_options())
                connection = self._commit_connection
            else:
                connection = await self._pool.acquire(timeout=self.timeout_seconds)
        except Exception as exc:
            if dedicated:
                self._commit_connection_busy = False
            return [_failure(exc, sent=False, doing="reach PostgreSQL")] * len(proposals)
        try:
            results = await connection.fetch(_COMMIT, orjson.dumps(rows).decode(), orjson.dumps(connected).decode(), MAX_PARTS, MAX_SEQ_STEP)
        except Exception as exc:
            return [_failure(exc, sent=True, doing="commit")] * len(proposals)
        finally:
            if dedicated:
                self._commit_connection_busy = False
            else:
                await self._release(connection)
        self.commits += 1
        self.proposals += len(proposals)
        outcomes: list[Outcome] = [StoreError("no outcome")] * len(proposals)
        for row in results:
            position = row["o_position"] - 1
            proposal = proposals[position]
            refused = row["o_refused"]
            if refused is not None:
                outcomes[position] = _refusal(refused, proposal, row["o_last_seq"])
                continue
            room = proposal.room.name
            accepted = Accepted(room, proposal.user, proposal.seq, row["o_revision"], proposal.part)
            removed_user = row["o_removed_user"]
            if removed_user is None:
                outcomes[position] = [accepted]
            else:
                removed_part: Any = None  # a removal: the user's part is gone and its seq restarts at 0
                outcomes[position] = [Accepted(room, removed_user, 0, row["o_removed_revision"], removed_part), accepted]
        return outcomes

    async def _release(self, connection: Any) -> None:
        try:
            await self._pool.release(connection, timeout=self.timeout_seconds)
        except Exception as exc:  # the connection is dropped; the pool makes a new one when needed
            log.debug("dropping a PostgreSQL connection: %r", exc)

    async def _fetch(self, query: str, *arguments: object) -> list[Any]:
        self._require_open()
        try:
            connection = await self._pool.acquire(timeout=self.timeout_seconds)
        except Exception as exc:
            raise _failure(exc, sent=False, doing="reach PostgreSQL") from exc
        try:
            rows: list[Any] = await connection.fetch(query, *arguments)
            return rows
        except Exception as exc:
            raise _failure(exc, sent=False, doing="read") from exc  # a read changes nothing: never uncertain
        finally:
            await self._release(connection)

    async def _fetch_value(self, query: str, *arguments: object) -> Any:
        rows = await self._fetch(query, *arguments)
        return rows[0][0] if rows else None

    async def close(self) -> None:
        """Wait for the queued proposals' outcomes, then close the connections."""
        if self._pool is None:
            return
        await self.flush()
        await self._close_pool()

    async def _close_pool(self) -> None:
        connection, self._commit_connection = self._commit_connection, None
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), self.timeout_seconds)
            except Exception:
                connection.terminate()
        pool, self._pool = self._pool, None
        try:
            await asyncio.wait_for(pool.close(), self.timeout_seconds)
        except Exception:
            pool.terminate()

    def _require_open(self) -> None:
        if self._pool is None:
            raise StoreError("the store is not open")

    def __repr__(self) -> str:
        return f"PostgresStore({without_password(self.dsn)!r})"


class _ReadRoom(NamedTuple):
    """A queue entry of :meth:`PostgresStore.load_room_in_order`."""

    room: str


def _refusal(code: str, proposal: Proposal, last_seq: int) -> Invalid:
    if code == "stale_seq":
        return Invalid("stale_seq", f"seq {proposal.seq} is not above the last accepted seq {last_seq}")
    if code == "bad_seq":
        return Invalid("bad_seq", f"seq {proposal.seq} is more than {MAX_SEQ_STEP} above the last accepted seq {last_seq} (above 2^52, seqs grow by at most 2^20 per update)")
    return Invalid("room_full", f"room {proposal.room.name!r} has {MAX_PARTS} parts and all their users are connected")


def _failure(exc: BaseException, *, sent: bool, doing: str) -> StoreError:
    """The StoreError for ``exc``, raised while trying to ``doing``; ``sent``: PostgreSQL may have received the batch."""
    sqlstate = getattr(exc, "sqlstate", None)
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.exceptions.ConnectionDoesNotExistError,
                        asyncpg.exceptions.TransactionResolutionUnknownError)) or (
            isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)):
        # The connection failed under us: if the batch had been sent, PostgreSQL may have committed it.
        if sent and not isinstance(exc, asyncpg.InterfaceError):
            return CommitUnknown(f"cannot {doing}: the connection to PostgreSQL broke ({detail}); the batch may have committed")
        return StoreUnavailable(f"cannot {doing}: PostgreSQL is unavailable ({detail})")
    if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES):
        return StoreUnavailable(f"cannot {doing}: PostgreSQL refused ({detail})")
    return StoreError(f"cannot {doing}: {detail}")


def without_password(dsn: str) -> str:
    """A URL with its password (if any) replaced by ``***``, for logs and banners."""
    scheme, separator, rest = dsn.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return dsn
    return f"{scheme}{separator}{credentials.split(':', 1)[0]}:***@{host}"

