"""The baseline of the fan-out benchmark: a bare WebSocket relay on loopsync's stack.

aiohttp on the same event loop (uvloop where installed), with the same
WebSocket settings as ``loopsync serve`` (no compression, 64 KiB frames, the
20 s heartbeat) and loopsync's own per-connection
:class:`~loopsync.outbox.Outbox`, and no rules at all: no validation, no
store, no acks. ``hello`` puts a connection in a room and every later frame goes as
is to the room's other connections. What loopsync costs on top of this is
what the benchmark measures.

Run: ``python bench/bare_relay.py --port 0`` (prints its URL like the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import WSMsgType, web

from loopsync import protocol
from loopsync.outbox import CLOSE_TIMEOUT_SECONDS, SEND_BUFFER_BYTES, Outbox
from loopsync.server import HEARTBEAT_SECONDS, event_loop_factory


async def _relay(request: web.Request) -> web.WebSocketResponse:
    rooms: dict[str, set[Outbox]] = request.app["rooms"]
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
                members = rooms.setdefault(json.loads(message.data)["room"], set())
                members.add(outbox)
                continue
            for other in members:
                if other is not outbox:
                    other.push(message.data)  # a full outbox drops the frame: no rules here
    finally:
        if members is not None:
            members.discard(outbox)
        await outbox.finish()
    return ws


async def _main(host: str, port: int) -> None:
    app = web.Application()
    app["rooms"] = {}
    app.router.add_get("/ws", _relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    real_port = runner.addresses[0][1]
    print(f"bare relay is serving at http://{host}:{real_port}/", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # the same loop as loopsync serve
        runner.run(_main(args.host, args.port))
