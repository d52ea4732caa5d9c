"""The stores: a proposal is decided and committed before its done runs; restarts keep everything; one server per directory."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import AsyncIterator

import pytest

from loopsync.document import Invalid, Part
from loopsync.rooms import Accepted, Proposal, Room, RoomRecord
from loopsync.store import MemoryStore, Outcome, SqliteStore, Store, StoreError, StoreLocked

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}
HAT = {"sound": "hat", "steps": [0, 0, 1, 0] * 4}


def stored_rows(path: Path) -> list[tuple[str, str, int, int]]:
    """What another SQLite connection (another process, say) sees committed."""
    with sqlite3.connect(path) as connection:
        return list(connection.execute("SELECT room, user, seq, revision FROM parts ORDER BY room, revision"))


async def propose(store: Store, room: Room, user: str, seq: int, part: Part) -> Outcome:
    """Commit one proposal and, as the server does, apply what was accepted to the room."""
    future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    def done(outcome: Outcome) -> None:
        if isinstance(outcome, list):
            for record in outcome:
                room.apply(record)
        future.set_result(outcome)

    store.commit_soon(Proposal(room, user, seq, part), done)
    return await future


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store kind, open; the rules of this file hold for both."""
    chosen: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path)
    await chosen.open()
    yield chosen
    await chosen.close()


async def test_accepted_proposals_get_consecutive_revisions_and_load_back(store: Store) -> None:
    """Accepted proposals get revisions 1, 2, 3 per room, and load_room gives each user's latest record."""
    demo, other = Room("demo"), Room("other")
    assert await propose(store, demo, "alice", 1, KICK) == [Accepted("demo", "alice", 1, 1, KICK)]
    assert await propose(store, demo, "bob", 4, HAT) == [Accepted("demo", "bob", 4, 2, HAT)]
    assert await propose(store, demo, "alice", 2, HAT) == [Accepted("demo", "alice", 2, 3, HAT)]
    assert await propose(store, other, "alice", 1, KICK) == [Accepted("other", "alice", 1, 1, KICK)]
    assert await store.load_room("demo") == RoomRecord(3, [Accepted("demo", "bob", 4, 2, HAT), Accepted("demo", "alice", 2, 3, HAT)])
    assert await store.load_room("nobody") == RoomRecord(0, [])


async def test_seq_rules_are_the_stores(store: Store) -> None:
    """A seq not above the last accepted one is stale_seq, one more than 2^20 above max(last, 2^52) bad_seq; nothing is stored for either."""
    room = Room("demo")
    await propose(store, room, "alice", 5, KICK)
    for seq, code in ((5, "stale_seq"), (4, "stale_seq"), (2**52 + 2**20 + 1, "bad_seq")):
        outcome = await propose(store, room, "alice", seq, HAT)
        assert isinstance(outcome, Invalid) and outcome.code == code
    assert await propose(store, room, "alice", 2**52 + 2**20, HAT) == [Accepted("demo", "alice", 2**52 + 2**20, 2, HAT)]
    assert (await store.load_room("demo")).revision == 2


async def test_concurrent_proposals_of_one_user_are_decided_in_order(store: Store) -> None:
    """Proposals queued together are decided in queue order: a repeated seq is stale even in the same batch."""
    room = Room("demo")
    outcomes = await asyncio.gather(propose(store, room, "alice", 1, KICK), propose(store, room, "alice", 1, HAT),
                                    propose(store, room, "alice", 2, HAT))
    assert outcomes[0] == [Accepted("demo", "alice", 1, 1, KICK)]
    assert isinstance(outcomes[1], Invalid) and outcomes[1].code == "stale_seq"
    assert outcomes[2] == [Accepted("demo", "alice", 2, 2, HAT)]


async def test_a_removed_part_is_gone_after_a_restart(tmp_path: Path) -> None:
    """A removal record (part None) deletes the part; the room's revision still counts it."""
    store = SqliteStore(tmp_path)
    await store.open()
    room = Room("demo")
    for index in range(256):
        await propose(store, room, f"u{index:03}", 1, KICK)
    outcome = await propose(store, room, "late", 1, HAT)
    assert outcome == [Accepted("demo", "u000", 0, 257, None), Accepted("demo", "late", 1, 258, HAT)]
    await store.close()
    again = SqliteStore(tmp_path)
    await again.open()
    record = await again.load_room("demo")
    assert record.revision == 258 and len(record.records) == 256
    assert "u000" not in {accepted.user for accepted in record.records}
    await again.close()


async def test_sqlite_commits_are_durable_before_done_and_share_transactions(tmp_path: Path) -> None:
    """When done runs, another connection sees the record; proposals that arrive together share commits."""
    store = SqliteStore(tmp_path)
    await store.open()
    rooms = [Room(f"room{index}") for index in range(10)]
    await asyncio.gather(*(propose(store, rooms[index % 10], f"user{index}", 1, KICK) for index in range(200)))
    assert len(stored_rows(store.path)) == 200
    assert 1 <= store.commits <= 5
    with sqlite3.connect(store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    synchronous = await asyncio.wrap_future(store._call(lambda: store._connection.execute("PRAGMA synchronous").fetchone()))  # type: ignore[union-attr]
    assert synchronous == (2,)  # FULL
    await store.close()


async def test_a_database_of_schema_1_is_migrated(tmp_path: Path) -> None:
    """A file written before the rooms table existed opens with each room's revision taken from its newest part."""
    with sqlite3.connect(tmp_path / "loopsync.sqlite3") as connection:
        connection.execute("CREATE TABLE parts (room TEXT NOT NULL, user TEXT NOT NULL, seq INTEGER NOT NULL, "
                           "revision INTEGER NOT NULL, part TEXT NOT NULL, PRIMARY KEY (room, user))")
        connection.execute("INSERT INTO parts VALUES ('demo', 'alice', 3, 7, ?)", ('{"sound":"kick","steps":[1,0,0,0,1,0,0,0,1,0,0,0,1,0,0,0]}',))
    store = SqliteStore(tmp_path)
    await store.open()
    assert await store.load_room("demo") == RoomRecord(7, [Accepted("demo", "alice", 3, 7, KICK)])
    room = Room("demo", await store.load_room("demo"))
    assert await propose(store, room, "bob", 1, HAT) == [Accepted("demo", "bob", 1, 8, HAT)]
    await store.close()


async def test_second_store_on_a_directory_is_refused(tmp_path: Path) -> None:
    """Only one store may hold a data directory; the lock is released on close."""
    first = SqliteStore(tmp_path)
    await first.open()
    second = SqliteStore(tmp_path)
    with pytest.raises(StoreLocked, match="another loopsync server is already using the data directory"):
        await second.open()
    await first.close()
    await second.open()
    await second.close()


async def test_failed_commit_fails_its_batch_and_stores_nothing(tmp_path: Path) -> None:
    """A commit that cannot take SQLite's write lock gives every proposal of its batch StoreError; the next one works."""
    store = SqliteStore(tmp_path, busy_timeout=0.05)
    await store.open()
    room = Room("demo")
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    outcomes = await asyncio.gather(propose(store, room, "alice", 1, KICK), propose(store, room, "bob", 1, HAT))
    assert all(isinstance(outcome, StoreError) for outcome in outcomes)
    blocker.rollback()
    blocker.close()
    assert stored_rows(store.path) == [] and room.revision == 0
    assert await propose(store, room, "alice", 1, KICK) == [Accepted("demo", "alice", 1, 1, KICK)]
    assert stored_rows(store.path) == [("demo", "alice", 1, 1)]
    await store.close()


async def test_flush_waits_for_proposals_in_flight(tmp_path: Path) -> None:
    """flush returns only when every proposal queued before it is committed and answered."""
    store = SqliteStore(tmp_path)
    await store.open()
    answered: list[Outcome] = []
    store.commit_soon(Proposal(Room("demo"), "alice", 1, KICK), answered.append)
    await store.flush()
    assert stored_rows(store.path) == [("demo", "alice", 1, 1)] and len(answered) == 1
    await store.flush()  # nothing pending: returns at once
    await store.close()


async def test_unusable_directory_is_a_store_error(tmp_path: Path) -> None:
    """A data directory that cannot be created gives StoreError with a readable message."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot use the data directory"):
        await SqliteStore(tmp_path / "file" / "data").open()


async def test_proposals_during_a_commit_wait_for_the_commit_interval(tmp_path: Path) -> None:
    """A proposal that finds the store idle goes at once; those that come while it commits go together, one interval later."""
    store = SqliteStore(tmp_path, commit_interval=0.2)
    await store.open()
    room = Room("demo")
    await propose(store, room, "alice", 1, KICK)
    assert store.commits == 1
    await asyncio.gather(propose(store, room, "bob", 1, HAT), propose(store, room, "alice", 2, HAT))
    assert store.commits == 2  # both in one transaction
    assert stored_rows(store.path) == [("demo", "bob", 1, 2), ("demo", "alice", 2, 3)]
    await store.close()
