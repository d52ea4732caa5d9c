"""The bus between the nodes of a loopsync cluster: Redis Pub/Sub for updates, Redis keys for presence.

A node publishes what it committed on the room's channel; every node
subscribed to that room (its own included) gets it in ``on_message``. The bus
promises order and nothing more: the messages one node publishes arrive in
the order it published them, each at most once, but a message can be lost
(Redis restarted, a connection dropped, Redis too slow). The node's gap
detection (revisions) repairs that from the store of record; the bus says
when to look harder with ``on_resubscribed``.

Use::

    bus = RedisBus("redis://127.0.0.1:6379/0", node_id, on_message=deliver, on_resubscribed=reread_rooms,
                   on_nodes_gone=forget_nodes)
    await bus.open()
    await bus.subscribe("demo")                 # the returned future is done once Redis confirmed
    bus.publish("demo", payload)                # fire and forget, in order
    await bus.put_presence("demo", entries)     # this node's presence entries of the room
    await bus.get_presence("demo")              # {node_id: entries} of the nodes alive
    await bus.close()

Redis layout (``P`` is the prefix, ``loopsync`` by default):

- channel ``P:room:ROOM``: the room's messages (payloads are opaque bytes);
- hash ``P:presence:ROOM``: field = node id, value = that node's presence
  payload for the room;
- sorted set ``P:nodes``: node id -> the Redis-clock time (ms) until which
  the node counts as alive; each bus renews its own every third of
  :attr:`RedisBus.presence_ttl_seconds` (the heartbeat);
- set ``P:node-rooms:NODE``: the rooms where NODE has presence, so that the
  node's entries can be removed once it is gone.

Presence entries need no refresh from the caller: a node's entries count
while its heartbeat does. When a node dies, its entries stop counting at
most ``presence_ttl_seconds`` (6 s) after its last heartbeat, and every other
bus calls ``on_nodes_gone`` at its next heartbeat after that (so within
about 8 s); one of them deletes the entries. A bus whose own entry expired
(its process stalled, or Redis restarted empty) writes its presence again at
the next heartbeat.

Errors::

    BusError              the bus was used wrongly (not open, bad name)
    └── BusUnavailable    Redis cannot be reached (only ``open`` and ``get_presence`` raise it)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""Node ids and prefixes: they become part of Redis keys."""

log = logging.getLogger("loopsync.redisbus")

OnMessage = Callable[[str, bytes], None]
OnResubscribed = Callable[[], None]
OnNodesGone = Callable[[frozenset[str]], None]

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return {added, redis.call('ZRANGE', KEYS[1], 0, -1), dead}
"""
"""Renew this node (ARGV[1]) for ARGV[2] ms of Redis's clock and remove the nodes that expired.

Returns whether this node had to be added again (it had expired, or Redis
lost it), the nodes alive, and the nodes this call removed: one script, so
only one bus ever removes a given node and cleans up after it."""


class BusError(Exception):
    """The bus cannot be used as asked."""


class BusUnavailable(BusError):
    """Redis cannot be reached right now."""


class _Problems:
    """Logs a kind of failure at most once per ``interval_seconds``, with how many were not logged."""

    def __init__(self, interval_seconds: float = 5.0) -> None:
        self.interval_seconds = interval_seconds
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, kind: str, problem: BaseException | str) -> None:
        now = time.monotonic()
        if now - self._last_logged.get(kind, -self.interval_seconds) < self.interval_seconds:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        self._last_logged[kind] = now
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.warning("redis bus: %s failed: %s%s", kind, problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}", more)


def _ignore_message(room: str, payload: bytes) -> None:
    pass


def _ignore_resubscribed() -> None:
    pass


def _ignore_nodes_gone(nodes: frozenset[str]) -> None:
    pass


class RedisBus:
    """One node's connection to the cluster's Redis: publish, subscribe, presence.

    ``url`` is a redis-py URL (``redis://HOST:PORT/DB``); ``node_id`` names
    this node among all nodes of the cluster (1-64 of ``A-Z a-z 0-9 _ . -``,
    unique: a host name and process id, say). Callbacks run on the event loop:

    - ``on_message(room, payload)``: a message on a subscribed room's
      channel, this node's own included, in the order Redis delivers them;
    - ``on_resubscribed()``: the subscription connection was lost and is
      back, and every subscribed room is subscribed again: messages may have
      been missed in between, for any room;
    - ``on_nodes_gone(node_ids)``: nodes whose heartbeat stopped (or that
      closed their bus): their presence entries no longer count.

    The bus reconnects by itself (backoff from 50 ms to 2 s) and never needs
    a restart of the process.
    """

    def __init__(self, url: str, node_id: str, *, on_message: OnMessage = _ignore_message,
                 on_resubscribed: OnResubscribed = _ignore_resubscribed, on_nodes_gone: OnNodesGone = _ignore_nodes_gone,
                 prefix: str = "loopsync", presence_ttl_seconds: float = 6.0, timeout_seconds: float = 2.0,
                 ping_interval_seconds: float = 1.0, max_queued_messages: int = 10_000) -> None:
        for kind, value in (("node id", node_id), ("prefix", prefix)):
            if not NAME_PATTERN.fullmatch(value):
                raise BusError(f"{kind} must be 1-64 of A-Z a-z 0-9 _ . -, got {value[:80]!r}")
        self.url = url
        self.node_id = node_id
        self.on_message = on_message
        self.on_resubscribed = on_resubscribed
        self.on_nodes_gone = on_nodes_gone
        self.prefix = prefix
        self.presence_ttl_seconds = presence_ttl_seconds
        self.timeout_seconds = timeout_seconds
        self.ping_interval_seconds = ping_interval_seconds
        self.max_queued_messages = max_queued_messages
        self._channel_prefix = f"{prefix}:room:".encode()
        self._nodes_key = f"{prefix}:nodes"
        self._node_rooms_key = f"{prefix}:node-rooms:{node_id}"
        self._client: Any = None
        self._heartbeat_script: Any = None
        self._problems = _Problems()
        self._closing = False
        # Publishing: one task sends what is queued, in order, one pipeline per batch.
        self._outbox: list[tuple[bytes, bytes]] = []
        self._publisher: asyncio.Task[None] | None = None
        self.published = 0
        self.dropped = 0
        """Messages that could not be published (Redis down, or the queue was full)."""
        # Subscribing: the listener task owns the Pub/Sub connection (it alone reads and writes it).
        self._rooms: set[str] = set()
        """Rooms the caller wants (subscribe minus unsubscribe)."""
        self._sent: set[str] = set()
        """Rooms SUBSCRIBEd on the current connection (and not UNSUBSCRIBEd since)."""
        self._outstanding: dict[str, int] = {}
        """Per room, the SUBSCRIBE/UNSUBSCRIBE commands Redis has not confirmed yet."""
        self._active: set[str] = set()
        """Rooms whose subscription Redis has confirmed on the current connection."""
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._changed = False
        self._listener: asyncio.Task[None] | None = None
        self._reading = False
        self._waking = False
        self.resubscriptions = 0
        """Times ``on_resubscribed`` was called."""
        self.connections_lost = 0
        """Pub/Sub connections that failed (or could not be made)."""
        # Presence: what this node last put, by room, to write again when Redis lost it.
        self._presence: dict[str, bytes] = {}
        self._presence_dirty = False
        self._presence_lock = asyncio.Lock()
        self._live_nodes: set[str] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeat_now = asyncio.Event()
        self._beats = 0

    # -- life cycle -------------------------------------------------------

    async def open(self) -> None:
        """Connect, announce this node (first heartbeat) and start listening; raise :class:`BusUnavailable` if Redis cannot be reached."""
        if self._client is not None:
            return
        self._closing = False
        self._client = redis_asyncio.Redis.from_url(
            self.url, socket_timeout=self.timeout_seconds, socket_connect_timeout=self.timeout_seconds,
            # No retries inside redis-py: a failed command fails, the bus decides (it drops, logs, reconnects).
            retry=Retry(NoBackoff(), 0, supported_errors=()), health_check_interval=0,
            # RESP2: with hiredis (the cluster extra installs it) a received message costs about 13 us of
            # CPU, against 16 us with RESP3, and 30 / 42 us with redis-py's Python parsers.
            protocol=2)
        self._heartbeat_script = self._client.register_script(_HEARTBEAT)
        try:
            await self._heartbeat()
        except (RedisError, OSError) as exc:
            await self._client.aclose()
            self._client = None
            raise BusUnavailable(f"cannot reach Redis at {self.url}: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._listener = loop.create_task(self._listen_forever(), name=f"loopsync-bus-listener-{self.node_id}")
        self._heartbeat_task = loop.create_task(self._heartbeat_forever(), name=f"loopsync-bus-heartbeat-{self.node_id}")

    async def close(self) -> None:
        """Send what is queued (for up to the timeout), withdraw this node and its presence, and disconnect."""
        if self._client is None:
            return
        if self._publisher is not None:
            await asyncio.wait([self._publisher], timeout=self.timeout_seconds)
        self._closing = True  # the tasks' loops end on it, should a cancellation get lost
        tasks = [task for task in (self._listener, self._heartbeat_task, self._publisher) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout_seconds)
        self._listener = self._heartbeat_task = self._publisher = None
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()
        try:
            pipeline = self._client.pipeline(transaction=False)
            for room in self._presence:
                pipeline.hdel(self._presence_key(room), self.node_id)
            pipeline.delete(self._node_rooms_key)
            pipeline.zrem(self._nodes_key, self.node_id)
            await pipeline.execute()
        except (RedisError, OSError) as exc:
            log.info("redis bus: could not withdraw node %s at close: %s", self.node_id, exc)
        self._presence.clear()
        self._rooms.clear()
        self._sent.clear()
        self._active.clear()
        self._outstanding.clear()
        client, self._client = self._client, None
        await client.aclose()

    # -- publishing -------------------------------------------------------

    def publish(self, room: str, payload: bytes) -> None:
        """Queue ``payload`` for the room's channel and return at once; never raises.

        One task sends the queue in order, one pipeline (one round trip) per
        batch. A batch that fails is dropped and logged (at most once per 5 s
        per kind of failure); more than ``max_queued_messages`` waiting drops
        the oldest. A dropped message is a gap the receivers repair.
        """
        if self._client is None or self._closing:
            self.dropped += 1
            self._problems.report("publish", "the bus is not open")
            return
        if len(self._outbox) >= self.max_queued_messages:
            del self._outbox[0]
            self.dropped += 1
            self._problems.report("publish", f"more than {self.max_queued_messages} messages waiting: the oldest dropped")
        self._outbox.append((self._channel_prefix + room.encode(), payload))
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(self._publish_queued())

    async def _publish_queued(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                try:
                    if len(batch) == 1:
                        await self._client.publish(*batch[0])
                    else:
                        pipeline = self._client.pipeline(transaction=False)
                        for channel, payload in batch:
                            pipeline.publish(channel, payload)
                        await pipeline.execute()
                    self.published += len(batch)
                except (RedisError, OSError) as exc:
                    self.dropped += len(batch)
                    self._problems.report("publish", exc)
        finally:
            self._publisher = None

    # -- subscribing ------------------------------------------------------

    def subscribe(self, room: str) -> asyncio.Future[None]:
        """Ask for the room's messages; idempotent. The future is done once Redis has confirmed the subscription.

        Awaiting it is optional (it is cancelled if the room is unsubscribed
        or the bus closed first). Read the room's state from the store only
        after it is done, so that nothing committed in between is missed.
        """
        self._require_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if room not in self._rooms:
            self._rooms.add(room)
            self._wake()
        if room in self._active and room in self._sent and not self._outstanding.get(room):
            future.set_result(None)  # in force, and no UNSUBSCRIBE sent since
        else:
            self._waiters.setdefault(room, []).append(future)
        return future

    def unsubscribe(self, room: str) -> None:
        """Stop the room's messages; idempotent. ``on_message`` is not called for the room from now on."""
        self._require_open()
        for waiter in self._waiters.pop(room, []):
            waiter.cancel()
        if room in self._rooms:
            self._rooms.discard(room)
            self._wake()

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms subscribed (or being subscribed)."""
        return frozenset(self._rooms)

    def _wake(self) -> None:
        """Have the listener send the changed subscriptions now (it may be waiting for a message)."""
        self._changed = True
        if self._reading and not self._waking and self._listener is not None:
            self._waking = True
            self._listener.cancel()  # caught in _read: redis-py's reader resumes where it stopped

    async def _listen_forever(self) -> None:
        """One Pub/Sub connection after another: every connection after the first is a resubscription."""
        failures = 0
        resubscribing = False
        loop = asyncio.get_running_loop()
        while not self._closing:
            pubsub = self._client.pubsub()
            started_at = loop.time()
            try:
                await self._listen(pubsub, resubscribing)
            except Exception as exc:
                self.connections_lost += 1
                self._problems.report("subscription", exc)
            finally:
                resubscribing = True
                self._sent.clear()
                self._active.clear()
                self._outstanding.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # disconnects without waiting for the peer
            failures = 0 if loop.time() - started_at > 10.0 else failures + 1
            await asyncio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0))

    async def _listen(self, pubsub: Any, resubscribing: bool) -> None:
        """Run one Pub/Sub connection (a redis-py ``PubSub``, partly untyped) until it fails (then raise)."""
        loop = asyncio.get_running_loop()
        await pubsub.connect()
        self._changed = True
        barrier = resubscribing  # after the re-SUBSCRIBEs, a PING: its PONG means they are all in force
        heard_at = pinged_at = loop.time()
        while not self._closing:
            if self._changed:
                self._changed = False
                await self._send_changes(pubsub)
                if barrier:
                    await pubsub.ping()
                    pinged_at = loop.time()
            message = await self._read(pubsub)
            now = loop.time()
            if message is None:
                if now - heard_at > 3 * self.ping_interval_seconds:
                    raise RedisError(f"no answer from Redis for {now - heard_at:.1f} s")
                if now - pinged_at >= self.ping_interval_seconds and now - heard_at >= self.ping_interval_seconds:
                    await pubsub.ping()
                    pinged_at = now
                continue
            if message is _WOKEN:
                continue
            heard_at = now
            kind = message["type"]
            if kind == "message":
                channel: bytes = message["channel"]
                room = channel[len(self._channel_prefix):].decode()
                if room in self._rooms:
                    try:
                        self.on_message(room, message["data"])
                    except Exception:
                        log.exception("error in the bus's on_message")
            elif kind in ("subscribe", "unsubscribe"):
                self._confirmed(message["channel"][len(self._channel_prefix):].decode())
            elif kind == "pong" and barrier:
                barrier = False
                self.resubscriptions += 1
                try:
                    self.on_resubscribed()
                except Exception:
                    log.exception("error in the bus's on_resubscribed")
                self._heartbeat_now.set()  # Redis may have restarted empty: presence again, now

    async def _read(self, pubsub: Any) -> Any:
        """The next message, ``None`` after a quiet ping interval, or :data:`_WOKEN` when :meth:`_wake` interrupted the wait."""
        self._reading = True
        try:
            return await pubsub.get_message(timeout=self.ping_interval_seconds)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closing or not self._waking or task is None:
                raise
            task.uncancel()
            return _WOKEN
        finally:
            self._reading = False
            self._waking = False

    async def _send_changes(self, pubsub: Any) -> None:
        new = sorted(self._rooms - self._sent)
        gone = sorted(self._sent - self._rooms)
        if new:
            self._sent.update(new)
            for room in new:
                self._outstanding[room] = self._outstanding.get(room, 0) + 1
            await pubsub.subscribe(*(self._channel_prefix + room.encode() for room in new))
        if gone:
            self._sent.difference_update(gone)
            for room in gone:
                self._outstanding[room] = self._outstanding.get(room, 0) + 1
            await pubsub.unsubscribe(*(self._channel_prefix + room.encode() for room in gone))

    def _confirmed(self, room: str) -> None:
        """Redis confirmed a SUBSCRIBE or UNSUBSCRIBE of ``room``; once all are, the last one sent holds."""
        outstanding = self._outstanding.get(room, 0) - 1
        if outstanding > 0:
            self._outstanding[room] = outstanding
            return
        self._outstanding.pop(room, None)
        if room in self._sent:
            self._active.add(room)
            for waiter in self._waiters.pop(room, []):
                if not waiter.done():
                    waiter.set_result(None)
        else:
            self._active.discard(room)

    # -- presence ---------------------------------------------------------

    def _presence_key(self, room: str) -> str:
        return f"{self.prefix}:presence:{room}"

    async def put_presence(self, room: str, payload: bytes) -> None:
        """Store this node's presence entries of ``room`` (replacing the last ones); never raises.

        They count for as long as this node's heartbeat does. If Redis
        cannot be reached the entries are kept here and written at the next
        successful heartbeat.
        """
        self._require_open()
        self._presence[room] = payload
        await self._write_presence({room: payload}, ())

    async def drop_presence(self, room: str) -> None:
        """Remove this node's presence entries of ``room`` (no member left here); never raises."""
        self._require_open()
        self._presence.pop(room, None)
        await self._write_presence({}, (room,))

    async def _write_presence(self, entries: dict[str, bytes], dropped: tuple[str, ...]) -> None:
        async with self._presence_lock:  # writes reach Redis in call order
            try:
                pipeline = self._client.pipeline(transaction=False)
                for room, payload in entries.items():
                    pipeline.hset(self._presence_key(room), self.node_id, payload)
                for room in dropped:
                    pipeline.hdel(self._presence_key(room), self.node_id)
                if entries:
                    pipeline.sadd(self._node_rooms_key, *entries)
                if dropped:
                    pipeline.srem(self._node_rooms_key, *dropped)
                await pipeline.execute()
            except (RedisError, OSError) as exc:
                self._presence_dirty = True
                self._problems.report("presence", exc)

    async def get_presence(self, room: str) -> dict[str, bytes]:
        """The presence entries of ``room`` by node id, of the nodes alive; raise :class:`BusUnavailable` if Redis cannot be reached."""
        self._require_open()
        try:
            pipeline = self._client.pipeline(transaction=False)
            pipeline.time()
            pipeline.hgetall(self._presence_key(room))
            pipeline.zrange(self._nodes_key, 0, -1, withscores=True)
            (seconds, microseconds), entries, nodes = await pipeline.execute()
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"cannot read presence from Redis: {exc}") from exc
        now_ms = seconds * 1000 + microseconds // 1000
        alive = {node for node, expires_ms in nodes if expires_ms > now_ms}
        return {node.decode(): payload for node, payload in entries.items() if node in alive}

    @property
    def live_nodes(self) -> frozenset[str]:
        """The nodes alive at this bus's last heartbeat."""
        return frozenset(self._live_nodes)

    async def _heartbeat_forever(self) -> None:
        interval = self.presence_ttl_seconds / 3
        while not self._closing:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that comes
            # as the event is set, and close() would then wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._heartbeat_now.wait()
            self._heartbeat_now.clear()
            try:
                await self._heartbeat()
            except (RedisError, OSError) as exc:
                self._problems.report("heartbeat", exc)

    async def _heartbeat(self) -> None:
        """Renew this node; write its presence again if Redis lost it; report and clean up nodes that are gone."""
        added, live, dead = await self._heartbeat_script(keys=[self._nodes_key], args=[self.node_id, int(self.presence_ttl_seconds * 1000)])
        first = self._beats == 0
        self._beats += 1
        if (added and not first) or self._presence_dirty:
            self._presence_dirty = False
            await self._write_presence(dict(self._presence), ())
        live_nodes = {node.decode() for node in live}
        gone = self._live_nodes - live_nodes
        self._live_nodes = live_nodes
        if gone and not first:
            try:
                self.on_nodes_gone(frozenset(gone))
            except Exception:
                log.exception("error in the bus's on_nodes_gone")
        for node in dead:
            if node.decode() != self.node_id:
                await self._remove_node(node.decode())

    async def _remove_node(self, node: str) -> None:
        """Delete the presence entries of a node that is gone (only the bus whose heartbeat removed it does this)."""
        rooms_key = f"{self.prefix}:node-rooms:{node}"
        rooms = await self._client.smembers(rooms_key)
        pipeline = self._client.pipeline(transaction=False)
        for room in rooms:
            pipeline.hdel(self._presence_key(room.decode()), node)
        pipeline.delete(rooms_key)
        await pipeline.execute()

    def _require_open(self) -> None:
        if self._client is None or self._closing:
            raise BusError("the bus is not open")

    def __repr__(self) -> str:
        return f"RedisBus({self.url!r}, {self.node_id!r})"


_WOKEN: Final[Any] = object()
"""What :meth:`RedisBus._read` returns when the wait was interrupted to send subscription changes."""
