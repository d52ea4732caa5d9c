"""Soak and faults: many headless clients editing for a while through cuts and a server restart; nothing may be lost.

Clients in this process act at random (edits, sounds, pauses, tempi) while
connections are cut and the server is killed and started again
(``--cluster``: one of two cluster workers killed, its clients failing over
to the other). The users keep still around each kill, so that what is timed
is the failover. After a quiet period, every acknowledged update must be in
the server's Shared Data (read as a snapshot and from the store of record,
which must agree) and every client's copy must equal it. Exit 1 if anything
is lost or disagrees. docs/benchmarks.md, "Soak and faults".
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp

from loopsync.client import Client, Event
from loopsync.document import SOUNDS, Part, copy_part

from harness import ServerProcess, arguments, percentile, process_tree, write_json
from latency import loop_seconds

STEPS = 16


@dataclass
class Config:
    """One soak run."""

    clients: int = 12
    rooms: int = 3
    seconds: float = 60.0
    restarts: int = 1
    cut_gap: tuple[float, float] = (2.0, 6.0)
    """Seconds between two abrupt cuts (uniform)."""
    action_gap: tuple[float, float] = (0.15, 0.9)
    """Seconds between two actions of one client (uniform)."""
    bpm: tuple[float, float] = (200.0, 300.0)
    down_seconds: float = 0.5
    """How long the server stays down at a restart."""
    quiet_timeout: float = 30.0
    seed: int = 1
    cluster: bool = False
    """Two cluster workers on PostgreSQL and Redis; a restart kills one worker."""


@dataclass
class Member:
    """One client and what it saw: updates sent and acknowledged, connections, errors."""

    room: str
    user: str
    client: Client = field(init=False)
    """Made by :func:`soak` with this member's :meth:`on_event`."""
    sent: dict[int, Part] = field(default_factory=dict)
    acked: dict[int, Part] = field(default_factory=dict)
    edits: int = 0
    connections: int = 0
    disconnects: int = 0
    cuts: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    acked_at: list[float] = field(default_factory=list)
    dropped_at: list[float] = field(default_factory=list)
    """When each connection that had joined ended (``time.monotonic()``)."""
    joined_on: list[tuple[float, str]] = field(default_factory=list)
    """When each connection joined, and the node it joined (see :func:`node_of`)."""

    def on_event(self, event: Event) -> None:
        # Updates are recorded when the client queues them (its in-flight set), not only when the
        # writer reports them sent: an ack may be read before the writer's "sent" event, and an
        # update may reach the server although its send raised.
        for seq, part in self.client.sync.in_flight.items():
            self.sent.setdefault(seq, copy_part(part))
        name = event["event"]
        if name == "sent" and event["message"].get("type") == "update":
            self.sent.setdefault(int(event["message"]["seq"]), event["message"]["part"])
        elif name == "ack":
            self.acked_at.append(event["monotonic"])
            seq = int(event["seq"])
            if seq in self.sent:
                self.acked[seq] = self.sent[seq]
            else:
                self.errors["ack_for_unsent_seq"] += 1
        elif name == "edit":
            self.edits += 1
        elif name == "connected":
            self.connections += 1
            self.joined_on.append((event["monotonic"], node_of(self.client)))
        elif name == "disconnected" and event["was_connected"]:
            self.disconnects += 1
            self.dropped_at.append(event["monotonic"])
        elif name == "error":
            self.errors[str(event.get("code"))] += 1


def node_of(client: Client) -> str:
    """The node a client's connection is on: its presence id names it in a cluster (``3f9a0c1e-17``); one process has one ('')."""
    return (client.presence_table.own_id or "").rpartition("-")[0]


@dataclass
class Kill:
    """One restart: when the signal went, the node each client was on then, and when the users moved again."""

    at: float
    nodes: dict[str, str]
    until: float = 0.0


@dataclass
class Result:
    """What a soak run found."""

    clients: int
    rooms: int
    seconds: float
    server: str = "loopsync"
    edits: int = 0
    updates_sent: int = 0
    acknowledged: int = 0
    kept: int = 0
    superseded: int = 0
    lost: int = 0
    cuts: int = 0
    disconnects: int = 0
    reconnections: int = 0
    restarts: int = 0
    restart_signals: list[str] = field(default_factory=list)
    failover_ms: dict[str, float] = field(default_factory=dict)
    """From a kill to the first ack of each client whose connection it cut: ``clients``, ``p50``, ``max``."""
    landed_on_survivor: int = 0
    """Clients of a killed worker whose first new connection went to the surviving worker (not to its replacement)."""
    survivors: int = 0
    """Clients on the surviving worker at a kill (summed over kills)."""
    survivors_disconnected: int = 0
    settled: bool = False
    settle_seconds: float = 0.0
    store_agrees_with_snapshot: bool = False
    local_agrees: int = 0
    own_agrees: int = 0
    presence_agrees: int = 0
    presence_seconds: float = 0.0
    """From the end of the quiet period until every client's presence was right."""
    problems: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost, every copy agrees, every client came back (a surviving worker's client never left: see the problems)."""
        return (self.lost == 0 and self.settled and self.store_agrees_with_snapshot and self.local_agrees == self.clients
                and self.own_agrees == self.clients and self.presence_agrees == self.clients and not self.problems)


# -- the run --------------------------------------------------------------------------


async def moments(rng: random.Random, gap: tuple[float, float], config: Config, end: float, moving: asyncio.Event) -> AsyncIterator[None]:
    """Random moments ``gap`` apart until ``end``, but for those while ``moving`` is clear (the users keep still)."""
    for _ in range(int(config.seconds / gap[0]) + 1):
        await asyncio.sleep(rng.uniform(*gap))
        if time.monotonic() >= end:
            return
        if moving.is_set():
            yield


async def act(member: Member, rng: random.Random, config: Config, end: float, moving: asyncio.Event) -> None:
    """One client's user: random edits, pauses, plays and tempo changes until ``end``."""
    client = member.client
    async for _ in moments(rng, config.action_gap, config, end, moving):
        roll = rng.random()
        if not client.clock.playing and roll < 0.4:
            client.play()
        elif roll < 0.75:
            client.toggle(rng.randrange(STEPS))
        elif roll < 0.82:
            client.set_sound(rng.choice(SOUNDS))
        elif roll < 0.92:
            client.pause()
        else:
            client.set_bpm(round(rng.uniform(*config.bpm)))


async def cut(members: list[Member], rng: random.Random, config: Config, end: float, moving: asyncio.Event) -> None:
    """Every few seconds, cut one connected client's connection abruptly."""
    async for _ in moments(rng, config.cut_gap, config, end, moving):
        connected = [m for m in members if m.client.joined]
        if connected:
            member = rng.choice(connected)
            member.client.drop_connection()
            member.cuts += 1


async def restart(server: ServerProcess, members: list[Member], rng: random.Random, config: Config, start: float,
                  moving: asyncio.Event, kills: list[Kill], result: Result) -> None:
    """Restart the server, or kill one cluster worker, ``config.restarts`` times, evenly spread; SIGKILL first, then alternating with SIGTERM.

    The users keep still (``moving`` clear) around each signal: every client plays and the run waits until all are
    connected with nothing unconfirmed; then each toggles one step and the signal goes at once, so every client has
    exactly one edit that needs an ack after it; the users move again once all are back with nothing unconfirmed.
    """
    clients = [m.client for m in members]
    for index in range(config.restarts):
        at = start + config.seconds * (index + 1) / (config.restarts + 1)
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        signal_number = signal.SIGKILL if index % 2 == 0 else signal.SIGTERM
        moving.clear()
        for client in clients:
            client.play()
        if config.cluster:
            await spread(members, rng, config)
        await wait_until(lambda: settled(members), config.quiet_timeout)
        for client in clients:
            client.toggle(rng.randrange(STEPS))
        kill = Kill(time.monotonic(), {m.user: node_of(m.client) for m in members if m.client.joined})
        # The signal goes from here, not from a thread: no client may send its edit before it.
        os.kill(process_tree(server.pid)[1] if config.cluster else server.pid, signal_number)  # [1]: a worker of the supervisor
        if not config.cluster:  # a cluster's supervisor starts another worker by itself
            await asyncio.to_thread(server.stop, signal_number)  # waits for the exit
            await asyncio.sleep(config.down_seconds)
            await asyncio.to_thread(server.start)
        await wait_until(lambda: settled(members), config.quiet_timeout)
        kill.until = time.monotonic()
        kills.append(kill)
        moving.set()
        result.restarts += 1
        result.restart_signals.append(signal_number.name)


async def spread(members: list[Member], rng: random.Random, config: Config) -> None:
    """Cut connections until the clients sit on both workers: a kill with all of them on one side times nothing or spares nobody."""
    clients = [m.client for m in members]
    for _ in range(20):
        await wait_until(lambda: all(client.joined for client in clients), config.quiet_timeout)
        if len({node_of(client) for client in clients if client.joined}) > 1:
            return
        member = rng.choice(members)
        client, connections = member.client, member.connections
        client.drop_connection()
        member.cuts += 1
        await wait_until(lambda: member.connections > connections and client.joined, config.quiet_timeout)


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; whether it holds."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return predicate()


def settled(members: list[Member]) -> bool:
    """Every client connected and playing, with nothing unconfirmed or in flight."""
    for member in members:
        client = member.client
        if not (client.joined and client.clock.playing and not client.sync.dirty() and not client.sync.in_flight):
            return False
    return True


async def read_snapshot(url: str, room: str) -> dict[str, Any]:
    """The room's Shared Data as a fresh raw connection's first message (a snapshot) gives it."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"type": "hello", "v": 1, "room": room, "user": "auditor"}))
            message: dict[str, Any] = json.loads(await ws.receive_str(timeout=10))
            assert message["type"] == "snapshot", message
            return message


def read_store(data_dir: Path) -> dict[str, dict[str, tuple[int, Part]]]:
    """The SQLite file's parts: room -> user -> (seq, part)."""
    connection = sqlite3.connect(f"file:{data_dir / 'loopsync.sqlite3'}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT room, user, seq, part FROM parts").fetchall()
    finally:
        connection.close()
    return store_of(rows)


async def read_postgres(dsn: str) -> dict[str, dict[str, tuple[int, Part]]]:
    """PostgreSQL's parts (a cluster's store of record): room -> user -> (seq, part)."""
    import asyncpg  # the cluster extra: only --cluster needs it

    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT room, user_name, seq, part::text FROM loopsync.parts")
    finally:
        await connection.close()
    return store_of([tuple(row) for row in rows])


def store_of(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, tuple[int, Part]]]:
    store: dict[str, dict[str, tuple[int, Part]]] = {}
    for room, user, seq, part in rows:
        store.setdefault(room, {})[user] = (int(seq), json.loads(part))
    return store


def presence_seen(member: Member, members: list[Member]) -> tuple[list[Any], list[Any]]:
    """What the client sees in presence, and what it should see: its room's clients, each playing at its own tempo."""
    expected = sorted((m.user, True, m.client.clock.bpm) for m in members if m.room == member.room)
    seen = sorted((entry.get("user"), entry.get("playing"), entry.get("bpm")) for entry in member.client.presence)
    return seen, expected


def check_presence(members: list[Member], result: Result) -> None:
    """Every client sees exactly its room's clients, each playing at its own tempo."""
    for member in members:
        seen, expected = presence_seen(member, members)
        if seen == expected:
            result.presence_agrees += 1
        else:
            result.problems.append(f"{member.room}/{member.user} sees presence {seen}, expected {expected}")


def check(members: list[Member], snapshots: dict[str, dict[str, Any]], store: dict[str, dict[str, tuple[int, Part]]], result: Result) -> None:
    """Compare every acknowledged update and every client's copies with the server's Shared Data."""
    result.store_agrees_with_snapshot = all(
        snapshot["doc"]["parts"] == {user: part for user, (_, part) in store.get(room, {}).items()} for room, snapshot in snapshots.items()
    )
    if not result.store_agrees_with_snapshot:
        result.problems.append("the snapshot and the store of record differ")
    for member in members:
        client = member.client
        held = store.get(member.room, {}).get(member.user)
        for seq, part in sorted(member.acked.items()):
            if held is None or held[0] < seq or (held[0] == seq and held[1] != part):
                result.lost += 1
            elif held[0] == seq:
                result.kept += 1
            else:
                result.superseded += 1
        if held is not None and member.sent.get(held[0]) != held[1]:
            result.problems.append(f"{member.room}/{member.user}: the server holds seq {held[0]}, which this client never sent with that part")
        own = client.sync.own
        if (held[1] if held else None) == own or (held is None and not any(own["steps"])):
            result.own_agrees += 1
        else:
            result.problems.append(f"{member.room}/{member.user}: own part {own} but the server holds {held}")
        local = client.sync.local_data()["parts"]
        if held is None and not any(own["steps"]):
            local.pop(member.user, None)  # a silent part is not written while the server holds none
        if local == snapshots[member.room]["doc"]["parts"]:
            result.local_agrees += 1
        else:
            result.problems.append(f"{member.room}/{member.user}: Local Data differs from Shared Data")


def check_failover(members: list[Member], kills: list[Kill], result: Result) -> None:
    """Time each kill's failover and check that the clients of the other worker never noticed it.

    The clients a kill cut are those on the node of the first client to lose its connection after it (one process: all).
    """
    failover_ms: list[float] = []
    for kill in kills:
        dropped = {m.user: [at for at in m.dropped_at if kill.at <= at <= kill.until] for m in members}
        first = min(((at[0], user) for user, at in dropped.items() if at), default=None)
        dead = kill.nodes.get(first[1]) if first is not None else None
        for member in members:
            node, drops = kill.nodes.get(member.user), dropped[member.user]
            if node is None or dead is None:
                continue
            if node != dead:
                result.survivors += 1
                result.survivors_disconnected += bool(drops)
                if drops:
                    result.problems.append(f"{member.room}/{member.user} on the surviving worker lost its connection at the kill")
                continue
            acks = [at for at in member.acked_at if drops and drops[0] < at <= kill.until]
            if not acks:
                result.problems.append(f"{member.room}/{member.user}: its connection was cut by the kill, and no ack came after it")
                continue
            failover_ms.append((acks[0] - kill.at) * 1000)
            nodes = [joined for at, joined in member.joined_on if drops[0] < at]
            result.landed_on_survivor += bool(nodes) and nodes[0] in set(kill.nodes.values()) - {dead}
    failover_ms.sort()
    result.failover_ms = {"clients": len(failover_ms)}  # JSON has no NaN: no figures when nobody was timed
    if failover_ms:
        result.failover_ms.update(p50=round(percentile(failover_ms, 0.5), 1), max=round(failover_ms[-1], 1))


async def soak(config: Config, data_dir: Path) -> Result:
    """Run one soak against a SQLite server in ``data_dir`` (or a cluster); return the figures (nothing printed)."""
    rng = random.Random(config.seed)
    result = Result(config.clients, config.rooms, config.seconds, "cluster-2" if config.cluster else "loopsync")
    server = ServerProcess(result.server, data_dir)
    await asyncio.to_thread(server.start)
    members = [Member(f"room{index % config.rooms}", f"user{index}") for index in range(config.clients)]
    for member in members:  # a client connects only once started
        member.client = Client(server.ws_url, member.room, member.user, bpm=round(rng.uniform(*config.bpm)),
                               sound=rng.choice(SOUNDS), on_event=member.on_event)
    try:
        for member in members:
            await member.client.start()
        await asyncio.wait_for(asyncio.gather(*(m.client.wait_joined() for m in members)), 30)
        start = time.monotonic()
        end = start + config.seconds
        moving = asyncio.Event()
        moving.set()
        kills: list[Kill] = []
        tasks = [asyncio.create_task(act(m, random.Random(rng.random()), config, end, moving)) for m in members]
        tasks.append(asyncio.create_task(cut(members, random.Random(rng.random()), config, end, moving)))
        tasks.append(asyncio.create_task(restart(server, members, random.Random(rng.random()), config, start, moving, kills, result)))
        await asyncio.gather(*tasks)
        # The quiet period: everyone plays; wait until all are back with nothing unconfirmed.
        quiet = time.monotonic()
        for member in members:
            member.client.play()
        result.settled = await wait_until(lambda: settled(members), config.quiet_timeout)
        if result.settled:
            # Every client syncs and starts one more loop with the last Shared Data.
            await asyncio.sleep(max(loop_seconds(m.client.clock.bpm) for m in members) * 2 + 0.2)
            result.settled = settled(members)
        result.settle_seconds = time.monotonic() - quiet
        if not result.settled:
            for member in members:
                client = member.client
                if not settled([member]):
                    result.problems.append(f"{member.room}/{member.user} did not settle: joined {client.joined}, "
                                           f"dirty {client.sync.dirty()}, in flight {sorted(client.sync.in_flight)}")
        # A killed worker's users leave the others' presence when its heartbeat runs out (about 8 s: docs/scale.md).
        presence_since = time.monotonic()
        await wait_until(lambda: all(operator.eq(*presence_seen(m, members)) for m in members), config.quiet_timeout)
        result.presence_seconds = time.monotonic() - presence_since
        check_presence(members, result)
        snapshots = {room: await read_snapshot(server.ws_url, room) for room in sorted({m.room for m in members})}
        store = await read_postgres(server.postgres_dsn) if server.postgres_dsn else read_store(data_dir)
        check(members, snapshots, store, result)
        check_failover(members, kills, result)
    finally:
        for member in members:
            await member.client.close()
        await asyncio.to_thread(server.close)
    result.edits = sum(m.edits for m in members)
    result.updates_sent = sum(len(m.sent) for m in members)
    result.acknowledged = sum(len(m.acked) for m in members)
    result.cuts = sum(m.cuts for m in members)
    result.disconnects = sum(m.disconnects for m in members)
    result.reconnections = sum(max(0, m.connections - 1) for m in members)
    errors: Counter[str] = Counter()
    for member in members:
        errors.update(member.errors)
    result.errors = dict(errors)
    return result


def report(result: Result, config: Config) -> str:
    """The figures as text for people."""
    r = result
    restarts = "worker kills" if config.cluster else "server restarts"
    server = "loopsync serve --workers 2 (cluster-2: PostgreSQL + Redis)" if config.cluster else "loopsync serve --store sqlite"
    store = "PostgreSQL" if config.cluster else "SQLite"
    failover = (f"failover (signal to first ack) of the {r.failover_ms.get('clients', 0)} clients the {restarts[:-1]} cut:"
                f" p50 {r.failover_ms.get('p50', math.nan):.0f} ms, max {r.failover_ms.get('max', math.nan):.0f} ms")
    if config.cluster:
        failover += (f"; {r.landed_on_survivor} of them reconnected to the surviving worker;"
                     f" clients of the surviving worker that lost their connection: {r.survivors_disconnected} of {r.survivors}")
    lines = [
        f"Soak: {r.clients} clients in {r.rooms} rooms, {r.seconds:g} s of random edits, pauses, plays and tempo changes;",
        f"  a cut every {config.cut_gap[0]:g}-{config.cut_gap[1]:g} s; {restarts}: {r.restarts} ({', '.join(r.restart_signals) or 'none'});"
        f" server: {server}",
        f"edits: {r.edits}; updates sent: {r.updates_sent}; acknowledged: {r.acknowledged}"
        f" (kept as sent: {r.kept}, replaced by a later part of the same user: {r.superseded}); lost: {r.lost}",
        f"disconnects survived: {r.disconnects} ({r.cuts} abrupt cuts, the rest {restarts}); reconnections: {r.reconnections};"
        f" restarts survived: {r.restarts if r.settled else 0}/{r.restarts}",
        f"quiet period: {'settled' if r.settled else 'NOT settled'} after {r.settle_seconds:.1f} s;"
        f" snapshot and {store} agree: {'yes' if r.store_agrees_with_snapshot else 'NO'}",
        failover,
        f"Local Data equal to Shared Data: {r.local_agrees}/{r.clients} clients; own part on the server equal to the local one: {r.own_agrees}/{r.clients};"
        f" presence right: {r.presence_agrees}/{r.clients} (after {r.presence_seconds:.1f} s more)",
        f"errors from the server or the client: {r.errors or 'none'}",
    ]
    lines += [f"problem: {problem}" for problem in r.problems[:20]]
    lines.append("verdict: " + ("OK" if r.ok else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, smoke="6 clients in 2 rooms for 5 s, one restart (the test suite)", long="300 s and three restarts")
    parser.add_argument("--cluster", action="store_true", help="two cluster workers on PostgreSQL and Redis; a restart kills one worker")
    parser.add_argument("--clients", type=int, help="number of clients (default 12)")
    parser.add_argument("--rooms", type=int, help="number of rooms (default 3)")
    parser.add_argument("--seconds", type=float, help="length of the busy part (default 60)")
    parser.add_argument("--restarts", type=int, help="server restarts (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    args = parser.parse_args(argv)
    if args.long:
        config = Config(seconds=300.0, restarts=3)
    elif args.smoke:
        config = Config(clients=6, rooms=2, seconds=5.0, restarts=1, cut_gap=(0.5, 1.5))
    else:
        config = Config()
    for name in ("clients", "rooms", "seconds", "restarts"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    config.seed, config.cluster = args.seed, args.cluster
    with tempfile.TemporaryDirectory(prefix="loopsync-soak-") as tmp:
        result = asyncio.run(soak(config, Path(tmp) / "data"))
    print(report(result, config), flush=True)
    write_json(args.json, {**asdict(result), "ok": result.ok})
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
