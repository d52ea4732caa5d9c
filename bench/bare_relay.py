"""The baselines of the fan-out benchmark: a bare WebSocket relay on loopsync's stack, and the floor.

loopsync's own connection layer, event loop and interpreter settings with no
rules: ``hello`` puts a connection in a room, every later message goes as is
to the room's others. ``--durable DIR`` makes it the floor: each message
parsed for its ``seq``, committed with loopsync's ``SqliteStore``
(``write_soon``), acknowledged, then passed on; no validation, ownership,
presence or snapshot. Between the relay and the floor is what the durable
work costs; between the floor and loopsync, loopsync's own code.

Run: ``python bench/bare_relay.py --port 0 [--durable DIR]`` (prints its URL like the server).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

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

    def __init__(self, store: SqliteStore | None) -> None:
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


async def _main(host: str, port: int, data_dir: str | None) -> None:
    store = SqliteStore(data_dir) if data_dir else None
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
    parser.add_argument("--durable", metavar="DIR", help="be the floor: commit every message to SQLite in DIR, ack it, then pass it on")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # the same loop as loopsync serve
        runner.run(_main(args.host, args.port, args.durable))
