"""What the benchmarks share: the servers they start, the load that drives them, and the accounting.

Servers (:data:`KINDS`, :class:`ServerProcess`: CPU, RSS and descriptors of
the whole process tree from ``/proc``); load worker processes
(:class:`Session`: this file run as ``--worker CONFIG``, bare asyncio
clients on uvloop that cost less than the servers they measure, every send
time in one shared file so every delivery and ack is timed on
``CLOCK_MONOTONIC``); hostile.py's raw-socket attacks (:class:`Attacker`,
``--attacker NAME CONFIG``); headless Chromium pages; and the figures:
percentiles, CPU per delivery, the disk probe, the ramp, plots, the JSON
file. docs/benchmarks.md, "The harness", says more.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import mmap
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Iterator, cast

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
YJS_DIR = BENCH / "yjs"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT_SECONDS = 60
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
    # Several pages play at once: none may have its timers throttled as a background page.
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
]


# -- servers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A server a benchmark can start: its command line and what its first line says once it listens.

    ``command`` and ``env`` may name ``{python}``, ``{bench}``, ``{data}`` and
    ``{port}``. One that ``picks_port`` takes ``--port 0`` and names its URLs
    on the ready line; for another the harness picks a free port.
    """

    command: tuple[str, ...]
    ready: str
    """A part of the first line the server prints once it accepts connections."""
    snapshots: bool = True
    """It answers ``hello`` with a snapshot (a load client has joined when that comes)."""
    acks: bool = True
    """It answers every update (with an ``ack``, or y-websocket's echo)."""
    yjs: bool = False
    """It speaks y-websocket's protocol: the URL path names the document, updates are Yjs sync messages."""
    path: str = "/ws"
    picks_port: bool = True
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "{root}"
    services: tuple[str, ...] = ()
    """What it needs running beside it, started by the harness: ``postgres`` (``{postgres}``: a fresh database's URL), ``redis`` (``{redis}``)."""


_SERVE = ("{python}", "-m", "loopsync", "serve", "--host", "127.0.0.1", "--port", "{port}")
KINDS: dict[str, Kind] = {
    # loopsync on SQLite: every update committed (synchronous=FULL) before it is acknowledged.
    "loopsync": Kind((*_SERVE, "--store", "sqlite", "--data", "{data}"), "loopsync is serving at http://"),
    # The same rules without the disk.
    "loopsync-memory": Kind((*_SERVE, "--store", "memory", "--data", "{data}"), "loopsync is serving at http://"),
    # The same stack with no rules: each frame passed on as it is (bench/bare_relay.py).
    "relay": Kind(("{python}", "{bench}/bare_relay.py", "--port", "{port}"), "is serving at http://", snapshots=False, acks=False),
    # The relay plus parse, fsynced commit and ack: the least a durable server does (bench/bare_relay.py --durable).
    "floor": Kind(("{python}", "{bench}/bare_relay.py", "--port", "{port}", "--durable", "{data}"), "is serving at http://",
                  snapshots=False),
    # The stock y-websocket server (Yjs on Node.js), documents in memory as it ships.
    "yjs": Kind(("node", "{bench}/yjs/node_modules/y-websocket/bin/server.js"), "running at", snapshots=False, yjs=True,
                path="", picks_port=False, env=(("HOST", "127.0.0.1"), ("PORT", "{port}")), cwd="{bench}/yjs"),
    # One node of a cluster: PostgreSQL the store of record (commit before ack), Redis the bus (docs/scale.md).
    "cluster": Kind((*_SERVE, "--store", "{postgres}", "--bus", "{redis}"), "loopsync is serving at http://",
                    services=("postgres", "redis")),
    # A cluster node's floor: parse, commit to PostgreSQL, publish on Redis, ack, pass on; no rules (bare_relay.py --durable URL --bus URL).
    "cluster-floor": Kind(("{python}", "{bench}/bare_relay.py", "--port", "{port}", "--durable", "{postgres}", "--bus", "{redis}"),
                          "is serving at http://", snapshots=False, services=("postgres", "redis")),
    # Two such nodes sharing the port (SO_REUSEPORT): a room's members land on either.
    "cluster-2": Kind((*_SERVE, "--store", "{postgres}", "--bus", "{redis}", "--workers", "2"), "loopsync is serving at http://",
                      services=("postgres", "redis")),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a kind that starts others is measured whole)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time a process and every process below it have used so far, all threads: (in user space, in the kernel)."""
    user = system = 0
    for process in process_tree(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


class ServerProcess:
    """One server of :data:`KINDS` in its own process (or processes), on 127.0.0.1.

    ``start`` picks a free port the first time and the same port after, so a
    stopped server starts again where its clients look for it, on the same
    data directory. Its standard error goes to ``log_path``.
    """

    def __init__(self, kind: str, data_dir: Path | None = None, wrapper: tuple[str, ...] = ()) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown server kind {kind!r} (known: {', '.join(KINDS)})")
        self.kind, self.spec, self.wrapper = kind, KINDS[kind], wrapper
        self._scratch = tempfile.TemporaryDirectory(prefix=f"loopsync-bench-{kind}-")
        self.data_dir = data_dir or Path(self._scratch.name) / "data"
        self.log_path = Path(self._scratch.name) / "server.log"
        self.port = 0
        self.http_urls: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.starts = 0
        self.services: dict[str, Any] = {}
        """The PostgreSQL and Redis servers it uses (``tests/services.py``'s, started and stopped here)."""
        self._service_names: dict[str, str] = {}

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def ws_urls(self) -> list[str]:
        return [f"ws://{url.split('://', 1)[1].rstrip('/')}{self.spec.path}" for url in self.http_urls]

    @property
    def ws_url(self) -> str:
        return self.ws_urls[0]

    @property
    def postgres_dsn(self) -> str | None:
        """The database a kind with the ``postgres`` service stores in (its URL, once started); None for the others."""
        return self._service_names.get("postgres")

    def start(self) -> None:
        """Start the server and wait for its ready line (``START_TIMEOUT_SECONDS`` at most)."""
        spec = self.spec
        if spec.yjs:
            install_yjs()
        if not self.port and not spec.picks_port:
            self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if spec.services and not self.services:
            self._start_services()
        names = {"python": sys.executable, "bench": str(BENCH), "root": str(ROOT), "data": str(self.data_dir), "port": str(self.port),
                 **self._service_names}
        command = [*self.wrapper, *(part.format(**names) for part in spec.command)]
        env = {**os.environ, **{key: value.format(**names) for key, value in spec.env}}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=spec.cwd.format(**names), env=env)
        assert self.process.stdout is not None
        ready = select.select([self.process.stdout], [], [], START_TIMEOUT_SECONDS)[0]
        line = self.process.stdout.readline() if ready else ""
        if spec.ready not in line:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"{self.kind} did not start: {line!r}; its log ends: {self.log_path.read_text()[-2000:]}")
        urls = re.findall(r"http://[\w.\-]+:\d+/?", line)
        self.http_urls = urls if spec.picks_port else [f"http://127.0.0.1:{self.port}/"]
        self.port = int(self.http_urls[0].rstrip("/").rsplit(":", 1)[1])
        self.starts += 1

    def stop(self, signal_number: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Send a signal (SIGTERM: a clean shutdown; SIGKILL: none at all) and wait for the exit."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal_number)
        try:
            return process.wait(timeout=timeout)  # valgrind (bench/instructions.py) takes a while to write its counts
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def _start_services(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        import services  # the tests' real PostgreSQL and Redis: temporary directories, free ports

        if "postgres" in self.spec.services:
            postgres = self.services["postgres"] = services.PostgresService().start()
            self._service_names["postgres"] = postgres.dsn(postgres.create_database())
        if "redis" in self.spec.services:
            redis = self.services["redis"] = services.RedisService().start()
            self._service_names["redis"] = redis.url

    def close(self) -> None:
        """Stop the server (then its services) and remove its scratch directory (and its data, unless it was given one)."""
        try:
            self.stop()
        finally:
            for service in self.services.values():
                service.close()
            self._scratch.cleanup()

    def service_cpu_seconds(self) -> dict[str, float]:
        """CPU time each service has used so far (all its processes, user space and kernel)."""
        return {name: sum(cpu_seconds(service.process.pid)) if service.running else 0.0 for name, service in self.services.items()}

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time the server has used so far, all its threads and processes: (in user space, in the kernel)."""
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        """Resident memory of all its processes (``statm``: cheap enough to sample often)."""
        return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES for pid in process_tree(self.pid))

    def open_descriptors(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in process_tree(self.pid))


def install_yjs() -> None:
    """Install the y-websocket server and Yjs into ``bench/yjs/node_modules`` from its lock file, once."""
    if (YJS_DIR / "node_modules" / "y-websocket" / "bin" / "server.js").exists():
        return
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("the y-websocket reference needs Node.js and npm (Debian: apt-get install nodejs npm)")
    print("installing the y-websocket server into bench/yjs/node_modules (npm ci)", flush=True)
    subprocess.run(["npm", "ci", "--omit=optional", "--no-audit", "--no-fund"], cwd=YJS_DIR, check=True,
                   stdout=subprocess.DEVNULL, timeout=300)


# -- pages in headless Chromium ---------------------------------------------------------

JOINED = "() => window.loopsync && window.loopsync.app.engine.node && window.loopsync.sync.connected"
"""True once a loopsync page's clock exists and its first snapshot has come."""


@contextmanager
def chromium(path: str = CHROMIUM) -> Iterator[Browser]:
    """Headless Chromium with ``CHROMIUM_ARGS``, closed on the way out."""
    from playwright.sync_api import sync_playwright  # not in the load workers: they start faster without it

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, errors: list[str] | None = None) -> Page:
    """A page in a browser context of its own: its own renderer process and main thread, like another person's browser.

    Its uncaught exceptions and console errors go to ``errors``.
    """
    page = browser.new_context().new_page()
    if errors is not None:
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text)
                if message.type == "error" and "favicon" not in message.text else None)
    return page


def open_loopsync(page: Page, url: str) -> Page:
    """Load the web client at ``url`` and wait until it has joined its room."""
    page.goto(url)
    page.wait_for_function(JOINED, timeout=30_000)
    return page


# -- the load: worker processes -------------------------------------------------------

STEPS = 16
JOIN_TIMEOUT_SECONDS = 60
JOINS_IN_FLIGHT = 32
"""Clients of one worker that may be joining at once (connected, not yet in their room): a
server's listen backlog (aiohttp's is 128) that overflows drops connections, which the kernel
retries only after a second."""
QUIET_SECONDS = 0.5
"""A worker stops listening once nothing has come for this long after its last send (25 times
the p99 budget: a delivery later than that is as good as lost), and, against a server that
acknowledges, once every update it sent in the window is acknowledged or refused: a commit that
waits out a stall of the disk holds back the acks and the deliveries of the updates behind it alike."""
SEND_SLOTS = 256
"""Send times kept per client (by ``seq % SEND_SLOTS``): an answer later than this many of its
client's sends is timed wrong, and was lost to any budget long before."""

_TYPE = re.compile(rb'"type": ?"(\w+)"')
_SEQ = re.compile(rb'"seq": ?(\d+)')
_USER_NUMBER = re.compile(rb'"user": ?"\D*(\d+)"')
_MARK = re.compile(rb"u=(\d{6}) t=(\d{16})")
"""The mark in a Yjs update (``bench/yjs/updates.js``): its sender's index and send time."""
_TIME_PLACEHOLDER = b"t=" + b"0" * 16
_HANDSHAKE = ("GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: bG9vcHN5bmMgbG9hZCAxMg==\r\nSec-WebSocket-Version: 13\r\n\r\n")
_ZERO_MASK = b"\x00\x00\x00\x00"  # a legal masking key that leaves the payload as it is


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.2) with the zero key."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    return header + _ZERO_MASK + payload


def handshake(path: str, host: str) -> bytes:
    return _HANDSHAKE.format(path=path, host=host).encode()


class SendTimes:
    """The send time (µs of ``CLOCK_MONOTONIC``) of each client's recent updates, by client index and ``seq``.

    A file in ``/dev/shm`` mapped by every load process of a session, so that
    ``seq`` can count up from 1 as a real client's does (a server may refuse
    a seq far above the last) and a receiver in any process still times it.
    """

    def __init__(self, path: str | None, clients: int) -> None:
        size = clients * SEND_SLOTS * 8
        if path is None:  # one process alone (a test)
            self.times = memoryview(bytearray(size)).cast("q")
            return
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), size)
        self.times = memoryview(self._map).cast("q")

    @staticmethod
    def create(clients: int) -> str:
        """A new file for ``clients`` clients' times (sparse: pages no client touches cost nothing); its path."""
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        descriptor, path = tempfile.mkstemp(prefix="loopsync-bench-", dir=directory)
        os.ftruncate(descriptor, clients * SEND_SLOTS * 8)
        os.close(descriptor)
        return path

    def put(self, client: int, seq: int, sent_us: int) -> None:
        self.times[client * SEND_SLOTS + seq % SEND_SLOTS] = sent_us

    def get(self, client: int, seq: int) -> int:
        return int(self.times[client * SEND_SLOTS + seq % SEND_SLOTS])


class LoadClient(asyncio.Protocol):
    """One member of a room: joins, sends a message every ``period`` s once told to, times every update it hears.

    Against y-websocket it sends Yjs updates made beforehand (:func:`yjs_updates`)
    and counts the server's echo of its own as its ack.
    """

    def __init__(self, worker: Worker, index: int, yjs_updates: list[bytes] | None = None) -> None:
        self.worker = worker
        self.index = index
        self.room_number = index // worker.per_room
        self.room = f"{worker.room_prefix}{self.room_number}"
        self.user = f"user{worker.user_offset + index % worker.per_room % worker.users}"
        self.hello = json.dumps({"type": "hello", "v": 1, "room": self.room, "user": self.user, "playing": True, "bpm": 120}).encode()
        self.yjs_updates = iter(yjs_updates or ())
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = self.in_room = self.muted = False
        self.sends = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        path = f"/{self.room}" if self.worker.yjs else self.worker.path  # y-websocket: the path names the document
        self.transport.write(handshake(path, self.worker.host_of(self.index)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.lost(self)

    def data_received(self, data: bytes) -> None:
        if self.muted:
            return
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
            if not self.worker.snapshots:  # the relay answers nothing to hello, y-websocket sends no snapshot
                self.joined()
        position, size = 0, len(buffer)
        while size - position >= 2 and not self.muted:
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
        self.buffer = b"" if self.muted else buffer[position:]

    def joined(self) -> None:
        worker = self.worker
        self.in_room = True
        worker.joined()
        if worker.mute:
            self.muted = True
        if worker.stall:
            assert self.transport is not None
            self.transport.pause_reading()

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
        if kind_name == b"update":
            seq, user = _SEQ.search(payload), _USER_NUMBER.search(payload)
            assert seq is not None and user is not None, payload
            sender = self.room_number * worker.per_room + int(user.group(1)) - worker.user_offset
            worker.heard(worker.send_times.get(sender, int(seq.group(1))), ack=False)
        elif kind_name == b"ack":
            seq = _SEQ.search(payload)
            assert seq is not None
            worker.heard(worker.send_times.get(self.index, int(seq.group(1))), ack=True)
        elif kind_name == b"snapshot":
            if not self.in_room:  # the answer to hello (a fetch's comes later)
                self.joined()
        elif kind_name == b"error":
            worker.stats["errors"] += 1

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def send_message(self) -> None:
        """Send what this worker's clients send (an update, a transport change, a fetch), stamped with the time."""
        worker = self.worker
        now_us = time.monotonic_ns() // 1000
        if worker.message == "update":
            if worker.yjs:
                self.send(next(self.yjs_updates).replace(_TIME_PLACEHOLDER, b"t=%016d" % now_us, 1), 0x2)
            else:
                seq = worker.next_seq[self.index] = worker.next_seq.get(self.index, 0) + 1
                worker.send_times.put(self.index, seq, now_us)
                steps = [random.randint(0, 1) for _ in range(STEPS)]
                self.send(f'{{"type":"update","user":"{self.user}","seq":{seq},"part":{{"sound":"kick","steps":{json.dumps(steps)}}}}}'
                          .encode())
        elif worker.message == "transport":
            self.sends += 1
            self.send(b'{"type":"transport","playing":%s,"bpm":120}' % (b"true" if self.sends % 2 else b"false"))
        elif worker.message == "fetch":
            self.send(b'{"type":"fetch"}')
        if now_us >= worker.measured_from_us:
            worker.stats["sent"] += 1


class Worker:
    """One load process: its share of the members, what they heard in the current step, and the schedule of their sends.

    Member ``i`` is ``user{i % per_room}`` of room ``{room_prefix}{i // per_room}``;
    this worker has those with ``i % workers == index``. Its commands on stdin:
    ``step N WARMUP DURATION`` (connect the first ``N`` members it lacks; it
    answers ``ready``) and ``go T`` (send from the monotonic microsecond
    ``T`` on; it answers with what was heard of the last ``DURATION`` s, as JSON).
    hostile.py's options: ``message`` (``update``, ``transport``, ``fetch``,
    ``none``), ``users`` per room, ``mute`` (read nothing once joined),
    ``stall`` (stop reading), ``rcvbuf`` (bytes).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.urls: list[str] = config.get("urls") or [config["url"]]
        self.snapshots: bool = config["snapshots"]
        self.yjs: bool = config.get("yjs", False)
        self.acks: bool = config.get("acks", False)
        """The server acknowledges each update (all but the relay; y-websocket's echo counts)."""
        self.per_room: int = config["per_room"]
        self.users: int = config.get("users") or self.per_room
        self.user_offset: int = config.get("user_offset", 0)
        self.room_prefix: str = config.get("room_prefix", "room")
        self.period: float = config["period"]
        self.message: str = config.get("message", "update")
        self.mute: bool = config.get("mute", False)
        self.stall: bool = config.get("stall", False)
        self.rcvbuf: int = config.get("rcvbuf", 0)
        self.index: int = config.get("index", 0)
        self.worker_count: int = config.get("workers", 1)
        self.send_times = SendTimes(config.get("times"), config.get("max_clients", 64))
        self.path = "/" + self.urls[0].split("/", 3)[3] if self.urls[0].count("/") >= 3 else "/"
        self.clients: dict[int, LoadClient] = {}
        """Connected members by index; a member whose connection the server closed is dropped, and joins again at the next step."""
        self.next_seq: dict[int, int] = {}
        """The last seq of each member, kept when its connection is not: a member that joins again goes on from it."""
        self.stats: dict[str, Any] = {}
        self.latencies_us: list[int] = []
        self.ack_latencies_us: list[int] = []
        self.last_receive = 0.0
        self.measured_from_us = 1 << 62
        """Only what is sent from this ``time.monotonic_ns() // 1000`` on counts (set by "go", after the warm-up)."""
        self.ready = asyncio.Event()
        self.joining = 0
        self.join_slots = asyncio.Semaphore(JOINS_IN_FLIGHT)
        self.steps = 0
        self.refused = 0
        """Members whose connection the server closed before they joined (``room_full``, or refused outright)."""
        self.senders: list[LoadClient] = []
        self.warmup = self.duration = 0.0
        self._new_step_stats()

    def host_of(self, index: int) -> str:
        """The ``host:port`` member ``index`` connects to: a room's members take a cluster's nodes in turn."""
        return self.urls[index % len(self.urls)].split("/")[2]

    def _new_step_stats(self) -> None:
        self.stats = {"sent": 0, "acks": 0, "errors": 0, "disconnects": 0}
        self.latencies_us = []
        self.ack_latencies_us = []

    def heard(self, sent_us: int, ack: bool) -> None:
        """An ack or a delivery of the update sent at ``sent_us``: counted and timed if it was sent in the measured window."""
        if sent_us < self.measured_from_us:
            return
        if ack:
            self.stats["acks"] += 1
            self.ack_latencies_us.append(time.monotonic_ns() // 1000 - sent_us)
        else:
            self.latencies_us.append(time.monotonic_ns() // 1000 - sent_us)

    def joined(self) -> None:
        self.join_slots.release()
        self.joining -= 1
        if self.joining == 0:
            self.ready.set()

    def lost(self, client: LoadClient) -> None:
        """The server closed ``client``'s connection (a load worker closes none before its end)."""
        if self.clients.get(client.index) is client:
            del self.clients[client.index]
            self.stats["disconnects"] += 1
        if not client.in_room:  # refused before it joined (room_full...): it will not join, the step goes on without it
            client.in_room = True
            self.refused += 1
            self.joined()

    async def serve(self) -> None:
        # A collection of the generations that hold the clients and the send timers takes tens of
        # milliseconds: with it on, the p99 the workers reported was the load generator's own pauses
        # (a bare relay at 36,000 deliveries/s: p99 15-19 ms with it, 5-8 ms without). The workers
        # make no reference cycles worth collecting in a minute.
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
        missing = [index for index in range(self.index, active, self.worker_count) if index not in self.clients]
        self.ready.clear()
        self.joining = len(missing)
        for index in missing:
            # A socket connected here, not a host and port for create_connection, which resolves
            # the address in a thread for every connection: 5 ms each.
            await self.join_slots.acquire()
            host, port = self.host_of(index).rsplit(":", 1)
            sock = socket.socket()
            sock.setblocking(False)
            if self.rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            await loop.sock_connect(sock, (host, int(port)))
            _, self.clients[index] = await loop.create_connection(lambda: LoadClient(self, index), sock=sock)
        if missing:
            await asyncio.wait_for(self.ready.wait(), JOIN_TIMEOUT_SECONDS)
        self.warmup, self.duration = warmup, duration
        self.senders = [client for index in range(self.index, active, self.worker_count) if (client := self.clients.get(index))]
        if self.yjs and self.message == "update":  # each step's updates come from new Yjs clients (see yjs_updates)
            updates = yjs_updates([(client.user, client.index) for client in self.senders], self._sends(), self.steps)
            for client in self.senders:
                client.yjs_updates = iter(updates[client.index])
        self.steps += 1

    def unanswered(self) -> bool:
        stats = self.stats
        return (self.acks and self.message == "update" and not self.mute and not stats["disconnects"]
                and stats["acks"] + stats["errors"] < stats["sent"])

    def _sends(self) -> int:
        return int((self.warmup + self.duration) / self.period) if self.period and self.message != "none" else 0

    async def go(self, sends_from_us: int) -> dict[str, Any]:
        """Send as prepared from ``sends_from_us`` on; what was heard of what was sent after the warm-up."""
        loop = asyncio.get_running_loop()
        self._new_step_stats()
        sends_from = sends_from_us / 1_000_000  # the same instant for every worker: CLOCK_MONOTONIC is the machine's
        self.measured_from_us = int((sends_from + self.warmup) * 1_000_000)
        first = loop.time() + sends_from - time.monotonic()
        for client in self.senders:
            start = first + random.uniform(0, self.period)
            for number in range(self._sends()):
                loop.call_at(start + number * self.period, client.send_message)
        await asyncio.sleep(sends_from + self.warmup + self.duration + self.period - time.monotonic())
        if self.stall:  # read again (and drop it all): a connection the server closed meanwhile is seen closed only then
            for client in list(self.clients.values()):
                assert client.transport is not None
                client.transport.resume_reading()
            await asyncio.sleep(QUIET_SECONDS)
        # Let the last deliveries arrive: until nothing has come for QUIET_SECONDS and every update
        # sent is answered (unless a client was closed), at most 10 s.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (time.monotonic() - self.last_receive < QUIET_SECONDS or self.unanswered()):
            await asyncio.sleep(0.1)
        self.stats.update(connected=len(self.clients), refused=self.refused)
        return {**self.stats, "latencies_us": self.latencies_us, "ack_latencies_us": self.ack_latencies_us}


def yjs_updates(users: list[tuple[str, int]], count: int, generation: int = 0) -> dict[int, list[bytes]]:
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
            messages.append(b"\x00\x02" + var_uint(length) + update)  # messageSync, messageYjsUpdate, the update
    return updates


def var_uint(value: int) -> bytes:
    """lib0's unsigned varint: 7 bits a byte, low bits first."""
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


# -- the load: the parent's side ---------------------------------------------------------

WORKERS = 2
GO_MARGIN_SECONDS = 0.2
"""Workers hear "go" one after the other; the first send comes this long after the parent says it."""
WARMUP_SECONDS = 1.0
"""Every step sends this long before its measured window: what is sent in the warm-up is neither
counted nor timed, nor is the server's CPU in it. Time for a new load's queues to settle, and for
what a ramp's step before left in them to go out."""
YJS_WARMUP_SECONDS = 3.0
"""The warm-up of a y-websocket server's first step. V8 compiles its hot code while it runs: in
8 s from a cold start at 12,000 deliveries/s its p99 was 97 ms, in 24 s 3.8 ms."""
MAX_CLIENTS = 8192
"""Clients one session can have (the ramp's largest step is 1,600 rooms of 4)."""


class Session:
    """Load worker processes against one server, for one step or many (the clients stay connected between steps).

    It starts its own server (``kind``) or loads one it is given (``server``,
    which several sessions can share); ``options`` go to every :class:`Worker`.
    """

    def __init__(self, kind: str | None, per_room: int, period: float, wrapper: tuple[str, ...] = (),
                 server: ServerProcess | None = None, workers: int = WORKERS, **options: Any) -> None:
        self.per_room, self.period = per_room, period
        self.own_server = server is None
        self.workers: list[subprocess.Popen[str]] = []
        self.times_path = SendTimes.create(MAX_CLIENTS)
        if server is None:
            assert kind is not None
            server = ServerProcess(kind, wrapper=wrapper)
            try:
                server.start()
            except BaseException:
                server.close()
                os.unlink(self.times_path)
                raise
        self.server = server
        self.kind = kind or server.kind
        spec = server.spec
        try:
            self.rss_idle = server.rss_bytes()
            for index in range(workers):
                config = {"urls": server.ws_urls, "snapshots": spec.snapshots, "yjs": spec.yjs, "acks": spec.acks,
                          "per_room": per_room, "period": period, "index": index, "workers": workers,
                          "times": self.times_path, "max_clients": MAX_CLIENTS, **options}
                self.workers.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(config)],
                                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        except BaseException:
            self.close()
            raise
        self.connections = 0
        self.steps = 0
        self._warmup = self._duration = 0.0
        self._sends_from = 0.0

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

    def connect(self, rooms: int, duration: float, warmup: float | None = None) -> None:
        """Have the first ``rooms`` rooms' members connected and joined, and ready to send for ``warmup + duration`` s."""
        if warmup is None:
            warmup = YJS_WARMUP_SECONDS if self.server.spec.yjs and self.steps == 0 else WARMUP_SECONDS
        active = rooms * self.per_room
        self._tell(f"step {active} {warmup} {duration}")
        self._answers("step", JOIN_TIMEOUT_SECONDS + 30)  # "ready": connected, updates made
        self.connections = max(self.connections, active)
        self.rooms, self._warmup, self._duration = rooms, warmup, duration

    def go(self) -> float:
        """Start the sends prepared by :meth:`connect`; the monotonic time at which the measured window starts."""
        self._sends_from = time.monotonic() + GO_MARGIN_SECONDS
        self._tell(f"go {int(self._sends_from * 1_000_000)}")
        return self._sends_from + self._warmup

    def collect(self) -> dict[str, Any]:
        """What the workers heard of the window started by :meth:`go` (waits for its end and its last answers)."""
        results = [json.loads(answer) for answer in self._answers("go", self._warmup + self._duration + 60)]
        self.steps += 1
        latencies = sorted(value for result in results for value in result["latencies_us"])
        acks = sorted(value for result in results for value in result["ack_latencies_us"])
        sent = sum(result["sent"] for result in results)
        return {
            "server": self.kind, "rooms": self.rooms, "per_room": self.per_room, "connections": self.rooms * self.per_room,
            "updates_sent": sent, "deliveries": len(latencies), "deliveries_expected": sent * (self.per_room - 1),
            "acks": sum(result["acks"] for result in results), "errors": sum(result["errors"] for result in results),
            "disconnects": sum(result["disconnects"] for result in results),
            "connected": sum(result["connected"] for result in results), "refused": sum(result["refused"] for result in results),
            "deliveries_per_s": len(latencies) / self._duration,
            **spread_ms(latencies, per_ms=1000), **spread_ms(acks, "ack_", per_ms=1000),
        }

    def step(self, rooms: int, duration: float, warmup: float | None = None) -> dict[str, Any]:
        """Load the first ``rooms`` rooms for ``warmup + duration`` s; figures of the last ``duration`` s, server CPU and memory included.

        ``warmup`` defaults to ``WARMUP_SECONDS`` (``YJS_WARMUP_SECONDS`` for
        a y-websocket server's first step).
        """
        self.connect(rooms, duration, warmup)
        kib_per_connection = (self.server.rss_bytes() - self.rss_idle) / self.connections / 1024
        measured_from = self.go()
        time.sleep(max(0.0, measured_from - time.monotonic()))
        (user_before, system_before), wall_before = self.server.cpu_seconds(), time.monotonic()
        services_before = self.server.service_cpu_seconds()
        time.sleep(max(0.0, measured_from + duration - time.monotonic()))
        rss_loaded = self.server.rss_bytes()  # at the end of the window, queues as full as the load makes them
        figures = self.collect()
        wall = time.monotonic() - wall_before
        user_after, system_after = self.server.cpu_seconds()
        user, system = user_after - user_before, system_after - system_before
        services_after = self.server.service_cpu_seconds()
        figures["service_cpu_s"] = {name: services_after[name] - before for name, before in services_before.items()}
        figures.update({
            # Share of one core over the sending window (the tail after it is mostly idle waiting).
            "server_cpu_s": user + system, "server_cpu_share": (user + system) / duration, "wall_s": wall,
            "server_user_s": user, "server_system_s": system,
            # Of every connection the session has (a ramp step after a larger one has idle ones too).
            "kib_per_connection": kib_per_connection,
            "kib_per_connection_loaded": (rss_loaded - self.rss_idle) / self.connections / 1024,
        })
        return figures

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the workers (they close their clients), then the server if the session started it."""
        for worker in self.workers:
            if worker.stdin is not None:
                worker.stdin.close()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if os.path.exists(self.times_path):
            os.unlink(self.times_path)
        if self.own_server:
            self.server.close()


class Sessions(dict[str, Session]):
    """A :class:`Session` of rooms of ``per_room`` per server kind, started when first asked for (``kinds`` at once); all closed at the end of the ``with``."""

    def __init__(self, per_room: int, period: float, kinds: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.per_room, self.period, self.kinds = per_room, period, kinds

    def __missing__(self, kind: str) -> Session:
        session = self[kind] = Session(kind, self.per_room, self.period)
        return session

    def __enter__(self) -> Sessions:
        try:
            for kind in self.kinds:
                self.__missing__(kind)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for session in self.values():
            session.close()


def run_load(kind: str, rooms: int, per_room: int, period: float, duration: float, wrapper: tuple[str, ...] = (),
             warmup: float | None = None) -> dict[str, Any]:
    """Start ``kind``'s server, connect ``rooms x per_room`` clients, send for ``warmup + duration`` s; figures of the last ``duration`` s."""
    with Session(kind, per_room, period, wrapper) as session:
        return session.step(rooms, duration, warmup)


# -- the load: attackers (bench/hostile.py) ----------------------------------------------


class Attacker:
    """A raw-socket attack (``churn``, ``half-open``, ``write-rooms``) in a process of its own; ready once under way."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--attacker", name, json.dumps(config)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            raise RuntimeError(f"the {name} attacker did not start: {line!r}")

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError("an attacker did not finish in time") from None
        return dict(json.loads(out.strip().splitlines()[-1]))


def _read_until(sock: socket.socket, marker: bytes, buffer: bytes = b"") -> bytes:
    while marker not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before {marker!r}")
        buffer += data
    return buffer


def churn(config: dict[str, Any]) -> dict[str, Any]:
    """One client joining a room and leaving as soon as its snapshot comes, again and again until the deadline."""
    host, port = config["host"], config["port"]
    hello = json.dumps({"type": "hello", "v": 1, "room": config["room"], "user": config["user"], "playing": True, "bpm": 120}).encode()
    print("ready", flush=True)
    deadline, joins, failures = time.monotonic() + config["seconds"], 0, 0
    while time.monotonic() < deadline and joins + failures < 1_000_000:
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(handshake("/ws", f"{host}:{port}"))
                rest = _read_until(sock, b"\r\n\r\n").split(b"\r\n\r\n", 1)[1]
                sock.sendall(client_frame(0x1, hello))
                _read_until(sock, b'"snapshot"', rest)
                sock.sendall(client_frame(0x8, b"\x03\xe8"))  # close 1000
            joins += 1
        except OSError:
            failures += 1
    return {"joins": joins, "failures": failures, "seconds": config["seconds"]}


class _HalfOpen(asyncio.Protocol):
    """A connection that never finishes its HTTP request; notes when the server closes it."""

    def __init__(self, closed: list[float], drip: bool, opened: float) -> None:
        self.closed, self.drip, self.opened = closed, drip, opened
        self.transport: asyncio.Transport | None = None
        self.dripped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        pass  # an error page before closing, perhaps: the close is what counts

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.append(time.monotonic() - self.opened)


async def half_open(config: dict[str, Any]) -> dict[str, Any]:
    """``count`` connections that never finish the HTTP handshake, half silent, half dripping a header byte every 0.5 s.

    They stay until the server has closed them all or ``close_within`` seconds
    have passed, and at least ``seconds``.
    """
    loop = asyncio.get_running_loop()
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    closed: list[float] = []
    clients: list[_HalfOpen] = []
    opened = time.monotonic()
    for number in range(config["count"]):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, (config["host"], config["port"]))
        _, client = await loop.create_connection(lambda: _HalfOpen(closed, number % 2 == 1, time.monotonic()), sock=sock)
        clients.append(client)
    print("ready", flush=True)
    deadline = opened + max(config["seconds"], config["close_within"])
    while time.monotonic() < deadline and len(closed) < len(clients):
        for client in clients:
            if client.drip and client.transport is not None and not client.transport.is_closing():
                client.transport.write(request[client.dripped % len(request):][:1])
                client.dripped += 1
        await asyncio.sleep(0.5)
    await asyncio.sleep(max(0.0, opened + config["seconds"] - time.monotonic()))
    still_open = len(clients) - len(closed)
    for client in clients:
        if client.transport is not None:
            client.transport.abort()
    ordered = sorted(closed)
    return {"opened": len(clients), "closed_by_server": len(ordered), "still_open": still_open,
            "close_p50_s": percentile(ordered, 0.5), "close_max_s": ordered[-1] if ordered else math.nan}


async def write_rooms(config: dict[str, Any]) -> dict[str, Any]:
    """One update in each of ``count`` rooms, each from its own short connection, ``parallel`` at a time, ``rate`` rooms a second."""
    rooms = iter(enumerate(range(config["first"], config["first"] + config["count"])))
    deadline = time.monotonic() + config["seconds"]
    written = errors = 0

    async def writer() -> None:
        nonlocal written, errors
        for index, number in rooms:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(started + index / config["rate"] - time.monotonic())
            try:
                reader, stream = await asyncio.open_connection(config["host"], config["port"])
                stream.write(handshake("/ws", f"{config['host']}:{config['port']}"))
                await reader.readuntil(b"\r\n\r\n")
                hello = {"type": "hello", "v": 1, "room": f"idle{number}", "user": "writer", "playing": False, "bpm": 120}
                stream.write(client_frame(0x1, json.dumps(hello).encode()))
                stream.write(client_frame(0x1, b'{"type":"update","seq":1,"part":{"sound":"kick","steps":[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}'))
                buffer = b""
                while b'"ack"' not in buffer and b'"error"' not in buffer:
                    data = await asyncio.wait_for(reader.read(65536), 30)
                    if not data:
                        break
                    buffer += data
                if b'"ack"' in buffer:
                    written += 1
                else:
                    errors += 1
                stream.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                errors += 1

    print("ready", flush=True)
    started = time.monotonic()
    await asyncio.gather(*(writer() for _ in range(config["parallel"])))
    return {"written": written, "errors": errors, "seconds": time.monotonic() - started}


# -- figures -----------------------------------------------------------------------


def percentile(sorted_values: list[int] | list[float], share: float) -> float:
    """The nearest-rank percentile of values already sorted (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    return float(sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(share * len(sorted_values)) - 1))])


def spread_ms(sorted_values: list[int] | list[float], prefix: str = "", per_ms: int = 1) -> dict[str, float]:
    """``{prefix}p50_ms``, ``p99_ms`` and ``max_ms`` of values already sorted, ``per_ms`` of them to a millisecond."""
    return {f"{prefix}p50_ms": percentile(sorted_values, 0.50) / per_ms, f"{prefix}p99_ms": percentile(sorted_values, 0.99) / per_ms,
            f"{prefix}max_ms": sorted_values[-1] / per_ms if sorted_values else math.nan}


def warmup_text(warmup: float | None, kinds: tuple[str, ...]) -> str:
    if warmup is not None:
        return f"{warmup:g} s of warm-up"
    if "yjs" not in kinds:
        return f"{WARMUP_SECONDS:g} s of warm-up"
    return f"{WARMUP_SECONDS:g} s of warm-up ({YJS_WARMUP_SECONDS:g} s for the y-websocket server's first)"


def row(figures: dict[str, Any]) -> str:
    """One step's figures on one line."""
    return (f"  {figures['server']:<15} {figures['connections']:>5} conns  {figures['deliveries_per_s']:>9,.0f} deliveries/s"
            f"  ({figures['deliveries']}/{figures['deliveries_expected']})  p50 {figures['p50_ms']:6.2f} ms"
            f"  p99 {figures['p99_ms']:6.2f} ms  max {figures['max_ms']:7.2f} ms  cpu {figures['server_cpu_share']:4.0%}"
            f"  {figures['kib_per_connection']:5.1f} KiB/conn  errors {figures['errors']}"
            + "".join(f"  {name} {seconds / max(figures['deliveries'], 1) * 1e6:.1f} µs/delivery"
                      for name, seconds in figures.get("service_cpu_s", {}).items()))


def cpu_per_delivery(figures: dict[str, Any], part: str = "cpu") -> float:
    """Server CPU per delivery in µs: all of it (``cpu``), or in ``user`` space or the kernel (``system``) only."""
    return float(figures[f"server_{part}_s"]) / max(int(figures["deliveries"]), 1) * 1e6


def microseconds_per_delivery(figures: dict[str, Any]) -> str:
    return (f"{cpu_per_delivery(figures):.1f} µs of CPU per delivery (user space"
            f" {cpu_per_delivery(figures, 'user'):.1f}, kernel {cpu_per_delivery(figures, 'system'):.1f})")


def times(figures: dict[str, Any], baseline: dict[str, Any], part: str) -> str:
    """Server CPU per delivery as a multiple of the baseline's (``part`` as in :func:`cpu_per_delivery`)."""
    if not cpu_per_delivery(baseline, part):
        return "n/a"  # /proc counts CPU in ticks of 10 ms: a short run may show none
    return f"{cpu_per_delivery(figures, part) / cpu_per_delivery(baseline, part):.2f}x"


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
    with tempfile.TemporaryDirectory() as directory:  # where the servers keep their data
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
    ordered = sorted(latency * 1000 for latency in latencies)
    stalls = [latency for latency in latencies if latency * 1000 > STALL_MS]
    return {"syncs": len(ordered), "seconds": wall, **spread_ms(ordered), "stalls": len(stalls), "stalled_share": sum(stalls) / wall}


def disk_row(disk: dict[str, Any]) -> str:
    return (f"disk: {disk['syncs']} syncs of 4 KiB in {disk['seconds']:.0f} s, p50 {disk['p50_ms']:.2f} ms  p99 {disk['p99_ms']:.2f} ms"
            f"  max {disk['max_ms']:.1f} ms; {disk['stalls']} over {STALL_MS:g} ms, {disk['stalled_share']:.2%} of the time stalled")


# -- the ramp: a server's limit -------------------------------------------------------

RAMP_FIRST_ROOMS = 100
RAMP_MAX_ROOMS = 1600
RAMP_BISECTIONS = 4
"""From a doubling that broke the budget, four halvings: the limit to within a sixteenth of that
gap (between 200 and 400 rooms, 12 rooms: about 1,500 deliveries/s at 10 updates/s per client)."""
QUICK_RAMP_BISECTIONS = 3
RAMP_TRIES = 2
"""A load keeps the budget if one of this many runs of it does. One stall of the shared machine or
of its disk in a short step can decide a p99 by itself; every server gets the same second chance,
for a near miss (p99 under twice the budget) or a miss with CPU to spare (under ``RAMP_SPARE_CPU``
of a core: not overload, so a stall)."""
RAMP_SPARE_CPU = 0.8


def within_budget(figures: dict[str, Any], budget_ms: float) -> bool:
    return bool(figures["p99_ms"] <= budget_ms and figures["deliveries"] >= 0.999 * figures["deliveries_expected"])


def _keeps_budget(rooms: int, budget_ms: float) -> Generator[int, dict[str, Any], bool]:
    """Ask for runs of ``rooms`` (yield it, get the run's figures) until one keeps the budget or ``RAMP_TRIES`` have not."""
    for _ in range(RAMP_TRIES):
        figures = yield rooms
        if within_budget(figures, budget_ms):
            return True
        if figures["p99_ms"] > 2 * budget_ms and figures["server_cpu_share"] >= RAMP_SPARE_CPU:
            return False  # overloaded, not a near miss: a second run would not change the verdict
    return False


def find_limit(budget_ms: float, bisections: int = RAMP_BISECTIONS) -> Generator[int, dict[str, Any], None]:
    """One server's search: the rooms of each run it needs, given the figures of the run before.

    The rooms double from ``RAMP_FIRST_ROOMS`` until a load breaks the budget
    (in ``RAMP_TRIES`` runs), then the gap between the last load that kept it
    and the first that broke it is halved ``bisections`` times.
    """
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


def limits(rows: list[dict[str, Any]], budget_ms: float) -> dict[str, dict[str, Any]]:
    """Each server's ramp step with the most deliveries/s that kept the budget (a server with none has no entry)."""
    best: dict[str, dict[str, Any]] = {}
    for figures in rows:
        if (figures.get("scenario") == "ramp" and within_budget(figures, budget_ms)
                and figures["deliveries_per_s"] > best.get(figures["server"], {}).get("deliveries_per_s", 0)):
            best[figures["server"]] = figures
    return best


class Svg:
    """A plot's frame (title, grid, axes, legend) and what is drawn in it; ``str()`` is the SVG."""

    def __init__(self, width: int, height: int, left: int, right: int, top: int, bottom: int, title: str) -> None:
        self.width, self.height, self.left, self.right, self.top, self.bottom = width, height, left, right, top, bottom
        self.plot_w, self.plot_h = width - left - right, height - top - bottom
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
                      f'<rect width="{width}" height="{height}" fill="white"/>',
                      f'<text x="{left}" y="18" font-size="14">{title}</text>']

    def add(self, element: str) -> None:
        self.parts.append(element)

    def y_tick(self, y: float, label: str) -> None:
        self.add(f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        self.add(f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')

    def x_tick(self, x: float, label: str) -> None:
        self.add(f'<text x="{x:.1f}" y="{self.height - self.bottom + 16}" text-anchor="middle">{label}</text>')

    def axes(self, x_label: str, y_label: str, x_axis_y: float | None = None) -> None:
        """Both axes' labels, the y axis, and the x axis at ``x_axis_y`` (the plot's bottom unless given)."""
        middle = self.top + self.plot_h / 2
        x_axis_y = self.top + self.plot_h if x_axis_y is None else x_axis_y
        self.add(f'<text x="{self.left + self.plot_w / 2}" y="{self.height - 8}" text-anchor="middle">{x_label}</text>')
        self.add(f'<text x="14" y="{middle}" transform="rotate(-90 14 {middle})" text-anchor="middle">{y_label}</text>')
        self.add(f'<line x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{self.top + self.plot_h}" stroke="black"/>')
        self.add(f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{x_axis_y:.1f}" y2="{x_axis_y:.1f}" stroke="black"/>')

    def legend(self, y: float, colour: str, label: str) -> None:
        self.add(f'<circle cx="{self.left + 4}" cy="{y - 4}" r="4" fill="{colour}"/>')
        self.add(f'<text x="{self.left + 14}" y="{y}">{label}</text>')

    def __str__(self) -> str:
        return "\n".join([*self.parts, "</svg>"]) + "\n"


PLOT_COLOURS = {"relay": "#7f7f7f", "floor": "#9467bd", "loopsync": "#1f77b4", "loopsync-memory": "#17becf", "yjs": "#ff7f0e",
                "cluster-floor": "#bcbd22", "cluster": "#2ca02c", "cluster-2": "#8c564b"}
PLOT_BASELINES = {"loopsync": ("yjs", "floor"), "loopsync-memory": ("yjs", "floor"), "cluster": ("yjs", "cluster-floor")}
"""The servers whose legend names their ratios, and to what."""


def ramp_svg(rows: list[dict[str, Any]], budget_ms: float = 20.0) -> str:
    """Every ramp step as a point, p99 (log scale) against deliveries/s, one colour per server; each limit ringed."""
    steps = [figures for figures in rows if figures.get("scenario") == "ramp"]
    servers = list(dict.fromkeys([kind for kind in PLOT_COLOURS if any(f["server"] == kind for f in steps)]
                                 + [f["server"] for f in steps]))
    svg = Svg(760, 380, 64, 20, 40 + 16 * len(servers), 46,
              "Fan-out ramp: p99 delivery latency against deliveries/s (bench/fanout.py)")
    x_max = math.ceil(max([float(f["deliveries_per_s"]) for f in steps] + [10_000.0]) / 10_000) * 10_000
    y_low, y_high = 0.1, 10_000.0  # ms, log scale

    def x_of(deliveries_per_s: float) -> float:
        return svg.left + svg.plot_w * deliveries_per_s / x_max

    def y_of(ms: float) -> float:
        clamped = min(max(ms, y_low), y_high)
        return svg.top + svg.plot_h * (math.log10(y_high) - math.log10(clamped)) / (math.log10(y_high) - math.log10(y_low))

    for exponent in range(-1, 5):
        svg.y_tick(y_of(10.0 ** exponent), f"{10.0 ** exponent:g}")
    budget_y = y_of(budget_ms)
    svg.add(f'<line x1="{svg.left}" x2="{svg.width - svg.right}" y1="{budget_y:.1f}" y2="{budget_y:.1f}" stroke="#d62728"'
            ' stroke-dasharray="5,4"/>')
    svg.add(f'<text x="{svg.width - svg.right - 4}" y="{budget_y - 5:.1f}" text-anchor="end" fill="#d62728">'
            f'p99 budget {budget_ms:g} ms</text>')
    for value in range(0, int(x_max) + 1, 10_000 if x_max <= 100_000 else 20_000):
        svg.x_tick(x_of(value), f"{value // 1000}k")
    svg.axes("deliveries per second (rooms of 4, 10 updates/s per client); a ring marks each server's limit", "p99 (ms)")
    best = limits(steps, budget_ms)
    for row_number, kind in enumerate(servers):
        colour = PLOT_COLOURS.get(kind, "#000000")
        for figures in steps:
            if figures["server"] == kind:
                svg.add(f'<circle cx="{x_of(figures["deliveries_per_s"]):.1f}" cy="{y_of(figures["p99_ms"]):.1f}" r="3" fill="{colour}"/>')
        label = kind
        limit = best.get(kind)
        if limit is not None:
            svg.add(f'<circle cx="{x_of(limit["deliveries_per_s"]):.1f}" cy="{y_of(limit["p99_ms"]):.1f}" r="7" fill="none"'
                    f' stroke="{colour}" stroke-width="2"/>')
            label += f': {limit["deliveries_per_s"]:,.0f} deliveries/s under the budget'
            for baseline in PLOT_BASELINES.get(kind, ()):
                if baseline in best:
                    label += f', {limit["deliveries_per_s"] / best[baseline]["deliveries_per_s"]:.2f}x {baseline}'
        svg.legend(36 + 16 * row_number, colour, label)
    return str(svg)


def write_svg(svg: str, path: Path, chromium_path: str = CHROMIUM, browser: Browser | None = None) -> None:
    """Write a plot as SVG, or as PNG rendered by headless Chromium (``browser``, one at hand, or a new one)."""
    if path.suffix.lower() != ".png":
        path.write_text(svg)
        return
    if browser is None:
        with chromium(chromium_path) as browser:
            write_svg(svg, path, browser=browser)
        return
    page = browser.new_page()
    try:
        page.set_content(f'<html><body style="margin:0">{svg}</body></html>')
        page.locator("svg").screenshot(path=str(path))
    finally:
        page.close()


class Sampler:
    """The largest RSS and descriptor count of a server, sampled every 0.1 s by a thread while the ``with`` block runs."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.rss_bytes = self.descriptors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                rss, descriptors = self.server.rss_bytes(), self.server.open_descriptors()
            except OSError:
                return  # the server is gone
            self.rss_bytes, self.descriptors = max(self.rss_bytes, rss), max(self.descriptors, descriptors)


def arguments(doc: str, smoke: str, long: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's command line, described by the first line of its docstring: ``--smoke``, ``--json`` and (given ``long``) ``--long``, not with ``--smoke``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--smoke", action="store_true", help=smoke)
    if long is not None:
        length.add_argument("--long", action="store_true", help=long)
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    return parser


def write_json(path: Path | None, figures: Any) -> None:
    """Save every figure to ``path`` (a benchmark's ``--json``), if one was given."""
    if path is not None:
        path.write_text(json.dumps(figures, indent=1))


def _main() -> int:
    parser = argparse.ArgumentParser(description="a load process of the benchmarks (started by harness.Session or harness.Attacker)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--worker", metavar="CONFIG", help="a load worker, its configuration as JSON")
    what.add_argument("--attacker", nargs=2, metavar=("NAME", "CONFIG"),
                      help="an attacker (churn, half-open, write-rooms), its configuration as JSON")
    args = parser.parse_args()
    if args.attacker and args.attacker[0] == "churn":  # blocking sockets, no event loop
        print(json.dumps(churn(json.loads(args.attacker[1]))), flush=True)
        return 0
    from loopsync.server import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        if args.worker:
            runner.run(Worker(json.loads(args.worker)).serve())
        else:
            attack = {"half-open": half_open, "write-rooms": write_rooms}[args.attacker[0]]
            print(json.dumps(runner.run(attack(json.loads(args.attacker[1])))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
