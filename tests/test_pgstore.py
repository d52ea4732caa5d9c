"""PostgresStore against a real PostgreSQL: revisions, seq rules, removal at 256 parts, faults, schema."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import AsyncIterator

import asyncpg
import pytest

from loopsync.document import MAX_PARTS, Invalid
from loopsync.pgstore import SCHEMA_VERSION, CommitUnknown, Outcome, PostgresStore, StoreUnavailable
from loopsync.protocol import FREE_SEQS, MAX_SEQ_STEP
from loopsync.rooms import Accepted, Proposal, Room, RoomRecord
from loopsync.store import StoreError
from serve_process import TIME_UNIT
from services import PostgresService

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}
HAT = {"sound": "hat", "steps": [0, 0, 1, 0] * 4}
NOBODY: frozenset[str] = frozenset()


def proposal(room: str, user: str, seq: int, part: dict[str, object] = KICK, connected: frozenset[str] = NOBODY) -> Proposal:
    """A proposal for ``room`` whose connected users are ``connected`` (the store reads them from the room)."""
    return Proposal(_RoomWith(room, connected), user, seq, part)


class _RoomWith(Room):
    """A room with these users connected, past the join limits (the store must hold even then)."""

    def __init__(self, name: str, connected: frozenset[str]) -> None:
        super().__init__(name)
        self._users = dict.fromkeys(connected, 1)


def accepted(outcome: Outcome) -> list[Accepted]:
    """The records of an outcome that must be a commit."""
    assert isinstance(outcome, list), f"expected a commit, got {outcome!r}"
    return outcome


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PostgresStore]:
    """An open PostgresStore on this test's own database."""
    opened = PostgresStore(postgres_dsn)
    await opened.open()
    yield opened
    await opened.close()


async def test_unknown_room_is_empty_at_revision_zero(store: PostgresStore) -> None:
    """A room never written loads as revision 0 with no parts."""
    assert await store.load_room("nowhere") == RoomRecord(0, [])


async def test_batch_gives_each_room_gap_free_revisions_in_queue_order(store: PostgresStore) -> None:
    """One batch over several rooms: each room's accepted proposals get revisions 1, 2, 3... in the order they were queued."""
    batch = [proposal("b", "bob", 1), proposal("a", "alice", 1), proposal("b", "carol", 4, HAT), proposal("a", "alice", 2, HAT),
             proposal("c", "dave", 1), proposal("b", "bob", 2)]
    outcomes = await store.commit(batch)
    revisions = [(record.room, record.user, record.seq, record.revision) for outcome in outcomes for record in accepted(outcome)]
    assert revisions == [("b", "bob", 1, 1), ("a", "alice", 1, 1), ("b", "carol", 4, 2), ("a", "alice", 2, 2), ("c", "dave", 1, 1), ("b", "bob", 2, 3)]
    room_b = await store.load_room("b")
    assert room_b.revision == 3
    assert [(record.user, record.seq, record.revision, record.part) for record in room_b.records] == [("carol", 4, 2, HAT), ("bob", 2, 3, KICK)]
    assert (await store.load_room("a")).records == [Accepted("a", "alice", 2, 2, HAT)]


async def test_seq_rules_refuse_without_aborting_the_batch(store: PostgresStore) -> None:
    """stale_seq (not above the last) and bad_seq (above max(last, 2^52) + 2^20, the rule of rooms.py) refuse one proposal; the rest commits."""
    accepted((await store.commit([proposal("demo", "alice", 5)]))[0])
    limit = FREE_SEQS + MAX_SEQ_STEP
    outcomes = await store.commit([
        proposal("demo", "alice", 5),                # a repeat
        proposal("demo", "alice", 3),                # out of order
        proposal("demo", "alice", limit + 1),        # a jump too far
        proposal("demo", "bob", limit + 1),          # a first seq too far
        proposal("demo", "alice", limit, HAT),       # exactly at the limit: fine
        proposal("demo", "bob", 1 << 40),            # below 2^52 any jump is fine
        proposal("demo", "alice", limit + MAX_SEQ_STEP + 1),  # above 2^52: at most 2^20 more per update
        proposal("demo", "alice", limit + MAX_SEQ_STEP),
    ])
    codes = [outcome.code if isinstance(outcome, Invalid) else "ok" for outcome in outcomes]
    assert codes == ["stale_seq", "stale_seq", "bad_seq", "bad_seq", "ok", "ok", "bad_seq", "ok"]
    assert isinstance(outcomes[0], Invalid) and outcomes[0].message == "seq 5 is not above the last accepted seq 5"
    assert isinstance(outcomes[2], Invalid) and "above the last accepted seq 5" in outcomes[2].message
    assert [record.revision for outcome in outcomes if isinstance(outcome, list) for record in outcome] == [2, 3, 4]
    room = await store.load_room("demo")
    assert room.revision == 4
    assert {(record.user, record.seq) for record in room.records} == {("alice", limit + MAX_SEQ_STEP), ("bob", 1 << 40)}


async def test_commit_soon_groups_proposals_and_calls_done_in_queue_order(store: PostgresStore) -> None:
    """Proposals queued while a batch is with PostgreSQL share the next transaction; done runs in queue order after the commit."""
    seen: list[tuple[int, Outcome]] = []
    all_done = asyncio.Event()
    count = 300

    def done_for(index: int) -> object:
        def done(outcome: Outcome) -> None:
            seen.append((index, outcome))
            if len(seen) == count:
                all_done.set()
        return done

    for index in range(count):
        store.commit_soon(proposal(f"room{index % 7}", f"user{index % 31}", index + 1), done_for(index))  # type: ignore[arg-type]
    await asyncio.wait_for(all_done.wait(), 5 * TIME_UNIT)
    assert [index for index, _ in seen] == list(range(count))
    assert store.proposals == count and store.commits < count / 3
    revisions: dict[str, list[int]] = defaultdict(list)
    for _, outcome in seen:
        for record in accepted(outcome):
            revisions[record.room].append(record.revision)
    for room, room_revisions in revisions.items():
        assert room_revisions == list(range(1, len(room_revisions) + 1)), room
        assert (await store.load_room(room)).revision == len(room_revisions)


async def test_two_stores_on_one_database_share_gap_free_revisions_without_deadlock(postgres_dsn: str) -> None:
    """Two stores (two nodes) committing concurrently into the same rooms, rooms in random order per batch: every room's revisions are 1..N with no gap or repeat, and no transaction fails."""
    stores = [PostgresStore(postgres_dsn), PostgresStore(postgres_dsn)]
    await asyncio.gather(*(one.open() for one in stores))
    rooms = [f"room{index}" for index in range(5)]
    writers_per_store, batches_per_writer, batch_size = 4, 25, 8
    results: list[tuple[int, list[Outcome]]] = []

    async def writer(store_index: int, writer_index: int) -> None:
        chooser = random.Random(store_index * 100 + writer_index)
        for batch_index in range(batches_per_writer):
            batch = [proposal(chooser.choice(rooms), f"s{store_index}w{writer_index}u{slot}", batch_index + 1) for slot in range(batch_size)]
            results.append((store_index, await stores[store_index].commit(batch)))

    try:
        await asyncio.wait_for(asyncio.gather(*(writer(store_index, writer_index) for store_index in range(2)
                                                for writer_index in range(writers_per_store))), 30 * TIME_UNIT)
        by_room: dict[str, list[int]] = defaultdict(list)
        for _, outcomes in results:
            for outcome in outcomes:
                for record in accepted(outcome):  # no StoreError: no deadlock, no failure
                    by_room[record.room].append(record.revision)
        assert sum(map(len, by_room.values())) == 2 * writers_per_store * batches_per_writer * batch_size
        for room, room_revisions in by_room.items():
            assert sorted(room_revisions) == list(range(1, len(room_revisions) + 1)), room
            assert (await stores[0].load_room(room)).revision == len(room_revisions)
        for _, outcomes in results:  # within one batch, a room's revisions rise in queue order
            last: dict[str, int] = {}
            for outcome in outcomes:
                for record in accepted(outcome):
                    assert record.revision > last.get(record.room, 0)
                    last[record.room] = record.revision
    finally:
        await asyncio.gather(*(one.close() for one in stores))


async def test_a_full_room_removes_the_oldest_part_of_a_user_not_connected(store: PostgresStore) -> None:
    """At 256 parts a new user's part replaces the oldest part whose user is not connected: a removal record, then the part one revision later."""
    users = [f"u{index:03}" for index in range(MAX_PARTS)]
    outcomes = await store.commit([proposal("full", user, 5) for user in users])
    assert [accepted(outcome)[0].revision for outcome in outcomes] == list(range(1, MAX_PARTS + 1))
    connected = frozenset(users[:3]) | {"newcomer"}  # u000..u002 are online: u003 wrote longest ago among the others
    outcome = accepted((await store.commit([proposal("full", "newcomer", 1, HAT, connected)]))[0])
    assert outcome == [Accepted("full", "u003", 0, MAX_PARTS + 1, None), Accepted("full", "newcomer", 1, MAX_PARTS + 2, HAT)]  # type: ignore[arg-type]
    room = await store.load_room("full")
    assert room.revision == MAX_PARTS + 2 and len(room.records) == MAX_PARTS
    assert "u003" not in {record.user for record in room.records}
    # The removed user's seq starts again from 0: seq 1 is accepted (and removes the next oldest, u004).
    again = accepted((await store.commit([proposal("full", "u003", 1, KICK, connected | {"u003"})]))[0])
    assert [(record.user, record.seq, record.revision) for record in again] == [("u004", 0, MAX_PARTS + 3), ("u003", 1, MAX_PARTS + 4)]
    # An owner writing again never removes anyone.
    assert [record.user for record in accepted((await store.commit([proposal("full", "u100", 6)]))[0])] == ["u100"]


async def test_a_full_room_whose_users_are_all_connected_refuses_room_full(store: PostgresStore) -> None:
    """When every part's user is connected, a new user's proposal is refused as room_full and nothing changes."""
    users = [f"u{index:03}" for index in range(MAX_PARTS)]
    await store.commit([proposal("full", user, 1) for user in users])
    outcomes = await store.commit([proposal("full", "late", 1, KICK, frozenset(users) | {"late"}), proposal("full", "u000", 2, HAT)])
    assert isinstance(outcomes[0], Invalid) and outcomes[0].code == "room_full"
    assert [record.revision for record in accepted(outcomes[1])] == [MAX_PARTS + 1]
    assert len((await store.load_room("full")).records) == MAX_PARTS


async def test_postgresql_down_fails_batches_promptly_and_the_store_recovers(postgres: PostgresService, postgres_dsn: str) -> None:
    """While PostgreSQL is down a batch fails with StoreUnavailable within seconds; once it is back the next batch commits on a new connection, nothing acknowledged lost."""
    store = PostgresStore(postgres_dsn, timeout_seconds=1.0)
    await store.open()
    try:
        accepted((await store.commit([proposal("demo", "alice", 1)]))[0])
        postgres.crash()
        started = time.monotonic()
        outcomes = await store.commit([proposal("demo", "alice", 2), proposal("other", "bob", 1)])
        assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes), outcomes
        assert outcomes[0] is outcomes[1]
        assert time.monotonic() - started < 3 * TIME_UNIT
        with pytest.raises(StoreUnavailable):
            await store.load_room("demo")
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        store.commit_soon(proposal("demo", "alice", 2), done.set_result)
        assert isinstance(await asyncio.wait_for(done, 3 * TIME_UNIT), StoreUnavailable)

        await asyncio.to_thread(postgres.start)
        outcome = accepted((await store.commit([proposal("demo", "alice", 2, HAT)]))[0])
        assert outcome == [Accepted("demo", "alice", 2, 2, HAT)]
        assert (await store.load_room("demo")).records == outcome
    finally:
        if not postgres.running:
            await asyncio.to_thread(postgres.start)
        await store.close()


async def test_postgresql_killed_and_restarted_keeps_every_commit(postgres: PostgresService, postgres_dsn: str) -> None:
    """After SIGKILL of PostgreSQL and a restart (crash recovery), every committed batch is there and commits go on from the next revision."""
    store = PostgresStore(postgres_dsn)
    await store.open()
    try:
        for seq in range(1, 21):
            accepted((await store.commit([proposal("demo", "alice", seq), proposal("demo", f"user{seq}", 1)]))[0])
        postgres.kill()
        await asyncio.to_thread(postgres.start)
        room = await store.load_room("demo")
        assert room.revision == 40 and len(room.records) == 21
        assert [record.revision for record in accepted((await store.commit([proposal("demo", "alice", 21)]))[0])] == [41]
    finally:
        if not postgres.running:
            await asyncio.to_thread(postgres.start)
        await store.close()


async def test_open_fails_promptly_when_postgresql_is_down(postgres: PostgresService) -> None:
    """Opening a store on a port where nothing listens raises StoreUnavailable within its timeout."""
    from services import free_port

    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", timeout_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL"):
        await store.open()
    assert time.monotonic() - started < 3 * TIME_UNIT


async def test_a_failed_transaction_applies_nothing_of_its_batch(postgres_dsn: str) -> None:
    """A batch whose transaction fails part-way (a room locked past the timeout) leaves every room as it was, and the next batch commits."""
    store = PostgresStore(postgres_dsn, timeout_seconds=0.5)
    await store.open()
    blocker = await asyncpg.connect(postgres_dsn)
    try:
        await store.commit([proposal("a", "alice", 1), proposal("b", "bob", 1)])
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT * FROM loopsync.rooms WHERE name = 'b' FOR UPDATE")  # another session holds room b
        # Room a is locked and written first (rooms go in name order); then room b times out.
        outcomes = await store.commit([proposal("a", "alice", 2, HAT), proposal("a", "carol", 1), proposal("b", "bob", 2)])
        assert all(isinstance(outcome, StoreUnavailable) and not isinstance(outcome, CommitUnknown) for outcome in outcomes), outcomes
        await transaction.rollback()
        assert await store.load_room("a") == RoomRecord(1, [Accepted("a", "alice", 1, 1, KICK)])
        outcomes = await store.commit([proposal("a", "alice", 2, HAT), proposal("b", "bob", 2)])
        assert [record.revision for outcome in outcomes for record in accepted(outcome)] == [2, 2]
    finally:
        await blocker.close()
        await store.close()


async def test_a_batch_the_schema_rejects_is_a_store_error_and_applies_nothing(store: PostgresStore) -> None:
    """A proposal that breaks a schema constraint (a 40-character user) fails its whole batch with a StoreError that is no outage."""
    outcomes = await store.commit([proposal("demo", "alice", 1), proposal("demo", "x" * 40, 1)])
    assert all(type(outcome) is StoreError for outcome in outcomes), outcomes
    assert await store.load_room("demo") == RoomRecord(0, [])


async def test_schema_is_created_once_when_nodes_start_together(postgres_dsn: str) -> None:
    """Three stores opening a fresh database at once create the schema once; reopening migrates nothing and keeps the data."""
    stores = [PostgresStore(postgres_dsn) for _ in range(3)]
    await asyncio.gather(*(one.open() for one in stores))
    await stores[0].commit([proposal("demo", "alice", 1)])
    await asyncio.gather(*(one.close() for one in stores))
    again = PostgresStore(postgres_dsn)
    await again.open()
    try:
        assert await again.schema_version() == SCHEMA_VERSION
        connection = await asyncpg.connect(postgres_dsn)
        try:
            assert [row["version"] for row in await connection.fetch("SELECT version FROM loopsync.schema_version")] == list(range(1, SCHEMA_VERSION + 1))
        finally:
            await connection.close()
        assert (await again.load_room("demo")).revision == 1
    finally:
        await again.close()


async def test_schema_1_is_migrated_to_the_seq_rule_of_rooms(store: PostgresStore, postgres_dsn: str) -> None:
    """A database at schema 1 (bad_seq above last + 2^20) gets schema 2's rule, max(last, 2^52) + 2^20, when a node opens it."""
    from loopsync.pgstore import _COMMIT_BATCH_FUNCTION

    schema_1_rule = _COMMIT_BATCH_FUNCTION.replace("greatest(last_seq, 4503599627370496) + max_seq_step", "last_seq + max_seq_step").replace(
        "proposal.seq > 4503599627370496 + max_seq_step", "proposal.seq > max_seq_step")
    assert schema_1_rule != _COMMIT_BATCH_FUNCTION
    await store.close()
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute(schema_1_rule)
        await connection.execute("DELETE FROM loopsync.schema_version WHERE version > 1")
        batch = json.dumps([["demo", "alice", MAX_SEQ_STEP + 1, KICK, 0]])
        refused = await connection.fetchval("SELECT o_refused FROM loopsync.commit_batch($1::jsonb, '[[]]'::jsonb, 256, $2)", batch, MAX_SEQ_STEP)
        assert refused == "bad_seq"  # what schema 1 said
    finally:
        await connection.close()
    await store.open()
    assert await store.schema_version() == SCHEMA_VERSION
    [outcome] = await store.commit([proposal("demo", "alice", MAX_SEQ_STEP + 1)])
    assert isinstance(outcome, list), outcome


async def test_a_newer_schema_is_refused(store: PostgresStore, postgres_dsn: str) -> None:
    """A database migrated by a newer loopsync is not touched: open raises StoreError naming both versions."""
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute("INSERT INTO loopsync.schema_version (version) VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await connection.close()
    older = PostgresStore(postgres_dsn)
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}, newer than this loopsync's \\({SCHEMA_VERSION}\\)"):
        await older.open()


async def test_close_waits_for_queued_proposals(postgres_dsn: str) -> None:
    """close() lets every queued proposal reach its outcome before the connections close."""
    store = PostgresStore(postgres_dsn)
    await store.open()
    outcomes: list[Outcome] = []
    for seq in range(1, 51):
        store.commit_soon(proposal("demo", "alice", seq), outcomes.append)
    await store.close()
    assert len(outcomes) == 50 and all(isinstance(outcome, list) for outcome in outcomes)
    with pytest.raises(StoreError, match="not open"):
        store.commit_soon(proposal("demo", "alice", 51), outcomes.append)


def test_the_embedded_server_does_not_import_the_cluster_libraries() -> None:
    """Importing loopsync.server (the SQLite default) loads neither asyncpg nor redis."""
    check = "import sys, loopsync.server, loopsync.cli; sys.exit(sorted({'asyncpg', 'redis'} & set(sys.modules)) != [])"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0


def test_the_commit_benchmark_runs(tmp_path: Path) -> None:
    """bench/pgcommit.py --smoke commits batches of 1, 10 and 100 on its own PostgreSQL and reports each, both commit modes."""
    result = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "bench" / "pgcommit.py"), "--smoke",
                             "--json", str(tmp_path / "pgcommit.json")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "pgcommit.json").read_text())
    assert set(report) == {"synchronous_commit=on", "synchronous_commit=off"}
    for figures in report.values():
        assert set(figures) == {"round_trip", "1", "10", "100"}
        assert all(row["count"] >= 50 and row["wall_us"] > 0 for row in figures.values())
