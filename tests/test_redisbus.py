"""RedisBus against a real Redis: order, subscriptions, two nodes, a Redis restart, presence that expires with its node."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from typing import AsyncIterator, Awaitable, Callable

import pytest

from loopsync.redisbus import BusError, BusUnavailable, RedisBus
from serve_process import TIME_UNIT
from services import RedisService, free_port

TTL_SECONDS = 1.5
"""Presence expiry in these tests (the default is 6 s): a dead node's entries go within 1.5 s, its on_nodes_gone within 2 s."""


class Node:
    """A bus plus what its callbacks saw, with events to wait on."""

    def __init__(self, url: str, node_id: str, prefix: str) -> None:
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self.resubscribed = 0
        self.gone: list[frozenset[str]] = []
        self.changed = asyncio.Event()
        self.bus = RedisBus(url, node_id, prefix=prefix, presence_ttl_seconds=TTL_SECONDS, ping_interval_seconds=0.5,
                            on_message=self._message, on_resubscribed=self._resubscribed, on_nodes_gone=self._gone)

    def _message(self, room: str, payload: bytes) -> None:
        self.messages[room].append(payload)
        self.changed.set()

    def _resubscribed(self) -> None:
        self.resubscribed += 1
        self.changed.set()

    def _gone(self, nodes: frozenset[str]) -> None:
        self.gone.append(nodes)
        self.changed.set()

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 3 * TIME_UNIT) -> None:
        """Wait until ``condition()`` holds, re-checking whenever a callback fires (and every 50 ms, for counters no callback announces)."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.bus.node_id}: {what} did not happen in {timeout:.0f} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.05))
            except asyncio.TimeoutError:
                pass


@pytest.fixture
async def nodes(redis_url: str, bus_prefix: str) -> AsyncIterator[Callable[[str], Awaitable[Node]]]:
    """Factory: ``await nodes("a")`` opens a bus named ``a`` on this test's prefix; all are closed at teardown."""
    opened: list[Node] = []

    async def open_node(node_id: str) -> Node:
        node = Node(redis_url, node_id, bus_prefix)
        await node.bus.open()
        opened.append(node)
        return node

    yield open_node
    for node in opened:
        await node.bus.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 3 * TIME_UNIT) -> None:
    """Re-check a condition that no callback announces (Redis state) every 50 ms until it holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def test_a_node_gets_its_own_messages_in_publish_order(nodes: Callable[[str], Awaitable[Node]]) -> None:
    """1,000 messages published back to back arrive, on the publishing node too, once each and in order."""
    node = await nodes("a")
    await asyncio.wait_for(node.bus.subscribe("demo"), TIME_UNIT)
    sent = [b"m%d" % index for index in range(1000)]
    for payload in sent:
        node.bus.publish("demo", payload)
    await node.until(lambda: len(node.messages["demo"]) >= len(sent), "1,000 messages")
    assert node.messages["demo"] == sent
    assert node.bus.published == 1000 and node.bus.dropped == 0


async def test_two_nodes_see_each_others_messages_in_each_publishers_order(nodes: Callable[[str], Awaitable[Node]]) -> None:
    """Messages of two nodes interleave, but each node's come in the order it published them, to both nodes."""
    a, b = await nodes("a"), await nodes("b")
    await asyncio.gather(a.bus.subscribe("demo"), b.bus.subscribe("demo"))
    for index in range(200):
        a.bus.publish("demo", b"a%d" % index)
        b.bus.publish("demo", b"b%d" % index)
    for node in (a, b):
        await node.until(lambda node=node: len(node.messages["demo"]) >= 400, "400 messages")  # type: ignore[misc]
        got = node.messages["demo"]
        assert len(got) == 400
        assert [payload for payload in got if payload.startswith(b"a")] == [b"a%d" % index for index in range(200)]
        assert [payload for payload in got if payload.startswith(b"b")] == [b"b%d" % index for index in range(200)]


async def test_only_subscribed_rooms_are_delivered_and_subscribe_is_idempotent(nodes: Callable[[str], Awaitable[Node]]) -> None:
    """A room never subscribed, or unsubscribed, delivers nothing; subscribing twice delivers once."""
    a, b = await nodes("a"), await nodes("b")
    await asyncio.gather(a.bus.subscribe("one"), a.bus.subscribe("one"), a.bus.subscribe("two"))
    b.bus.publish("elsewhere", b"x")
    b.bus.publish("one", b"1")
    b.bus.publish("two", b"2")
    await a.until(lambda: a.messages["two"] == [b"2"], "the message of room two")
    assert a.messages["one"] == [b"1"] and "elsewhere" not in a.messages
    a.bus.unsubscribe("one")
    a.bus.unsubscribe("one")
    b.bus.publish("one", b"after")
    b.bus.publish("two", b"marker")
    await a.until(lambda: a.messages["two"][-1:] == [b"marker"], "the marker")
    assert a.messages["one"] == [b"1"]
    assert a.bus.rooms == {"two"}
    # Subscribing again works, and the future says when.
    await asyncio.wait_for(a.bus.subscribe("one"), TIME_UNIT)
    b.bus.publish("one", b"again")
    await a.until(lambda: a.messages["one"][-1:] == [b"again"], "the message after subscribing again")


async def test_a_redis_restart_resubscribes_and_delivery_resumes(redis_service: RedisService, nodes: Callable[[str], Awaitable[Node]]) -> None:
    """Redis killed and started again on its port: publishing never raises meanwhile, both nodes report on_resubscribed, and messages flow again."""
    a, b = await nodes("a"), await nodes("b")
    await asyncio.gather(a.bus.subscribe("demo"), b.bus.subscribe("demo"))
    a.bus.publish("demo", b"before")
    await b.until(lambda: b.messages["demo"] == [b"before"], "the first message")
    redis_service.kill()
    a.bus.publish("demo", b"lost")  # never raises; counted as dropped
    await a.until(lambda: a.bus.dropped >= 1, "the publish failure")
    await asyncio.to_thread(redis_service.start)
    await a.until(lambda: a.resubscribed >= 1, "a's resubscription", timeout=5 * TIME_UNIT)
    await b.until(lambda: b.resubscribed >= 1, "b's resubscription", timeout=5 * TIME_UNIT)
    a.bus.publish("demo", b"after")
    await b.until(lambda: b.messages["demo"][-1:] == [b"after"], "a message after the restart")
    assert b"lost" not in b.messages["demo"]
    assert a.bus.resubscriptions == 1


async def test_a_silent_redis_is_detected_and_delivery_resumes_when_it_answers(redis_service: RedisService, nodes: Callable[[str], Awaitable[Node]]) -> None:
    """Redis frozen with its connections open: publishing does not hang, the listener gives the connection up after three quiet pings, and resubscribes once Redis answers."""
    a, b = await nodes("a"), await nodes("b")
    await asyncio.gather(a.bus.subscribe("demo"), b.bus.subscribe("demo"))
    redis_service.pause()
    try:
        a.bus.publish("demo", b"into the void")
        await a.until(lambda: a.bus.dropped >= 1, "the publish timing out", timeout=5 * TIME_UNIT)
        await b.until(lambda: b.bus.connections_lost >= 1, "the silence being noticed", timeout=5 * TIME_UNIT)
    finally:
        redis_service.resume()
    await b.until(lambda: b.resubscribed >= 1, "b's resubscription", timeout=5 * TIME_UNIT)
    a.bus.publish("demo", b"back")
    await b.until(lambda: b.messages["demo"][-1:] == [b"back"], "a message after the silence")


async def test_presence_put_replace_and_drop(nodes: Callable[[str], Awaitable[Node]]) -> None:
    """Each node's entries of a room are one value that put replaces and drop removes; every node reads all of them."""
    a, b = await nodes("a"), await nodes("b")
    await a.bus.put_presence("demo", b"alice")
    await b.bus.put_presence("demo", b"bob")
    await a.bus.put_presence("demo", b"alice,carol")
    assert await b.bus.get_presence("demo") == {"a": b"alice,carol", "b": b"bob"}
    await a.bus.drop_presence("demo")
    assert await a.bus.get_presence("demo") == {"b": b"bob"}
    assert await a.bus.get_presence("elsewhere") == {}


async def test_a_closed_node_leaves_presence_at_once(nodes: Callable[[str], Awaitable[Node]]) -> None:
    """A node that closes its bus withdraws its entries and the others hear it in on_nodes_gone."""
    a, b = await nodes("a"), await nodes("b")
    await a.bus.put_presence("demo", b"alice")
    await b.bus.put_presence("demo", b"bob")
    await eventually(lambda: _alive(b.bus, "a"), "b seeing a alive")
    await a.bus.close()
    assert await b.bus.get_presence("demo") == {"b": b"bob"}
    await b.until(lambda: frozenset({"a"}) in b.gone, "on_nodes_gone for a")


async def _alive(bus: RedisBus, node_id: str) -> bool:
    return node_id in bus.live_nodes


_DYING_NODE = textwrap.dedent("""
    import asyncio, sys
    from loopsync.redisbus import RedisBus

    async def main():
        bus = RedisBus(sys.argv[1], "doomed", prefix=sys.argv[2], presence_ttl_seconds=float(sys.argv[3]))
        await bus.open()
        await bus.put_presence("demo", b"dave")
        print("ready", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


async def test_the_presence_of_a_killed_node_expires_within_its_ttl(redis_url: str, bus_prefix: str, nodes: Callable[[str], Awaitable[Node]]) -> None:
    """A node process killed with SIGKILL: its entries stop counting within the TTL and the others get on_nodes_gone within about 4/3 of it."""
    watcher = await nodes("watcher")
    process = subprocess.Popen([sys.executable, "-c", _DYING_NODE, redis_url, bus_prefix, str(TTL_SECONDS)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 5 * TIME_UNIT) == "ready\n"
        assert await watcher.bus.get_presence("demo") == {"doomed": b"dave"}
        await eventually(lambda: _alive(watcher.bus, "doomed"), "the watcher's heartbeat seeing the node")
    finally:
        process.kill()
        process.wait()
    killed_at = time.monotonic()
    await eventually(lambda: _no_presence(watcher.bus), "the dead node's entries expiring", timeout=TTL_SECONDS + 2 * TIME_UNIT)
    assert time.monotonic() - killed_at <= TTL_SECONDS + TIME_UNIT / 2
    await watcher.until(lambda: frozenset({"doomed"}) in watcher.gone, "on_nodes_gone for the dead node", timeout=2 * TTL_SECONDS + TIME_UNIT)
    assert time.monotonic() - killed_at <= TTL_SECONDS * 4 / 3 + TIME_UNIT / 2


async def _no_presence(bus: RedisBus) -> bool:
    return await bus.get_presence("demo") == {}


async def test_presence_is_written_again_after_redis_restarts_empty(redis_service: RedisService, nodes: Callable[[str], Awaitable[Node]]) -> None:
    """Redis restarted without persistence loses every key; each node writes its presence again by itself."""
    a, b = await nodes("a"), await nodes("b")
    await a.bus.put_presence("demo", b"alice")
    await asyncio.to_thread(redis_service.restart)
    await eventually(lambda: _presence_is(b.bus, {"a": b"alice"}), "a's presence coming back", timeout=TTL_SECONDS + 3 * TIME_UNIT)


async def _presence_is(bus: RedisBus, expected: dict[str, bytes]) -> bool:
    try:
        return await bus.get_presence("demo") == expected
    except BusUnavailable:
        return False


async def test_presence_reads_fail_clearly_while_redis_is_down(redis_service: RedisService, nodes: Callable[[str], Awaitable[Node]]) -> None:
    """get_presence raises BusUnavailable while Redis is down; put_presence does not raise, and its value is written once Redis is back."""
    a = await nodes("a")
    redis_service.kill()
    with pytest.raises(BusUnavailable):
        await a.bus.get_presence("demo")
    await a.bus.put_presence("demo", b"alice")  # kept, written at the next heartbeat that reaches Redis
    await asyncio.to_thread(redis_service.start)
    await eventually(lambda: _presence_is(a.bus, {"a": b"alice"}), "the presence put while Redis was down", timeout=TTL_SECONDS + 3 * TIME_UNIT)


async def test_open_fails_promptly_when_redis_is_down() -> None:
    """A bus opened on a port where nothing listens raises BusUnavailable within its timeout."""
    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0", "a", timeout_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(BusUnavailable, match="cannot reach Redis"):
        await bus.open()
    assert time.monotonic() - started < 3 * TIME_UNIT


def test_node_ids_are_checked() -> None:
    """A node id that cannot be part of a Redis key is refused with a message naming it."""
    with pytest.raises(BusError, match="node id must be 1-64 of"):
        RedisBus("redis://127.0.0.1:1/0", "a b")
    with pytest.raises(BusError, match="prefix"):
        RedisBus("redis://127.0.0.1:1/0", "a", prefix="")
