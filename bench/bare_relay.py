"""The baselines of the fan-out benchmark: a bare WebSocket relay on loopsync's stack, and the floor.

loopsync's own connection layer, event loop and interpreter settings with no
rules: ``hello`` puts a connection in a room, every later message goes as is
to the room's others. ``--durable DIR`` makes it the floor: each message
parsed for its ``seq``, committed with loopsync's ``SqliteStore``
(``write_soon``), acknowledged, then passed on; no validation, ownership,
presence or snapshot. Between the relay and the floor is what the durable
work costs; between the floor and loopsync, loopsync's own code.

``--durable postgresql://... --bus redis://...`` makes it a cluster node's
floor: each batch committed to PostgreSQL in one transaction (a plain
upsert, none of loopsync's rules), published on each room's Redis channel
(so that other nodes could pass it on) and only then acknowledged and passed
on; it reads its rooms' channels as a node does and passes on what other
nodes publish.

Run: ``python bench/bare_relay.py --port 0 [--durable DIR | --durable POSTGRES_URL --bus REDIS_URL]`` (prints its URL like the server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any, Callable

import orjson

from loopsync import protocol
from loopsync.connection import UPGRADE, Connection
from loopsync.rooms import Accepted
from loopsync.server import event_loop_factory, tune_interpreter
from loopsync.store import Outcome, SqliteStore
from loopsync.websocket import HttpError, Request, text_frame


class _Member(Connection):
    __slots__ = ("room", "room_name", "user")

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self.room: set[_Member] | None = None
        self.room_name = ""
        self.user = ""


class Relay:
    """The relay (and, with a store, the floor): a :class:`~loopsync.connection.Handler` with no rules."""

    def __init__(self, store: SqliteStore | ClusterFloorStore | None) -> None:
        self.store = store
        self.rooms: dict[str, set[_Member]] = {}
        self.revisions: dict[str, int] = {}

    def http_request(self, connection: Connection, request: Request) -> bytes | HttpError | object:
        return UPGRADE if request.target == "/ws" else HttpError(404, "not found")

    def opened(self, connection: Connection) -> None:
        pass

    def text(self, connection: Connection, text: str) -> None:
        member = connection
        assert isinstance(member, _Member)
        if member.room is None:
            hello = orjson.loads(text)
            member.room_name, member.user = hello["room"], hello["user"]
            member.room = self.rooms.setdefault(hello["room"], set())
            member.room.add(member)
            if isinstance(self.store, ClusterFloorStore):
                self.store.listen(hello["room"], member.room)
            return
        frame = text_frame(text.encode())  # encoded once for every peer
        if self.store is None:
            for other in member.room:
                if other is not member:
                    other.send(frame)
            return
        update = orjson.loads(text)  # the ack must name the seq (the same parser as loopsync)
        self.revisions[member.room_name] = revision = self.revisions.get(member.room_name, 0) + 1
        record = Accepted(member.room_name, member.user, update["seq"], revision, update["part"])
        members = member.room

        def committed(outcome: Outcome) -> None:
            if not isinstance(outcome, list):
                raise outcome if isinstance(outcome, Exception) else RuntimeError(outcome)
            member.send(text_frame(protocol.ack_message(seq=record.seq, revision=revision)))
            for other in members:
                if other is not member:
                    other.send(frame)

        self.store.write_soon(record, committed)

    def binary(self, connection: Connection) -> None:
        pass

    def caught_up(self, connection: Connection) -> None:
        pass

    def closing(self, connection: Connection) -> None:
        self.lost(connection)

    def lost(self, connection: Connection) -> None:
        assert isinstance(connection, _Member)
        if connection.room is not None:
            connection.room.discard(connection)
            connection.room = None


_UPSERT = """
INSERT INTO floor_parts (room, user_name, seq, revision, part)
SELECT r.room, r.user_name, r.seq, r.revision, r.part FROM jsonb_to_recordset($1::jsonb)
    AS r(room text, user_name text, seq bigint, revision bigint, part jsonb)
ON CONFLICT (room, user_name) DO UPDATE SET seq = excluded.seq, revision = excluded.revision, part = excluded.part
"""


class ClusterFloorStore:
    """A cluster node's durable work with no rules: batches upserted in PostgreSQL, published on Redis, then answered.

    Like the cluster's store, one batch at a time on one held connection; the
    next batch is what queued meanwhile.
    """

    def __init__(self, dsn: str, bus_url: str) -> None:
        self.dsn, self.bus_url = dsn, bus_url
        self.node = f"floor-{os.getpid()}"
        self._pending: list[tuple[Accepted, Callable[[Any], None]]] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._subscribe_task: asyncio.Task[None] | None = None
        self._unsubscribed: list[str] = []
        self._rooms: dict[str, set[_Member]] = {}

    async def open(self) -> None:
        import asyncpg
        import redis.asyncio as redis

        self._connection = await asyncpg.connect(self.dsn)
        await self._connection.execute("CREATE TABLE IF NOT EXISTS floor_parts (room text, user_name text, seq bigint,"
                                       " revision bigint, part jsonb, PRIMARY KEY (room, user_name))")
        self._redis = redis.Redis.from_url(self.bus_url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)

    def write_soon(self, record: Accepted, done: Callable[[Any], None]) -> None:
        self._pending.append((record, done))
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                records = [record for record, _ in batch]
                latest = {(r.room, r.user): r for r in records}  # an upsert touches a row once per statement
                rows = [{"room": r.room, "user_name": r.user, "seq": r.seq, "revision": r.revision, "part": r.part} for r in latest.values()]
                await self._connection.execute(_UPSERT, orjson.dumps(rows).decode())
                publishing = self._redis.pipeline(transaction=False)
                for record in records:  # one message per update, as a node publishes each commit of a room
                    publishing.publish(record.room, orjson.dumps({"node": self.node, "records": [record[1:]]}))
                await publishing.execute()
                for record, done in batch:
                    done([record])
        finally:
            self._drain_task = None

    def listen(self, room: str, members: set[_Member]) -> None:
        """Read ``room``'s channel as a node does: what another node published goes to this node's members."""
        if room not in self._rooms:
            self._rooms[room] = members
            self._unsubscribed.append(room)
            if self._subscribe_task is None:
                self._subscribe_task = asyncio.get_running_loop().create_task(self._subscribe())

    async def _subscribe(self) -> None:
        """One SUBSCRIBE at a time on the one Pub/Sub connection, for the rooms joined meanwhile."""
        try:
            while self._unsubscribed:
                rooms, self._unsubscribed = self._unsubscribed, []
                await self._pubsub.subscribe(*rooms)
                if self._listen_task is None:  # redis-py reads a PubSub only once it has subscribed
                    self._listen_task = asyncio.get_running_loop().create_task(self._listen())
        finally:
            self._subscribe_task = None

    async def _listen(self) -> None:
        while True:
            message = await self._pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            published = orjson.loads(message["data"])
            if published["node"] == self.node:
                continue
            room = message["channel"].decode()
            for user, seq, revision, part in published["records"]:
                frame = text_frame(orjson.dumps({"type": "update", "user": user, "seq": seq, "revision": revision, "part": part}))
                for member in self._rooms.get(room, ()):
                    member.send(frame)

    async def close(self) -> None:
        for task in (self._drain_task, self._listen_task, self._subscribe_task):
            if task is not None:
                task.cancel()
        await self._pubsub.aclose()
        await self._redis.aclose()
        await self._connection.close()


async def _main(host: str, port: int, durable: str | None, bus: str | None) -> None:
    store: SqliteStore | ClusterFloorStore | None = None
    if durable and durable.startswith("postgresql://"):
        store = ClusterFloorStore(durable, bus or "redis://127.0.0.1:6379/0")
    elif durable:
        store = SqliteStore(durable)
    if store is not None:
        await store.open()
    relay = Relay(store)
    server = await asyncio.get_running_loop().create_server(lambda: _Member(relay), host, port, backlog=1024)
    real_port = server.sockets[0].getsockname()[1]
    tune_interpreter()  # the same collector and GIL settings as loopsync serve
    print(f"bare relay is serving at http://{host}:{real_port}/", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    if store is not None:
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--durable", metavar="DIR_OR_URL",
                        help="be the floor: commit every message to SQLite in DIR (or PostgreSQL at a postgresql:// URL), ack it, then pass it on")
    parser.add_argument("--bus", metavar="REDIS_URL", help="with a PostgreSQL --durable: publish each commit on Redis and read other nodes'")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # the same loop as loopsync serve
        runner.run(_main(args.host, args.port, args.durable, args.bus))
