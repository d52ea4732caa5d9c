"""Model check of the client rules: ClientSync against a small model of the server, in random interleavings.

Hypothesis draws a list of events (local edits, play/pause, syncs, the
server reading a frame, the client receiving one, a fetch, disconnects with the
in-flight updates committed before, after or never, reconnects, the store
failing, another tab of the same user writing, another user writing or
having its part removed, the user's own part removed while away) and plays
them against :class:`ClientSync` and :class:`ModelServer`; then the network
calms (everything is delivered, the client plays and syncs) and the checks
below must hold. Along the way every update the client sends is checked too.

- Nothing needless: at most one update per call; an update's part differs
  from the newest update in flight on the connection, or (none in flight)
  from the confirmed part.
- Seqs strictly increase on a connection, except once after a ``bad_seq``,
  when every earlier update of the connection has been answered.
- At calm: the server's part, the client's own part and its confirmed part
  agree, nothing is in flight, and other users' parts play as the server has
  them.
- No edit is lost: the final part is the user's last edit in this client
  when it came after every write of another tab had reached the client; it
  is the other tab's last write when that came after the server had the
  user's last edit from this client; in between (truly concurrent edits in
  two tabs) it is one of the two.

Every minimal failing sequence it found became a scenario in
``tests/vectors/client.json`` (named "model: ..."), so the browser's copy of
the rules runs it too. Runs are deterministic (``derandomize``): CI always
checks the same examples; ``LOOPSYNC_MODEL_EXAMPLES=N`` checks N examples,
and ``LOOPSYNC_MODEL_SEED=S`` random ones from seed S, to explore further.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import event as note_event
from hypothesis import note
from hypothesis import strategies as st

from loopsync.sync import ClientSync

Part = dict[str, Any]
Message = dict[str, Any]

ME = "alice"
STEPS = 4
SEQ_JUMP_LIMIT = 2**20
FREE_SEQS = 2**52  # below it any jump is accepted
PARTS: list[Part] = [
    {"sound": "hat", "steps": [1, 0, 0, 0]},
    {"sound": "kick", "steps": [0, 1, 1, 0]},
    {"sound": "snare", "steps": [0, 0, 0, 0]},
    {"sound": "kick", "steps": [1, 1, 1, 1]},
]


@dataclass
class Frame:
    """A message on its way, with what the model knows about it (never shown to the client)."""

    message: Message
    writes_seen: int = 0  # other-tab writes the server had accepted when it made this message
    sent_at: int = 0  # for client updates: the event index when the client sent it


@dataclass
class Connection:
    """One WebSocket of the client: frames to the server, frames to the client."""

    number: int
    to_server: deque[Frame] = field(default_factory=deque)
    to_client: deque[Frame] = field(default_factory=deque)
    alive: bool = True
    joined: bool = False
    last_seq_sent: int | None = None
    bad_seq_since_last_send: bool = False


class ModelServer:
    """The server as far as one user's part is concerned: seq check, revisions, commit, replies in order."""

    def __init__(self, initial: Part | None, initial_seq: int) -> None:
        self.part: Part | None = initial
        self.last_seq = initial_seq if initial is not None else 0
        self.revision = 1 if initial is not None else 0
        self.others: dict[str, Part] = {}
        self.store_up = True
        self.part_from_client = False
        self.client_update_sent_at = -1  # when the client sent the update the server holds (if from the client)
        self.writes = 0 if initial is None else 1  # other-tab writes accepted so far (the earlier session's part counts)

    def snapshot(self) -> Message:
        parts = dict(self.others)
        if self.part is not None:
            parts[ME] = self.part
        return {"type": "snapshot", "v": 1, "you": ME, "id": "1", "revision": self.revision, "seq": self.last_seq,
                "doc": {"room": "model", "steps": STEPS, "parts": json.loads(json.dumps(parts))}}

    def check(self, seq: int) -> str | None:
        """The error code an update with this seq gets now, or None when it would be accepted."""
        if seq <= self.last_seq:
            return "stale_seq"
        if seq > max(self.last_seq, FREE_SEQS) + SEQ_JUMP_LIMIT:
            return "bad_seq"
        if not self.store_up:
            return "unavailable"
        return None

    def accept(self, seq: int, part: Part) -> int:
        self.revision += 1
        self.part = json.loads(json.dumps(part))
        self.last_seq = seq
        return self.revision


class Run:
    """One interleaving: the client, the model server, the connections and what the checks need to know."""

    def __init__(self, initial: Part | None, initial_seq: int) -> None:
        self.client = ClientSync(ME, steps=STEPS)
        self.server = ModelServer(initial, initial_seq)
        self.initial = initial
        self.connections: list[Connection] = []
        self.live: Connection | None = None
        self.now = 0
        self.script: list[dict[str, Any]] = []  # the run as a client.json script
        # For the no-lost-edit checks:
        self.last_edit: Part | None = None
        self.last_edit_at = -1
        self.last_edit_saw_writes = 0
        self.client_saw_writes = 0
        self.last_write: Part | None = initial  # an earlier session's part is written by "another tab" too
        self.writes: list[Part] = [initial] if initial is not None else []
        self.last_write_after_placed = False
        self.last_write_at = -1
        self.removed_after_last_write = False
        self.removed = False
        self.late_commit = False
        self.outcome = ""
        self.connect()

    # -- the client side --------------------------------------------------------

    def connect(self) -> None:
        connection = Connection(len(self.connections) + 1)
        connection.to_server.append(Frame({"type": "hello", "v": 1, "room": "model", "user": ME}))
        self.connections.append(connection)
        self.live = connection

    def call(self, action: dict[str, Any], message: Frame | None = None) -> list[Message]:
        """Run one ClientSync action, record it as a script step, check and send what it returns."""
        client = self.client
        name = action["do"]
        if name == "toggle":
            client.toggle(action["step"])
        elif name == "set_sound":
            client.set_sound(action["sound"])
        if name in ("toggle", "set_sound"):
            sent: list[Message] = []
            self.last_edit = json.loads(json.dumps(client.own))
            self.last_edit_at = self.now
            self.last_edit_saw_writes = self.client_saw_writes
        elif name == "play":
            sent = client.play()
        elif name == "pause":
            sent = client.pause()
        elif name == "sync":
            sent = client.sync()
        elif name == "disconnect":
            client.on_disconnect()
            sent = []
        else:
            assert message is not None
            sent = client.on_message(message.message)
            self.client_saw_writes = max(self.client_saw_writes, message.writes_seen)
        self.script.append({**action, **({"expect_sent": sent} if sent else {})})
        self.check_sent(sent)
        for out in sent:
            if self.live is not None and self.live.alive:
                self.live.to_server.append(Frame(out, sent_at=self.now))
        return sent

    def check_sent(self, sent: list[Message]) -> None:
        updates = [message for message in sent if message["type"] == "update"]
        assert len(updates) <= 1, f"more than one update in one call: {sent}"
        assert all(message["type"] in ("update", "fetch") for message in sent), sent
        if not updates:
            return
        assert self.live is not None and self.live.joined, "an update sent before the snapshot"
        update = updates[0]
        seq, part = update["seq"], update["part"]
        earlier = [(s, p) for s, p in self.client.in_flight.items() if s != seq]
        if earlier:
            assert part != earlier[-1][1], f"needless update: the newest in flight already carries {part}"
        else:
            confirmed = self.client.confirmed
            assert (any(part["steps"]) if confirmed is None else part != confirmed), f"needless update: {part} is confirmed"
        connection = self.live
        if connection.last_seq_sent is not None and seq <= connection.last_seq_sent:
            assert connection.bad_seq_since_last_send, f"seq {seq} after {connection.last_seq_sent} on one connection with no bad_seq"
            assert not earlier, "seq lowered while updates are still in flight"
        connection.last_seq_sent = seq
        connection.bad_seq_since_last_send = False

    def deliver(self) -> bool:
        """The client reads the next frame of its connection; False when there is none."""
        connection = self.live
        if connection is None or not connection.to_client:
            return False
        frame = connection.to_client.popleft()
        if frame.message.get("code") == "bad_seq":
            connection.bad_seq_since_last_send = True
        self.call({"do": "message", "message": frame.message}, frame)
        return True

    def disconnect(self) -> None:
        """The live connection closes: what the server had not sent is lost; what it had not read stays readable."""
        connection = self.live
        if connection is None:
            return
        connection.alive = False
        connection.to_client.clear()
        self.live = None
        self.call({"do": "disconnect"})

    # -- the server side --------------------------------------------------------

    def push(self, connection: Connection, message: Message) -> None:
        if connection.alive:
            connection.to_client.append(Frame(message, writes_seen=self.server.writes))

    def room(self) -> list[Connection]:
        """The client's connections that have joined the room and are open."""
        return [c for c in self.connections if c.alive and c.joined]

    def serve(self, connection: Connection) -> bool:
        """The server reads and answers one frame of ``connection``; False when it has none."""
        if not connection.to_server:
            return False
        frame = connection.to_server.popleft()
        message = frame.message
        server = self.server
        if message["type"] == "hello":
            connection.joined = True
            self.push(connection, server.snapshot())
            self.push(connection, {"type": "presence", "users": [{"id": "1", "user": ME, "playing": False, "bpm": None}]})
        elif message["type"] == "fetch":
            self.push(connection, server.snapshot())
        elif message["type"] == "update":
            seq = message["seq"]
            code = server.check(seq)
            if code is not None:
                self.push(connection, {"type": "error", "code": code, "message": "(text for people)", "seq": seq})
                return True
            if not connection.alive and any(c.joined and c.number > connection.number for c in self.connections):
                self.late_commit = True
            revision = server.accept(seq, message["part"])
            server.part_from_client = True
            server.client_update_sent_at = frame.sent_at
            self.push(connection, {"type": "ack", "seq": seq, "revision": revision})
            for other in self.room():
                if other is not connection:
                    self.push(other, {"type": "update", "user": ME, "seq": seq, "revision": revision, "part": message["part"]})
        return True

    def other_tab_writes(self, part: Part, jump: int) -> None:
        server = self.server
        if not server.store_up:
            return
        placed = server.part_from_client and server.part is not None and server.part == self.last_edit and server.client_update_sent_at > self.last_edit_at
        seq = min(server.last_seq + jump, max(server.last_seq, FREE_SEQS) + SEQ_JUMP_LIMIT)  # the other tab follows the rules too
        revision = server.accept(seq, part)
        server.part_from_client = False
        server.writes += 1
        self.last_write = json.loads(json.dumps(part))
        self.writes.append(self.last_write)
        self.last_write_at = self.now
        self.last_write_after_placed = placed
        self.removed_after_last_write = False
        for connection in self.room():
            self.push(connection, {"type": "update", "user": ME, "seq": seq, "revision": revision, "part": part})

    def other_user_writes(self, part: Part | None) -> None:
        server = self.server
        server.revision += 1
        if part is None:
            if "bob" not in server.others:
                server.revision -= 1
                return
            del server.others["bob"]
        else:
            server.others["bob"] = json.loads(json.dumps(part))
        for connection in self.room():
            self.push(connection, {"type": "update", "user": "bob", "seq": 0 if part is None else server.revision, "revision": server.revision, "part": part})

    def remove_my_part(self) -> None:
        """A full room gave the user's part to a newcomer: only while the user is not connected."""
        if self.room() or self.server.part is None:
            return
        self.server.part = None
        self.server.last_seq = 0
        self.server.revision += 1
        self.server.part_from_client = False
        self.removed = True
        self.removed_after_last_write = True

    # -- events -----------------------------------------------------------------

    def apply(self, event: tuple[Any, ...]) -> None:
        self.now += 1
        kind = event[0]
        a, b = (tuple(event[1:]) + (0, 0))[:2]
        if kind == "toggle":
            self.call({"do": "toggle", "step": a % STEPS})
        elif kind == "sound":
            self.call({"do": "set_sound", "sound": SOUND_CHOICES[a % len(SOUND_CHOICES)]})
        elif kind in ("play", "pause", "sync"):
            self.call({"do": kind})
        elif kind == "deliver":
            self.deliver()
        elif kind == "serve":
            if self.live is not None:
                self.serve(self.live)
        elif kind == "settle":
            if self.live is not None:
                self.flush()
        elif kind == "serve_dead":
            for connection in self.connections:
                if not connection.alive and self.serve(connection):
                    break
        elif kind == "drop_dead":
            for connection in self.connections:
                if not connection.alive:
                    connection.to_server.clear()
        elif kind == "fetch":
            # A tab that wakes up from being frozen asks for the Shared Data again.
            if self.live is not None and self.client.connected:
                self.live.to_server.append(Frame({"type": "fetch"}, sent_at=self.now))
        elif kind == "disconnect":
            self.disconnect()
        elif kind == "reconnect":
            if self.live is None:
                self.connect()
        elif kind == "store":
            self.server.store_up = a % 2 == 1
        elif kind == "other_tab":
            self.other_tab_writes(PARTS[a % len(PARTS)], JUMPS[b % len(JUMPS)])
        elif kind == "bob":
            self.other_user_writes(PARTS[a % len(PARTS)] if b > 0 else None)
        elif kind == "remove_mine":
            self.remove_my_part()
        elif kind == "presence":
            for connection in self.room():
                self.push(connection, {"type": "presence", "changed": [{"id": "2", "user": "bob", "playing": True, "bpm": 90}], "left": []})
        else:
            raise AssertionError(f"unknown event {event!r}")

    def calm(self) -> None:
        """The network calms: the store works, lost frames stay lost, the client connects, plays and syncs."""
        self.server.store_up = True
        for connection in self.connections:
            if not connection.alive:
                connection.to_server.clear()
        if self.live is None:
            self.connect()
        if not self.client.playing:
            self.call({"do": "play"})
        # Once messages flow, one sync sends what the server lacks (the
        # snapshot may already have) and the next one sends nothing.
        self.flush()
        self.call({"do": "sync"})
        self.flush()
        assert not self.client.in_flight, "updates still unanswered after the network calmed"
        assert self.call({"do": "sync"}) == [], "still sending after the network calmed"

    def flush(self) -> None:
        assert self.live is not None
        for _ in range(1000):
            if not (self.serve(self.live) or self.deliver()):
                return
        raise AssertionError("the exchange did not settle")

    def check_calm(self) -> str:
        client, server = self.client, self.server
        assert client.connected and not client.in_flight
        assert client.confirmed_seq == server.last_seq, (client.confirmed_seq, server.last_seq)
        assert _same(client.confirmed, server.part), (client.confirmed, server.part)
        assert _same(client.own, server.part), f"own part {client.own} but the server has {server.part}"
        others = {user: part for user, part in client.loop_parts.items() if user != ME}
        assert others == server.others and client.pending_users() == []
        final = server.part
        if self.last_write is None or self.last_edit is not None and self.last_edit_saw_writes == server.writes:
            # The user's last edit came after everything another tab wrote had arrived (or no tab wrote).
            expected = self.last_edit if self.last_edit is not None else (None if self.removed else self.initial)
            if self.last_edit is not None or not self.removed:
                assert _same(final, expected), f"the user's last edit {expected} is lost; the server has {final}"
            return "last edit wins"
        elif self.last_write_after_placed and self.last_edit_at < self.last_write_at and not self.late_commit and not self.removed_after_last_write:
            assert _same(final, self.last_write), f"the other tab's write {self.last_write}, made after this client's last edit was stored, is lost; the server has {final}"
            return "other tab wins"
        else:
            candidates = [self.last_edit if self.last_edit is not None else self.initial, self.last_write]
            if self.removed:
                # The server removed the part while the user was away; the client writes back the part it
                # had (an older write it adopted, maybe), like an unsent edit, even over a later tab's write
                # it had not seen yet.
                candidates += [*self.writes, None]
            assert any(_same(final, candidate) for candidate in candidates), f"the server has {final}, neither the last edit {self.last_edit} nor the other tab's {self.last_write}"
            return "concurrent"


def _same(a: Part | None, b: Part | None) -> bool:
    """Equal parts; a missing part is the same as a silent one (a silent part is not written while the server has none)."""
    if a is None or b is None:
        other = b if a is None else a
        return other is None or not any(other["steps"])
    return a == b


# How often each kind of event is drawn: the network moves more often than anything else happens.
WEIGHTS = {"deliver": 8, "serve": 8, "settle": 2, "sync": 5, "toggle": 4, "sound": 1, "play": 2, "pause": 1,
           "disconnect": 2, "reconnect": 3, "fetch": 1, "serve_dead": 3, "drop_dead": 1, "remove_mine": 1, "presence": 1,
           "store": 2, "other_tab": 3, "bob": 1}
SOUND_CHOICES = ["kick", "tom"]
JUMPS = [1, 2, SEQ_JUMP_LIMIT, FREE_SEQS + SEQ_JUMP_LIMIT]  # the last one reaches the highest seq accepted
# An event is (kind, a, b): a and b are small numbers that only some kinds read (a step, a part, a jump...).
EVENTS = st.tuples(st.sampled_from([kind for kind, weight in WEIGHTS.items() for _ in range(weight)]), st.integers(0, 3), st.integers(0, 3))
_PARAMETRIC = {"toggle", "sound", "store", "other_tab", "bob"}
INITIAL = st.one_of(st.none(), st.tuples(st.sampled_from(PARTS), st.sampled_from([1, 5, FREE_SEQS + SEQ_JUMP_LIMIT + 3])))


def run_and_note(initial: tuple[Part, int] | None, events: list[tuple[Any, ...]]) -> None:
    """:func:`run`, noting for ``--hypothesis-show-statistics`` which branches the example reached."""
    note(f"compact: initial={initial!r} events={[e[0] if e[0] not in _PARAMETRIC else e for e in events]!r}")
    model = run(initial, events)
    codes = {step["message"].get("code") for step in model.script if step["do"] == "message"} - {None}
    note_event(f"outcome: {model.outcome}")
    note_event(f"late commit: {model.late_commit}; removed: {model.removed}")
    for code in sorted(codes):
        note_event(f"error {code}")


def run(initial: tuple[Part, int] | None, events: list[tuple[Any, ...]]) -> Run:
    """Play ``events`` and calm the network; the run, for its script (raises AssertionError on a broken rule)."""
    model = Run(initial[0] if initial else None, initial[1] if initial else 0)
    for event in events:
        model.apply(event)
    model.calm()
    model.outcome = model.check_calm()
    return model


def _settings() -> Any:
    examples = int(os.environ.get("LOOPSYNC_MODEL_EXAMPLES", "400"))
    explore = "LOOPSYNC_MODEL_SEED" in os.environ
    return settings(max_examples=examples, derandomize=not explore, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@seed(int(os.environ.get("LOOPSYNC_MODEL_SEED", "0")))
@_settings()
@given(initial=INITIAL, events=st.lists(EVENTS, min_size=20, max_size=80))
def test_client_rules_never_lose_an_edit_nor_send_needlessly(initial: tuple[Part, int] | None, events: list[tuple[Any, ...]]) -> None:
    """Through random interleavings of edits, syncs, replies, errors, disconnects, removals and other tabs, no edit is lost and nothing is sent needlessly."""
    run_and_note(initial, events)


def test_model_reaches_every_kind_of_reply() -> None:
    """The model is not vacuous: a scripted run meets unavailable, bad_seq, stale_seq, a removal and a late commit, and no edit is lost."""
    events: list[tuple[Any, ...]] = [
        ("settle",), ("play",), ("toggle", 0), ("sync",), ("settle",),  # joined; seq 1 acknowledged
        ("other_tab", 0, 3), ("settle",),  # another tab writes the highest seq accepted: adopted, our next seq follows
        ("toggle", 1), ("store", 0), ("sync",), ("settle",), ("store", 1),  # unavailable
        ("disconnect",), ("remove_mine",), ("reconnect",), ("settle",),  # seq restarts at 0: bad_seq, fetch, seq 1
        ("other_tab", 1, 0), ("toggle", 2), ("sync",), ("settle",),  # our seq 2 meets the other tab's: stale_seq
        ("toggle", 3), ("sync",), ("disconnect",), ("reconnect",), ("serve",), ("serve_dead",), ("settle",),  # a late commit
    ]
    model = run(None, events)
    codes = {step["message"].get("code") for step in model.script if step["do"] == "message"}
    assert {"stale_seq", "bad_seq", "unavailable"} <= codes, codes
    assert model.removed and model.late_commit


def as_vector(name: str, rule: str, initial: tuple[Part, int] | None, events: list[tuple[Any, ...]]) -> dict[str, Any]:
    """A run as a ``tests/vectors/client.json`` scenario: how a failing sequence becomes a shared vector.

    The script replays the run's ClientSync calls with every sent message
    checked, and ends with a checkpoint of the calm state.
    """
    model = run(initial, events)
    client = model.client
    checkpoint = {"loop_parts": client.loop_parts, "pending_users": client.pending_users(), "dirty": client.dirty(), "confirmed_seq": client.confirmed_seq}
    return json.loads(json.dumps({"name": name, "rule": rule, "me": ME, "steps": STEPS, "script": [*model.script, {"expect": checkpoint}]}))
