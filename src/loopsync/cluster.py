"""One node of a loopsync cluster: the rules that keep every node's rooms equal to PostgreSQL, and the thin glue to the bus.

In a cluster every node commits its clients' updates in PostgreSQL
(:class:`~loopsync.pgstore.PostgresStore`, which decides seq and revision)
and publishes what it committed on the room's Redis channel
(:class:`~loopsync.redisbus.RedisBus`). A room's records therefore reach a
node from two sources, its own commits and the bus, in no particular order,
and a bus message can be lost. The rules here, with no I/O:

- :class:`RevisionGate` passes a room's records on strictly in revision
  order: a record waits until every lower revision has been passed on, and a
  record at or below the room's revision is dropped (a repeat, or already in
  a snapshot). A gate that has waited :data:`GAP_SECONDS` for a missing
  revision is *overdue*.
- :func:`catch_up` turns a re-read of the room from PostgreSQL into the
  records that bring the node's room to it, in revision order: the waiting
  records it covers, the parts it shows that the node never heard of, and a
  removal for each part that is gone.
- :class:`RemoteMembers` keeps the presence entries other nodes published
  for a room, newest version per node.

:class:`ClusterLink` is the glue: it owns the bus, subscribes a room before
the server loads it (so nothing committed in between is missed), holds what
arrives while it loads, runs each room's gate, re-reads a room in queue
order (:meth:`~loopsync.pgstore.PostgresStore.load_room_in_order`) when its
gate is overdue or the bus resubscribed, and mirrors presence both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import orjson

from .document import Invalid
from .rooms import Accepted, RoomRecord
from .store import StoreError

if TYPE_CHECKING:
    from .pgstore import PostgresStore
    from .redisbus import RedisBus
    from .server import Server, _RoomState

log = logging.getLogger("loopsync.cluster")

GAP_SECONDS: Final = 0.2
"""How long a room waits for a missing revision before it re-reads the room from PostgreSQL."""
SUBSCRIBE_WAIT_SECONDS: Final = 2.0
"""How long a room's loading waits for Redis to confirm its subscription before it goes on without."""
GONE_NODES_KEPT: Final = 1024
REREAD_RETRY_SECONDS: Final = 1.0
"""How long after a failed re-read (PostgreSQL down) the next one is tried."""
PRESENCE_PUBLISH_SECONDS: Final = 0.0
"""How long a node's presence changes of one room wait to be published together (0: the changes of one turn of the event
loop): a joiner on another node gets its first presence table right, which the nodes' own coalescing then spreads out."""


class Entry(NamedTuple):
    """A committed record on its way to a room's members; ``sender`` and ``reply`` are the server's, for its own commits (else ``None``)."""

    record: Accepted
    sender: Any = None
    reply: Any = None


# -- the rules ----------------------------------------------------------------------------


class RevisionGate:
    """A room's records wait here until every lower revision has been passed on.

    The caller passes the room's revision in (what it has applied), and
    applies what :meth:`offer` returns, in that order.
    """

    __slots__ = ("waiting", "gap_since")

    def __init__(self) -> None:
        self.waiting: dict[int, Entry] = {}
        """Records above the next expected revision, by revision."""
        self.gap_since: float | None = None
        """When the gate began waiting for the revision it misses now (``None``: nothing waits)."""

    def offer(self, entry: Entry, room_revision: int, now: float) -> list[Entry]:
        """Take a record; the records now ready, in revision order (a record at or below ``room_revision`` is dropped)."""
        revision = entry.record.revision
        if revision > room_revision:
            known = self.waiting.get(revision)
            if known is None or (known.sender is None and entry.sender is not None):
                self.waiting[revision] = entry  # the node's own copy carries the ack
        return self.release(room_revision, now)

    def release(self, room_revision: int, now: float) -> list[Entry]:
        """The waiting records that follow ``room_revision`` without a gap, taken out in revision order."""
        ready: list[Entry] = []
        waiting = self.waiting
        for revision in [revision for revision in waiting if revision <= room_revision]:
            stale = waiting.pop(revision)
            if stale.sender is not None:
                ready.append(stale)  # already applied (a re-read showed it): its sender still needs the ack
        revision = room_revision + 1
        while revision in waiting:
            ready.append(waiting.pop(revision))
            revision += 1
        if not waiting:
            self.gap_since = None
        elif self.gap_since is None or ready:
            self.gap_since = now
        return ready

    def overdue(self, now: float, wait: float = GAP_SECONDS) -> bool:
        """A revision has been missing for ``wait`` seconds: time to re-read the room."""
        return self.gap_since is not None and now - self.gap_since >= wait


def catch_up(room: str, records: dict[str, Accepted], room_revision: int, loaded: RoomRecord, waiting: dict[int, Entry]) -> list[Entry]:
    """The records that bring a room from ``records`` at ``room_revision`` to ``loaded`` (a re-read from the store), in revision order.

    The waiting records at or below the loaded revision are genuine commits
    and go as they are (so a sender gets its ack); a part the re-read shows
    above ``room_revision`` that no waiting record carries is passed on as
    read. A part that is gone gets a removal at a revision the re-read
    leaves free: the real removal's revision was one of them, and every
    removal comes after its user's last record.
    """
    if loaded.revision <= room_revision:
        return []
    by_revision: dict[int, Entry] = {revision: entry for revision, entry in waiting.items() if revision <= loaded.revision}
    for record in loaded.records:
        if record.revision > room_revision and record.revision not in by_revision:
            by_revision[record.revision] = Entry(record)
    final: dict[str, Accepted | None] = {user: record for user, record in records.items()}
    last_revision: dict[str, int] = {user: record.revision for user, record in records.items()}
    for revision in sorted(by_revision):
        record = by_revision[revision].record
        final[record.user] = record if record.part is not None else None
        last_revision[record.user] = revision
    present = {record.user for record in loaded.records}
    gone = sorted((user for user, record in final.items() if record is not None and user not in present),
                  key=lambda user: last_revision[user], reverse=True)
    free = [revision for revision in range(room_revision + 1, loaded.revision + 1) if revision not in by_revision]
    for user in gone:  # the latest writer first: it has the fewest free revisions after its last record
        slot = next((revision for revision in free if revision > last_revision[user]), None)
        if slot is None:
            log.error("re-read of room %r: no free revision for the removal of %r's part", room, user)
            continue
        free.remove(slot)
        by_revision[slot] = Entry(Accepted(room, user, 0, slot, None))
    return [by_revision[revision] for revision in sorted(by_revision)]


class RemoteMembers:
    """The presence entries other nodes published for one room: the newest version of each node's list."""

    __slots__ = ("versions", "entries")

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.entries: dict[str, dict[str, dict[str, Any]]] = {}
        """node -> member id -> entry."""

    def update(self, node: str, version: int, members: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]] | None:
        """Take a node's list; the entries new or changed and the ids gone, or ``None`` if an older version than known."""
        if version <= self.versions.get(node, -1):
            return None
        self.versions[node] = version
        before = self.entries.get(node, {})
        after = {entry["id"]: entry for entry in members}
        self.entries[node] = after
        changed = [entry for member_id, entry in after.items() if before.get(member_id) != entry]
        left = [member_id for member_id in before if member_id not in after]
        return changed, left

    def forget(self, nodes: Iterable[str]) -> list[str]:
        """Nodes that are gone: the ids of their members."""
        left: list[str] = []
        for node in nodes:
            self.versions.pop(node, None)
            left.extend(self.entries.pop(node, {}))
        return left


def records_payload(records: list[Accepted]) -> bytes:
    """A bus message carrying committed records of one room."""
    return orjson.dumps({"records": [[record.user, record.seq, record.revision, record.part] for record in records]})


def presence_payload(node: str, version: int, entries: list[dict[str, Any]]) -> bytes:
    """A bus message (and the Redis presence value) carrying a node's presence entries of one room."""
    return orjson.dumps({"node": node, "version": version, "members": entries})


def new_node_id() -> str:
    """A node id unique in the cluster (random, so a restarted node is a new node and its old entries simply expire)."""
    return secrets.token_hex(4)


# -- the glue -----------------------------------------------------------------------------


class _ClusterRoom:
    """What the link keeps for one room in memory."""

    __slots__ = ("gate", "remote", "gap_timer", "rereading", "reread_again", "presence_version", "published_entries", "presence_timer")

    def __init__(self) -> None:
        self.gate = RevisionGate()
        self.remote = RemoteMembers()
        self.gap_timer: asyncio.TimerHandle | None = None
        self.rereading = False
        self.reread_again = False
        self.presence_version = 0
        self.published_entries: list[dict[str, Any]] | None = None
        self.presence_timer: asyncio.TimerHandle | None = None


class ClusterLink:
    """Connects a :class:`~loopsync.server.Server` on a :class:`~loopsync.pgstore.PostgresStore` to the other nodes through Redis."""

    def __init__(self, bus_url: str, *, node_id: str | None = None, prefix: str = "loopsync", presence_ttl_seconds: float = 6.0) -> None:
        from .redisbus import RedisBus

        self.node_id = node_id or new_node_id()
        self.bus: RedisBus = RedisBus(bus_url, self.node_id, on_message=self._message, on_resubscribed=self._resubscribed,
                                      on_nodes_gone=self._nodes_gone, prefix=prefix, presence_ttl_seconds=presence_ttl_seconds)
        self.server: Server | None = None
        self.rooms: dict[str, _ClusterRoom] = {}
        self._early: dict[str, list[bytes]] = {}
        """Messages of rooms subscribed and still loading, in arrival order."""
        self.rereads = 0
        """Rooms re-read from PostgreSQL (gaps and resubscriptions): for tests."""
        self._gone: dict[str, None] = {}
        """Nodes reported gone, oldest first (at most :data:`GONE_NODES_KEPT`): a late presence message of theirs is ignored."""

    @property
    def store(self) -> PostgresStore:
        assert self.server is not None
        return self.server.store  # type: ignore[return-value]

    async def open(self, server: Server) -> None:
        """Connect to Redis; raise :class:`~loopsync.redisbus.BusUnavailable` if it cannot be reached."""
        self.server = server
        await self.bus.open()

    async def close(self) -> None:
        for cluster_room in self.rooms.values():
            _cancel(cluster_room)
        self.rooms.clear()
        await self.bus.close()

    # -- rooms coming and going ----------------------------------------------------------

    async def load(self, name: str) -> tuple[RoomRecord, list[dict[str, Any]]]:
        """Subscribe to the room, then read it from PostgreSQL and the other nodes' presence from Redis."""
        self._early.setdefault(name, [])
        subscribed = self.bus.subscribe(name)
        try:
            await asyncio.wait_for(asyncio.shield(subscribed), SUBSCRIBE_WAIT_SECONDS)
        except asyncio.TimeoutError:
            # Redis is away: load anyway. The bus re-subscribes when it is back, and that re-reads every room.
            log.warning("the subscription to room %r is not confirmed yet; loading it anyway", name)
        except asyncio.CancelledError:
            if not subscribed.cancelled():
                raise
            raise RuntimeError(f"the subscription to room {name!r} was withdrawn") from None
        record = await self.store.load_room(name)
        entries: list[dict[str, Any]] = []
        try:
            for payload in (await self.bus.get_presence(name)).values():
                entries.append(orjson.loads(payload))
        except Exception as exc:  # Redis down: the presence comes with the next resubscription
            log.warning("cannot read the presence of room %r from Redis: %s", name, exc)
        return record, entries

    def loaded(self, state: _RoomState, presence: list[dict[str, Any]]) -> None:
        """The server made the room's state: pass on what arrived while it loaded, and take the other nodes' members in."""
        cluster_room = self.rooms[state.room.name] = _ClusterRoom()
        for message in presence:
            self._presence(state, cluster_room, message)
        for payload in self._early.pop(state.room.name, []):
            self._message(state.room.name, payload)

    def load_failed(self, name: str) -> None:
        self._early.pop(name, None)
        if self.server is not None and name not in self.server.rooms:
            self.bus.unsubscribe(name)

    def forgotten(self, name: str) -> None:
        """The room left the server's memory: stop its messages and withdraw this node's presence there."""
        cluster_room = self.rooms.pop(name, None)
        if cluster_room is not None:
            _cancel(cluster_room)
        if name in self._early:
            return  # loading again already
        self.bus.unsubscribe(name)
        _spawn(self.bus.drop_presence(name))

    # -- records -----------------------------------------------------------------------

    def committed(self, state: _RoomState, entries: list[Entry]) -> None:
        """This node committed records: tell the other nodes, and pass them on in revision order."""
        self.bus.publish(state.room.name, records_payload([entry.record for entry in entries]))
        cluster_room = self.rooms.get(state.room.name)
        if cluster_room is None:
            self._pass_on(state, entries)
            return
        for entry in entries:
            self._offer(state, cluster_room, entry)

    def _offer(self, state: _RoomState, cluster_room: _ClusterRoom, entry: Entry) -> None:
        loop = asyncio.get_running_loop()
        ready = cluster_room.gate.offer(entry, state.room.revision, loop.time())
        if ready:
            self._pass_on(state, ready)
        if cluster_room.gate.gap_since is not None and cluster_room.gap_timer is None:
            cluster_room.gap_timer = loop.call_later(GAP_SECONDS, self._check_gap, state.room.name)

    def _pass_on(self, state: _RoomState, entries: list[Entry]) -> None:
        assert self.server is not None
        self.server.pass_on(state, entries)

    def _message(self, name: str, payload: bytes) -> None:
        if name in self._early:
            self._early[name].append(payload)
            return
        assert self.server is not None
        state = self.server.rooms.get(name)
        cluster_room = self.rooms.get(name)
        if state is None or cluster_room is None:
            return
        try:
            message = orjson.loads(payload)
            if "records" in message:
                for user, seq, revision, part in message["records"]:
                    self._offer(state, cluster_room, Entry(Accepted(name, user, seq, revision, part)))
            elif "reread" in message:
                self.reread(name)
            elif message.get("node") != self.node_id:
                self._presence(state, cluster_room, message)
        except Exception:
            log.exception("cannot use a bus message of room %r", name)

    def _check_gap(self, name: str) -> None:
        cluster_room = self.rooms.get(name)
        if cluster_room is None:
            return
        cluster_room.gap_timer = None
        now = asyncio.get_running_loop().time()
        if cluster_room.gate.overdue(now):
            self.reread(name)
        elif cluster_room.gate.gap_since is not None:
            cluster_room.gap_timer = asyncio.get_running_loop().call_later(cluster_room.gate.gap_since + GAP_SECONDS - now, self._check_gap, name)

    def reread(self, name: str) -> None:
        """Read the room from PostgreSQL (in queue order) and pass on what this node missed."""
        cluster_room = self.rooms.get(name)
        if cluster_room is None:
            return
        if cluster_room.rereading:
            cluster_room.reread_again = True
            return
        cluster_room.rereading = True
        _spawn(self._reread(name, cluster_room))

    async def _reread(self, name: str, cluster_room: _ClusterRoom) -> None:
        assert self.server is not None
        again = False
        try:
            loaded = await self.store.load_room_in_order(name)
        except Exception as exc:
            log.warning("cannot re-read room %r from PostgreSQL: %s; trying again in %.0f s", name, exc, REREAD_RETRY_SECONDS)
            await asyncio.sleep(REREAD_RETRY_SECONDS)
            again = True
        else:
            self._caught_up(name, cluster_room, loaded)
        finally:
            cluster_room.rereading = False
        if self.rooms.get(name) is not cluster_room:
            return
        if again or cluster_room.reread_again or cluster_room.gate.overdue(asyncio.get_running_loop().time()):
            cluster_room.reread_again = False
            self.reread(name)
        elif cluster_room.gate.gap_since is not None and cluster_room.gap_timer is None:
            cluster_room.gap_timer = asyncio.get_running_loop().call_later(GAP_SECONDS, self._check_gap, name)

    async def refresh(self, name: str) -> None:
        """Bring a room in memory up to PostgreSQL now (a member joins: its snapshot must show every acknowledged update,
        also those of a node that died before it could publish them); raise :class:`~loopsync.store.StoreError` if PostgreSQL cannot answer."""
        cluster_room = self.rooms.get(name)
        if cluster_room is None:
            return
        loaded = await self.store.load_room_in_order(name)
        if self.rooms.get(name) is cluster_room:
            self._caught_up(name, cluster_room, loaded)

    def _caught_up(self, name: str, cluster_room: _ClusterRoom, loaded: RoomRecord) -> None:
        """Pass on what a re-read shows that the room has not passed on yet, then what waited behind it."""
        assert self.server is not None
        self.rereads += 1
        state = self.server.rooms.get(name)
        if state is None:
            return
        room = state.room
        entries = catch_up(name, room.records, room.revision, loaded, cluster_room.gate.waiting)
        for entry in entries:
            cluster_room.gate.waiting.pop(entry.record.revision, None)
        if entries:
            self._pass_on(state, entries)
        ready = cluster_room.gate.release(room.revision, asyncio.get_running_loop().time())
        if ready:
            self._pass_on(state, ready)

    def refused(self, name: str, outcome: Invalid | StoreError) -> None:
        """PostgreSQL did not accept an update of the room: re-read it where that says the node's view may lag.

        ``stale_seq``: PostgreSQL knows a later seq than this node's room
        shows. :class:`~loopsync.pgstore.CommitUnknown`: the connection broke
        while PostgreSQL had the batch, so it may have committed with nobody
        told: every node re-reads the room (until PostgreSQL answers).
        """
        from .pgstore import CommitUnknown

        if isinstance(outcome, CommitUnknown):
            self.bus.publish(name, orjson.dumps({"reread": True}))
            self.reread(name)
        elif isinstance(outcome, Invalid) and outcome.code == "stale_seq":
            self.reread(name)

    def _resubscribed(self) -> None:
        """Messages may have been lost while the bus was away: re-read every room, and the other nodes' presence."""
        for name in list(self.rooms):
            self.reread(name)
            _spawn(self._refresh_presence(name))

    # -- presence ------------------------------------------------------------------------------

    def local_presence_changed(self, state: _RoomState) -> None:
        """This node's members of the room changed: publish their entries soon (coalesced)."""
        cluster_room = self.rooms.get(state.room.name)
        if cluster_room is None or cluster_room.presence_timer is not None:
            return
        cluster_room.presence_timer = asyncio.get_running_loop().call_later(PRESENCE_PUBLISH_SECONDS, self._publish_presence, state, cluster_room)

    def _publish_presence(self, state: _RoomState, cluster_room: _ClusterRoom) -> None:
        cluster_room.presence_timer = None
        if self.rooms.get(state.room.name) is not cluster_room:
            return
        members = state.room.members
        entries = [members[peer.presence_id].entry() for peer in state.peers.values() if peer.presence_id in members]
        if entries == cluster_room.published_entries:
            return
        cluster_room.published_entries = entries
        cluster_room.presence_version += 1
        payload = presence_payload(self.node_id, cluster_room.presence_version, entries)
        self.bus.publish(state.room.name, payload)
        _spawn(self.bus.put_presence(state.room.name, payload))

    def _presence(self, state: _RoomState, cluster_room: _ClusterRoom, message: dict[str, Any]) -> None:
        node = message["node"]
        if node == self.node_id or node in self._gone:
            return
        delta = cluster_room.remote.update(node, int(message["version"]), list(message["members"]))
        if delta is None:
            return
        changed, left = delta
        room = state.room
        for member_id in left:
            room.leave(member_id)
        for entry in changed:
            if entry["id"] in room.members:
                room.set_transport(entry["id"], bool(entry["playing"]), entry["bpm"])
            elif room.join(entry["id"], entry["user"], bool(entry["playing"]), entry["bpm"]) is not None:
                log.warning("room %r is full: a member on node %s is not shown", room.name, node)
        assert self.server is not None
        self.server.remote_presence_changed(state)

    async def _refresh_presence(self, name: str) -> None:
        try:
            found = await self.bus.get_presence(name)
        except Exception as exc:
            log.warning("cannot read the presence of room %r from Redis: %s", name, exc)
            return
        assert self.server is not None
        state = self.server.rooms.get(name)
        cluster_room = self.rooms.get(name)
        if state is None or cluster_room is None:
            return
        for node in set(cluster_room.remote.entries) - set(found) - {self.node_id}:
            self._drop_nodes(state, cluster_room, [node])
        for payload in found.values():
            self._presence(state, cluster_room, orjson.loads(payload))
        cluster_room.published_entries = None  # Redis may have lost ours: write it again
        self.local_presence_changed(state)

    def _nodes_gone(self, nodes: frozenset[str]) -> None:
        """Nodes stopped their heartbeat: their members leave every room, and every room is re-read (a node that died
        between a commit and its publication left records nobody was told of)."""
        assert self.server is not None
        for node in nodes:
            self._gone[node] = None
        while len(self._gone) > GONE_NODES_KEPT:
            del self._gone[next(iter(self._gone))]
        for name, cluster_room in list(self.rooms.items()):
            state = self.server.rooms.get(name)
            if state is not None:
                self._drop_nodes(state, cluster_room, nodes)
                self.reread(name)

    def _drop_nodes(self, state: _RoomState, cluster_room: _ClusterRoom, nodes: Iterable[str]) -> None:
        left = cluster_room.remote.forget(nodes)
        for member_id in left:
            state.room.leave(member_id)
        if left:
            assert self.server is not None
            self.server.remote_presence_changed(state)


def _cancel(cluster_room: _ClusterRoom) -> None:
    for timer in (cluster_room.gap_timer, cluster_room.presence_timer):
        if timer is not None:
            timer.cancel()
    cluster_room.gap_timer = cluster_room.presence_timer = None


_background: set[asyncio.Task[Any]] = set()


def _spawn(coroutine: Any) -> None:
    """Run a coroutine in the background, keeping a reference until it is done (the loop holds only weak ones)."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    task.add_done_callback(_report)


def _report(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        problem = task.exception()
        if problem is not None:
            log.error("cluster task failed: %r", problem)
