"""The headless client: an asyncio adapter around :class:`ClientSync` and :class:`LoopClock`.

It holds one WebSocket to the server (reconnecting with capped, jittered
exponential backoff), feeds every server message to :class:`ClientSync`, and
runs a clock task that "plays" the loop by emitting events at absolute
deadlines taken from :class:`LoopClock` (step ``n`` is due at
``origin + n * step``; it never sleeps a step length in a loop, so it does
not drift). At ``Loop Start - lead`` it calls :meth:`ClientSync.sync` and
sends what it returns. The rules live in ``sync.py``; this module is
transport and timing.

Events are plain dicts with an ``"event"`` name and the ``"monotonic"`` time
they happened (``time.monotonic()`` seconds):

========================  ====================================================
event                     fields
========================  ====================================================
``connected``             ``url``, ``revision``: the first snapshot of a connection arrived
``disconnected``          ``reason``, ``was_connected``: a connection (or an attempt) ended
``reconnecting``          ``in_seconds``, ``attempt``
``received`` / ``sent``   ``message``: every frame, parsed
``ack``                   ``seq``, ``revision``
``presence``              ``users``: every connection's entry, ordered by user and id; ``you``: this connection's id
``error``                 ``code``, ``message`` (and ``seq``): from the server or the client
``edit``                  ``part``: the own part after a local edit
``transport``             ``playing``, ``bpm``, ``position_steps``: local play/pause/tempo
``sync``                  ``loop``, ``loop_start``, ``taken`` (users whose new part now plays), ``sent``
``sync_missed``           ``loop``, ``late_seconds``: the window passed; loop ``loop`` plays what it had
``loop_start``            ``loop``, ``due``, ``parts`` (what this loop plays), ``users`` (who has hits)
``step``                  ``step``, ``loop``, ``index``, ``due``, ``users`` (whose hit sounds)
``done``                  ``loops``: the requested number of loops has played
========================  ====================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

import aiohttp

from . import protocol
from .document import DEFAULT_STEPS, Parts, check_name, copy_part
from .sync import ClientSync, LoopClock, Message, PresenceTable

log = logging.getLogger(__name__)

Event = dict[str, Any]
EventCallback = Callable[[Event], None]

DEFAULT_LEAD_SECONDS = 0.05
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
HEARTBEAT_SECONDS = 15.0
CLOSE_WAIT_SECONDS = 1.0
# A server that refuses these will refuse them again: retrying cannot help.
FATAL_CODES = frozenset({"bad_version", "bad_name"})


class Client:
    """One user in one room: a clock that plays the loop and a connection that syncs it.

    Use it as ``async with Client(url, room, user) as client:``; edit with
    :meth:`toggle`, :meth:`set_step`, :meth:`set_sound`; drive the transport
    with :meth:`play`, :meth:`pause`, :meth:`set_bpm`. These methods are
    plain functions (not coroutines): call them from the event loop's thread.
    """

    def __init__(
        self,
        url: str,
        room: str,
        user: str,
        *,
        bpm: float = 120.0,
        lead_seconds: float = DEFAULT_LEAD_SECONDS,
        sound: str = "kick",
        playing: bool = True,
        on_event: EventCallback | None = None,
        max_loops: int | None = None,
        initial_toggles: tuple[int, ...] = (),
        backoff_base_seconds: float = BACKOFF_BASE_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        for kind, name in (("room", room), ("user", user)):
            problem = check_name(kind, name)
            if problem:
                raise ValueError(problem.message)
        if not lead_seconds > 0:
            raise ValueError(f"lead must be above 0 seconds, got {lead_seconds}")
        self.url = url
        self.room = room
        self.user = user
        self.lead_seconds = lead_seconds
        self.sync = ClientSync(user, sound)
        self.clock = LoopClock(steps=DEFAULT_STEPS, bpm=bpm)
        self.presence_table = PresenceTable()
        self.presence: list[dict[str, Any]] = []
        """Everyone connected to the room, one entry per connection, by user."""
        self.max_loops = max_loops
        self.loops_played = 0
        self.joined_ever = False
        self.fatal: str | None = None
        self.finished = asyncio.Event()
        self._on_event = on_event
        self._start_playing = playing
        self._initial_toggles = initial_toggles
        self._backoff_base = backoff_base_seconds
        self._backoff_max = backoff_max_seconds
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: asyncio.Queue[Message] | None = None
        self._joined = asyncio.Event()
        self._acked = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._waiter: asyncio.Future[bool] | None = None
        # Where the playhead is, in absolute steps counted from the first play.
        self._next_step = 0
        self._loop = -1
        self._loop_steps = DEFAULT_STEPS
        self._next_loop_start_step = 0
        self._resumed_loop_parts: Parts | None = None
        """Other users' parts as the loop paused mid-way began: its rest plays them (docs/clock.md)."""
        self._synced_loop = -1

    # -- life cycle -------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the clock (playing unless told otherwise) and the connection."""
        if self._start_playing:
            self.play()
        self._tasks = [
            asyncio.create_task(self._run_connection(), name=f"loopsync client {self.user} connection"),
            asyncio.create_task(self._run_clock(), name=f"loopsync client {self.user} clock"),
        ]

    async def close(self) -> None:
        """Stop: send edits not yet sent (if playing), wait a moment for their acks, then close.

        The last sync keeps a quit from losing an edit made during the final
        loop (this client keeps nothing on disk); paused, it sends nothing.
        """
        if self._closing:
            return
        if self.clock.playing and self.joined:
            self._send(self.sync.sync())
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        while self.sync.in_flight and self.sync.connected and time.monotonic() < deadline:
            self._acked.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._acked.wait(), deadline - time.monotonic())
        self._closing = True
        self._wake_clock()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_joined(self) -> None:
        """Wait until a connection has received its snapshot (now, if one has)."""
        await self._joined.wait()

    @property
    def joined(self) -> bool:
        """True while a connection is open and has received its snapshot."""
        return self._joined.is_set()

    def drop_connection(self) -> None:
        """Cut the connection abruptly, as a network failure would (no close frame); it reconnects."""
        ws = self._ws
        sock = ws.get_extra_info("socket") if ws is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- what the user does -----------------------------------------------------

    def toggle(self, step: int) -> None:
        """Flip one step of the own part; heard at once, sent at the next sync."""
        self.sync.toggle(step)
        self._emit("edit", part=copy_part(self.sync.own))

    def set_step(self, step: int, value: int) -> None:
        """Set one step of the own part to 0 or 1."""
        self.sync.set_step(step, value)
        self._emit("edit", part=copy_part(self.sync.own))

    def set_sound(self, sound: str) -> None:
        """Choose the own part's sound."""
        self.sync.set_sound(sound)
        self._emit("edit", part=copy_part(self.sync.own))

    def play(self) -> None:
        """Continue from the held position; sync at once, which sends edits made while paused."""
        if self.clock.playing:
            return
        now = time.monotonic()
        self.clock.play(now)
        if self._next_step == self._next_loop_start_step:
            # Paused on a loop boundary: this sync is the one of the coming loop.
            self._synced_loop = max(self._synced_loop, self._loop + 1)
        self._send(self.sync.play())
        self._after_transport_change(now)

    def pause(self) -> None:
        """Stop the clock and hold the position; edits wait, arrivals apply at once."""
        if not self.clock.playing:
            return
        now = time.monotonic()
        self.clock.pause(now)
        if self._next_step != self._next_loop_start_step and self._resumed_loop_parts is None:
            # Paused mid-loop: parts arriving now are shown at once but the
            # rest of this loop, once resumed, plays what it began with.
            self._resumed_loop_parts = {user: copy_part(part) for user, part in self.sync.loop_parts.items() if user != self.user}
        self.sync.pause()
        self._after_transport_change(now)

    def set_bpm(self, bpm: float) -> None:
        """Change tempo, keeping the position."""
        now = time.monotonic()
        self.clock.set_bpm(now, bpm)
        self._after_transport_change(now)

    def fetch(self) -> None:
        """Ask the server for the current Shared Data again."""
        self._send([{"type": "fetch"}])

    def _after_transport_change(self, now: float) -> None:
        self._emit("transport", playing=self.clock.playing, bpm=self.clock.bpm, position_steps=self.clock.position_steps(now))
        if self.joined:
            self._send([{"type": "transport", "playing": self.clock.playing, **self._bpm_field()}])
        self._wake_clock()

    def _bpm_field(self) -> dict[str, float]:
        # The protocol's presence tempo is 20-300 BPM; a faster clock (tests
        # use one) is still ours to keep, but presence then shows no tempo.
        bpm = self.clock.bpm
        return {"bpm": bpm} if protocol.MIN_BPM <= bpm <= protocol.MAX_BPM else {}

    # -- events -----------------------------------------------------------------

    def _emit(self, name: str, **fields: Any) -> None:
        if self._on_event is None:
            return
        event: Event = {"event": name, "monotonic": time.monotonic(), **fields}
        try:
            self._on_event(event)
        except Exception:
            log.exception("event callback failed on %s", name)

    # -- the clock --------------------------------------------------------------

    async def _run_clock(self) -> None:
        """Play: emit steps at their deadlines and sync at each Loop Start - lead."""
        while not self._closing and not self.finished.is_set():
            if not self.clock.playing:
                await self._sleep_until(None)
                continue
            loop_start_seconds = self.clock.step_due_seconds(self._next_loop_start_step)
            step_seconds = self.clock.step_due_seconds(self._next_step)
            sync_seconds = loop_start_seconds - self.lead_seconds
            sync_first = self._synced_loop < self._loop + 1 and sync_seconds <= step_seconds
            if await self._sleep_until(sync_seconds if sync_first else step_seconds):
                continue  # woken by play, pause, tempo or close: the deadlines moved
            if sync_first:
                self._sync_moment(loop_start_seconds)
            else:
                self._play_step(step_seconds)

    def _sync_moment(self, loop_start_seconds: float) -> None:
        loop = self._loop + 1
        self._synced_loop = loop
        now = time.monotonic()
        if now >= loop_start_seconds:
            # The loop already started (a blocked event loop): it plays what
            # it had; the next sync comes at the next loop's sync moment.
            self._emit("sync_missed", loop=loop, late_seconds=now - loop_start_seconds + self.lead_seconds)
            return
        taken = self.sync.pending_users()
        sent = self.sync.sync()
        self._send(sent)
        self._emit("sync", loop=loop, loop_start=loop_start_seconds, taken=taken, sent=bool(sent))

    def _play_step(self, due_seconds: float) -> None:
        step = self._next_step
        if step == self._next_loop_start_step:
            if self.max_loops is not None and self._loop + 1 >= self.max_loops:
                self._emit("done", loops=self.loops_played)
                self.finished.set()
                return
            self._loop += 1
            self._loop_steps = self.sync.steps
            self._next_loop_start_step = step + self._loop_steps
            self._resumed_loop_parts = None
            parts = {user: copy_part(part) for user, part in sorted(self.sync.loop_parts.items())}
            self._emit("loop_start", loop=self._loop, due=due_seconds, parts=parts, users=[u for u, p in parts.items() if any(p["steps"])])
        index = step - (self._next_loop_start_step - self._loop_steps)
        playing = self.sync.loop_parts if self._resumed_loop_parts is None else {**self._resumed_loop_parts, self.user: self.sync.own}
        users = [user for user, part in sorted(playing.items()) if index < len(part["steps"]) and part["steps"][index]]
        self._emit("step", step=step, loop=self._loop, index=index, due=due_seconds, users=users)
        self._next_step = step + 1
        if self._next_step == self._next_loop_start_step:
            self.loops_played += 1

    async def _sleep_until(self, deadline_seconds: float | None) -> bool:
        """Sleep until a monotonic deadline (or until woken); True when woken early."""
        loop = asyncio.get_running_loop()
        delay = None if deadline_seconds is None else deadline_seconds - time.monotonic()
        if delay is not None and delay <= 0:
            return False
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        # The event loop's clock is time.monotonic() too; call_later keeps the deadline absolute.
        handle = None if delay is None else loop.call_later(delay, _resolve, waiter, False)
        try:
            return await waiter
        finally:
            if handle is not None:
                handle.cancel()
            self._waiter = None

    def _wake_clock(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter, True)

    # -- the connection ---------------------------------------------------------

    async def _run_connection(self) -> None:
        """Connect, join, read; on any loss, back off and connect again until closed."""
        attempt = 0
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._closing:
                reason, was_joined = await self._connect_once(session)
                if self._closing:
                    break
                self._emit("disconnected", reason=reason, was_connected=was_joined)
                if self.fatal is not None:
                    self.finished.set()
                    break
                if was_joined:
                    attempt = 0
                # Exponential backoff, capped, with jitter so that the clients
                # of a restarted server do not all come back at the same instant.
                delay = min(self._backoff_max, self._backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
                attempt = min(attempt + 1, 30)
                self._emit("reconnecting", in_seconds=delay, attempt=attempt)
                await asyncio.sleep(delay)

    async def _connect_once(self, session: aiohttp.ClientSession) -> tuple[str, bool]:
        """One connection, from connect to close; returns why it ended and whether it had joined."""
        writer: asyncio.Task[None] | None = None
        try:
            async with session.ws_connect(self.url, heartbeat=HEARTBEAT_SECONDS, max_msg_size=protocol.MAX_MESSAGE_BYTES) as ws:
                self._ws = ws
                outbox: asyncio.Queue[Message] = asyncio.Queue()
                self._outbox = outbox
                hello = {"type": "hello", "v": protocol.VERSION, "room": self.room, "user": self.user, "playing": self.clock.playing, **self._bpm_field()}
                await ws.send_frame(protocol.encode(hello), aiohttp.WSMsgType.TEXT)
                self._emit("sent", message=hello)
                writer = asyncio.create_task(self._write_loop(ws, outbox))
                async for frame in ws:
                    if frame.type is aiohttp.WSMsgType.TEXT:
                        self._on_frame(frame.data)
                    elif frame.type is aiohttp.WSMsgType.ERROR:
                        return f"connection error: {ws.exception()}", self.joined
                code = ws.close_code
                if code is None or code == 1006:
                    reason = "the connection broke"
                else:
                    reason = f"the server closed the connection (code {code})"
                return reason, self.joined
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), self.joined
        finally:
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            self._ws = None
            self._outbox = None
            self.sync.on_disconnect()
            self.presence_table.on_disconnect()
            self._joined.clear()

    async def _write_loop(self, ws: aiohttp.ClientWebSocketResponse, outbox: asyncio.Queue[Message]) -> None:
        # One writer per connection keeps messages in the order the core returned them.
        while True:
            message = await outbox.get()
            await ws.send_frame(protocol.encode(message), aiohttp.WSMsgType.TEXT)
            self._emit("sent", message=message)

    def _send(self, messages: list[Message]) -> None:
        if self._outbox is None:
            return  # no connection: the core re-derives what to send from the next snapshot
        for message in messages:
            self._outbox.put_nowait(message)

    def _on_frame(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self._emit("error", code="bad_json", message="the server sent a frame that is not JSON")
            return
        if not isinstance(message, dict):
            self._emit("error", code="bad_json", message="the server sent a frame that is not a JSON object")
            return
        self._emit("received", message=message)
        kind = message.get("type")
        try:
            replies = self.sync.on_message(message)
            presence_changed = self.presence_table.on_message(message)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._emit("error", code="bad_message", message=f"the server sent a malformed {str(kind)[:20]!r} message ({exc!r})")
            return
        if kind == "snapshot":
            self._on_joined(message)
        elif kind == "ack":
            self._acked.set()
            self._emit("ack", seq=message.get("seq"), revision=message.get("revision"))
        elif kind == "presence" and presence_changed:
            # A full table, or changes applied to the table.
            self.presence = self.presence_table.listed()
            self._emit("presence", users=self.presence, you=self.presence_table.own_id)
        elif kind == "error":
            code = message.get("code")
            self._emit("error", code=code, message=message.get("message"), **({"seq": message["seq"]} if "seq" in message else {}))
            if code in FATAL_CODES and not self._joined.is_set():
                self.fatal = f"{message.get('message')} ({code})"
        self._send(replies)

    def _on_joined(self, snapshot: Message) -> None:
        first = not self.joined_ever
        self.joined_ever = True
        self._joined.set()
        self._emit("connected", url=self.url, revision=snapshot.get("revision"))
        if first:
            for step in self._initial_toggles:
                try:
                    self.toggle(step)
                except ValueError as exc:
                    self._emit("error", code="bad_step", message=str(exc))


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


# -- the command line -------------------------------------------------------------

HELP = "Commands: toggle N, set N 0|1, sound NAME, play, pause, bpm X, quit."


def _pattern(part: dict[str, Any]) -> str:
    return "".join("x" if value else "." for value in part["steps"])


def _describe(event: Event, steps: bool) -> str | None:
    """One line for people, or None when the event is not shown."""
    name = event["event"]
    if name == "loop_start" and not steps:
        playing = [f"{user} plays {part['sound']} {_pattern(part)}" for user, part in event["parts"].items() if any(part["steps"])]
        return f"Loop {event['loop']}: " + ("; ".join(playing) if playing else "silence") + "."
    if name == "step" and steps:
        users = ", ".join(event["users"]) if event["users"] else "rest"
        return f"Loop {event['loop']} step {event['index']}: {users}."
    if name == "sync" and event["taken"]:
        return f"New parts from {', '.join(event['taken'])} play from loop {event['loop']}."
    if name == "sync_missed":
        return f"The sync for loop {event['loop']} came {event['late_seconds'] * 1000:.0f} ms late; that loop plays the previous parts."
    if name == "connected":
        return f"Connected to {event['url']} (room revision {event['revision']})."
    if name == "disconnected":
        lost = "Lost the connection" if event["was_connected"] else "Could not connect"
        return f"{lost}: {event['reason']}."
    if name == "reconnecting":
        return f"Connecting again in {event['in_seconds']:.1f} s."
    if name == "presence":
        people = []
        for entry in event["users"]:
            state = "playing" if entry.get("playing") else "paused"
            bpm = entry.get("bpm")
            people.append(f"{entry.get('user')} ({state}" + (f" at {bpm:g} BPM)" if isinstance(bpm, (int, float)) else ")"))
        return "In the room: " + ", ".join(people) + "."
    if name == "error":
        return f"Error ({event['code']}): {event['message']}."
    if name == "edit":
        return f"Your part is now {event['part']['sound']} {_pattern(event['part'])}."
    if name == "transport":
        return ("Playing" if event["playing"] else "Paused") + f" at {event['bpm']:g} BPM."
    if name == "done":
        return f"Played {event['loops']} loops."
    return None


def _run_command(client: Client, line: str) -> bool:
    """Apply one command line; False when it asks to quit."""
    words = line.split()
    if not words:
        return True
    command, arguments = words[0].lower(), words[1:]
    try:
        if command in ("quit", "exit", "q") and not arguments:
            return False
        if command == "toggle" and len(arguments) == 1:
            client.toggle(int(arguments[0]))
        elif command == "set" and len(arguments) == 2:
            client.set_step(int(arguments[0]), int(arguments[1]))
        elif command == "sound" and len(arguments) == 1:
            client.set_sound(arguments[0])
        elif command == "play" and not arguments:
            client.play()
        elif command == "pause" and not arguments:
            client.pause()
        elif command == "bpm" and len(arguments) == 1:
            client.set_bpm(float(arguments[0]))
        else:
            print(f"Unknown command {line.strip()!r}. {HELP}", file=sys.stderr, flush=True)
    except ValueError as exc:
        print(f"Cannot do {line.strip()!r}: {exc}.", file=sys.stderr, flush=True)
    return True


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    # A daemon thread: a blocking read works for terminals, pipes and files
    # alike, and never keeps the process alive at exit.
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line)
    loop.call_soon_threadsafe(lines.put_nowait, None)


def main_client(args: Any) -> int:
    """``loopsync client``: play until quit, a signal or ``--loops``; the exit code (0, 1, 2)."""
    for kind in ("room", "user"):
        problem = check_name(kind, getattr(args, kind))
        if problem:
            print(f"The {kind} name {getattr(args, kind)!r} is not valid: it must be 1 to 32 letters, digits, '_' or '-'.", file=sys.stderr)
            return 2
    if not (args.url.startswith("ws://") or args.url.startswith("wss://")):
        print(f"The server URL must start with ws:// or wss://, got {args.url!r}.", file=sys.stderr)
        return 2
    if not args.bpm > 0 or not args.lead > 0 or args.loops < 0:
        print("The tempo, the lead and the number of loops must be positive numbers.", file=sys.stderr)
        return 2
    if not 60.0 / args.bpm / 4 * DEFAULT_STEPS > args.lead:
        print(f"The lead ({args.lead:g} s) must be shorter than one loop at {args.bpm:g} BPM.", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main_client(args))
    except KeyboardInterrupt:
        return 0


async def _main_client(args: Any) -> int:
    def on_event(event: Event) -> None:
        if args.json:
            print(json.dumps(event, separators=(",", ":")), flush=True)
        else:
            line = _describe(event, args.steps)
            if line is not None:
                print(line, flush=True)

    client = Client(
        args.url,
        args.room,
        args.user,
        bpm=args.bpm,
        lead_seconds=args.lead,
        sound=args.sound,
        playing=not args.paused,
        on_event=on_event,
        max_loops=args.loops or None,
        initial_toggles=tuple(args.toggle),
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_read_stdin, args=(loop, lines), name="loopsync stdin", daemon=True).start()

    async def read_commands() -> None:
        while True:
            line = await lines.get()
            if line is None:
                if sys.stdin.isatty():
                    stop.set()  # Ctrl-D at a terminal means quit; a closed pipe just ends the commands
                return
            if not _run_command(client, line):
                stop.set()
                return

    async with client:
        commands = asyncio.create_task(read_commands())
        stopped = asyncio.create_task(stop.wait())
        finished = asyncio.create_task(client.finished.wait())
        await asyncio.wait({stopped, finished}, return_when=asyncio.FIRST_COMPLETED)
        for task in (commands, stopped, finished):
            task.cancel()
    if client.fatal is not None:
        print(f"The server refused to let {args.user} join: {client.fatal}.", file=sys.stderr)
        return 1
    if not client.joined_ever:
        print(f"Could not reach the server at {args.url}.", file=sys.stderr)
        return 1
    return 0

