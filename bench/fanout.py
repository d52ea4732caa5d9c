"""Server fan-out: loopsync against a bare relay on the same stack, same run, same load.

Each scenario starts the bare relay (``bench/bare_relay.py``), then
``loopsync serve`` (SQLite in a temporary directory, every update committed
before it is acknowledged), each in its own process, and drives each with the
same load from separate worker processes on 127.0.0.1. A client's update carries
its send time (``time.monotonic_ns() // 1000``, one clock for every process
of the machine) as its ``seq``, which both servers pass on, so every receiver
measures the delivery latency of every update.

Scenarios (default: about three minutes in all, 4 s windows and 3 s ramp
steps, the ramp for the relay and loopsync, bisected three times;
``--long``: six to nine minutes, 8-10 s windows and 4 s ramp steps, the
ramp for every server, bisected four times):

- ``rooms``: 500 rooms x 4 clients, each sending its part once per loop at
  two loops a second;
- ``crowd``: one room of 200 clients, each sending once every 2 s;
- ``ramp``: rooms of 4 clients each sending 10 updates a second, the number of
  rooms doubled from 100 until p99 passes 20 ms (a near miss, or a miss
  with CPU to spare, gets a second run), then bisected, to find the most
  deliveries per second with p99 under 20 ms.

The rooms and crowd scenarios and the long ramp also run the stock
y-websocket server (``yjs``: Yjs on Node.js, what a JavaScript developer
would use for shared data; documents in memory, no validation), installed
from ``bench/yjs/package-lock.json`` on first use. Its clients join the document named by their room and send
real Yjs updates made beforehand by ``bench/yjs/updates.js`` (each user
sets its own entry of one map, as it owns one part in loopsync), with the
send time written into each; the server applies every update to the room's
document and sends it to every client of the room, its sender too (that
echo counts as the sender's ack).

Every run sends for ``WARMUP_SECONDS`` before its measured window, and
nothing sent then is counted or timed: V8 compiles the y-websocket server's
hot code while it runs.

The long ramp also runs ``loopsync serve --store memory`` (``loopsync-memory``):
the same rules without the disk, to tell what loopsync's code costs from what
waiting for the disk costs. Before the scenarios, a disk probe measures the
disk the stores write to: a 4 KiB write and ``fdatasync`` every 3 ms, as a
busy store commits, for a few seconds. A store that acknowledges only what is
on disk inherits every stall of that disk, whatever its code.

Reports deliveries per second, latency p50/p99/max, server CPU seconds and
memory per connection, and each server's throughput as a ratio of the relay's.
``--floor`` adds the floor to the ramp (``bare_relay.py --durable``), which
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
WARMUP_SECONDS = 3.0
"""Every run sends this long before the measured window: what is sent in the
warm-up is neither counted nor timed, nor is the server's CPU in it. The
y-websocket server runs on V8, which compiles its hot code while it runs:
in 8 s from a cold start at 12,000 deliveries/s its p99 was 97 ms, in 24 s
3.8 ms. The Python servers need no warm-up, and get the same one."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_SECONDS = 0.5
"""A worker stops listening once nothing has come for this long after its last send
(25 times the p99 budget: a delivery later than that is as good as lost)."""
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
    """One load process: its clients, what they heard, and the schedule of their sends."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.host = config["url"].split("/")[2]
        self.snapshots: bool = config["snapshots"]
        self.yjs: bool = config.get("yjs", False)
        self.members: list[tuple[str, str, int]] = config["members"]
        self.period: float = config["period"]
        self.duration: float = config["duration"]
        self.warmup: float = config.get("warmup", 0.0)
        self.stats: dict[str, Any] = {"sent": 0, "acks": 0, "errors": 0}
        self.latencies_us: list[int] = []
        self.last_receive = 0.0
        self.measured_from_us = 1 << 62
        """Only updates sent from this ``time.monotonic_ns() // 1000`` on count (set by "go", after the warm-up)."""
        self.ready = asyncio.Event()
        self.joins = 0
        self.join_slots = asyncio.Semaphore(JOINS_IN_FLIGHT)

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
        self.joins += 1
        if self.joins == len(self.members):
            self.ready.set()

    async def run(self) -> None:
        # A collection of the generations that hold the clients and the send
        # timers takes tens of milliseconds: with it on, the p99 the workers
        # reported was the load generator's own pauses (a bare relay at
        # 36,000 deliveries/s: p99 15-19 ms with it, 5-8 ms without). The
        # workers make no reference cycles worth collecting in a minute.
        gc.disable()
        loop = asyncio.get_running_loop()
        host, port = self.host.rsplit(":", 1)
        sends = int((self.warmup + self.duration) / self.period)
        updates = _yjs_updates(self.members, sends) if self.yjs else {}
        clients = []
        for room, user, index in self.members:
            # At most JOINS_IN_FLIGHT clients joining at a time: a server's listen
            # backlog (aiohttp's is 128) that overflows drops connections, which
            # the kernel retries only after a second. And a socket connected here,
            # not a host and port for create_connection, which resolves the
            # address in a thread for every connection: 5 ms each.
            await self.join_slots.acquire()
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, int(port)))
            _, client = await loop.create_connection(lambda: _LoadClient(self, room, user, index, updates.get(index)), sock=sock)
            clients.append(client)
        await asyncio.wait_for(self.ready.wait(), JOIN_TIMEOUT_SECONDS)
        print("ready", flush=True)
        go = await loop.run_in_executor(None, sys.stdin.readline)  # "go <monotonic µs when the sends begin>"
        sends_from = int(go.split()[1]) / 1_000_000  # the same instant for every worker: CLOCK_MONOTONIC is the machine's
        self.measured_from_us = int((sends_from + self.warmup) * 1_000_000)
        first = loop.time() + sends_from - time.monotonic()
        for client in clients:
            start = first + random.uniform(0, self.period)
            for index in range(sends):
                loop.call_at(start + index * self.period, client.send_part)
        await asyncio.sleep(sends_from + self.warmup + self.duration + self.period - time.monotonic())
        # Let the last deliveries arrive: until nothing has come for QUIET_SECONDS, at most 10 s.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and time.monotonic() - self.last_receive < QUIET_SECONDS:
            await asyncio.sleep(0.1)
        for client in clients:
            assert client.transport is not None
            client.transport.abort()
        print(json.dumps({**self.stats, "latencies_us": self.latencies_us}), flush=True)


def _yjs_updates(members: list[tuple[str, str, int]], count: int) -> dict[int, list[bytes]]:
    """``count`` Yjs updates per member, made by ``bench/yjs/updates.js``, each wrapped as a y-websocket sync message."""
    request = {"users": [[index, user] for _, user, index in members], "count": count}
    made = subprocess.run(["node", str(YJS_DIR / "updates.js")], input=json.dumps(request).encode(),
                          capture_output=True, check=True, timeout=JOIN_TIMEOUT_SECONDS).stdout
    updates: dict[int, list[bytes]] = {}
    position = 0
    for _, _, index in members:
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

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

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


def run_load(kind: str, rooms: int, per_room: int, period: float, duration: float, wrapper: tuple[str, ...] = (),
             warmup: float = WARMUP_SECONDS) -> dict[str, Any]:
    """Start ``kind``'s server, connect ``rooms x per_room`` clients, send for ``warmup + duration`` s; return figures of the last ``duration`` s."""
    with tempfile.TemporaryDirectory() as data_dir:
        server = _start(kind, data_dir, wrapper)
        try:
            rss_before = server.rss_bytes()
            members = [(f"room{r}", f"user{u}", r * per_room + u) for r in range(rooms) for u in range(per_room)]
            workers = []
            for index in range(WORKERS):
                config = {"url": server.ws_url, "snapshots": kind.startswith("loopsync"), "yjs": kind == "yjs",
                          "members": members[index::WORKERS], "period": period, "duration": duration, "warmup": warmup}
                workers.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(config)],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for worker in workers:
                assert worker.stdout is not None
                if not select.select([worker.stdout], [], [], JOIN_TIMEOUT_SECONDS)[0] or worker.stdout.readline().strip() != "ready":
                    for each in workers:
                        each.kill()
                    raise RuntimeError(f"a load worker did not connect its clients within {JOIN_TIMEOUT_SECONDS} s")
            connections = len(members)
            rss_connected = server.rss_bytes()
            sends_from = time.monotonic() + GO_MARGIN_SECONDS
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(f"go {int(sends_from * 1_000_000)}\n")
                worker.stdin.flush()
            time.sleep(max(0.0, sends_from + warmup - time.monotonic()))
            cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
            results = [json.loads(worker.communicate(timeout=duration + 60)[0].splitlines()[-1]) for worker in workers]
            wall = time.monotonic() - wall_before
            cpu = server.cpu_seconds() - cpu_before
        finally:
            server.stop()
    latencies = sorted(value for result in results for value in result["latencies_us"])
    sent = sum(result["sent"] for result in results)
    expected = sent * (per_room - 1)
    return {
        "server": kind, "rooms": rooms, "per_room": per_room, "connections": connections,
        "updates_sent": sent, "deliveries": len(latencies), "deliveries_expected": expected,
        "acks": sum(result["acks"] for result in results), "errors": sum(result["errors"] for result in results),
        "deliveries_per_s": len(latencies) / duration,
        "p50_ms": _percentile(latencies, 0.50), "p99_ms": _percentile(latencies, 0.99),
        "max_ms": latencies[-1] / 1000 if latencies else float("nan"),
        # Share of one core over the sending window (the tail after it is mostly idle waiting).
        "server_cpu_s": cpu, "server_cpu_share": cpu / duration, "wall_s": wall,
        "kib_per_connection": (rss_connected - rss_before) / connections / 1024,
    }


def _row(figures: dict[str, Any]) -> str:
    return (f"  {figures['server']:<15} {figures['connections']:>5} conns  {figures['deliveries_per_s']:>9,.0f} deliveries/s"
            f"  ({figures['deliveries']}/{figures['deliveries_expected']})  p50 {figures['p50_ms']:6.2f} ms"
            f"  p99 {figures['p99_ms']:6.2f} ms  max {figures['max_ms']:7.2f} ms  cpu {figures['server_cpu_share']:4.0%}"
            f"  {figures['kib_per_connection']:5.1f} KiB/conn  errors {figures['errors']}")


def _cpu_per_delivery(figures: dict[str, Any]) -> float:
    return float(figures["server_cpu_s"]) / max(int(figures["deliveries"]), 1)


def scenario(name: str, rooms: int, per_room: int, period: float, duration: float, kinds: tuple[str, ...],
             warmup: float = WARMUP_SECONDS) -> list[dict[str, Any]]:
    """Run one load against each server of ``kinds`` (the relay first) and print the comparison."""
    print(f"{name}: {rooms} rooms x {per_room} clients, one update per client every {period:g} s, {duration:g} s after {warmup:g} s of warm-up")
    runs = {kind: run_load(kind, rooms, per_room, period, duration, warmup=warmup) for kind in kinds}
    for figures in runs.values():
        print(_row(figures))
        figures["scenario"] = name
    relay = runs["relay"]
    for kind in kinds[1:]:
        print(f"  {kind} / relay throughput: {runs[kind]['deliveries_per_s'] / relay['deliveries_per_s']:.2f}"
              f"  cpu per delivery: {_cpu_per_delivery(runs[kind]) / _cpu_per_delivery(relay):.2f}x")
    return list(runs.values())


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
    in real use. The servers' searches take turns, one run each, so that a
    slow spell of the shared machine falls on every server's search alike
    rather than on one server's whole ramp.
    """
    period = 0.1
    print(f"ramp: rooms of 4 clients, one update per client every {period:g} s, rooms doubled from {RAMP_FIRST_ROOMS}"
          f" then bisected {bisections} times, {duration:g} s per step after {WARMUP_SECONDS:g} s of warm-up,"
          f" p99 budget {budget_ms:g} ms; the servers take turns")
    rows = []
    searches = {kind: _find_limit(budget_ms, bisections) for kind in kinds}
    next_rooms = {kind: next(search) for kind, search in searches.items()}
    while next_rooms:
        for kind in list(next_rooms):
            figures = run_load(kind, next_rooms[kind], 4, period, duration)
            figures["scenario"] = "ramp"
            rows.append(figures)
            print(_row(figures), flush=True)
            try:
                next_rooms[kind] = searches[kind].send(figures)
            except StopIteration:
                del next_rooms[kind]
    best_by_server = _limits(rows, budget_ms)
    for kind in kinds:
        if kind in best_by_server:
            best = best_by_server[kind]
            print(f"  {kind}: most under the budget: {best['deliveries_per_s']:,.0f} deliveries/s"
                  f" ({best['connections']} connections) at p99 {best['p99_ms']:.2f} ms")
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
                        help="the full version: longer runs, every server in the ramp, a finer search (six to nine minutes)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds of small load (for the test suite)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--floor", action="store_true",
                        help="also ramp the floor (bare_relay.py --durable: parse, commit, ack, pass on; no rules)")
    parser.add_argument("--plot", type=Path, help="draw the ramp (p99 against deliveries/s) to this .svg or .png (a PNG needs Chromium)")
    parser.add_argument("--from-json", type=Path, metavar="JSON", help="with --plot: draw a run saved with --json, run nothing")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary that renders a PNG")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_Worker(json.loads(args.worker)).run())
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
        rows += ramp(4, ("relay", *floor, "loopsync", "loopsync-memory", "yjs"))
    else:
        rows = scenario("rooms", 500, 4, 0.5, 4, ("relay", "loopsync", "yjs"))
        rows += scenario("crowd", 1, 200, 2.0, 4, ("relay", "loopsync", "yjs"))
        rows += ramp(3, ("relay", *floor, "loopsync"), bisections=QUICK_RAMP_BISECTIONS)
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
