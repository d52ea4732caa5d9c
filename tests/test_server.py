"""The server over real sockets: a real server on 127.0.0.1, port 0, and raw JSON WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loopsync.rooms import MAX_MEMBERS
from loopsync.server import OUTBOX_LIMIT, RATE_BURST, Server, running
from loopsync.store import MemoryStore, SqliteStore

from conftest import TIME_UNIT, Connect, RawClient, ServeProcess

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}
HAT = {"sound": "hat", "steps": [0, 0, 1, 0] * 4}


def part(*hits: int, sound: str = "kick") -> dict[str, Any]:
    """A 16-step part with hits on the given steps."""
    return {"sound": sound, "steps": [1 if step in hits else 0 for step in range(16)]}


async def joined(connect: Connect, server: Any, user: str, room: str = "demo", **hello: Any) -> RawClient:
    """A client that has joined and read its snapshot and first presence."""
    client = await connect(server.ws_url)
    await client.join(room, user, **hello)
    await client.wait_for("presence")
    return client


# -- joining -------------------------------------------------------------------------


async def test_snapshot_comes_first_then_presence(server: Server, connect: Connect) -> None:
    """hello is answered with the snapshot first, then presence that includes the joiner."""
    alice = await connect(server.ws_url)
    snapshot = await alice.join("demo", "alice", bpm=120)
    assert snapshot == {"type": "snapshot", "v": 1, "you": "alice", "revision": 0, "seq": 0,
                        "doc": {"room": "demo", "steps": 16, "parts": {}}}
    presence = await alice.expect("presence")
    assert presence["users"] == [{"user": "alice", "playing": False, "bpm": 120.0}]


async def test_update_acks_sender_and_reaches_every_other_client(server: Server, connect: Connect) -> None:
    """An update is acked to its sender and sent to every other connection, its own user's other tabs included."""
    alice = await joined(connect, server, "alice")
    alice_tab = await joined(connect, server, "alice")
    bob = await joined(connect, server, "bob")
    await alice.send({"type": "update", "seq": 1, "part": KICK})
    assert await alice.wait_for("ack") == {"type": "ack", "seq": 1, "revision": 1}
    expected = {"type": "update", "user": "alice", "seq": 1, "revision": 1, "part": KICK}
    assert await bob.wait_for("update") == expected
    assert await alice_tab.wait_for("update") == expected
    assert not [m for m in alice.received if m["type"] == "update"]


async def test_reconnect_gets_snapshot_with_committed_parts_and_own_seq(server: Server, connect: Connect) -> None:
    """A reconnecting client's snapshot holds every accepted part and the last seq accepted from it."""
    alice = await joined(connect, server, "alice")
    await alice.send({"type": "update", "seq": 4, "part": KICK})
    await alice.wait_for("ack", seq=4)
    await alice.close()
    again = await connect(server.ws_url)
    snapshot = await again.join("demo", "alice")
    assert snapshot["seq"] == 4 and snapshot["revision"] == 1
    assert snapshot["doc"]["parts"] == {"alice": KICK}


async def test_fetch_answers_snapshot(server: Server, connect: Connect) -> None:
    """fetch is answered with the current snapshot."""
    alice = await joined(connect, server, "alice")
    bob = await joined(connect, server, "bob")
    await bob.send({"type": "update", "seq": 1, "part": HAT})
    await alice.wait_for("update")
    await alice.send({"type": "fetch"})
    snapshot = await alice.wait_for("snapshot")
    assert snapshot["doc"]["parts"] == {"bob": HAT} and snapshot["revision"] == 1 and snapshot["seq"] == 0
