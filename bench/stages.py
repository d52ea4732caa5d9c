"""Where an update's CPU goes in loopsync's own code, stage by stage, against the floor's: in one process, no sockets, no disk.

The fan-out benchmark measures whole servers; this times the Python an
update runs between the frame reader and the socket writes, which is what
loopsync adds to the floor (``bench/bare_relay.py --durable``): both run
here on a store that decides at once (the SQLite store's thread and its
commit are the same code in both) and write to a transport that drops the
bytes (every server pays the same system calls). Each figure is the best of
several repeats, in microseconds per update (one update is one ack and
three deliveries in rooms of 4).

Run: ``python bench/stages.py [--smoke]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import timeit
from typing import Any, Callable

import orjson

import bare_relay
from loopsync import protocol
from loopsync.connection import OPEN
from loopsync.rooms import Accepted, Proposal, Room, sequence
from loopsync.server import Server, _Peer, _RoomState
from loopsync.websocket import text_frame

ROOMS, PER_ROOM = 150, 4
PART = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}


class _DropTransport:
    """A transport that counts its writes and keeps nothing."""

    writes = 0

    def write(self, data: bytes) -> None:
        _DropTransport.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0


class _AtOnceStore:
    """Decides a batch the way the SQLite store does (:func:`sequence`, then the callbacks in order), with no commit."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Callable[[Any], None]]] = []

    def commit_soon(self, proposal: Proposal, done: Callable[[Any], None]) -> None:
        self.pending.append((proposal, done))

    def write_soon(self, record: Accepted, done: Callable[[Any], None]) -> None:
        self.pending.append((record, done))

    def decide(self) -> None:
        batch, self.pending = self.pending, []
        decided = iter(sequence([entry for entry, _ in batch if type(entry) is Proposal]))
        for entry, done in batch:
            done(next(decided) if type(entry) is Proposal else [entry])


def _open(connection: Any) -> Any:
    connection.transport, connection.state = _DropTransport(), OPEN
    return connection


def _loopsync_rooms(store: _AtOnceStore) -> tuple[Server, list[list[_Peer]]]:
    server = Server(store)  # type: ignore[arg-type]
    rooms = []
    for number in range(ROOMS):
        state = server.rooms[f"room-{number}"] = _RoomState(Room(f"room-{number}"))
        peers = []
        for index in range(PER_ROOM):
            peer = _open(_Peer(server, number * PER_ROOM + index))
            peer.user, peer.room = f"user-{index}", state
            state.peers[peer.id] = peer
            state.room.join(peer.presence_id, peer.user, True, 120.0)
            peers.append(peer)
        state.room.take_presence_changes(1_000)
        rooms.append(peers)
    return server, rooms


def _floor_rooms(store: _AtOnceStore) -> tuple[bare_relay.Relay, list[list[Any]]]:
    relay = bare_relay.Relay(store)  # type: ignore[arg-type]
    rooms = []
    for number in range(ROOMS):
        members = [_open(bare_relay._Member(relay)) for _ in range(PER_ROOM)]
        for index, member in enumerate(members):
            relay.text(member, orjson.dumps({"type": "hello", "room": f"room-{number}", "user": f"user-{index}"}).decode())
        rooms.append(members)
    return relay, rooms


async def _whole_path(kind: str, rounds: int) -> float:
    """Microseconds per update of ``kind``'s whole path: each round one update per room, decided as one batch, then delivered."""
    store = _AtOnceStore()
    handler, rooms = _loopsync_rooms(store) if kind == "loopsync" else _floor_rooms(store)
    texts = [orjson.dumps({"type": "update", "seq": seq, "part": PART}).decode() for seq in range(1, rounds + 1)]
    _DropTransport.writes = 0
    started = time.perf_counter()
    for round_number, text in enumerate(texts):
        for members in rooms:
            handler.text(members[round_number % PER_ROOM], text)
        store.decide()
        await asyncio.sleep(0)  # loopsync hands deliveries to the loop's next turn
    elapsed = time.perf_counter() - started
    if _DropTransport.writes != rounds * ROOMS * PER_ROOM:  # an ack and three deliveries each, or it measured the wrong path
        raise RuntimeError(f"{kind}: {_DropTransport.writes} frames written for {rounds * ROOMS} updates, not {PER_ROOM} each")
    return elapsed / (rounds * ROOMS) * 1e6


def _each(statement: str, namespace: dict[str, Any], number: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=5, globals=namespace)) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="few repeats (for the test suite)")
    args = parser.parse_args()
    rounds, repeats, number = (8, 1, 2_000) if args.smoke else (40, 7, 100_000)
    paths = {kind: min(asyncio.run(_whole_path(kind, rounds)) for _ in range(repeats)) for kind in ("floor", "loopsync")}
    print(f"the Python of one update (rooms of {PER_ROOM}, {ROOMS} rooms, one batch a round), best of {repeats}:")
    for kind, micros in paths.items():
        print(f"  {kind:<9} {micros:6.2f} µs per update")
    print(f"  loopsync adds {paths['loopsync'] - paths['floor']:.2f} µs per update"
          f" ({(paths['loopsync'] - paths['floor']) / (PER_ROOM - 1):.2f} µs per delivery)")
    text = orjson.dumps({"type": "update", "seq": 7, "part": PART}).decode()
    room = Room("room")
    room.join("1", "user-0", True, 120.0)
    namespace = {"protocol": protocol, "orjson": orjson, "text": text, "room": room, "update": protocol.parse_client_message(text),
                 "sequence": sequence, "Proposal": Proposal, "PART": PART, "text_frame": text_frame, "count": iter(range(1, 10**9))}
    stages = (("parse: loopsync's parser", "protocol.parse_client_message(text)", "orjson.loads(text)['seq']"),
              ("check the part and the sender", "room.check('user-0', update)", None),
              ("sequence (seq rule, revision)", "sequence([Proposal(room, 'user-0', next(count), PART)])", None),
              ("encode the update for the others", "text_frame(protocol.update_message(user='user-0', seq=7, revision=9, part=PART))",
               "text_frame(text.encode())"))
    print(f"stages, each alone, best of 5 (µs per update; the floor's own step where it has one):")
    for name, statement, floor_statement in stages:
        line = f"  {name:<34} loopsync {_each(statement, namespace, number):5.2f}"
        if floor_statement:
            line += f"   floor {_each(floor_statement, namespace, number):5.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
