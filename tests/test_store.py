"""The stores: a save returns only after its commit, restarts keep everything, one server per directory."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from loopsync.rooms import Accepted
from loopsync.store import MemoryStore, SqliteStore, StoreError, StoreLocked

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}
HAT = {"sound": "hat", "steps": [0, 0, 1, 0] * 4}


def stored_rows(path: Path) -> list[tuple[str, str, int, int]]:
    """What another SQLite connection (another process, say) sees committed."""
    with sqlite3.connect(path) as connection:
        return list(connection.execute("SELECT room, user, seq, revision FROM parts ORDER BY room, revision"))


@pytest.fixture
def sqlite_store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path)
    store.open()
    return store


async def test_save_returns_after_commit(sqlite_store: SqliteStore) -> None:
    """When save returns, the record is visible to any other connection: it is committed."""
    await sqlite_store.save(Accepted("demo", "alice", 1, 1, KICK))
    assert stored_rows(sqlite_store.path) == [("demo", "alice", 1, 1)]
    await sqlite_store.close()


async def test_database_is_wal_and_commits_are_fsynced(sqlite_store: SqliteStore) -> None:
    """The file is in WAL mode and the store's connection commits with synchronous=FULL."""
    with sqlite3.connect(sqlite_store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert sqlite_store._connection is not None
    synchronous = await asyncio.wrap_future(sqlite_store._call(lambda: sqlite_store._connection.execute("PRAGMA synchronous").fetchone()))  # type: ignore[union-attr]
    assert synchronous == (2,)  # FULL
    await sqlite_store.close()


async def test_concurrent_saves_share_commits(sqlite_store: SqliteStore) -> None:
    """Saves that arrive while a commit runs go into the next transaction: far fewer commits than saves."""
    records = [Accepted(f"room{index % 10}", f"user{index}", 1, index + 1, KICK) for index in range(200)]
    await asyncio.gather(*(sqlite_store.save(record) for record in records))
    assert len(stored_rows(sqlite_store.path)) == 200
    assert 1 <= sqlite_store.commits <= 5
    await sqlite_store.close()


async def test_restart_keeps_the_latest_part_of_every_user(tmp_path: Path) -> None:
    """A reopened store loads, per room, each user's latest accepted part, seq and revision."""
    store = SqliteStore(tmp_path)
    store.open()
    await store.save(Accepted("demo", "alice", 1, 1, KICK))
    await store.save(Accepted("demo", "bob", 4, 2, HAT))
    await store.save(Accepted("demo", "alice", 2, 3, HAT))
    await store.save(Accepted("other", "alice", 1, 1, KICK))
    await store.close()

    again = SqliteStore(tmp_path)
    again.open()
    assert again.load_rooms() == {
        "demo": [Accepted("demo", "bob", 4, 2, HAT), Accepted("demo", "alice", 2, 3, HAT)],
        "other": [Accepted("other", "alice", 1, 1, KICK)],
    }
    assert await again.load_room("other") == [Accepted("other", "alice", 1, 1, KICK)]
    assert await again.load_room("nobody") == []
    await again.close()


async def test_second_store_on_a_directory_is_refused(tmp_path: Path) -> None:
    """Only one store may hold a data directory; the lock is released on close."""
    first = SqliteStore(tmp_path)
    first.open()
    second = SqliteStore(tmp_path)
    with pytest.raises(StoreLocked, match="another loopsync server is already using the data directory"):
        second.open()
    await first.close()
    second.open()
    await second.close()


async def test_failed_commit_raises_and_stores_nothing(tmp_path: Path) -> None:
    """A commit that cannot take SQLite's write lock fails every save of its batch; the next commit works."""
    store = SqliteStore(tmp_path, busy_timeout=0.05)
    store.open()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    results = await asyncio.gather(
        store.save(Accepted("demo", "alice", 1, 1, KICK)), store.save(Accepted("demo", "bob", 1, 2, HAT)), return_exceptions=True)
    assert all(isinstance(result, StoreError) for result in results)
    blocker.rollback()
    blocker.close()
    assert stored_rows(store.path) == []
    await store.save(Accepted("demo", "alice", 1, 1, KICK))
    assert stored_rows(store.path) == [("demo", "alice", 1, 1)]
    await store.close()


async def test_flush_waits_for_saves_in_flight(sqlite_store: SqliteStore) -> None:
    """flush returns only when every save started before it is committed."""
    saving = asyncio.ensure_future(sqlite_store.save(Accepted("demo", "alice", 1, 1, KICK)))
    await asyncio.sleep(0)  # let the save queue its record
    await sqlite_store.flush()
    assert stored_rows(sqlite_store.path) == [("demo", "alice", 1, 1)]
    await saving
    await sqlite_store.flush()  # nothing pending: returns at once
    await sqlite_store.close()


def test_unusable_directory_is_a_store_error(tmp_path: Path) -> None:
    """A data directory that cannot be created gives StoreError with a readable message."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot use the data directory"):
        SqliteStore(tmp_path / "file" / "data").open()


async def test_memory_store_keeps_the_latest_part_per_user() -> None:
    """MemoryStore has the same interface and the same answers, in this process only."""
    store = MemoryStore()
    store.open()
    await store.save(Accepted("demo", "alice", 1, 1, KICK))
    await store.save(Accepted("demo", "alice", 2, 2, HAT))
    await store.flush()
    assert store.load_rooms() == {"demo": [Accepted("demo", "alice", 2, 2, HAT)]}
    assert await store.load_room("demo") == [Accepted("demo", "alice", 2, 2, HAT)]
    await store.close()


async def test_a_cancelled_save_is_still_committed(sqlite_store: SqliteStore) -> None:
    """A caller that goes away while its save waits does not take the record out of its batch."""
    saving = asyncio.ensure_future(sqlite_store.save(Accepted("demo", "alice", 1, 1, KICK)))
    await asyncio.sleep(0)  # let the save queue its record
    saving.cancel()
    await sqlite_store.flush()
    assert stored_rows(sqlite_store.path) == [("demo", "alice", 1, 1)]
    await sqlite_store.close()


async def test_saves_during_a_commit_wait_for_the_commit_interval(tmp_path: Path) -> None:
    """A save that finds the store idle goes at once; those that come while it commits go together, one interval later."""
    store = SqliteStore(tmp_path, commit_interval=0.2)
    store.open()
    await store.save(Accepted("demo", "alice", 1, 1, KICK))
    assert store.commits == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(store.save(Accepted("demo", "bob", 1, 2, HAT)), store.save(Accepted("demo", "alice", 2, 3, HAT)))
    assert store.commits == 2  # both in one transaction
    assert loop.time() - started < 0.2 + 5.0  # safety net only
    assert stored_rows(store.path) == [("demo", "bob", 1, 2), ("demo", "alice", 2, 3)]
    await store.close()
