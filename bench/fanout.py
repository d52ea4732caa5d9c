"""Server fan-out: loopsync against a bare relay on the same stack, same run, same load.

Each scenario starts the bare relay (``bench/bare_relay.py``), then
``loopsync serve`` (SQLite in a temporary directory, every update committed
before it is acknowledged), each in its own process, and drives each with the
same load from separate worker processes on 127.0.0.1. A client's update carries
its send time (``time.monotonic_ns() // 1000``, one clock for every process
of the machine) as its ``seq``, which both servers pass on, so every receiver
measures the delivery latency of every update.

Scenarios (default: about a minute and a half in all, 3 s windows and 2 s
ramp steps, the relay and loopsync, the ramp bisected three times;
``--long``: 8-10 s windows and 4 s ramp steps, every server, the ramp
bisected four times):

- ``rooms``: 500 rooms x 4 clients, each sending its part once per loop at
  two loops a second;
- ``crowd``: one room of 200 clients, each sending once every 2 s;
- ``ramp``: rooms of 4 clients each sending 10 updates a second, the number of
  rooms doubled from 100 until p99 passes 20 ms (a near miss, or a miss
  with CPU to spare, gets a second run), then bisected, to find the most
  deliveries per second with p99 under 20 ms. Each server runs once for its
  whole ramp and keeps its clients from one step to the next;
- ``cost`` (with ``--floor`` or ``--long``): 150 rooms of 4 at the ramp's
  rate, under every server's limit, the servers taking turns three times:
  each server's CPU per delivery as a multiple of the relay's, which bounds
  the share of the relay's deliveries it can make on the same CPU.

With ``--long`` every scenario also runs the stock
y-websocket server (``yjs``: Yjs on Node.js, what a JavaScript developer
would use for shared data; documents in memory, no validation), installed
from ``bench/yjs/package-lock.json`` on first use. Its clients join the document named by their room and send
real Yjs updates made beforehand by ``bench/yjs/updates.js`` (each user
sets its own entry of one map, as it owns one part in loopsync), with the
send time written into each; the server applies every update to the room's
document and sends it to every client of the room, its sender too (that
echo counts as the sender's ack).

Every step sends for 1 s before its measured window (a y-websocket
server's first for 3 s, while V8 compiles its hot code), and nothing sent
then is counted or timed.

The long ramp also runs ``loopsync serve --store memory`` (``loopsync-memory``):
the same rules without the disk, to tell what loopsync's code costs from what
waiting for the disk costs. Before the scenarios, a disk probe measures the
disk the stores write to: a 4 KiB write and ``fdatasync`` every 3 ms, as a
busy store commits, for a few seconds. A store that acknowledges only what is
on disk inherits every stall of that disk, whatever its code.

Reports deliveries per second, latency p50/p99/max, server CPU seconds and
memory per connection, and each server's throughput as a ratio of the relay's.
``--floor`` adds the floor to the ramp and the cost scenario (``bare_relay.py --durable``), which
parses, commits, acknowledges and passes on every frame and does nothing
else, to tell what DESIGN.md's rules cost on this stack from what loopsync's
code costs (a few minutes more). ``--smoke`` runs a few seconds of a
small load on every server (the test suite does).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, cast

from loopsync.server import event_loop_factory

ROOT = Path(__file__).resolve().parent.parent
YJS_DIR = ROOT / "bench" / "yjs"
STEPS = 16
WORKERS = 2
JOIN_TIMEOUT_SECONDS = 60
GO_MARGIN_SECONDS = 0.2
"""Workers hear "go" one after the other; the first send comes this long
after the parent says it, so that every worker has heard it by then."""
WARMUP_SECONDS = 1.0
"""Every step sends this long before its measured window: what is sent in the
warm-up is neither counted nor timed, nor is the server's CPU in it. Time
for a new load's queues to settle, and for what a ramp's step before left
in them to go out."""
YJS_WARMUP_SECONDS = 3.0
"""The warm-up of a y-websocket server's first step. It runs on V8, which
compiles its hot code while it runs: in 8 s from a cold start at 12,000
deliveries/s its p99 was 97 ms, in 24 s 3.8 ms. The Python servers need no
such warm-up."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_SECONDS = 0.5
"""A worker stops listening once nothing has come for this long after its last send
(25 times the p99 budget: a delivery later than that is as good as lost), and,
against a server that acknowledges, once every update it sent in the window is
acknowledged or refused: a commit that waits out a stall of the disk holds back
the acks and the deliveries of the updates behind it alike."""
JOINS_IN_FLIGHT = 32
"""Clients of one worker that may be joining at once (connected, not yet in their room)."""


# -- worker process ----------------------------------------------------------------
#
# The load generator must cost less than the servers it measures: both share
# the machine's two cores. A client here is therefore a bare asyncio protocol
# speaking just enough RFC 6455 (handshake, text frames masked with a zero
# key, pong, close), its sends timed by ``call_at`` rather than a task each,
# and it reads ``type`` and ``seq`` out of a frame with a regex, not
# ``json.loads``; the workers run on uvloop like the servers. All of this
# leaves the servers more of the machine than aiohttp's client did.

_TYPE = re.compile(rb'"type": ?"(\w+)"')
_SEQ = re.compile(rb'"seq": ?(\d+)')
_MARK = re.compile(rb"u=(\d{6}) t=(\d{16})")
"""The mark in a Yjs update (``bench/yjs/updates.js``): its sender's index and send time."""
_TIME_PLACEHOLDER = b"t=" + b"0" * 16
_HANDSHAKE = ("GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: bG9vcHN5bmMgbG9hZCAxMg==\r\nSec-WebSocket-Version: 13\r\n\r\n")
_ZERO_MASK = b"\x00\x00\x00\x00"  # a legal masking key that leaves the payload as it is


def _client_frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    return header + _ZERO_MASK + payload


class _LoadClient(asyncio.Protocol):
    """One member of a room: joins, sends its part every ``period`` s once told to, times every update it hears.

    Against the y-websocket server (``worker.yjs``) it joins the document
    named by its room in the URL path, sends the Yjs updates made for it
    beforehand (``yjs_updates``, as sync messages with the send time written
    into each), and counts the server's echo of its own update as its ack.
    """

    def __init__(self, worker: _Worker, room: str, user: str, index: int = 0, yjs_updates: list[bytes] | None = None) -> None:
        self.worker = worker
        self.room = room
        self.user = user
        self.index = index
        self.hello = json.dumps({"type": "hello", "v": 1, "room": room, "user": user, "playing": True, "bpm": 120}).encode()
        self.yjs_updates = iter(yjs_updates or ())
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        path = f"/{self.room}" if self.worker.yjs else "/ws"  # y-websocket: the path names the document
        self.transport.write(_HANDSHAKE.format(path=path, host=self.worker.host).encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.lost(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"no WebSocket upgrade: {buffer[:200]!r}")
            self.upgraded = True
            buffer = buffer[end + 4:]
            if not self.worker.yjs:  # y-websocket joins by the URL alone
                self.send(self.hello)
            if not self.worker.snapshots:  # the bare relay answers nothing to hello, y-websocket sends no snapshot
                self.worker.joined()
        position, size = 0, len(buffer)
        while size - position >= 2:
            opcode, length = buffer[position] & 0x0F, buffer[position + 1] & 0x7F
            start = position + 2
            if length >= 126:
                extra = 2 if length == 126 else 8
                if start + extra > size:
                    break  # the extended length has not all arrived yet
                length, start = int.from_bytes(buffer[start:start + extra], "big"), start + extra
            if start + length > size:
                break
            self.frame(opcode, buffer[start:start + length])
            position = start + length
        self.buffer = buffer[position:]

    def frame(self, opcode: int, payload: bytes) -> None:
        worker = self.worker
        if opcode == 0x9:  # ping
            self.send(payload, 0xA)
            return
        if opcode == 0x8:
            assert self.transport is not None
            self.transport.close()
            return
        worker.last_receive = time.monotonic()
        if opcode == 0x2:  # y-websocket: an update is a binary sync message (0, 2, length, update)
            mark = _MARK.search(payload) if payload[:2] == b"\x00\x02" else None
            if mark is not None:  # the server sends each update to its sender too: that echo is the ack
                worker.heard(int(mark.group(2)), ack=int(mark.group(1)) == self.index)
            return
        kind = _TYPE.search(payload)
        kind_name = kind.group(1) if kind else b""
        if kind_name in (b"update", b"ack"):
            seq = _SEQ.search(payload)
            assert seq is not None
            worker.heard(int(seq.group(1)), ack=kind_name == b"ack")  # every update's seq is its send time
        elif kind_name == b"snapshot":
            worker.joined()
        elif kind_name == b"error":
            worker.stats["errors"] += 1

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(_client_frame(opcode, payload))

    def send_part(self) -> None:
        seq = time.monotonic_ns() // 1000
        if self.worker.yjs:
            self.send(next(self.yjs_updates).replace(_TIME_PLACEHOLDER, b"t=%016d" % seq, 1), 0x2)
        else:
            steps = [random.randint(0, 1) for _ in range(STEPS)]
            self.send(f'{{"type":"update","seq":{seq},"part":{{"sound":"kick","steps":{json.dumps(steps)}}}}}'.encode())
        if seq >= self.worker.measured_from_us:
            self.worker.stats["sent"] += 1


class _Worker:
    """One load process: its share of the members, what they heard in the current step, and the schedule of their sends.

    Member ``i`` (of every worker's) is ``user{i % per_room}`` of
    ``room{i // per_room}``; this worker has those with ``i % workers ==
    index``. The parent drives it through stdin, one command a line:
    ``step ACTIVE WARMUP DURATION`` connects its members among the first
    ``ACTIVE`` that are not connected (the others stay as they are) and
    answers ``ready``; ``go T`` has those members send from monotonic
    microsecond ``T`` on, for ``WARMUP + DURATION`` seconds, and answers with
    what they heard of the last ``DURATION`` seconds, as JSON. Several steps
    against one server keep its connections, so a ramp pays no restarts.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.host = config["url"].split("/")[2]
        self.snapshots: bool = config["snapshots"]
        self.yjs: bool = config.get("yjs", False)
        self.acks: bool = config.get("acks", False)
        """The server acknowledges each update (all but the relay; y-websocket's echo counts)."""
        self.per_room: int = config["per_room"]
        self.period: float = config["period"]
        self.index: int = config.get("index", 0)
        self.worker_count: int = config.get("workers", 1)
        self.clients: dict[int, _LoadClient] = {}
        """Connected members by index; a member whose connection the server closed is dropped, and joins again at the next step."""
        self.stats: dict[str, Any] = {}
        self.latencies_us: list[int] = []
        self.last_receive = 0.0
        self.measured_from_us = 1 << 62
        """Only updates sent from this ``time.monotonic_ns() // 1000`` on count (set by "go", after the warm-up)."""
        self.ready = asyncio.Event()
        self.joining = 0
        self.join_slots = asyncio.Semaphore(JOINS_IN_FLIGHT)
        self.steps = 0
        self.senders: list[_LoadClient] = []
        self.warmup = self.duration = 0.0
        self._new_step_stats()

    def _new_step_stats(self) -> None:
        self.stats = {"sent": 0, "acks": 0, "errors": 0, "disconnects": 0}
        self.latencies_us = []

    def heard(self, sent_us: int, ack: bool) -> None:
        """An ack or a delivery of the update sent at ``sent_us``: counted, or timed, if it was sent in the measured window."""
        if sent_us < self.measured_from_us:
            return
        if ack:
            self.stats["acks"] += 1
        else:
            self.latencies_us.append(time.monotonic_ns() // 1000 - sent_us)

    def joined(self) -> None:
        self.join_slots.release()
        self.joining -= 1
        if self.joining == 0:
            self.ready.set()

    def lost(self, client: _LoadClient) -> None:
        """The server closed ``client``'s connection (a load worker closes none before its end)."""
        if self.clients.get(client.index) is client:
            del self.clients[client.index]
            self.stats["disconnects"] += 1

    async def serve(self) -> None:
        # A collection of the generations that hold the clients and the send
        # timers takes tens of milliseconds: with it on, the p99 the workers
        # reported was the load generator's own pauses (a bare relay at
        # 36,000 deliveries/s: p99 15-19 ms with it, 5-8 ms without). The
        # workers make no reference cycles worth collecting in a minute.
        gc.disable()
        loop = asyncio.get_running_loop()
        while command := (await loop.run_in_executor(None, sys.stdin.readline)).split():
            if command[0] == "step":
                await self.prepare(int(command[1]), float(command[2]), float(command[3]))
                print("ready", flush=True)
            elif command[0] == "go":
                print(json.dumps(await self.go(int(command[1]))), flush=True)
        for client in list(self.clients.values()):
            assert client.transport is not None
            client.transport.abort()

    async def prepare(self, active: int, warmup: float, duration: float) -> None:
        """Connect this worker's members among the first ``active`` that are not, and make what they will send."""
        loop = asyncio.get_running_loop()
        host, port = self.host.rsplit(":", 1)
        missing = [index for index in range(self.index, active, self.worker_count) if index not in self.clients]
        self.ready.clear()
        self.joining = len(missing)
        for index in missing:
            # At most JOINS_IN_FLIGHT clients joining at a time: a server's listen
            # backlog (aiohttp's is 128) that overflows drops connections, which
            # the kernel retries only after a second. And a socket connected here,
            # not a host and port for create_connection, which resolves the
            # address in a thread for every connection: 5 ms each.
            await self.join_slots.acquire()
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, int(port)))
            room, user = f"room{index // self.per_room}", f"user{index % self.per_room}"
            _, self.clients[index] = await loop.create_connection(lambda: _LoadClient(self, room, user, index), sock=sock)
        if missing:
            await asyncio.wait_for(self.ready.wait(), JOIN_TIMEOUT_SECONDS)
        self.warmup, self.duration = warmup, duration
        self.senders = [client for index in range(self.index, active, self.worker_count) if (client := self.clients.get(index))]
        if self.yjs:  # each step's updates come from new Yjs clients (see _yjs_updates)
            updates = _yjs_updates([(client.user, client.index) for client in self.senders], self._sends(), self.steps)
            for client in self.senders:
                client.yjs_updates = iter(updates[client.index])
        self.steps += 1

    def _unanswered(self) -> bool:
        stats = self.stats
        return self.acks and not stats["disconnects"] and stats["acks"] + stats["errors"] < stats["sent"]

    def _sends(self) -> int:
        return int((self.warmup + self.duration) / self.period)

    async def go(self, sends_from_us: int) -> dict[str, Any]:
        """Send as prepared from ``sends_from_us`` on; what was heard of the updates sent after the warm-up."""
        loop = asyncio.get_running_loop()
        self._new_step_stats()
        sends_from = sends_from_us / 1_000_000  # the same instant for every worker: CLOCK_MONOTONIC is the machine's
        self.measured_from_us = int((sends_from + self.warmup) * 1_000_000)
        first = loop.time() + sends_from - time.monotonic()
        for client in self.senders:
            start = first + random.uniform(0, self.period)
            for number in range(self._sends()):
                loop.call_at(start + number * self.period, client.send_part)
        await asyncio.sleep(sends_from + self.warmup + self.duration + self.period - time.monotonic())
        # Let the last deliveries arrive: until nothing has come for QUIET_SECONDS
        # and every update sent is answered (unless a client was closed), at most 10 s.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (time.monotonic() - self.last_receive < QUIET_SECONDS or self._unanswered()):
            await asyncio.sleep(0.1)
        return {**self.stats, "latencies_us": self.latencies_us}


def _yjs_updates(users: list[tuple[str, int]], count: int, generation: int = 0) -> dict[int, list[bytes]]:
    """``count`` Yjs updates per ``(user, index)``, made by ``bench/yjs/updates.js``, each wrapped as a y-websocket sync message.

    Each ``generation`` writes from new Yjs clients: a client's updates form
    a chain from its first, so a later step cannot start a chain again under
    the same client, whose updates the server already has.
    """
    request = {"users": [[index, user] for user, index in users], "count": count, "generation": generation}
    made = subprocess.run(["node", str(YJS_DIR / "updates.js")], input=json.dumps(request).encode(),
                          capture_output=True, check=True, timeout=JOIN_TIMEOUT_SECONDS).stdout
    updates: dict[int, list[bytes]] = {}
    position = 0
    for _, index in users:
        messages = updates[index] = []
        for _ in range(count):
            length = int.from_bytes(made[position:position + 4], "big")
            update = made[position + 4:position + 4 + length]
            position += 4 + length
            messages.append(b"\x00\x02" + _var_uint(length) + update)  # messageSync, messageYjsUpdate, the update
    return updates


def _var_uint(value: int) -> bytes:
    """lib0's unsigned varint: 7 bits a byte, low bits first."""
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


# -- parent: servers, workers, figures ------------------------------------------------


@dataclass
class Server:
    """A server process under test and the URL it printed."""

    process: subprocess.Popen[str]
    ws_url: str

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time the server has used so far, all its threads: (in user space, in the kernel)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)  # valgrind (bench/instructions.py) takes a while to write its counts


def _start(kind: str, data_dir: str, wrapper: tuple[str, ...] = ()) -> Server:
    """Start ``kind``'s server on a free port; ``wrapper`` goes before its command (``valgrind ...``)."""
    if kind == "yjs":
        return _start_yjs()
    if kind in ("loopsync", "loopsync-memory"):
        store = "memory" if kind == "loopsync-memory" else "sqlite"
        command = [sys.executable, "-m", "loopsync", "serve", "--port", "0", "--store", store, "--data", data_dir]
    elif kind == "floor":  # the bare relay plus parse, commit and ack: see bare_relay.py
        command = [sys.executable, str(ROOT / "bench" / "bare_relay.py"), "--port", "0", "--durable", data_dir]
    else:
        command = [sys.executable, str(ROOT / "bench" / "bare_relay.py"), "--port", "0"]
    process = subprocess.Popen([*wrapper, *command], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = _first_line(process, "http://", kind)
    http_url = line.split("http://", 1)[1].split()[0].rstrip("/")
    return Server(process, f"ws://{http_url}/ws")


def _first_line(process: subprocess.Popen[str], marker: str, name: str) -> str:
    """The first line a server prints, which must hold ``marker`` (it says it listens); else kill it and raise."""
    assert process.stdout is not None
    ready = select.select([process.stdout], [], [], JOIN_TIMEOUT_SECONDS)[0]
    line = process.stdout.readline() if ready else ""
    if marker not in line:
        process.kill()
        raise RuntimeError(f"{name} did not start: {line!r}")
    return line


def install_yjs() -> None:
    """Install the y-websocket server and Yjs into ``bench/yjs/node_modules`` from its lock file, once."""
    if (YJS_DIR / "node_modules" / "y-websocket" / "bin" / "server.js").exists():
        return
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("bench/fanout.py needs Node.js and npm for the y-websocket reference (Debian: apt-get install nodejs npm)")
    print("installing the y-websocket server into bench/yjs/node_modules (npm ci)", flush=True)
    subprocess.run(["npm", "ci", "--omit=optional", "--no-audit", "--no-fund"], cwd=YJS_DIR, check=True,
                   stdout=subprocess.DEVNULL, timeout=300)


def _start_yjs() -> Server:
    """The stock y-websocket server (``y-websocket`` 1.5.4's ``bin/server.js``), documents in memory as it ships."""
    install_yjs()
    with socket.socket() as probe:  # y-websocket takes its port from PORT and cannot pick a free one itself
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(["node", str(YJS_DIR / "node_modules" / "y-websocket" / "bin" / "server.js")],
                               stdout=subprocess.PIPE, text=True, cwd=YJS_DIR, env={**os.environ, "HOST": "127.0.0.1", "PORT": str(port)})
    _first_line(process, "running at", "the y-websocket server")
    return Server(process, f"ws://127.0.0.1:{port}")


def _percentile(sorted_values: list[int], share: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))] / 1000


class Session:
    """One server process under load from ``WORKERS`` load processes, for one step or many.

    A ramp runs all its steps against one session per server: the clients
    stay connected from one step to the next, so a step costs its warm-up,
    its window and its tail, not a server start and the joins.
    """

    def __init__(self, kind: str, per_room: int, period: float, wrapper: tuple[str, ...] = ()) -> None:
        self.kind, self.per_room, self.period = kind, per_room, period
        self.data_dir = tempfile.TemporaryDirectory()
        self.server = _start(kind, self.data_dir.name, wrapper)
        self.workers: list[subprocess.Popen[str]] = []
        try:
            self.rss_idle = self.server.rss_bytes()
            for index in range(WORKERS):
                config = {"url": self.server.ws_url, "snapshots": kind.startswith("loopsync"), "yjs": kind == "yjs", "acks": kind != "relay",
                          "per_room": per_room, "period": period, "index": index, "workers": WORKERS}
                self.workers.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(config)],
                                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        except BaseException:
            self.close()
            raise
        self.connections = 0
        self.steps = 0

    def _tell(self, command: str) -> None:
        for worker in self.workers:
            assert worker.stdin is not None
            worker.stdin.write(command + "\n")
            worker.stdin.flush()

    def _answers(self, what: str, timeout: float) -> list[str]:
        """Each worker's one-line answer to ``what`` it was told."""
        answers = []
        for worker in self.workers:
            assert worker.stdout is not None
            answer = worker.stdout.readline() if select.select([worker.stdout], [], [], timeout)[0] else ""
            if not answer:
                raise RuntimeError(f"a load worker of {self.kind} did not answer {what!r} within {timeout:g} s")
            answers.append(answer)
        return answers

    def step(self, rooms: int, duration: float, warmup: float | None = None) -> dict[str, Any]:
        """Load the first ``rooms`` rooms for ``warmup + duration`` s; figures of the last ``duration`` s.

        ``warmup`` defaults to ``WARMUP_SECONDS`` (``YJS_WARMUP_SECONDS`` for
        a y-websocket server's first step).
        """
        if warmup is None:
            warmup = YJS_WARMUP_SECONDS if self.kind == "yjs" and self.steps == 0 else WARMUP_SECONDS
        active = rooms * self.per_room
        self._tell(f"step {active} {warmup} {duration}")
        self._answers("step", JOIN_TIMEOUT_SECONDS)  # "ready": connected, updates made
        self.connections = max(self.connections, active)
        kib_per_connection = (self.server.rss_bytes() - self.rss_idle) / self.connections / 1024
        sends_from = time.monotonic() + GO_MARGIN_SECONDS
        self._tell(f"go {int(sends_from * 1_000_000)}")
        time.sleep(max(0.0, sends_from + warmup - time.monotonic()))
        (user_before, system_before), wall_before = self.server.cpu_seconds(), time.monotonic()
        results = [json.loads(answer) for answer in self._answers("go", duration + 60)]
        wall = time.monotonic() - wall_before
        user_after, system_after = self.server.cpu_seconds()
        user, system = user_after - user_before, system_after - system_before
        self.steps += 1
        latencies = sorted(value for result in results for value in result["latencies_us"])
        sent = sum(result["sent"] for result in results)
        return {
            "server": self.kind, "rooms": rooms, "per_room": self.per_room, "connections": active,
            "updates_sent": sent, "deliveries": len(latencies), "deliveries_expected": sent * (self.per_room - 1),
            "acks": sum(result["acks"] for result in results), "errors": sum(result["errors"] for result in results),
            "disconnects": sum(result["disconnects"] for result in results),
            "deliveries_per_s": len(latencies) / duration,
            "p50_ms": _percentile(latencies, 0.50), "p99_ms": _percentile(latencies, 0.99),
            "max_ms": latencies[-1] / 1000 if latencies else float("nan"),
            # Share of one core over the sending window (the tail after it is mostly idle waiting).
            "server_cpu_s": user + system, "server_cpu_share": (user + system) / duration, "wall_s": wall,
            "server_user_s": user, "server_system_s": system,
            # Of every connection the session has (a ramp step after a larger one has idle ones too).
            "kib_per_connection": kib_per_connection,
        }

    def close(self) -> None:
        """End the workers (they close their clients), then the server, and remove its data."""
        for worker in self.workers:
            if worker.stdin is not None:
                worker.stdin.close()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        self.server.stop()
        self.data_dir.cleanup()


def run_load(kind: str, rooms: int, per_room: int, period: float, duration: float, wrapper: tuple[str, ...] = (),
             warmup: float | None = None) -> dict[str, Any]:
    """Start ``kind``'s server, connect ``rooms x per_room`` clients, send for ``warmup + duration`` s; return figures of the last ``duration`` s."""
    session = Session(kind, per_room, period, wrapper)
    try:
        return session.step(rooms, duration, warmup)
    finally:
        session.close()


def _warmup_text(warmup: float | None, kinds: tuple[str, ...]) -> str:
    if warmup is not None:
        return f"{warmup:g} s of warm-up"
    if "yjs" not in kinds:
        return f"{WARMUP_SECONDS:g} s of warm-up"
    return f"{WARMUP_SECONDS:g} s of warm-up ({YJS_WARMUP_SECONDS:g} s for the y-websocket server's first)"


def _row(figures: dict[str, Any]) -> str:
    return (f"  {figures['server']:<15} {figures['connections']:>5} conns  {figures['deliveries_per_s']:>9,.0f} deliveries/s"
            f"  ({figures['deliveries']}/{figures['deliveries_expected']})  p50 {figures['p50_ms']:6.2f} ms"
            f"  p99 {figures['p99_ms']:6.2f} ms  max {figures['max_ms']:7.2f} ms  cpu {figures['server_cpu_share']:4.0%}"
            f"  {figures['kib_per_connection']:5.1f} KiB/conn  errors {figures['errors']}")


def _cpu_per_delivery(figures: dict[str, Any], part: str = "cpu") -> float:
    """Server CPU per delivery in µs: all of it (``cpu``), or in ``user`` space or the kernel (``system``) only."""
    return float(figures[f"server_{part}_s"]) / max(int(figures["deliveries"]), 1) * 1e6


def _microseconds_per_delivery(figures: dict[str, Any]) -> str:
    return (f"{_cpu_per_delivery(figures):.1f} µs of CPU per delivery (user space"
            f" {_cpu_per_delivery(figures, 'user'):.1f}, kernel {_cpu_per_delivery(figures, 'system'):.1f})")


def _times(figures: dict[str, Any], baseline: dict[str, Any], part: str) -> str:
    """Server CPU per delivery as a multiple of the baseline's (``part`` as in :func:`_cpu_per_delivery`)."""
    if not _cpu_per_delivery(baseline, part):
        return "n/a"  # /proc counts CPU in ticks of 10 ms: a short run may show none
    return f"{_cpu_per_delivery(figures, part) / _cpu_per_delivery(baseline, part):.2f}x"


def scenario(name: str, rooms: int, per_room: int, period: float, duration: float, kinds: tuple[str, ...],
             warmup: float | None = None) -> list[dict[str, Any]]:
    """Run one load against each server of ``kinds`` (the relay first) and print the comparison."""
    print(f"{name}: {rooms} rooms x {per_room} clients, one update per client every {period:g} s, {duration:g} s"
          f" after {_warmup_text(warmup, kinds)}")
    runs = {kind: run_load(kind, rooms, per_room, period, duration, warmup=warmup) for kind in kinds}
    for figures in runs.values():
        print(_row(figures))
        figures["scenario"] = name
    relay = runs["relay"]
    for kind in kinds[1:]:
        print(f"  {kind} / relay throughput: {runs[kind]['deliveries_per_s'] / relay['deliveries_per_s']:.2f}"
              f"  cpu per delivery: {_times(runs[kind], relay, 'cpu')} (user space {_times(runs[kind], relay, 'user')},"
              f" kernel {_times(runs[kind], relay, 'system')})")
    return list(runs.values())


COST_ROOMS = 150
COST_ROUNDS = 3


def cost(duration: float, kinds: tuple[str, ...], rooms: int = COST_ROOMS, rounds: int = COST_ROUNDS,
         warmup: float | None = None) -> list[dict[str, Any]]:
    """Each server's CPU per delivery at one load, the servers taking turns ``rounds`` times (the relay first).

    A ramp's limit moves with the machine's speed and with every stall of
    its disk; CPU per delivery at one load moves less (a slow spell of the
    machine still moves it), and a server
    that needs k times another's CPU per delivery delivers at most 1/k of
    it on the same core. The load (600 connections, 18,000 deliveries/s by
    default) is under every server's limit, and each round runs every
    server once in turn, so a slow spell of the machine falls on all of
    them; each ratio is the median of the rounds' ratios.
    """
    period = 0.1
    print(f"cost: {rooms} rooms x 4 clients, one update per client every {period:g} s, {rounds} rounds of {duration:g} s"
          f" after {_warmup_text(warmup, kinds)}; the servers take turns")
    rounds_rows: list[dict[str, dict[str, Any]]] = []
    sessions: dict[str, Session] = {}
    try:
        for kind in kinds:
            sessions[kind] = Session(kind, 4, period)
        for _ in range(rounds):
            row = {}
            for kind in kinds:
                row[kind] = figures = sessions[kind].step(rooms, duration, warmup)
                figures["scenario"] = "cost"
            rounds_rows.append(row)
    finally:
        for session in sessions.values():
            session.close()
    for kind in kinds:
        runs = [row[kind] for row in rounds_rows]
        cpus = [_cpu_per_delivery(run) for run in runs]
        p99s = ", ".join(f"{run['p99_ms']:.1f}" for run in runs)
        print(f"  {kind:<15} {runs[0]['connections']:>5} conns  CPU per delivery {', '.join(f'{cpu:.1f}' for cpu in cpus)} µs"
              f" (median {statistics.median(cpus):.1f})  p99 {p99s} ms"
              f"  deliveries {sum(run['deliveries'] for run in runs)}/{sum(run['deliveries_expected'] for run in runs)}"
              f"  errors {sum(run['errors'] for run in runs)}")
    for kind in kinds[1:]:
        # /proc counts CPU in ticks of 10 ms: a short round may show none
        ratios = [_cpu_per_delivery(row[kind]) / _cpu_per_delivery(row["relay"]) for row in rounds_rows
                  if _cpu_per_delivery(row["relay"]) and _cpu_per_delivery(row[kind])]
        if not ratios:
            print(f"  {kind} / relay, CPU per delivery: n/a")
            continue
        times = statistics.median(ratios)
        print(f"  {kind} / relay, CPU per delivery: {times:.2f}x ({', '.join(f'{ratio:.2f}' for ratio in ratios)}),"
              f" so at most {1 / times:.2f} of the relay's deliveries on the same CPU")
    return [row[kind] for row in rounds_rows for kind in kinds]


RAMP_FIRST_ROOMS = 100
RAMP_MAX_ROOMS = 1600
RAMP_BISECTIONS = 4
"""From a doubling that broke the budget, four halvings: the limit to within
a sixteenth of that gap (between 200 and 400 rooms, 12 rooms: about 1,500
deliveries/s at 10 updates/s per client); with three, loopsync's limit
showed as 22,440 deliveries/s wherever it lay between that and 24,000."""
RAMP_TRIES = 2
"""A load keeps the budget if one of this many runs of it does. One stall of
the shared machine or of its disk (tens of milliseconds) in a 4 s step can
decide a p99 by itself, and a single unlucky step would end a server's ramp
early; every server gets the same second chance, for a near miss (p99 under
twice the budget) or a miss with CPU to spare (under ``RAMP_SPARE_CPU`` of a
core: not overload, so a stall)."""
RAMP_SPARE_CPU = 0.8
QUICK_RAMP_BISECTIONS = 3
"""The default run's ramp (the relay and loopsync only, 3 s steps): the limit
to within an eighth of the last doubling's gap."""


def _within_budget(figures: dict[str, Any], budget_ms: float) -> bool:
    return bool(figures["p99_ms"] <= budget_ms and figures["deliveries"] >= 0.999 * figures["deliveries_expected"])


def _keeps_budget(rooms: int, budget_ms: float) -> Generator[int, dict[str, Any], bool]:
    """Ask for runs of ``rooms`` (yield it, get the run's figures) until one keeps the budget or ``RAMP_TRIES`` have not."""
    for _ in range(RAMP_TRIES):
        figures = yield rooms
        if _within_budget(figures, budget_ms):
            return True
        if figures["p99_ms"] > 2 * budget_ms and figures["server_cpu_share"] >= RAMP_SPARE_CPU:
            return False  # overloaded, not a near miss: a second run would not change the verdict
    return False


def _find_limit(budget_ms: float, bisections: int = RAMP_BISECTIONS) -> Generator[int, dict[str, Any], None]:
    """One server's search: the rooms of each run it needs, given the figures of the run before."""
    kept, broke = 0, RAMP_FIRST_ROOMS
    while broke <= RAMP_MAX_ROOMS and (yield from _keeps_budget(broke, budget_ms)):
        kept, broke = broke, broke * 2
    for _ in range(bisections if broke <= RAMP_MAX_ROOMS else 0):
        middle = (kept + broke) // 2
        if middle in (kept, broke):
            break
        if (yield from _keeps_budget(middle, budget_ms)):
            kept = middle
        else:
            broke = middle


def _limits(rows: list[dict[str, Any]], budget_ms: float) -> dict[str, dict[str, Any]]:
    """Each server's ramp step with the most deliveries/s that kept the budget (a server with none has no entry)."""
    limits: dict[str, dict[str, Any]] = {}
    for row in rows:
        if (row.get("scenario") == "ramp" and _within_budget(row, budget_ms)
                and row["deliveries_per_s"] > limits.get(row["server"], {}).get("deliveries_per_s", 0)):
            limits[row["server"]] = row
    return limits


def ramp(duration: float, kinds: tuple[str, ...], budget_ms: float = 20.0, bisections: int = RAMP_BISECTIONS) -> list[dict[str, Any]]:
    """Find, per server, the most rooms it serves with p99 under ``budget_ms`` and nothing lost.

    The number of rooms doubles from ``RAMP_FIRST_ROOMS`` until a load breaks
    the budget (in ``RAMP_TRIES`` runs), then the gap between the last load
    that kept it and the first that broke it is halved ``bisections``
    times. Each client sends 10 updates a second (half the server's
    per-connection rate limit), so the load grows by connections, as it does
    in real use. Each server runs once for its whole search (a
    :class:`Session`): its clients stay connected, a step adds the rooms it
    needs and a smaller step leaves the others idle. The servers' searches
    take turns, one step each, so that a slow spell of the shared machine
    falls on every server's search alike rather than on one server's whole ramp.
    """
    period = 0.1
    print(f"ramp: rooms of 4 clients, one update per client every {period:g} s, rooms doubled from {RAMP_FIRST_ROOMS}"
          f" then bisected {bisections} times, {duration:g} s per step after {_warmup_text(None, kinds)},"
          f" p99 budget {budget_ms:g} ms; the servers take turns")
    rows = []
    searches = {kind: _find_limit(budget_ms, bisections) for kind in kinds}
    next_rooms = {kind: next(search) for kind, search in searches.items()}
    sessions: dict[str, Session] = {}
    try:
        while next_rooms:
            for kind in list(next_rooms):
                if kind not in sessions:
                    sessions[kind] = Session(kind, 4, period)
                session = sessions[kind]
                figures = session.step(next_rooms[kind], duration)
                figures["scenario"] = "ramp"
                rows.append(figures)
                print(_row(figures), flush=True)
                try:
                    next_rooms[kind] = searches[kind].send(figures)
                except StopIteration:
                    del next_rooms[kind]
                    sessions.pop(kind).close()
    finally:
        for session in sessions.values():
            session.close()
    best_by_server = _limits(rows, budget_ms)
    for kind in kinds:
        if kind in best_by_server:
            best = best_by_server[kind]
            print(f"  {kind}: most under the budget: {best['deliveries_per_s']:,.0f} deliveries/s"
                  f" ({best['connections']} connections) at p99 {best['p99_ms']:.2f} ms,"
                  f" {best['server_cpu_share']:.0%} of a core: {_microseconds_per_delivery(best)}")
    for kind, baseline in (("loopsync", "relay"), ("loopsync-memory", "relay"), ("yjs", "relay"), ("floor", "relay"),
                           ("loopsync", "floor"), ("loopsync", "yjs"), ("loopsync-memory", "yjs")):
        if kind in best_by_server and baseline in best_by_server:
            print(f"  {kind} / {baseline}, most deliveries/s with p99 under {budget_ms:g} ms:"
                  f" {best_by_server[kind]['deliveries_per_s'] / best_by_server[baseline]['deliveries_per_s']:.2f}")
    return rows


DISK_PROBE_INTERVAL_SECONDS = 0.003
"""As often as a busy store commits (``store.COMMIT_INTERVAL_SECONDS``)."""
STALL_MS = 10.0


def disk_probe(seconds: float) -> dict[str, Any]:
    """The disk under the stores, measured as they use it: a 4 KiB write and ``fdatasync`` every 3 ms.

    A server that acknowledges only what is on disk waits for each of these,
    so their stalls are a floor under its delivery latency that no code
    removes. Reports the syncs' p50/p99/max and the share of the time spent
    in syncs longer than ``STALL_MS``.
    """
    latencies = []
    with tempfile.TemporaryDirectory() as directory:  # where run_load's servers keep their data
        descriptor = os.open(os.path.join(directory, "probe"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            block, offset = b"\x01" * 4096, 0
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                before = time.perf_counter()
                os.pwrite(descriptor, block, offset)
                os.fdatasync(descriptor)
                latencies.append(time.perf_counter() - before)
                offset = (offset + len(block)) % (1024 * len(block))  # a 4 MiB file, rewritten in turn like a WAL
                time.sleep(DISK_PROBE_INTERVAL_SECONDS)
            wall = time.monotonic() - started
        finally:
            os.close(descriptor)
    ordered = sorted(int(latency * 1_000_000) for latency in latencies)
    stalls = [latency for latency in latencies if latency * 1000 > STALL_MS]
    return {"syncs": len(ordered), "seconds": wall, "p50_ms": _percentile(ordered, 0.50), "p99_ms": _percentile(ordered, 0.99),
            "max_ms": ordered[-1] / 1000, "stalls": len(stalls), "stalled_share": sum(stalls) / wall}


def _disk_row(disk: dict[str, Any]) -> str:
    return (f"disk: {disk['syncs']} syncs of 4 KiB in {disk['seconds']:.0f} s, p50 {disk['p50_ms']:.2f} ms  p99 {disk['p99_ms']:.2f} ms"
            f"  max {disk['max_ms']:.1f} ms; {disk['stalls']} over {STALL_MS:g} ms, {disk['stalled_share']:.2%} of the time stalled")


PLOT_COLOURS = {"relay": "#7f7f7f", "floor": "#9467bd", "loopsync": "#1f77b4", "loopsync-memory": "#17becf", "yjs": "#ff7f0e"}


def ramp_svg(rows: list[dict[str, Any]], budget_ms: float = 20.0) -> str:
    """Every ramp step as a point, p99 (log scale) against deliveries/s, one colour per server; each limit ringed."""
    steps = [row for row in rows if row.get("scenario") == "ramp"]
    servers = [kind for kind in PLOT_COLOURS if any(row["server"] == kind for row in steps)]
    width, height, left, right, top, bottom = 760, 380, 64, 20, 40 + 16 * len(servers), 46
    plot_w, plot_h = width - left - right, height - top - bottom
    x_max = math.ceil(max([float(row["deliveries_per_s"]) for row in steps] + [10_000.0]) / 10_000) * 10_000
    y_low, y_high = 0.1, 10_000.0  # ms, log scale

    def x_of(deliveries_per_s: float) -> float:
        return left + plot_w * deliveries_per_s / x_max

    def y_of(ms: float) -> float:
        clamped = min(max(ms, y_low), y_high)
        return top + plot_h * (math.log10(y_high) - math.log10(clamped)) / (math.log10(y_high) - math.log10(y_low))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           '<text x="64" y="18" font-size="14">Fan-out ramp: p99 delivery latency against deliveries/s (bench/fanout.py)</text>']
    for exponent in range(-1, 5):
        y = y_of(10.0 ** exponent)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10.0 ** exponent:g}</text>')
    budget_y = y_of(budget_ms)
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{budget_y:.1f}" y2="{budget_y:.1f}" stroke="#d62728" stroke-dasharray="5,4"/>')
    out.append(f'<text x="{width - right - 4}" y="{budget_y - 5:.1f}" text-anchor="end" fill="#d62728">p99 budget {budget_ms:g} ms</text>')
    tick = 10_000 if x_max <= 100_000 else 20_000
    for value in range(0, int(x_max) + 1, tick):
        out.append(f'<text x="{x_of(value):.1f}" y="{height - bottom + 16}" text-anchor="middle">{value // 1000}k</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">deliveries per second'
               ' (rooms of 4, 10 updates/s per client); a ring marks each server\'s limit</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" text-anchor="middle">p99 (ms)</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="black"/>')
    limits = _limits(steps, budget_ms)
    for row_number, kind in enumerate(servers):
        colour = PLOT_COLOURS[kind]
        for row in steps:
            if row["server"] == kind:
                out.append(f'<circle cx="{x_of(row["deliveries_per_s"]):.1f}" cy="{y_of(row["p99_ms"]):.1f}" r="3" fill="{colour}"/>')
        label = kind
        best = limits.get(kind)
        if best is not None:
            out.append(f'<circle cx="{x_of(best["deliveries_per_s"]):.1f}" cy="{y_of(best["p99_ms"]):.1f}" r="7" fill="none"'
                       f' stroke="{colour}" stroke-width="2"/>')
            label += f': {best["deliveries_per_s"]:,.0f} deliveries/s under the budget'
            if kind != "relay" and "relay" in limits:
                label += f' ({best["deliveries_per_s"] / limits["relay"]["deliveries_per_s"]:.2f} of the relay)'
        y = 36 + 16 * row_number
        out.append(f'<circle cx="{left + 4}" cy="{y - 4}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{left + 14}" y="{y}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_plot(svg: str, path: Path, chromium: str) -> None:
    """Write the plot as SVG, or as PNG rendered by Chromium (as ``bench/clock.py`` does: no plotting library)."""
    if path.suffix.lower() != ".png":
        path.write_text(svg)
        return
    import clock  # bench/clock.py: Playwright, loaded only to draw a PNG
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=clock.CHROMIUM_ARGS)
        try:
            clock.write_plot(browser, svg, path)
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="loopsync fan-out against a bare relay")
    parser.add_argument("--long", action="store_true",
                        help="the full version: longer runs, every server in every scenario, a finer search (five to nine minutes)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds of small load (for the test suite)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--floor", action="store_true",
                        help="also run the floor (bare_relay.py --durable: parse, commit, ack, pass on; no rules) in the ramp, and the cost scenario")
    parser.add_argument("--plot", type=Path, help="draw the ramp (p99 against deliveries/s) to this .svg or .png (a PNG needs Chromium)")
    parser.add_argument("--from-json", type=Path, metavar="JSON", help="with --plot: draw a run saved with --json, run nothing")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary that renders a PNG")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_Worker(json.loads(args.worker)).serve())
        return 0
    if args.from_json:
        if not args.plot:
            parser.error("--from-json needs --plot")
        write_plot(ramp_svg(json.loads(args.from_json.read_text())["runs"]), args.plot, args.chromium)
        return 0
    floor = ("floor",) if args.floor else ()
    disk = disk_probe(0.5 if args.smoke else 10 if args.long else 3)
    print(_disk_row(disk), flush=True)
    if args.smoke:
        rows = scenario("smoke", 5, 4, 0.25, 1.5, ("relay", "floor", "loopsync", "loopsync-memory", "yjs"), warmup=0.5)
    elif args.long:
        rows = scenario("rooms", 500, 4, 0.5, 10, ("relay", "loopsync", "yjs"))
        rows += scenario("crowd", 1, 200, 2.0, 8, ("relay", "loopsync", "yjs"))
        rows += cost(2, ("relay", *floor, "loopsync", "loopsync-memory", "yjs"))
        rows += ramp(4, ("relay", *floor, "loopsync", "loopsync-memory", "yjs"))
    else:
        rows = scenario("rooms", 500, 4, 0.5, 3, ("relay", "loopsync"))
        rows += scenario("crowd", 1, 200, 2.0, 3, ("relay", "loopsync"))
        if args.floor:
            rows += cost(2, ("relay", *floor, "loopsync"))
        rows += ramp(2, ("relay", *floor, "loopsync"), bisections=QUICK_RAMP_BISECTIONS)
    if args.json:
        args.json.write_text(json.dumps({"disk": disk, "runs": rows}, indent=1))
    if args.plot:
        write_plot(ramp_svg(rows), args.plot, args.chromium)
    lost = [row for row in rows if row["server"].startswith("loopsync")
            and (row["deliveries"] < row["deliveries_expected"] or row["errors"])]
    if lost:
        print(f"loopsync lost deliveries or answered errors in {len(lost)} runs.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
