"""The baselines of the fan-out benchmark: a bare WebSocket relay on loopsync's stack, and the floor.

aiohttp on the same event loop (uvloop where installed), garbage
collector and GIL settings, with the same WebSocket settings as ``loopsync serve``
(no compression, 64 KiB frames, the 20 s heartbeat) and loopsync's own
per-connection :class:`~loopsync.outbox.Outbox`, and no rules at all: no
validation, no store, no acks. ``hello`` puts a connection in a room and every later frame goes as
is to the room's other connections. What loopsync costs on top of this is
what the benchmark measures.

``--durable DIR`` makes it the floor: the least a server that keeps rules 2
and 3 of DESIGN.md can do on this stack. Each frame is parsed for its
``seq`` (the ack must name it), committed with loopsync's own
:class:`~loopsync.store.SqliteStore` (the same group commit and fsync), and
only then acknowledged to its sender and passed on as is. No validation, no
ownership, no rate limit, no presence, no snapshot. Between the relay and the
floor is what the rules of DESIGN.md cost; between the floor and loopsync,
what loopsync's own code costs.

Run: ``python bench/bare_relay.py --port 0 [--durable DIR]`` (prints its URL like the server).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal

import orjson
from aiohttp import WSMsgType, web

from loopsync import protocol
from loopsync.outbox import CLOSE_TIMEOUT_SECONDS, SEND_BUFFER_BYTES, Outbox
from loopsync.rooms import Accepted
from loopsync.server import HEARTBEAT_SECONDS, event_loop_factory, tune_interpreter
from loopsync.store import SqliteStore, StoreError


def _committed(sender: Outbox, members: set[Outbox], frame: bytes, ack: bytes, problem: StoreError | None) -> None:
    """The floor's answers, once the store has committed the frame: the ack, then the frame to the others."""
    if problem is not None:
        raise problem
    sender.push(ack)
    for other in members:
        if other is not sender:
            other.push(frame)


async def _relay(request: web.Request) -> web.WebSocketResponse:
    rooms: dict[str, set[Outbox]] = request.app["rooms"]
    store: SqliteStore | None = request.app["store"]
    revisions: dict[str, int] = request.app["revisions"]
    ws = web.WebSocketResponse(compress=False, heartbeat=HEARTBEAT_SECONDS, max_msg_size=protocol.MAX_FRAME_BYTES + 1,
                               timeout=CLOSE_TIMEOUT_SECONDS, writer_limit=SEND_BUFFER_BYTES)
    await ws.prepare(request)
    outbox = Outbox(ws, request.transport)
    outbox.start()
    members: set[Outbox] | None = None
    try:
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            if members is None:
                hello = orjson.loads(message.data)
                room, user = hello["room"], hello["user"]
                members = rooms.setdefault(room, set())
                members.add(outbox)
                continue
            if store is not None:
                update = orjson.loads(message.data)  # the ack must name the seq (the same parser as loopsync)
                revisions[room] = revision = revisions.get(room, 0) + 1
                accepted = Accepted(room, user, update["seq"], revision, update["part"])
                store.save_soon(accepted, functools.partial(_committed, outbox, members, message.data.encode(),
                                                            protocol.ack_frame(seq=accepted.seq, revision=revision)))
                continue
            frame = message.data.encode()  # aiohttp hands over text as str; encoded once for every peer
            for other in members:
                if other is not outbox:
                    other.push(frame)  # a full outbox drops the frame: no rules here
    finally:
        if members is not None:
            members.discard(outbox)
        await outbox.finish()
    return ws


async def _main(host: str, port: int, data_dir: str | None) -> None:
    app = web.Application()
    app["rooms"] = {}
    app["revisions"] = {}
    app["store"] = store = SqliteStore(data_dir) if data_dir else None
    if store is not None:
        store.open()
    app.router.add_get("/ws", _relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    real_port = runner.addresses[0][1]
    tune_interpreter()  # the same collector and GIL settings as loopsync serve
    print(f"bare relay is serving at http://{host}:{real_port}/", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    if store is not None:
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--durable", metavar="DIR", help="be the floor: commit every frame to SQLite in DIR, ack it, then pass it on")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # the same loop as loopsync serve
        runner.run(_main(args.host, args.port, args.durable))
