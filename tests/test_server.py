"""The server over real sockets: a real server on 127.0.0.1, port 0, and raw JSON WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loopsync.connection import RATE_BURST, RATE_PER_SECOND
from loopsync import protocol
from loopsync.rooms import MAX_PARTS, MAX_USERS, Room
from loopsync.server import Server, running
from loopsync.store import MemoryStore, SqliteStore, StoreError

from conftest import TIME_UNIT, Connect, RawClient, ServeProcess

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}
HAT = {"sound": "hat", "steps": [0, 0, 1, 0] * 4}


def part(*hits: int, sound: str = "kick") -> dict[str, Any]:
    """A 16-step part with hits on the given steps."""
    return {"sound": sound, "steps": [1 if step in hits else 0 for step in range(16)]}


async def joined(connect: Connect, server: Any, user: str, room: str = "demo", **hello: Any) -> RawClient:
    """A client that has joined and read its snapshot and its first presence (the whole table)."""
    client = await connect(server.ws_url)
    await client.join(room, user, **hello)
    table = await client.next_any()
    assert table["type"] == "presence" and "users" in table, table
    return client


# -- joining -------------------------------------------------------------------------


async def test_snapshot_comes_first_then_the_presence_table(server: Server, connect: Connect) -> None:
    """hello is answered with the snapshot (naming the connection's presence id), then the whole presence table."""
    alice = await connect(server.ws_url)
    snapshot = await alice.join("demo", "alice", bpm=120)
    assert snapshot == {"type": "snapshot", "v": 1, "you": "alice", "id": snapshot["id"], "revision": 0, "seq": 0,
                        "doc": {"room": "demo", "steps": 16, "parts": {}}}
    assert isinstance(snapshot["id"], str) and snapshot["id"]
    table = await alice.next_any()
    assert table == {"type": "presence", "users": [{"id": snapshot["id"], "user": "alice", "playing": False, "bpm": 120.0}]}


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


async def test_replies_come_in_request_order(server: Server, connect: Connect) -> None:
    """Acks, errors and snapshots answer a connection's messages in the order it sent them, whatever waits for the disk."""
    alice = await joined(connect, server, "alice")
    burst = [
        {"type": "update", "seq": 1, "part": KICK},
        {"type": "update", "seq": 1, "part": HAT},  # stale: decided against seq 1 once that one is committed
        {"type": "fetch"},
        {"type": "dance"},
        {"type": "update", "seq": 2, "part": HAT},
        {"type": "update", "seq": 2, "user": "bob", "part": HAT},
        {"type": "fetch"},
    ]
    await asyncio.gather(*(alice.send(message) for message in burst))
    answers = [await alice.next() for _ in burst]
    assert [(m["type"], m.get("code")) for m in answers] == [
        ("ack", None), ("error", "stale_seq"), ("snapshot", None), ("error", "unknown_type"),
        ("ack", None), ("error", "forbidden"), ("snapshot", None)]
    assert [answers[index]["seq"] for index in (0, 1, 4, 5, 6)] == [1, 1, 2, 2, 2]
    assert answers[2]["seq"] >= 1  # a snapshot shows at least what was answered before it
    assert answers[6]["doc"]["parts"] == {"alice": HAT}


# -- presence ------------------------------------------------------------------------


async def test_presence_on_join_transport_and_leave(server: Server, connect: Connect) -> None:
    """Everyone's presence table follows joins, plays (with tempo), pauses and leaves, as changes after the first table."""
    alice = await joined(connect, server, "alice", bpm=120)
    bob = await joined(connect, server, "bob")
    both = [("alice", False, 120.0), ("bob", False, None)]
    await bob.wait_presence(both)
    await alice.wait_presence(both)
    await bob.send({"type": "transport", "playing": True, "bpm": 96})
    await alice.wait_presence([("alice", False, 120.0), ("bob", True, 96.0)])
    await bob.send({"type": "transport", "playing": False, "bpm": None})  # bpm null: unchanged
    await alice.wait_presence([("alice", False, 120.0), ("bob", False, 96.0)])
    await bob.close()
    await alice.wait_presence([("alice", False, 120.0)])
    assert all("changed" in m and "left" in m for m in alice.presence_messages[1:])


async def test_presence_is_coalesced_per_room(server: Server, connect: Connect) -> None:
    """A storm of transport changes reaches the room as a few presence messages with each member's latest state."""
    members = [await joined(connect, server, f"user{index}") for index in range(4)]
    watcher = await joined(connect, server, "watcher")
    await watcher.wait_presence([(f"user{index}", False, None) for index in range(4)] + [("watcher", False, None)])
    before = len(watcher.presence_messages)
    started = asyncio.get_running_loop().time()
    for round_number in range(10):  # 40 changes, each member at 20 a second at most
        await asyncio.gather(*(member.send({"type": "transport", "playing": round_number % 2 == 0, "bpm": 60 + round_number})
                               for member in members))
        await asyncio.sleep(0.05)
    final = [(f"user{index}", False, 69.0) for index in range(4)] + [("watcher", False, None)]
    await watcher.wait_presence(final)
    elapsed = asyncio.get_running_loop().time() - started
    messages = len(watcher.presence_messages) - before
    assert messages <= elapsed / 0.2 + 2, (messages, elapsed)  # at most one per 0.2 s (and the first at once)
    assert messages < 40


async def test_a_second_tab_is_a_second_presence_entry(server: Server, connect: Connect) -> None:
    """Two connections of one user are two entries with their own ids and transport states."""
    first = await connect(server.ws_url)
    first_id = (await first.join("demo", "alice"))["id"]
    second = await connect(server.ws_url)
    second_id = (await second.join("demo", "alice", playing=True))["id"]
    assert first_id != second_id
    await first.wait_presence([("alice", False, None), ("alice", True, None)])
    assert first.presence[second_id]["playing"] is True and first.presence[first_id]["playing"] is False


async def test_rooms_are_separate(server: Server, connect: Connect) -> None:
    """Updates and presence stay inside their room."""
    alice = await joined(connect, server, "alice", room="one")
    bob = await joined(connect, server, "bob", room="two")
    await alice.send({"type": "update", "seq": 1, "part": KICK})
    await alice.expect("ack")
    await bob.send({"type": "fetch"})
    snapshot = await bob.expect("snapshot")
    assert snapshot["doc"] == {"room": "two", "steps": 16, "parts": {}}
    assert all(m["type"] != "update" for m in bob.received)
    assert bob.presence_users() == [("bob", False, None)]


# -- bad input -----------------------------------------------------------------------

BAD_WHEN_JOINED = [
    # (frame sent by alice after hello, error code, seq in the error)
    ("{not json", "bad_json", None),
    ('"a string"', "bad_json", None),
    ("[1, 2]", "bad_json", None),
    ({"type": "dance"}, "unknown_type", None),
    ({"no": "type"}, "bad_message", None),
    ({"type": None}, "bad_message", None),
    ({"type": "update", "seq": "1", "part": KICK}, "bad_message", None),
    ({"type": "update", "seq": 0, "part": KICK}, "bad_message", None),
    ({"type": "update", "seq": 2**53, "part": KICK}, "bad_message", None),
    ({"type": "update", "seq": True, "part": KICK}, "bad_message", None),
    ('{"type": "update", "seq": 6.0, "part": {"sound": "kick", "steps": [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}', "bad_message", None),
    ('{"type": "update", "seq": 6e0, "part": {"sound": "kick", "steps": [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}', "bad_message", None),
    ({"type": "update", "seq": 6}, "bad_message", 6),
    ({"type": "update", "seq": 6, "user": 7, "part": KICK}, "bad_message", 6),
    ({"type": "transport", "playing": "yes"}, "bad_message", None),
    ({"type": "transport", "playing": None}, "bad_message", None),
    ({"type": "transport", "playing": True, "bpm": 1500}, "bad_message", None),
    ({"type": "transport", "playing": True, "bpm": "fast"}, "bad_message", None),
    ({"type": "update", "seq": 6, "part": "kick"}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": None}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": {"sound": "kick", "steps": [2] + [0] * 15}}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": {"sound": "kick", "steps": [-1] + [0] * 15}}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": {"sound": "kick", "steps": [0] * 15}}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": {"sound": "kick", "steps": [0] * 17}}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": {"sound": "kick", "steps": [0] * 16, "gain": 1}}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": {"sound": "cowbell", "steps": [0] * 16}}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": {"sound": "kick", "steps": [True] + [0] * 15}}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": {"sound": "kick", "steps": [1.0] + [0] * 15}}, "bad_part", 6),
    ({"type": "update", "seq": 6, "part": {"steps": [0] * 16}}, "bad_part", 6),
    ({"type": "update", "seq": 6, "user": "bob", "part": HAT}, "forbidden", 6),
    ({"type": "update", "seq": 3, "part": HAT}, "stale_seq", 3),  # below the accepted seq 5
    ({"type": "update", "seq": 5, "part": HAT}, "stale_seq", 5),  # a repeat
    ({"type": "update", "seq": 2**52 + 2**20 + 1, "part": HAT}, "bad_seq", 2**52 + 2**20 + 1),  # too far above 5
    ({"type": "hello", "v": 1, "room": "demo", "user": "alice"}, "already_joined", None),
    ({"type": "hello", "v": 1, "room": "other", "user": "carol"}, "already_joined", None),
    ({"type": "hello", "v": 2, "room": "demo", "user": "alice"}, "already_joined", None),
]


@pytest.mark.parametrize("frame, code, seq", BAD_WHEN_JOINED, ids=[f"{row[1]}-{i}" for i, row in enumerate(BAD_WHEN_JOINED)])
async def test_bad_input_is_refused_and_everything_keeps_working(server: Server, connect: Connect, frame: Any, code: str, seq: int | None) -> None:
    """Each bad message gets its documented error; nothing is applied; the connection, room and others go on."""
    alice = await joined(connect, server, "alice")
    bob = await joined(connect, server, "bob")
    await alice.send({"type": "update", "seq": 5, "part": KICK})
    await alice.wait_for("ack", seq=5)
    await bob.wait_for("update", seq=5)

    await alice.send(frame)
    error = await alice.expect("error")
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error.get("seq") == seq and ("seq" in error) == (seq is not None)

    await alice.send({"type": "fetch"})
    snapshot = await alice.expect("snapshot")
    assert snapshot["doc"]["parts"] == {"alice": KICK} and snapshot["revision"] == 1 and snapshot["seq"] == 5
    await alice.send({"type": "update", "seq": 6, "part": HAT})
    assert await alice.expect("ack") == {"type": "ack", "seq": 6, "revision": 2}
    assert (await bob.wait_for("update"))["part"] == HAT
    assert not [m for m in bob.received if m["type"] == "error"]


async def test_binary_frame_is_refused(server: Server, connect: Connect) -> None:
    """A binary frame gets bad_message and the connection stays."""
    alice = await joined(connect, server, "alice")
    await alice.ws.send_bytes(b'{"type": "fetch"}')
    assert (await alice.expect("error"))["code"] == "bad_message"
    await alice.send({"type": "fetch"})
    await alice.expect("snapshot")


async def test_anything_but_hello_before_hello_gets_not_joined(server: Server, connect: Connect) -> None:
    """Before hello every other message, JSON or not, gets not_joined (an update's seq with it), and hello still works."""
    client = await connect(server.ws_url)
    await client.send({"type": "update", "seq": 3, "part": KICK})
    assert await client.expect("error") == {"type": "error", "code": "not_joined", "message": "send hello first", "seq": 3}
    for frame in ({"type": "fetch"}, {"type": "transport", "playing": True}, "nope", "[1]", {"type": "dance"}, {"v": 1}):
        await client.send(frame)
        assert await client.expect("error") == {"type": "error", "code": "not_joined", "message": "send hello first"}
    await client.ws.send_bytes(b"{}")
    assert (await client.expect("error"))["code"] == "not_joined"
    assert (await client.join("demo", "alice"))["revision"] == 0


BAD_HELLOS = [
    ({"type": "hello", "v": 2, "room": "demo", "user": "alice"}, "bad_version"),
    ({"type": "hello", "v": 0, "room": "demo", "user": "alice"}, "bad_version"),
    ({"type": "hello", "v": "1", "room": "demo", "user": "alice"}, "bad_message"),
    ({"type": "hello", "v": 1.0, "room": "demo", "user": "alice"}, "bad_message"),
    ({"type": "hello", "room": "demo", "user": "alice"}, "bad_message"),
    ({"type": "hello", "v": None, "room": "demo", "user": "alice"}, "bad_message"),
    ({"type": "hello", "v": 1, "room": "a room", "user": "alice"}, "bad_name"),
    ({"type": "hello", "v": 1, "room": "demo", "user": ""}, "bad_name"),
    ({"type": "hello", "v": 1, "room": "demo", "user": "x" * 33}, "bad_name"),
    ({"type": "hello", "v": 1, "room": "demo", "user": "alïce"}, "bad_name"),
    ({"type": "hello", "v": 1, "room": "demo"}, "bad_message"),
    ({"type": "hello", "v": 1, "room": "demo", "user": None}, "bad_message"),
    ({"type": "hello", "v": 1, "room": 5, "user": "alice"}, "bad_message"),
    ({"type": "hello", "v": 1, "room": "demo", "user": "alice", "bpm": 0}, "bad_message"),
    ({"type": "hello", "v": 1, "room": "demo", "user": "alice", "playing": "no"}, "bad_message"),
]


@pytest.mark.parametrize("hello, code", BAD_HELLOS, ids=[f"{row[1]}-{i}" for i, row in enumerate(BAD_HELLOS)])
async def test_bad_hello_is_closed_with_1008(server: Server, connect: Connect, hello: dict[str, Any], code: str) -> None:
    """A hello with any bad field gets its error, then close 1008; the room is unaffected."""
    alice = await joined(connect, server, "alice")
    client = await connect(server.ws_url)
    await client.send(hello)
    assert (await client.expect("error"))["code"] == code
    assert await client.closed() == (1008, code)
    await alice.send({"type": "fetch"})
    assert (await alice.expect("snapshot"))["doc"]["parts"] == {}


async def test_null_optional_hello_fields_are_absent(server: Server, connect: Connect) -> None:
    """playing: null and bpm: null in hello mean "not said": paused, tempo unknown."""
    client = await connect(server.ws_url)
    await client.join("demo", "alice", playing=None, bpm=None)
    await client.wait_presence([("alice", False, None)])


async def test_presence_gives_bpm_as_the_client_wrote_it(server: Server, connect: Connect) -> None:
    """bpm in presence is the number as its client wrote it: 120 stays an integer, 96.5 a fraction."""
    alice = await connect(server.ws_url)
    await alice.join("demo", "alice", bpm=120)
    await alice.wait_presence([("alice", False, 120)])
    assert [type(entry["bpm"]) for entry in alice.presence.values()] == [int]
    await alice.send({"type": "transport", "playing": True, "bpm": 96.5})
    await alice.wait_presence([("alice", True, 96.5)])
    await alice.send({"type": "transport", "playing": True, "bpm": 90})
    await alice.wait_presence([("alice", True, 90)])
    assert [type(entry["bpm"]) for entry in alice.presence.values()] == [int]


async def test_room_holds_256_connected_users_and_a_second_tab_still_joins(server: Server, connect: Connect) -> None:
    """The 257th connected user gets room_full and 1008; a connected user's second tab still joins; one leaving makes room."""
    clients = [await joined(connect, server, f"user{index:03}") for index in range(MAX_USERS)]
    extra = await connect(server.ws_url)
    await extra.send({"type": "hello", "v": 1, "room": "demo", "user": "late"})
    assert (await extra.expect("error"))["code"] == "room_full"
    assert await extra.closed() == (1008, "room_full")
    second_tab = await joined(connect, server, f"user{MAX_USERS - 1:03}")
    await clients[0].send({"type": "update", "seq": 1, "part": KICK})
    await second_tab.wait_for("update", user="user000")
    await clients[1].close()
    late = await connect(server.ws_url)
    await late.join("demo", "late")


async def test_a_room_of_256_parts_lets_a_new_user_in_and_the_oldest_absent_part_gives_way(connect: Connect) -> None:
    """With 256 parts, a new user's first part removes the absent user's part written longest ago (part null, seq 0)."""
    async with running(room_grace=60) as server:
        for index in range(MAX_PARTS):
            writer = await connect(server.ws_url)
            await writer.join("full", f"user{index:03}")
            await writer.send({"type": "update", "seq": 1, "part": KICK})
            await writer.wait_for("ack")
            if index != 0:
                await writer.close()  # user000 stays: a connected user's part never gives way
        newcomer = await joined(connect, server, "newcomer", room="full")
        watcher = await joined(connect, server, "user000", room="full")
        await newcomer.send({"type": "update", "seq": 1, "part": HAT})
        assert await newcomer.wait_for("ack") == {"type": "ack", "seq": 1, "revision": MAX_PARTS + 2}
        removal = await watcher.wait_for("update", user="user001")
        assert removal == {"type": "update", "user": "user001", "seq": 0, "revision": MAX_PARTS + 1, "part": None}
        assert (await watcher.wait_for("update", user="newcomer"))["revision"] == MAX_PARTS + 2
        gone = await connect(server.ws_url)
        snapshot = await gone.join("full", "user001")
        assert snapshot["seq"] == 0 and "user001" not in snapshot["doc"]["parts"] and len(snapshot["doc"]["parts"]) == MAX_PARTS
        await gone.send({"type": "update", "seq": 1, "part": KICK})  # its seq starts again; it takes user002's place
        await gone.wait_for("ack", seq=1)
        assert (await watcher.wait_for("update", user="user002"))["part"] is None


async def test_a_flood_is_read_at_the_sustained_rate_and_nothing_is_refused(server: Server, connect: Connect) -> None:
    """A burst over the rate is read more slowly, never refused: every update is acked, in order, and another room is answered meanwhile."""
    alice = await joined(connect, server, "alice")
    bob = await joined(connect, server, "bob")
    quiet = await joined(connect, server, "carol", room="quiet")
    count = RATE_BURST + 20  # hello took one token: 21 updates wait for tokens at 20 a second
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(alice.send({"type": "update", "seq": seq, "part": part(seq % 16)}) for seq in range(1, count + 1)))

    async def acks() -> tuple[list[int], float]:
        seqs = [(await alice.wait_for("ack", timeout=5 * TIME_UNIT))["seq"] for _ in range(count)]
        return seqs, loop.time()

    async def quiet_room() -> float:
        for _ in range(3):
            await quiet.send({"type": "fetch"})
            await quiet.expect("snapshot")
        return loop.time()

    (acked, last_ack_at), quiet_done_at = await asyncio.gather(acks(), quiet_room())
    assert acked == list(range(1, count + 1))
    assert not [m for m in alice.received if m["type"] == "error"]
    assert last_ack_at - started >= (count + 1 - RATE_BURST) / RATE_PER_SECOND * 0.9
    assert quiet_done_at < last_ack_at  # the other room did not wait for the flood
    heard = [(await bob.wait_for("update"))["seq"] for _ in acked]
    assert heard == acked


async def test_message_over_64_kib_is_closed_with_1009(server: Server, connect: Connect) -> None:
    """A message of 64 KiB passes; one byte more closes the connection with 1009, and the room goes on."""
    alice = await joined(connect, server, "alice")
    bob = await joined(connect, server, "bob")
    head = '{"type":"fetch","pad":"'
    exact = head + "x" * (64 * 1024 - len(head) - 2) + '"}'
    assert len(exact) == 64 * 1024
    await alice.send(exact)
    await alice.wait_for("snapshot")
    await alice.send(exact[:-2] + 'x"}')
    code, _ = await alice.closed()
    assert code == 1009
    await bob.wait_presence([("bob", False, None)])
    await bob.send({"type": "update", "seq": 1, "part": HAT})
    await bob.wait_for("ack")


async def test_no_hello_in_time_is_closed_with_1008(connect: Connect) -> None:
    """A connection that never says hello is closed with 1008 "no hello" once the hello timeout passes."""
    async with running(hello_timeout=0.2 * TIME_UNIT) as server:
        client = await connect(server.ws_url)
        await client.send({"type": "fetch"})
        assert (await client.expect("error"))["code"] == "not_joined"
        assert await client.closed(timeout=5 * TIME_UNIT) == (1008, "no hello")
        joiner = await joined(connect, server, "alice")  # a joined connection is not closed by the timer
        late = await connect(server.ws_url)
        assert await late.closed(timeout=5 * TIME_UNIT) == (1008, "no hello")
        await joiner.send({"type": "fetch"})
        await joiner.expect("snapshot")


async def test_shutdown_closes_clients_with_1001(connect: Connect) -> None:
    """Stopping the server closes every connection with 1001 after what was queued."""
    async with running() as server:
        alice = await joined(connect, server, "alice")
        waiting = await connect(server.ws_url)
        stopping = asyncio.ensure_future(server.stop())
        assert (await alice.closed())[0] == 1001
        assert (await waiting.closed())[0] == 1001
        await stopping


# -- durability ----------------------------------------------------------------------


async def test_snapshot_has_only_committed_data_and_ack_follows_commit(tmp_path: Path, connect: Connect) -> None:
    """While a commit waits, a joiner's snapshot leaves the update out; the ack and the update come after the commit."""
    store = SqliteStore(tmp_path, busy_timeout=20 * TIME_UNIT)
    async with running(store=store) as server:
        blocker = _hold_write_lock(store.path)
        try:
            alice = await joined(connect, server, "alice")
            alice_tab = await joined(connect, server, "alice")
            await alice.send({"type": "update", "seq": 1, "part": KICK})
            await alice_tab.send({"type": "update", "seq": 1, "part": KICK})  # decided after seq 1 is committed: stale
            bob = await connect(server.ws_url)
            snapshot = await bob.join("demo", "bob")
            assert snapshot["revision"] == 0 and snapshot["doc"]["parts"] == {}
            assert not [m for m in alice.received if m["type"] == "ack"]
        finally:
            blocker.rollback()
            blocker.close()
        assert await alice.wait_for("ack") == {"type": "ack", "seq": 1, "revision": 1}
        assert (await alice_tab.wait_for("error"))["code"] == "stale_seq"
        assert (await bob.wait_for("update"))["revision"] == 1
        assert _stored(store.path) == [("demo", "alice", 1, 1)]


async def test_failed_commit_is_unavailable_and_nothing_is_applied(tmp_path: Path, connect: Connect) -> None:
    """A commit that fails answers unavailable (with the seq) and applies nothing; the connection and the room go on."""
    store = SqliteStore(tmp_path, busy_timeout=0.05)
    async with running(store=store) as server:
        alice = await joined(connect, server, "alice")
        await alice.send({"type": "update", "seq": 1, "part": HAT})
        await alice.expect("ack")
        bob = await joined(connect, server, "bob")
        blocker = _hold_write_lock(store.path)
        try:
            await alice.send({"type": "update", "seq": 2, "part": KICK})
            error = await alice.wait_for("error")
            assert error["code"] == "unavailable" and error["seq"] == 2
            await alice.send({"type": "fetch"})
            snapshot = await alice.wait_for("snapshot")
            assert snapshot["doc"]["parts"] == {"alice": HAT} and snapshot["seq"] == 1 and snapshot["revision"] == 1
        finally:
            blocker.rollback()
            blocker.close()
        await alice.send({"type": "update", "seq": 2, "part": KICK})
        assert await alice.wait_for("ack") == {"type": "ack", "seq": 2, "revision": 2}
        assert (await bob.wait_for("update"))["revision"] == 2
        assert not [m for m in bob.received if m["type"] == "update" and m["revision"] != 2]


def _hold_write_lock(path: Path) -> Any:
    """Another SQLite connection holding the write lock: the server's next commit has to wait for it."""
    import sqlite3

    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    return connection


def _stored(path: Path) -> list[tuple[str, str, int, int]]:
    import sqlite3

    with sqlite3.connect(path) as connection:
        return list(connection.execute("SELECT room, user, seq, revision FROM parts ORDER BY revision"))


class _GatedStore(MemoryStore):
    """A memory store whose commits wait until :attr:`gate` is set (so that an update is still unanswered)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    def commit_soon(self, proposal: Any, done: Any) -> None:
        async def later() -> None:
            await self.gate.wait()
            MemoryStore.commit_soon(self, proposal, done)

        asyncio.ensure_future(later())


async def test_a_bug_on_a_message_answers_internal_after_earlier_replies_and_closes_only_that_connection(
        connect: Connect, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug handling an update: the replies before it, then internal with its seq, then 1011; the user's other tab and the room go on."""
    store = _GatedStore()
    check = Room.check

    def buggy_check(room: Room, user: str, update: Any) -> Any:
        if update.seq in (13, 14):
            store.gate.set()  # the first update's commit is answered only now, after the bug
            raise RuntimeError("a bug")
        return check(room, user, update)

    monkeypatch.setattr(Room, "check", buggy_check)
    async with running(store=store) as server:
        alice = await joined(connect, server, "alice")
        tab = await joined(connect, server, "alice")
        bob = await joined(connect, server, "bob")
        await alice.send({"type": "update", "seq": 1, "part": KICK})
        await alice.send({"type": "update", "seq": 13, "part": HAT})
        await alice.send({"type": "fetch"})  # never answered: nothing after the bug is read
        assert await alice.expect("ack") == {"type": "ack", "seq": 1, "revision": 1}
        assert await alice.expect("error") == {"type": "error", "code": "internal", "message": "internal server error", "seq": 13}
        assert await alice.closed() == (1011, "internal error")
        assert not [m for m in alice.received if m["type"] == "snapshot" and m is not alice.received[0]]
        await _gone(server, 1)  # its reading was held for the error: the close is read all the same
        await tab.send({"type": "update", "seq": 14, "part": HAT})  # nothing pending: the error and the close at once
        assert (await tab.wait_for("update", user="alice"))["seq"] == 1
        assert await tab.expect("error") == {"type": "error", "code": "internal", "message": "internal server error", "seq": 14}
        assert await tab.closed() == (1011, "internal error")
        assert (await bob.wait_for("update", user="alice"))["seq"] == 1
        await bob.send({"type": "update", "seq": 1, "part": HAT})
        assert await bob.expect("ack") == {"type": "ack", "seq": 1, "revision": 2}
        await bob.close()


async def test_a_bug_passing_on_a_rooms_updates_closes_that_rooms_connections_with_1011(
        connect: Connect, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while delivering a room's commits closes its members with 1011 (their answers are lost); the commit holds; other rooms go on."""
    update_message = protocol.update_message

    def buggy_update_message(*, user: str, **fields: Any) -> bytes:
        if user == "boom":
            raise RuntimeError("a bug")
        return update_message(user=user, **fields)

    monkeypatch.setattr(protocol, "update_message", buggy_update_message)
    async with running() as server:
        boom = await joined(connect, server, "boom")
        bob = await joined(connect, server, "bob")
        carol = await joined(connect, server, "carol", room="other")
        await boom.send({"type": "update", "seq": 1, "part": KICK})
        assert (await boom.closed())[0] == 1011
        assert (await bob.closed())[0] == 1011
        assert not [m for m in boom.received if m["type"] == "ack"]
        again = await connect(server.ws_url)
        snapshot = await again.join("demo", "boom")
        assert snapshot["seq"] == 1 and snapshot["doc"]["parts"] == {"boom": KICK}  # the reconnect settles the lost ack
        await carol.send({"type": "update", "seq": 1, "part": HAT})
        assert await carol.expect("ack") == {"type": "ack", "seq": 1, "revision": 1}
        await asyncio.gather(carol.close(), again.close())


async def _gone(server: Server, connection_id: int) -> None:
    """Wait (at most one time unit, under the server's 5 s close timeout) until the server has let go of a connection."""
    deadline = asyncio.get_running_loop().time() + TIME_UNIT
    while connection_id in server.connections:
        assert asyncio.get_running_loop().time() < deadline, "the server still holds the connection"
        await asyncio.sleep(0.01)


class _UnreadableStore(MemoryStore):
    """A memory store that cannot load a room until :attr:`broken` is False."""

    broken = True

    async def load_room(self, room: str) -> Any:
        if self.broken:
            raise StoreError("the database is down")
        return await super().load_room(room)


async def test_a_room_that_cannot_be_loaded_answers_unavailable_and_1013(connect: Connect) -> None:
    """A hello whose room the store cannot load gets unavailable and close 1013 (try again later); once the store is back, it joins."""
    store = _UnreadableStore()
    async with running(store=store) as server:
        client = await connect(server.ws_url)
        await client.send({"type": "hello", "v": 1, "room": "demo", "user": "alice"})
        assert (await client.expect("error"))["code"] == "unavailable"
        assert await client.closed() == (1013, "try again later")
        await _gone(server, 1)  # the server read the client's close: no 5 s wait for it
        store.broken = False
        alice = await joined(connect, server, "alice")
        assert alice.received[0]["type"] == "snapshot"
        await alice.close()


async def test_a_connection_with_32_updates_awaiting_their_commit_is_read_later(connect: Connect, monkeypatch: pytest.MonkeyPatch) -> None:
    """While 32 updates of a connection wait for the store, its next frame is not read; once they commit, everything is acked in order."""
    store = _GatedStore()
    checked: list[int] = []
    check = Room.check

    def counting_check(room: Room, user: str, update: Any) -> Any:
        checked.append(update.seq)
        return check(room, user, update)

    monkeypatch.setattr(Room, "check", counting_check)
    async with running(store=store) as server:
        alice = await joined(connect, server, "alice")
        for seq in range(1, 34):
            await alice.send({"type": "update", "seq": seq, "part": part(seq % 16)})
        deadline = asyncio.get_running_loop().time() + TIME_UNIT
        while len(checked) < 32:
            assert asyncio.get_running_loop().time() < deadline, checked
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1 * TIME_UNIT)  # time for the 33rd to be read, if it were
        assert checked == list(range(1, 33))
        store.gate.set()
        assert [(await alice.expect("ack"))["seq"] for _ in range(33)] == list(range(1, 34))
        await alice.close()


async def test_memory_store_survives_in_process_restart(connect: Connect) -> None:
    """A server restarted on the same MemoryStore starts from what the first one committed."""
    store = MemoryStore()
    async with running(store=store) as server:
        alice = await joined(connect, server, "alice")
        await alice.send({"type": "update", "seq": 9, "part": KICK})
        await alice.expect("ack")
    async with running(store=store) as server:
        alice = await connect(server.ws_url)
        snapshot = await alice.join("demo", "alice")
        assert snapshot["seq"] == 9 and snapshot["doc"]["parts"] == {"alice": KICK} and snapshot["revision"] == 1


async def test_subprocess_restart_keeps_every_acknowledged_update(serve_process: Any, connect: Connect) -> None:
    """Every update acknowledged before a SIGTERM, and before a SIGKILL, is there after a restart on the same directory."""
    process: ServeProcess = serve_process()
    users = ["alice", "bob", "carol"]
    clients = [await joined(connect, process, user) for user in users]
    for seq in range(1, 6):
        for client in clients:
            await client.send({"type": "update", "seq": seq, "part": part(seq)})
    for client in clients:
        await client.wait_for("ack", seq=5)
    # Stop from a thread while every client reads: each must answer the
    # server's closing handshake for the close to be clean.
    stopping = asyncio.ensure_future(asyncio.to_thread(process.stop))
    closes = await asyncio.gather(*(client.closed(timeout=10 * TIME_UNIT) for client in clients))
    assert await stopping == 0
    assert [code for code, _ in closes] == [1001] * len(clients)

    process.start()
    alice = await connect(process.ws_url)
    snapshot = await alice.join("demo", "alice")
    assert snapshot["revision"] == 15 and snapshot["seq"] == 5
    assert snapshot["doc"]["parts"] == {user: part(5) for user in users}
    await alice.send({"type": "update", "seq": 6, "part": KICK})
    assert await alice.wait_for("ack") == {"type": "ack", "seq": 6, "revision": 16}
    process.kill()

    process.start()
    bob = await connect(process.ws_url)
    snapshot = await bob.join("demo", "bob")
    assert snapshot["revision"] == 16 and snapshot["doc"]["parts"]["alice"] == KICK
    process.stop()


def test_second_server_on_same_directory_exits_1(serve_process: Any) -> None:
    """A second server on a data directory in use exits 1 with one clear sentence; the first keeps serving."""
    first: ServeProcess = serve_process()
    second = subprocess.run(ServeProcess(first.data_dir).command(), capture_output=True, text=True, timeout=10 * TIME_UNIT)
    assert second.returncode == 1
    assert second.stdout == ""
    assert second.stderr == (f"loopsync cannot start: another loopsync server is already using the data directory "
                             f"{str(first.data_dir)!r}.\n")
    assert first.process is not None and first.process.poll() is None
    assert first.stop() == 0


def test_port_0_prints_the_real_url(serve_process: Any) -> None:
    """``serve --port 0`` prints one line with the port it really listens on, and that port answers."""
    process: ServeProcess = serve_process()
    assert re.fullmatch(r"loopsync is serving at http://127\.0\.0\.1:\d+/ \(store: sqlite, .+\)", process.banner)
    assert process.port > 0
    with socket.create_connection(("127.0.0.1", process.port), timeout=TIME_UNIT):
        pass
    assert process.stop() == 0


# -- web client files ------------------------------------------------------------------


async def test_static_files_are_served_with_no_cache_and_js_type(tmp_path: Path) -> None:
    """/ serves index.html, .js is text/javascript, every file has Cache-Control: no-cache, nothing outside the directory."""
    (tmp_path / "index.html").write_text("<!doctype html><title>loopsync</title>")
    (tmp_path / "app.js").write_text("export const answer = 42;\n")
    (tmp_path.parent / "secret.txt").write_text("no")
    async with running(web_dir=tmp_path) as server, aiohttp.ClientSession() as session:
        async with session.get(server.http_url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            assert response.headers["Cache-Control"] == "no-cache"
            assert "loopsync" in await response.text()
        async with session.get(server.http_url + "app.js") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].split(";")[0] == "text/javascript"
            assert response.headers["Cache-Control"] == "no-cache"
        for path in ("missing.js", "../secret.txt", "%2e%2e/secret.txt"):
            async with session.get(server.http_url + path) as response:
                assert response.status == 404, path


# -- a client that stops reading -------------------------------------------------------


class NonReadingClient:
    """A WebSocket client on a raw socket with a small receive buffer that does not read until told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, port: int) -> NonReadingClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await loop.sock_sendall(sock, request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), TIME_UNIT)  # byte by byte: read no frame
            assert chunk, "server closed during the handshake"
            response += chunk
        assert response.startswith(b"HTTP/1.1 101"), response
        return cls(sock)

    async def send(self, message: dict[str, Any]) -> None:
        """One masked text frame (the mask is zero: masking is required, its value is not)."""
        payload = json.dumps(message).encode()
        assert len(payload) < 126
        await asyncio.get_running_loop().sock_sendall(self.sock, bytes([0x81, 0x80 | len(payload), 0, 0, 0, 0]) + payload)

    async def read_until_close(self) -> list[tuple[int, bytes]]:
        """Read every frame up to and including the server's close frame, as (opcode, payload)."""
        loop = asyncio.get_running_loop()
        data = b""
        frames: list[tuple[int, bytes]] = []
        offset = 0
        while not frames or frames[-1][0] != 0x8:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 5 * TIME_UNIT)
            assert chunk, "the server closed the socket without a close frame"
            data += chunk
            while offset + 2 <= len(data):
                opcode, length, start = data[offset] & 0x0F, data[offset + 1] & 0x7F, offset + 2
                if length == 126:
                    length, start = int.from_bytes(data[start:start + 2], "big"), start + 2
                elif length == 127:
                    length, start = int.from_bytes(data[start:start + 8], "big"), start + 8
                if start + length > len(data):
                    break
                frames.append((opcode, data[start:start + length]))
                offset = start + length
        return frames


async def test_client_that_stops_reading_is_closed_and_never_blocks_the_room(connect: Connect) -> None:
    """A client that stops reading is closed with 1008 "too slow" once its outbox limit waits for it; everyone else gets every update."""
    async with running(outbox_bytes=16 * 1024) as server:  # 128 KiB in production: the same rule with fewer messages
        await _too_slow(server, connect)


async def _too_slow(server: Server, connect: Connect) -> None:
    async def write_part(user: str) -> None:
        writer = await joined(connect, server, user)
        await writer.send({"type": "update", "seq": 1, "part": KICK})
        await writer.wait_for("ack")
        await writer.close()

    await asyncio.gather(*(write_part(f"old{index:03}") for index in range(100)))  # snapshots of ~7 KB
    slow = await NonReadingClient.connect(server.port)
    await slow.send({"type": "hello", "v": 1, "room": "demo", "user": "slow"})
    for _ in range(8):  # a fetch takes 10 tokens: 4 at once, then 2 a second
        await slow.send({"type": "fetch"})
    senders = [await joined(connect, server, f"user{index:02}") for index in range(5)]
    seqs = list(range(1, RATE_BURST))  # hello took one token of each sender's burst

    async def send_and_hear_everything(index: int, client: RawClient) -> None:
        await asyncio.gather(*(client.send({"type": "update", "seq": seq, "part": part(seq % 16)}) for seq in seqs))
        wanted = len(seqs) * len(senders)  # its own acks and every other sender's updates
        while sum(1 for m in client.received if m["type"] in ("ack", "update")) < wanted:
            await client.next(timeout=5 * TIME_UNIT)
        heard: dict[str, list[int]] = {}
        for message in client.received:
            if message["type"] == "update":
                heard.setdefault(message["user"], []).append(message["seq"])
        assert heard == {f"user{other:02}": seqs for other in range(len(senders)) if other != index}
        assert [m["seq"] for m in client.received if m["type"] == "ack"] == seqs

    # Every sender hears every other sender's every update, in order, and gets all its acks.
    await asyncio.gather(*(send_and_hear_everything(index, client) for index, client in enumerate(senders)))
    # The slow client is dropped from the room...
    await senders[0].wait_presence([(f"user{index:02}", False, None) for index in range(len(senders))], timeout=5 * TIME_UNIT)
    # ...and when it reads at last, it finds its close frame: 1008 "too slow".
    frames = await slow.read_until_close()
    slow.sock.close()
    assert frames[-1] == (0x8, (1008).to_bytes(2, "big") + b"too slow")
    texts = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
    assert texts[0]["type"] == "snapshot"
    assert sum(1 for text in texts if text["type"] == "snapshot") < 9


async def test_sigint_stops_the_server_cleanly(serve_process: Any, connect: Connect) -> None:
    """SIGINT, like SIGTERM, closes every connection with 1001 and exits 0."""
    process: ServeProcess = serve_process()
    alice = await joined(connect, process, "alice")
    assert process.process is not None
    process.process.send_signal(signal.SIGINT)
    assert (await alice.closed())[0] == 1001
    assert process.process.wait(timeout=10 * TIME_UNIT) == 0
    assert "Traceback" not in process.log()


def test_port_in_use_exits_1(serve_process: Any, tmp_path: Path) -> None:
    """A port that is taken makes `serve` exit 1 with one sentence, not a traceback."""
    first: ServeProcess = serve_process()
    second = subprocess.run([sys.executable, "-m", "loopsync", "serve", "--port", str(first.port), "--store", "memory"],
                            capture_output=True, text=True, timeout=10 * TIME_UNIT)
    assert second.returncode == 1
    assert second.stderr.startswith(f"loopsync cannot listen on 127.0.0.1:{first.port}: ") and second.stderr.endswith(".\n")
    assert "Traceback" not in second.stderr
    first.stop()
