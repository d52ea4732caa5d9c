"""Soak and faults: many headless clients editing for a while through cuts and a server restart; nothing may be lost.

A real server (``python -m loopsync serve --store sqlite`` in a subprocess) and
``--clients`` headless clients (``loopsync.client.Client``, all in this
process) in ``--rooms`` rooms, each at its own random tempo (200-300 BPM, so
loops are short and updates many). For ``--seconds`` every client acts at
random moments: toggles a step (most often), changes its sound, pauses and
plays, changes tempo. Meanwhile:

- every few seconds one client's connection is cut abruptly (its socket shut
  down, no close frame), and the client reconnects by itself;
- in the middle of the run the server is killed (SIGKILL: no clean shutdown)
  and started again on the same port and SQLite directory; the clients come
  back by themselves. ``--long`` runs five minutes with three restarts,
  alternating SIGKILL and SIGTERM.

Then a quiet period: every client plays, and the run waits until every client
is connected with no edit unconfirmed and has played a whole loop since. The
checks, against the server's Shared Data read twice (a ``snapshot`` over a
fresh raw connection, and the SQLite file):

- every acknowledged update is there: the server holds that part, or a later
  one of the same user (an update carries the whole part, so a later one
  replaces it); an acknowledged update whose seq the server no longer has is
  lost;
- the snapshot and the SQLite file agree;
- every client's Local Data equals the room's Shared Data (so all copies agree
  with each other), and each client's own part on the server equals its final
  local part.

Usage::

    python bench/soak.py            # 12 clients in 3 rooms, 60 s, one restart
    python bench/soak.py --long     # 300 s, three restarts
    python bench/soak.py --smoke    # 6 clients in 2 rooms, a few seconds (the test suite)

Exit code 1 if anything acknowledged is lost, a copy disagrees, or a client
did not come back; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loopsync.client import Client, Event
from loopsync.document import SOUNDS, Part, copy_part

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))
from harness import ServerProcess  # noqa: E402  (a sibling script)
from latency import loop_seconds  # noqa: E402  (a sibling script)

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


@dataclass
class Member:
    """One client and what it saw: updates sent and acknowledged, connections, errors."""

    room: str
    user: str
    client: Client | None = None
    sent: dict[int, Part] = field(default_factory=dict)
    acked: dict[int, Part] = field(default_factory=dict)
    edits: int = 0
    connections: int = 0
    disconnects: int = 0
    cuts: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def on_event(self, event: Event) -> None:
        # Updates are recorded when the client queues them (its in-flight set), not only when the
        # writer reports them sent: an ack may be read before the writer's "sent" event, and an
        # update may reach the server although its send raised.
        if self.client is not None:
            for seq, part in self.client.sync.in_flight.items():
                self.sent.setdefault(seq, copy_part(part))
        name = event["event"]
        if name == "sent" and event["message"].get("type") == "update":
            self.sent.setdefault(int(event["message"]["seq"]), event["message"]["part"])
        elif name == "ack":
            seq = int(event["seq"])
            if seq in self.sent:
                self.acked[seq] = self.sent[seq]
            else:
                self.errors["ack_for_unsent_seq"] += 1
        elif name == "edit":
            self.edits += 1
        elif name == "connected":
            self.connections += 1
        elif name == "disconnected" and event["was_connected"]:
            self.disconnects += 1
        elif name == "error":
            self.errors[str(event.get("code"))] += 1


@dataclass
class Result:
    """What a soak run found."""

    clients: int
    rooms: int
    seconds: float
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
    settled: bool = False
    settle_seconds: float = 0.0
    store_agrees_with_snapshot: bool = False
    local_agrees: int = 0
    own_agrees: int = 0
    presence_agrees: int = 0
    problems: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost, every copy agrees, every client came back."""
        return (self.lost == 0 and self.settled and self.store_agrees_with_snapshot and self.local_agrees == self.clients
                and self.own_agrees == self.clients and self.presence_agrees == self.clients and not self.problems)


# -- the run --------------------------------------------------------------------------


async def act(member: Member, rng: random.Random, config: Config, end: float) -> None:
    """One client's user: random edits, pauses, plays and tempo changes until ``end``."""
    client = member.client
    assert client is not None
    for _ in range(int(config.seconds / config.action_gap[0]) + 1):
        await asyncio.sleep(rng.uniform(*config.action_gap))
        if time.monotonic() >= end:
            return
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


async def cut(members: list[Member], rng: random.Random, config: Config, end: float) -> None:
    """Every few seconds, cut one connected client's connection abruptly."""
    for _ in range(int(config.seconds / config.cut_gap[0]) + 1):
        await asyncio.sleep(rng.uniform(*config.cut_gap))
        if time.monotonic() >= end:
            return
        connected = [m for m in members if m.client is not None and m.client.joined]
        if connected:
            member = rng.choice(connected)
            assert member.client is not None
            member.client.drop_connection()
            member.cuts += 1


async def restart(server: ServerProcess, config: Config, start: float, result: Result) -> None:
    """Restart the server ``config.restarts`` times, evenly spread; SIGKILL first, then alternating with SIGTERM."""
    for index in range(config.restarts):
        at = start + config.seconds * (index + 1) / (config.restarts + 1)
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        signal_number = signal.SIGKILL if index % 2 == 0 else signal.SIGTERM
        await asyncio.to_thread(server.stop, signal_number)
        await asyncio.sleep(config.down_seconds)
        await asyncio.to_thread(server.start)
        result.restarts += 1
        result.restart_signals.append(signal_number.name)


def settled(members: list[Member]) -> bool:
    """Every client connected and playing, with nothing unconfirmed or in flight."""
    for member in members:
        client = member.client
        assert client is not None
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
    store: dict[str, dict[str, tuple[int, Part]]] = {}
    for room, user, seq, part in rows:
        store.setdefault(room, {})[user] = (int(seq), json.loads(part))
    return store


def check_presence(members: list[Member], result: Result) -> None:
    """Every client sees exactly its room's clients, each playing at its own tempo."""
    for member in members:
        client = member.client
        assert client is not None
        expected = sorted((m.user, True, m.client.clock.bpm) for m in members if m.room == member.room and m.client)
        seen = sorted((entry.get("user"), entry.get("playing"), entry.get("bpm")) for entry in client.presence)
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
        result.problems.append("the snapshot and the SQLite file differ")
    for member in members:
        client = member.client
        assert client is not None
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


async def soak(config: Config, data_dir: Path) -> Result:
    """Run one soak against a SQLite server in ``data_dir``; return the figures (nothing printed)."""
    rng = random.Random(config.seed)
    result = Result(config.clients, config.rooms, config.seconds)
    server = ServerProcess("loopsync", data_dir)
    await asyncio.to_thread(server.start)
    members = [Member(f"room{index % config.rooms}", f"user{index}") for index in range(config.clients)]
    try:
        for member in members:
            member.client = Client(server.ws_url, member.room, member.user, bpm=round(rng.uniform(*config.bpm)),
                                   sound=rng.choice(SOUNDS), on_event=member.on_event)
            await member.client.start()
        await asyncio.wait_for(asyncio.gather(*(m.client.wait_joined() for m in members if m.client)), 30)
        start = time.monotonic()
        end = start + config.seconds
        tasks = [asyncio.create_task(act(m, random.Random(rng.random()), config, end)) for m in members]
        tasks.append(asyncio.create_task(cut(members, random.Random(rng.random()), config, end)))
        tasks.append(asyncio.create_task(restart(server, config, start, result)))
        await asyncio.gather(*tasks)
        # The quiet period: everyone plays; wait until all are back with nothing unconfirmed.
        quiet = time.monotonic()
        for member in members:
            assert member.client is not None
            member.client.play()
        deadline = quiet + config.quiet_timeout
        while time.monotonic() < deadline and not settled(members):
            await asyncio.sleep(0.05)
        result.settled = settled(members)
        if result.settled:
            # Every client syncs and starts one more loop with the last Shared Data.
            await asyncio.sleep(max(loop_seconds(m.client.clock.bpm) for m in members if m.client) * 2 + 0.2)
            result.settled = settled(members)
        result.settle_seconds = time.monotonic() - quiet
        if not result.settled:
            for member in members:
                client = member.client
                assert client is not None
                if not settled([member]):
                    result.problems.append(f"{member.room}/{member.user} did not settle: joined {client.joined}, "
                                           f"dirty {client.sync.dirty()}, in flight {sorted(client.sync.in_flight)}")
        check_presence(members, result)
        snapshots = {room: await read_snapshot(server.ws_url, room) for room in sorted({m.room for m in members})}
        check(members, snapshots, read_store(data_dir), result)
    finally:
        for member in members:
            if member.client is not None:
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
    lines = [
        f"Soak: {r.clients} clients in {r.rooms} rooms, {r.seconds:g} s of random edits, pauses, plays and tempo changes;",
        f"  a cut every {config.cut_gap[0]:g}-{config.cut_gap[1]:g} s; server restarts: {r.restarts} ({', '.join(r.restart_signals) or 'none'});"
        f" server: loopsync serve --store sqlite",
        f"edits: {r.edits}; updates sent: {r.updates_sent}; acknowledged: {r.acknowledged}"
        f" (kept as sent: {r.kept}, replaced by a later part of the same user: {r.superseded}); lost: {r.lost}",
        f"disconnects survived: {r.disconnects} ({r.cuts} abrupt cuts, the rest server restarts); reconnections: {r.reconnections};"
        f" restarts survived: {r.restarts if r.settled else 0}/{r.restarts}",
        f"quiet period: {'settled' if r.settled else 'NOT settled'} after {r.settle_seconds:.1f} s;"
        f" snapshot and SQLite agree: {'yes' if r.store_agrees_with_snapshot else 'NO'}",
        f"Local Data equal to Shared Data: {r.local_agrees}/{r.clients} clients; own part on the server equal to the local one: {r.own_agrees}/{r.clients};"
        f" presence right: {r.presence_agrees}/{r.clients}",
        f"errors from the server or the client: {r.errors or 'none'}",
    ]
    lines += [f"problem: {problem}" for problem in r.problems[:20]]
    lines.append("verdict: " + ("OK" if r.ok else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="loopsync soak: clients, cuts and a server restart; nothing may be lost")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--long", action="store_true", help="300 s and three restarts")
    length.add_argument("--smoke", action="store_true", help="6 clients in 2 rooms for 5 s, one restart (the test suite)")
    parser.add_argument("--clients", type=int, help="number of clients (default 12)")
    parser.add_argument("--rooms", type=int, help="number of rooms (default 3)")
    parser.add_argument("--seconds", type=float, help="length of the busy part (default 60)")
    parser.add_argument("--restarts", type=int, help="server restarts (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
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
    config.seed = args.seed
    with tempfile.TemporaryDirectory(prefix="loopsync-soak-") as tmp:
        result = asyncio.run(soak(config, Path(tmp) / "data"))
    print(report(result, config), flush=True)
    if args.json:
        args.json.write_text(json.dumps({**asdict(result), "ok": result.ok}, indent=1))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
