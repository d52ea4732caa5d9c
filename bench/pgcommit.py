"""What a commit batch of PostgresStore costs, per proposal, at batch sizes 1, 10 and 100.

On its own PostgreSQL (``tests/services.py``), 1,000 rooms of 4 parts, each
proposal a new part of an existing user: per proposal, the wall time (one
batch at a time), this process's CPU and every PostgreSQL process's CPU,
with ``synchronous_commit`` on (as deployed) and off (the disk's share),
against an empty round trip (``SELECT 1``).

Run: ``python bench/pgcommit.py [--smoke] [--json FILE]`` (about 20 s; ``--smoke`` 3 s).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

import asyncpg

import harness
from loopsync.pgstore import PostgresStore
from loopsync.rooms import Proposal, Room

sys.path.insert(0, str(harness.ROOT / "tests"))
from services import PostgresService  # noqa: E402  (the tests' real PostgreSQL)

ROOMS = 1000
USERS_PER_ROOM = 4
SIZES = (1, 10, 100)
PART = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}


def postgres_cpu_seconds(service: PostgresService) -> float:
    """CPU of the postmaster and every process below it so far (exited backends are not counted: ours stay)."""
    assert service.process is not None
    return sum(harness.cpu_seconds(service.process.pid))


async def run(service: PostgresService, dsn: str, proposals_per_size: int) -> dict[str, Any]:
    store = PostgresStore(dsn)
    await store.open()
    seqs: dict[tuple[str, str], int] = {}
    chooser = random.Random(1)
    keys = [(f"room{room}", f"user{user}") for room in range(ROOMS) for user in range(USERS_PER_ROOM)]
    rooms = {room: Room(room) for room, _ in keys}  # nobody connected: the store reads the connected users from these

    def proposals(count: int) -> list[Proposal]:
        batch = []
        for room, user in chooser.sample(keys, count):
            seqs[(room, user)] = seqs.get((room, user), 0) + 1
            batch.append(Proposal(rooms[room], user, seqs[(room, user)], PART))
        return batch

    for start in range(0, len(keys), 500):  # the rooms' first parts
        for outcome in await store.commit([Proposal(rooms[room], user, 1, PART) for room, user in keys[start:start + 500]]):
            assert isinstance(outcome, list)
    seqs.update({key: 1 for key in keys})
    results: dict[str, Any] = {}
    connection = await asyncpg.connect(dsn)
    rounds = max(50, proposals_per_size // 10)
    started, cpu, pg = time.perf_counter(), time.process_time(), postgres_cpu_seconds(service)
    for _ in range(rounds):
        await connection.fetchval("SELECT 1")
    results["round_trip"] = _figures(rounds, started, cpu, pg, service)
    await connection.close()
    for size in SIZES:
        batches = [proposals(size) for _ in range(max(1, proposals_per_size // size))]
        started, cpu, pg = time.perf_counter(), time.process_time(), postgres_cpu_seconds(service)
        for batch in batches:
            for outcome in await store.commit(batch):
                assert isinstance(outcome, list), outcome
        results[str(size)] = _figures(len(batches) * size, started, cpu, pg, service)
    await store.close()
    return results


def _figures(count: int, started: float, cpu: float, pg: float, service: PostgresService) -> dict[str, float]:
    return {"count": count,
            "wall_us": (time.perf_counter() - started) / count * 1e6,
            "node_cpu_us": (time.process_time() - cpu) / count * 1e6,
            "postgres_cpu_us": (postgres_cpu_seconds(service) - pg) / count * 1e6}


def main() -> None:
    arguments = harness.arguments(__doc__, smoke="a few hundred proposals per size").parse_args()
    proposals_per_size = 300 if arguments.smoke else 3000
    service = PostgresService().start()
    report: dict[str, Any] = {}
    try:
        for mode in ("on", "off"):
            database = service.create_database()
            service.query(f"ALTER DATABASE {database} SET synchronous_commit = {mode}")
            report[f"synchronous_commit={mode}"] = asyncio.run(run(service, service.dsn(database), proposals_per_size))
    finally:
        service.close()
    print(f"PostgresStore.commit, {ROOMS} rooms x {USERS_PER_ROOM} parts, one batch at a time; per proposal:")
    for mode, results in report.items():
        print(f"  {mode}")
        print(f"    {'batch':>12} {'wall us':>9} {'node CPU us':>12} {'PostgreSQL CPU us':>18}")
        for size, figures in results.items():
            label = "SELECT 1" if size == "round_trip" else size
            print(f"    {label:>12} {figures['wall_us']:9.0f} {figures['node_cpu_us']:12.0f} {figures['postgres_cpu_us']:18.0f}")
    harness.write_json(arguments.json, report)


if __name__ == "__main__":
    main()
