"""The headless client against a real server on 127.0.0.1 (port 0): the whole timeline, by evidence.

Two clients play at different tempi (16 steps at 600 and 840 BPM: loops of
0.4 s and 0.29 s). The evidence is each client's event stream: loop numbers,
the order of events and their ``time.monotonic()`` stamps (one clock, since
everything runs in this process). Every wait is on an event with a safety
timeout scaled by ``LOOPSYNC_TIMEOUT_SCALE``; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from loopsync.client import Client, Event
from loopsync.document import copy_part

TIMEOUT_SCALE = float(os.environ.get("LOOPSYNC_TIMEOUT_SCALE", "1"))
TIME_UNIT = 2.0 * TIMEOUT_SCALE
FAST, FASTER = 600.0, 840.0
LOOP_FAST, LOOP_FASTER = 60 / FAST / 4 * 16, 60 / FASTER / 4 * 16
LEAD = 0.05


class EventLog:
    """A client's events, in order, with waits on what comes next."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.hooks: list[Callable[[Event], None]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        for hook in self.hooks:
            hook(event)

    def index(self, event: Event) -> int:
        """Position of this very event in the log."""
        return next(i for i, seen in enumerate(self.events) if seen is event)

    def all(self, name: str, where: Callable[[Event], bool] | None = None, after: Event | None = None) -> list[Event]:
        """Every event called ``name`` (after ``after``) that satisfies ``where``."""
        start = self.index(after) + 1 if after is not None else 0
        return [e for e in self.events[start:] if e["event"] == name and (where is None or where(e))]

    async def next(self, name: str, where: Callable[[Event], bool] | None = None, after: Event | None = None, units: float = 3) -> Event:
        """The first event called ``name`` after ``after`` satisfying ``where``; waits for it."""
        deadline = time.monotonic() + units * TIME_UNIT
        scanned = self.index(after) + 1 if after is not None else 0
        while True:
            for event in self.events[scanned:]:
                if event["event"] == name and (where is None or where(event)):
                    return event
            scanned = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = [(e["event"], e.get("loop"), e.get("message")) for e in self.events[-8:] if e["event"] != "step"]
                raise AssertionError(f"no {name} event in time; last events: {tail}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def mark(self) -> Event | None:
        """The latest event, to wait for what comes after it."""
        return self.events[-1] if self.events else None


def update_from(user: str) -> Callable[[Event], bool]:
    return lambda e: e["message"].get("type") == "update" and e["message"].get("user") == user


def is_update(event: Event) -> bool:
    return event["message"].get("type") == "update"


Start = Callable[..., Awaitable[tuple[Client, EventLog]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Factory: ``client, log = await start(url, user, **options)``, joined; all closed at teardown."""
    clients: list[Client] = []

    async def _start(url: str, user: str, room: str = "r", join: bool = True, **options: Any) -> tuple[Client, EventLog]:
        log = EventLog()
        options.setdefault("lead_seconds", LEAD)
        client = Client(url, room, user, on_event=log, **options)
        clients.append(client)
        await client.start()
        if join:
            await asyncio.wait_for(client.wait_joined(), 3 * TIME_UNIT)
        return client, log

    yield _start
    for client in clients:
        await client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_edit_while_playing_is_heard_at_the_next_loop_start_after_it_arrives(server: Any, start: Start) -> None:
    """A playing edit is sent at the sender's sync and plays at the receiver's first Loop Start whose sync comes after it arrived."""
    alice, alice_log = await start(server.ws_url, "alice", bpm=FAST)
    bob, bob_log = await start(server.ws_url, "bob", bpm=FASTER, sound="hat")
    await alice_log.next("loop_start", after=alice_log.mark())
    edit_at = time.monotonic()
    alice.toggle(0)
    alice.toggle(4)
    part = copy_part(alice.sync.own)

    # Alice sends once, right after her next sync and before her next Loop Start.
    sent = await alice_log.next("sent", is_update)
    assert sent["message"]["part"] == part
    alice_sync = alice_log.all("sync", lambda e: e["sent"])[-1]
    assert edit_at <= alice_sync["monotonic"] <= sent["monotonic"] < alice_sync["loop_start"]
    assert alice_log.all("loop_start", lambda e: e["loop"] == alice_sync["loop"]) == [] or (
        alice_log.index(alice_log.all("loop_start", lambda e: e["loop"] == alice_sync["loop"])[0]) > alice_log.index(sent)
    )

    # Bob keeps it pending, and takes it at his first sync after it arrived.
    received = await bob_log.next("received", update_from("alice"))
    bob_sync = await bob_log.next("sync", after=received)
    assert bob_sync["taken"] == ["alice"]
    loop = bob_sync["loop"]
    loop_start = await bob_log.next("loop_start", lambda e: e["loop"] == loop)
    assert loop_start["parts"]["alice"] == part
    previous = bob_log.all("loop_start", lambda e: e["loop"] == loop - 1)
    assert previous and previous[0]["parts"].get("alice") != part, "the loop before plays the old part"
    between = bob_log.all("step", lambda e: received["monotonic"] <= e["monotonic"] < loop_start["monotonic"])
    assert all("alice" not in step["users"] for step in between), "nothing of alice's plays mid-loop"
    hit = await bob_log.next("step", lambda e: e["loop"] == loop and e["index"] == 4)
    assert hit["users"] == ["alice"]
    # From the edit to bob hearing it: at most both loop lengths plus the lead (plus this machine's slack).
    assert loop_start["due"] - edit_at <= LOOP_FAST + LOOP_FASTER + LEAD + 0.1 * TIMEOUT_SCALE


async def test_edits_made_while_paused_are_sent_on_play(server: Any, start: Start) -> None:
    """A paused client sends nothing, however long; play syncs at once and sends its edits before its next sync."""
    alice, alice_log = await start(server.ws_url, "alice", bpm=FAST, playing=False)
    bob, bob_log = await start(server.ws_url, "bob", bpm=FASTER)
    alice.toggle(1)
    alice.set_sound("clap")
    first = await bob_log.next("loop_start", after=bob_log.mark())
    await bob_log.next("loop_start", lambda e: e["loop"] == first["loop"] + 2)
    assert alice_log.all("sent", is_update) == []
    assert bob_log.all("received", update_from("alice")) == []
    assert alice_log.all("step") == [] and alice.sync.dirty()

    alice.play()
    transport = await alice_log.next("sent", lambda e: e["message"]["type"] == "transport")
    assert transport["message"]["playing"] is True
    sent = await alice_log.next("sent", is_update)
    assert sent["message"]["part"] == {"sound": "clap", "steps": [0, 1] + [0] * 14}
    assert alice_log.all("sync", lambda e: e["monotonic"] < sent["monotonic"]) == [], "sent by play, not by a later sync"
    received = await bob_log.next("received", update_from("alice"))
    await bob_log.next("sync", lambda e: e["taken"] == ["alice"], after=received)
    await alice_log.next("ack")
    assert not alice.sync.dirty()


async def test_updates_that_arrive_while_paused_apply_at_once(server: Any, start: Start) -> None:
    """A paused client shows an arrived part at once, plays nothing, and continues from the held step on play.

    The rest of the loop it paused in plays as that loop began; the new part is heard from the next Loop Start (docs/clock.md).
    """
    alice, alice_log = await start(server.ws_url, "alice", bpm=FAST)
    bob, bob_log = await start(server.ws_url, "bob", bpm=FASTER)
    await bob_log.next("step", lambda e: e["index"] == 5)
    bob.pause()
    paused = bob_log.mark()
    last_step = bob_log.all("step")[-1]["step"]
    assert bob_log.all("transport")[-1]["playing"] is False

    alice.toggle(2)
    alice.toggle(9)
    part = copy_part(alice.sync.own)
    await bob_log.next("received", update_from("alice"), after=paused)
    assert bob.sync.loop_parts["alice"] == part
    assert bob.sync.pending_users() == []
    assert bob_log.all("step", after=paused) == [] and bob_log.all("sync", after=paused) == []
    presence = await alice_log.next("presence", lambda e: any(u["user"] == "bob" and not u["playing"] for u in e["users"]))
    assert presence

    bob.play()
    step = await bob_log.next("step", after=paused)
    assert step["step"] == last_step + 1, "play continues from the held position"
    rest = await bob_log.next("step", lambda e: e["index"] == 9, after=paused)
    assert rest["loop"] == step["loop"] and "alice" not in rest["users"], "the resumed loop's rest plays as it began"
    hit = await bob_log.next("step", lambda e: e["index"] == 2, after=paused)
    assert hit["loop"] == step["loop"] + 1 and "alice" in hit["users"], "the part applied while paused plays from the next Loop Start"
    hit = await bob_log.next("step", lambda e: e["index"] == 9, after=hit)
    assert "alice" in hit["users"]


async def test_dropped_connection_reconnects_and_resends_unconfirmed_edits(server: Any, start: Start) -> None:
    """A client whose connection drops reconnects, and edits the server never confirmed reach the others."""
    alice, alice_log = await start(server.ws_url, "alice", bpm=FAST, backoff_base_seconds=0.02)
    bob, bob_log = await start(server.ws_url, "bob", bpm=FASTER)
    first = await bob_log.next("presence", lambda e: [u["user"] for u in e["users"]] == ["alice", "bob"])
    first_id = first["users"][0]["id"]
    mark = alice_log.mark()
    alice.drop_connection()
    alice.toggle(3)
    part = copy_part(alice.sync.own)
    disconnected = await alice_log.next("disconnected", after=mark)
    assert disconnected["was_connected"]
    await alice_log.next("connected", after=disconnected)
    received = await bob_log.next("received", lambda e: update_from("alice")(e) and e["message"]["part"] == part)
    await alice_log.next("ack")
    assert not alice.sync.dirty() and alice.sync.confirmed_seq == received["message"]["seq"]
    # bob's presence shows alice's new connection in place of the old one (coalesced: maybe in one message)
    await bob_log.next("presence", lambda e: [u["user"] for u in e["users"]] == ["alice", "bob"] and e["users"][0]["id"] != first_id)


async def test_update_whose_ack_is_lost_is_confirmed_or_resent_after_reconnect(server: Any, start: Start) -> None:
    """The connection drops right after an update is sent: after reconnecting, the server holds the part exactly once."""
    alice, alice_log = await start(server.ws_url, "alice", bpm=FAST, backoff_base_seconds=0.02)
    bob, bob_log = await start(server.ws_url, "bob", bpm=FASTER)
    dropped: list[Event] = []

    def drop_after_first_update(event: Event) -> None:
        if event["event"] == "sent" and is_update(event) and not dropped:
            dropped.append(event)
            alice.drop_connection()

    alice_log.hooks.append(drop_after_first_update)
    alice.toggle(0)
    alice.toggle(15)
    part = copy_part(alice.sync.own)
    reconnected = await alice_log.next("connected", after=await alice_log.next("disconnected"))
    await bob_log.next("received", lambda e: update_from("alice")(e) and e["message"]["part"] == part)
    if alice.sync.in_flight:
        await alice_log.next("ack", after=reconnected)
    assert not alice.sync.dirty()
    assert alice.sync.confirmed == part
    assert alice.sync.confirmed_seq >= dropped[0]["message"]["seq"]


async def test_restarted_server_keeps_acknowledged_updates_and_clients_come_back(serve_process: Any, start: Start) -> None:
    """SIGKILL the SQLite server after acks, restart it on its port: parts survive, clients reconnect and resend the rest."""
    proc = serve_process()
    options = {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5}
    alice, alice_log = await start(proc.ws_url, "alice", bpm=FAST, **options)
    bob, bob_log = await start(proc.ws_url, "bob", bpm=FASTER, sound="hat", **options)
    alice.toggle(0)
    bob.toggle(2)
    await alice_log.next("ack")
    await bob_log.next("ack")
    acknowledged = {"alice": copy_part(alice.sync.own), "bob": copy_part(bob.sync.own)}

    proc.kill()
    down = await alice_log.next("disconnected", after=alice_log.all("ack")[-1])
    await bob_log.next("disconnected", after=bob_log.all("ack")[-1])
    alice.toggle(8)  # made while the server is down: unconfirmed
    await asyncio.to_thread(proc.start)

    connected = await alice_log.next("connected", after=down, units=5)
    snapshot = alice_log.all("received", lambda e: e["message"]["type"] == "snapshot")[-1]["message"]
    assert snapshot["doc"]["parts"] == acknowledged
    resent = await alice_log.next("sent", is_update, after=connected)
    assert resent["message"]["part"]["steps"][8] == 1

    def brings_alices_step_8(event: Event) -> bool:
        # Bob may come back before or after alice's resend: in an update or in his snapshot.
        message = event["message"]
        part = message.get("part") if update_from("alice")(event) else message.get("doc", {}).get("parts", {}).get("alice")
        return part is not None and part["steps"][8] == 1

    await bob_log.next("received", brings_alices_step_8, units=5)
    carol, carol_log = await start(proc.ws_url, "carol", playing=False)
    parts = carol.sync.loop_parts
    assert parts["bob"] == acknowledged["bob"] and parts["alice"]["steps"][8] == 1


async def test_reconnect_backs_off_exponentially_with_a_cap_and_jitter(serve_process: Any, start: Start) -> None:
    """With no server, attempts back off (doubling, capped, jittered); once the server is up, the client joins."""
    port = free_port()
    base, cap = 0.01, 0.08
    client, log = await start(f"ws://127.0.0.1:{port}/ws", "alice", join=False, bpm=FAST, backoff_base_seconds=base, backoff_max_seconds=cap)
    attempts = [await log.next("reconnecting", lambda e, n=n: e["attempt"] == n) for n in range(1, 7)]
    for event in attempts:
        nominal = min(cap, base * 2 ** (event["attempt"] - 1))
        assert 0.5 * nominal <= event["in_seconds"] <= nominal
    assert all(not e["was_connected"] for e in log.all("disconnected"))
    proc = serve_process(port=port)
    assert proc.port == port
    await asyncio.wait_for(client.wait_joined(), 5 * TIME_UNIT)
    mark = log.mark()
    client.drop_connection()
    again = await log.next("reconnecting", after=mark)
    assert again["attempt"] == 1, "a connection that had joined starts the backoff over"


async def test_missed_sync_window_plays_the_old_loop_and_syncs_before_the_next(server: Any, start: Start) -> None:
    """The event loop is blocked across a sync moment and Loop Start: that loop plays what it had, the next one takes the change."""
    alice, alice_log = await start(server.ws_url, "alice", bpm=FASTER)
    bob, bob_log = await start(server.ws_url, "bob", bpm=FAST)
    blocked: list[int] = []

    def block_on_arrival(event: Event) -> None:
        # Runs inside bob's message handler: the update is about to become pending.
        if event["event"] == "received" and update_from("alice")(event) and not blocked:
            last = bob_log.all("loop_start")[-1]
            loop, loop_start = last["loop"] + 1, last["due"] + LOOP_FAST
            while loop_start - LEAD <= time.monotonic():
                loop, loop_start = loop + 1, loop_start + LOOP_FAST
            blocked.append(loop)
            time.sleep(loop_start + 2 * LOOP_FAST / 16 - time.monotonic())  # a blocked event loop, on purpose

    bob_log.hooks.append(block_on_arrival)
    alice.toggle(0)
    part = copy_part(alice.sync.own)
    missed = await bob_log.next("sync_missed")
    assert missed["loop"] == blocked[0]
    old = await bob_log.next("loop_start", lambda e: e["loop"] == blocked[0])
    assert old["parts"].get("alice") != part
    synced = await bob_log.next("sync", lambda e: e["loop"] == blocked[0] + 1)
    assert synced["taken"] == ["alice"] and synced["monotonic"] < synced["loop_start"]
    new = await bob_log.next("loop_start", lambda e: e["loop"] == blocked[0] + 1)
    assert new["parts"]["alice"] == part
    steps = [e["step"] for e in bob_log.all("step")]
    assert steps == list(range(steps[0], steps[0] + len(steps))), "no step is skipped or repeated"


def _without_ids(users: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Presence entries without their connection ids (opaque strings the server picks)."""
    return [{key: value for key, value in entry.items() if key != "id"} for entry in users]


async def test_presence_lists_who_is_here_and_their_transport(server: Any, start: Start) -> None:
    """Each client keeps the room's presence: who is in, playing or paused, and at what tempo."""
    alice, alice_log = await start(server.ws_url, "alice", bpm=120)
    bob, bob_log = await start(server.ws_url, "bob", bpm=90, playing=False)
    expected = [{"user": "alice", "playing": True, "bpm": 120.0}, {"user": "bob", "playing": False, "bpm": 90.0}]
    await alice_log.next("presence", lambda e: _without_ids(e["users"]) == expected)
    alice.pause()
    alice.set_bpm(100)
    expected = [{"user": "alice", "playing": False, "bpm": 100.0}, {"user": "bob", "playing": False, "bpm": 90.0}]
    await bob_log.next("presence", lambda e: _without_ids(e["users"]) == expected)
    assert _without_ids(bob.presence) == expected
    fast, _ = await start(server.ws_url, "carl", bpm=FAST, playing=False)
    await bob_log.next("presence", lambda e: {"user": "carl", "playing": False, "bpm": 600.0} in _without_ids(e["users"]))


async def test_tempo_change_keeps_the_playhead(server: Any, start: Start) -> None:
    """After a tempo change the step count goes on without a gap, at the new step length."""
    alice, alice_log = await start(server.ws_url, "alice", bpm=FAST)
    changed = await alice_log.next("step", lambda e: e["index"] == 3)
    alice.set_bpm(FASTER)
    after = [await alice_log.next("step", lambda e, n=n: e["step"] == changed["step"] + n) for n in (1, 2, 3)]
    assert after[2]["due"] - after[1]["due"] == pytest.approx(60 / FASTER / 4)
    steps = [e["step"] for e in alice_log.all("step")]
    assert steps == list(range(len(steps)))


async def test_two_connections_of_one_user_follow_each_other(server: Any, start: Start) -> None:
    """Two tabs of the same user: an edit in one becomes the other's own part when it has none of its own."""
    first, first_log = await start(server.ws_url, "alice", bpm=FAST)
    second, second_log = await start(server.ws_url, "alice", bpm=FASTER, playing=False)
    first.toggle(5)
    await second_log.next("received", update_from("alice"))
    assert second.sync.own == first.sync.own
    assert not second.sync.dirty()
    second.toggle(6)
    second.play()
    await first_log.next("received", update_from("alice"))
    assert first.sync.own["steps"][5:7] == [1, 1]


async def test_close_waits_for_the_ack_of_an_update_in_flight(server: Any, start: Start) -> None:
    """Closing right after a sync sent an update waits for its ack, so the edit is not left unconfirmed."""
    alice, alice_log = await start(server.ws_url, "alice", bpm=FAST)
    closed: list[Any] = []

    def close_after_sending(event: Event) -> None:
        if event["event"] == "sent" and is_update(event) and not closed:
            closed.append(asyncio.ensure_future(alice.close()))

    alice_log.hooks.append(close_after_sending)
    alice.toggle(7)
    await alice_log.next("sent", is_update)
    await asyncio.wait_for(closed[0], 2 * TIME_UNIT)
    assert alice_log.all("ack") and alice.sync.confirmed_seq == 1
    assert math.isfinite(alice_log.all("ack")[-1]["monotonic"])


async def test_quit_while_playing_sends_the_last_edits_and_paused_does_not(server: Any, start: Start) -> None:
    """Closing while playing sends an edit made since the last sync and waits for its ack; closing paused sends nothing."""
    alice, alice_log = await start(server.ws_url, "alice", bpm=FAST)
    await alice_log.next("sync", after=alice_log.mark())
    alice.toggle(9)
    await alice.close()
    assert [e["message"]["part"]["steps"][9] for e in alice_log.all("sent", is_update)] == [1]
    assert alice_log.all("ack") and not alice.sync.dirty()
    bob, bob_log = await start(server.ws_url, "bob", bpm=FAST, playing=False)
    bob.toggle(9)
    await bob.close()
    assert bob_log.all("sent", is_update) == []
