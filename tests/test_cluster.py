"""A loopsync cluster: the node's rules (no I/O), then two real nodes on real PostgreSQL and Redis.

The protocol tests of ``test_server.py`` and the conformance scenarios run
here against two nodes with the members of each room split across them
(the ``server`` fixture is a two-node cluster whose ``ws_url`` alternates).
Then: randomized writers on both nodes, and the faults (a node killed with
SIGKILL, Redis restarted, PostgreSQL stopped). PostgreSQL and Redis are
started by ``tests/services.py``; a missing one fails the tests with what to
install, it never skips them.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import asyncpg
import pytest

import test_client
import test_server
from cluster_nodes import InProcessCluster, NodeProcess
from conftest import TIME_UNIT, Connect, RawClient
from loopsync.cluster import GAP_SECONDS, Entry, RemoteMembers, RevisionGate, catch_up
from loopsync.conformance import load_scenarios, run_scenario
from loopsync.rooms import Accepted, RoomRecord
from services import PostgresService, RedisService, _children

KICK = {"sound": "kick", "steps": [1, 0, 0, 0] * 4}


def record(user: str, revision: int, seq: int = 1, part: Any = KICK) -> Accepted:
    return Accepted("demo", user, seq, revision, part)


# -- the rules, no I/O --------------------------------------------------------------------


def test_gate_passes_records_on_in_revision_order_and_drops_repeats() -> None:
    """Records that come out of order wait for the missing revision; repeats and old revisions are dropped."""
    gate = RevisionGate()
    assert gate.offer(Entry(record("bob", 3)), room_revision=1, now=0.0) == []
    assert gate.gap_since == 0.0 and not gate.overdue(0.1) and gate.overdue(GAP_SECONDS)
    ready = gate.offer(Entry(record("alice", 2)), room_revision=1, now=0.05)
    assert [entry.record.revision for entry in ready] == [2, 3] and gate.gap_since is None
    assert gate.offer(Entry(record("alice", 2)), room_revision=3, now=0.1) == []
    assert gate.offer(Entry(record("alice", 1)), room_revision=3, now=0.1) == []


def test_gate_keeps_the_copy_that_carries_the_ack() -> None:
    """A node's own commit and its echo from the bus are one record: the one with the sender is kept."""
    gate = RevisionGate()
    gate.offer(Entry(record("carol", 4)), room_revision=1, now=0.0)
    gate.offer(Entry(record("carol", 4), "peer", "reply"), room_revision=1, now=0.0)
    gate.offer(Entry(record("carol", 4)), room_revision=1, now=0.0)
    assert gate.waiting[4].sender == "peer"


def test_gate_gap_clock_restarts_when_something_moves() -> None:
    """The gap's clock counts from the last progress, not from the first wait."""
    gate = RevisionGate()
    gate.offer(Entry(record("a", 3)), room_revision=0, now=0.0)
    gate.offer(Entry(record("a", 1)), room_revision=0, now=0.15)
    assert gate.gap_since == 0.15 and not gate.overdue(0.3)


def test_gate_hands_back_a_stale_own_record_for_its_ack() -> None:
    """A node's own record that a re-read already applied comes back once, for the ack only."""
    gate = RevisionGate()
    gate.waiting[2] = Entry(record("a", 2), "peer", "reply")
    gate.waiting[3] = Entry(record("b", 3))
    ready = gate.release(room_revision=5, now=0.0)
    assert [(entry.record.revision, entry.sender) for entry in ready] == [(2, "peer")] and not gate.waiting


@pytest.mark.parametrize(
    ("records", "room_revision", "loaded", "waiting", "expected"),
    [
        # nothing new
        ({"a": record("a", 1)}, 1, RoomRecord(1, [record("a", 1)]), {}, []),
        # two parts never heard of, passed on as read
        ({"a": record("a", 1)}, 1, RoomRecord(3, [record("a", 1), record("b", 2), record("c", 3)]), {},
         [("b", 2, True), ("c", 3, True)]),
        # a waiting record goes as it is, the missing one is read; a superseded revision is simply skipped
        ({}, 0, RoomRecord(4, [record("b", 3), record("a", 4, seq=2)]), {4: Entry(record("a", 4, seq=2), "peer")},
         [("b", 3, True), ("a", 4, True)]),
        # a part that is gone gets a removal at a free revision after its user's last record
        ({"a": record("a", 1), "b": record("b", 2)}, 2, RoomRecord(4, [record("b", 2), record("c", 4)]), {},
         [("a", 3, False), ("c", 4, True)]),
        # a waiting record above the re-read stays waiting
        ({}, 0, RoomRecord(1, [record("a", 1)]), {3: Entry(record("c", 3))}, [("a", 1, True)]),
    ],
)
def test_catch_up_brings_the_room_to_the_reread(records: dict[str, Accepted], room_revision: int, loaded: RoomRecord,
                                                waiting: dict[int, Entry], expected: list[tuple[str, int, bool]]) -> None:
    """A re-read becomes records in revision order: waiting ones, missing ones, and removals at free revisions."""
    entries = catch_up("demo", records, room_revision, loaded, waiting)
    assert [(entry.record.user, entry.record.revision, entry.record.part is not None) for entry in entries] == expected
    final = dict(records)
    for entry in entries:
        if entry.record.part is None:
            final.pop(entry.record.user, None)
        else:
            final[entry.record.user] = entry.record
    assert {user: item.revision for user, item in final.items()} == {item.user: item.revision for item in loaded.records}


def test_remote_members_take_newer_versions_and_forget_gone_nodes() -> None:
    """A node's newer list replaces its older one (changes and leaves); an older version is ignored; a gone node's members leave."""
    remote = RemoteMembers()
    alice = {"id": "n1-1", "user": "alice", "playing": False, "bpm": 120}
    assert remote.update("n1", 1, [alice]) == ([alice], [])
    playing = dict(alice, playing=True)
    bob = {"id": "n1-2", "user": "bob", "playing": False, "bpm": None}
    assert remote.update("n1", 3, [playing, bob]) == ([playing, bob], [])
    assert remote.update("n1", 2, []) is None
    assert remote.update("n1", 4, [bob]) == ([], ["n1-1"])
    assert remote.forget(["n1", "n2"]) == ["n1-2"]


# -- two nodes: the protocol tests ------------------------------------------------------------


@pytest.fixture
async def cluster(postgres_dsn: str, redis_url: str, bus_prefix: str) -> AsyncIterator[InProcessCluster]:
    """Two nodes in this process on one fresh database and one Redis prefix."""
    nodes = InProcessCluster(postgres_dsn, redis_url, bus_prefix)
    await nodes.start()
    try:
        yield nodes
    finally:
        await nodes.stop()


@pytest.fixture
async def server(cluster: InProcessCluster) -> InProcessCluster:
    """The protocol tests' server: the two-node cluster, connections alternating between the nodes."""
    return cluster


PROTOCOL_TESTS = [
    "test_snapshot_comes_first_then_the_presence_table",
    "test_update_acks_sender_and_reaches_every_other_client",
    "test_reconnect_gets_snapshot_with_committed_parts_and_own_seq",
    "test_fetch_answers_snapshot",
    "test_replies_come_in_request_order",
    "test_presence_on_join_transport_and_leave",
    "test_presence_is_coalesced_per_room",
    "test_a_second_tab_is_a_second_presence_entry",
    "test_rooms_are_separate",
    "test_bad_input_is_refused_and_everything_keeps_working",
    "test_binary_frame_is_refused",
    "test_anything_but_hello_before_hello_gets_not_joined",
    "test_bad_hello_is_closed_with_1008",
    "test_null_optional_hello_fields_are_absent",
    "test_message_over_64_kib_is_closed_with_1009",
]
"""The tests of test_server.py that need only ``server.ws_url``: they run here unchanged against two nodes."""

for _name in PROTOCOL_TESTS:
    globals()[f"{_name}_on_two_nodes"] = getattr(test_server, _name)

start = test_client.start  # the headless client's fixture

CLIENT_TESTS = [
    "test_edit_while_playing_is_heard_at_the_next_loop_start_after_it_arrives",
    "test_edits_made_while_paused_are_sent_on_play",
    "test_updates_that_arrive_while_paused_apply_at_once",
    "test_dropped_connection_reconnects_and_resends_unconfirmed_edits",
    "test_update_whose_ack_is_lost_is_confirmed_or_resent_after_reconnect",
    "test_missed_sync_window_plays_the_old_loop_and_syncs_before_the_next",
    "test_presence_lists_who_is_here_and_their_transport",
    "test_tempo_change_keeps_the_playhead",
    "test_two_connections_of_one_user_follow_each_other",
    "test_close_waits_for_the_ack_of_an_update_in_flight",
    "test_quit_while_playing_sends_the_last_edits_and_paused_does_not",
]
"""The headless client's tests against a server (each client on the next node, in turn)."""

for _name in CLIENT_TESTS:
    globals()[f"{_name}_on_two_nodes"] = getattr(test_client, _name)


SCENARIOS = load_scenarios()


@pytest.mark.parametrize("scenario", [pytest.param(s, id=s.name) for s in SCENARIOS])
async def test_conformance_scenario_passes_on_two_nodes(cluster: InProcessCluster, scenario: Any) -> None:
    """Each conformance scenario passes with its connections alternating between the two nodes (restarts restart both)."""
    verdict = await run_scenario(cluster.ws_urls[0], scenario, restart=cluster.restart, timeout_seconds=2 * TIME_UNIT,
                                 other_urls=cluster.ws_urls[1:])
    assert verdict.verdict == "pass", f"step {verdict.step}: {verdict.reason}"


# -- two nodes: concurrent writers ------------------------------------------------------------


class Member:
    """A joined client and everything it saw: its snapshot revision, the updates and acks in order."""

    def __init__(self, client: RawClient, user: str, snapshot: dict[str, Any]) -> None:
        self.client = client
        self.user = user
        self.revisions: list[int] = [snapshot["revision"]]
        self.writers: dict[int, str] = {}
        """revision -> the user whose update or ack it was."""
        self.parts: dict[str, Any] = dict(snapshot["doc"]["parts"])
        self.acked: dict[int, tuple[int, Any]] = {}
        """revision -> (seq, part) of this member's own acknowledged updates."""
        self.sent: dict[int, Any] = {}
        self.seq = snapshot["seq"]

    def take(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "update":
            self.revisions.append(message["revision"])
            self.writers[message["revision"]] = message["user"]
            if message["part"] is None:
                self.parts.pop(message["user"], None)
            else:
                self.parts[message["user"]] = message["part"]
        elif kind == "ack":
            self.revisions.append(message["revision"])
            self.writers[message["revision"]] = self.user
            self.acked[message["revision"]] = (message["seq"], self.sent.pop(message["seq"]))
            self.parts[self.user] = self.acked[message["revision"]][1]
        elif kind == "error":
            raise AssertionError(f"{self.user} got an error: {message}")


async def join_member(connect: Connect, url: str, room: str, user: str) -> Member:
    client = await connect(url)
    await client.send({"type": "hello", "v": 1, "room": room, "user": user})
    snapshot = await client.expect("snapshot")
    return Member(client, user, snapshot)


async def database_parts(dsn: str, room: str) -> tuple[int, dict[str, Any]]:
    connection = await asyncpg.connect(dsn)
    try:
        revision = await connection.fetchval("SELECT revision FROM loopsync.rooms WHERE name = $1", room)
        rows = await connection.fetch("SELECT user_name, part::text FROM loopsync.parts WHERE room = $1", room)
    finally:
        await connection.close()
    import json

    return revision or 0, {row["user_name"]: json.loads(row["part"]) for row in rows}


async def read_until_quiet(member: Member, until_revision: int) -> None:
    """Read a member's messages until it has seen ``until_revision`` (presence is passed over)."""
    deadline = asyncio.get_running_loop().time() + 5 * TIME_UNIT
    while member.revisions[-1] < until_revision:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"{member.user} saw revisions up to {member.revisions[-1]}, not {until_revision}"
        member.take(await member.client.next(remaining))


async def test_random_writers_on_both_nodes_see_one_history(cluster: InProcessCluster, connect: Connect, postgres_dsn: str) -> None:
    """Writers on both nodes: every connection sees strictly increasing revisions, every ack reaches every member, all equal PostgreSQL."""
    chooser = random.Random(16)
    members = [await join_member(connect, cluster.nodes[index % 2].ws_url, "busy", f"user{index}") for index in range(6)]
    readers = [asyncio.ensure_future(_keep_reading(member)) for member in members]
    try:
        for _ in range(60):
            member = chooser.choice(members)
            member.seq += chooser.randint(1, 3)
            steps = [chooser.randint(0, 1) for _ in range(16)]
            member.sent[member.seq] = {"sound": "kick", "steps": steps}
            await member.client.send({"type": "update", "seq": member.seq, "part": member.sent[member.seq]})
            if chooser.random() < 0.3:
                await asyncio.sleep(0.005)
        deadline = asyncio.get_running_loop().time() + 5 * TIME_UNIT
        while any(member.sent for member in members):
            assert asyncio.get_running_loop().time() < deadline, "not every update was answered"
            await asyncio.sleep(0.02)
        revision, parts = await database_parts(postgres_dsn, "busy")
        assert revision == sum(len(member.acked) for member in members) == 60
        while any(member.revisions[-1] < revision for member in members):
            assert asyncio.get_running_loop().time() < deadline + 5 * TIME_UNIT, [member.revisions[-1] for member in members]
            await asyncio.sleep(0.02)
    finally:
        for reader in readers:
            reader.cancel()
    repaired = sum(node.cluster.rereads for node in cluster.nodes)  # type: ignore[union-attr]
    for member in members:
        assert member.revisions == sorted(set(member.revisions)), f"{member.user}: revisions not strictly increasing"
        assert member.parts == parts, f"{member.user}'s copy differs from PostgreSQL"
        for other in members:
            if other is member:
                continue
            for revision in other.acked:
                # A re-read (a bus message late by more than GAP_SECONDS on a busy machine) passes on each user's
                # current part, not the ones it replaced: then a later update of the same user stands for it.
                seen = revision in member.writers or (repaired > 0 and any(
                    later > revision and writer == other.user for later, writer in member.writers.items()))
                assert seen, f"{member.user} missed {other.user}'s acknowledged update at revision {revision}"
    if repaired == 0:
        assert all(set(other.acked) <= set(member.writers) for member in members for other in members if other is not member)


async def _keep_reading(member: Member) -> None:
    while True:
        member.take(await member.client.next(3600))


async def test_a_lost_bus_message_is_repaired_from_postgresql(cluster: InProcessCluster, connect: Connect) -> None:
    """A commit whose bus message never arrives reaches the other node's members anyway, in order, from a re-read."""
    alice = await join_member(connect, cluster.nodes[0].ws_url, "lossy", "alice")
    carol = await join_member(connect, cluster.nodes[0].ws_url, "lossy", "carol")
    bob = await join_member(connect, cluster.nodes[1].ws_url, "lossy", "bob")
    bus = cluster.nodes[0].cluster.bus  # type: ignore[union-attr]
    real_publish = bus.publish
    bus.publish = lambda room, payload: None  # type: ignore[method-assign]
    try:
        await alice.client.send({"type": "update", "seq": 1, "part": KICK})
        assert (await alice.client.expect("ack"))["revision"] == 1
    finally:
        bus.publish = real_publish  # type: ignore[method-assign]
    await carol.client.send({"type": "update", "seq": 1, "part": KICK})  # revision 2 shows node 1 the gap
    first = await bob.client.expect("update", timeout=3 * TIME_UNIT)
    second = await bob.client.expect("update")
    assert [(first["user"], first["revision"]), (second["user"], second["revision"])] == [("alice", 1), ("carol", 2)]
    assert cluster.nodes[1].cluster.rereads >= 1  # type: ignore[union-attr]


async def test_members_on_both_nodes_share_one_presence_table(cluster: InProcessCluster, connect: Connect) -> None:
    """A node's presence table holds the other node's members, with ids unique across nodes; leaving is told too."""
    alice = await test_server.joined(connect, cluster, "alice", room="seen", bpm=120)
    bob = await test_server.joined(connect, cluster, "bob", room="seen", bpm=90)
    await alice.wait_presence([("alice", False, 120), ("bob", False, 90)])
    await bob.wait_presence([("alice", False, 120), ("bob", False, 90)])
    assert len(set(alice.presence)) == 2
    await bob.close()
    await alice.wait_presence([("alice", False, 120)])


# -- faults ----------------------------------------------------------------------------------------


async def test_redis_restart_keeps_commits_and_deliveries_without_reconnects(cluster: InProcessCluster, connect: Connect,
                                                                             redis_service: RedisService) -> None:
    """Redis restarts: updates are still committed and acknowledged, the other node's members get them all, nobody reconnects."""
    alice = await join_member(connect, cluster.nodes[0].ws_url, "weather", "alice")
    bob = await join_member(connect, cluster.nodes[1].ws_url, "weather", "bob")
    await alice.client.send({"type": "update", "seq": 1, "part": KICK})
    assert (await alice.client.expect("ack"))["revision"] == 1
    await bob.client.wait_for("update", revision=1)
    await asyncio.to_thread(redis_service.restart)
    for seq in (2, 3):
        await alice.client.send({"type": "update", "seq": seq, "part": KICK})
        assert (await alice.client.expect("ack", timeout=3 * TIME_UNIT))["revision"] == seq
    # Bob's node heard neither (Redis was away): it re-reads the room and passes on alice's part as it is now.
    caught_up = await bob.client.expect("update", timeout=5 * TIME_UNIT)
    if caught_up["revision"] == 2:
        caught_up = await bob.client.expect("update", timeout=5 * TIME_UNIT)
    assert (caught_up["user"], caught_up["seq"], caught_up["revision"]) == ("alice", 3, 3)
    await bob.client.send({"type": "update", "seq": 1, "part": KICK})
    assert (await bob.client.expect("ack", timeout=3 * TIME_UNIT))["revision"] == 4
    assert (await alice.client.wait_for("update", timeout=5 * TIME_UNIT, revision=4))["user"] == "bob"
    assert not alice.client.ws.closed and not bob.client.ws.closed


async def test_postgresql_down_answers_unavailable_and_service_resumes(cluster: InProcessCluster, connect: Connect,
                                                                         postgres: PostgresService, postgres_dsn: str) -> None:
    """PostgreSQL stopped: an update is answered unavailable and not applied anywhere; once it is back, updates commit again."""
    alice = await join_member(connect, cluster.nodes[0].ws_url, "outage", "alice")
    bob = await join_member(connect, cluster.nodes[1].ws_url, "outage", "bob")
    await alice.client.send({"type": "update", "seq": 1, "part": KICK})
    assert (await alice.client.expect("ack"))["revision"] == 1
    await bob.client.wait_for("update", revision=1)
    await asyncio.to_thread(postgres.stop)
    try:
        await alice.client.send({"type": "update", "seq": 2, "part": {"sound": "hat", "steps": [1] * 16}})
        error = await alice.client.expect("error", timeout=5 * TIME_UNIT)
        assert (error["code"], error.get("seq")) == ("unavailable", 2)
        await alice.client.send({"type": "fetch"})
        snapshot = await alice.client.expect("snapshot")
        assert snapshot["revision"] == 1 and snapshot["doc"]["parts"]["alice"] == KICK
    finally:
        await asyncio.to_thread(postgres.start)
    await alice.client.send({"type": "update", "seq": 2, "part": KICK})
    assert (await alice.client.expect("ack", timeout=5 * TIME_UNIT))["revision"] == 2
    assert (await bob.client.wait_for("update", timeout=5 * TIME_UNIT))["revision"] == 2
    assert await database_parts(postgres_dsn, "outage") == (2, {"alice": KICK})


@pytest.fixture
def node_process(tmp_path: Path, postgres_dsn: str, redis_url: str) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: ``node_process(name, workers=1)`` starts ``loopsync serve`` as a cluster node; all are gone after the test."""
    started: list[NodeProcess] = []

    def _start(name: str, workers: int = 1) -> NodeProcess:
        process = NodeProcess(tmp_path, name, postgres_dsn, redis_url, workers=workers)
        started.append(process)
        return process.start()

    yield _start
    for process in started:
        process.close()


async def test_a_killed_node_loses_nothing_acknowledged(node_process: Callable[..., NodeProcess], connect: Connect, postgres_dsn: str) -> None:
    """kill -9 one node while its client edits: the client reconnects to the other node, resends what was not confirmed, nothing acked is lost."""
    doomed = node_process("doomed")
    survivor = node_process("survivor")
    watcher = await join_member(connect, survivor.ws_url, "failover", "watcher")
    writer = await join_member(connect, doomed.ws_url, "failover", "writer")
    await writer.client.wait_presence([("watcher", False, None), ("writer", False, None)], timeout=3 * TIME_UNIT)
    acked: dict[int, int] = {}
    unconfirmed: dict[int, Any] = {}
    for seq in range(1, 41):
        unconfirmed[seq] = {"sound": "kick", "steps": [seq % 2] * 15 + [1]}
        await writer.client.send({"type": "update", "seq": seq, "part": unconfirmed[seq]})
    for _ in range(10):
        ack = await writer.client.expect("ack")
        acked[ack["seq"]] = ack["revision"]
        unconfirmed.pop(ack["seq"])
    doomed.kill()
    # Whatever else was acknowledged before the kill arrives before the close.
    while True:
        try:
            message = await writer.client.next(TIME_UNIT)
        except Exception:
            break
        if message.get("type") == "ack":
            acked[message["seq"]] = message["revision"]
            unconfirmed.pop(message["seq"], None)
    again = await join_member(connect, survivor.ws_url, "failover", "writer")
    assert again.seq >= max(acked)  # every acknowledged update survived the node
    pending = {seq: part for seq, part in unconfirmed.items() if seq > again.seq}
    for seq, part in sorted(pending.items()):
        await again.client.send({"type": "update", "seq": seq, "part": part})
    for seq in sorted(pending):
        assert (await again.client.expect("ack", timeout=3 * TIME_UNIT))["seq"] == seq
    revision, parts = await database_parts(postgres_dsn, "failover")
    assert parts["writer"] == {"sound": "kick", "steps": [40 % 2] * 15 + [1]}
    update = await watcher.client.wait_for("update", timeout=5 * TIME_UNIT, revision=revision)
    assert update["seq"] == 40
    await watcher.client.wait_presence([("watcher", False, None), ("writer", False, None)], timeout=12 * TIME_UNIT)


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--store", "postgresql://loopsync@127.0.0.1/loopsync"], "goes with --bus redis://"),
        (["--bus", "redis://127.0.0.1:6379"], "--bus is for cluster nodes"),
        (["--store", "sqlite", "--workers", "2"], "--workers 2 needs cluster mode"),
        (["--store", "mysql://x"], "--store must be sqlite, memory or a postgresql:// URL"),
        (["--store", "postgresql://x@h/db", "--bus", "http://h"], "--bus must be a redis:// URL"),
        (["--store", "postgresql://x@h/db", "--bus", "redis://h", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_serve_usage_errors_exit_2(args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Cluster options that do not go together are a usage error (exit 2) that says what to give."""
    from loopsync.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", *args])
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def test_a_node_without_its_database_says_why_and_exits_1(redis_url: str) -> None:
    """A node whose PostgreSQL cannot be reached does not start: one sentence, exit 1."""
    import subprocess
    import sys

    from services import free_port

    result = subprocess.run([sys.executable, "-m", "loopsync", "serve", "--port", "0", "--store",
                             f"postgresql://nobody@127.0.0.1:{free_port()}/none", "--bus", redis_url],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "loopsync cannot start: cannot connect to PostgreSQL" in result.stderr


async def test_workers_share_one_port_and_one_history(node_process: Callable[..., NodeProcess], connect: Connect) -> None:
    """--workers 2 prints one URL; connections land on both workers, an update on one reaches the members on the other, a dead worker is replaced."""
    served = node_process("workers", workers=2)
    assert "(2 workers" in served.banner
    members = [await join_member(connect, served.ws_url, "shared", f"user{index:02}") for index in range(16)]
    nodes = set()
    for member in members:
        await member.client.send({"type": "fetch"})
        nodes.add((await member.client.expect("snapshot"))["id"].split("-")[0])
    assert len(nodes) == 2, "every connection went to one worker"
    await members[0].client.send({"type": "update", "seq": 1, "part": KICK})
    assert (await members[0].client.expect("ack"))["revision"] == 1
    for member in members[1:]:
        assert (await member.client.wait_for("update", timeout=3 * TIME_UNIT))["user"] == "user00"
    # A worker that dies is started again; meanwhile the other one serves.
    assert served.process is not None
    workers = _children(served.process.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = asyncio.get_running_loop().time() + 10 * TIME_UNIT
    while len(set(_children(served.process.pid)) - {workers[0]}) < 2:
        assert asyncio.get_running_loop().time() < deadline, "the dead worker was not replaced"
        await asyncio.sleep(0.1)
    late = await join_member(connect, served.ws_url, "shared", "late")
    assert late.parts["user00"] == KICK
    assert served.stop() == 0
